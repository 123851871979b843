//! The guards of explicit page access: what a pin lends ([`SharedPage`], [`ExclusivePage`])
//! and what an optimistic reader sees ([`OptimisticPage`]). See [`explicit`](super::explicit)
//! for the rules they keep.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::held;
use super::region::PagedRegion;

/// A page pinned shared: its bytes, still, for as long as the guard lives. From
/// [`PagedRegion::pin_shared`]. Other threads may borrow it (it is `Sync`); it stays on the
/// thread that took it, which knows its own pins (see [`PagedRegion::pin_exclusive`]).
pub struct SharedPage<'a> {
    region: &'a PagedRegion,
    page: usize,
    bytes: *mut u8,
}

// SAFETY: the guard only lends shared access to bytes that its pin keeps still.
unsafe impl Sync for SharedPage<'_> {}

impl<'a> SharedPage<'a> {
    /// The guard of a shared pin this thread took on `page`, whose bytes are at `bytes`.
    pub(super) fn new(region: &'a PagedRegion, page: usize, bytes: *mut u8) -> Self {
        SharedPage {
            region,
            page,
            bytes,
        }
    }

    /// The page's number.
    pub fn page(&self) -> usize {
        self.page
    }
}

impl Deref for SharedPage<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let len = self.region.engine().page_len(self.page);
        // SAFETY: the page is resident in the memfd (pinned: never evicted) and its bytes do
        // not change while the pin lives (no exclusive pin can be taken; fills only happen to
        // absent pages; raw writes are excluded by `as_mut_ptr`'s contract). The alias is
        // ours and never truncated, so reading cannot fault.
        unsafe { std::slice::from_raw_parts(self.bytes, len) }
    }
}

impl Drop for SharedPage<'_> {
    fn drop(&mut self) {
        let engine = self.region.engine();
        engine.pages.unpin_shared(self.page);
        held::release(engine.id, self.page, false);
    }
}

impl std::fmt::Debug for SharedPage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPage")
            .field("page", &self.page)
            .finish_non_exhaustive()
    }
}

/// A page pinned exclusively: its bytes, to change. A mutable borrow marks the page dirty;
/// dropping the guard publishes the change to optimistic readers. From
/// [`PagedRegion::pin_exclusive`] and [`PagedRegion::allocate_page`]. Stays on the thread
/// that took it (so that `flush` can tell when a thread would wait for itself).
pub struct ExclusivePage<'a> {
    region: &'a PagedRegion,
    page: usize,
    bytes: *mut u8,
    dirty: bool,
    not_send: PhantomData<*const ()>,
}

impl<'a> ExclusivePage<'a> {
    /// The guard of the exclusive pin this thread took on `page`, whose bytes are at
    /// `bytes`.
    pub(super) fn new(region: &'a PagedRegion, page: usize, bytes: *mut u8) -> Self {
        ExclusivePage {
            region,
            page,
            bytes,
            dirty: false,
            not_send: PhantomData,
        }
    }

    /// The page's number.
    pub fn page(&self) -> usize {
        self.page
    }

    /// Marks the page dirty without borrowing it mutably (a change made through a raw
    /// pointer, say).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

impl Deref for ExclusivePage<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let len = self.region.engine().page_len(self.page);
        // SAFETY: as for `SharedPage`; the exclusive pin also keeps every other pin away.
        unsafe { std::slice::from_raw_parts(self.bytes, len) }
    }
}

impl DerefMut for ExclusivePage<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.dirty = true;
        let len = self.region.engine().page_len(self.page);
        // SAFETY: the exclusive pin makes this guard the page's only user: no other pin, no
        // write-back or eviction (they refuse exclusively pinned pages), no fill (the page is
        // resident). Optimistic readers may read meanwhile; they copy, and their version
        // check throws away what they read.
        unsafe { std::slice::from_raw_parts_mut(self.bytes, len) }
    }
}

impl Drop for ExclusivePage<'_> {
    fn drop(&mut self) {
        let engine = self.region.engine();
        if engine.pages.unpin_exclusive(self.page, self.dirty) {
            engine.pages.add_dirty(1);
        }
        held::release(engine.id, self.page, true);
    }
}

impl std::fmt::Debug for ExclusivePage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusivePage")
            .field("page", &self.page)
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

/// The bytes of a page as an optimistic reader sees them: copies only, every bound checked.
/// What it returns may be torn if a writer was busy; [`PagedRegion::read_optimistic`] keeps
/// the closure's result only when the page's version shows it was not.
pub struct OptimisticPage<'a> {
    start: *const u8,
    len: usize,
    lifetime: PhantomData<&'a PagedRegion>,
}

/// `T` read at any alignment.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Unaligned<T: Copy>(T);

impl OptimisticPage<'_> {
    /// The view of a page's `len` bytes at `start`, which stay mapped while the region
    /// lives.
    pub(super) fn new(start: *const u8, len: usize) -> Self {
        OptimisticPage {
            start,
            len,
            lifetime: PhantomData,
        }
    }

    /// The page's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the page is empty (never: a page holds at least one byte of the region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `offset` (any alignment), or `None` if it does not fit in the page.
    #[inline]
    pub fn read<T: bytemuck::Pod>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range lies in the page, which stays mapped while the region lives (the
        // alias is never unmapped or truncated before it, and an evicted page reads as
        // zeros). A concurrent writer may make the value torn; any bit pattern is a valid
        // `T` (Pod), and the caller's version check discards it.
        let value =
            unsafe { std::ptr::read_volatile(self.start.add(offset).cast::<Unaligned<T>>()) };
        Some(value.0)
    }

    /// Copies the bytes at `offset` into `buf`; false (and nothing copied) if they do not
    /// fit in the page.
    #[inline]
    pub fn read_into(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(buf.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: as in `read`; `buf` is a unique borrow, so it cannot overlap the alias
        // (nobody lends references into it that outlive a pin).
        unsafe {
            std::ptr::copy_nonoverlapping(self.start.add(offset), buf.as_mut_ptr(), buf.len())
        };
        true
    }
}

impl std::fmt::Debug for OptimisticPage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptimisticPage")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
