//! `mmapkit.Semaphore` and `mmapkit.Event`: the library's process-shared counting semaphore
//! and event, with `threading`'s method names (`acquire`/`release`, `set`/`clear`/`wait`).
//! Waits release the GIL and sleep in slices, so Ctrl-C interrupts them.

use std::sync::Arc;
use std::time::Duration;

use mmapkit::sync::{Event, EventMode, Semaphore};
use mmapkit::{ErrorKind, Segment};
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::segment::PySegment;
use crate::sync::{placement, sliced};

/// `Ok(Some(()))` when `result` succeeded, `Ok(None)` when it timed out.
fn passed(result: mmapkit::Result<()>) -> mmapkit::Result<Option<()>> {
    match result {
        Ok(()) => Ok(Some(())),
        Err(error) if error.kind() == ErrorKind::Timeout => Ok(None),
        Err(error) => Err(error),
    }
}

/// A process-shared counting semaphore at an offset of a segment (`Semaphore.SIZE` bytes).
#[pyclass(name = "Semaphore", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PySemaphore {
    segment: Arc<Segment>,
    offset: usize,
}

impl PySemaphore {
    fn semaphore(&self) -> PyResult<Semaphore<'_>> {
        Semaphore::open(&self.segment, self.offset).py()
    }
}

#[pymethods]
impl PySemaphore {
    /// Bytes a semaphore takes.
    #[classattr]
    const SIZE: usize = Semaphore::SIZE;

    /// `Semaphore.init(segment, offset, value=1)`: places a new semaphore (the creator only).
    #[staticmethod]
    #[pyo3(signature = (segment, offset, value = 1))]
    fn init(segment: &PySegment, offset: i64, value: u32) -> PyResult<PySemaphore> {
        let (segment, offset) = placement(segment, offset)?;
        Semaphore::init(&segment, offset, value).py()?;
        Ok(PySemaphore { segment, offset })
    }

    /// `Semaphore.open(segment, offset)`: the semaphore placed there.
    #[staticmethod]
    fn open(segment: &PySegment, offset: i64) -> PyResult<PySemaphore> {
        let (segment, offset) = placement(segment, offset)?;
        Semaphore::open(&segment, offset).py()?;
        Ok(PySemaphore { segment, offset })
    }

    /// `acquire(blocking=True, timeout=None)`: takes one unit, waiting for it unless
    /// `blocking` is False; False when none came in time.
    #[pyo3(signature = (blocking = true, timeout = None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        let semaphore = self.semaphore()?;
        if !blocking {
            if timeout.is_some() {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "can't specify a timeout for a non-blocking acquire",
                ));
            }
            return semaphore.try_wait().py();
        }
        let taken = sliced(py, timeout, |slice| passed(semaphore.wait_timeout(slice)))?;
        Ok(taken.is_some())
    }

    /// `release(n=1)`: gives back `n` units at once, waking as many waiters; all or none
    /// (`InvalidInputError` when the count would pass 2**32 - 1).
    #[pyo3(signature = (n = 1))]
    fn release(&self, n: u32) -> PyResult<()> {
        self.semaphore()?.post_many(n).py()
    }

    /// The units available now.
    #[getter]
    fn value(&self) -> PyResult<u32> {
        Ok(self.semaphore()?.value())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release(1)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match self.semaphore() {
            Ok(semaphore) => format!(
                "<mmapkit.Semaphore at offset {} value={}>",
                self.offset,
                semaphore.value()
            ),
            Err(_) => format!("<mmapkit.Semaphore at offset {} unreadable>", self.offset),
        }
    }
}

/// A process-shared event at an offset of a segment (`Event.SIZE` bytes): manual reset
/// (stays set until `clear()`) or auto reset (each `set()` lets one waiter through).
#[pyclass(name = "Event", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyEvent {
    segment: Arc<Segment>,
    offset: usize,
}

impl PyEvent {
    fn event(&self) -> PyResult<Event<'_>> {
        Event::open(&self.segment, self.offset).py()
    }
}

#[pymethods]
impl PyEvent {
    /// Bytes an event takes.
    #[classattr]
    const SIZE: usize = Event::SIZE;

    /// `Event.init(segment, offset, *, auto_reset=False)`: places a new, clear event.
    #[staticmethod]
    #[pyo3(signature = (segment, offset, *, auto_reset = false))]
    fn init(segment: &PySegment, offset: i64, auto_reset: bool) -> PyResult<PyEvent> {
        let (segment, offset) = placement(segment, offset)?;
        let mode = match auto_reset {
            true => EventMode::AutoReset,
            false => EventMode::ManualReset,
        };
        Event::init(&segment, offset, mode).py()?;
        Ok(PyEvent { segment, offset })
    }

    /// `Event.open(segment, offset)`: the event placed there.
    #[staticmethod]
    fn open(segment: &PySegment, offset: i64) -> PyResult<PyEvent> {
        let (segment, offset) = placement(segment, offset)?;
        Event::open(&segment, offset).py()?;
        Ok(PyEvent { segment, offset })
    }

    /// Sets the event, waking its waiters (one, for auto reset).
    fn set(&self) -> PyResult<()> {
        self.event()?.set().py()
    }

    /// Clears the event.
    fn clear(&self) -> PyResult<()> {
        self.event()?.reset().py()
    }

    /// Whether the event is set now.
    fn is_set(&self) -> PyResult<bool> {
        Ok(self.event()?.is_set())
    }

    /// Whether each `set()` lets one waiter through (and clears the event again).
    #[getter]
    fn auto_reset(&self) -> PyResult<bool> {
        Ok(self.event()?.mode() == EventMode::AutoReset)
    }

    /// `wait(timeout=None)`: waits until the event is set; False when `timeout` seconds
    /// passed first.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let event = self.event()?;
        let set = sliced(py, timeout, |slice| passed(wait_for(&event, slice)))?;
        Ok(set.is_some())
    }

    fn __repr__(&self) -> String {
        match self.event() {
            Ok(event) => format!(
                "<mmapkit.Event at offset {} {}{}>",
                self.offset,
                if event.is_set() { "set" } else { "clear" },
                if event.mode() == EventMode::AutoReset {
                    " auto-reset"
                } else {
                    ""
                }
            ),
            Err(_) => format!("<mmapkit.Event at offset {} unreadable>", self.offset),
        }
    }
}

/// One slice of an event wait; a zero slice only looks.
fn wait_for(event: &Event<'_>, slice: Duration) -> mmapkit::Result<()> {
    if slice.is_zero() {
        return match event.try_wait()? {
            true => Ok(()),
            false => Err(mmapkit::Error::new(
                ErrorKind::Timeout,
                "wait",
                "the event is clear",
            )),
        };
    }
    event.wait_timeout(slice)
}
