//! Sequential read-ahead: spotting a thread that walks a region page after page, and asking
//! for the pages ahead of it before it touches them.
//!
//! The pager sees only faults, never hits, so a stream is recognised by its faults: a fault
//! on the page right after the previous one, or inside the window already asked for (the
//! reader caught up with a fill in flight). The first fault of a stream reads nothing ahead —
//! random access pays nothing for the detector — and each further fault of the stream doubles
//! the window, up to the configured maximum, as the kernel's own read-ahead does. Several
//! streams are followed at once (threads scanning different parts of a region).

use std::ops::Range;
use std::sync::Mutex;

const STREAMS: usize = 8;
const FIRST_WINDOW: usize = 2;
/// A stream that faulted within this many faults (of all streams) counts as current.
const RECENT_FAULTS: u64 = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    /// The last faulting page of the stream.
    last: usize,
    /// The first page not yet asked for.
    covered_end: usize,
    /// Pages the next window reads ahead.
    window: usize,
    /// When the stream last faulted, to replace the stalest one.
    used: u64,
}

#[derive(Debug)]
pub(crate) struct ReadAhead {
    max_window: usize,
    pages: usize,
    streams: Mutex<([Stream; STREAMS], u64)>,
}

impl ReadAhead {
    /// A detector for a region of `pages` pages, reading at most `max_window` pages ahead (0
    /// disables read-ahead).
    pub(crate) fn new(pages: usize, max_window: usize) -> ReadAhead {
        ReadAhead {
            max_window,
            pages,
            streams: Mutex::new(([Stream::default(); STREAMS], 0)),
        }
    }

    /// Records a missing-page fault at `page`; returns the pages to read ahead, if any.
    pub(crate) fn on_fault(&self, page: usize) -> Option<Range<usize>> {
        if self.max_window == 0 {
            return None;
        }
        let mut guard = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (streams, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        let matched = streams
            .iter_mut()
            .find(|s| s.used != 0 && page > s.last && page <= s.covered_end);
        let Some(stream) = matched else {
            let stalest = streams
                .iter_mut()
                .min_by_key(|s| s.used)
                .expect("there is always a stream slot");
            *stalest = Stream {
                last: page,
                covered_end: page + 1,
                window: 0,
                used: now,
            };
            return None;
        };
        stream.used = now;
        stream.last = page;
        stream.window = (stream.window * 2).max(FIRST_WINDOW).min(self.max_window);
        let end = (page + 1 + stream.window).min(self.pages);
        let start = stream.covered_end.max(page + 1);
        stream.covered_end = stream.covered_end.max(end);
        (start < end).then_some(start..end)
    }
}

impl ReadAhead {
    /// The pages each recent stream has asked for ahead of its reader and not reached yet (and
    /// the page it faulted on last, which it may still be reading), most recent stream first, at most `limit` pages in all: eviction spares them, or a scan
    /// would read them twice (the pager sees faults, not hits, so nothing else tells them from
    /// pages already read).
    pub(crate) fn ahead_of_readers(&self, limit: usize) -> Vec<Range<usize>> {
        let guard = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (streams, clock) = &*guard;
        let mut recent: Vec<&Stream> = streams
            .iter()
            .filter(|stream| stream.used != 0 && clock - stream.used < RECENT_FAULTS)
            .collect();
        recent.sort_unstable_by_key(|stream| std::cmp::Reverse(stream.used));
        let mut left = limit;
        let mut windows = Vec::new();
        for stream in recent {
            // From the page that faulted last: the reader may still be in it.
            let window = stream.last..stream.covered_end.min(stream.last + left);
            if window.is_empty() {
                continue;
            }
            left -= window.len();
            windows.push(window);
        }
        windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_fault_reads_nothing_ahead() {
        let readahead = ReadAhead::new(1000, 64);
        assert_eq!(readahead.on_fault(10), None);
        assert_eq!(readahead.on_fault(500), None);
        assert_eq!(readahead.on_fault(7), None);
    }

    #[test]
    fn a_sequential_stream_doubles_its_window_up_to_the_maximum() {
        let readahead = ReadAhead::new(1000, 8);
        assert_eq!(readahead.on_fault(0), None);
        assert_eq!(readahead.on_fault(1), Some(2..4));
        // The reader caught up inside the window: the window doubles from where it is.
        assert_eq!(readahead.on_fault(3), Some(4..8));
        assert_eq!(readahead.on_fault(8), Some(9..17));
        assert_eq!(readahead.on_fault(17), Some(18..26), "capped at 8 pages");
    }

    #[test]
    fn streams_are_followed_independently_and_clamped_to_the_region() {
        let readahead = ReadAhead::new(100, 64);
        readahead.on_fault(10);
        readahead.on_fault(90);
        assert_eq!(readahead.on_fault(11), Some(12..14));
        assert_eq!(readahead.on_fault(91), Some(92..94));
        assert_eq!(readahead.on_fault(94), Some(95..99));
        assert_eq!(readahead.on_fault(99), None, "the region ends at page 100");
    }

    #[test]
    fn a_one_page_window_reads_one_page_ahead() {
        let readahead = ReadAhead::new(100, 1);
        assert_eq!(readahead.on_fault(0), None);
        assert_eq!(readahead.on_fault(1), Some(2..3));
        assert_eq!(readahead.on_fault(3), Some(4..5));
    }

    #[test]
    fn the_pages_ahead_of_recent_readers_are_spared_within_a_limit() {
        let readahead = ReadAhead::new(1000, 64);
        readahead.on_fault(10);
        readahead.on_fault(11); // asks for 12..14
        readahead.on_fault(500);
        readahead.on_fault(501); // asks for 502..504
        assert_eq!(readahead.ahead_of_readers(100), vec![501..504, 11..14]);
        assert_eq!(readahead.ahead_of_readers(4), vec![501..504, 11..12]);
        for page in 600..700 {
            readahead.on_fault(page * 3);
        }
        let windows = readahead.ahead_of_readers(100);
        assert!(
            windows
                .iter()
                .all(|window| !window.contains(&12) && !window.contains(&502)),
            "streams long quiet are not current: {windows:?}"
        );
    }

    #[test]
    fn disabled_read_ahead_never_asks() {
        let readahead = ReadAhead::new(100, 0);
        for page in 0..10 {
            assert_eq!(readahead.on_fault(page), None);
        }
    }
}
