//! [`PagedRegion`]: the region a [`Pager`](super::Pager) builds, and what a program does with
//! it — guarded copies in and out, prefetch, flush, eviction, statistics.

use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::engine::Engine;
use super::stats::Stats;
use crate::sys::uffd::Access;
use crate::{Error, ErrorKind, Result};

/// Memory filled on demand from a store. See the [module docs](super).
///
/// Dropping the region stops its handlers, writes dirty pages back (errors are lost: call
/// [`close`](Self::close) to see them) and unmaps it.
pub struct PagedRegion {
    engine: Arc<Engine>,
    handlers: Vec<JoinHandle<()>>,
    evictor: Option<JoinHandle<()>>,
    access: Access,
    closed: bool,
}

impl std::fmt::Debug for PagedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedRegion")
            .field("address", &self.as_ptr())
            .field("len", &self.len())
            .field("page_size", &self.page_size())
            .field("handlers", &self.handlers.len())
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// How many times an accessor retries a page that faulted without a recorded store error
/// (another accessor took the error first, and the page is being read again).
const RETRIES: usize = 8;

impl PagedRegion {
    pub(super) fn new(engine: Arc<Engine>, access: Access) -> PagedRegion {
        PagedRegion {
            engine,
            handlers: Vec::new(),
            evictor: None,
            access,
            closed: false,
        }
    }

    #[inline]
    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn set_evictor(&mut self, evictor: Option<JoinHandle<()>>) {
        self.evictor = evictor;
    }

    pub(super) fn add_handler(&mut self, handler: JoinHandle<()>) {
        self.handlers.push(handler);
    }

    /// The region's length: the store's.
    pub fn len(&self) -> usize {
        self.engine.layout.len
    }

    /// Always false: a region over an empty store cannot be built.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many handler threads serve the region's faults.
    pub fn handler_threads(&self) -> usize {
        self.handlers.len()
    }

    /// The pager's page size.
    pub fn page_size(&self) -> usize {
        self.engine.page_size()
    }

    /// Whether writes are allowed (and tracked, and written back).
    pub fn is_writable(&self) -> bool {
        self.engine.layout.dirty_tracking
    }

    /// How the userfaultfd was obtained; with [`Access::UserModeOnly`], system calls cannot
    /// read into missing pages of the region.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The first byte of the region. Reading through it faults pages in like any access;
    /// see [`as_slice`](Self::as_slice) for what a reference must respect.
    pub fn as_ptr(&self) -> *const u8 {
        self.engine.memory.as_ptr()
    }

