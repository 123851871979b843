//! [`ShmString`]: UTF-8 text in a [`Heap`], stored as a [`ShmVec<u8>`](super::ShmVec). Text
//! read back is checked to be UTF-8 (another process may have written anything).

use super::{Heap, RelPtr, ShmVec, VecHeader};
use crate::error::{Error, ErrorKind, Result};

/// The stored form of a [`ShmString`] (its bytes' vector header).
pub type StringHeader = VecHeader;

/// A string in a heap.
#[derive(Debug)]
pub struct ShmString<'h> {
    bytes: ShmVec<'h, u8>,
}

impl<'h> ShmString<'h> {
    /// Creates a string holding `text`.
    pub fn new(heap: &'h Heap<'h>, text: &str) -> Result<Self> {
        let mut bytes = ShmVec::new(heap)?;
        bytes.extend_from_slice(text.as_bytes())?;
        Ok(ShmString { bytes })
    }

    /// Opens the string whose header is at `header`.
    pub fn open(heap: &'h Heap<'h>, header: RelPtr<StringHeader>) -> Result<Self> {
        Ok(ShmString {
            bytes: ShmVec::open(heap, header)?,
        })
    }

    /// Where the string's header is.
    pub fn pointer(&self) -> RelPtr<StringHeader> {
        self.bytes.pointer()
    }

    /// Length in bytes.
    pub fn len(&self) -> Result<usize> {
        self.bytes.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> Result<bool> {
        self.bytes.is_empty()
    }

    /// Appends `text`.
    pub fn push_str(&mut self, text: &str) -> Result<()> {
        self.bytes.extend_from_slice(text.as_bytes())
    }

    /// Replaces the contents with `text`.
    pub fn set(&mut self, text: &str) -> Result<()> {
        self.bytes.clear()?;
        self.bytes.extend_from_slice(text.as_bytes())
    }

    /// A copy of the text; `Corrupt` if the bytes are not UTF-8.
    pub fn to_string(&self) -> Result<String> {
        String::from_utf8(self.bytes.to_vec()?).map_err(|error| {
            Error::new(
                ErrorKind::Corrupt,
                "string",
                format!("the bytes are not UTF-8: {error}"),
            )
        })
    }

    /// Frees the string.
    pub fn free(self) -> Result<()> {
        self.bytes.free()
    }
}
