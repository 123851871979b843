//! Explicit page access: what a buffer manager does instead of faulting — pins, optimistic
//! reads and page allocation on the same pages the fault path serves.
//!
//! # Why
//! A fault costs a round trip to a handler thread (≈8.5 µs here) before the store is even
//! asked; a program that knows which page it wants can ask for it itself. As in vmcache
//! (Leis et al., SIGMOD 2023), every page has one word of state, pins and version (see
//! `pages`), a miss reads the store straight into the page's memory in the calling thread,
//! and a hit costs two loads of that word around the reader's own loads.
//!
//! # How
//! Explicit accesses work on the *alias* of the region's memfd, which nobody registers with
//! userfaultfd, so they never fault. A page filled here is the same page a fault would have
//! filled: a raw access to it later maps it into the view (a minor fault, with no store read).
//!
//! * A **shared pin** ([`PagedRegion::pin_shared`]) keeps the page in memory and its bytes
//!   still (no exclusive pin, no eviction) for as long as the guard lives: it lends `&[u8]`.
//! * The **exclusive pin** ([`PagedRegion::pin_exclusive`]) lends `&mut [u8]`; a mutable
//!   borrow marks the page dirty, and dropping the guard gives the page a new version.
//! * An **optimistic read** ([`PagedRegion::read_optimistic`]) pins nothing: the closure reads
//!   through an [`OptimisticPage`], which hands out copies, never references, and the read is
//!   kept only if the page's version did not change meanwhile; otherwise the closure runs
//!   again (and after [`OPTIMISTIC_RETRIES`] failed attempts under a shared pin, so that a
//!   stream of writers cannot starve it). Whatever the closure computed from a torn read is
//!   thrown away with it, but the closure must not trust what it reads (an offset read from
//!   the page may be garbage): `OptimisticPage` checks every bound, so garbage yields `None`,
//!   not a panic.
//!
//! # Waiting and limits
//! A page someone else is filling, writing back or evicting, or that is pinned the other way,
//! is waited for (spinning, then yielding, then sleeping briefly). A call that would wait for
//! a pin of the calling thread itself — an exclusive pin on a page it pins, a read of a page
//! it pins exclusively, a flush of a region where it pins a page exclusively — fails with
//! `WouldBlock` instead (guards stay on the thread that took them, so it knows its own). Pins
//! are never evicted: a miss when every page of the budget is pinned fails with
//! [`ErrorKind::OutOfMemory`] after a short wait, instead of waiting for ever. Otherwise a
//! miss is held to the budget as a fault is: when nothing can be evicted (other threads'
//! fills, write-backs and evictions hold the rest, or the store refuses write-backs), it
//! takes its frame beyond the budget. A page holds at most 65,535 shared pins; one more fails
//! with `WouldBlock`. A guard kept for ever (`mem::forget`) pins its page for ever, as a
//! forgotten lock guard would; dropping the region writes the page back all the same.
//!
//! The safe accessors keep the same rules: [`PagedRegion::write_at`] writes each page under
//! its exclusive pin (a new version for optimistic readers), and [`PagedRegion::read_at`]
//! keeps a page's copy only if its version held. Raw pointers into the view see the same
//! bytes, but writes through them are not versioned: optimistic readers do not notice them.

use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use super::OnStoreError;
use super::engine::{Engine, Unfilled};
use super::held;
use super::pages::{Pin, State};
use super::region::PagedRegion;
use super::stats::Counters;
use crate::{Error, ErrorKind, Result};

pub use super::guards::{ExclusivePage, OptimisticPage, SharedPage};

/// Failed validations after which an optimistic read takes a shared pin instead.
pub const OPTIMISTIC_RETRIES: usize = 16;

/// Backs off while a page is busy: spins, then yields, then sleeps.
#[derive(Default)]
pub(super) struct Backoff(u32);

