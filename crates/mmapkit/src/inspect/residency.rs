//! How much of a file is in the page cache: cachestat(2), or mincore(2) over bounded windows.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::map::MapOptions;
use crate::sys::{self, Errno};
use crate::{Error, ErrorKind, Result};

/// Most bytes mapped at once by the mincore fallback (fincore's window).
pub(crate) const WINDOW: u64 = 128 << 20;

/// Whether this kernel answered cachestat with ENOSYS once (then it is not asked again).
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// What to measure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResidencyOptions {
    /// A byte range of the file (default: all of it); clamped to the file's size.
    pub range: Option<Range<u64>>,
    /// Also return which pages are resident, one flag per page.
    pub page_map: bool,
}

/// Which system call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// cachestat(2): exact counts, including dirty, writeback and evicted pages.
    Cachestat,
    /// mincore(2) over windows of the file mapped read-only: resident pages only.
    Mincore,
}

/// The page-cache state of (a range of) a file. Counts are in pages of `page_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResidency {
    /// The file's size when it was measured.
    pub size: u64,
    /// The byte range measured (within the file).
    pub range: Range<u64>,
    /// The base page size the counts are in.
    pub page_size: u64,
    /// Pages the range covers.
    pub pages: u64,
    /// Of those, pages in the page cache.
    pub cached: u64,
    /// Pages cached and dirty (cachestat only).
    pub dirty: Option<u64>,
    /// Pages being written back (cachestat only).
    pub writeback: Option<u64>,
    /// Pages evicted from the cache (cachestat only).
    pub evicted: Option<u64>,
    /// Evicted pages that would still be cached with a larger cache (cachestat only).
    pub recently_evicted: Option<u64>,
    /// Which call answered for the counts.
    pub method: Method,
    /// One flag per page of the range, when asked for.
    pub page_map: Option<Vec<bool>>,
}

impl FileResidency {
    /// Bytes in the page cache (cached pages, the last one cut at the end of the range).
    pub fn cached_bytes(&self) -> u64 {
        (self.cached * self.page_size).min(self.range.end - self.range.start)
    }
}

/// The residency of the file at `path` (symbolic links followed). Refuses anything but a
/// regular file without opening it in a way that could block (a FIFO, a device).
pub fn residency(path: impl AsRef<Path>, options: &ResidencyOptions) -> Result<FileResidency> {
    let path = path.as_ref();
    let file = open_regular(path, true)?;
    residency_of(&file, options).map_err(|error| error.with_path(path))
}

/// Opens `path` read-only without blocking and checks it is a regular file.
pub(crate) fn open_regular(path: &Path, follow: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|error| Error::io("open", &error).with_path(path))?;
    let metadata = file
        .metadata()
        .map_err(|error| Error::io("stat", &error).with_path(path))?;
    if !metadata.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "residency",
            "not a regular file (directories, FIFOs, sockets and devices have no page cache \
             of their own)",
        )
        .with_path(path));
    }
    Ok(file)
}

/// The residency of an open file.
pub fn residency_of(file: &File, options: &ResidencyOptions) -> Result<FileResidency> {
    let size = file
        .metadata()
        .map_err(|error| Error::io("stat", &error))?
        .len();
    let page_size = sys::page_size() as u64;
    let range = match &options.range {
        Some(range) if range.start > range.end => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "residency",
                "the range ends before it starts",
            ));
        }
        Some(range) => range.start.min(size)..range.end.min(size),
        None => 0..size,
    };
    let first_page = range.start / page_size;
    let pages = range.end.div_ceil(page_size).saturating_sub(first_page);
    let mut report = FileResidency {
        size,
        range: range.clone(),
        page_size,
        pages,
        cached: 0,
        dirty: None,
        writeback: None,
        evicted: None,
        recently_evicted: None,
        method: Method::Cachestat,
        page_map: None,
    };
    if pages == 0 {
        report.page_map = options.page_map.then(Vec::new);
        return Ok(report);
    }
    let span = first_page * page_size..(first_page + pages) * page_size;
    if !NO_CACHESTAT.load(Ordering::Relaxed) {
        match sys::cachestat(file.as_fd(), span.start, span.end - span.start) {
            Ok(stat) => {
                report.cached = stat.nr_cache;
                report.dirty = Some(stat.nr_dirty);
                report.writeback = Some(stat.nr_writeback);
                report.evicted = Some(stat.nr_evicted);
                report.recently_evicted = Some(stat.nr_recently_evicted);
                if options.page_map {
                    if !may_write(file) {
                        return Err(hidden());
                    }
                    report.page_map = Some(page_map(file, &span, size)?);
                }
                return Ok(report);
            }
            Err(Errno::NOSYS) => NO_CACHESTAT.store(true, Ordering::Relaxed),
            Err(Errno::PERM) => return Err(hidden()),
            Err(errno) => return Err(Error::os("cachestat", errno)),
        }
    }
    report.method = Method::Mincore;
    if !may_write(file) {
        return Err(hidden());
    }
    let map = page_map(file, &span, size)?;
    report.cached = map.iter().filter(|&&resident| resident).count() as u64;
    report.page_map = options.page_map.then_some(map);
    Ok(report)
}

