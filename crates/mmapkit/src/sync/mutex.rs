//! [`Mutex`]: a robust, process-shared lock on a futex, protecting a plain-old-data value.
//!
//! Layout at the placement offset (all little words, 8-byte aligned):
//!
//! ```text
//! 0   u32  magic "MTX1"
//! 4   u32  lock word: owner thread id (bits 0-29), waiters flag (bit 31); 0 = unlocked
//! 8   u32  consistency: 0 consistent, 1 the previous owner died holding the lock
//! 12  u32  reserved
//! 16  u64  owner record: owner thread id (high half), low 32 bits of its start time
//!          (clock ticks since boot); 0 while unknown
//! 24  T    the value (aligned for T)
//! ```
//!
//! **Robustness.** The owner is a thread id plus the thread's start time, so a waiter can tell
//! whether the owner still exists (see [`ThreadIdentity`]). Both halves of the owner record are
//! one atomic word and name the thread they describe, so a waiter never pairs one owner's id
//! with another's start time; while the record does not name the current holder yet, the
//! holder counts as dead only if its thread id no longer exists at all. A waiter checks when the owner has
//! held the lock through a whole sleep slice (1 ms the first time, then [`POLL_SLICE`]); if the
//! owner is gone — its process killed, or the thread ended without unlocking — the waiter takes
//! the lock over, marks it inconsistent, and gets [`LockError::OwnerDied`] with the guard. An
//! owner whose process exec'd another program keeps its thread id and start time but no longer
//! maps the segment: about once a second a waiter also looks at the owner's /proc/PID/maps,
//! and takes over from an owner that maps no part of the segment (where the maps cannot be
//! read — another user's process, without root — such an owner holds on until its program
//! ends). Where /proc cannot say anything of the owner (another user's process behind
//! `hidepid`, or no /proc mounted), it counts as alive for as long as its thread id is in use:
//! unreadable is "cannot tell", never "dead".
//! The guard can inspect the value, repair it and [`mark_consistent`](MutexGuard::mark_consistent);
//! until someone does, every locker is told the owner died. The kernel's robust futex list is
//! not used: glibc owns each thread's list, and mixing entries into it is not possible safely.
//!
//! **The value.** It lives in shared memory that a buggy or hostile peer could write without
//! taking the lock, so the safe accessors copy it out and in ([`get`](MutexGuard::get),
//! [`set`](MutexGuard::set), [`update`](MutexGuard::update)); a reference is `unsafe`
//! ([`as_mut`](MutexGuard::as_mut)) with that condition as its contract.
//!
//! [`POLL_SLICE`]: super::POLL_SLICE

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{check_placement, find, place, wait};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::identity::Seen;
use crate::shm::{Segment, ThreadIdentity};

const MAGIC: u32 = u32::from_le_bytes(*b"MTX1");
const WAITERS: u32 = 1 << 31;
const OWNER: u32 = (1 << 30) - 1;
const CONSISTENT: u32 = 0;
const INCONSISTENT: u32 = 1;
const HEADER: usize = 24;
/// First sleep slice: short, so that a dead owner is noticed within a millisecond or so.
const FIRST_SLICE: Duration = Duration::from_millis(1);
/// The least time between looks at a holder's /proc/PID/maps, which can cost a millisecond
/// for a large process.
const MAPS_INTERVAL: Duration = Duration::from_secs(1);

/// A robust process-shared mutex protecting a `T`, placed in a segment. See the
/// [module docs](crate::sync).
///
/// [`lock`](Self::lock) hands back a dead owner's lock with the guard inside the error, for
/// callers that repair the data. Callers that do not can use [`lock_consistent`], whose error
/// is a plain [`Error`] and so works with `?` in any function returning `mmapkit::Result` or
/// `Result<_, Box<dyn std::error::Error>>` (the guard inside `LockError` borrows the mutex, so
/// `lock()?` cannot turn into a `Box<dyn Error>`):
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mmapkit::SegmentOptions;
/// use mmapkit::sync::Mutex;
/// let segment = SegmentOptions::new("example/counter", 4096)?.create_memfd("counter")?;
/// let counter = Mutex::init(&segment, 0, 0u64)?;
/// let mut guard = counter.lock_consistent()?;   // OwnerDied is an error here
/// guard.update(|value| *value += 1)?;
/// drop(guard);
/// // Repairing instead: the guard comes with the error.
/// match counter.lock() {
///     Ok(guard) => assert_eq!(guard.get()?, 1),
///     Err(mmapkit::sync::LockError::OwnerDied(mut guard)) => {
///         guard.set(&0)?;                       // whatever makes the data whole again
///         guard.mark_consistent();
///     }
///     Err(error) => return Err(mmapkit::Error::from(error).into()),
/// }
/// # Ok(()) }
/// ```
///
/// [`lock_consistent`]: Self::lock_consistent
pub struct Mutex<'s, T> {
    segment: &'s Segment,
    word: &'s AtomicU32,
    consistency: &'s AtomicU32,
    owner: &'s AtomicU64,
    /// Payload offset of the value.
    value: usize,
    _value: PhantomData<fn() -> T>,
}

