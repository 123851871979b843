//! `mmapkit_mutex_t`, `mmapkit_semaphore_t`, `mmapkit_event_t`: the library's robust
//! process-shared primitives, placed at an offset of a segment's payload.
//!
//! A handle keeps its segment mapped and opens the primitive again per call (a check of its
//! magic word). A Rust guard borrows its mutex, so a lock held between C calls is kept the
//! way the library allows bindings to: the guard is forgotten when the lock is taken, and
//! made again (`Mutex::assume_locked`) by the thread that holds it, to unlock.

use std::ffi::c_int;
use std::sync::Arc;

use mmapkit::sync::{Event, EventMode, LockError, Mutex, Semaphore};
use mmapkit::{Error, ErrorKind, Result, Segment};

use crate::handles::{self, Wait, wait_of};
use crate::segment::{self, mmapkit_segment_t};
use crate::status::{MMAPKIT_EOWNERDIED, MMAPKIT_OK, call, invalid, with_message};

/// A robust mutex in a segment. The lock belongs to the thread that took it: only that thread
/// unlocks it, and if it ends (or its process dies) holding it, the next locker gets
/// `MMAPKIT_EOWNERDIED` with the lock held. The handle itself may be used from any thread.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_mutex_t {
    _opaque: [u8; 0],
}

/// A counting semaphore in a segment. Safe to use from several threads at once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_semaphore_t {
    _opaque: [u8; 0],
}

/// An event (a flag to wait for) in a segment. Safe to use from several threads at once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_event_t {
    _opaque: [u8; 0],
}

/// Bytes a mutex takes in a payload (at an offset aligned to 8).
pub const MMAPKIT_MUTEX_SIZE: usize = 24;
/// Bytes a semaphore takes in a payload (at an offset aligned to 8).
pub const MMAPKIT_SEMAPHORE_SIZE: usize = 16;
/// Bytes an event takes in a payload (at an offset aligned to 8).
pub const MMAPKIT_EVENT_SIZE: usize = 16;

/// The segment and offset of a primitive.
struct Placed {
    segment: Arc<Segment>,
    offset: usize,
}

struct MutexObject(Placed);
struct SemaphoreObject(Placed);
struct EventObject(Placed);

const MUTEX: &str = "mmapkit_mutex_t";
const SEMAPHORE: &str = "mmapkit_semaphore_t";
const EVENT: &str = "mmapkit_event_t";

fn placed(segment: *const mmapkit_segment_t, offset: usize) -> Result<Placed> {
    Ok(Placed {
        segment: segment::segment(segment)?,
        offset,
    })
}

impl MutexObject {
    fn mutex(&self) -> Result<Mutex<'_, ()>> {
        Mutex::open(&self.0.segment, self.0.offset)
    }
}

/// Places a new, unlocked mutex at payload `offset` (the creator only, before others open it).
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_init(
    segment: *const mmapkit_segment_t,
    offset: usize,
    out: *mut *mut mmapkit_mutex_t,
) -> c_int {
    call("mmapkit_mutex_init", || {
        handles::clear_out(out)?;
        let object = MutexObject(placed(segment, offset)?);
        Mutex::init(&object.0.segment, offset, ())?;
        handles::hand_out(object, out)
    })
}

/// Opens the mutex placed at payload `offset`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_open(
    segment: *const mmapkit_segment_t,
    offset: usize,
    out: *mut *mut mmapkit_mutex_t,
) -> c_int {
    call("mmapkit_mutex_open", || {
        handles::clear_out(out)?;
        let object = MutexObject(placed(segment, offset)?);
        object.mutex()?;
        handles::hand_out(object, out)
    })
}

/// Locks, waiting up to `timeout_ms` milliseconds (negative: as long as it takes; 0: not at
/// all, `MMAPKIT_EWOULDBLOCK` if held). `MMAPKIT_ETIMEDOUT` when time runs out.
/// `MMAPKIT_EOWNERDIED` means the lock **is held** by the caller, taken from a holder that
/// died: repair the data, `mmapkit_mutex_mark_consistent`, then unlock. Locking a mutex this
/// thread already holds is `MMAPKIT_EINVAL` (it would wait for itself). A holder that
/// `exec`s another program is gone about a second later (`MMAPKIT_EOWNERDIED`) when
/// /proc/PID/maps can be read (the same user, or root); otherwise it keeps the lock until that
/// program ends. A holder that execs a program which maps the same segment again is not told
/// apart from itself: the lock stays its, and that program's lock is `MMAPKIT_EINVAL`.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_lock(
    mutex: *const mmapkit_mutex_t,
    timeout_ms: i64,
) -> c_int {
    call("mmapkit_mutex_lock", || {
        let object = handles::get::<MutexObject, _>(mutex, MUTEX)?;
        let mutex = object.mutex()?;
        if mutex.is_held_by_current_thread() {
            return Err(invalid("lock", "this thread already holds the lock"));
        }
        let locked = match wait_of(timeout_ms) {
            Wait::Forever => mutex.lock(),
            Wait::Try => mutex.try_lock(),
            Wait::For(timeout) => mutex.lock_timeout(timeout),
        };
        match locked {
            Ok(guard) => {
                // Held until mmapkit_mutex_unlock makes the guard again.
                std::mem::forget(guard);
                Ok(MMAPKIT_OK)
            }
            Err(LockError::OwnerDied(guard)) => {
                std::mem::forget(guard);
                with_message(
                    MMAPKIT_EOWNERDIED,
                    "mmapkit_mutex_lock: the lock's previous owner died holding it; the lock \
                     is now held by this thread: repair the data, call \
                     mmapkit_mutex_mark_consistent, then mmapkit_mutex_unlock"
                        .to_owned(),
                )
            }
            Err(LockError::Failed(error)) => Err(error),
        }
    })
}

