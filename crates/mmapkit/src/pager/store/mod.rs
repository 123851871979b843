//! Where a pager's pages come from and go back to.
//!
//! A [`Store`] is a flat array of bytes addressed by offset: the pager asks it for whole pages
//! when a page is first touched (or prefetched) and hands dirty pages back on eviction and
//! [`flush`](super::PagedRegion::flush). Stores are called from the pager's handler threads,
//! several at once, so they are `Send + Sync` and take `&self`.
//!
//! Built in: [`MemoryStore`] (a buffer, for tests and scratch space), [`FileStore`]
//! (pread/pwrite on a file), [`CompressedStore`] (seekable zstd, read-only) and, with the
//! `http` feature, [`HttpStore`] (HTTP range requests, read-only).
//!
//! A store must never touch the region it backs: the handler thread that called it would wait
//! on its own fault.

#[cfg(feature = "zstd")]
mod compressed;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "zstd")]
pub use compressed::{CompressedStore, SeekTable, SeekableWriter};
#[cfg(feature = "http")]
pub use http::{DEFAULT_TIMEOUT as HTTP_TIMEOUT, HttpStore};

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A byte array the pager reads pages from and writes dirty pages to.
///
/// The pager only asks for ranges inside `0..len()`, and reads of up to one page-run at a
/// time. Errors are values: a read error reaches the accessing thread as configured with
/// [`OnStoreError`](super::OnStoreError); a write error keeps the page dirty and is returned by
/// the next [`flush`](super::PagedRegion::flush). A store that panics is treated the same way:
/// the panic is caught and becomes that call's error ("the store panicked: …"); the default
/// panic hook still prints it. What no library can catch ends the process as Rust always
/// does: a build with `panic = "abort"`, and a panic inside the store's own unwinding (a value
/// whose `Drop` panics while a panic unwinds past it, or a panic message whose `Display`
/// panics).
pub trait Store: Send + Sync {
    /// The size in bytes. The pager reads it once, when the region is built, and keeps that
    /// length for the region's life whatever the store answers later.
    fn len(&self) -> u64;

    /// Whether the store holds no bytes (a region over it cannot be built).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Whether [`write_at`](Self::write_at) can succeed. A region over a read-only store is
    /// mapped read-only and tracks no dirty pages.
    fn is_writable(&self) -> bool {
        false
    }

    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _ = (offset, data);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this store is read-only",
        ))
    }

    /// Makes the writes so far durable (fsync for a file).
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// A short description for error messages and reports: a path, a URL (by default, the
    /// store's type name).
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }
}

/// A store as the pager calls it: every call is made so that a store that panics fails that
/// call with an error value (`io::ErrorKind::Other`, "the store panicked: …") instead of
/// unwinding through the pager's bookkeeping — a page half-claimed would leave the threads
/// waiting on it blocked for ever — or aborting the handler thread.
///
/// What comes back from the store is foreign code too: a panic payload or an `io::Error`
/// wrapping a value whose `Drop` or `Display` panics would panic later, in a handler thread,
/// when the pager formats or drops it. So payloads are dropped, and errors turned into plain
/// ones (their kind and text, or their OS error number), inside the guarded call.
///
/// `AssertUnwindSafe` is right here: after a panic the pager only records the error and goes
/// on; whatever state the store's own code left behind is the store's, reached again only
/// through its next call.
pub(crate) struct Guarded(Arc<dyn Store>);

impl Guarded {
    pub(crate) fn new(store: Arc<dyn Store>) -> Guarded {
        Guarded(store)
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        catching(|| self.0.read_at(offset, buf).map_err(plain))
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        catching(|| self.0.write_at(offset, data).map_err(plain))
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        catching(|| self.0.flush().map_err(plain))
    }

    pub(crate) fn describe(&self) -> String {
        catching(|| Ok(self.0.describe()))
            .unwrap_or_else(|error| format!("a store whose describe() failed ({error})"))
    }
}

/// The store's error as one the pager can keep, format and drop safely: its OS error number,
/// or its kind and text. Runs inside the guarded call, so the original is formatted and
/// dropped where a panic is caught.
fn plain(error: io::Error) -> io::Error {
    // Not dropped while a panic of its Display unwinds: a second panic there, from its Drop,
    // could not be caught (it would abort). It is leaked then, and dropped below otherwise.
    let error = std::mem::ManuallyDrop::new(error);
    let plain = match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    };
    drop(std::mem::ManuallyDrop::into_inner(error));
    plain
}

fn catching<T>(call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        // The payload is the store's value: its Drop may panic too. That panic is caught, and
        // its own payload is leaked rather than dropped.
        if let Err(second) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload)))
        {
            std::mem::forget(second);
        }
        Err(io::Error::other(format!("the store panicked: {message}")))
    })
}

/// A store in memory: a buffer behind a read-write lock. Useful as scratch space that is
/// paged like any other store, and as the model in tests.
#[derive(Debug)]
pub struct MemoryStore {
    bytes: RwLock<Vec<u8>>,
}

impl MemoryStore {
    /// A store holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> MemoryStore {
        MemoryStore {
            bytes: RwLock::new(bytes),
        }
    }

    /// A store of `len` zero bytes.
    pub fn zeroed(len: usize) -> MemoryStore {
        MemoryStore::new(vec![0; len])
    }

    /// A copy of the bytes the store holds now.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Store for MemoryStore {
    fn len(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let range = checked_range(offset, buf.len(), bytes.len())?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let range = checked_range(offset, data.len(), bytes.len())?;
        bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn describe(&self) -> String {
        String::from("memory")
    }
}