/// Why a lock attempt did not simply succeed.
pub enum LockError<G> {
    /// The lock is ours, but its previous owner died holding it: inspect and repair the value,
    /// then call `mark_consistent` on the guard.
    OwnerDied(G),
    /// No lock: timeout, `WouldBlock` from `try_lock`, a truncated or corrupt segment.
    Failed(Error),
}

impl<G> LockError<G> {
    /// The error's kind (`OwnerDied` for the first variant).
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::OwnerDied(_) => ErrorKind::OwnerDied,
            LockError::Failed(error) => error.kind(),
        }
    }

    /// The guard, when the lock was taken over from a dead owner.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(guard) => Some(guard),
            LockError::Failed(_) => None,
        }
    }
}

impl<G> From<Error> for LockError<G> {
    fn from(error: Error) -> Self {
        LockError::Failed(error)
    }
}

impl<G> From<LockError<G>> for Error {
    fn from(error: LockError<G>) -> Error {
        match error {
            LockError::OwnerDied(_) => Error::new(
                ErrorKind::OwnerDied,
                "lock",
                "the lock's previous owner died holding it",
            )
            .with_hint(
                "take the guard from LockError::OwnerDied, repair the data, mark it consistent",
            ),
            LockError::Failed(error) => error,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("lock: the lock's previous owner died holding it")
            }
            LockError::Failed(error) => error.fmt(f),
        }
    }
}

impl<G> std::error::Error for LockError<G> {}

/// The result of locking.
pub type LockResult<'a, T> = std::result::Result<MutexGuard<'a, T>, LockError<MutexGuard<'a, T>>>;

impl<'s, T: bytemuck::Pod> Mutex<'s, T> {
    /// Offset of the value from the placement offset.
    const VALUE: usize = HEADER.next_multiple_of(align_of::<T>());
    /// Bytes the mutex and its value take.
    pub const SIZE: usize = Self::VALUE + size_of::<T>();

    /// Places a new, unlocked mutex holding `value` at payload `offset` (aligned to 8 and to
    /// `T`). Only the creator does this, before any other process opens it.
    pub fn init(segment: &'s Segment, offset: usize, value: T) -> Result<Self> {
        Self::check(segment, offset)?;
        segment.write_pod(offset + Self::VALUE, &value)?;
        let zeroed = [(4, 0), (8, 0), (12, 0), (16, 0), (20, 0)];
        place(segment, offset, Self::SIZE, "mutex", MAGIC, &zeroed)?;
        Self::open(segment, offset)
    }

    /// Opens the mutex placed at payload `offset`.
    pub fn open(segment: &'s Segment, offset: usize) -> Result<Self> {
        Self::check(segment, offset)?;
        find(segment, offset, Self::SIZE, "mutex", MAGIC)?;
        Ok(Mutex {
            segment,
            word: segment.atomic(offset + 4)?,
            consistency: segment.atomic(offset + 8)?,
            owner: segment.atomic(offset + 16)?,
            value: offset + Self::VALUE,
            _value: PhantomData,
        })
    }