/// Unlocks a mutex this thread holds; `MMAPKIT_EINVAL` if it does not hold it.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_unlock(mutex: *const mmapkit_mutex_t) -> c_int {
    call("mmapkit_mutex_unlock", || {
        let object = handles::get::<MutexObject, _>(mutex, MUTEX)?;
        let mutex = object.mutex()?;
        // SAFETY: the guard of this lock was forgotten when this thread took it through the
        // C ABI (C callers hold no Rust guard), so the one made here is the only one;
        // assume_locked itself refuses a thread that does not hold the lock.
        let guard = unsafe { mutex.assume_locked() }?;
        drop(guard);
        Ok(MMAPKIT_OK)
    })
}

/// Declares the data repaired after `MMAPKIT_EOWNERDIED`; later lockers get `MMAPKIT_OK`
/// again. The calling thread must hold the lock.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_mark_consistent(mutex: *const mmapkit_mutex_t) -> c_int {
    call("mmapkit_mutex_mark_consistent", || {
        let object = handles::get::<MutexObject, _>(mutex, MUTEX)?;
        let mutex = object.mutex()?;
        // SAFETY: as in mmapkit_mutex_unlock; the guard is forgotten again, so the lock stays
        // held.
        let mut guard = unsafe { mutex.assume_locked() }?;
        guard.mark_consistent();
        std::mem::forget(guard);
        Ok(MMAPKIT_OK)
    })
}

/// Closes the handle. A lock this thread holds stays held (unlock it through another handle
/// of the same mutex) — but while no handle of its segment is open in this process, the
/// segment is not mapped here, and other processes' waiters take the lock over as from a
/// holder that exec'd (`MMAPKIT_EOWNERDIED`): keep a segment handle open until you unlock.
/// NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mutex_close(mutex: *mut mmapkit_mutex_t) -> c_int {
    call("mmapkit_mutex_close", || {
        handles::destroy::<MutexObject, _>(mutex, MUTEX)
    })
}

impl SemaphoreObject {
    fn semaphore(&self) -> Result<Semaphore<'_>> {
        Semaphore::open(&self.0.segment, self.0.offset)
    }
}

/// Places a new semaphore holding `initial` at payload `offset` (the creator only).
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_init(
    segment: *const mmapkit_segment_t,
    offset: usize,
    initial: u32,
    out: *mut *mut mmapkit_semaphore_t,
) -> c_int {
    call("mmapkit_semaphore_init", || {
        handles::clear_out(out)?;
        let object = SemaphoreObject(placed(segment, offset)?);
        Semaphore::init(&object.0.segment, offset, initial)?;
        handles::hand_out(object, out)
    })
}

/// Opens the semaphore placed at payload `offset`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_open(
    segment: *const mmapkit_segment_t,
    offset: usize,
    out: *mut *mut mmapkit_semaphore_t,
) -> c_int {
    call("mmapkit_semaphore_open", || {
        handles::clear_out(out)?;
        let object = SemaphoreObject(placed(segment, offset)?);
        object.semaphore()?;
        handles::hand_out(object, out)
    })
}

/// Adds one to the count, waking a waiter.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_post(semaphore: *const mmapkit_semaphore_t) -> c_int {
    call("mmapkit_semaphore_post", || {
        let object = handles::get::<SemaphoreObject, _>(semaphore, SEMAPHORE)?;
        object.semaphore()?.post()?;
        Ok(MMAPKIT_OK)
    })
}

