//! The engine of a region: what happens on a fault, how pages are filled from the store, how
//! frames are reserved within the budget, and the queue of work done ahead of demand.
//!
//! The region's pages live in a memfd, seen twice: the *view* (the region's own address
//! range, registered with userfaultfd for missing, minor and write-protect faults) and an
//! *alias* that nobody registers. Filling a page is a claim (Absent → Filling, so one thread
//! fills it), one store read straight into the alias — the only copy — and, for a fault or a
//! fill ahead of one, one UFFDIO_CONTINUE that maps the now-cached page into the view
//! (write-protected for a read, so that the first write is seen). Nobody sees a half-filled
//! page through the view: the page is in the memfd but not mapped there, so an access is a
//! minor fault, and the handler that receives it waits for the filler. Explicit accesses
//! (`explicit`) read and write through the alias and never fault. The page state is set
//! before the waiting threads are woken, so that nobody sees an installed page whose state
//! says it is still being filled. Write-back and eviction live in `writeback`.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::OnStoreError;
use super::failure::Failure;
use super::pages::{PageTable, State};
use super::readahead::ReadAhead;
use super::stats::Counters;
use super::store::{Guarded, Store};
use crate::map::{Mapping, UncheckedAdvice};
use crate::sys::Errno;
use crate::sys::uffd::{self, Fault};

/// Why pages claimed for filling were not filled.
pub(super) enum Unfilled {
    /// The store failed; the pages are still claimed.
    Store(io::Error),
    /// UFFDIO_COPY failed (the region is going away); the pages were given back.
    Install(Errno),
}

/// Keeps the first of several errors.
pub(super) fn remember(slot: &Mutex<Option<io::Error>>, error: io::Error) {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(error);
}

/// The memory of a region: the memfd and its two mappings; built by [`Pager`](super::Pager).
pub(crate) struct Backing {
    pub(crate) memfd: OwnedFd,
    /// The registered view.
    pub(crate) view: Mapping,
    /// The unregistered alias.
    pub(crate) alias: Mapping,
    pub(crate) pagemap: Option<OwnedFd>,
}

/// How the engine is set up; built by [`Pager`](super::Pager).
#[derive(Debug)]
pub(crate) struct Layout {
    /// Bytes of the store (the region's length).
    pub(crate) len: usize,
    /// The pager's page size: a multiple of the system page.
    pub(crate) page_size: usize,
    /// Most pages resident at once.
    pub(crate) budget_pages: usize,
    /// Most pages read ahead of a sequential stream.
    pub(crate) readahead_pages: usize,
    /// Most pages one store read asks for (read-ahead and prefetch are split into such runs).
    pub(crate) run_pages: usize,
    /// Whether first writes are tracked (a writable region).
    pub(crate) dirty_tracking: bool,
    /// Whether the kernel resolves write-protect faults itself and the pager finds written
    /// pages with PAGEMAP_SCAN (UFFD_FEATURE_WP_ASYNC) rather than by a fault per first
    /// write.
    pub(crate) async_writes: bool,
    pub(crate) on_error: OnStoreError,
    /// Pages of the store in use, where `allocate_page` starts.
    pub(crate) allocated_pages: usize,
}

