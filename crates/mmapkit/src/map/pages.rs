//! Range arithmetic, in one place: turning a caller's `RangeBounds` into a checked byte range
//! of the view, and a byte range into whole pages; plus the record of each page's protection.
//!
//! The protection record exists because safety decisions depend on it: a slice may only be
//! handed out over pages that are all readable, a write copy only into pages that are all
//! writable. Asking the kernel each time would cost a /proc read; mprotect only happens through
//! [`Mapping::protect`](super::Mapping::protect), which keeps this record in step.

use std::ops::{Bound, Range, RangeBounds};

use super::Protection;

/// The byte range `range` selects in a view of `len` bytes, or `None` when it leaves the view
/// or is reversed.
pub(crate) fn checked_range(range: impl RangeBounds<usize>, len: usize) -> Option<Range<usize>> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.checked_add(1)?,
        Bound::Excluded(&end) => end,
        Bound::Unbounded => len,
    };
    (start <= end && end <= len).then_some(start..end)
}

/// The pages, counted from the start of the kernel mapping, that the bytes `range` touch.
pub(crate) fn pages_touched(range: &Range<usize>, page_size: usize) -> Range<usize> {
    if range.is_empty() {
        return range.start / page_size..range.start / page_size;
    }
    range.start / page_size..range.end.div_ceil(page_size)
}

/// One protection per page, stored as runs of equal protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtectionMap {
    /// `(first page, protection)`, sorted by first page, the first at page 0; each run ends
    /// where the next begins, the last at `pages`.
    runs: Vec<(usize, Protection)>,
    pages: usize,
}

impl ProtectionMap {
    pub(crate) fn new(pages: usize, protection: Protection) -> ProtectionMap {
        ProtectionMap {
            runs: vec![(0, protection)],
            pages,
        }
    }

    /// The protection every page in `pages` has at least (the intersection over the range),
    /// and the protection some page has (the union). Equal when the range is uniform.
    /// Pages past the end of the mapping have no access.
    pub(crate) fn bounds(&self, pages: Range<usize>) -> (Protection, Protection) {
        let mut floor = if pages.end > self.pages {
            Protection::empty()
        } else {
            Protection::all()
        };
        let mut ceiling = Protection::empty();
        for (index, &(first, protection)) in self.runs.iter().enumerate() {
            let end = self.run_end(index);
            if first < pages.end && pages.start < end {
                floor &= protection;
                ceiling |= protection;
            }
        }
        (floor, ceiling)
    }

    /// The protection every page in `pages` has at least.
    pub(crate) fn floor(&self, pages: Range<usize>) -> Protection {
        self.bounds(pages).0
    }

    /// The one protection of all pages, if they share one.
    pub(crate) fn uniform(&self) -> Option<Protection> {
        match self.runs.as_slice() {
            [(_, protection)] => Some(*protection),
            _ => None,
        }
    }

    /// Records that `pages` now have `protection`.
    pub(crate) fn set(&mut self, pages: Range<usize>, protection: Protection) {
        if pages.is_empty() {
            return;
        }
        let after = self.at(pages.end);
        self.runs
            .retain(|&(first, _)| first < pages.start || first > pages.end);
        let insert_at = self.runs.partition_point(|&(first, _)| first < pages.start);
        self.runs.insert(insert_at, (pages.start, protection));
        if pages.end < self.pages {
            self.runs.insert(insert_at + 1, (pages.end, after));
        }
        self.runs.dedup_by(|next, previous| next.1 == previous.1);
    }

    /// Follows a resize of the mapping to `pages` pages; new pages inherit the protection of
    /// the last page, as mremap gives them.
    pub(crate) fn resize(&mut self, pages: usize) {
        self.runs.retain(|&(first, _)| first == 0 || first < pages);
        self.pages = pages;
    }

    fn at(&self, page: usize) -> Protection {
        let index = self.runs.partition_point(|&(first, _)| first <= page);
        self.runs[index.saturating_sub(1)].1
    }

    fn run_end(&self, index: usize) -> usize {
        self.runs
            .get(index + 1)
            .map_or(self.pages, |&(first, _)| first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checked_range_accepts_every_bound_form() {
        assert_eq!(checked_range(.., 10), Some(0..10));
        assert_eq!(checked_range(2..5, 10), Some(2..5));
        assert_eq!(checked_range(2..=5, 10), Some(2..6));
        assert_eq!(checked_range(10.., 10), Some(10..10));
        assert_eq!(checked_range(..=10, 10), None);
        assert_eq!(
            checked_range((Bound::Included(5), Bound::Excluded(3)), 10),
            None
        );
        assert_eq!(checked_range(0..=usize::MAX, 10), None);
    }

    #[test]
    fn pages_touched_rounds_outward() {
        assert_eq!(pages_touched(&(0..1), 4096), 0..1);
        assert_eq!(pages_touched(&(4095..4097), 4096), 0..2);
        assert_eq!(pages_touched(&(4096..8192), 4096), 1..2);
        assert!(pages_touched(&(5000..5000), 4096).is_empty());
    }

    fn protection() -> impl Strategy<Value = Protection> {
        (0u8..8).prop_map(Protection::from_bits_truncate)
    }

    proptest! {
        #[test]
        fn matches_a_page_by_page_model(
            pages in 1usize..40,
            initial in protection(),
            edits in prop::collection::vec((0usize..45, 0usize..45, protection()), 0..12),
            resize_to in 1usize..60,
        ) {
            let mut map = ProtectionMap::new(pages, initial);
            let mut model = vec![initial; pages];
            for (a, b, protection) in edits {
                let (start, end) = (a.min(b).min(pages), a.max(b).min(pages));
                map.set(start..end, protection);
                model[start..end].fill(protection);
            }
            let last = *model.last().unwrap();
            map.resize(resize_to);
            model.resize(resize_to, last);
            for start in 0..model.len() {
                for end in start + 1..=model.len() {
                    let expected = model[start..end]
                        .iter()
                        .fold(Protection::all(), |floor, &p| floor & p);
                    let ceiling = model[start..end]
                        .iter()
                        .fold(Protection::empty(), |ceiling, &p| ceiling | p);
                    prop_assert_eq!(map.bounds(start..end), (expected, ceiling));
                }
            }
            let uniform = model.iter().all(|&p| p == model[0]).then_some(model[0]);
            prop_assert_eq!(map.uniform(), uniform);
        }
    }
}
