//! Demand paging in user space: a region of memory whose pages are filled from a [`Store`]
//! the first time they are touched, with a resident budget, eviction, dirty tracking,
//! write-back, read-ahead and prefetch under the program's control.
//!
//! # Why
//! mmap(2) pages a file in lazily and writes it back behind the program's back: it decides
//! what stays in memory, when dirty pages reach the disk, and it reports an I/O error as
//! SIGBUS. A database buffer pool keeps those decisions for itself. A pager gives a program
//! the same control while keeping mmap's interface — plain memory that any code can read —
//! and lets the bytes come from anywhere: a file, memory, a compressed archive, an HTTP
//! server.
//!
//! # How
//! [`Pager::build`] keeps the region's pages in a memfd and maps it twice: the region itself
//! (the *view*, what raw pointers see), registered with userfaultfd(2), and an *alias* that
//! nobody registers. An access to a page the view does not map blocks the accessing thread
//! in the kernel and sends a message to one of the region's handler threads, which reads the
//! page from the store straight into the alias — the only copy — and maps it into the view
//! with one UFFDIO_CONTINUE; the thread then continues as if the page had always been there.
//!
//! * **Explicit access** ([`explicit`]): a program that knows which page it wants asks for
//!   it — [`PagedRegion::read_optimistic`], [`PagedRegion::pin_shared`],
//!   [`PagedRegion::pin_exclusive`], [`PagedRegion::allocate_page`] — as from a database's
//!   buffer manager. A miss is read from the store by the calling thread, with no fault and
//!   no handler; a hit costs two loads of the page's state word. Both paths share one page
//!   table, so a page filled one way is there for the other.
//! * **Dirty tracking**: pages installed for a read are write-protected, so the first write
//!   is seen — by a fault per first write, or, where the kernel offers it (Linux 6.7), by the
//!   kernel itself with a PAGEMAP_SCAN at flush and eviction ([`WriteTracking`]); pages
//!   installed for a write are dirty from the start, and an exclusive pin marks its page.
//! * **Budget and eviction**: at most [`budget`](Pager::budget) bytes are resident. A
//!   background evictor keeps residency between two watermarks, in batches of 64 pages
//!   chosen by the CLOCK hand (pages seen used, by a fault or an explicit access, get a
//!   second chance); dirty victims are written back, then the batch is punched out of the
//!   memfd. A fill evicts on its own thread only when the budget is exhausted. Pinned pages
//!   are never evicted.
//! * **Write-back**: [`PagedRegion::flush`] writes every dirty page to the store and
//!   flushes the store — the pager's msync. Dropping the region does the same.
//! * **Read-ahead and prefetch**: a thread walking the region sequentially is recognised
//!   from its faults, and the pages ahead of it are filled by the other handlers in runs of
//!   up to 512 KiB; [`PagedRegion::prefetch`] queues any range.
//! * **Errors are values**: a store that fails never hangs the faulting thread. What the
//!   access sees is set per region with [`OnStoreError`]. A store that panics has failed that
//!   call, nothing more; a store that changes its length is held to the one it gave when the
//!   region was built. Safe code never reaches memory outside the region, whatever a store
//!   does.
//!
//! # What each installation costs
//! Measured on this project's 2-vCPU machine, one run each, a page-cache-hot 1 GiB file:
//!
//! | filling the memfd from the file, one thread, 512 KiB at a time | GB/s |
//! |---|---|
//! | pread(2) straight into the alias (what the pager does) | 1.09 |
//! | MADV_POPULATE_WRITE on the alias, then pread into it | 0.33 |
//! | pread into a buffer, pwrite(2) into the memfd (no zeroing of new pages) | 0.35 |
//! | splice(2) file → pipe → memfd (no copy through user space) | 0.36 |
//!
//! | 20,000 random 4 KiB reads of a fresh region (`pager-random-explicit`) | K reads/s |
//! |---|---|
//! | explicit: the reading thread fills the page itself | 277 |
//! | fault: the same fill behind a round trip to a handler and a UFFDIO_CONTINUE | 88 |
//! | kernel mmap of the cached file | 1,991 |
//!
//! The previous design (store read into a handler's buffer, then UFFDIO_COPY into an
//! anonymous region) served 77 K faults/s on `pager-random` in the same state of the machine,
//! this one 62 K: shared-memory pages cost more to allocate than anonymous ones, and buy the
//! copy-free explicit path, a view and an alias of one page, and eviction by hole punching.
//! A sequential scan (`pager-seq`) runs at about 2.1 GB/s either way, bounded by allocating,
//! zeroing and filling fresh pages (perf: `clear_page_erms` alone is over half of the time
//! of a populate), where kernel mmap of cached pages allocates nothing.
//!
//! What makes fresh pages dear here is the machine: a Firecracker guest with nested paging
//! and free page reporting, whose freed memory goes back to the host, so that the next use
//! of a page costs a host fault. Probes outside the tree, one run each: touching fresh
//! anonymous memory runs at 1.2–1.4 GB/s (about 3 µs a 4 KiB page, MADV_POPULATE_WRITE no
//! faster), a memfd page allocated by a pread into the alias costs about 5 µs, while a pread
//! into memory already mapped runs at 4.6 GB/s and memset at 17 GB/s. Huge pages recycled
//! through a hugetlbfs pool (never freed to the guest, so never reported) fill at 3.4 GB/s
//! against 0.45 on their first use. A system call costs 0.28 µs.
//!
//! # Access
//! The region is memory that the pager changes behind the program's back (it discards
//! evicted pages and refills them from a store someone else may write), and an access to a
//! failed page raises SIGBUS. So the safe accessors copy — [`PagedRegion::read_at`] through
//! the fault guard, which turns that SIGBUS into the store's error, [`PagedRegion::write_at`]
//! under each page's exclusive pin — or lend memory only under a pin ([`SharedPage`],
//! [`ExclusivePage`]), and none of them ever hands out bytes that a pin's holder or another
//! accessor is changing; raw access is through [`PagedRegion::as_ptr`] and the `unsafe`
//! [`PagedRegion::as_slice`].
//!
//! # Limits
//! * Linux only, and userfaultfd must be allowed: as root (CAP_SYS_PTRACE), with
//!   `vm.unprivileged_userfaultfd = 1`, with access to /dev/userfaultfd, or — the fallback —
//!   in user-mode-only mode, where a system call that reads into a missing page of the
//!   region (read(2) into it, say) fails with EFAULT instead of faulting the page in.
//! * Minor faults on shared memory need Linux 5.14, write protection of shared memory 5.19,
//!   asynchronous write tracking 6.7; [`OnStoreError::Report`] and [`OnStoreError::Signal`]
//!   need UFFDIO_POISON (Linux 6.6).
//! * userfaultfd reports faults, not hits: a page used only through raw pointers after it
//!   was filled looks unused to CLOCK (explicit accesses set its bit).
//! * A forked child does not inherit the region (it is MADV_DONTFORK): without the pager
//!   behind it, its missing pages would read as zeros.
//! * A store must never touch the region it backs.