/// Takes one from the count, waiting up to `timeout_ms` for it to be positive (negative: as
/// long as it takes; 0: `MMAPKIT_EWOULDBLOCK` at once if it is 0).
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_wait(
    semaphore: *const mmapkit_semaphore_t,
    timeout_ms: i64,
) -> c_int {
    call("mmapkit_semaphore_wait", || {
        let object = handles::get::<SemaphoreObject, _>(semaphore, SEMAPHORE)?;
        let semaphore = object.semaphore()?;
        match wait_of(timeout_ms) {
            Wait::Forever => semaphore.wait()?,
            Wait::Try => {
                if !semaphore.try_wait()? {
                    return Err(would_block("wait", "the count is 0"));
                }
            }
            Wait::For(timeout) => semaphore.wait_timeout(timeout)?,
        }
        Ok(MMAPKIT_OK)
    })
}

/// The current count.
///
/// # Safety
/// `value` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_value(
    semaphore: *const mmapkit_semaphore_t,
    value: *mut u32,
) -> c_int {
    call("mmapkit_semaphore_value", || {
        let object = handles::get::<SemaphoreObject, _>(semaphore, SEMAPHORE)?;
        let count = object.semaphore()?.value();
        handles::put(value, count)
    })
}

/// Closes the handle. NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_semaphore_close(semaphore: *mut mmapkit_semaphore_t) -> c_int {
    call("mmapkit_semaphore_close", || {
        handles::destroy::<SemaphoreObject, _>(semaphore, SEMAPHORE)
    })
}

impl EventObject {
    fn event(&self) -> Result<Event<'_>> {
        Event::open(&self.0.segment, self.0.offset)
    }
}

/// Places a new, unset event at payload `offset` (the creator only). With `auto_reset`
/// non-zero, the waiter that sees it set clears it; otherwise it stays set until reset.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_init(
    segment: *const mmapkit_segment_t,
    offset: usize,
    auto_reset: c_int,
    out: *mut *mut mmapkit_event_t,
) -> c_int {
    call("mmapkit_event_init", || {
        handles::clear_out(out)?;
        let object = EventObject(placed(segment, offset)?);
        let mode = if auto_reset != 0 {
            EventMode::AutoReset
        } else {
            EventMode::ManualReset
        };
        Event::init(&object.0.segment, offset, mode)?;
        handles::hand_out(object, out)
    })
}

/// Opens the event placed at payload `offset`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_open(
    segment: *const mmapkit_segment_t,
    offset: usize,
    out: *mut *mut mmapkit_event_t,
) -> c_int {
    call("mmapkit_event_open", || {
        handles::clear_out(out)?;
        let object = EventObject(placed(segment, offset)?);
        object.event()?;
        handles::hand_out(object, out)
    })
}

/// Sets the event, waking its waiters.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_set(event: *const mmapkit_event_t) -> c_int {
    call("mmapkit_event_set", || {
        handles::get::<EventObject, _>(event, EVENT)?
            .event()?
            .set()?;
        Ok(MMAPKIT_OK)
    })
}

/// Clears the event.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_reset(event: *const mmapkit_event_t) -> c_int {
    call("mmapkit_event_reset", || {
        handles::get::<EventObject, _>(event, EVENT)?
            .event()?
            .reset()?;
        Ok(MMAPKIT_OK)
    })
}

/// Whether the event is set: `*set` is 1 or 0.
///
/// # Safety
/// `set` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_is_set(
    event: *const mmapkit_event_t,
    set: *mut c_int,
) -> c_int {
    call("mmapkit_event_is_set", || {
        let now = handles::get::<EventObject, _>(event, EVENT)?
            .event()?
            .is_set();
        handles::put(set, c_int::from(now))
    })
}

/// Waits up to `timeout_ms` for the event to be set (negative: as long as it takes; 0:
/// `MMAPKIT_EWOULDBLOCK` at once if it is not).
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_wait(
    event: *const mmapkit_event_t,
    timeout_ms: i64,
) -> c_int {
    call("mmapkit_event_wait", || {
        let object = handles::get::<EventObject, _>(event, EVENT)?;
        let event = object.event()?;
        match wait_of(timeout_ms) {
            Wait::Forever => event.wait()?,
            Wait::Try => {
                if !event.try_wait()? {
                    return Err(would_block("wait", "the event is not set"));
                }
            }
            Wait::For(timeout) => event.wait_timeout(timeout)?,
        }
        Ok(MMAPKIT_OK)
    })
}

/// Closes the handle. NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_event_close(event: *mut mmapkit_event_t) -> c_int {
    call("mmapkit_event_close", || {
        handles::destroy::<EventObject, _>(event, EVENT)
    })
}

fn would_block(operation: &'static str, why: &'static str) -> Error {
    Error::new(ErrorKind::WouldBlock, operation, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_in_the_header_are_the_librarys() {
        assert_eq!(MMAPKIT_MUTEX_SIZE, Mutex::<()>::SIZE);
        assert_eq!(MMAPKIT_SEMAPHORE_SIZE, Semaphore::SIZE);
        assert_eq!(MMAPKIT_EVENT_SIZE, Event::SIZE);
    }
}
