//! `Closable`: the state of a Python object that one thread may close while another is in a
//! call on it.
//!
//! A pyclass borrowed by a call that releases the GIL (a wait, a long copy) makes every other
//! call on the object fail with pyo3's "Already borrowed" — `close()` included, which is the
//! usual way to stop a thread blocked in a receive. Here the state sits behind a lock instead,
//! held for one step at a time (a copy, one slice of a wait): `close()` raises a flag that every
//! later call sees at once, waits for the step in progress to end, and drops the state.
//!
//! The rule that keeps this free of deadlocks: no thread waits for the lock while it holds the
//! GIL. With the GIL held the lock is only tried; when it is busy the thread waits for it with
//! the GIL released, then tries again. And a step run with the lock held calls no Python code
//! that could re-enter the object: callers take what they need from Python first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use pyo3::prelude::*;

/// A value that calls share, one at a time or many readers at once, until `close()`.
#[derive(Debug)]
pub(crate) struct Closable<T> {
    state: RwLock<Option<T>>,
    closing: AtomicBool,
    closed_error: fn() -> PyErr,
}

impl<T: Send + Sync> Closable<T> {
    /// `closed_error` is what calls after `close()` raise.
    pub(crate) fn new(value: T, closed_error: fn() -> PyErr) -> Closable<T> {
        Closable {
            state: RwLock::new(Some(value)),
            closing: AtomicBool::new(false),
            closed_error,
        }
    }

    /// True once `close()` has begun.
    pub(crate) fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, Option<T>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Option<T>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn open<'a, V>(&self, value: Option<&'a mut V>) -> PyResult<&'a mut V> {
        match value {
            Some(value) if !self.is_closed() => Ok(value),
            _ => Err((self.closed_error)()),
        }
    }

    fn open_ref<'a, V>(&self, value: Option<&'a V>) -> PyResult<&'a V> {
        match value {
            Some(value) if !self.is_closed() => Ok(value),
            _ => Err((self.closed_error)()),
        }
    }

    /// Runs `step` on the value, shared with other readers, the GIL held.
    pub(crate) fn with<R>(
        &self,
        py: Python<'_>,
        step: impl FnOnce(&T) -> PyResult<R>,
    ) -> PyResult<R> {
        if self.is_closed() {
            return Err((self.closed_error)());
        }
        loop {
            match self.state.try_read() {
                Ok(guard) => return step(self.open_ref(guard.as_ref())?),
                Err(TryLockError::Poisoned(poisoned)) => {
                    return step(self.open_ref(poisoned.into_inner().as_ref())?);
                }
                Err(TryLockError::WouldBlock) => py.detach(|| drop(self.read_lock())),
            }
        }
    }

    /// Runs `step` on the value alone, the GIL held.
    pub(crate) fn with_mut<R>(
        &self,
        py: Python<'_>,
        step: impl FnOnce(&mut T) -> PyResult<R>,
    ) -> PyResult<R> {
        if self.is_closed() {
            return Err((self.closed_error)());
        }
        loop {
            match self.state.try_write() {
                Ok(mut guard) => return step(self.open(guard.as_mut())?),
                Err(TryLockError::Poisoned(poisoned)) => {
                    return step(self.open(poisoned.into_inner().as_mut())?);
                }
                Err(TryLockError::WouldBlock) => py.detach(|| drop(self.write_lock())),
            }
        }
    }

    /// Runs `step` on the value alone if no other call is using it (`None` if one is): for
    /// calls that must not wait, such as `try_recv` while another thread waits in `recv`.
    pub(crate) fn try_with_mut<R>(
        &self,
        step: impl FnOnce(&mut T) -> PyResult<R>,
    ) -> PyResult<Option<R>> {
        if self.is_closed() {
            return Err((self.closed_error)());
        }
        match self.state.try_write() {
            Ok(mut guard) => step(self.open(guard.as_mut())?).map(Some),
            Err(TryLockError::Poisoned(poisoned)) => {
                step(self.open(poisoned.into_inner().as_mut())?).map(Some)
            }
            Err(TryLockError::WouldBlock) => Ok(None),
        }
    }

    /// Runs `step` on the value alone, the GIL released.
    pub(crate) fn detached_mut<R: Send>(
        &self,
        py: Python<'_>,
        step: impl FnOnce(&mut T) -> R + Send,
    ) -> PyResult<R> {
        let taken = py.detach(|| {
            let mut guard = self.write_lock();
            match guard.as_mut() {
                Some(value) if !self.is_closed() => Some(step(value)),
                _ => None,
            }
        });
        taken.ok_or_else(self.closed_error)
    }

    /// Runs `step` on the value, shared with other readers, the GIL released.
    pub(crate) fn detached<R: Send>(
        &self,
        py: Python<'_>,
        step: impl FnOnce(&T) -> R + Send,
    ) -> PyResult<R> {
        let taken = py.detach(|| {
            let guard = self.read_lock();
            match guard.as_ref() {
                Some(value) if !self.is_closed() => Some(step(value)),
                _ => None,
            }
        });
        taken.ok_or_else(self.closed_error)
    }

    /// Closes: later calls raise the closed error at once; the step in progress in another
    /// thread, if any, ends first (the GIL released meanwhile). Closing twice is harmless.
    pub(crate) fn close(&self, py: Python<'_>) {
        self.closing.store(true, Ordering::Release);
        py.detach(|| drop(self.write_lock().take()));
    }
}