    fn check(segment: &Segment, offset: usize) -> Result<()> {
        check_placement(segment, offset, Self::SIZE, "mutex")?;
        // The payload is 128-byte aligned in memory, so an offset aligned for T (up to 128)
        // is an address aligned for T.
        if align_of::<T>() > 128 || !offset.is_multiple_of(align_of::<T>()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "place",
                format!("the value needs {}-byte alignment", align_of::<T>()),
            )
            .with_offset(offset as u64));
        }
        Ok(())
    }

    /// Locks, waiting as long as it takes (a dead owner is taken over).
    pub fn lock(&self) -> LockResult<'_, T> {
        self.acquire(None)
    }

    /// Locks, waiting as long as it takes, as [`lock`](Self::lock) — but a previous owner's
    /// death is an [`OwnerDied`](ErrorKind::OwnerDied) error: the lock is released again,
    /// still marked inconsistent, for a caller that can repair the data to take with `lock`.
    pub fn lock_consistent(&self) -> Result<MutexGuard<'_, T>> {
        self.lock().map_err(Error::from)
    }

    /// Locks, waiting at most `timeout` (then `Failed` with kind `Timeout`).
    pub fn lock_timeout(&self, timeout: Duration) -> LockResult<'_, T> {
        self.acquire(Some(crate::deadline_after(timeout)))
    }

    /// Locks if nobody holds the lock (or its holder is dead); otherwise `WouldBlock`.
    pub fn try_lock(&self) -> LockResult<'_, T> {
        let me = ThreadIdentity::current();
        if self
            .word
            .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return self.acquired(me);
        }
        let held = self.word.load(Ordering::Relaxed);
        if let Some(result) = self.take_over_if_dead(held, me) {
            return result;
        }
        Err(LockError::Failed(Error::new(
            ErrorKind::WouldBlock,
            "try_lock",
            "the lock is held",
        )))
    }

    /// Whether the calling thread holds the lock (its thread id is in the lock word).
    pub fn is_held_by_current_thread(&self) -> bool {
        self.word.load(Ordering::Relaxed) & OWNER == ThreadIdentity::current().tid
    }

    /// A guard for a lock the calling thread holds through a guard it has forgotten
    /// (`std::mem::forget`): for bindings that keep a lock held across calls into them and
    /// cannot keep the guard, which borrows the mutex. An error of kind `InvalidInput` if the
    /// calling thread does not hold the lock.
    ///
    /// # Safety
    /// No other guard of this lock exists (the one forgotten is gone for good), so that the
    /// lock is released once, by the guard returned.
    pub unsafe fn assume_locked(&self) -> Result<MutexGuard<'_, T>> {
        if !self.is_held_by_current_thread() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "unlock",
                "this thread does not hold the lock",
            ));
        }
        Ok(MutexGuard {
            mutex: self,
            _not_send: PhantomData,
        })
    }

    fn acquire(&self, deadline: Option<std::time::Instant>) -> LockResult<'_, T> {
        let me = ThreadIdentity::current();
        let take = || {
            self.word
                .compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if take() || wait::spin(|| self.word.load(Ordering::Relaxed) == 0 && take()) {
            return self.acquired(me);
        }
        let mut slice = FIRST_SLICE;
        let mut seen_before_sleep = None;
        loop {
            let held = self.word.load(Ordering::Relaxed);
            if held & OWNER == 0 {
                // Free: take it, keeping the waiters flag since others may still sleep.
                if self
                    .word
                    .compare_exchange(held, me.tid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return self.acquired(me);
                }
                continue;
            }
            if seen_before_sleep == Some(held)
                && let Some(result) = self.take_over_if_dead(held, me)
            {
                return result;
            }
            if held & WAITERS == 0
                && self
                    .word
                    .compare_exchange(held, held | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            seen_before_sleep = Some(held | WAITERS);
            wait::sleep(self.word, held | WAITERS, deadline, slice, "lock")?;
            self.segment.check()?;
            slice = super::POLL_SLICE;
        }
    }

    /// When the owner recorded in `held` is gone, takes the lock over from it. An owner
    /// whose process no longer maps the segment is gone too — it exec'd another program,
    /// which keeps its thread id and start time — looked at about once a second.
    fn take_over_if_dead(&self, held: u32, me: ThreadIdentity) -> Option<LockResult<'_, T>> {
        let tid = held & OWNER;
        if tid == 0 {
            return None;
        }
        let record = self.owner.load(Ordering::Acquire);
        let recorded_start = record & 0xffff_ffff;
        let alive = match crate::shm::identity::look_at(tid) {
            Seen::Gone => false,
            // A thread of that id runs, but /proc cannot say which (another user's behind
            // `hidepid`, or no /proc): it may be the holder; wait.
            Seen::CannotTell => true,
            // The record describes this holder, with a start time (0: the holder could not
            // read its own): compare start times.
            Seen::Running { start_time }
                if (record >> 32) as u32 == tid && recorded_start != 0 && start_time != 0 =>
            {
                start_time & 0xffff_ffff == recorded_start
            }
            // The holder has not written its record yet (or a peer scribbled): a thread with
            // that id exists, so it may be the holder; wait.
            Seen::Running { .. } => true,
        };
        if alive && !(self.time_to_look_at_maps() && self.segment.unmapped_by(tid)) {
            return None;
        }
        let taken = me.tid | (held & WAITERS);
        if self
            .word
            .compare_exchange(held, taken, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        self.consistency.store(INCONSISTENT, Ordering::Relaxed);
        Some(self.acquired(me))
    }

    /// Whether a look at the holder's maps is due (and if so, counts it as made). Kept by
    /// the lock word's address in a table of the process, not in `self`, since a binding may
    /// make a `Mutex` for every call: each slot names the word it times, and a word that
    /// finds its slot taken by another takes it over and looks, so locks whose addresses
    /// meet in a slot never use up each other's looks (they only look more often).
    fn time_to_look_at_maps(&self) -> bool {
        struct Slot {
            word: AtomicUsize,
            looked: AtomicU64,
        }
        static SLOTS: [Slot; 256] = [const {
            Slot {
                word: AtomicUsize::new(0),
                looked: AtomicU64::new(0),
            }
        }; 256];
        let word = std::ptr::from_ref(self.word).addr();
        let hash = (word as u64 >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        let slot = &SLOTS[hash as usize];
        let now = super::coarse_now().as_millis() as u64;
        if slot.word.swap(word, Ordering::Relaxed) != word {
            slot.looked.store(now, Ordering::Relaxed);
            return true;
        }
        let last = slot.looked.load(Ordering::Relaxed);
        now.saturating_sub(last) >= MAPS_INTERVAL.as_millis() as u64
            && slot
                .looked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn acquired(&self, me: ThreadIdentity) -> LockResult<'_, T> {
        let record = u64::from(me.tid) << 32 | (me.start_time & 0xffff_ffff);
        self.owner.store(record, Ordering::Release);
        let guard = MutexGuard {
            mutex: self,
            _not_send: PhantomData,
        };
        if let Err(error) = self.segment.check() {
            return Err(LockError::Failed(error));
        }
        if self.consistency.load(Ordering::Relaxed) != CONSISTENT {
            return Err(LockError::OwnerDied(guard));
        }
        Ok(guard)
    }

    fn release(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            wait::wake(self.word, 1);
        }
    }

    /// The lock word, for [`Condvar`](super::Condvar).
    pub(super) fn segment(&self) -> &'s Segment {
        self.segment
    }
}