fn checked_range(offset: u64, len: usize, size: usize) -> io::Result<std::ops::Range<usize>> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| Some(start..start.checked_add(len)?))
        .filter(|range| range.end <= size)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {offset}+{len} is outside the store (size {size})"),
            )
        })
}

/// Opens `path` for a store, refusing anything but a regular file. The open never waits (a
/// FIFO, or a device that waits in open(2), is refused at once: see `map::open`).
pub fn open_regular_file(path: &Path, writable: bool) -> crate::Result<File> {
    let access = if writable {
        rustix::fs::OFlags::RDWR
    } else {
        rustix::fs::OFlags::RDONLY
    };
    let (fd, stat) = crate::map::open::open_without_waiting(path, access, 0)
        .map_err(|errno| crate::Error::os("open store", errno).with_path(path))?;
    if !crate::map::open::is_regular(&stat) {
        return Err(
            not_a_regular_file(crate::map::open::file_type_name(stat.st_mode)).with_path(path),
        );
    }
    Ok(File::from(fd))
}

fn not_a_regular_file(what: &str) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::InvalidInput,
        "open store",
        format!("it is {what}; a store needs a regular file"),
    )
}

/// A file as a store: pread(2) and pwrite(2) at the page's offset, fsync on flush.
///
/// The length is the file's size when the store is opened. A file that shrinks afterwards
/// makes reads past its new end fail (an error value, not a SIGBUS).
#[derive(Debug)]
pub struct FileStore {
    file: File,
    len: u64,
    writable: bool,
    drop_behind: bool,
    path: Option<PathBuf>,
}

impl FileStore {
    /// Opens `path` for reading, and for writing too when `writable`.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> crate::Result<FileStore> {
        let path = path.as_ref();
        let mut store = FileStore::from_file(open_regular_file(path, writable)?, writable)
            .map_err(|error| error.with_path(path))?;
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    /// Uses an open file; `writable` says whether pages are written back (the file must then
    /// be open for writing).
    pub fn from_file(file: File, writable: bool) -> crate::Result<FileStore> {
        let stat = crate::sys::fstat(file.as_fd())
            .map_err(|errno| crate::Error::os("open store", errno))?;
        if !crate::map::open::is_regular(&stat) {
            return Err(not_a_regular_file(crate::map::open::file_type_name(
                stat.st_mode,
            )));
        }
        Ok(FileStore {
            file,
            len: stat.st_size as u64,
            writable,
            drop_behind: false,
            path: None,
        })
    }

    /// Drops the file's page-cache copy of what was read (POSIX_FADV_DONTNEED on the range)
    /// right after each read. The pager keeps its own copy, so with a budget this keeps the
    /// same bytes from being cached twice — measured here, a budgeted scan from a cold cache
    /// under a cgroup memory limit went from 0.79× to 0.95× of kernel mmap. Off by default:
    /// other readers of the file may want its page cache.
    pub fn drop_behind(&mut self, drop: bool) -> &mut Self {
        self.drop_behind = drop;
        self
    }
}

impl Store for FileStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|error| {
            if error.kind() != io::ErrorKind::UnexpectedEof {
                return error;
            }
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} was truncated: it no longer covers {offset}..{} (it was {} bytes \
                     when the store was opened)",
                    self.describe(),
                    offset + buf.len() as u64,
                    self.len
                ),
            )
        })?;
        if self.drop_behind {
            // Advice: when the kernel cannot drop the pages, they merely stay cached.
            let _ = crate::sys::fadvise(
                self.file.as_fd(),
                offset,
                buf.len() as u64,
                crate::sys::FileAdvice::DontNeed,
            );
        }
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the file store was opened read-only",
            ));
        }
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => String::from("file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_rejects_ranges_outside_it() {
        let store = MemoryStore::zeroed(10);
        assert!(store.read_at(8, &mut [0; 2]).is_ok());
        assert!(store.read_at(9, &mut [0; 2]).is_err());
        assert!(store.write_at(u64::MAX, &[1]).is_err());
        store.write_at(3, &[7, 8]).unwrap();
        assert_eq!(store.snapshot()[3..5], [7, 8]);
    }

    #[test]
    fn file_store_reads_what_the_file_holds_and_refuses_writes_when_read_only() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        io::Write::write_all(&mut file, b"hello pager").unwrap();
        let store = FileStore::open(file.path(), false).unwrap();
        assert_eq!(store.len(), 11);
        let mut buf = [0; 5];
        store.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"pager");
        assert!(store.read_at(8, &mut buf).is_err());
        assert_eq!(
            store.write_at(0, b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn drop_behind_leaves_no_page_cache_copy_of_what_was_read() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![5u8; 256 * 1024]).unwrap();
        file.as_file().sync_all().unwrap(); // dirty pages cannot be dropped
        let map = crate::MapOptions::new().map_path(file.path()).unwrap();
        let cached = |range| map.residency(range).unwrap().resident_pages();
        std::fs::read(file.path()).unwrap();
        assert_eq!(cached(0..256 * 1024), 64, "the file is in the page cache");
        let mut buf = vec![0u8; 256 * 1024];
        let keeping = FileStore::open(file.path(), false).unwrap();
        keeping.read_at(0, &mut buf).unwrap();
        assert_eq!(
            cached(0..256 * 1024),
            64,
            "a plain store leaves the cache alone"
        );
        let mut dropping = FileStore::open(file.path(), false).unwrap();
        dropping.drop_behind(true);
        dropping.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, vec![5u8; 256 * 1024]);
        assert_eq!(
            cached(0..256 * 1024),
            0,
            "what was read left the page cache"
        );
    }
}
