//! `mmapkit.Mutex`, `Condvar`, `Semaphore` and `Event`: the library's robust process-shared
//! primitives, placed at an offset of a segment.
//!
//! Each Python object keeps the segment mapped (an `Arc`) and opens the primitive again per
//! call, which checks its magic word and costs nanoseconds. A Rust `MutexGuard` borrows its
//! mutex, so a lock held across Python calls is kept as the library allows: the guard is
//! forgotten when the lock is taken and made again (`Mutex::assume_locked`) to release it.
//! Which Python guard holds the lock is one number per mutex object, so a stale guard can
//! never release a later holder's lock.
//!
//! Waits release the GIL and sleep in slices of [`SLICE`], checking for signals in between,
//! so Ctrl-C interrupts a wait without a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmapkit::sync::{Condvar, LockError, Mutex};
use mmapkit::{Error, ErrorKind, Segment};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::{IntoPy, to_py};
use crate::mapping::unsigned;
use crate::segment::PySegment;

/// The longest a wait sleeps without checking for signals.
const SLICE: Duration = Duration::from_millis(100);

/// When a wait given `timeout` seconds (None: never) ends.
pub(crate) fn deadline_of(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(seconds) = timeout else {
        return Ok(None);
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be None or a number of seconds >= 0, not {seconds}"
        )));
    }
    // A timeout too long to represent waits as long as no timeout does.
    Ok(Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|timeout| Instant::now().checked_add(timeout)))
}

/// The next slice of a wait, or None once `deadline` has passed.
pub(crate) fn next_slice(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLICE),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(SLICE))
        }
    }
}

