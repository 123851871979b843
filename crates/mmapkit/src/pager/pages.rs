//! The page table of a region: one 64-bit word per page — its state, CLOCK's reference bit,
//! its pins and a version — shared by the fault path and the explicit one, with the resident
//! and dirty counts and the CLOCK hand that picks eviction victims.
//!
//! Every transition is a compare-and-swap on the page's word, so that exactly one thread owns
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
//! The word, from the low bits up:
//!
//! | bits | what |
//! |---|---|
//! | 0–6 | the [`State`] |
//! | 7 | CLOCK's reference bit: set when the pager sees the page used (a fault, a first write, an accessor call, an explicit access), cleared when the hand passes |
//! | 8–23 | shared pins: readers that hold the page's bytes still |
//! | 24 | the exclusive pin: one writer owns the bytes |
//! | 25 | mapped: the region's own view may hold the page (a fault mapped it); explicit access alone never maps it there |
//! | 32–63 | the version: changes whenever the bytes may have changed under an optimistic reader — an exclusive pin's release, an eviction, a failure |
//!
//! A pinned page is never a victim and never written back under an exclusive pin. userfaultfd
//! reports faults, not hits, so a page read only through raw pointers after it was filled
//! looks unused; explicit accesses set the bit as they go. Read-ahead pages start
//! unreferenced, so a scan does not push out the pages a random workload keeps touching.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

const STATE_MASK: u64 = 0x7f;
const REFERENCED: u64 = 0x80;
const PIN_ONE: u64 = 1 << 8;
const PIN_MASK: u64 = 0xffff << 8;
const EXCLUSIVE: u64 = 1 << 24;
const MAPPED: u64 = 1 << 25;
const VERSION_ONE: u64 = 1 << 32;

impl State {
    #[inline]
    fn from_bits(bits: u64) -> State {
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

    /// Whether the page's bytes are in memory and stay put unless an exclusive pin or a
    /// raw write changes them: what pins and optimistic reads need.
    #[inline]
    fn is_readable(self) -> bool {
        matches!(
            self,
            State::Clean | State::Dirty | State::Cleaning | State::Unprotecting
        )
    }

    /// Whether taking the page for this state changes its bytes' identity (so optimistic
    /// readers must retry).
    fn ends_version(self) -> bool {
        matches!(self, State::Absent | State::Evicting | State::Failed)
    }
}

/// A page's word as loaded: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    #[inline]
    pub(crate) fn state(self) -> State {
        State::from_bits(self.0)
    }

    #[inline]
    pub(crate) fn version(self) -> u64 {
        self.0 >> 32
    }

    #[inline]
    pub(crate) fn is_exclusive(self) -> bool {
        self.0 & EXCLUSIVE != 0
    }

    pub(crate) fn is_pinned(self) -> bool {
        self.0 & (PIN_MASK | EXCLUSIVE) != 0
    }

    pub(crate) fn is_mapped(self) -> bool {
        self.0 & MAPPED != 0
    }

    /// Whether an optimistic read may start (and, seen again after it, whether it held).
    #[inline]
    pub(crate) fn is_stable(self) -> bool {
        self.state().is_readable() && !self.is_exclusive()
    }
}

/// A page's word as an optimistic reader saw it before reading: see
/// [`PageTable::look`]. Looking again costs no bounds check, so that the reader's hit path
/// stays a few instructions around its own loads.
pub(crate) struct Look<'a> {
    slot: &'a AtomicU64,
    pub(crate) before: Word,
}

impl Look<'_> {
    /// Whether the read that followed the look held: the page kept its version and nobody
    /// pinned it exclusively meanwhile. A read that held references the page (a load of the
    /// bit first: readers on many CPUs do not fight over a line whose bit is set already).
    #[inline]
    pub(crate) fn held(&self) -> bool {
        // Orders the reader's loads before the second look, as a seqlock reader does.
        std::sync::atomic::fence(Ordering::Acquire);
        let after = Word(self.slot.load(Ordering::Relaxed));
        if after.version() != self.before.version() || !after.is_stable() {
            return false;
        }
        if after.0 & REFERENCED == 0 {
            self.slot.fetch_or(REFERENCED, Ordering::Relaxed);
        }
        true
    }
}