impl Backoff {
    pub(super) fn wait(&mut self) {
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..=64 => std::hint::spin_loop(),
            65..=2048 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
}

impl Engine {
    /// Makes `page` resident for an explicit access, reading the store in this thread. Ok
    /// once the page is in memory (filled here or by someone else, who may still be busy with
    /// it: the caller looks again).
    fn fill_explicit(&self, operation: &'static str, page: usize) -> Result<()> {
        if !self.claim_with_frame(operation, page)? {
            return Ok(());
        }
        let run = page..page + 1;
        match self.fill(&run, false, false) {
            Ok(()) => {
                // Counted once filled, as `pages_filled` is: explicit fills are a share of it.
                Counters::add(&self.counters.explicit_fills, 1);
                self.wake(&run);
                Ok(())
            }
            Err(Unfilled::Store(error)) => {
                let message = error.to_string();
                let kind = error.kind();
                self.fail(page, false, error, false);
                if self.layout.on_error == OnStoreError::Zero {
                    return Ok(());
                }
                // Report: the page is tried again on its next access; Signal: it stays
                // failed until `retry_failed`.
                let reported = self
                    .take_failure(page, 0)
                    .unwrap_or_else(|| std::sync::Arc::new(std::io::Error::new(kind, message)));
                Err(self.store_error(operation, &reported, page))
            }
            Err(Unfilled::Install(errno)) => Err(Error::os(operation, errno)),
        }
    }

    /// Makes an absent `page` resident as zeros, without reading the store, dirty (a page
    /// being allocated).
    fn fill_zeroed(&self, page: usize) -> Result<()> {
        self.fill_without_store("allocate_page", page, None)
            .map(drop)
    }

    /// Makes an absent `page` resident holding `bytes` (the whole page), dirty, without
    /// reading the store: a write of a whole page. False, with nothing written, if the page
    /// was not absent.
    pub(super) fn fill_with(&self, page: usize, bytes: &[u8]) -> Result<bool> {
        self.fill_without_store("write_at", page, Some(bytes))
    }

    fn fill_without_store(
        &self,
        operation: &'static str,
        page: usize,
        bytes: Option<&[u8]>,
    ) -> Result<bool> {
        if !self.claim_with_frame(operation, page)? {
            return Ok(false);
        }
        let run = page..page + 1;
        let alias = self.alias_ptr(page);
        let page_size = self.page_size();
        // SAFETY: the page is claimed by this thread (Filling) and lies in the alias; the
        // bytes given are at most the page's own (the last page may be short) and are a
        // borrow of memory outside the region.
        unsafe {
            match bytes {
                Some(bytes) => {
                    let len = bytes.len().min(page_size);
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), alias, len);
                    std::ptr::write_bytes(alias.add(len), 0, page_size - len);
                }
                None => std::ptr::write_bytes(alias, 0, page_size),
            }
        }
        let installed = self.install(&run, true, false);
        self.wake(&run);
        installed.map_err(|errno| Error::os(operation, errno))?;
        Ok(true)
    }

    /// Reserves a frame, then claims the absent `page` (Absent → Filling) for this thread to
    /// fill: true if claimed, false if someone else has the page already (the frame is given
    /// back). The frame comes first, so that every page being filled holds one.
    fn claim_with_frame(&self, operation: &'static str, page: usize) -> Result<bool> {
        if self.pages.state(page) != State::Absent {
            return Ok(false);
        }
        self.reserve_explicit().map_err(|why| {
            Error::new(ErrorKind::OutOfMemory, operation, why)
                .with_offset((page * self.page_size()) as u64)
                .with_hint("drop some pins, or give the pager a larger budget")
        })?;
        if self.pages.claim(page, true) {
            return Ok(true);
        }
        self.pages.release(1);
        Ok(false)
    }

    /// A frame for an explicit fill, evicting if need be. An explicit miss is a demand
    /// access, held to the budget as a fault is: when no page can be evicted because others
    /// are being filled, written back or evicted, or because the store refuses their
    /// write-back, the frame is taken beyond the budget. Pins are the exception: they may be
    /// held for ever, so a budget that pins alone hold fails (after a short wait for a pin
    /// to go).
    fn reserve_explicit(&self) -> std::result::Result<(), &'static str> {
        for attempt in 0..16 {
            if self.reserve(1, false) > 0 {
                return Ok(());
            }
            if self.pages.pinned_resident() < self.layout.budget_pages {
                self.reserve(1, true);
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(50 << (attempt / 4)));
        }
        Err("every page of the budget is pinned")
    }

    /// The pages `allocate_page` took and could not hand out.
    fn returned(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.returned_pages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An optimistic read that raced an eviction may have read the page's hole through the
    /// alias, which gives the memfd a page of zeros that no budget counts: if the page is
    /// absent, claim it and punch that page out again.
    #[cold]
    fn discard_stray(&self, page: usize) {
        if self.pages.claim(page, false) {
            self.discard_backing(&(page..page + 1));
            self.pages.transition(page, State::Filling, State::Absent);
            self.wake(&(page..page + 1));
        }
    }

    fn store_error(&self, operation: &'static str, error: &std::io::Error, page: usize) -> Error {
        Error::store(operation, error)
            .with_offset((page * self.page_size()) as u64)
            .with_hint(format!("store: {}", self.store.describe()))
    }

    /// The bytes of `page` that belong to the region (the last page may be short).
    #[inline]
    pub(super) fn page_len(&self, page: usize) -> usize {
        let start = page * self.page_size();
        self.page_size().min(self.layout.len - start)
    }

    /// Pins `page` (`exclusive` or shared), filling it first if it is absent, and notes the
    /// pin as this thread's.
    fn pin_page(&self, operation: &'static str, page: usize, exclusive: bool) -> Result<()> {
        let mut backoff = Backoff(0);
        loop {
            match self.pages.pin(page, exclusive) {
                Pin::Taken => {
                    held::note(self.id, page, exclusive);
                    return Ok(());
                }
                Pin::Absent => self.fill_explicit(operation, page)?,
                Pin::Failed => {
                    if let Some(error) = self.take_failure(page, 0) {
                        return Err(self.store_error(operation, &error, page));
                    }
                }
                Pin::Busy => {
                    held::check_self_wait(operation, self.id, page, exclusive)?;
                    backoff.wait();
                }
                Pin::Saturated => {
                    return Err(Error::new(
                        ErrorKind::WouldBlock,
                        operation,
                        format!("page {page} has as many shared pins as it can count (65,535)"),
                    ));
                }
            }
        }
    }
}