mod engine;
mod evictor;
pub mod explicit;
mod failure;
mod guards;
mod handler;
mod held;
mod pages;
mod readahead;
mod region;
mod stats;
pub mod store;
mod writeback;

pub use explicit::{ExclusivePage, OptimisticPage, SharedPage};
pub use region::PagedRegion;
pub use stats::{Histogram, Stats};
#[cfg(feature = "http")]
pub use store::HttpStore;
#[cfg(feature = "zstd")]
pub use store::{CompressedStore, SeekableWriter};
pub use store::{FileStore, MemoryStore, Store};

use std::sync::Arc;

use crate::map::{MapOptions, UncheckedAdvice};
use crate::sys::uffd;
use crate::{Error, ErrorKind, Result};
use engine::{Engine, Layout};

/// What an access to a page sees when the store fails to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// The access fails: a guarded accessor ([`PagedRegion::read_at`], …) returns the
    /// store's error ([`ErrorKind::Store`], or [`ErrorKind::Truncated`] when the store's bytes
    /// end early) and the page is tried again on its next access;
    /// a raw access raises SIGBUS, as the kernel does for an mmap I/O error, and leaves the
    /// page failed until a guarded access reports it or [`PagedRegion::retry_failed`].
    #[default]
    Report,
    /// The page reads as zeros; the error is counted in [`Stats::store_errors`] and kept for
    /// [`PagedRegion::take_zero_fill_error`]. Nothing ever faults. Beware on a writable
    /// region: a zero-filled page that is then written is written back whole, zeros
    /// included, over store bytes that may only have been unreadable for a moment.
    Zero,
    /// Like `Report`, but the page stays failed — every access raises SIGBUS, every guarded
    /// access returns the error — until [`PagedRegion::retry_failed`]: the behaviour of a
    /// poisoned page.
    Signal,
}

