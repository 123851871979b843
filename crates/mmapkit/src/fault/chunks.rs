//! Scanning a mapping safely: [`Mapping::chunks`] and [`Mapping::for_each_chunk`]. The
//! measurements and the choice of [`DEFAULT_CHUNK`] are in [Scanning](crate::fault#scanning).

use std::ops::{ControlFlow, Range, RangeBounds};

use crate::error::{Error, ErrorKind, Result};
use crate::map::{MapOptions, Mapping, Protection};

/// The chunk [`Mapping::for_each_chunk`] uses: large enough that the guard's per-copy cost
/// vanishes, small enough that the buffer stays in L2 (see the module docs' table).
pub const DEFAULT_CHUNK: usize = 128 << 10;

/// Chunks of a range of a mapping, in order; see [`Mapping::chunks`].
///
/// A lending iterator: each chunk borrows the reader until the next call, so it is taken with
/// `while let Some(chunk) = chunks.next_chunk()` rather than a `for` loop.
#[derive(Debug)]
pub struct Chunks<'a> {
    mapping: &'a Mapping,
    /// What is left to read.
    range: Range<usize>,
    chunk: usize,
    source: Source<'a>,
}

/// Where the chunks' bytes come from.
#[derive(Debug)]
enum Source<'a> {
    /// The mapping's own memory, lent in place: it is exclusive to it and read-only.
    Lent(&'a [u8]),
    /// Copies into a buffer of private anonymous memory, page-aligned.
    Copied(Mapping),
}

/// One chunk: where it starts in the view, and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'b> {
    /// Offset of the first byte in the view.
    pub offset: usize,
    /// The bytes (a copy, or the mapping's own exclusive memory).
    pub bytes: &'b [u8],
}

impl Chunks<'_> {
    /// The next chunk, or `None` at the end of the range. An error (`Truncated` when the file
    /// no longer covers the chunk) ends the iteration.
    pub fn next_chunk(&mut self) -> Option<Result<Chunk<'_>>> {
        if self.range.is_empty() {
            return None;
        }
        let start = self.range.start;
        let len = self.chunk.min(self.range.len());
        self.range.start += len;
        let buffer = match &mut self.source {
            Source::Lent(bytes) => {
                return Some(Ok(Chunk {
                    offset: start,
                    bytes: &bytes[start..start + len],
                }));
            }
            Source::Copied(buffer) => buffer,
        };
        let target = match buffer.as_mut_slice() {
            Ok(target) => &mut target[..len],
            Err(error) => return Some(Err(error)),
        };
        match self.mapping.read_at(start, target) {
            Ok(()) => Some(Ok(Chunk {
                offset: start,
                bytes: target,
            })),
            Err(error) => {
                self.range = self.range.end..self.range.end;
                Some(Err(error))
            }
        }
    }
}

impl Mapping {
    /// Reads `range` of the view in order, `chunk` bytes at a time (the last chunk may be
    /// shorter): each chunk is copied through the fault guard into a buffer the reader owns,
    /// or lent in place when the memory is exclusive to this mapping. The safe way to scan at
    /// memory speed; see [Scanning](crate::fault#scanning) for the measurements.
    ///
    /// ```
    /// # fn main() -> mmapkit::Result<()> {
    /// # let file = tempfile::tempfile().unwrap();
    /// # file.set_len(1 << 20).unwrap();
    /// let map = mmapkit::MapOptions::new().map_file(&file)?;
    /// let mut chunks = map.chunks(.., 64 << 10)?;
    /// let mut zeros = 0;
    /// while let Some(chunk) = chunks.next_chunk() {
    ///     zeros += chunk?.bytes.iter().filter(|&&byte| byte == 0).count();
    /// }
    /// assert_eq!(zeros, 1 << 20);
    /// # Ok(()) }
    /// ```
    ///
    /// Errors: `InvalidInput` for a zero chunk, `OutOfBounds` for a range outside the view,
    /// `PermissionDenied` when it is not readable; while reading, `Truncated` where the file no
    /// longer covers a chunk (the iteration then ends).
    pub fn chunks(&self, range: impl RangeBounds<usize>, chunk: usize) -> Result<Chunks<'_>> {
        let range = self.byte_range("chunks", range)?;
        if chunk == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "chunks",
                "the chunk size is zero",
            ));
        }
        self.require("chunks", &range, Protection::READ)?;
        let source = match self.as_slice() {
            Ok(bytes) => Source::Lent(bytes),
            Err(_) => Source::Copied(
                MapOptions::new()
                    .len(chunk.min(range.len()).max(1))
                    .map_anonymous()?,
            ),
        };
        Ok(Chunks {
            mapping: self,
            range,
            chunk,
            source,
        })
    }

    /// Calls `visit` with each [`DEFAULT_CHUNK`]-sized chunk of `range` in order, until the end
    /// or until `visit` breaks (its value is returned). See [`chunks`](Self::chunks).
    ///
    /// ```
    /// # fn main() -> mmapkit::Result<()> {
    /// # let file = tempfile::tempfile().unwrap();
    /// # file.set_len(1 << 20).unwrap();
    /// use std::ops::ControlFlow;
    /// let map = mmapkit::MapOptions::new().map_file(&file)?;
    /// let mut sum = 0u64;
    /// map.for_each_chunk(.., |chunk| {
    ///     sum += chunk.bytes.iter().map(|&byte| u64::from(byte)).sum::<u64>();
    ///     ControlFlow::<()>::Continue(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn for_each_chunk<B>(
        &self,
        range: impl RangeBounds<usize>,
        mut visit: impl FnMut(Chunk<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>> {
        let mut chunks = self.chunks(range, DEFAULT_CHUNK)?;
        while let Some(chunk) = chunks.next_chunk() {
            if let ControlFlow::Break(value) = visit(chunk?) {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }
}
