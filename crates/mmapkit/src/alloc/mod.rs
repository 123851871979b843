//! Position-independent data in a segment: relative pointers, a [`Heap`] that several
//! processes allocate from, and containers built on it ([`ShmVec`], [`ShmString`],
//! [`ShmMap`]).
//!
//! Each process maps a segment at its own address, so shared structures cannot hold
//! addresses. A [`RelPtr`] holds an offset into the segment's payload instead; the process
//! that follows it adds its own base. A structure built by one process is found by another
//! through the heap's [root pointer](Heap::root).
//!
//! **Concurrency.** The heap serialises allocation on its own robust mutex. The containers do
//! not lock: when several processes change one container, guard it with a
//! [`Mutex`](crate::sync::Mutex) in the same segment. Whatever the other processes do, every
//! length, capacity and pointer read from the segment is checked against the heap before use:
//! a container that another process corrupted yields [`Corrupt`](crate::ErrorKind::Corrupt)
//! errors, never an access outside the heap.
//!
//! Values are copied in and out (`T: Pod`): no reference into shared memory is handed out.

mod heap;
mod map;
mod string;
mod vec;

pub use heap::{Heap, HeapStats};
pub use map::{MapHeader, ShmMap};
pub use string::{ShmString, StringHeader};
pub use vec::{ShmVec, VecHeader};

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// An offset into a segment's payload standing for a `T` there; 0 is null.
#[repr(transparent)]
pub struct RelPtr<T> {
    offset: u64,
    _target: PhantomData<fn() -> T>,
}

impl<T> RelPtr<T> {
    /// The null pointer.
    pub const fn null() -> RelPtr<T> {
        RelPtr::from_offset(0)
    }

    /// A pointer to payload offset `offset`.
    pub const fn from_offset(offset: u64) -> RelPtr<T> {
        RelPtr {
            offset,
            _target: PhantomData,
        }
    }

    /// The payload offset.
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// True for the null pointer.
    pub const fn is_null(self) -> bool {
        self.offset == 0
    }

    /// The same offset, pointing to a `U`.
    pub const fn cast<U>(self) -> RelPtr<U> {
        RelPtr::from_offset(self.offset)
    }
}

impl<T> Clone for RelPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RelPtr<T> {}

impl<T> PartialEq for RelPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}

impl<T> Eq for RelPtr<T> {}

impl<T> Hash for RelPtr<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.offset.hash(state);
    }
}

impl<T> fmt::Debug for RelPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPtr({:#x})", self.offset)
    }
}

// SAFETY: a RelPtr is a u64 (repr(transparent)) and a zero-sized marker: every bit pattern is
// valid, there is no padding, and the all-zero value is the null pointer.
unsafe impl<T: 'static> bytemuck::Zeroable for RelPtr<T> {}
// SAFETY: as above.
unsafe impl<T: 'static> bytemuck::Pod for RelPtr<T> {}