/// What a pin attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pin {
    /// Pinned.
    Taken,
    /// Not in memory: fill it, then try again.
    Absent,
    /// Failed: report its error.
    Failed,
    /// Someone else owns it for now (filling, writing back, evicting, pinned the other way):
    /// wait and try again.
    Busy,
    /// It has as many shared pins as the word can count.
    Saturated,
}

/// A page chosen by the CLOCK hand, now in `Evicting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) page: usize,
    pub(crate) dirty: bool,
    /// The region's view may hold the page (see the module docs).
    pub(crate) mapped: bool,
}

#[derive(Debug)]
pub(crate) struct PageTable {
    words: Box<[AtomicU64]>,
    resident: AtomicUsize,
    peak_resident: AtomicUsize,
    dirty: AtomicUsize,
    hand: Mutex<usize>,
}

impl PageTable {
    /// A table of `pages` absent pages; `None` if its word per page cannot be allocated.
    pub(crate) fn new(pages: usize) -> Option<PageTable> {
        let mut words = Vec::new();
        words.try_reserve_exact(pages).ok()?;
        words.extend((0..pages).map(|_| AtomicU64::new(0)));
        Some(PageTable {
            words: words.into_boxed_slice(),
            resident: AtomicUsize::new(0),
            peak_resident: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            hand: Mutex::new(0),
        })
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }

    pub(crate) fn state(&self, page: usize) -> State {
        self.word(page).state()
    }

    /// The page's word, with acquire ordering.
    #[inline]
    pub(crate) fn word(&self, page: usize) -> Word {
        Word(self.words[page].load(Ordering::Acquire))
    }