/// Builds a [`PagedRegion`] over a [`Store`].
///
/// ```no_run
/// use mmapkit::pager::{FileStore, Pager};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = FileStore::open("/var/lib/app/table.dat", true)?;
/// let region = Pager::new(store).budget(256 << 20).build()?;
/// let mut header = [0u8; 64];
/// region.read_at(0, &mut header)?;   // the first page is read from the file now
/// region.write_at(4096, b"updated")?; // and this one becomes dirty
/// region.flush()?;                   // written back, then fsync
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pager {
    store: Arc<dyn Store>,
    page_size: usize,
    budget: Option<usize>,
    readahead: usize,
    handlers: Option<usize>,
    pin_handlers: bool,
    on_error: OnStoreError,
    read_only: bool,
    write_tracking: WriteTracking,
    allocated: Option<u64>,
}

/// How a writable region learns which pages were written through its memory (explicit
/// exclusive pins mark their pages themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteTracking {
    /// [`Async`](Self::Async) where the kernel offers it (Linux 6.7), else
    /// [`Faults`](Self::Faults).
    #[default]
    Auto,
    /// The kernel lifts the write protection of a page itself on its first write
    /// (UFFD_FEATURE_WP_ASYNC), and the pager finds the written pages with PAGEMAP_SCAN when it
    /// flushes or evicts: no fault per first write. [`Stats::dirty_bytes`] then counts only the
    /// pages known dirty so far. `build` fails with `Unsupported` where the kernel lacks it.
    Async,
    /// Every first write to a clean page faults once and a handler marks it dirty.
    Faults,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("store", &self.store.describe())
            .field("page_size", &self.page_size)
            .field("budget", &self.budget)
            .field("readahead", &self.readahead)
            .field("handlers", &self.handlers)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// The default read-ahead maximum.
pub const DEFAULT_READAHEAD: usize = 4 << 20;
/// Most handler threads by default (each holds a 512 KiB scratch buffer).
pub const DEFAULT_MAX_HANDLERS: usize = 8;
/// Most handler threads a region may have: beyond one per CPU more only contend (measured: a
/// thousand made a scan ten times slower), and each holds a scratch buffer.
pub const MAX_HANDLERS: usize = 64;
/// Most bytes one store read asks for when filling ahead of demand.
const RUN_BYTES: usize = 512 << 10;

impl Pager {
    /// A pager over `store`, with the defaults: pages of the system's page size (see
    /// [`page_size`](Self::page_size)), no budget, 4 MiB read-ahead,
    /// one handler per CPU (at most 8), [`OnStoreError::Report`], writable if the store is.
    pub fn new(store: impl Store + 'static) -> Pager {
        Pager::from_arc(Arc::new(store))
    }

    /// A pager over a store shared with others.
    pub fn from_arc(store: Arc<dyn Store>) -> Pager {
        Pager {
            store,
            page_size: crate::sys::page_size(),
            budget: None,
            readahead: DEFAULT_READAHEAD,
            handlers: None,
            pin_handlers: true,
            on_error: OnStoreError::Report,
            read_only: false,
            write_tracking: WriteTracking::Auto,
            allocated: None,
        }
    }

