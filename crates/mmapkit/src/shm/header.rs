//! The header at the start of every segment, and its validation.
//!
//! ```text
//! offset  size  field
//!      0     8  magic            "MMAPKIT\0"
//!      8     4  layout version   1
//!     12     4  header size      128
//!     16     8  total size       bytes of the segment, header included
//!     24    16  type tag         what lives in the payload, NUL padded
//!     40     4  creator pid
//!     44     4  state            0 = being initialised, 1 = ready (atomic)
//!     48     8  creator start    start time of the creator, in clock ticks since boot
//!     56     8  segment id       random, tells two incarnations of one name apart
//!     64    64  reserved         zero
//! ```
//!
//! Another process may write anything here. The header is therefore read once, by copy, and
//! every field is checked before anything is derived from it; only `state` is read again
//! (atomically) while waiting for the creator to finish.

use crate::error::{Error, ErrorKind, Result};

/// Bytes reserved for the header; the payload starts here.
pub const HEADER_SIZE: usize = 128;
/// Layout version this build writes and accepts.
pub const LAYOUT_VERSION: u32 = 1;
/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"MMAPKIT\0";

/// Offset of the `state` word.
pub(super) const STATE_OFFSET: usize = 44;
/// `state` while the creator initialises the payload.
pub(super) const STATE_INITIALISING: u32 = 0;
/// `state` once the payload is ready.
pub(super) const STATE_READY: u32 = 1;

/// What lives in a segment's payload: up to 16 bytes of text, compared exactly on open.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeTag([u8; 16]);

impl TypeTag {
    /// A tag from text of 1 to 16 bytes without NUL.
    pub fn new(text: &str) -> Result<TypeTag> {
        let bytes = text.as_bytes();
        if bytes.is_empty() || bytes.len() > 16 || bytes.contains(&0) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "type tag",
                format!("{text:?} is not 1 to 16 bytes without NUL"),
            ));
        }
        let mut tag = [0u8; 16];
        tag[..bytes.len()].copy_from_slice(bytes);
        Ok(TypeTag(tag))
    }

    /// The tag's text (lossy for tags another process wrote).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&byte| byte == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl std::fmt::Debug for TypeTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypeTag({:?})", self.as_str())
    }
}

impl std::fmt::Display for TypeTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// The header as bytes, exactly as laid out in the segment.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct RawHeader {
    magic: [u8; 8],
    layout_version: u32,
    header_size: u32,
    total_size: u64,
    type_tag: [u8; 16],
    creator_pid: u32,
    state: u32,
    creator_start: u64,
    segment_id: u64,
    reserved: [u8; 64],
}

const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(std::mem::offset_of!(RawHeader, state) == STATE_OFFSET);

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the segment, header included.
    pub total_size: u64,
    /// What lives in the payload.
    pub type_tag: TypeTag,
    /// The process that created the segment.
    pub creator: super::ProcessIdentity,
    /// Random identity of this incarnation of the segment.
    pub segment_id: u64,
}

impl RawHeader {
    /// A header for a new segment, in the initialising state.
    pub(super) fn new(
        total_size: u64,
        type_tag: TypeTag,
        creator: super::ProcessIdentity,
    ) -> RawHeader {
        RawHeader {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size: HEADER_SIZE as u32,
            total_size,
            type_tag: type_tag.0,
            creator_pid: creator.pid,
            state: STATE_INITIALISING,
            creator_start: creator.start_time,
            segment_id: random_id(),
            reserved: [0; 64],
        }
    }

    /// Checks every field against the file it was read from; `file_size` is what fstat said.
    pub(super) fn validate(&self, file_size: u64) -> Result<Header> {
        let corrupt = |message: String| Error::new(ErrorKind::Corrupt, "open segment", message);
        if self.magic != MAGIC {
            return Err(corrupt(format!(
                "not an mmapkit segment (magic {:02x?})",
                self.magic
            )));
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(Error::new(
                ErrorKind::Incompatible,
                "open segment",
                format!(
                    "layout version {} (this build reads version {LAYOUT_VERSION})",
                    self.layout_version
                ),
            ));
        }
        if self.header_size as usize != HEADER_SIZE {
            return Err(corrupt(format!(
                "header size {} is not {HEADER_SIZE}",
                self.header_size
            )));
        }
        if self.total_size > file_size && self.total_size >= HEADER_SIZE as u64 {
            return Err(Error::new(
                ErrorKind::Truncated,
                "open segment",
                format!(
                    "the header says {} bytes but the object has only {file_size}: it was \
                     truncated",
                    self.total_size
                ),
            ));
        }
        if self.total_size != file_size || self.total_size < HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "the header says {} bytes but the object has {file_size}",
                self.total_size
            )));
        }
        if self.type_tag[0] == 0 {
            return Err(corrupt("the type tag is empty".into()));
        }
        Ok(Header {
            total_size: self.total_size,
            type_tag: TypeTag(self.type_tag),
            creator: super::ProcessIdentity {
                pid: self.creator_pid,
                start_time: self.creator_start,
            },
            segment_id: self.segment_id,
        })
    }
}

/// A random 64-bit identity from the kernel's generator.
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    // getrandom only fails for invalid buffers or flags; a zero id is then merely less unique.
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ProcessIdentity;

    fn header() -> RawHeader {
        RawHeader::new(
            4096,
            TypeTag::new("test").unwrap(),
            ProcessIdentity::current(),
        )
    }

    #[test]
    fn a_fresh_header_validates() {
        let valid = header().validate(4096).unwrap();
        assert_eq!(valid.type_tag.as_str(), "test");
        assert_eq!(valid.creator, ProcessIdentity::current());
    }

    #[test]
    fn every_field_is_checked() {
        let kind = |raw: RawHeader, size| raw.validate(size).unwrap_err().kind();
        let mut bad = header();
        bad.magic[0] = b'X';
        assert_eq!(kind(bad, 4096), ErrorKind::Corrupt);
        let mut bad = header();
        bad.layout_version = 2;
        assert_eq!(kind(bad, 4096), ErrorKind::Incompatible);
        let mut bad = header();
        bad.header_size = 64;
        assert_eq!(kind(bad, 4096), ErrorKind::Corrupt);
        assert_eq!(
            kind(header(), 8192),
            ErrorKind::Corrupt,
            "size must match the object"
        );
        let mut bad = header();
        bad.total_size = 16;
        assert_eq!(kind(bad, 16), ErrorKind::Corrupt);
        let mut bad = header();
        bad.type_tag = [0; 16];
        assert_eq!(kind(bad, 4096), ErrorKind::Corrupt);
    }

    #[test]
    fn type_tags_are_checked() {
        assert!(TypeTag::new("").is_err());
        assert!(TypeTag::new("seventeen bytes!!").is_err());
        assert!(TypeTag::new("nul\0inside").is_err());
        assert_eq!(
            TypeTag::new("sixteen bytes ok").unwrap().to_string(),
            "sixteen bytes ok"
        );
    }
}
