//! Channel ends a thread keeps between its calls, so that a send or a receive through the ABI
//! costs what the Rust call it makes costs.
//!
//! Looking a handle up in the registry takes its lock, and even the registry's per-thread
//! cache of weak references pays two atomic reference-count updates and a type check per
//! call: about 10 ns of a 170 ns ping-pong. Here each thread keeps, per end type, a few
//! strong references in plain thread-local cells, checked against the count of destroys: a
//! call that finds its handle there borrows the object without an atomic operation.
//!
//! This is only for objects whose destroy releases what they hold by itself (a closable end
//! empties itself when closed): a destroyed end's empty shell may stay in another thread's
//! cells until that thread looks up a handle that is not there (which drops all its stale
//! entries) or exits. A guard with a destructor releases the thread's references at exit; it
//! is installed before the first entry is filled, and once it is gone (late in thread exit)
//! nothing is kept. While a call runs on a kept object the thread's entries are left alone,
//! so the borrowed object outlives the call even if the call looks up other handles.

use std::any::Any;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

use mmapkit::Result;

use crate::handles;

/// Entries per thread and type: a thread using a few ends in turns keeps them all.
const SLOTS: usize = 4;

/// One thread's kept objects of type `T` (a `thread_local!` without a destructor: the
/// [`KeptType::guard`] releases them).
pub(crate) struct Kept<T> {
    entries: [Cell<Entry<T>>; SLOTS],
    /// Calls of this thread running on a kept object: entries change only when none does.
    busy: Cell<u32>,
}

/// A handle's number, the count of destroys when it was looked up, and its object, whose
/// strong reference the entry owns (`Arc::into_raw`); null when empty.
struct Entry<T> {
    number: usize,
    destroys: u64,
    object: *const T,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Entry<T> {
        *self
    }
}

impl<T> Copy for Entry<T> {}

const fn empty<T>() -> Entry<T> {
    Entry {
        number: 0,
        destroys: 0,
        object: std::ptr::null(),
    }
}

impl<T> Kept<T> {
    pub(crate) const fn new() -> Kept<T> {
        Kept {
            entries: [const { Cell::new(empty()) }; SLOTS],
            busy: Cell::new(0),
        }
    }

    /// Releases the entries a destroy made stale (all of them for `destroys` `None`), unless
    /// a call runs on one.
    fn release(&self, destroys: Option<u64>) {
        if self.busy.get() != 0 {
            return;
        }
        for cell in &self.entries {
            let entry = cell.get();
            if entry.object.is_null() || destroys == Some(entry.destroys) {
                continue;
            }
            cell.set(empty());
            // SAFETY: the entry owned this strong reference (made by `Arc::into_raw` in
            // `keep`) and was just emptied, so it is released once; no call borrows it
            // (`busy` is 0).
            drop(unsafe { Arc::from_raw(entry.object) });
        }
    }
}

/// Marks a call running on a kept object for as long as it lives (a panic included).
struct Busy<'k>(&'k Cell<u32>);

