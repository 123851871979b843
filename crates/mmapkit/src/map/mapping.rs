//! [`Mapping`]: ownership of one kernel mapping, its geometry, and the borrows that the safety
//! model allows (slices and typed views of exclusive memory, atomics in shared memory).
//!
//! The rules, restated where they are enforced:
//! * `as_slice(&self)` needs [`Reach::Exclusive`] memory with no write access anywhere in the
//!   view: then nothing — no other process, no `write_at` through `&self` — can change the
//!   bytes while the slice lives.
//! * `as_mut_slice(&mut self)` needs `Reach::Exclusive` memory that is readable and writable;
//!   `&mut self` rules out every other access for the slice's lifetime.
//! * `atomic(&self)` needs [`Reach::Shared`] memory (never truncated) that is readable and
//!   writable over the atomic; atomics are how memory others change is read soundly.
//! * `protect` and `remap` take `&mut self`, so no borrow can outlive the access it relied on.

use std::ops::{Range, RangeBounds};
use std::ptr::NonNull;
use std::sync::atomic;

use super::pages::{ProtectionMap, checked_range, pages_touched};
use super::{Backing, Protection, Reach, Sharing};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// One mapping of memory; unmapped on drop. Built by [`MapOptions`](super::MapOptions).
pub struct Mapping {
    /// Start of the kernel mapping (page aligned); dangling when `map_len` is 0.
    pub(super) base: NonNull<u8>,
    /// Length of the kernel mapping, a multiple of `page_size`; 0 for an empty mapping.
    pub(super) map_len: usize,
    /// Offset of the view's first byte from `base`.
    pub(super) lead: usize,
    /// Length of the view.
    pub(super) len: usize,
    pub(super) page_size: usize,
    pub(super) backing: Backing,
    pub(super) sharing: Sharing,
    /// The reach decided at creation; `reach()` degrades it when the view outgrows
    /// `stable_len`.
    pub(super) base_reach: Reach,
    pub(super) protection: ProtectionMap,
    /// File offset of the view's first byte (0 for anonymous memory).
    pub(super) file_offset: u64,
    /// Bytes of the backing object, from its start, that can never vanish; `None` when the
    /// backing is unlimited (private anonymous memory) or when nothing is promised.
    pub(super) stable_len: Option<u64>,
    /// Sealed with mseal: the kernel refuses to unmap it, so drop leaves it mapped.
    pub(super) sealed: bool,
}

// SAFETY: a Mapping owns its address range like a Box owns its allocation. Every `&self`
// method reaches the memory through guarded copies (opaque assembly) or atomics, never through
// Rust-level plain accesses, and plain borrows follow the rules in the module docs, so sharing
// or sending the handle across threads cannot create a data race the compiler relies on.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

/// What [`MapOptions`](super::MapOptions) hands over after a successful mmap.
pub(super) struct RawParts {
    pub(super) base: *mut u8,
    pub(super) map_len: usize,
    pub(super) lead: usize,
    pub(super) len: usize,
    pub(super) page_size: usize,
    pub(super) backing: Backing,
    pub(super) sharing: Sharing,
    pub(super) reach: Reach,
    pub(super) protection: Protection,
    pub(super) file_offset: u64,
    pub(super) stable_len: Option<u64>,
}

impl Mapping {
    pub(super) fn from_raw_parts(parts: RawParts) -> Mapping {
        Mapping {
            base: NonNull::new(parts.base).expect("mmap never returns null on success"),
            map_len: parts.map_len,
            lead: parts.lead,
            len: parts.len,
            page_size: parts.page_size,
            backing: parts.backing,
            sharing: parts.sharing,
            base_reach: parts.reach,
            protection: ProtectionMap::new(parts.map_len / parts.page_size, parts.protection),
            file_offset: parts.file_offset,
            stable_len: parts.stable_len,
            sealed: false,
        }
    }

    pub(super) fn empty(
        backing: Backing,
        sharing: Sharing,
        reach: Reach,
        page_size: usize,
        file_offset: u64,
    ) -> Mapping {
        Mapping {
            base: NonNull::dangling(),
            map_len: 0,
            lead: 0,
            len: 0,
            page_size,
            backing,
            sharing,
            base_reach: reach,
            protection: ProtectionMap::new(0, Protection::empty()),
            file_offset,
            stable_len: None,
            sealed: false,
        }
    }

