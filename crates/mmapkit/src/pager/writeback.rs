//! Write-back and eviction: the pager's msync and its page reclaim.
//!
//! A dirty page is written back while write-protected: the writer that touches it meanwhile
//! faults and waits, and the bytes the store receives are the bytes the page holds. Flushing
//! then marks the page clean (still protected, so its next write is seen again); evicting
//! punches the pages out of the memfd, in runs, after which any access faults and refills
//! them from the store, which now has the latest bytes. A write-back that fails never
//! discards: the page stays dirty and the error is returned by the next `flush`.
//!
//! With asynchronous write tracking (UFFD_FEATURE_WP_ASYNC) a first write does not fault:
//! the kernel lifts the protection itself, and the pager asks PAGEMAP_SCAN which pages were
//! written. A flush scans, marks the written clean pages dirty, and protects them again as
//! it writes them back (a write after that is seen by the next flush); an eviction first unmaps its victims from the view — an access then is a minor
//! fault that waits for the eviction — and then scans them: a written page's protection is
//! gone with its mapping, a clean one leaves the kernel's write-protect marker behind.

use std::io;
use std::ops::Range;
use std::os::fd::AsFd;

use super::engine::{Engine, remember};
use super::pages::{State, Victim, runs_of};
use super::stats::Counters;
use crate::sys::uffd;

impl Engine {
    /// Runs the CLOCK hand for up to `want` victims and evicts them; returns how many pages
    /// were chosen and how many left memory (fewer when write-backs failed).
    pub(super) fn evict_some(&self, want: usize) -> (usize, usize) {
        let mut victims = Vec::with_capacity(want);
        // Read ahead and not read yet: spared, up to half the budget.
        let spared = self
            .readahead
            .ahead_of_readers(self.layout.budget_pages / 2);
        self.pages.select_victims(want, &spared, &mut victims);
        let chosen = victims.len();
        (chosen, self.evict(victims))
    }

    /// Evicts the resident pages of `range` (written back first if dirty); returns how many.
    pub(crate) fn evict_range(&self, range: Range<usize>) -> usize {
        let mut victims = Vec::new();
        for page in range {
            for (from, dirty) in [(State::Clean, false), (State::Dirty, true)] {
                if let Some(word) = self.pages.take(page, from, State::Evicting) {
                    victims.push(Victim {
                        page,
                        dirty,
                        mapped: word.is_mapped(),
                    });
                }
            }
        }
        self.evict(victims)
    }

    /// Evicts pages already moved to `Evicting`; returns how many left memory.
    fn evict(&self, mut victims: Vec<Victim>) -> usize {
        victims.sort_unstable_by_key(|victim| victim.page);
        if self.layout.async_writes {
            self.find_written_victims(&mut victims);
        }
        let dirty = runs_of(victims.iter().filter(|v| v.dirty).map(|v| v.page));
        let mut kept = Vec::new();
        for run in dirty {
            let written = match self.protect(&run) {
                Ok(()) => self.write_back(&run),
                Err(error) => Err(error),
            };
            match written {
                Ok(()) => self.pages.sub_dirty(run.len()),
                Err(error) => {
                    // Keep the bytes: the page stays dirty (and protected, so its next
                    // write unprotects it again) and the next flush reports the error.
                    for page in run.clone() {
                        self.pages.transition(page, State::Evicting, State::Dirty);
                        self.pages.reference(page);
                    }
                    self.wake(&run);
                    kept.push(run);
                    Counters::add(&self.counters.store_errors, 1);
                    remember(&self.write_error, error);
                }
            }
        }
        let discard = runs_of(
            victims
                .iter()
                .map(|victim| victim.page)
                .filter(|page| !kept.iter().any(|run| run.contains(page))),
        );
        let mut evicted = 0;
        for run in discard {
            let discarded = self.discard_backing(&run);
            let next = if discarded {
                State::Absent
            } else {
                State::Clean
            };
            for page in run.clone() {
                self.pages.transition(page, State::Evicting, next);
            }
            if discarded {
                self.pages.release(run.len());
                evicted += run.len();
            }
            self.wake(&run);
        }
        Counters::add(&self.counters.evictions, evicted as u64);
        evicted
    }

