//! Frames within the budget, and the background evictor that keeps some free.
//!
//! A fill reserves its frames first. While residency stays under the *high watermark* (the
//! budget less one batch) that is one atomic add; crossing it rings the evictor, a thread of
//! the region that runs the CLOCK hand in batches of [`BATCH`] pages — written back in runs,
//! then punched out of the memfd in runs — until residency is down to the *low watermark*
//! (two batches under the budget). A fill evicts on its own thread only when the budget is
//! exhausted, that is when the evictor fell behind. Batches amortise the costly part of an
//! eviction, the TLB shootdown that unmapping pages sends to every CPU the process runs on:
//! vmcache evicts 64 pages at a time for the same reason.

use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use super::engine::Engine;
use super::stats::Counters;

/// Most pages one eviction pass takes.
pub(crate) const BATCH: usize = 64;

/// The evictor's wake-up: a flag under a lock, and a condition variable.
#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    rung: Mutex<bool>,
    ready: Condvar,
}

impl Doorbell {
    pub(crate) fn ring(&self) {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        if !*rung {
            *rung = true;
            self.ready.notify_one();
        }
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        while !*rung {
            rung = self.ready.wait(rung).unwrap_or_else(|e| e.into_inner());
        }
        *rung = false;
    }
}

impl Engine {
    /// Pages one eviction pass takes: [`BATCH`], or a quarter of a small budget.
    fn batch(&self) -> usize {
        BATCH.min(self.layout.budget_pages / 4).max(1)
    }

    /// Whether the budget is a limit at all.
    fn has_budget(&self) -> bool {
        self.layout.budget_pages < self.pages.len()
    }

    /// Reserves frames for `count` pages. Rings the evictor when residency crosses the high
    /// watermark; evicts here only when the budget is exhausted. A demand fault always gets
    /// its frame (over the budget if nothing can be evicted, which happens only while every
    /// resident page is pinned or in flight); read-ahead and explicit fills get nothing then
    /// and 0 is returned.
    pub(super) fn reserve(&self, count: usize, demand: bool) -> usize {
        let budget = self.layout.budget_pages;
        // Victims whose write-back fails stay (referenced, so the hand passes them next
        // time); a few more rounds look for pages that can go.
        let mut fruitless = 0;
        loop {
            if self.pages.try_reserve(count, budget) {
                if self.has_budget() && self.pages.resident() + self.batch() > budget {
                    self.evictor.ring();
                }
                return count;
            }
            let excess = (self.pages.resident() + count).saturating_sub(budget);
            let (chosen, evicted) = self.evict_some(excess.max(self.batch()));
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

    /// The evictor's loop: down to the low watermark whenever rung, until shutdown.
    fn run_evictor(&self) {
        let low = self.layout.budget_pages.saturating_sub(2 * self.batch());
        while !self.is_shut_down() {
            self.evictor.wait();
            while !self.is_shut_down() && self.pages.resident() > low {
                let (_, evicted) = self.evict_some(self.batch());
                Counters::add(&self.counters.background_evictions, evicted as u64);
                if evicted == 0 {
                    // Everything left is pinned, in flight or refused by the store: the next
                    // reservation rings again.
                    break;
                }
            }
        }
    }
}

/// Starts the evictor of a region with a budget; `None` without one (nothing to evict).
pub(crate) fn spawn(engine: &std::sync::Arc<Engine>) -> crate::Result<Option<JoinHandle<()>>> {
    if !engine.has_budget() {
        return Ok(None);
    }
    let engine = std::sync::Arc::clone(engine);
    std::thread::Builder::new()
        .name("mmapkit-evictor".into())
        .spawn(move || {
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run_evictor()));
            if ran.is_err() {
                // As for the handlers: a panic here is a broken invariant with pages
                // half-evicted, which nothing can safely finish.
                eprintln!("mmapkit: the pager's evictor thread panicked; aborting");
                std::process::abort();
            }
        })
        .map(Some)
        .map_err(|error| {
            crate::Error::io("pager", &error).with_message("cannot start the evictor thread")
        })
}