    /// An optimistic reader's first look at `page`'s word (acquire ordering): the word, and
    /// the slot to look at again once the read is done.
    #[inline]
    pub(crate) fn look(&self, page: usize) -> Look<'_> {
        let slot = &self.words[page];
        Look {
            slot,
            before: Word(slot.load(Ordering::Acquire)),
        }
    }

    /// Moves `page` from `from` to `to`, keeping its reference bit and pins. False if it
    /// was not in `from`, or if `to` needs what a pin forbids: no victim is pinned, and no
    /// write-back runs under an exclusive pin.
    pub(crate) fn transition(&self, page: usize, from: State, to: State) -> bool {
        self.take(page, from, to).is_some()
    }

    /// [`transition`](Self::transition), returning the word it replaced.
    pub(crate) fn take(&self, page: usize, from: State, to: State) -> Option<Word> {
        self.words[page]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                let word = Word(bits);
                if word.state() != from
                    || (to == State::Evicting && word.is_pinned())
                    || (to == State::Cleaning && word.is_exclusive())
                {
                    return None;
                }
                let mut next = (bits & !STATE_MASK) | to as u64;
                if to.ends_version() {
                    next = next.wrapping_add(VERSION_ONE);
                }
                if matches!(to, State::Absent | State::Failed) {
                    next &= !MAPPED;
                }
                Some(next)
            })
            .ok()
            .map(Word)
    }

    /// Claims an absent page for filling; `referenced` marks a demand access (as opposed to
    /// read-ahead).
    pub(crate) fn claim(&self, page: usize, referenced: bool) -> bool {
        self.words[page]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                (Word(bits).state() == State::Absent).then(|| {
                    let bits = bits & !(STATE_MASK | REFERENCED);
                    bits | State::Filling as u64 | if referenced { REFERENCED } else { 0 }
                })
            })
            .is_ok()
    }

    /// Sets the reference bit (a load first: a hit that finds it set writes nothing, so
    /// readers on many CPUs do not fight over the word's cache line).
    #[inline]
    pub(crate) fn reference(&self, page: usize) {
        if self.words[page].load(Ordering::Relaxed) & REFERENCED == 0 {
            self.words[page].fetch_or(REFERENCED, Ordering::Relaxed);
        }
    }

    /// Notes that the region's view now maps the page.
    pub(crate) fn set_mapped(&self, page: usize) {
        self.words[page].fetch_or(MAPPED, Ordering::SeqCst);
    }

    /// Takes a shared pin (`exclusive` false) or the exclusive one, setting the reference
    /// bit.
    pub(crate) fn pin(&self, page: usize, exclusive: bool) -> Pin {
        let mut outcome = Pin::Busy;
        let updated = self.words[page].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
            let word = Word(bits);
            let state = word.state();
            let free = !word.is_exclusive();
            outcome = match state {
                State::Absent => Pin::Absent,
                State::Failed => Pin::Failed,
                State::Clean | State::Dirty if exclusive && free && bits & PIN_MASK == 0 => {
                    return Some(bits | EXCLUSIVE | REFERENCED);
                }
                _ if !exclusive && free && state.is_readable() => {
                    if bits & PIN_MASK == PIN_MASK {
                        Pin::Saturated
                    } else {
                        return Some((bits + PIN_ONE) | REFERENCED);
                    }
                }
                _ => Pin::Busy,
            };
            None
        });
        if updated.is_ok() { Pin::Taken } else { outcome }
    }

    /// Drops a shared pin.
    pub(crate) fn unpin_shared(&self, page: usize) {
        self.words[page].fetch_sub(PIN_ONE, Ordering::Release);
    }

    /// Drops the exclusive pin, with a new version for optimistic readers; `dirty` marks the
    /// page written. Returns whether the page went from clean to dirty.
    pub(crate) fn unpin_exclusive(&self, page: usize, dirty: bool) -> bool {
        let mut cleaned_to_dirty = false;
        let _ = self.words[page].fetch_update(Ordering::Release, Ordering::Relaxed, |bits| {
            let mut next = (bits & !EXCLUSIVE).wrapping_add(VERSION_ONE);
            cleaned_to_dirty = dirty && Word(bits).state() == State::Clean;
            if cleaned_to_dirty {
                next = (next & !STATE_MASK) | State::Dirty as u64;
            }
            Some(next)
        });
        cleaned_to_dirty
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

    /// How many resident pages are pinned (shared or exclusive): a scan of every word, for
    /// the rare moments a reservation finds no frame.
    pub(crate) fn pinned_resident(&self) -> usize {
        self.words
            .iter()
            .map(|slot| Word(slot.load(Ordering::Relaxed)))
            .filter(|word| word.is_pinned() && word.state().is_resident())
            .count()
    }

    /// Drops every pin: for a region going away, whose guards are all gone (those forgotten
    /// with `mem::forget` leave their pins behind, and nobody can use them any more). A page
    /// whose exclusive pin was forgotten may have been written: it becomes dirty.
    pub(crate) fn drop_leaked_pins(&self) {
        for slot in &self.words {
            let before = slot.fetch_and(!(PIN_MASK | EXCLUSIVE), Ordering::SeqCst);
            if before & EXCLUSIVE != 0 {
                let cleaned = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |bits| {
                    (Word(bits).state() == State::Clean)
                        .then_some((bits & !STATE_MASK) | State::Dirty as u64)
                });
                if cleaned.is_ok() {
                    self.add_dirty(1);
                }
            }
        }
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
        let pages = self.words.len();
        let mut found = 0;
        for _ in 0..pages.saturating_mul(2) {
            if found == want {
                break;
            }
            let page = *hand;
            *hand = if page + 1 == pages { 0 } else { page + 1 };
            let slot = &self.words[page];
            let bits = slot.load(Ordering::SeqCst);
            let word = Word(bits);
            let state = word.state();
            if !matches!(state, State::Clean | State::Dirty)
                || word.is_pinned()
                || spared.iter().any(|range| range.contains(&page))
            {
                continue;
            }
            if bits & REFERENCED != 0 {
                slot.fetch_and(!REFERENCED, Ordering::SeqCst);
                continue;
            }
            let evicting =
                ((bits & !STATE_MASK) | State::Evicting as u64).wrapping_add(VERSION_ONE);
            if slot
                .compare_exchange(bits, evicting, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                out.push(Victim {
                    page,
                    dirty: state == State::Dirty,
                    mapped: word.is_mapped(),
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