    /// Writes every dirty page back and then flushes the store. Returns the first error,
    /// including a write-back error of an eviction since the last flush.
    ///
    /// Every write that completed before the call is in the store when it returns: pages
    /// that another thread is writing back (an eviction, a concurrent flush) or about to make
    /// dirty are waited for, not skipped.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut first_error = None;
        if self.layout.async_writes {
            self.find_written_pages();
        }
        if self.pages.dirty() > 0 {
            let mut claimed = Vec::new();
            for page in 0..self.pages.len() {
                if self.flush_waits_for(page) {
                    // Nothing is held while waiting: a thread holding the pin may need one of
                    // the pages claimed so far (lock coupling) before it lets this one go.
                    self.write_back_claimed(&mut claimed, &mut first_error);
                    while self.flush_waits_for(page) {
                        std::thread::yield_now();
                    }
                }
                if self.pages.transition(page, State::Dirty, State::Cleaning) {
                    claimed.push(page);
                }
            }
            self.write_back_claimed(&mut claimed, &mut first_error);
        }
        let eviction_error = self
            .write_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(error) = eviction_error {
            first_error.get_or_insert(error);
        }
        if let Err(error) = self.store.flush() {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether a flush must wait before it looks at `page`: another thread writes it back,
    /// evicts it or lifts its protection, or holds its exclusive pin (whose writes the flush
    /// must include).
    fn flush_waits_for(&self, page: usize) -> bool {
        let state = self.pages.state(page);
        matches!(
            state,
            State::Unprotecting | State::Evicting | State::Cleaning
        ) || (state == State::Dirty && self.pages.word(page).is_exclusive())
    }

    /// Writes back the pages a flush claimed (`Cleaning`), run by run, and empties the list.
    fn write_back_claimed(&self, claimed: &mut Vec<usize>, first_error: &mut Option<io::Error>) {
        for run in runs_of(claimed.drain(..)) {
            let written = match self.protect(&run) {
                Ok(()) => self.write_back(&run),
                Err(error) => Err(error),
            };
            let (next, written) = match written {
                Ok(()) => (State::Clean, true),
                Err(error) => {
                    Counters::add(&self.counters.store_errors, 1);
                    first_error.get_or_insert(error);
                    (State::Dirty, false)
                }
            };
            for page in run.clone() {
                self.pages.transition(page, State::Cleaning, next);
            }
            if written {
                self.pages.sub_dirty(run.len());
            }
            self.wake(&run);
        }
    }

    /// Write-protects a run before its write-back. If that fails, the bytes could change
    /// while being written, so the caller keeps the pages dirty.
    fn protect(&self, run: &Range<usize>) -> io::Result<()> {
        let (address, len) = self.span(run);
        // SAFETY: the run is ours (Evicting or Cleaning) and resident; protecting it only
        // makes writers wait until we wake them.
        unsafe { uffd::write_protect(self.uffd.as_fd(), address, len, true) }
            .map_err(|errno| io::Error::from_raw_os_error(errno.raw_os_error()))
    }

    /// Writes a run of write-protected pages to the store, from the alias (the view may not
    /// map them, and a fault there would wait on this very thread).
    fn write_back(&self, run: &Range<usize>) -> io::Result<()> {
        let start = run.start * self.layout.page_size;
        let end = (run.end * self.layout.page_size).min(self.layout.len);
        if self.layout.async_writes {
            return self.write_back_copied(start, end, run.len());
        }
        // SAFETY: the pages are resident and write-protected, and we own them (Evicting or
        // Cleaning, never under an exclusive pin): writers through the view fault and wait,
        // nothing installs or discards them, so the bytes do not change while the slice
        // lives. The range lies inside the region.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.alias_ptr(run.start).cast_const(), end - start)
        };
        self.store.write_at(start as u64, bytes)?;
        self.count_written(run.len(), bytes.len());
        Ok(())
    }

