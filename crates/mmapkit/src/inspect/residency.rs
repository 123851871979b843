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
    /// One bit per page of the range, when asked for.
    pub page_map: Option<PageMap>,
}

impl FileResidency {
    /// Bytes of page cache the range holds: cached pages × page size, as fincore and vmtouch
    /// count them (a cached last page counts whole).
    pub fn cached_bytes(&self) -> u64 {
        self.cached * self.page_size
    }
}

/// The most pages a page map covers (8 TiB of 4 KiB pages, a 256 MiB bitmap).
pub const MAX_PAGE_MAP_PAGES: u64 = 1 << 31;

/// One bit per page: in the page cache or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMap {
    words: Vec<u64>,
    len: u64,
}

impl PageMap {
    /// An empty map with room for `pages` bits; refuses more than [`MAX_PAGE_MAP_PAGES`].
    fn for_pages(pages: u64) -> Result<PageMap> {
        let too_many = || {
            Error::new(
                ErrorKind::InvalidInput,
                "residency",
                format!(
                    "a page map of {pages} pages is too large (at most {MAX_PAGE_MAP_PAGES}); \
                     ask for a byte range"
                ),
            )
        };
        if pages > MAX_PAGE_MAP_PAGES {
            return Err(too_many());
        }
        let mut words = Vec::new();
        words
            .try_reserve_exact(pages.div_ceil(64) as usize)
            .map_err(|_| too_many())?;
        Ok(PageMap { words, len: 0 })
    }

    fn push(&mut self, resident: bool) {
        if self.len.is_multiple_of(64) {
            self.words.push(0);
        }
        if resident {
            let last = self.words.len() - 1;
            self.words[last] |= 1 << (self.len % 64);
        }
        self.len += 1;
    }

    /// Pages in the map.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the map covers no page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether page `index` (counted from the start of the range) is cached.
    pub fn get(&self, index: u64) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Cached pages.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// The pages in order, `true` for cached.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|index| self.get(index))
    }

    /// The runs of cached pages in order, as page ranges: a compact form to keep or print
    /// (a cached page costs far more memory than its share of a run).
    pub fn resident_runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let start = self.next_page(from, true)?;
            let end = self.next_page(start, false).unwrap_or(self.len);
            from = end;
            Some(start..end)
        })
    }

    /// The first page at or after `from` that is cached (or not, as `cached` says).
    fn next_page(&self, from: u64, cached: bool) -> Option<u64> {
        let mut index = from;
        while index < self.len {
            let word = self.words[(index / 64) as usize];
            let bits = (if cached { word } else { !word }) >> (index % 64);
            if bits != 0 {
                let found = index + u64::from(bits.trailing_zeros());
                return (found < self.len).then_some(found);
            }
            index = (index / 64 + 1) * 64;
        }
        None
    }
}

/// The residency of the file at `path` (symbolic links followed). Anything but a regular
/// file is refused before it is opened (opening a device can have effects of its own).
pub fn residency(path: impl AsRef<Path>, options: &ResidencyOptions) -> Result<FileResidency> {
    let path = path.as_ref();
    let metadata =
        std::fs::metadata(path).map_err(|error| Error::io("stat", &error).with_path(path))?;
    if !metadata.is_file() {
        return Err(not_regular(path));
    }
    let file = open_regular(path, true)?;
    residency_of(&file, options).map_err(|error| error.with_path(path))
}

const NOT_REGULAR: &str =
    "not a regular file (directories, FIFOs, sockets and devices have no page cache of their own)";

fn not_regular(path: &Path) -> Error {
    Error::new(ErrorKind::InvalidInput, "residency", NOT_REGULAR).with_path(path)
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
        return Err(not_regular(path));
    }
    Ok(file)
}