    /// The pager's page: a multiple of the system page, at most 1 GiB. The default is the
    /// system page: a random read then fetches no more than it needs, and a sequential scan
    /// loses nothing, since read-ahead fills up to 512 KiB per store read once it sees a
    /// stream. Measured here (`mmapkit-bench pager-seq` and `pager-random`, one run each): a
    /// scan of a hot 1 GiB file ran at 3.0 GB/s with 4 KiB pages and 3.0 with 64 KiB ones,
    /// and random 4 KiB reads were served at 92 K faults/s with 4 KiB pages against 17 K/s
    /// with 64 KiB pages, which read 16 times the bytes from the store.
    pub fn page_size(&mut self, bytes: usize) -> &mut Self {
        self.page_size = bytes;
        self
    }

    /// The most bytes resident at once (rounded down to whole pages, at least two pages).
    /// A budget of at least the store's length is no limit at all, whatever the page size:
    /// nothing is ever evicted, and the last page's tail past the store may take the memory
    /// resident beyond the budget by less than a page. The budget can be exceeded by a demand fault only when no page can be evicted: while
    /// every resident page is being filled or written back, or when the store refuses the
    /// write-back of every dirty page (they stay in memory rather than be lost).
    pub fn budget(&mut self, bytes: usize) -> &mut Self {
        self.budget = Some(bytes);
        self
    }

    /// The most bytes read ahead of a sequential reader; 0 disables read-ahead. Capped at a
    /// quarter of the budget.
    pub fn readahead(&mut self, bytes: usize) -> &mut Self {
        self.readahead = bytes;
        self
    }

    /// How many handler threads serve faults (default: one per CPU the process may use, at
    /// most [`DEFAULT_MAX_HANDLERS`]): 1 to [`MAX_HANDLERS`], else `build` fails with
    /// `InvalidInput`.
    pub fn handler_threads(&mut self, count: usize) -> &mut Self {
        self.handlers = Some(count);
        self
    }

    /// Whether handler `i` is pinned to the `i`-th allowed CPU (default: yes; see the
    /// `handler` notes on why).
    pub fn pin_handlers(&mut self, pin: bool) -> &mut Self {
        self.pin_handlers = pin;
        self
    }

    /// What an access sees when the store fails (default: [`OnStoreError::Report`]).
    pub fn on_store_error(&mut self, behaviour: OnStoreError) -> &mut Self {
        self.on_error = behaviour;
        self
    }

    /// Maps the region read-only even if the store is writable: nothing is written back.
    pub fn read_only(&mut self, read_only: bool) -> &mut Self {
        self.read_only = read_only;
        self
    }

    /// How many bytes of the store are in use (default: all of it):
    /// [`PagedRegion::allocate_page`] hands out the pages after them. Rounded up to whole
    /// pages.
    pub fn allocated(&mut self, bytes: u64) -> &mut Self {
        self.allocated = Some(bytes);
        self
    }

    /// How first writes are found (default: [`WriteTracking::Auto`]).
    pub fn write_tracking(&mut self, tracking: WriteTracking) -> &mut Self {
        self.write_tracking = tracking;
        self
    }

    /// Reserves the region, registers it with userfaultfd and starts the handler threads.
    pub fn build(&self) -> Result<PagedRegion> {
        let mut layout = self.layout()?;
        let (uffd, access, pagemap) = open_userfaultfd(&mut layout, self.write_tracking)?;
        // The store's length was read once, by `layout`; a store that answers differently
        // later changes nothing (the region, its pages and every bound check use this one).
        let backing = backing(&layout, pagemap)?;
        // SAFETY: the view is new and ours and nothing has touched it; from now on its
        // unmapped pages are served by the handlers started below.
        unsafe {
            uffd::register(
                std::os::fd::AsFd::as_fd(&uffd),
                backing.view.as_ptr() as usize,
                backing.view.len(),
                layout.dirty_tracking,
            )
        }
        .map_err(|errno| Error::os("pager", errno).with_message("cannot register the region"))?;
        let engine = Arc::new(Engine::new(backing, uffd, Arc::clone(&self.store), layout)?);
        let cpus = handler::allowed_cpus();
        let count = self
            .handlers
            .unwrap_or(cpus.len().clamp(1, DEFAULT_MAX_HANDLERS));
        let mut region = PagedRegion::new(Arc::clone(&engine), access);
        region.set_evictor(evictor::spawn(&engine)?);
        for index in 0..count {
            let cpu = if self.pin_handlers && !cpus.is_empty() {
                Some(cpus[index % cpus.len()])
            } else {
                None
            };
            region.add_handler(handler::spawn(Arc::clone(&engine), index, cpu)?);
        }
        Ok(region)
    }