    /// Length of the view in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length view.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the view's first byte. Dereferencing it is subject to the same rules as
    /// [`as_slice_unchecked`](Self::as_slice_unchecked).
    pub fn as_ptr(&self) -> *const u8 {
        self.as_mut_ptr()
    }

    /// Mutable address of the view's first byte; see [`as_ptr`](Self::as_ptr).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.base.as_ptr().wrapping_add(self.lead)
    }

    /// The page size the mapping is made of (the huge page size for `MAP_HUGETLB` maps).
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// What is mapped.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Shared or private (copy-on-write).
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// File offset of the view's first byte.
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// True after [`seal`](Self::seal).
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Who besides this mapping can change or remove its bytes.
    pub fn reach(&self) -> Reach {
        let view_end = self.file_offset.saturating_add(self.len as u64);
        match self.stable_len {
            Some(stable) if view_end > stable => Reach::Truncatable,
            _ => self.base_reach,
        }
    }

    /// The protection of the whole view, if all its pages share one.
    pub fn protection(&self) -> Option<Protection> {
        if self.is_empty() {
            return Some(Protection::empty());
        }
        let (floor, ceiling) = self.protection.bounds(self.view_pages(&(0..self.len)));
        (floor == ceiling).then_some(floor)
    }

    /// The checked byte range `range` selects in the view.
    pub(crate) fn byte_range(
        &self,
        operation: &'static str,
        range: impl RangeBounds<usize>,
    ) -> Result<Range<usize>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        checked_range((start, end), self.len).ok_or_else(|| {
            let shown = checked_range((start, end), usize::MAX).unwrap_or(0..0);
            self.out_of_bounds(operation, shown.start, shown.len())
        })
    }

    /// The checked byte range `[offset, offset + len)` of the view.
    pub(crate) fn byte_span(
        &self,
        operation: &'static str,
        offset: usize,
        len: usize,
    ) -> Result<Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(offset..end),
            _ => Err(self.out_of_bounds(operation, offset, len)),
        }
    }

    fn out_of_bounds(&self, operation: &'static str, offset: usize, len: usize) -> Error {
        Error::new(
            ErrorKind::OutOfBounds,
            operation,
            format!(
                "the range leaves the mapping, which is {} bytes long",
                self.len
            ),
        )
        .with_range(offset as u64, len as u64)
    }

    /// Kernel pages (counted from `base`) that the view bytes `range` touch.
    pub(super) fn view_pages(&self, range: &Range<usize>) -> Range<usize> {
        pages_touched(
            &(self.lead + range.start..self.lead + range.end),
            self.page_size,
        )
    }

    /// Address and length of the kernel pages the view bytes `range` touch.
    pub(super) fn page_span(&self, range: &Range<usize>) -> (*mut std::ffi::c_void, usize) {
        let pages = self.view_pages(range);
        let start = self
            .base
            .as_ptr()
            .wrapping_add(pages.start * self.page_size);
        (start.cast(), pages.len() * self.page_size)
    }

    /// The access every byte of `range` allows.
    pub(crate) fn protection_floor(&self, range: &Range<usize>) -> Protection {
        self.protection.floor(self.view_pages(range))
    }

    /// Fails unless every byte of `range` allows `needed`.
    pub(crate) fn require(
        &self,
        operation: &'static str,
        range: &Range<usize>,
        needed: Protection,
    ) -> Result<()> {
        let floor = self.protection_floor(range);
        if range.is_empty() || floor.contains(needed) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            operation,
            format!(
                "the range allows {} access, and {} access is needed",
                floor.describe(),
                needed.describe()
            ),
        )
        .with_range(range.start as u64, range.len() as u64)
        .with_hint("change it with Mapping::protect, or map with the access you need"))
    }

    fn require_exclusive(&self, operation: &'static str) -> Result<()> {
        match self.reach() {
            Reach::Exclusive => Ok(()),
            reach => Err(Error::new(
                ErrorKind::NotExclusive,
                operation,
                format!(
                    "this {:?} {:?} mapping can be changed by others ({reach:?} reach), so it \
                     cannot be borrowed as a slice",
                    self.sharing, self.backing
                ),
            )
            .with_hint("use read_at/write_at, atomics, or the unsafe *_unchecked borrow")),
        }
    }

    /// Borrows the view as a slice. Allowed when the bytes cannot change while the slice
    /// lives: [`Reach::Exclusive`] memory with no write access anywhere in the view (for
    /// writable memory use [`as_mut_slice`](Self::as_mut_slice)).
    pub fn as_slice(&self) -> Result<&[u8]> {
        self.require_exclusive("as_slice")?;
        let whole = 0..self.len;
        self.require("as_slice", &whole, Protection::READ)?;
        let (_, ceiling) = self.protection.bounds(self.view_pages(&whole));
        if ceiling.contains(Protection::WRITE) {
            return Err(Error::new(
                ErrorKind::NotExclusive,
                "as_slice",
                "the mapping is writable, so write_at through a shared reference could change \
                 the bytes under a slice",
            )
            .with_hint("borrow it with as_mut_slice (needs &mut), or protect it read-only"));
        }
        // SAFETY: exclusive memory, readable throughout, and writable nowhere in the view:
        // neither other processes nor any `&self` method can change it while `&self` is
        // borrowed, and `protect`/`remap` need `&mut self`.
        Ok(unsafe { self.as_slice_unchecked() })
    }

    /// Borrows the view as a mutable slice. Allowed for [`Reach::Exclusive`] memory that is
    /// readable and writable throughout.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        self.require_exclusive("as_mut_slice")?;
        self.require("as_mut_slice", &(0..self.len), Protection::READ_WRITE)?;
        // SAFETY: exclusive memory, readable and writable throughout; `&mut self` excludes
        // every other access through this mapping for the slice's lifetime.
        Ok(unsafe { self.as_mut_slice_unchecked() })
    }

    /// Borrows the view as a slice whatever its reach.
    ///
    /// # Safety
    /// For the slice's lifetime: no one changes the bytes (no other process, no other mapping
    /// of the file, no `write_at` or atomic through this mapping), the file is not truncated
    /// below the view, and the whole view stays readable.
    pub unsafe fn as_slice_unchecked(&self) -> &[u8] {
        // SAFETY: the view lies inside the mapping (or is empty with a dangling, aligned
        // pointer); the caller guarantees the bytes stay readable and unchanged.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// Borrows the view as a mutable slice whatever its reach.
    ///
    /// # Safety
    /// As [`as_slice_unchecked`](Self::as_slice_unchecked), and no other reference into the
    /// view (from this or any other mapping) exists while this one lives; the view is writable.
    #[expect(
        clippy::mut_from_ref,
        reason = "the caller's contract excludes aliasing"
    )]
    pub unsafe fn as_mut_slice_unchecked(&self) -> &mut [u8] {
        // SAFETY: as above; the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }

    /// Borrows a plain-old-data value at `offset`, checked for bounds and alignment. Same
    /// conditions as [`as_slice`](Self::as_slice).
    pub fn view<T: bytemuck::AnyBitPattern>(&self, offset: usize) -> Result<&T> {
        let range = self.byte_span("view", offset, size_of::<T>())?;
        let bytes = &self.as_slice()?[range];
        bytemuck::try_from_bytes(bytes).map_err(|error| pod_error("view", offset, error))
    }

    /// Mutably borrows a plain-old-data value at `offset`. Same conditions as
    /// [`as_mut_slice`](Self::as_mut_slice).
    pub fn view_mut<T: bytemuck::Pod>(&mut self, offset: usize) -> Result<&mut T> {
        let range = self.byte_span("view_mut", offset, size_of::<T>())?;
        let bytes = &mut self.as_mut_slice()?[range];
        bytemuck::try_from_bytes_mut(bytes).map_err(|error| pod_error("view_mut", offset, error))
    }

    /// Borrows `count` plain-old-data values starting at `offset`.
    pub fn view_slice<T: bytemuck::AnyBitPattern>(
        &self,
        offset: usize,
        count: usize,
    ) -> Result<&[T]> {
        let bytes_len = count.saturating_mul(size_of::<T>());
        let range = self.byte_span("view_slice", offset, bytes_len)?;
        let bytes = &self.as_slice()?[range];
        bytemuck::try_cast_slice(bytes).map_err(|error| pod_error("view_slice", offset, error))
    }

    /// Mutably borrows `count` plain-old-data values starting at `offset`.
    pub fn view_slice_mut<T: bytemuck::Pod>(
        &mut self,
        offset: usize,
        count: usize,
    ) -> Result<&mut [T]> {
        let bytes_len = count.saturating_mul(size_of::<T>());
        let range = self.byte_span("view_slice_mut", offset, bytes_len)?;
        let bytes = &mut self.as_mut_slice()?[range];
        bytemuck::try_cast_slice_mut(bytes)
            .map_err(|error| pod_error("view_slice_mut", offset, error))
    }

    /// Borrows an atomic at `offset` in shared memory ([`Reach::Shared`]: shared anonymous
    /// memory, shared `/dev/zero`, a memfd sealed against shrinking). The offset must be
    /// aligned for `A` and the bytes readable and writable.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// # fn main() -> mmapkit::Result<()> {
    /// let shared = mmapkit::MapOptions::new().len(4096).shared().map_anonymous()?;
    /// let counter: &AtomicU64 = shared.atomic(64)?;
    /// counter.fetch_add(1, Ordering::SeqCst); // a forked child sees this
    /// # Ok(()) }
    /// ```
    pub fn atomic<A: SharedAtomic>(&self, offset: usize) -> Result<&A> {
        self.byte_span("atomic", offset, size_of::<A>())?;
        if self.reach() != Reach::Shared {
            return Err(Error::new(
                ErrorKind::NotExclusive,
                "atomic",
                format!(
                    "atomics need shared memory that cannot be truncated; this mapping has \
                     {:?} reach",
                    self.reach()
                ),
            )
            .with_hint(match self.reach() {
                Reach::Exclusive => "borrow private memory with as_mut_slice instead",
                _ => "use shared anonymous memory, a memfd sealed against shrinking, or a segment",
            }));
        }
        // SAFETY: Shared reach: the memory can never vanish.
        unsafe { self.atomic_in_shielded(offset) }
    }

    /// Borrows an atomic at `offset` without looking at the reach; bounds, alignment and
    /// protection are checked.
    ///
    /// # Safety
    /// The bytes cannot fault for as long as the mapping lives: Shared reach, or a range
    /// registered with the fault shield, which replaces vanished pages instead of faulting.
    pub(crate) unsafe fn atomic_in_shielded<A: SharedAtomic>(&self, offset: usize) -> Result<&A> {
        let range = self.byte_span("atomic", offset, size_of::<A>())?;
        self.require("atomic", &range, Protection::READ_WRITE)?;
        let address = self.as_ptr().wrapping_add(offset);
        if !(address as usize).is_multiple_of(align_of::<A>()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "atomic",
                format!("offset is not aligned to {} bytes", align_of::<A>()),
            )
            .with_offset(offset as u64));
        }
        // SAFETY: the bytes lie in the view, are aligned for `A`, readable and writable, and
        // cannot fault (the caller's contract). Atomics have interior mutability, so changes by
        // other processes or threads are expected; `protect`/`remap` need `&mut self`, so
        // access cannot be taken away while the reference lives.
        Ok(unsafe { &*address.cast::<A>() })
    }
}