impl PagedRegion {
    /// How many pages the region has.
    #[inline]
    pub fn page_count(&self) -> usize {
        self.engine().pages.len()
    }

    #[inline]
    fn check_page(&self, operation: &'static str, page: usize) -> Result<()> {
        if page < self.page_count() {
            return Ok(());
        }
        Err(self.no_such_page(operation, page))
    }

    #[cold]
    fn no_such_page(&self, operation: &'static str, page: usize) -> Error {
        Error::new(
            ErrorKind::OutOfBounds,
            operation,
            format!(
                "page {page} is past the region's {} pages",
                self.page_count()
            ),
        )
    }

    /// Pins page `page` shared: its bytes stay in memory and unchanged (no exclusive pin, no
    /// eviction) while the guard lives. Reads the store in this thread on a miss.
    ///
    /// Errors: `OutOfBounds`; `Store` (the page is tried again next time, or stays failed
    /// with [`OnStoreError::Signal`]); `OutOfMemory` when the whole budget is pinned;
    /// `WouldBlock` when this thread pins the page exclusively, or it has 65,535 shared pins.
    pub fn pin_shared(&self, page: usize) -> Result<SharedPage<'_>> {
        self.check_page("pin_shared", page)?;
        self.engine().pin_page("pin_shared", page, false)?;
        Ok(SharedPage::new(self, page, self.page_bytes(page)))
    }

    /// Pins page `page` exclusively: nobody else pins it or reads it optimistically to the
    /// end while the guard lives. A mutable borrow of the guard marks the page dirty.
    ///
    /// Errors as for [`pin_shared`](Self::pin_shared) (`WouldBlock` when this thread pins
    /// the page in any way), and `PermissionDenied` on a read-only region.
    pub fn pin_exclusive(&self, page: usize) -> Result<ExclusivePage<'_>> {
        self.check_page("pin_exclusive", page)?;
        self.check_writable("pin_exclusive")?;
        self.pin_exclusive_for("pin_exclusive", page)
    }

    /// The exclusive pin of a page known to exist in a writable region.
    pub(super) fn pin_exclusive_for(
        &self,
        operation: &'static str,
        page: usize,
    ) -> Result<ExclusivePage<'_>> {
        self.engine().pin_page(operation, page, true)?;
        Ok(self.exclusive_guard(page))
    }

    /// Takes a new page of a writable store: the first page past the ones in use (see
    /// [`Pager::allocated`](super::Pager::allocated)), zero-filled without reading the
    /// store, pinned exclusively and dirty. Its number is [`ExclusivePage::page`].
    ///
    /// Errors: `PermissionDenied` on a read-only region; `OutOfBounds` when every page of
    /// the store is in use; `OutOfMemory` when the whole budget is pinned.
    pub fn allocate_page(&self) -> Result<ExclusivePage<'_>> {
        self.check_writable("allocate_page")?;
        let engine = self.engine();
        let returned = engine.returned().pop();
        let page = match returned {
            Some(page) => page,
            None => engine
                .allocated
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |next| {
                    (next < engine.pages.len()).then_some(next + 1)
                })
                .map_err(|full| {
                    Error::new(
                        ErrorKind::OutOfBounds,
                        "allocate_page",
                        format!("all {full} pages of the store are in use"),
                    )
                    .with_hint("grow the store (set_len on its file) and build a larger region")
                })?,
        };
        let pinned = engine
            .fill_zeroed(page)
            .and_then(|()| self.pin_exclusive(page));
        match pinned {
            Ok(mut guard) => {
                // A page that was resident already (pinned, read, written through a
                // pointer) holds other bytes: a new page is zeros.
                guard.fill(0);
                Ok(guard)
            }
            Err(error) => {
                // Not handed out: the next allocation takes it.
                engine.returned().push(page);
                Err(error)
            }
        }
    }

    /// How many pages are in use: [`Pager::allocated`](super::Pager::allocated) plus those
    /// [`allocate_page`](Self::allocate_page) handed out (a page whose allocation failed is
    /// not, and is the next one handed out).
    pub fn allocated_pages(&self) -> usize {
        let engine = self.engine();
        let returned = engine.returned();
        engine.allocated.load(Ordering::SeqCst) - returned.len()
    }

    /// Runs `read` on page `page` without pinning it, and returns its result once the
    /// page's version shows that nothing changed the bytes meanwhile; otherwise runs it
    /// again. See the [module docs](self) for what `read` may trust. Reads the store in
    /// this thread on a miss.
    ///
    /// Errors as for [`pin_shared`](Self::pin_shared).
    #[inline]
    pub fn read_optimistic<R>(
        &self,
        page: usize,
        mut read: impl FnMut(&OptimisticPage<'_>) -> R,
    ) -> Result<R> {
        self.check_page("read_optimistic", page)?;
        let engine = self.engine();
        let view = OptimisticPage::new(engine.alias_ptr(page).cast_const(), engine.page_len(page));
        // The hit, kept short so that many can be in flight at once.
        let look = engine.pages.look(page);
        if look.before.is_stable() {
            let result = read(&view);
            if look.held() {
                return Ok(result);
            }
            engine.discard_stray(page);
        }
        self.read_optimistic_again(page, &view, read)
    }

    /// The rest of an optimistic read: misses, busy pages, failed validations.
    #[cold]
    fn read_optimistic_again<R>(
        &self,
        page: usize,
        view: &OptimisticPage<'_>,
        mut read: impl FnMut(&OptimisticPage<'_>) -> R,
    ) -> Result<R> {
        let engine = self.engine();
        let mut backoff = Backoff(0);
        let mut failed = 0;
        while failed < OPTIMISTIC_RETRIES {
            let look = engine.pages.look(page);
            if !look.before.is_stable() {
                match look.before.state() {
                    State::Absent => engine.fill_explicit("read_optimistic", page)?,
                    State::Failed => engine.pin_page("read_optimistic", page, false).map(
                        // Not failed any more: refilled by someone meanwhile.
                        |()| {
                            held::release(engine.id, page, false);
                            engine.pages.unpin_shared(page);
                        },
                    )?,
                    _ => {
                        held::check_self_wait("read_optimistic", engine.id, page, false)?;
                        backoff.wait();
                    }
                }
                continue;
            }
            let result = read(view);
            if look.held() {
                return Ok(result);
            }
            engine.discard_stray(page);
            failed += 1;
        }
        let pinned = self.pin_shared(page)?;
        let result = read(view);
        drop(pinned);
        Ok(result)
    }

    fn page_bytes(&self, page: usize) -> *mut u8 {
        self.engine().alias_ptr(page)
    }

    fn exclusive_guard(&self, page: usize) -> ExclusivePage<'_> {
        // The pin's acquiring update happens before the writes through the guard, for the
        // optimistic readers' fence.
        fence(Ordering::Release);
        ExclusivePage::new(self, page, self.page_bytes(page))
    }

    fn check_writable(&self, operation: &'static str) -> Result<()> {
        if self.is_writable() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            operation,
            "the region is read-only (its store is, or the pager was built read-only)",
        ))
    }
}
