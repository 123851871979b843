//! [`GrowableMap`]: a file-backed mapping that grows with the file, for append-only logs.
//!
//! Appending to a plain mapping is awkward: a mapping has a fixed length and writing past the
//! end of the file raises SIGBUS. A `GrowableMap` owns the file and a shared mapping of it and
//! keeps them in step: an append that does not fit first extends the file (`ftruncate`, in
//! steps of [`growth_step`](GrowableMap::set_growth_step) bytes) and, when the mapping is too
//! short, remaps it (`mremap`, doubling, moving if needed), then copies the data in through the
//! fault guard.
//!
//! The file's length runs ahead of the log's length by up to one growth step between flushes;
//! [`flush`](GrowableMap::flush) writes the data back and sets the file's length to exactly the
//! log's, so that a plain `read(2)` of the file then returns the log and nothing else. Readers
//! that run while appends happen see the appended bytes at once (the page cache is shared), and
//! zeros past the log's end. A step of 0 keeps the file's length exact at every append, at the
//! cost of one `ftruncate` per append. Dropping the map flushes; [`close`](GrowableMap::close)
//! does the same and reports errors.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::map::{Flush, MapOptions, Mapping, RemapMode};
use crate::sys::{self, Errno};

/// Default growth step of the file: 1 MiB.
const DEFAULT_GROWTH_STEP: u64 = 1 << 20;
/// Smallest mapping made, so that the first appends do not remap.
const MIN_MAPPING: usize = 64 * 1024;

/// A file and a shared mapping of it that grow together. See the [module docs](self).
#[derive(Debug)]
pub struct GrowableMap {
    file: File,
    mapping: Mapping,
    /// Bytes of log.
    len: u64,
    /// Length of the file now (at least `len`).
    file_len: u64,
    /// Bytes below this offset are flushed.
    synced: u64,
    growth_step: u64,
}

impl GrowableMap {
    /// Creates the file (or empties an existing one) and maps it.
    pub fn create(path: impl AsRef<Path>) -> Result<GrowableMap> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|error| open_error(error, path))?;
        GrowableMap::from_file(file).map_err(|error| error.with_path(path))
    }

    /// Opens the file (creating it if missing) and maps it; appends continue at its end.
    pub fn open(path: impl AsRef<Path>) -> Result<GrowableMap> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|error| open_error(error, path))?;
        GrowableMap::from_file(file).map_err(|error| error.with_path(path))
    }

    /// Takes a file opened for reading and writing; appends continue at its end.
    pub fn from_file(file: File) -> Result<GrowableMap> {
        let len = sys::fstat(file.as_fd())
            .map_err(|errno| Error::os("open", errno))?
            .st_size as u64;
        let map_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_next_power_of_two())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "open",
                    "the file is too large to map",
                )
            })?
            .max(MIN_MAPPING);
        let mapping = MapOptions::new().write(true).len(map_len).map_file(&file)?;
        Ok(GrowableMap {
            file,
            mapping,
            len,
            file_len: len,
            synced: len,
            growth_step: DEFAULT_GROWTH_STEP,
        })
    }

    /// Sets how far the file grows past the log at a time (0: always exactly the log).
    pub fn set_growth_step(&mut self, bytes: u64) {
        self.growth_step = bytes;
    }

    /// Bytes of log.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file behind the map.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Appends `data`; returns the offset it starts at.
    pub fn append(&mut self, data: &[u8]) -> Result<u64> {
        let offset = self.len;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= isize::MAX as u64)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "append",
                    "the log would exceed the most a mapping can address",
                )
                .with_range(offset, data.len() as u64)
            })?;
        self.reserve(end)?;
        self.mapping.write_at(offset as usize, data)?;
        self.len = end;
        Ok(offset)
    }

    /// Copies log bytes at `offset` into `buf`; fails with `OutOfBounds` past the log's end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let in_log = offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len);
        if !in_log {
            return Err(Error::new(
                ErrorKind::OutOfBounds,
                "read_at",
                format!("the range leaves the log, which is {} bytes long", self.len),
            )
            .with_range(offset, buf.len() as u64));
        }
        self.mapping.read_at(offset as usize, buf)
    }

    /// Writes appended data back to the file, waits for it, and sets the file's length to the
    /// log's.
    pub fn flush(&mut self) -> Result<()> {
        if self.len > self.synced {
            self.mapping
                .flush_range(self.synced as usize..self.len as usize, Flush::Sync)?;
            self.synced = self.len;
        }
        self.set_file_len(self.len)
    }

    /// Flushes and closes, reporting any error that drop would swallow.
    pub fn close(mut self) -> Result<()> {
        self.flush()
    }

    /// Makes file and mapping cover at least `end` bytes.
    fn reserve(&mut self, end: u64) -> Result<()> {
        if end > self.file_len {
            let target = end.saturating_add(self.growth_step).min(isize::MAX as u64);
            self.set_file_len(target)?;
        }
        if end as usize > self.mapping.len() {
            let doubled = self.mapping.len().saturating_mul(2);
            let new_len = doubled.max(self.file_len as usize).min(isize::MAX as usize);
            self.mapping.remap(new_len, RemapMode::MayMove)?;
        }
        Ok(())
    }

    fn set_file_len(&mut self, len: u64) -> Result<()> {
        if len != self.file_len {
            sys::ftruncate(self.file.as_fd(), len).map_err(|errno| {
                Error::os("grow", errno)
                    .with_range(0, len)
                    .with_hint(match errno {
                        Errno::NOSPC | Errno::FBIG => "the file system is full or limits file size",
                        _ => "the file must stay open for writing",
                    })
            })?;
            self.file_len = len;
        }
        Ok(())
    }
}

fn open_error(error: std::io::Error, path: &Path) -> Error {
    Error::io("open", &error).with_path(path)
}

impl Drop for GrowableMap {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `close` exists for callers who need them.
        let _ = self.flush();
    }
}
