//! The page table of a region: one byte of state per page, the resident and dirty counts, and
//! the CLOCK hand that picks eviction victims.
//!
//! Every transition is a compare-and-swap on the page's byte, so that exactly one thread owns
//! a page while it is being filled, written back or evicted; the others see the transitional
//! state and leave the page to its owner, who wakes the threads waiting on it when it is done.
//!
//! ```text
//!            claim               install (read fault, prefetch)
//!   Absent ─────────▶ Filling ───────────────────────────▶ Clean ◀──┐
//!     ▲   ◀─ release ─┘  │ install (write fault)           │ first   │ written
//!     │                  ▼                                 ▼ write   │ back
//!     │                  │                           Unprotecting    │
//!     │   store error ─▶ Failed (poisoned)               Dirty ──▶ Cleaning
//!     │                                                    │
//!     └──────────────── Evicting ◀─── CLOCK victim ────────┘ (or Clean)
//! ```
//!
//! The high bit is CLOCK's reference bit: set when the pager sees the page used (a fault, a
//! first write, an accessor call), cleared when the hand passes. userfaultfd reports only
//! faults, not hits on resident pages, so a page read only through raw pointers after it was
//! filled looks unused; read-ahead pages start unreferenced, so a scan does not push out the
//! pages a random workload keeps touching.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// What a page is doing. See the module docs for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Not in memory; the next access faults.
    Absent = 0,
    /// Claimed by a thread that is reading it from the store.
    Filling = 1,
    /// In memory, write-protected, identical to the store.
    Clean = 2,
    /// In memory and written since it was filled or last written back.
    Dirty = 3,
    /// Being written back by `flush`; write-protected meanwhile.
    Cleaning = 4,
    /// Chosen for eviction: being written back (if dirty) and discarded.
    Evicting = 5,
    /// Its store read failed; accesses raise SIGBUS until the failure is reported or cleared.
    Failed = 6,
    /// Becoming dirty: the handler that saw its first write lifts the write protection.
    /// Owned like the other transitional states, so that no write-back can protect the page
    /// and have the protection lifted under it.
    Unprotecting = 7,
}

const STATE_MASK: u8 = 0x7f;
const REFERENCED: u8 = 0x80;

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & STATE_MASK {
            0 => State::Absent,
            1 => State::Filling,
            2 => State::Clean,
            3 => State::Dirty,
            4 => State::Cleaning,
            5 => State::Evicting,
            6 => State::Failed,
            _ => State::Unprotecting,
        }
    }

    /// Whether the page holds memory (counts against the budget).
    pub(crate) fn is_resident(self) -> bool {
        !matches!(self, State::Absent | State::Failed)
    }
}

/// A page chosen by the CLOCK hand, now in `Evicting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) page: usize,
    pub(crate) dirty: bool,
}

#[derive(Debug)]
pub(crate) struct PageTable {
    states: Box<[AtomicU8]>,
    resident: AtomicUsize,
    peak_resident: AtomicUsize,
    dirty: AtomicUsize,
    hand: Mutex<usize>,
}