/// Waits in slices: `attempt(slice)` returns `Ok(Some(_))` when done and `Ok(None)` when its
/// slice ran out. Signals are checked between slices; past the deadline the last attempt has
/// a zero slice, so a ready primitive is never reported as a timeout.
pub(crate) fn sliced<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    attempt: impl Fn(Duration) -> mmapkit::Result<Option<T>> + Sync,
) -> PyResult<Option<T>> {
    let deadline = deadline_of(timeout)?;
    loop {
        let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
        if let Some(done) = py.detach(|| attempt(slice)).py()? {
            return Ok(Some(done));
        }
        if slice.is_zero() {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

pub(crate) fn placement(segment: &PySegment, offset: i64) -> PyResult<(Arc<Segment>, usize)> {
    Ok((segment.shared()?, unsigned("place", "offset", offset)?))
}

/// What a lock attempt ended in, without the guard (which cannot leave the thread).
enum Locked {
    Consistent,
    OwnerDied,
}

/// The mutex state shared by a `Mutex` object and its guards.
#[derive(Debug)]
struct LockState {
    segment: Arc<Segment>,
    offset: usize,
    /// The number of the guard holding the lock through this object; 0 when none.
    holder: AtomicU64,
    /// The last guard number handed out.
    issued: AtomicU64,
}

impl LockState {
    fn mutex(&self) -> PyResult<Mutex<'_, ()>> {
        Mutex::open(&self.segment, self.offset).py()
    }

    /// Releases the lock that guard `number` holds, if it still holds it.
    fn release(&self, number: u64) -> PyResult<bool> {
        let mutex = self.mutex()?;
        if number == 0 || self.holder.load(Ordering::Acquire) != number {
            return Ok(false);
        }
        // SAFETY: guard `number` holds the lock and its Rust guard was forgotten when the
        // lock was taken; no other guard of it exists, so it is released once, here.
        let guard = unsafe { mutex.assume_locked() }.py()?;
        self.holder.store(0, Ordering::Release);
        drop(guard);
        Ok(true)
    }
}

/// A robust process-shared lock at an offset of a segment (`Mutex.SIZE` bytes, 8-aligned).
///
/// `with mutex:` locks and unlocks; `lock()` locks until `guard.release()` or `unlock()`.
/// When the previous holder died holding the lock, the
/// next locker gets `OwnerDiedError` with the lock held by `error.guard`: repair the data,
/// call `guard.mark_consistent()`, then `guard.release()`.
#[pyclass(name = "Mutex", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyMutex {
    state: Arc<LockState>,
}

#[pymethods]
impl PyMutex {
    /// Bytes a mutex takes.
    #[classattr]
    const SIZE: usize = Mutex::<()>::SIZE;

    /// `Mutex.init(segment, offset)`: places a new, unlocked mutex (the creator only).
    #[staticmethod]
    fn init(segment: &PySegment, offset: i64) -> PyResult<PyMutex> {
        let (segment, offset) = placement(segment, offset)?;
        Mutex::init(&segment, offset, ()).py()?;
        Ok(Self::wrap(segment, offset))
    }

    /// `Mutex.open(segment, offset)`: the mutex placed there by its creator.
    #[staticmethod]
    fn open(segment: &PySegment, offset: i64) -> PyResult<PyMutex> {
        let (segment, offset) = placement(segment, offset)?;
        Mutex::<()>::open(&segment, offset).py()?;
        Ok(Self::wrap(segment, offset))
    }

    /// `lock(timeout=None)`: waits for the lock (at most `timeout` seconds, then
    /// `TimeoutError`) and returns its guard; `OwnerDiedError` (with `.guard`) when the
    /// previous holder died. Locking again from the thread that holds it is
    /// `WouldBlockError`, not a deadlock.
    #[pyo3(signature = (timeout = None))]
    fn lock(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyMutexGuard> {
        self.take(py, |mutex| {
            sliced(py, timeout, |slice| {
                outcome(mutex.lock_timeout(slice), ErrorKind::Timeout)
            })?
            .ok_or_else(|| {
                to_py(Error::new(
                    ErrorKind::Timeout,
                    "lock",
                    "the lock stayed held",
                ))
            })
        })
    }

    /// `try_lock()`: the lock's guard if it is free now (or its holder is dead), otherwise
    /// `WouldBlockError`.
    fn try_lock(&self, py: Python<'_>) -> PyResult<PyMutexGuard> {
        self.take(py, |mutex| {
            outcome(mutex.try_lock(), ErrorKind::Timeout)
                .py()?
                .ok_or_else(|| unreachable_timeout("try_lock"))
        })
    }

    /// Whether anyone holds the lock now.
    fn locked(&self) -> PyResult<bool> {
        Ok(self.state.mutex()?.try_lock().is_err_and(|error| {
            matches!(&error, LockError::Failed(failed) if failed.kind() == ErrorKind::WouldBlock)
        }))
    }

    /// Whether this thread holds the lock.
    fn held(&self) -> PyResult<bool> {
        Ok(self.state.mutex()?.is_held_by_current_thread())
    }

    /// `unlock()`: releases the lock this thread took through this object (any of its
    /// guards); an error if it holds none.
    fn unlock(&self) -> PyResult<()> {
        if !self
            .state
            .release(self.state.holder.load(Ordering::Acquire))?
        {
            return Err(PyRuntimeError::new_err(
                "unlock: the lock is not held through this Mutex object",
            ));
        }
        Ok(())
    }

    /// Locks (as `lock()`) for a `with` block; the guard is `as`'s target.
    fn __enter__(&self, py: Python<'_>) -> PyResult<PyMutexGuard> {
        self.lock(py, None)
    }

    /// Releases the lock the `with` block took (unless it was released inside).
    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.state
            .release(self.state.holder.load(Ordering::Acquire))?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.Mutex at offset {} {}>",
            self.state.offset,
            match self.locked() {
                Ok(true) => "locked",
                Ok(false) => "unlocked",
                Err(_) => "unreadable",
            }
        )
    }
}

impl PyMutex {
    fn wrap(segment: Arc<Segment>, offset: usize) -> PyMutex {
        PyMutex {
            state: Arc::new(LockState {
                segment,
                offset,
                holder: AtomicU64::new(0),
                issued: AtomicU64::new(0),
            }),
        }
    }

