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
use crate::map::UncheckedAdvice;
use crate::sys::uffd;

/// The last store read error of a page.
#[derive(Debug)]
pub(crate) struct Failure {
    error: Arc<io::Error>,
    /// The page is Failed and carries the poison marker of this error.
    poisoned: bool,
}

impl Engine {
    /// A demand fill failed: zeros, or a poisoned page whose next access raises SIGBUS,
    /// which a guarded accessor turns into the store's error.
    pub(super) fn fail(&self, page: usize, write: bool, error: io::Error, scratch: &mut [u8]) {
        Counters::add(&self.counters.store_errors, 1);
        let run = page..page + 1;
        if self.layout.on_error == OnStoreError::Zero {
            let zeros = &mut scratch[..self.page_size()];
            zeros.fill(0);
            if self.install(&run, zeros, write).is_ok() {
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
                poisoned,
            },
        );
        if !poisoned {
            // Without the marker the page is merely missing: let the waiters fault again.
            self.pages.transition(page, State::Failed, State::Absent);
            self.wake(&run);
        }
    }

    /// The store error behind a SIGBUS a guarded accessor got on `page`. With
    /// [`OnStoreError::Report`] the page is cleared, so that its next access asks the store
    /// again; with `Signal` it stays failed.
    pub(crate) fn take_failure(&self, page: usize) -> Option<Arc<io::Error>> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let failure = failures.get_mut(&page)?;
        let error = Arc::clone(&failure.error);
        if self.layout.on_error == OnStoreError::Report {
            self.clear(page, failure);
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
        let start = page * self.layout.page_size;
        // SAFETY: a failed page holds only the poison marker, which discarding removes; no
        // reference relies on its (nonexistent) contents.
        let discarded = unsafe {
            self.memory
                .advise_unchecked(start..start + self.page_size(), UncheckedAdvice::DontNeed)
        };
        if discarded.is_ok() {
            failure.poisoned = false;
            self.pages.transition(page, State::Failed, State::Absent);
            self.wake(&(page..page + 1));
        }
    }
}