    fn layout(&self) -> Result<Layout> {
        let invalid = |message: String| Err(Error::new(ErrorKind::InvalidInput, "pager", message));
        let system_page = crate::sys::page_size();
        let page_size = self.page_size;
        if page_size == 0 || !page_size.is_multiple_of(system_page) || page_size > 1 << 30 {
            return invalid(format!(
                "page size {page_size} must be a multiple of the system page ({system_page}) \
                 up to 1 GiB"
            ));
        }
        if self
            .handlers
            .is_some_and(|count| !(1..=MAX_HANDLERS).contains(&count))
        {
            return invalid(format!(
                "{} handler threads: a region has 1 to {MAX_HANDLERS}",
                self.handlers.unwrap_or(0)
            ));
        }
        let len = self.store.len();
        if len == 0 {
            return invalid(format!(
                "the store {} is empty: there is nothing to page",
                self.store.describe()
            ));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|len| len.checked_next_multiple_of(page_size).is_some())
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "pager",
                    format!("the store is too large to map ({len} bytes)"),
                )
            })?;
        let budget_pages = match self.budget {
            None => usize::MAX,
            // A budget that holds the whole store never needs to evict.
            Some(bytes) if bytes >= len => usize::MAX,
            Some(bytes) if bytes / page_size >= 2 => bytes / page_size,
            Some(bytes) => {
                return invalid(format!(
                    "a budget of {bytes} bytes holds fewer than two {page_size}-byte pages"
                ));
            }
        };
        Ok(Layout {
            len,
            page_size,
            budget_pages,
            readahead_pages: (self.readahead / page_size).min(budget_pages / 4),
            run_pages: (RUN_BYTES / page_size).max(1),
            dirty_tracking: self.store.is_writable() && !self.read_only,
            async_writes: false,
            on_error: self.on_error,
            allocated_pages: self.allocated.map_or(usize::MAX, |bytes| {
                usize::try_from(bytes.div_ceil(page_size as u64)).unwrap_or(usize::MAX)
            }),
        })
    }
}

/// The error for a userfaultfd the kernel would not give us.
fn refusal(errno: crate::sys::Errno) -> Error {
    let error = Error::os("pager", errno).with_message("cannot open a userfaultfd");
    match errno {
        crate::sys::Errno::PERM | crate::sys::Errno::ACCESS => error.with_hint(
            "run as root, set the sysctl vm.unprivileged_userfaultfd=1, or grant access to \
             /dev/userfaultfd",
        ),
        crate::sys::Errno::NOSYS => error
            .with_kind(ErrorKind::Unsupported)
            .with_hint("the kernel was built without CONFIG_USERFAULTFD"),
        _ => error,
    }
}

/// The region's memory: a memfd as long as the region, mapped twice (see `engine`).
fn backing(layout: &Layout, pagemap: Option<std::os::fd::OwnedFd>) -> Result<engine::Backing> {
    let map_len = layout.len.next_multiple_of(layout.page_size);
    let memfd = crate::sys::memfd_create("mmapkit-pager", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|errno| Error::os("pager", errno).with_message("cannot create the memfd"))?;
    rustix::fs::ftruncate(&memfd, map_len as u64)
        .map_err(|errno| Error::os("pager", errno).with_message("cannot size the memfd"))?;
    let view = MapOptions::new()
        .len(map_len)
        .shared()
        .write(layout.dirty_tracking)
        .map_fd(&memfd)?;
    let alias = MapOptions::new()
        .len(map_len)
        .shared()
        .write(true)
        .map_fd(&memfd)?;
    for mapping in [&view, &alias] {
        // SAFETY: the mappings are new and ours; DontFork only keeps them out of forked
        // children, which would see a region with no pager behind it.
        unsafe { mapping.advise_unchecked(.., UncheckedAdvice::DontFork) }?;
    }
    Ok(engine::Backing {
        memfd,
        view,
        alias,
        pagemap,
    })
}

