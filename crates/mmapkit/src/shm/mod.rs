//! Shared memory segments: a shared mapping plus the descriptor that names it.
//!
//! A [`Segment`] is one of
//! * a **named** POSIX shm object (`/dev/shm/NAME`): found by name by unrelated processes, and
//!   like System V shared memory it persists until [`unlink`]ed, even when no process maps it;
//! * a **memfd**: anonymous, gone with its last descriptor, passed by fork, exec or a Unix
//!   socket; sealed against shrinking and growing, so no peer can ever make our side SIGBUS —
//!   the container-safe choice, since it does not depend on the size of /dev/shm;
//! * a **file** at a path of your choosing.
//!
//! Every segment starts with a [128-byte header](header) (magic, layout version, size, type
//! tag, creator identity, ready state); the rest is the *payload*, addressed from 0 by every
//! method here. Opening validates the header and waits until the creator has finished
//! initialising the payload.
//!
//! Creation reserves the memory with `fallocate`, so a full /dev/shm is an
//! [`NoSpace`](crate::ErrorKind::NoSpace) error at creation rather than a SIGBUS at first
//! touch. Peers may still truncate a named segment later; the whole mapping is shielded (see
//! `fault::shield`), so that turns into [`Truncated`](crate::ErrorKind::Truncated) errors from
//! this module's methods, never into a crash. That is also why atomics are offered on every
//! segment, where [`Mapping::atomic`] would refuse a truncatable file. The shield needs SIGBUS
//! deliverable: a thread that blocks it and works in place (atomics, locks, channel indices)
//! on a named or file segment dies if a peer truncates it; copies are safe whatever the mask,
//! and memfd segments never fault at all (see "Signal masks" in [`crate::fault`]). Shields
//! live in a fixed table: a process holds at most 1024 segments (channels included) open at
//! once; the next one fails with `OutOfMemory` ("all 1024 shield slots of this process are
//! in use") until one is dropped.
//!
//! Names are 1 to 250 bytes, without '/' or NUL. Segments are created with mode 0600 (owner
//! only) unless [`SegmentOptions::mode`] says otherwise.
//!
//! # Read-only receivers
//! A read-only descriptor cannot be mapped writable, made writable with mprotect, written,
//! truncated or sealed: the kernel checks the descriptor's access mode for each. What it does
//! not stop is opening the same inode *again*, through `/proc/self/fd/N`, with whatever access
//! the inode's permission bits allow the receiver — the way a hostile reader turns a read-only
//! memfd into a writable one. So the promise rests on the inode's permissions, for every kind
//! of segment:
//! * every segment's inode carries [`SegmentOptions::mode`], 0600 by default — memfds
//!   included, whose inodes the kernel creates with mode 0777;
//! * [`Segment::send_read_only`] (and [`Segment::read_only_fd`]) refuse a segment whose mode
//!   gives write permission to group or others, unless a seal already forbids writable
//!   mappings for everyone.
//!
//! A receiver running as another user (without `CAP_DAC_OVERRIDE` or `CAP_FOWNER`) therefore
//! can never map the segment writable. A receiver running as the *same* user can, and nothing
//! here could stop it: it may open the object by name, change its mode, or ptrace the owner
//! and write into its memory directly; the permission system draws no line between processes
//! of one user, and root passes every check. For a reader that must not write even then,
//! publish a memfd and [`Segment::seal_future_writes`] it: from then on no process can map it
//! writable, whatever its privileges, while the mappings already writable keep writing.
//!
//! Permission bits were chosen over seals as the default because a seal is final and global:
//! `F_SEAL_FUTURE_WRITE` would also stop the owner from handing writable descriptors to
//! trusted writers later, and it exists for memfds only, while named and file segments need
//! the permission rule anyway.

pub mod header;
pub(crate) mod identity;
pub(crate) mod locks;
mod options;
mod passing;
pub mod stale;

pub use header::{Header, TypeTag};
pub use identity::{ProcessIdentity, ThreadIdentity};
pub use options::SegmentOptions;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, ErrorKind, Result};
use crate::fault::shield::Shield;
use crate::map::{Mapping, SharedAtomic};
use header::HEADER_SIZE;

