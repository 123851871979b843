//! Store read errors on demand fills: zeros, or a poisoned page whose accesses raise SIGBUS
//! until the failure is reported to a guarded accessor (or cleared by `retry_failed`).
//!
//! The failures map and the page's Failed state change together, under the map's lock:
//! recording an error, marking the page Failed and poisoning it is one step, and so is
//! clearing it (discard the poison marker, Absent, wake). An accessor that got SIGBUS always
//! finds the error that caused it, or a later one of the same page: entries are kept after
//! the page is cleared, so that several accessors hit by one failure all report it.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::OnStoreError;
use super::engine::{Engine, remember};
use super::pages::State;
use super::stats::Counters;
use crate::sys::uffd;

/// The last store read error of a page.
#[derive(Debug)]
pub(crate) struct Failure {
    error: Arc<io::Error>,
    /// When it happened, on the engine's failure clock.
    at: u64,
    /// The page is Failed and carries the poison marker of this error.
    poisoned: bool,
}

impl Engine {
    /// A demand fill failed: zeros, or a poisoned page whose next access raises SIGBUS,
    /// which a guarded accessor turns into the store's error.
    pub(super) fn fail(&self, page: usize, write: bool, error: io::Error, map: bool) {
        Counters::add(&self.counters.store_errors, 1);
        let run = page..page + 1;
        if self.layout.on_error == OnStoreError::Zero {
            // SAFETY: the page is claimed by this thread (Filling) and lies in the alias; the
            // failed fill's bytes were discarded, and these zeros become the page.
            unsafe { std::ptr::write_bytes(self.alias_ptr(page), 0, self.page_size()) };
            if self.install(&run, write, map).is_ok() {
                remember(
                    &self.zero_fill_error,
                    io::Error::new(
                        error.kind(),
                        format!("page {page} reads as zeros after a store error: {error}"),
                    ),
                );
                self.wake(&run);
            }
            return;
        }
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        self.pages.transition(page, State::Filling, State::Failed);
        self.pages.release(1);
        let (address, len) = self.span(&run);
        // SAFETY: the page is ours (Failed, under the failures lock, which every clearing
        // takes) and missing; poisoning wakes its waiters, whose access then raises SIGBUS.
        let poisoned = unsafe { uffd::poison(self.uffd.as_fd(), address, len) }.is_ok();
        failures.insert(
            page,
            Failure {
                error: Arc::new(error),
                at: self
                    .failure_clock
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1,
                poisoned,
            },
        );
        if !poisoned {
            // Without the marker the page is merely missing: let the waiters fault again.
            self.pages.transition(page, State::Failed, State::Absent);
            self.wake(&run);
        }
    }

    /// The failure clock now: an accessor notes it before it starts.
    pub(crate) fn failure_time(&self) -> u64 {
        self.failure_clock.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The store error behind a SIGBUS a guarded accessor got on `page`. With
    /// [`OnStoreError::Report`] the page is cleared, so that its next access asks the store
    /// again, and an error older than the access (`since`, from
    /// [`failure_time`](Self::failure_time): a fill nobody was waiting for any more) is not
    /// reported but cleared, for the accessor to try again; with `Signal` the page stays
    /// failed and its error is always reported.
    pub(crate) fn take_failure(&self, page: usize, since: u64) -> Option<Arc<io::Error>> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let failure = failures.get_mut(&page)?;
        let error = Arc::clone(&failure.error);
        if self.layout.on_error == OnStoreError::Report {
            self.clear(page, failure);
            if failure.at <= since {
                return None;
            }
        }
        Some(error)
    }

    /// Makes a failed page absent again, so that its next access asks the store anew.
    pub(crate) fn clear_failed(&self, page: usize) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(failure) = failures.get_mut(&page) {
            self.clear(page, failure);
        }
    }

    /// Discards the poison marker of a failed page and wakes whoever faulted on it since.
    /// Called with the failures lock held (`failure` is borrowed from the map).
    fn clear(&self, page: usize, failure: &mut Failure) {
        if !failure.poisoned || self.pages.state(page) != State::Failed {
            return;
        }
        // A failed page holds only the poison marker in the view, which discarding removes.
        if self.discard_view(&(page..page + 1)) {
            failure.poisoned = false;
            self.pages.transition(page, State::Failed, State::Absent);
            self.wake(&(page..page + 1));
        }
    }
}