fn pod_error(operation: &'static str, offset: usize, error: bytemuck::PodCastError) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        operation,
        format!("cannot view the bytes as the requested type: {error:?}"),
    )
    .with_offset(offset as u64)
}

mod sealed {
    pub trait Sealed {}
}

/// Atomic types that may live in shared memory: lock-free, with no padding, and valid for every
/// bit pattern another process may leave there (so not `AtomicBool`).
pub trait SharedAtomic: sealed::Sealed + Sync {}

macro_rules! shared_atomics {
    ($($atomic:ty),*) => {$(
        impl sealed::Sealed for $atomic {}
        impl SharedAtomic for $atomic {}
    )*};
}
shared_atomics!(
    atomic::AtomicU8,
    atomic::AtomicU16,
    atomic::AtomicU32,
    atomic::AtomicU64,
    atomic::AtomicUsize,
    atomic::AtomicI8,
    atomic::AtomicI16,
    atomic::AtomicI32,
    atomic::AtomicI64,
    atomic::AtomicIsize
);

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("address", &self.as_ptr())
            .field("len", &self.len)
            .field("file_offset", &self.file_offset)
            .field("backing", &self.backing)
            .field("sharing", &self.sharing)
            .field("reach", &self.reach())
            .field("protection", &self.protection())
            .field("sealed", &self.sealed)
            .finish()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.map_len == 0 || self.sealed {
            return;
        }
        // SAFETY: the mapping owns [base, base + map_len) and nothing borrows it any more
        // (every borrow is tied to a reference to `self`).
        let result = unsafe { sys::munmap(self.base.as_ptr().cast(), self.map_len) };
        debug_assert!(
            result.is_ok(),
            "munmap of an owned mapping failed: {result:?}"
        );
    }
}