/// The residency of an open file.
pub fn residency_of(file: &File, options: &ResidencyOptions) -> Result<FileResidency> {
    let metadata = file.metadata().map_err(|error| Error::io("stat", &error))?;
    if !metadata.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "residency",
            NOT_REGULAR,
        ));
    }
    let size = metadata.len();
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
    let pages = if range.is_empty() {
        0
    } else {
        range.end.div_ceil(page_size) - first_page
    };
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
        report.page_map = options.page_map.then(PageMap::default);
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
                    let mut map = PageMap::for_pages(pages)?;
                    scan(file, &span, size, |resident| map.push(resident))?;
                    report.page_map = Some(map);
                }
                return Ok(report);
            }
            Err(Errno::NOSYS) => NO_CACHESTAT.store(true, Ordering::Relaxed),
            Err(Errno::PERM) if !may_write(file) => return Err(hidden()),
            // Refused for another reason (a seccomp filter, a security module): mincore
            // may still answer truthfully.
            Err(Errno::PERM) => {}
            Err(errno) => return Err(Error::os("cachestat", errno)),
        }
    }
    report.method = Method::Mincore;
    if !may_write(file) {
        return Err(hidden());
    }
    let mut map = if options.page_map {
        Some(PageMap::for_pages(pages)?)
    } else {
        None
    };
    let mut cached = 0;
    scan(file, &span, size, |resident| {
        cached += u64::from(resident);
        if let Some(map) = &mut map {
            map.push(resident);
        }
    })?;
    report.cached = cached;
    report.page_map = map;
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
/// owns (or may act as owner of) or could open for writing, and reports every page resident
/// for the others.
fn may_write(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = file.metadata() else {
        return false;
    };
    // Not "root may": root in a user namespace, or without CAP_FOWNER, gets the lie too;
    // the access check below answers for root exactly as the kernel's own test does.
    // SAFETY: geteuid has no preconditions.
    if metadata.uid() == unsafe { libc::geteuid() } {
        return true;
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let Ok(path) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call;
    // AT_EACCESS checks with the effective ids, as the kernel's own test does.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// Calls `each` with the residency of every page of `span` (page-aligned, within the file
/// rounded up to a page), from mincore over windows of at most [`WINDOW`] bytes. Pages past
/// the end of a file that shrank meanwhile are not cached.
fn scan(file: &File, span: &Range<u64>, size: u64, mut each: impl FnMut(bool)) -> Result<()> {
    let page_size = sys::page_size() as u64;
    let mut start = span.start;
    while start < span.end {
        let end = (start + WINDOW).min(span.end);
        let pages = (end - start) / page_size;
        let len = end
            .min(size.next_multiple_of(page_size))
            .saturating_sub(start);
        let mapped = if len == 0 {
            None
        } else {
            match MapOptions::new()
                .offset(start)
                .len(len as usize)
                .map_file(file)
            {
                Ok(mapping) => Some(mapping.residency(..)?),
                // The file shrank below this window since it was measured.
                Err(error) if error.kind() == ErrorKind::OutOfBounds => None,
                Err(error) => return Err(error),
            }
        };
        let mut seen = 0;
        if let Some(residency) = mapped {
            for resident in residency.iter().take(pages as usize) {
                each(resident);
                seen += 1;
            }
        }
        for _ in seen..pages {
            each(false);
        }
        start = end;
    }
    Ok(())
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
        assert_eq!(
            report.cached_bytes(),
            11 * 4096,
            "whole pages, as fincore counts"
        );
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
        let map = report.page_map.unwrap();
        assert_eq!(
            map.iter().collect::<Vec<_>>(),
            [false, false, true, true, true, true]
        );
        assert_eq!(map.count(), 4);
        let empty = ResidencyOptions {
            range: Some(100..100),
            page_map: false,
        };
        assert_eq!(residency(file.path(), &empty).unwrap().pages, 0);
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

    proptest::proptest! {
        #[test]
        fn resident_runs_are_the_runs_of_set_bits(pages in proptest::collection::vec(proptest::bool::ANY, 0..300)) {
            let mut map = PageMap::for_pages(pages.len() as u64).unwrap();
            pages.iter().for_each(|&resident| map.push(resident));
            let mut expected: Vec<Range<u64>> = Vec::new();
            for (index, &resident) in pages.iter().enumerate() {
                let index = index as u64;
                match expected.last_mut() {
                    Some(run) if resident && run.end == index => run.end += 1,
                    _ if resident => expected.push(index..index + 1),
                    _ => {}
                }
            }
            proptest::prop_assert_eq!(map.resident_runs().collect::<Vec<_>>(), expected);
        }
    }
}