/// Opens the userfaultfd and agrees on the features the layout needs; settles whether writes
/// are tracked asynchronously, and if so opens /proc/self/pagemap for the scans.
fn open_userfaultfd(
    layout: &mut Layout,
    tracking: WriteTracking,
) -> Result<(
    std::os::fd::OwnedFd,
    uffd::Access,
    Option<std::os::fd::OwnedFd>,
)> {
    let (fd, access) = uffd::open().map_err(refusal)?;
    let offered = uffd::available_features().unwrap_or(0);
    let mut wanted = u64::from(uffd::FEATURE_MINOR_SHMEM);
    let mut pagemap = None;
    if layout.dirty_tracking {
        wanted |= u64::from(uffd::FEATURE_WRITE_PROTECT | uffd::FEATURE_WP_SHMEM);
        let async_offered = offered & u64::from(uffd::FEATURE_WP_ASYNC) != 0;
        if tracking == WriteTracking::Async || (tracking == WriteTracking::Auto && async_offered) {
            // A process that changed its user without exec may not read its own pagemap:
            // Auto then falls back to faults.
            let path = std::path::Path::new("/proc/self/pagemap");
            match crate::sys::open(path, crate::sys::OFlags::RDONLY, 0) {
                Ok(opened) => pagemap = Some(opened),
                Err(errno) if tracking == WriteTracking::Async => {
                    return Err(Error::os("pager", errno)
                        .with_message("cannot open /proc/self/pagemap for WriteTracking::Async"));
                }
                Err(_) => {}
            }
        }
        layout.async_writes = pagemap.is_some();
        if layout.async_writes {
            wanted |= u64::from(uffd::FEATURE_WP_ASYNC);
        }
    }
    if layout.on_error != OnStoreError::Zero {
        wanted |= u64::from(uffd::FEATURE_POISON);
    }
    let missing = wanted & !offered;
    if missing != 0 {
        let what = if missing & u64::from(uffd::FEATURE_MINOR_SHMEM) != 0 {
            "minor faults on shared memory (Linux 5.14), which every region needs"
        } else if missing & u64::from(uffd::FEATURE_WRITE_PROTECT | uffd::FEATURE_WP_SHMEM) != 0 {
            "write-protect faults on shared memory (Linux 5.19), which a writable region needs \
             to track dirty pages"
        } else if missing & u64::from(uffd::FEATURE_WP_ASYNC) != 0 {
            "asynchronous write protection (Linux 6.7), which WriteTracking::Async needs; \
             WriteTracking::Faults works without it"
        } else {
            "UFFDIO_POISON (Linux 6.6), which OnStoreError::Report and ::Signal need; \
             OnStoreError::Zero works without it"
        };
        return Err(Error::new(
            ErrorKind::Unsupported,
            "pager",
            format!("this kernel's userfaultfd lacks {what}"),
        ));
    }
    uffd::handshake(std::os::fd::AsFd::as_fd(&fd), wanted)
        .map_err(|errno| Error::os("pager", errno).with_message("userfaultfd handshake failed"))?;
    Ok((fd, access, pagemap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_userfaultfd_names_the_way_out() {
        let denied = refusal(crate::sys::Errno::PERM);
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        assert!(
            denied.to_string().contains("vm.unprivileged_userfaultfd"),
            "{denied}"
        );
        assert!(denied.to_string().contains("/dev/userfaultfd"), "{denied}");
        let missing = refusal(crate::sys::Errno::NOSYS);
        assert_eq!(missing.kind(), ErrorKind::Unsupported);
    }
}