    /// Locks with `acquire` and hands out the guard (inside `OwnerDiedError` when due).
    fn take(
        &self,
        py: Python<'_>,
        acquire: impl FnOnce(&Mutex<'_, ()>) -> PyResult<Locked>,
    ) -> PyResult<PyMutexGuard> {
        let mutex = self.state.mutex()?;
        if mutex.is_held_by_current_thread() {
            return Err(to_py(Error::new(
                ErrorKind::WouldBlock,
                "lock",
                "this thread holds the lock already (a mutex is not reentrant)",
            )));
        }
        let locked = acquire(&mutex)?;
        let number = self.state.issued.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.holder.store(number, Ordering::Release);
        let guard = PyMutexGuard {
            state: Arc::clone(&self.state),
            number,
        };
        match locked {
            Locked::Consistent => Ok(guard),
            Locked::OwnerDied => {
                let error = to_py(Error::new(
                    ErrorKind::OwnerDied,
                    "lock",
                    "the previous holder died holding the lock; repair the data, then call \
                     guard.mark_consistent()",
                ));
                error.value(py).setattr("guard", guard)?;
                Err(error)
            }
        }
    }
}

/// Turns a lock attempt into its outcome, forgetting the guard (the lock stays held);
/// `Ok(None)` for an error of kind `again` (a slice that ran out).
fn outcome(
    result: Result<mmapkit::sync::MutexGuard<'_, ()>, LockError<mmapkit::sync::MutexGuard<'_, ()>>>,
    again: ErrorKind,
) -> mmapkit::Result<Option<Locked>> {
    match result {
        Ok(guard) => {
            std::mem::forget(guard);
            Ok(Some(Locked::Consistent))
        }
        Err(LockError::OwnerDied(guard)) => {
            std::mem::forget(guard);
            Ok(Some(Locked::OwnerDied))
        }
        Err(LockError::Failed(error)) if error.kind() == again => Ok(None),
        Err(LockError::Failed(error)) => Err(error),
    }
}

fn unreachable_timeout(operation: &'static str) -> PyErr {
    PyRuntimeError::new_err(format!("{operation}: a wait without time ran out of time"))
}

/// The lock of a `Mutex`, held until `release()`, `mutex.unlock()` or the end of a `with`
/// block — not until the guard object goes away: like `threading.Lock.acquire()`,
/// `mutex.lock()` holds the lock whether or not its guard is kept. A lock its thread never
/// releases is taken over when the thread ends, and the next locker gets `OwnerDiedError`.
#[pyclass(name = "MutexGuard", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyMutexGuard {
    state: Arc<LockState>,
    number: u64,
}

impl PyMutexGuard {
    fn holds(&self) -> bool {
        self.state.holder.load(Ordering::Acquire) == self.number
    }

    pub(crate) fn held_mutex(&self, operation: &str) -> PyResult<Mutex<'_, ()>> {
        if !self.holds() {
            return Err(PyRuntimeError::new_err(format!(
                "{operation}: this guard was released"
            )));
        }
        self.state.mutex()
    }
}

#[pymethods]
impl PyMutexGuard {
    /// Releases the lock. Only the thread that locked may; a second release is an error.
    fn release(&self) -> PyResult<()> {
        self.held_mutex("release")?;
        if !self.state.release(self.number)? {
            return Err(PyRuntimeError::new_err("release: this guard was released"));
        }
        Ok(())
    }

    /// Declares the protected data repaired after a holder's death: later lockers get the
    /// lock without `OwnerDiedError`.
    fn mark_consistent(&self) -> PyResult<()> {
        let mutex = self.held_mutex("mark_consistent")?;
        // SAFETY: this guard holds the lock and its Rust guard was forgotten; the guard made
        // here is forgotten again below, so the lock stays held and is released once.
        let mut guard = unsafe { mutex.assume_locked() }.py()?;
        guard.mark_consistent();
        std::mem::forget(guard);
        Ok(())
    }

    /// Whether the data is marked consistent.
    #[getter]
    fn consistent(&self) -> PyResult<bool> {
        let mutex = self.held_mutex("consistent")?;
        // SAFETY: as in `mark_consistent`: made from the held lock and forgotten again.
        let guard = unsafe { mutex.assume_locked() }.py()?;
        let consistent = guard.is_consistent();
        std::mem::forget(guard);
        Ok(consistent)
    }

    /// Whether this guard still holds the lock.
    #[getter]
    fn held(&self) -> bool {
        self.holds()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.holds() {
            self.state.release(self.number)?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.MutexGuard {}>",
            if self.holds() { "held" } else { "released" }
        )
    }
}

