//! Stream access ([`MappingCursor`]) and pattern search (`find`, `rfind`), both built on the
//! guarded copies so that they are safe on any mapping.
//!
//! Search borrows the view directly when the safety rules allow a slice (exclusive, read-only
//! memory) and otherwise copies it through the guard in windows of [`SEARCH_WINDOW`] bytes that
//! overlap by the needle's length, so a match straddling two windows is still found.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;

use memchr::memmem;

use crate::error::Result;
use crate::map::Mapping;

/// Bytes copied per step when searching memory that cannot be borrowed.
const SEARCH_WINDOW: usize = 256 * 1024;

/// A position in a mapping, with `io::Read`, `io::Write` and `io::Seek`.
///
/// Reads stop at the end of the view; writes past it write what fits (so `write_all` reports
/// `WriteZero` at the end). A truncated file surfaces as an `io::Error` of kind
/// `UnexpectedEof` whose inner error is the library's [`Truncated`](crate::ErrorKind::Truncated).
#[derive(Debug)]
pub struct MappingCursor<'a> {
    mapping: &'a Mapping,
    position: u64,
}

impl<'a> MappingCursor<'a> {
    pub(super) fn new(mapping: &'a Mapping) -> MappingCursor<'a> {
        MappingCursor {
            mapping,
            position: 0,
        }
    }

    /// The current position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes from the position to the end of the view, and the position as an offset, if the
    /// position lies inside the view.
    fn remaining(&self) -> Option<(usize, usize)> {
        let offset = usize::try_from(self.position).ok()?;
        Some((self.mapping.len().checked_sub(offset)?, offset))
    }
}

impl Read for MappingCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((remaining, offset)) = self.remaining() else {
            return Ok(0);
        };
        let count = remaining.min(buf.len());
        self.mapping.read_at(offset, &mut buf[..count])?;
        self.position += count as u64;
        Ok(count)
    }
}

impl Write for MappingCursor<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some((remaining, offset)) = self.remaining() else {
            return Ok(0);
        };
        let count = remaining.min(data.len());
        self.mapping.write_at(offset, &data[..count])?;
        self.position += count as u64;
        Ok(count)
    }

    /// Writes are visible to other mappings at once; this starts write-back to the file
    /// (`MS_ASYNC`). Use [`Mapping::flush`] to wait for it.
    fn flush(&mut self) -> io::Result<()> {
        Ok(self.mapping.flush_async()?)
    }
}

impl Seek for MappingCursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(position) => Some(position),
            SeekFrom::End(delta) => (self.mapping.len() as u64).checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        match target {
            Some(position) => {
                self.position = position;
                Ok(position)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}

impl Mapping {
    /// Offset of the first occurrence of `needle` within `range` of the view (Python's
    /// `mmap.find`). An empty needle matches at the range's start.
    pub fn find(&self, needle: &[u8], range: impl RangeBounds<usize>) -> Result<Option<usize>> {
        let range = self.byte_range("find", range)?;
        if let Ok(bytes) = self.as_slice() {
            return Ok(memmem::find(&bytes[range.clone()], needle).map(|at| range.start + at));
        }
        if needle.len() > range.len() {
            return Ok(None);
        }
        let finder = memmem::Finder::new(needle);
        let overlap = needle.len().saturating_sub(1);
        let mut window = vec![0u8; SEARCH_WINDOW.max(needle.len() * 2)];
        let mut start = range.start;
        loop {
            let len = window.len().min(range.end - start);
            self.read_at(start, &mut window[..len])?;
            if let Some(at) = finder.find(&window[..len]) {
                return Ok(Some(start + at));
            }
            if start + len >= range.end {
                return Ok(None);
            }
            start += len - overlap;
        }
    }

    /// Offset of the last occurrence of `needle` within `range` of the view (Python's
    /// `mmap.rfind`). An empty needle matches at the range's end.
    pub fn rfind(&self, needle: &[u8], range: impl RangeBounds<usize>) -> Result<Option<usize>> {
        let range = self.byte_range("rfind", range)?;
        if let Ok(bytes) = self.as_slice() {
            return Ok(memmem::rfind(&bytes[range.clone()], needle).map(|at| range.start + at));
        }
        if needle.len() > range.len() {
            return Ok(None);
        }
        let finder = memmem::FinderRev::new(needle);
        let overlap = needle.len().saturating_sub(1);
        let mut window = vec![0u8; SEARCH_WINDOW.max(needle.len() * 2)];
        let mut end = range.end;
        loop {
            let len = window.len().min(end - range.start);
            let start = end - len;
            self.read_at(start, &mut window[..len])?;
            if let Some(at) = finder.rfind(&window[..len]) {
                return Ok(Some(start + at));
            }
            if start <= range.start {
                return Ok(None);
            }
            end = start + overlap;
        }
    }
}