pub(crate) struct Engine {
    /// Tells regions apart (for the pins a thread holds), never reused.
    pub(super) id: u64,
    /// The region's view: registered, what raw pointers see.
    pub(super) memory: Mapping,
    pub(super) base: usize,
    /// The same pages, unregistered: where fills write and explicit accesses read.
    pub(super) alias: Mapping,
    /// The memfd holding the pages (hole punching evicts them).
    pub(super) backing: OwnedFd,
    /// /proc/self/pagemap, for finding written pages when `async_writes`.
    pub(super) pagemap: Option<OwnedFd>,
    pub(super) layout: Layout,
    pub(super) pages: PageTable,
    pub(super) uffd: OwnedFd,
    pub(super) store: Guarded,
    pub(super) readahead: ReadAhead,
    work: Mutex<VecDeque<Range<usize>>>,
    wakeup: OwnedFd,
    shutdown: AtomicBool,
    /// Fault messages served, by all handlers.
    served: AtomicU64,
    /// The last store read error of each page that failed.
    pub(super) failures: Mutex<HashMap<usize, Failure>>,
    /// The background evictor's doorbell.
    pub(super) evictor: super::evictor::Doorbell,
    /// The next page `allocate_page` hands out.
    pub(super) allocated: std::sync::atomic::AtomicUsize,
    /// Pages `allocate_page` took but could not hand out (no frame): handed out first.
    pub(super) returned_pages: Mutex<Vec<usize>>,
    /// Counts failures, to tell an accessor's own from older ones.
    pub(super) failure_clock: AtomicU64,
    /// The first write-back error since the last `flush`, which returns it.
    pub(super) write_error: Mutex<Option<io::Error>>,
    /// The first store error answered with zeros (`OnStoreError::Zero`) not yet taken.
    pub(super) zero_fill_error: Mutex<Option<io::Error>>,
    pub(super) counters: Counters,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("base", &format_args!("{:#x}", self.base))
            .field("layout", &self.layout)
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn new(
        backing: Backing,
        uffd: OwnedFd,
        store: Arc<dyn Store>,
        layout: Layout,
    ) -> crate::Result<Engine> {
        let Backing {
            memfd,
            view: memory,
            alias,
            pagemap,
        } = backing;
        let pages = layout.len.div_ceil(layout.page_size);
        if memory.len() != pages * layout.page_size || alias.len() != memory.len() {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidInput,
                "pager",
                "the region's mapping does not match its length",
            ));
        }
        let allocated = layout.allocated_pages.min(pages);
        let wakeup = crate::sys::eventfd(0).map_err(|errno| crate::Error::os("pager", errno))?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Engine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            base: memory.as_ptr() as usize,
            memory,
            alias,
            backing: memfd,
            pagemap,
            readahead: ReadAhead::new(pages, layout.readahead_pages),
            pages: PageTable::new(pages).ok_or_else(|| {
                crate::Error::new(
                    crate::ErrorKind::OutOfMemory,
                    "pager",
                    format!("no memory for the page table of {pages} pages (a byte each)"),
                )
            })?,
            layout,
            uffd,
            store: Guarded::new(store),
            work: Mutex::new(VecDeque::new()),
            wakeup,
            shutdown: AtomicBool::new(false),
            served: AtomicU64::new(0),
            failures: Mutex::new(HashMap::new()),
            failure_clock: AtomicU64::new(0),
            allocated: std::sync::atomic::AtomicUsize::new(allocated),
            returned_pages: Mutex::new(Vec::new()),
            evictor: super::evictor::Doorbell::default(),
            write_error: Mutex::new(None),
            zero_fill_error: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    #[inline]
    pub(crate) fn page_size(&self) -> usize {
        self.layout.page_size
    }

    /// The page holding byte `offset` of the region.
    pub(crate) fn page_of(&self, offset: usize) -> usize {
        offset / self.layout.page_size
    }

    /// The address and length in bytes of a run of pages.
    pub(super) fn span(&self, run: &Range<usize>) -> (usize, usize) {
        (
            self.base + run.start * self.layout.page_size,
            run.len() * self.layout.page_size,
        )
    }

    /// Wakes the threads waiting on faults in `run`.
    pub(super) fn wake(&self, run: &Range<usize>) {
        let (address, len) = self.span(run);
        // Waking fails only for a range outside every registration, which ours is not.
        let _ = uffd::wake(self.uffd.as_fd(), address, len);
    }

    /// Handles one fault read from the userfaultfd.
    pub(crate) fn on_fault(&self, fault: Fault) {
        let Some(page) = fault
            .address
            .checked_sub(self.base)
            .map(|offset| self.page_of(offset))
            .filter(|&page| page < self.pages.len())
        else {
            return;
        };
        if fault.write_protect {
            self.on_write_fault(page);
        } else {
            self.on_missing(page, fault.write);
        }
    }

    /// A page the view does not map: map it if it is in memory (filled by an explicit
    /// access, or kept by an eviction that did not happen), else fill it, and on a
    /// sequential read fill the next pages of the read-ahead window in the same store read
    /// (the rest of the window is queued for the other handlers), as the kernel's
    /// synchronous read-ahead does.
    fn on_missing(&self, page: usize, write: bool) {
        let started = Instant::now();
        let ahead = self.readahead.on_fault(page);
        while !self.pages.claim(page, true) {
            match self.pages.state(page) {
                // Given back or cleared between the claim and the look: claim again.
                State::Absent => continue,
                // In memory: map it into the view (a no-op if it is mapped already).
                State::Clean | State::Dirty => {
                    self.pages.reference(page);
                    self.map_resident(page);
                }
                // Someone else fills, writes back or evicts it and wakes us when done.
                _ => {}
            }
            if let Some(ahead) = ahead {
                self.enqueue(ahead);
            }
            return;
        }
        Counters::add(&self.counters.faults, 1);
        self.reserve(1, true);
        let mut run = page..page + 1;
        if let Some(mut ahead) = ahead {
            if !write && ahead.start == run.end {
                self.extend_claim(&mut run, ahead.end);
                ahead.start = run.end;
            }
            self.enqueue(ahead);
        }
        match self.fill(&run, write, true) {
            Ok(()) => {
                Counters::add(&self.counters.pages_prefetched, run.len() as u64 - 1);
                self.counters.record_latency(started.elapsed());
                self.wake(&run);
            }
            Err(Unfilled::Store(error)) => {
                let extra = run.start + 1..run.end;
                self.unclaim(&extra);
                // The error may lie in the pages read ahead: the page asked for alone.
                let alone = page..page + 1;
                let result = if extra.is_empty() {
                    Err(Unfilled::Store(error))
                } else {
                    self.fill(&alone, write, true)
                };
                match result {
                    Ok(()) => self.wake(&alone),
                    Err(Unfilled::Store(error)) => self.fail(page, write, error, true),
                    Err(Unfilled::Install(_)) => {}
                }
            }
            Err(Unfilled::Install(_)) => {}
        }
    }

    /// Maps a resident page into the view for a thread that faulted on it, and wakes it.
    /// The page is not owned: if it is evicted meanwhile, the continue finds nothing in the
    /// memfd and the thread, woken, faults again. It is mapped write-protected even when it
    /// was dirty a moment ago: a flush may have written it back and made it clean since, and
    /// a writable mapping of a clean page would lose the writes through it. A write to a
    /// dirty page costs one more fault, which finds it dirty and lifts the protection.
    fn map_resident(&self, page: usize) {
        let (address, len) = self.span(&(page..page + 1));
        let protect = self.layout.dirty_tracking;
        // Marked before it is mapped: once mapped, the woken thread may write at once, and a
        // flush must then look at the page.
        self.pages.set_mapped(page);
        // SAFETY: the page is in the memfd with the bytes of the store (or newer ones);
        // mapping it into the view only lets the faulting thread see them.
        let _ = unsafe { uffd::continue_pages(self.uffd.as_fd(), address, len, protect, true) };
        self.wake(&(page..page + 1));
    }

    /// Extends `run` with the absent pages after it, up to `limit` and one store read, with
    /// frames for them.
    fn extend_claim(&self, run: &mut Range<usize>, limit: usize) {
        let extra = self.claim_run(run.end, limit.min(run.start + self.layout.run_pages));
        if self.reserve_run(&extra) {
            run.end = extra.end;
        }
    }

    /// Claims consecutive absent pages from `start`, up to `limit` and one store read.
    fn claim_run(&self, start: usize, limit: usize) -> Range<usize> {
        let mut end = start;
        while end < limit && end - start < self.layout.run_pages && self.pages.claim(end, false) {
            end += 1;
        }
        start..end
    }

    /// Reserves frames for claimed pages ahead of demand (evicting if need be); if the
    /// budget has no room, gives the pages back and returns false.
    fn reserve_run(&self, run: &Range<usize>) -> bool {
        if run.is_empty() || self.reserve(run.len(), false) > 0 {
            return true;
        }
        for page in run.clone() {
            self.pages.transition(page, State::Filling, State::Absent);
        }
        self.wake(run);
        false
    }

    /// A write to a write-protected page: the first write to a clean page makes it dirty.
    /// The page is owned (Unprotecting) while its protection is lifted, so that a concurrent
    /// write-back, which protects the page before reading it, cannot have the protection
    /// lifted under it and miss a write.
    fn on_write_fault(&self, page: usize) {
        let run = page..page + 1;
        loop {
            match self.pages.state(page) {
                from @ (State::Clean | State::Dirty) => {
                    if !self.pages.transition(page, from, State::Unprotecting) {
                        continue;
                    }
                    self.pages.reference(page);
                    if from == State::Clean {
                        self.pages.add_dirty(1);
                        Counters::add(&self.counters.write_faults, 1);
                    }
                    self.unprotect(&run);
                    self.pages
                        .transition(page, State::Unprotecting, State::Dirty);
                    // The unprotect woke the writer already; wake again in case it failed.
                    self.wake(&run);
                }
                // Its installer sets the state in a moment, then wakes nobody (this writer
                // did not wait on a missing page): look again.
                State::Filling => {
                    std::thread::yield_now();
                    continue;
                }
                // Their owner wakes the writer when done; it then faults again.
                State::Cleaning | State::Evicting | State::Unprotecting => {}
                State::Absent | State::Failed => self.wake(&run),
            }
            return;
        }
    }

    fn unprotect(&self, run: &Range<usize>) {
        let (address, len) = self.span(run);
        // SAFETY: the run lies in our registered region and we own it (Unprotecting); lifting
        // the protection only lets the waiting writer proceed.
        let _ = unsafe { uffd::write_protect(self.uffd.as_fd(), address, len, false) };
    }

    /// The alias's bytes of a run of pages: where fills write and explicit accesses look.
    #[inline]
    pub(super) fn alias_ptr(&self, page: usize) -> *mut u8 {
        // The run lies in the region, whose alias is as long as the view.
        self.alias
            .as_mut_ptr()
            .wrapping_add(page * self.layout.page_size)
    }

    /// Reads the claimed pages of `run` from the store straight into the memfd (through the
    /// alias) and installs them, mapping them into the view if `map` (a fault, or a fill ahead
    /// of faults; an explicit access leaves that to the fault, if one ever comes). The caller
    /// wakes their waiters once its bookkeeping is done. On a store error the pages stay
    /// claimed, for the caller to decide; on an install error they are given back and their
    /// waiters woken.
    pub(super) fn fill(&self, run: &Range<usize>, write: bool, map: bool) -> Result<(), Unfilled> {
        let start = run.start * self.layout.page_size;
        let bytes = run.len() * self.layout.page_size;
        let from_store = bytes.min(self.layout.len - start);
        // SAFETY: the pages of `run` are claimed by this thread (Filling): nobody else writes
        // them, the view does not map them (an access there is a minor fault that waits for
        // us), and they lie in the alias. Optimistic readers that started on an earlier life
        // of the page may read while the store writes; their version check throws the
        // result away.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.alias_ptr(run.start), bytes) };
        if let Err(error) = self.store.read_at(start as u64, &mut buf[..from_store]) {
            // What the store wrote so far must not stay in the memfd, or a minor fault would
            // map it as if it were the page.
            self.discard_backing(run);
            return Err(Unfilled::Store(error));
        }
        buf[from_store..].fill(0);
        Counters::add(&self.counters.pages_filled, run.len() as u64);
        Counters::add(&self.counters.bytes_read, from_store as u64);
        self.install(run, write, map).map_err(Unfilled::Install)
    }

    /// Installs the claimed pages of `run`, whose bytes are in the memfd: maps them into the
    /// view if `map` (write-protected for a read, when writes are tracked), and sets their
    /// state. The caller wakes their waiters.
    pub(super) fn install(&self, run: &Range<usize>, write: bool, map: bool) -> Result<(), Errno> {
        if map {
            // Marked before they are mapped: other threads may write them as soon as they
            // are, and a flush must then look at them.
            for page in run.clone() {
                self.pages.set_mapped(page);
            }
            let (address, len) = self.span(run);
            let protect = self.layout.dirty_tracking && !write;
            let mut done = 0;
            while done < len {
                // SAFETY: the pages are claimed by this thread (Filling) and their bytes are
                // in the memfd; mapping them lets the view see exactly those bytes.
                let mapped = unsafe {
                    uffd::continue_pages(
                        self.uffd.as_fd(),
                        address + done,
                        len - done,
                        protect,
                        false,
                    )
                };
                match mapped {
                    Ok(()) => done = len,
                    Err((Errno::AGAIN, partial)) => done += partial,
                    // Mapped already (a racing fault of ours cannot map a Filling page, but
                    // a stale mapping is as good): the rest, a page at a time.
                    Err((Errno::EXIST, partial)) => {
                        done += partial + self.layout.page_size.min(len - done - partial);
                    }
                    Err((errno, _)) => {
                        self.discard_view(run);
                        self.discard_backing(run);
                        self.unclaim(run);
                        return Err(errno);
                    }
                }
            }
        }
        if write {
            self.pages.add_dirty(run.len());
        }
        let state = if write { State::Dirty } else { State::Clean };
        for page in run.clone() {
            self.pages.transition(page, State::Filling, state);
        }
        Ok(())
    }

    /// Drops the pages of `run` from the memfd (and so from both views): an eviction's
    /// discard, or the bytes of a fill that failed.
    pub(super) fn discard_backing(&self, run: &Range<usize>) -> bool {
        let start = (run.start * self.layout.page_size) as u64;
        let len = (run.len() * self.layout.page_size) as u64;
        crate::sys::punch_hole(self.backing.as_fd(), start, len).is_ok()
    }

    /// Unmaps the pages of `run` from the view only (they stay in the memfd): what a poison
    /// marker or a half-done install leaves there goes.
    pub(super) fn discard_view(&self, run: &Range<usize>) -> bool {
        let start = run.start * self.layout.page_size;
        let end = run.end * self.layout.page_size;
        // SAFETY: the pages are owned by the caller (claimed, failed or evicting); no
        // reference covers the view's memory (accessors copy, explicit access uses the
        // alias), and the bytes, if any, stay in the memfd.
        unsafe {
            self.memory
                .advise_unchecked(start..end, UncheckedAdvice::DontNeed)
        }
        .is_ok()
    }

    /// Gives claimed pages back (nothing was installed) and wakes their waiters, who fault
    /// again.
    fn unclaim(&self, run: &Range<usize>) {
        if run.is_empty() {
            return;
        }
        for page in run.clone() {
            self.pages.transition(page, State::Filling, State::Absent);
        }
        self.pages.release(run.len());
        self.wake(run);
    }

    /// Fills the absent pages of `range` ahead of demand, in runs of at most `run_pages`.
    /// Stops quietly when the budget has no room; returns the first store error.
    pub(crate) fn fill_ahead(&self, range: Range<usize>) -> io::Result<()> {
        let mut page = range.start;
        while page < range.end {
            let run = self.claim_run(page, range.end);
            if run.is_empty() {
                page += 1;
                continue;
            }
            if !self.reserve_run(&run) {
                return Ok(());
            }
            match self.fill(&run, false, true) {
                Ok(()) => {
                    Counters::add(&self.counters.pages_prefetched, run.len() as u64);
                    self.wake(&run);
                }
                Err(Unfilled::Store(error)) => {
                    self.unclaim(&run);
                    Counters::add(&self.counters.store_errors, 1);
                    return Err(error);
                }
                Err(Unfilled::Install(errno)) => {
                    return Err(io::Error::from_raw_os_error(errno.raw_os_error()));
                }
            }
            page = run.end;
        }
        Ok(())
    }

    /// Queues `range` to be filled ahead of demand by a handler thread.
    pub(crate) fn enqueue(&self, range: Range<usize>) {
        let range = range.start.min(self.pages.len())..range.end.min(self.pages.len());
        if range.is_empty() {
            return;
        }
        self.work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(range);
        self.signal();
    }

    /// The next run of queued work, at most `run_pages` long.
    pub(crate) fn next_work(&self) -> Option<Range<usize>> {
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        let range = work.pop_front()?;
        let split = range.start + range.len().min(self.layout.run_pages);
        if split < range.end {
            work.push_front(split..range.end);
        }
        let more = !work.is_empty();
        drop(work);
        if more {
            // Another idle handler can take the rest meanwhile.
            self.signal();
        }
        Some(range.start..split)
    }

    pub(crate) fn signal(&self) {
        // The eventfd counter cannot overflow in practice; a failed write only delays work
        // until the next fault.
        let _ = rustix::io::write(&self.wakeup, &1u64.to_ne_bytes());
    }

    /// Blocks until a fault, queued work or shutdown; returns whether faults are pending.
    pub(crate) fn wait(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [
            PollFd::new(&self.uffd, PollFlags::IN),
            PollFd::new(&self.wakeup, PollFlags::IN),
        ];
        // EINTR and friends just return to the caller's loop, which looks again.
        if poll(&mut fds, None).is_err() {
            return true;
        }
        if !fds[1].revents().is_empty() {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(&self.wakeup, &mut counter);
        }
        !fds[0].revents().is_empty()
    }

    /// Blocks until queued work, shutdown or `timeout`, ignoring faults: the wait of a
    /// handler whose CPU is not where the faults happen (see the `handler` notes).
    pub(crate) fn wait_for_work(&self, timeout: Duration) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.wakeup, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        if poll(&mut fds, Some(&timeout)).is_ok_and(|ready| ready > 0) {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(&self.wakeup, &mut counter);
        }
    }

    /// Counts `count` fault messages served by some handler; returns the new total.
    pub(crate) fn served(&self, count: usize) -> u64 {
        self.served.fetch_add(count as u64, Ordering::Relaxed) + count as u64
    }

    /// Fault messages served so far by all handlers.
    pub(crate) fn served_total(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Reads pending faults without blocking.
    pub(crate) fn read_faults(&self, buf: &mut [u8], faults: &mut Vec<Fault>) -> usize {
        uffd::read_faults(self.uffd.as_fd(), buf, faults).unwrap_or(0)
    }

    /// Stops the handlers: each passes the wake-up on as it leaves (one read of the eventfd
    /// consumes it).
    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.evictor.ring();
        self.work.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.signal();
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}