impl<'k> Busy<'k> {
    fn enter(busy: &'k Cell<u32>) -> Busy<'k> {
        busy.set(busy.get() + 1);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A type whose objects threads keep (declared with [`kept_type!`]).
pub(crate) trait KeptType: Any + Send + Sync + Sized {
    /// Whether this object may be kept.
    fn keepable(&self) -> bool;
    /// This thread's cells for the type.
    fn kept() -> &'static LocalKey<Kept<Self>>;
    /// A thread-local whose destructor releases this thread's cells; `try_with` fails once it
    /// is gone.
    fn guard() -> &'static LocalKey<ExitGuard>;
    /// Destroys of handles of this type so far: an entry is valid only while none happened.
    /// Counted per type, so that a program unmapping files does not make every thread look
    /// its channel ends up again.
    fn destroys() -> &'static AtomicU64;
}

/// Declares where threads keep objects of a type whose first field is its `Closable` end: its
/// cells, exit guard and count of destroys. Only ends of this process are kept, not inherited
/// ones, whose close leaves them whole.
macro_rules! kept_type {
    ($type:ty) => {
        impl $crate::kept::KeptType for $type {
            fn keepable(&self) -> bool {
                self.0.belongs_here()
            }

            fn kept() -> &'static std::thread::LocalKey<$crate::kept::Kept<$type>> {
                thread_local! {
                    static KEPT: $crate::kept::Kept<$type> = const { $crate::kept::Kept::new() };
                }
                &KEPT
            }

            fn guard() -> &'static std::thread::LocalKey<$crate::kept::ExitGuard> {
                thread_local! {
                    static GUARD: $crate::kept::ExitGuard =
                        const { $crate::kept::ExitGuard($crate::kept::release_all::<$type>) };
                }
                &GUARD
            }

            fn destroys() -> &'static std::sync::atomic::AtomicU64 {
                static DESTROYS: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0);
                &DESTROYS
            }
        }
    };
}
pub(crate) use kept_type;

/// Releases a thread's kept objects of one type when it exits.
pub(crate) struct ExitGuard(pub(crate) fn());

impl Drop for ExitGuard {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Releases this thread's kept objects of type `T` (at its exit, or in a child after fork).
pub(crate) fn release_all<T: KeptType>() {
    T::kept().with(|kept| kept.release(None));
}

/// Runs `body` on the object behind `handle`, a live handle of type `T`: from this thread's
/// kept entries when it is there, else from the registry (and kept for the next call).
#[inline(always)]
pub(crate) fn with_kept<T: KeptType, H, R>(
    handle: *const H,
    kind: &str,
    body: impl FnOnce(&T) -> Result<R>,
) -> Result<R> {
    let number = handle.addr();
    let destroys = T::destroys().load(Ordering::Acquire);
    // A pointer out of `with`: the closure form is not inlined well, and the call is then
    // slower by 15 ns.
    let kept = T::kept().with(std::ptr::from_ref);
    // SAFETY: a thread-local without a destructor lives as long as its thread, and this call
    // runs on that thread.
    let kept = unsafe { &*kept };
    let entry = kept.entries[(number >> 4) % SLOTS].get();
    let looked_up;
    let object =
        match !entry.object.is_null() && entry.number == number && entry.destroys == destroys {
            // SAFETY: the entry owns a strong reference, and it is not released while this call
            // runs (`busy`, below): only this thread changes its entries, and never while busy.
            true => unsafe { &*entry.object },
            false => {
                looked_up = handles::get::<T, H>(handle, kind)?;
                keep(kept, number, destroys, &looked_up);
                &*looked_up
            }
        };
    let _busy = Busy::enter(&kept.busy);
    body(object)
}

/// Keeps `object` for `number` in this thread's entries, unless a call runs on one or the
/// thread is exiting (its guard is gone).
fn keep<T: KeptType>(kept: &Kept<T>, number: usize, destroys: u64, object: &Arc<T>) {
    if kept.busy.get() != 0 || !object.keepable() || T::guard().try_with(|_| ()).is_err() {
        return;
    }
    kept.release(Some(destroys));
    let slot = (number >> 4) % SLOTS;
    let old = kept.entries[slot].get();
    kept.entries[slot].set(Entry {
        number,
        destroys,
        object: Arc::into_raw(Arc::clone(object)),
    });
    if !old.object.is_null() {
        // SAFETY: the entry owned this strong reference and no longer holds it; no call
        // borrows it (`busy` is 0).
        drop(unsafe { Arc::from_raw(old.object) });
    }
}

/// Counts a destroy of a handle of type `T`, once the registry no longer has it, and releases
/// this thread's entries it made stale (which would otherwise stay kept until the thread's
/// next miss).
pub(crate) fn destroyed<T: KeptType>() {
    let destroys = T::destroys().fetch_add(1, Ordering::AcqRel) + 1;
    T::kept().with(|kept| kept.release(Some(destroys)));
}