    /// The first byte, for writes (only on a writable region; others fault with SIGSEGV).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.engine.memory.as_mut_ptr()
    }

    /// The region as a slice.
    ///
    /// # Safety
    /// For as long as the slice lives: nothing writes the region (through
    /// [`write_at`](Self::write_at) or a pointer), every page it is used on reads without a
    /// store error (or the process gets SIGBUS), and, if pages may be evicted (a budget, or
    /// [`evict`](Self::evict)), nobody changes the store behind the region, so that a page
    /// read again holds the same bytes.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the memory is mapped for `len` bytes; the rest is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// Copies the bytes at `offset` into `buf`, faulting pages in as needed (read-ahead
    /// and all). Each page's bytes are copied whole from one version of it: a copy that an
    /// exclusive pin's writer (or [`write_at`](Self::write_at)) changed meanwhile is made
    /// again; a page this thread pins exclusively fails with `WouldBlock`.
    ///
    /// Errors: `OutOfBounds`; `Store` when the store failed to read a page (with
    /// [`OnStoreError::Report`](super::OnStoreError) or `Signal`); the error's offset is where
    /// the copy stopped.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check("read_at", offset, buf.len())?;
        let page_size = self.page_size();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done;
            let len = (page_size - at % page_size).min(buf.len() - done);
            self.read_in_page(at, &mut buf[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    /// `read_at` within one page: a guarded copy through the view, kept if the page's version
    /// held; after a few misses (a page evicted again before it could be read twice, or a
    /// stream of writers), a copy under a shared pin.
    fn read_in_page(&self, at: usize, buf: &mut [u8]) -> Result<()> {
        let engine = &self.engine;
        let page = engine.page_of(at);
        let mut backoff = super::explicit::Backoff::default();
        for _ in 0..super::explicit::OPTIMISTIC_RETRIES {
            let look = engine.pages.look(page);
            if look.before.is_exclusive() {
                super::held::check_self_wait("read_at", engine.id, page, false)?;
                backoff.wait();
                continue;
            }
            // SAFETY: the range lies in the region (checked by the caller), which stays
            // mapped while `self` lives; `buf` is a unique borrow, so it does not overlap.
            unsafe { self.guarded_read(at, buf) }?;
            if look.before.is_stable() && look.held() {
                return Ok(());
            }
        }
        let pinned = self.pin_shared(page)?;
        let start = at - page * self.page_size();
        buf.copy_from_slice(&pinned[start..start + buf.len()]);
        Ok(())
    }

    /// Copies `data` into the region at `offset`; the pages become dirty. Each page is
    /// written under its exclusive pin, so readers never see half a write as a page's
    /// bytes; a page this thread has pinned fails with `WouldBlock`. A page written whole
    /// is not read from the store first.
    ///
    /// Errors as for [`read_at`](Self::read_at), `PermissionDenied` on a read-only region,
    /// and `OutOfMemory` when the whole budget is pinned.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check("write_at", offset, data.len())?;
        if !self.is_writable() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "write_at",
                "the region is read-only (its store is, or the pager was built read-only)",
            ));
        }
        let page_size = self.page_size();
        let mut done = 0;
        while done < data.len() {
            let at = offset + done;
            let page = self.engine.page_of(at);
            let start = at - page * page_size;
            let len = (page_size - start).min(data.len() - done);
            let part = &data[done..done + len];
            if start == 0
                && len == self.engine.page_len(page)
                && self.engine.fill_with(page, part)?
            {
                self.engine.pages.reference(page);
            } else {
                let mut guard = self.pin_exclusive_for("write_at", page)?;
                guard[start..start + len].copy_from_slice(part);
            }
            done += len;
        }
        Ok(())
    }

    /// Reads a plain-old-data value at `offset` (any alignment).
    pub fn read_pod<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let mut value = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Writes a plain-old-data value at `offset` (any alignment).
    pub fn write_pod<T: bytemuck::NoUninit>(&self, offset: usize, value: &T) -> Result<()> {
        self.write_at(offset, bytemuck::bytes_of(value))
    }

    /// A copy out of the view through the fault guard: a page whose store read failed raises
    /// SIGBUS, which the guard turns into an early stop; the failure recorded for that page
    /// becomes the error.
    ///
    /// # Safety
    /// `offset..offset + buf.len()` lies in the region.
    unsafe fn guarded_read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let operation = "read_at";
        let len = buf.len();
        let region = self.as_ptr();
        let mut done = 0;
        let mut retries = 0;
        let mut since = self.engine.failure_time();
        while done < len {
            let at = offset + done;
            // SAFETY: both pointers stay within their ranges, by the contract.
            let (to, from) = unsafe { (buf.as_mut_ptr().add(done), region.add(at)) };
            // A failed page raises SIGBUS by design: copies here can always fault.
            let faults = crate::fault::Faults::Possible;
            // SAFETY: forwarded from this function's contract; `buf` is a unique borrow, so
            // it does not overlap the region.
            match unsafe { crate::fault::copy_shared(operation, to, from, len - done, faults) } {
                Ok(()) => done = len,
                Err(stopped) => {
                    done += stopped.offset().unwrap_or(0) as usize;
                    let at = (offset + done) as u64;
                    if let Some(failure) = self
                        .engine
                        .take_failure(self.engine.page_of(at as usize), since)
                    {
                        return Err(Error::store(operation, &failure)
                            .with_offset(at)
                            .with_hint(format!("store: {}", self.engine.store.describe())));
                    }
                    since = self.engine.failure_time();
                    retries += 1;
                    if retries > RETRIES {
                        return Err(stopped.with_offset(at));
                    }
                }
            }
        }
        self.reference(offset, len);
        Ok(())
    }

    fn reference(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        for page in self.engine.page_of(offset)..=self.engine.page_of(offset + len - 1) {
            self.engine.pages.reference(page);
        }
    }

    fn check(&self, operation: &'static str, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                operation,
                format!("the range leaves the region (length {})", self.len()),
            )
            .with_range(offset as u64, len as u64)),
        }
    }

    /// The pages a byte range touches, checked against the region.
    fn pages(
        &self,
        operation: &'static str,
        range: impl RangeBounds<usize>,
    ) -> Result<Range<usize>> {
        let start = match range.start_bound() {
            Bound::Included(&start) => start,
            Bound::Excluded(&start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&end) => end.saturating_add(1),
            Bound::Excluded(&end) => end,
            Bound::Unbounded => self.len(),
        };
        if start > end && start <= self.len() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                operation,
                "the range ends before it starts",
            ));
        }
        self.check(operation, start, end.saturating_sub(start))?;
        let first = self.engine.page_of(start);
        if start == end {
            return Ok(first..first);
        }
        Ok(first..self.engine.page_of(end - 1) + 1)
    }

    /// Queues the pages of `range` to be filled by the handlers ahead of use, and returns at
    /// once (madvise WILLNEED for the pager). Pages already resident are skipped; the budget
    /// bounds how much is filled; a store error leaves the page for its first access.
    pub fn prefetch(&self, range: impl RangeBounds<usize>) -> Result<()> {
        let pages = self.pages("prefetch", range)?;
        self.engine.enqueue(pages);
        Ok(())
    }

    /// Fills the pages of `range` now, in the calling thread, and returns the store's error
    /// if a read fails. Stops early, without error, when the budget has no more room.
    pub fn populate(&self, range: impl RangeBounds<usize>) -> Result<()> {
        let pages = self.pages("populate", range)?;
        let start = (pages.start * self.page_size()) as u64;
        self.engine
            .fill_ahead(pages)
            .map_err(|error| Error::store("populate", &error).with_offset(start))
    }

    /// Writes every dirty page back to the store and flushes the store (fsync for a file):
    /// the pager's msync. Also returns a write-back error an eviction met since the last
    /// flush; pages whose write-back failed stay dirty.
    ///
    /// Waits for other threads' exclusive pins on dirty pages (their writes are part of
    /// what the flush promises; a guard forgotten with `mem::forget` is waited for for ever,
    /// as a forgotten lock guard would be); fails with `WouldBlock` on a thread that holds an
    /// exclusive pin of this region itself.
    pub fn flush(&self) -> Result<()> {
        if super::held::holds_exclusive(self.engine.id) {
            return Err(Error::new(
                ErrorKind::WouldBlock,
                "flush",
                "this thread holds an exclusive page pin, which the flush would wait for",
            )
            .with_hint("drop the ExclusivePage guards first"));
        }
        self.engine
            .flush()
            .map_err(|error| Error::store("flush", &error))
    }

    /// Writes back (if dirty) and discards the resident pages of `range`; returns how many
    /// bytes left memory. The next access reads them from the store again.
    pub fn evict(&self, range: impl RangeBounds<usize>) -> Result<usize> {
        let pages = self.pages("evict", range)?;
        Ok(self.engine.evict_range(pages) * self.page_size())
    }

    /// Whether the page holding `offset` is in memory.
    pub fn is_resident(&self, offset: usize) -> bool {
        offset < self.len()
            && self
                .engine
                .pages
                .state(self.engine.page_of(offset))
                .is_resident()
    }

    /// Makes failed pages in `range` (see [`OnStoreError::Signal`](super::OnStoreError))
    /// absent again, so that their next access asks the store anew.
    pub fn retry_failed(&self, range: impl RangeBounds<usize>) -> Result<()> {
        for page in self.pages("retry_failed", range)? {
            self.engine.clear_failed(page);
        }
        Ok(())
    }

    /// The first store error answered with zeros (see
    /// [`OnStoreError::Zero`](super::OnStoreError)) since the last call.
    pub fn take_zero_fill_error(&self) -> Option<Error> {
        let error = self
            .engine
            .zero_fill_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(Error::store("fill", &error))
    }

    /// What the region did so far.
    pub fn stats(&self) -> Stats {
        let page = self.page_size() as u64;
        let pages = &self.engine.pages;
        self.engine.counters.snapshot(
            pages.resident() as u64 * page,
            pages.peak_resident() as u64 * page,
            pages.dirty() as u64 * page,
        )
    }

    /// Stops the handlers, writes dirty pages back, and returns the final statistics — or
    /// the first write-back error, which dropping would lose.
    pub fn close(mut self) -> Result<Stats> {
        self.stop();
        self.closed = true;
        // As in drop: no guard outlives the region, so the pins left were forgotten.
        self.engine.pages.drop_leaked_pins();
        super::held::forget_region(self.engine.id);
        self.engine
            .flush()
            .map_err(|error| Error::store("close", &error))?;
        Ok(self.stats())
    }

    fn stop(&mut self) {
        self.engine.shut_down();
        for thread in self.handlers.drain(..).chain(self.evictor.take()) {
            // A thread that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

impl Drop for PagedRegion {
    fn drop(&mut self) {
        self.stop();
        // No guard outlives the region: pins left now were forgotten, and must not keep the
        // last write-back waiting.
        self.engine.pages.drop_leaked_pins();
        super::held::forget_region(self.engine.id);
        if !self.closed {
            let _ = self.engine.flush();
        }
        // Unmapping (when the engine goes) also ends the registration; threads waiting on
        // faults of a pointer the program kept would then see SIGSEGV, not hang.
    }
}