    /// The write-back of asynchronous tracking, where protection does not stop a writer
    /// (the kernel lifts it and marks the page, for the next scan): the store gets a copy,
    /// so that the slice it is given never changes under it.
    fn write_back_copied(&self, start: usize, end: usize, pages: usize) -> io::Result<()> {
        let mut buffer = vec![0u8; (end - start).min(WRITE_BACK_CHUNK)];
        let mut at = start;
        while at < end {
            let chunk = &mut buffer[..(end - at).min(WRITE_BACK_CHUNK)];
            let from = self.alias.as_ptr().wrapping_add(at).cast::<u8>();
            // SAFETY: the range lies in the alias, whose pages are resident and ours (they
            // cannot be discarded meanwhile), so the copy cannot fault; writers may change
            // the bytes while they are copied, which a shared-memory copy allows.
            unsafe {
                crate::fault::copy_shared(
                    "write back",
                    chunk.as_mut_ptr(),
                    from,
                    chunk.len(),
                    crate::fault::Faults::Impossible,
                )
            }
            .map_err(io::Error::other)?;
            self.store.write_at(at as u64, chunk)?;
            at += chunk.len();
        }
        self.count_written(pages, end - start);
        Ok(())
    }

    fn count_written(&self, pages: usize, bytes: usize) {
        Counters::add(&self.counters.writebacks, pages as u64);
        Counters::add(&self.counters.bytes_written, bytes as u64);
    }
}

/// The most bytes an asynchronous-tracking write-back copies before handing them to the
/// store.
const WRITE_BACK_CHUNK: usize = 256 << 10;

impl Engine {
    /// Asynchronous tracking: marks dirty the clean pages written through the view since
    /// they were last protected. The scan leaves the marks alone (their write-back protects
    /// the pages again): a page another thread is evicting or writing back meanwhile keeps
    /// its mark for that thread's own scan, or for the next flush.
    fn find_written_pages(&self) {
        let Some(pagemap) = &self.pagemap else {
            return;
        };
        let mut written = Vec::new();
        let end = self.base + self.pages.len() * self.layout.page_size;
        if uffd::written_pages(pagemap.as_fd(), self.base, end, true, &mut written).is_err() {
            // Unknown: every clean page the view maps is written back rather than lose a
            // write.
            written.push(self.base..end);
        }
        for range in written {
            for page in self.pages_of(&range) {
                // A page another thread writes back or evicts meanwhile is waited for: its
                // mark may come from a write after that thread's copy, which this flush
                // must store (an eviction unmaps and scans the page itself).
                // The state is read once per round: a failed move from Clean followed by a
                // second look would miss the owner finishing in between (Cleaning → Clean)
                // and drop the mark.
                while self.pages.word(page).is_mapped() {
                    match self.pages.state(page) {
                        State::Clean => {
                            if self.pages.transition(page, State::Clean, State::Dirty) {
                                self.pages.add_dirty(1);
                                Counters::add(&self.counters.write_faults, 1);
                                break;
                            }
                        }
                        State::Cleaning | State::Evicting | State::Unprotecting => {
                            std::thread::yield_now();
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    /// The pager pages an address range of the view touches.
    fn pages_of(&self, range: &Range<usize>) -> Range<usize> {
        if range.is_empty() {
            return 0..0;
        }
        self.page_of(range.start - self.base)..self.page_of(range.end - 1 - self.base) + 1
    }

    /// Asynchronous tracking: unmaps the victims the view maps — an access now waits for the
    /// eviction, where a write-protected page would not stop a writer — and marks those
    /// written since their last protection dirty.
    fn find_written_victims(&self, victims: &mut [Victim]) {
        let Some(pagemap) = &self.pagemap else {
            return;
        };
        let mapped = runs_of(
            victims
                .iter()
                .filter(|victim| victim.mapped)
                .map(|victim| victim.page),
        );
        let mut written = Vec::new();
        for run in &mapped {
            self.discard_view(run);
            let (address, len) = self.span(run);
            if uffd::written_pages(pagemap.as_fd(), address, address + len, false, &mut written)
                .is_err()
            {
                // Unknown: write the run back rather than lose a write.
                written.push(address..address + len);
            }
        }
        for range in written {
            let pages = self.pages_of(&range);
            for victim in victims
                .iter_mut()
                .filter(|v| v.mapped && pages.contains(&v.page))
            {
                if !victim.dirty {
                    victim.dirty = true;
                    self.pages.add_dirty(1);
                    Counters::add(&self.counters.write_faults, 1);
                }
            }
        }
    }
}
