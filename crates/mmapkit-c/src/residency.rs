//! Page-cache residency of a file, as `mmapkit residency` and fincore report it.

use std::ffi::{c_char, c_int};

use mmapkit::inspect::{self, ResidencyOptions};

use crate::handles;
use crate::status::call;

/// The page-cache state of a file. Counts are in pages of `page_size` bytes; the counts
/// only cachestat(2) gives are -1 when the kernel answered through mincore(2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mmapkit_file_residency_t {
    /// The file's size in bytes when it was measured.
    pub size: u64,
    /// The page size of the counts.
    pub page_size: u64,
    /// Pages the file covers.
    pub pages: u64,
    /// Of those, pages in the page cache.
    pub cached: u64,
    /// Cached pages that are dirty, or -1.
    pub dirty: i64,
    /// Pages being written back, or -1.
    pub writeback: i64,
    /// Pages evicted from the cache, or -1.
    pub evicted: i64,
    /// Evicted pages a larger cache would still hold, or -1.
    pub recently_evicted: i64,
}

/// Measures how much of the regular file at `path` is in the page cache (cachestat, or
/// mincore where cachestat is missing). Directories, devices and FIFOs are refused before
/// they are opened.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_residency_path(
    path: *const c_char,
    out: *mut mmapkit_file_residency_t,
) -> c_int {
    call("mmapkit_residency_path", || {
        handles::nonnull(out, "out")?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let path = unsafe { handles::path(path) }?;
        let found = inspect::residency(path, &ResidencyOptions::default())?;
        let count = |value: Option<u64>| value.map_or(-1, |pages| pages as i64);
        handles::put(
            out,
            mmapkit_file_residency_t {
                size: found.size,
                page_size: found.page_size,
                pages: found.pages,
                cached: found.cached,
                dirty: count(found.dirty),
                writeback: count(found.writeback),
                evicted: count(found.evicted),
                recently_evicted: count(found.recently_evicted),
            },
        )
    })
}