/// Where a segment lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A POSIX shm object, `/dev/shm/NAME`.
    Named(String),
    /// An anonymous memfd.
    Memfd,
    /// A file at a path.
    File(PathBuf),
    /// A descriptor received from another process (over a socket or across exec).
    Received,
}

/// A shared memory segment. See the [module docs](self).
pub struct Segment {
    // Field order is drop order: the shield goes before the mapping it covers.
    shield: Shield,
    mapping: Mapping,
    /// The read-only duplicate, made once and kept: closing a descriptor of the file drops
    /// this process's record locks on it (see `locks`).
    read_only: OnceLock<OwnedFd>,
    fd: SegmentFd,
    location: Location,
    header: Header,
    writable: bool,
}

impl Segment {
    /// Where the segment lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of payload.
    pub fn payload_len(&self) -> usize {
        self.mapping.len() - HEADER_SIZE
    }

    /// Whether this handle may write (a read-only duplicate may not).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The mapping behind the segment, header included.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Fails with `Truncated` once a peer has truncated the segment under us.
    pub fn check(&self) -> Result<()> {
        poisoned_error(&self.shield)
    }

    /// Copies payload bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.mapping
            .read_at(payload_offset(offset)?, buf)
            .map_err(in_payload_terms)?;
        self.check()
    }

    /// Copies `data` into the payload at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.mapping
            .write_at(payload_offset(offset)?, data)
            .map_err(in_payload_terms)?;
        self.check()
    }

    /// [`read_at`](Self::read_at) into memory given by a pointer (see
    /// [`Mapping::read_to_ptr`]).
    ///
    /// # Safety
    /// As for [`Mapping::read_to_ptr`]: `target` is valid for writes of `len` bytes, no Rust
    /// reference to it is alive, and it does not overlap the payload bytes copied.
    pub unsafe fn read_to_ptr(&self, offset: usize, target: *mut u8, len: usize) -> Result<()> {
        // SAFETY: the caller's promises are the mapping's.
        unsafe {
            self.mapping
                .read_to_ptr(payload_offset(offset)?, target, len)
        }
        .map_err(in_payload_terms)?;
        self.check()
    }

    /// [`write_at`](Self::write_at) from memory given by a pointer (see
    /// [`Mapping::write_from_ptr`]).
    ///
    /// # Safety
    /// As for [`Mapping::write_from_ptr`]: `source` is valid for reads of `len` bytes and
    /// does not overlap the payload bytes written.
    pub unsafe fn write_from_ptr(
        &self,
        offset: usize,
        source: *const u8,
        len: usize,
    ) -> Result<()> {
        // SAFETY: the caller's promises are the mapping's.
        unsafe {
            self.mapping
                .write_from_ptr(payload_offset(offset)?, source, len)
        }
        .map_err(in_payload_terms)?;
        self.check()
    }

    /// Reads a plain-old-data value from the payload at `offset`.
    pub fn read_pod<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let value = self.mapping.read_pod(payload_offset(offset)?)?;
        self.check().map(|()| value)
    }

    /// Writes a plain-old-data value into the payload at `offset`.
    pub fn write_pod<T: bytemuck::NoUninit>(&self, offset: usize, value: &T) -> Result<()> {
        self.mapping.write_pod(payload_offset(offset)?, value)?;
        self.check()
    }

    /// Borrows an atomic in the payload at `offset` (aligned, inside the payload, and on a
    /// writable handle). Safe on every segment: a truncation by a peer replaces the pages
    /// instead of faulting, and [`check`](Self::check) reports it.
    pub fn atomic<A: SharedAtomic>(&self, offset: usize) -> Result<&A> {
        // SAFETY: the whole mapping is shielded: its pages can be replaced but never fault.
        unsafe { self.mapping.atomic_in_shielded(payload_offset(offset)?) }
    }

    /// Whether copies in and out of the segment can fault: not for a memfd sealed against
    /// shrinking, yes for anything a peer may truncate.
    pub(crate) fn faults(&self) -> crate::fault::Faults {
        if self.mapping.is_truncatable() {
            crate::fault::Faults::Possible
        } else {
            crate::fault::Faults::Impossible
        }
    }

    /// Address of the payload's first byte, for the layers that build structures in it.
    pub(crate) fn payload_ptr(&self) -> *mut u8 {
        self.mapping.as_mut_ptr().wrapping_add(HEADER_SIZE)
    }

    /// Freezes a memfd segment for everyone else: from now on no process can map it writable
    /// or write(2) to it (`F_SEAL_FUTURE_WRITE`); mappings that are writable already, this
    /// one included, keep writing. No seal can be added after this one. For publishing data
    /// that readers must be able to trust not to change under them once they map it —
    /// `Unsupported` for other kinds of segment.
    pub fn seal_future_writes(&self) -> Result<()> {
        if self.location != Location::Memfd {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "seal segment",
                "only memfd segments can be sealed",
            ));
        }
        let seals = rustix::fs::SealFlags::FUTURE_WRITE | rustix::fs::SealFlags::SEAL;
        crate::sys::fcntl_add_seals(self.fd(), seals)
            .map_err(|errno| Error::os("seal segment", errno))
    }

    /// The descriptor behind the segment.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.shared().as_fd()
    }

    /// Whether /proc says process (or thread) `pid` maps no part of this segment: it exec'd
    /// another program, or closed the segment. False when it cannot tell (another user's
    /// process without root, or a file system that shows other device numbers in the maps).
    pub(crate) fn unmapped_by(&self, pid: u32) -> bool {
        locks::FileKey::of(self.fd()).is_ok_and(|key| key.mapping_seen(pid) == Some(false))
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("location", &self.location)
            .field("type_tag", &self.header.type_tag)
            .field("payload_len", &self.payload_len())
            .field("creator", &self.header.creator)
            .field("writable", &self.writable)
            .finish()
    }
}