/// A process-shared condition variable at an offset of a segment (`Condvar.SIZE` bytes).
/// Wake-ups may be spurious: wait in a loop that checks the condition, and notify while
/// holding the mutex.
#[pyclass(name = "Condvar", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyCondvar {
    segment: Arc<Segment>,
    offset: usize,
}

#[pymethods]
impl PyCondvar {
    /// Bytes a condition variable takes.
    #[classattr]
    const SIZE: usize = Condvar::SIZE;

    /// `Condvar.init(segment, offset)`: places a new condition variable (the creator only).
    #[staticmethod]
    fn init(segment: &PySegment, offset: i64) -> PyResult<PyCondvar> {
        let (segment, offset) = placement(segment, offset)?;
        Condvar::init(&segment, offset).py()?;
        Ok(PyCondvar { segment, offset })
    }

    /// `Condvar.open(segment, offset)`: the condition variable placed there.
    #[staticmethod]
    fn open(segment: &PySegment, offset: i64) -> PyResult<PyCondvar> {
        let (segment, offset) = placement(segment, offset)?;
        Condvar::open(&segment, offset).py()?;
        Ok(PyCondvar { segment, offset })
    }

    /// `wait(guard, timeout=None)`: releases `guard`'s lock, waits for a notification, and
    /// locks again; False when `timeout` seconds passed without one. `OwnerDiedError` (with
    /// the same guard, holding the lock) when a holder died meanwhile.
    #[pyo3(signature = (guard, timeout = None))]
    fn wait(
        &self,
        py: Python<'_>,
        guard: &Bound<'_, PyMutexGuard>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let deadline = deadline_of(timeout)?;
        let holder = guard.get();
        let condvar = Condvar::open(&self.segment, self.offset).py()?;
        let mutex = holder.held_mutex("wait")?;
        if !mutex.is_held_by_current_thread() {
            return Err(to_py(Error::new(
                ErrorKind::InvalidInput,
                "wait",
                "this thread does not hold the guard's lock",
            )));
        }
        let state = &holder.state;
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            // While the wait has the lock released, other threads may lock and unlock it
            // through this same Mutex object; the guard is the holder again once it is back.
            state.holder.store(0, Ordering::Release);
            let waited = py.detach(|| {
                // SAFETY: `guard` holds the lock (checked above) and its Rust guard was
                // forgotten; the one made here is consumed by the wait, and the lock it
                // takes again is forgotten by `outcome`, so it stays held and is released
                // once, by `guard`.
                let locked = unsafe { mutex.assume_locked() }?;
                let (relocked, timed_out) = condvar.wait_timeout(locked, slice);
                outcome(relocked, ErrorKind::Timeout).map(|locked| (locked, timed_out))
            });
            if let Ok((Some(_), _)) = waited {
                state.holder.store(holder.number, Ordering::Release);
            }
            match waited {
                Ok((Some(Locked::Consistent), timed_out)) => {
                    if !timed_out {
                        return Ok(true);
                    }
                    if slice.is_zero() {
                        return Ok(false);
                    }
                    py.check_signals()?;
                }
                Ok((Some(Locked::OwnerDied), _)) => {
                    let error = to_py(Error::new(
                        ErrorKind::OwnerDied,
                        "wait",
                        "a holder of the lock died while this thread waited; repair the data, \
                         then call guard.mark_consistent()",
                    ));
                    error.value(py).setattr("guard", guard)?;
                    return Err(error);
                }
                Ok((None, _)) => return Err(unreachable_timeout("wait")),
                // The lock was not taken again: the guard no longer holds it.
                Err(error) => return Err(to_py(error)),
            }
        }
    }

    /// Wakes one waiter.
    fn notify_one(&self) -> PyResult<()> {
        Condvar::open(&self.segment, self.offset).py()?.notify_one();
        Ok(())
    }

    /// Wakes every waiter.
    fn notify_all(&self) -> PyResult<()> {
        Condvar::open(&self.segment, self.offset).py()?.notify_all();
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("<mmapkit.Condvar at offset {}>", self.offset)
    }
}
