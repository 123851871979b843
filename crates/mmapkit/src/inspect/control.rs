//! Changing what is cached: touch (read into the cache), evict (drop from it), lock (hold it).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use crate::map::{MapOptions, Mapping};
use crate::sys;
use crate::{Error, ErrorKind, Result};

/// The byte range of `file` that `range` names, clamped to its size; a range that ends
/// before it starts is refused, as `residency` refuses it.
fn clamp(file: &File, range: Option<Range<u64>>, operation: &'static str) -> Result<Range<u64>> {
    let size = file
        .metadata()
        .map_err(|error| Error::io("stat", &error))?
        .len();
    let range = range.unwrap_or(0..size);
    if range.start > range.end {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            operation,
            "the range ends before it starts",
        ));
    }
    Ok(range.start.min(size)..range.end.min(size))
}

/// Reads `range` of `file` (all of it by default) into the page cache: WILLNEED advice, so
/// the kernel reads ahead in large requests, then a read of every page (which waits for the
/// I/O and catches what the advice did not). Returns the bytes read.
pub fn touch(file: &File, range: Option<Range<u64>>) -> Result<u64> {
    let range = clamp(file, range, "touch")?;
    let len = range.end - range.start;
    if len == 0 {
        return Ok(0);
    }
    sys::fadvise(file.as_fd(), range.start, len, sys::FileAdvice::WillNeed)
        .map_err(|errno| Error::os("touch", errno).with_range(range.start, len))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = range.start;
    while offset < range.end {
        let left = usize::try_from(range.end - offset).unwrap_or(usize::MAX);
        let want = buffer.len().min(left);
        match file.read_at(&mut buffer[..want], offset) {
            Ok(0) => break,
            Ok(read) => offset += read as u64,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Error::io("touch", &error).with_offset(offset)),
        }
    }
    Ok(offset - range.start)
}

/// Asks the kernel to drop `range` of `file` (all of it by default) from the page cache
/// (POSIX_FADV_DONTNEED). Dirty pages are written back first by the kernel and may stay
/// until that completes; pages mapped by some process stay.
pub fn evict(file: &File, range: Option<Range<u64>>) -> Result<()> {
    let range = clamp(file, range, "evict")?;
    let len = range.end - range.start;
    if len == 0 {
        return Ok(());
    }
    sys::fadvise(file.as_fd(), range.start, len, sys::FileAdvice::DontNeed)
        .map_err(|errno| Error::os("evict", errno).with_range(range.start, len))
}

/// A range of a file held in memory with mlock(2) until dropped.
#[derive(Debug)]
pub struct LockedRange {
    /// Held for its drop, which unlocks and unmaps.
    _mapping: Option<Mapping>,
    range: Range<u64>,
}

impl LockedRange {
    /// The bytes of the file that are locked.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }
}

/// Reads `range` of `file` (all of it by default) into memory and locks it there: the file is
/// mapped read-only and mlock'ed, which faults every page in; the pages stay until the
/// returned guard is dropped. Needs CAP_IPC_LOCK or a large enough RLIMIT_MEMLOCK.
pub fn lock(file: &File, range: Option<Range<u64>>) -> Result<LockedRange> {
    let range = clamp(file, range, "lock")?;
    if range.is_empty() {
        return Ok(LockedRange {
            _mapping: None,
            range,
        });
    }
    let len = usize::try_from(range.end - range.start).map_err(|_| {
        Error::new(
            crate::ErrorKind::OutOfMemory,
            "lock",
            "the range does not fit the address space",
        )
    })?;
    // Errors name the file's bytes, not the mapping's.
    let in_file = |error: Error| error.with_range(range.start, len as u64);
    let mapping = MapOptions::new()
        .offset(range.start)
        .len(len)
        .map_file(file)
        .map_err(in_file)?;
    mapping.lock(..).map_err(|error| {
        // A file that shrank while it was being locked: its pages past the new end cannot be
        // brought in, which mlock reports as ENOMEM, like a lock limit.
        let shrunk = file.metadata().is_ok_and(|meta| meta.len() < range.end);
        match shrunk {
            true => Error::new(
                crate::ErrorKind::Truncated,
                "lock",
                "the file was truncated while it was being locked: it no longer covers the range",
            )
            .with_range(range.start, len as u64),
            false => in_file(error),
        }
    })?;
    Ok(LockedRange {
        _mapping: Some(mapping),
        range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{ResidencyOptions, residency_of};

    #[test]
    fn touch_evict_and_lock_change_what_is_cached() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![3u8; 64 * 4096]).unwrap();
        file.as_file().sync_all().unwrap();
        let options = ResidencyOptions {
            range: None,
            page_map: true,
        };
        let pages = || {
            residency_of(file.as_file(), &options)
                .unwrap()
                .page_map
                .unwrap()
        };
        let cached = || pages().count();
        evict(file.as_file(), None).unwrap();
        assert_eq!(cached(), 0);
        assert_eq!(
            touch(file.as_file(), Some(8 * 4096..24 * 4096)).unwrap(),
            16 * 4096
        );
        let touched = pages();
        assert!(
            (8..24).all(|page| touched.get(page)),
            "read-ahead may add more"
        );
        evict(file.as_file(), None).unwrap();
        let locked = lock(file.as_file(), Some(32 * 4096..40 * 4096)).unwrap();
        assert_eq!(locked.range(), 32 * 4096..40 * 4096);
        evict(file.as_file(), None).unwrap();
        assert_eq!(cached(), 8, "only the locked pages stay");
        drop(locked);
        evict(file.as_file(), None).unwrap();
        assert_eq!(cached(), 0);
        assert_eq!(
            touch(file.as_file(), Some(70 * 4096..80 * 4096)).unwrap(),
            0
        );
    }

    #[test]
    fn bad_ranges_and_files_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![1u8; 4 * 4096]).unwrap();
        let backwards = Some(Range {
            start: 3 * 4096,
            end: 4096,
        });
        let kind = |error: Error| error.kind();
        assert_eq!(
            touch(file.as_file(), backwards.clone()).map_err(kind),
            Err(ErrorKind::InvalidInput)
        );
        assert_eq!(
            evict(file.as_file(), backwards.clone()).map_err(kind),
            Err(ErrorKind::InvalidInput)
        );
        assert_eq!(
            lock(file.as_file(), backwards).map_err(kind).err(),
            Some(ErrorKind::InvalidInput)
        );
        // Past the end is not wrong, only empty.
        assert_eq!(touch(file.as_file(), Some(1 << 40..u64::MAX)).unwrap(), 0);
        let null = File::open("/dev/null").unwrap();
        let options = ResidencyOptions::default();
        assert_eq!(
            residency_of(&null, &options).map_err(kind).err(),
            Some(ErrorKind::InvalidInput)
        );
    }
}