/// A segment's descriptor, shared with a `pass_to` command until it has spawned (so that
/// the number it passes stays this segment's without a duplicate to close). Closing it drops
/// this process's record locks on the file, so the locks other handles of the same file hold
/// in this process are taken again right after (see `locks`).
#[derive(Debug)]
struct SegmentFd(Option<Arc<OwnedFd>>);

impl SegmentFd {
    fn new(fd: OwnedFd) -> SegmentFd {
        SegmentFd(Some(Arc::new(fd)))
    }

    fn shared(&self) -> &Arc<OwnedFd> {
        self.0
            .as_ref()
            .expect("a segment holds its descriptor until dropped")
    }
}

impl Drop for SegmentFd {
    fn drop(&mut self) {
        let Some(fd) = self.0.take() else {
            return;
        };
        let key = locks::FileKey::of(fd.as_fd()).ok();
        drop(fd);
        if let Some(key) = key {
            locks::retake_all(key);
        }
    }
}

/// `Truncated` once the shield saw a truncation.
fn poisoned_error(shield: &Shield) -> Result<()> {
    if shield.is_poisoned() {
        return Err(Error::new(
            ErrorKind::Truncated,
            "segment",
            "a peer truncated the segment; its pages were replaced by zeros",
        )
        .with_hint("the segment can no longer be trusted: close (drop) it and open it again"));
    }
    Ok(())
}

/// A mapping's error about header-inclusive offsets, restated in the payload offsets the
/// caller passed.
fn in_payload_terms(error: Error) -> Error {
    match error.offset() {
        Some(offset) => error.with_offset(offset.saturating_sub(HEADER_SIZE as u64)),
        None => error,
    }
}

fn payload_offset(offset: usize) -> Result<usize> {
    offset.checked_add(HEADER_SIZE).ok_or_else(|| {
        Error::new(ErrorKind::OutOfBounds, "segment", "offset overflows").with_offset(offset as u64)
    })
}

/// Removes a named segment's name; processes that have it mapped keep using it.
pub fn unlink(name: &str) -> Result<()> {
    options::validate_name(name)?;
    crate::sys::shm_unlink(name)
        .map_err(|errno| Error::os("unlink segment", errno).with_path(format!("/dev/shm/{name}")))
}
