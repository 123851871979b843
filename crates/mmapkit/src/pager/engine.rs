//! The engine of a region: what happens on a fault, how pages are filled from the store, how
//! frames are reserved within the budget, and the queue of work done ahead of demand.
//!
//! Filling a page is a claim (Absent → Filling, so one thread fills it), a store read into a
//! handler's scratch buffer, and one UFFDIO_COPY that installs the bytes atomically —
//! write-protected for a read fault, so that the first write is seen, writable for a write
//! fault, which is dirty from the start. The copy does not wake the waiting threads: the page
//! state is set first and the threads are woken after, so that nobody ever sees an installed
//! page whose state says it is still being filled. Write-back and eviction live in
//! `writeback`.

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
enum Unfilled {
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
    pub(crate) on_error: OnStoreError,
}

pub(crate) struct Engine {
    pub(super) memory: Mapping,
    pub(super) base: usize,
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
        memory: Mapping,
        uffd: OwnedFd,
        store: Arc<dyn Store>,
        layout: Layout,
    ) -> crate::Result<Engine> {
        let pages = layout.len.div_ceil(layout.page_size);
        if memory.len() != pages * layout.page_size {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidInput,
                "pager",
                "the region's mapping does not match its length",
            ));
        }
        let wakeup = crate::sys::eventfd(0).map_err(|errno| crate::Error::os("pager", errno))?;
        Ok(Engine {
            base: memory.as_ptr() as usize,
            memory,
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
            write_error: Mutex::new(None),
            zero_fill_error: Mutex::new(None),
            counters: Counters::default(),
        })
    }

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
    pub(crate) fn on_fault(&self, fault: Fault, scratch: &mut [u8]) {
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
            self.on_missing(page, fault.write, scratch);
        }
    }

    /// A missing page: fill it, and on a sequential read fill the next pages of the
    /// read-ahead window in the same store read (the rest of the window is queued for the
    /// other handlers), as the kernel's synchronous read-ahead does.
    fn on_missing(&self, page: usize, write: bool, scratch: &mut [u8]) {
        let started = Instant::now();
        let ahead = self.readahead.on_fault(page);
        while !self.pages.claim(page, true) {
            match self.pages.state(page) {
                // Given back or cleared between the claim and the look: claim again.
                State::Absent => continue,
                // Installed: our fault raced the installer's wake-up.
                State::Clean | State::Dirty => self.wake(&(page..page + 1)),
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
        match self.fill(&run, write, scratch) {
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
                    self.fill(&alone, write, scratch)
                };
                match result {
                    Ok(()) => self.wake(&alone),
                    Err(Unfilled::Store(error)) => self.fail(page, write, error, scratch),
                    Err(Unfilled::Install(_)) => {}
                }
            }
            Err(Unfilled::Install(_)) => {}
        }
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

    /// Reads the claimed pages of `run` from the store and installs them; the caller wakes
    /// their waiters once its bookkeeping is done. On a store error the pages stay claimed,
    /// for the caller to decide; on an install error they are given back and their waiters
    /// woken.
    fn fill(&self, run: &Range<usize>, write: bool, scratch: &mut [u8]) -> Result<(), Unfilled> {
        let start = run.start * self.layout.page_size;
        let bytes = run.len() * self.layout.page_size;
        let from_store = bytes.min(self.layout.len - start);
        let buf = &mut scratch[..bytes];
        self.store
            .read_at(start as u64, &mut buf[..from_store])
            .map_err(Unfilled::Store)?;
        buf[from_store..].fill(0);
        Counters::add(&self.counters.pages_filled, run.len() as u64);
        Counters::add(&self.counters.bytes_read, from_store as u64);
        // The waiters are woken once the state is set, so that nobody sees an installed page
        // still Filling (a flush right after a write would skip it). Letting UFFDIO_COPY
        // wake read faults was measured: it saves no time per fault.
        self.install(run, buf, write).map_err(Unfilled::Install)
    }

    /// Installs `bytes` as the claimed pages of `run` and sets their state; the caller wakes
    /// their waiters.
    pub(super) fn install(
        &self,
        run: &Range<usize>,
        bytes: &[u8],
        write: bool,
    ) -> Result<(), Errno> {
        let (address, len) = self.span(run);
        let protect = self.layout.dirty_tracking && !write;
        if write {
            self.pages.add_dirty(run.len());
        }
        let mut done = 0;
        while done < len {
            // SAFETY: the pages of `run` are claimed by this thread (state Filling), so they
            // are missing and nobody else installs them; `bytes` is a page-aligned scratch
            // buffer of `len` bytes.
            let copied = unsafe {
                uffd::copy(
                    self.uffd.as_fd(),
                    address + done,
                    bytes[done..].as_ptr(),
                    len - done,
                    protect,
                    false,
                )
            };
            match copied {
                Ok(()) => done = len,
                Err((Errno::AGAIN, partial)) => done += partial,
                Err((errno, partial)) => {
                    if write {
                        self.pages.sub_dirty(run.len());
                    }
                    // Pages installed before the failure must go too, or they would be
                    // present while their state says Absent.
                    let installed = done + partial;
                    if installed > 0 {
                        let start = run.start * self.layout.page_size;
                        // SAFETY: the run is ours (Filling); nobody relies on bytes of pages
                        // whose fill is being abandoned, and their waiters fault again.
                        let _ = unsafe {
                            self.memory.advise_unchecked(
                                start..start + installed,
                                UncheckedAdvice::DontNeed,
                            )
                        };
                    }
                    self.unclaim(run);
                    return Err(errno);
                }
            }
        }
        let state = if write { State::Dirty } else { State::Clean };
        for page in run.clone() {
            self.pages.transition(page, State::Filling, state);
        }
        Ok(())
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

    /// Reserves frames for `count` pages, evicting to stay within the budget. A demand fault
    /// always gets its frame (over the budget if nothing can be evicted, which happens only
    /// while every resident page is in flight); read-ahead gets nothing then and returns 0.
    pub(super) fn reserve(&self, count: usize, demand: bool) -> usize {
        let budget = self.layout.budget_pages;
        // Victims whose write-back fails stay (referenced, so the hand passes them next
        // time); a few more rounds look for pages that can go.
        let mut fruitless = 0;
        loop {
            if self.pages.try_reserve(count, budget) {
                return count;
            }
            let excess = (self.pages.resident() + count).saturating_sub(budget);
            let batch = (budget / 64).clamp(1, 32);
            let (chosen, evicted) = self.evict_some(excess.max(batch));
            if evicted > 0 {
                fruitless = 0;
                continue;
            }
            fruitless += 1;
            if chosen == 0 || fruitless > 4 {
                if demand {
                    self.pages.force_reserve(count);
                    return count;
                }
                return 0;
            }
        }
    }

    /// Fills the absent pages of `range` ahead of demand, in runs of at most `run_pages`.
    /// Stops quietly when the budget has no room; returns the first store error.
    pub(crate) fn fill_ahead(&self, range: Range<usize>, scratch: &mut [u8]) -> io::Result<()> {
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
            match self.fill(&run, false, scratch) {
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
        self.work.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.signal();
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}