impl<T> fmt::Debug for Mutex<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field(
                "word",
                &format_args!("{:#x}", self.word.load(Ordering::Relaxed)),
            )
            .field("value_offset", &self.value)
            .finish()
    }
}

/// Holds a [`Mutex`]; unlocks on drop. Not `Send`: the lock belongs to the thread that took
/// it (ownership is recorded by thread id).
pub struct MutexGuard<'a, T: bytemuck::Pod> {
    mutex: &'a Mutex<'a, T>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: bytemuck::Pod> MutexGuard<'a, T> {
    /// A copy of the protected value.
    pub fn get(&self) -> Result<T> {
        self.mutex.segment.read_pod(self.mutex.value)
    }

    /// Replaces the protected value.
    pub fn set(&mut self, value: &T) -> Result<()> {
        self.mutex.segment.write_pod(self.mutex.value, value)
    }

    /// Copies the value out, lets `change` modify the copy, and writes it back.
    pub fn update<R>(&mut self, change: impl FnOnce(&mut T) -> R) -> Result<R> {
        let mut value = self.get()?;
        let result = change(&mut value);
        self.set(&value)?;
        Ok(result)
    }

    /// Borrows the value in place.
    ///
    /// # Safety
    /// While the reference lives, no other process or thread writes the value without holding
    /// the lock (every party follows the protocol; none is hostile), and the segment is not
    /// truncated.
    pub unsafe fn as_mut(&mut self) -> &mut T {
        let address = self
            .mutex
            .segment
            .payload_ptr()
            .wrapping_add(self.mutex.value);
        // SAFETY: `init`/`open` checked that the value lies in the payload and is aligned for
        // T; the lock is held; the caller guarantees nobody else writes it meanwhile.
        unsafe { &mut *address.cast::<T>() }
    }

    /// Declares the value repaired after an owner's death; later lockers get `Ok` again.
    pub fn mark_consistent(&mut self) {
        self.mutex.consistency.store(CONSISTENT, Ordering::Relaxed);
    }

    /// Whether the value is marked consistent.
    pub fn is_consistent(&self) -> bool {
        self.mutex.consistency.load(Ordering::Relaxed) == CONSISTENT
    }

    /// The mutex this guard holds.
    pub(super) fn mutex(&self) -> &'a Mutex<'a, T> {
        self.mutex
    }
}

impl<T: bytemuck::Pod> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.release();
    }
}

impl<T: bytemuck::Pod> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("consistent", &self.is_consistent())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SegmentOptions;

    #[test]
    fn maps_looks_are_limited_per_lock_word_not_per_mutex_object() {
        let segment = SegmentOptions::new("test/mutex-maps", 4096)
            .unwrap()
            .create_memfd("maps")
            .unwrap();
        let first = Mutex::init(&segment, 0, 0u64).unwrap();
        let again = Mutex::<u64>::open(&segment, 0).unwrap();
        assert!(first.time_to_look_at_maps(), "the first look is due");
        assert!(
            !again.time_to_look_at_maps(),
            "a second object of the same lock"
        );
        assert!(!first.time_to_look_at_maps(), "the same object");
        let other = Mutex::init(&segment, 64, 0u64).unwrap();
        assert!(
            other.time_to_look_at_maps(),
            "another lock is not held back"
        );
        assert!(
            !again.time_to_look_at_maps(),
            "the first lock's look was made"
        );
    }
}