fn hidden() -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        "residency",
        "the kernel shows page-cache residency only of files the caller may write (or owns)",
    )
}

/// Whether mincore tells the truth about this file: the kernel answers for files the caller
/// owns or could open for writing, and reports every page resident for the others.
fn may_write(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = file.metadata() else {
        return false;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 || metadata.uid() == uid {
        return true;
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let Ok(path) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// One flag per page of `span` (page-aligned, within the file rounded up to a page), from
/// mincore over windows of at most [`WINDOW`] bytes.
fn page_map(file: &File, span: &Range<u64>, size: u64) -> Result<Vec<bool>> {
    let page_size = sys::page_size() as u64;
    let mut map = Vec::with_capacity(((span.end - span.start) / page_size) as usize);
    let mut start = span.start;
    while start < span.end {
        let end = (start + WINDOW).min(span.end);
        // The file may have shrunk since it was measured: map no further than it reaches.
        let len = end
            .min(size.next_multiple_of(page_size))
            .saturating_sub(start);
        let window = if len == 0 {
            Vec::new()
        } else {
            MapOptions::new()
                .offset(start)
                .len(len as usize)
                .map_file(file)
                .and_then(|mapping| mapping.residency(..))
                .map(|residency| residency.iter().collect())
                .unwrap_or_default()
        };
        let pages = ((end - start) / page_size) as usize;
        map.extend(
            window
                .iter()
                .copied()
                .chain(std::iter::repeat(false))
                .take(pages),
        );
        start = end;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_file(len: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![1u8; len]).unwrap();
        file
    }

    #[test]
    fn a_freshly_written_file_is_all_cached() {
        let file = cached_file(10 * 4096 + 100);
        let report = residency(file.path(), &ResidencyOptions::default()).unwrap();
        assert_eq!(report.method, Method::Cachestat);
        assert_eq!((report.pages, report.cached), (11, 11));
        assert_eq!(report.cached_bytes(), 10 * 4096 + 100);
        // Not yet written back, or being written: cachestat sees either.
        let (dirty, writeback) = (report.dirty.unwrap(), report.writeback.unwrap());
        assert!(dirty + writeback <= 11, "{report:?}");
    }

    #[test]
    fn ranges_are_clamped_and_page_maps_follow_them() {
        let file = cached_file(8 * 4096);
        file.as_file().sync_all().unwrap();
        let fd = file.as_file().as_fd();
        sys::fadvise(fd, 0, 0, sys::FileAdvice::DontNeed).unwrap();
        // Read pages 4..8 back one by one without read-ahead: exactly they are cached.
        sys::fadvise(fd, 0, 0, sys::FileAdvice::Random).unwrap();
        let mut page = [0u8; 4096];
        for index in 4..8 {
            std::os::unix::fs::FileExt::read_exact_at(file.as_file(), &mut page, index * 4096)
                .unwrap();
        }
        let options = ResidencyOptions {
            range: Some(2 * 4096..100 * 4096),
            page_map: true,
        };
        let report = residency(file.path(), &options).unwrap();
        assert_eq!(report.range, 2 * 4096..8 * 4096);
        assert_eq!(report.pages, 6);
        assert_eq!(report.cached, 4);
        assert_eq!(
            report.page_map.unwrap(),
            [false, false, true, true, true, true]
        );
        let (start, end) = (10, 5);
        let backwards = ResidencyOptions {
            range: Some(start..end),
            page_map: false,
        };
        assert_eq!(
            residency(file.path(), &backwards).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn empty_files_and_non_files_are_handled() {
        let file = cached_file(0);
        let report = residency(file.path(), &ResidencyOptions::default()).unwrap();
        assert_eq!(
            (report.pages, report.cached, report.cached_bytes()),
            (0, 0, 0)
        );
        let error = residency("/tmp", &ResidencyOptions::default()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        let error = residency("/nonexistent", &ResidencyOptions::default()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound);
    }
}