impl PageTable {
    /// A table of `pages` absent pages; `None` if its byte per page cannot be allocated.
    pub(crate) fn new(pages: usize) -> Option<PageTable> {
        let mut states = Vec::new();
        states.try_reserve_exact(pages).ok()?;
        states.extend((0..pages).map(|_| AtomicU8::new(0)));
        Some(PageTable {
            states: states.into_boxed_slice(),
            resident: AtomicUsize::new(0),
            peak_resident: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            hand: Mutex::new(0),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn state(&self, page: usize) -> State {
        State::from_bits(self.states[page].load(Ordering::SeqCst))
    }

    /// Moves `page` from `from` to `to`, keeping its reference bit. False if it was not in
    /// `from`.
    pub(crate) fn transition(&self, page: usize, from: State, to: State) -> bool {
        self.states[page]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                (State::from_bits(bits) == from).then_some((bits & REFERENCED) | to as u8)
            })
            .is_ok()
    }

    /// Claims an absent page for filling; `referenced` marks a demand fault (as opposed to
    /// read-ahead).
    pub(crate) fn claim(&self, page: usize, referenced: bool) -> bool {
        let to = State::Filling as u8 | if referenced { REFERENCED } else { 0 };
        self.states[page]
            .compare_exchange(State::Absent as u8, to, Ordering::SeqCst, Ordering::SeqCst)
            .or_else(|_| {
                self.states[page].compare_exchange(
                    State::Absent as u8 | REFERENCED,
                    to,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
            })
            .is_ok()
    }

    /// Sets the reference bit.
    pub(crate) fn reference(&self, page: usize) {
        self.states[page].fetch_or(REFERENCED, Ordering::Relaxed);
    }

    pub(crate) fn resident(&self) -> usize {
        self.resident.load(Ordering::SeqCst)
    }

    pub(crate) fn dirty(&self) -> usize {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Reserves `count` frames if that keeps residency within `budget`.
    pub(crate) fn try_reserve(&self, count: usize, budget: usize) -> bool {
        let reserved = self
            .resident
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |resident| {
                resident.checked_add(count).filter(|&total| total <= budget)
            });
        if let Ok(before) = reserved {
            self.peak_resident
                .fetch_max(before + count, Ordering::Relaxed);
        }
        reserved.is_ok()
    }

    /// Reserves `count` frames whatever the budget (a demand fault with nothing evictable).
    pub(crate) fn force_reserve(&self, count: usize) {
        let before = self.resident.fetch_add(count, Ordering::SeqCst);
        self.peak_resident
            .fetch_max(before + count, Ordering::Relaxed);
    }

    /// The most frames ever reserved at once.
    pub(crate) fn peak_resident(&self) -> usize {
        self.peak_resident.load(Ordering::Relaxed)
    }

    /// Returns `count` frames.
    pub(crate) fn release(&self, count: usize) {
        self.resident.fetch_sub(count, Ordering::SeqCst);
    }

    pub(crate) fn add_dirty(&self, count: usize) {
        self.dirty.fetch_add(count, Ordering::SeqCst);
    }

    pub(crate) fn sub_dirty(&self, count: usize) {
        self.dirty.fetch_sub(count, Ordering::SeqCst);
    }

    /// Runs the CLOCK hand until `want` victims are found or every page was passed twice;
    /// the victims are moved to `Evicting` and appended to `out`. Pages inside `spared` are
    /// passed over.
    pub(crate) fn select_victims(
        &self,
        want: usize,
        spared: &[std::ops::Range<usize>],
        out: &mut Vec<Victim>,
    ) {
        let mut hand = self.hand.lock().unwrap_or_else(|e| e.into_inner());
        let pages = self.states.len();
        let mut found = 0;
        for _ in 0..pages.saturating_mul(2) {
            if found == want {
                break;
            }
            let page = *hand;
            *hand = if page + 1 == pages { 0 } else { page + 1 };
            let slot = &self.states[page];
            let bits = slot.load(Ordering::SeqCst);
            let state = State::from_bits(bits);
            if !matches!(state, State::Clean | State::Dirty)
                || spared.iter().any(|range| range.contains(&page))
            {
                continue;
            }
            if bits & REFERENCED != 0 {
                slot.fetch_and(!REFERENCED, Ordering::SeqCst);
                continue;
            }
            if slot
                .compare_exchange(
                    bits,
                    State::Evicting as u8,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                out.push(Victim {
                    page,
                    dirty: state == State::Dirty,
                });
                found += 1;
            }
        }
    }
}

/// Groups sorted page numbers into runs of consecutive pages.
pub(crate) fn runs_of(pages: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some(run) if run.end == page => run.end += 1,
            _ => runs.push(page..page + 1),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_claim_of_a_page_succeeds() {
        let table = PageTable::new(4).unwrap();
        assert!(table.claim(2, true));
        assert!(!table.claim(2, false));
        assert_eq!(table.state(2), State::Filling);
        assert!(table.transition(2, State::Filling, State::Clean));
        assert!(!table.transition(2, State::Filling, State::Dirty));
    }

    #[test]
    fn clock_spares_referenced_pages_once() {
        let table = PageTable::new(3).unwrap();
        for page in 0..3 {
            assert!(table.claim(page, page == 1));
            assert!(table.transition(page, State::Filling, State::Clean));
        }
        let mut victims = Vec::new();
        table.select_victims(2, &[], &mut victims);
        assert_eq!(
            victims.iter().map(|v| v.page).collect::<Vec<_>>(),
            [0, 2],
            "page 1 was referenced and gets a second chance"
        );
        victims.clear();
        table.select_victims(1, &[], &mut victims);
        assert_eq!(victims[0].page, 1, "its bit was cleared on the first pass");
        assert!(table.state(1) == State::Evicting);
    }

    #[test]
    fn reservations_respect_the_budget() {
        let table = PageTable::new(8).unwrap();
        assert!(table.try_reserve(3, 4));
        assert!(!table.try_reserve(2, 4));
        assert!(table.try_reserve(1, 4));
        table.release(2);
        assert_eq!(table.resident(), 2);
    }

    #[test]
    fn runs_group_consecutive_pages() {
        assert_eq!(runs_of([1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert!(runs_of([]).is_empty());
    }
}
