//! `mmapkit.ByteChannel` and its endpoints: the library's single-producer, single-consumer
//! channel of byte messages between processes.
//!
//! An endpoint borrows its channel in Rust; here each endpoint owns a share of the channel
//! (`Arc`) next to the endpoint that borrows it (`self_cell`), so Python can hold it.
//!
//! The per-message path is kept thin: a send or receive that need not wait keeps the GIL
//! (releasing it costs more than the copy) and copies once, between the ring and a `bytes`
//! object. Only a wait releases the GIL, in slices that check for signals, so Ctrl-C
//! interrupts it. A wait without a timeout keeps the library's rule: it lasts while a peer
//! is attached, and gives up with `DisconnectedError` when none has attached within
//! `mmapkit.PEER_GRACE` seconds.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmapkit::channel::{ByteChannel, ByteReceiver, ByteSender, ChannelOptions, PEER_GRACE};
use mmapkit::shm::Location;
use mmapkit::{Error, ErrorKind, SegmentOptions};
use pyo3::exceptions::{PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use self_cell::self_cell;

use crate::buffers::Foreign;
use crate::errors::{IntoPy, to_py};
use crate::segment::duplicate_fd;
use crate::sync::{deadline_of, next_slice};

self_cell!(
    struct SenderCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteSender,
    }
);

self_cell!(
    struct ReceiverCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteReceiver,
    }
);

/// A channel of byte messages from one sender to one receiver, in a segment of its own.
/// Each process attaches one side: `sender()` or `receiver()`.
#[pyclass(name = "ByteChannel", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyByteChannel {
    channel: Arc<ByteChannel>,
}

#[pymethods]
impl PyByteChannel {
    /// `ByteChannel.create(name=None, *, capacity=1 MiB, pollable=False, mode=0o600)`: a new
    /// channel, named in /dev/shm or (name None) in a memfd passed to children by pickling.
    /// `pollable` gives it a doorbell descriptor (`receiver.fileno()`, `recv_async`).
    #[staticmethod]
    #[pyo3(signature = (name = None, *, capacity = 1 << 20, pollable = false, mode = 0o600))]
    fn create(
        py: Python<'_>,
        name: Option<&str>,
        capacity: usize,
        pollable: bool,
        mode: u32,
    ) -> PyResult<PyByteChannel> {
        let mut options = ChannelOptions::new(capacity);
        options.pollable(pollable).mode(mode);
        let channel = py
            .detach(|| match name {
                Some(name) => ByteChannel::create(name, &options),
                None => ByteChannel::create_memfd(&options),
            })
            .py()?;
        Ok(Self::wrap(channel))
    }

    /// `ByteChannel.open(name)`: the named channel another process created.
    #[staticmethod]
    fn open(py: Python<'_>, name: &str) -> PyResult<PyByteChannel> {
        let channel = py.detach(|| ByteChannel::open(name)).py()?;
        Ok(Self::wrap(channel))
    }

    /// Attaches the sending side (one per channel at a time).
    fn sender(&self, py: Python<'_>) -> PyResult<PyByteSender> {
        let cell = py
            .detach(|| SenderCell::try_new(Arc::clone(&self.channel), |channel| channel.sender()))
            .py()?;
        Ok(PyByteSender { cell: Some(cell) })
    }

    /// Attaches the receiving side (one per channel at a time).
    fn receiver(&self, py: Python<'_>) -> PyResult<PyByteReceiver> {
        let cell = py
            .detach(|| {
                ReceiverCell::try_new(Arc::clone(&self.channel), |channel| channel.receiver())
            })
            .py()?;
        Ok(PyByteReceiver { cell: Some(cell) })
    }

    /// The longest message the channel carries (half its capacity, less 8 bytes).
    #[getter]
    fn max_message(&self) -> usize {
        self.channel.max_message()
    }

    /// The name in /dev/shm, or None for a memfd channel.
    #[getter]
    fn name(&self) -> Option<String> {
        match self.channel.segment().location() {
            Location::Named(name) => Some(name.clone()),
            _ => None,
        }
    }

    /// Whether the channel has a doorbell to poll.
    #[getter]
    fn pollable(&self) -> bool {
        self.channel.doorbell().is_some()
    }

    /// Removes a named channel's name; its users keep it.
    fn unlink(&self) -> PyResult<()> {
        match self.channel.segment().location() {
            Location::Named(name) => mmapkit::shm::unlink(name).py(),
            _ => Err(PyTypeError::new_err(
                "only a named channel has a name to unlink",
            )),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.ByteChannel {} max_message={}{}>",
            self.name()
                .map_or_else(|| "memfd".to_owned(), |name| format!("{name:?}")),
            self.max_message(),
            if self.pollable() { " pollable" } else { "" }
        )
    }

    /// A named channel pickles as its name; a memfd channel as its descriptors (segment and
    /// doorbell), which multiprocessing passes to `spawn`ed children.
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let package = py.import("mmapkit")?;
        if let Some(name) = self.name() {
            return Ok((
                package.getattr("_open_channel")?,
                (name,).into_pyobject(py)?,
            ));
        }
        let pass = py.import("multiprocessing.reduction")?.getattr("DupFd")?;
        let segment = pass.call1((self.channel.segment().fd().as_raw_fd(),))?;
        let doorbell = match self.channel.doorbell() {
            Some(doorbell) => Some(pass.call1((doorbell.as_raw_fd(),))?),
            None => None,
        };
        let type_tag = self
            .channel
            .segment()
            .header()
            .type_tag
            .as_str()
            .into_owned();
        Ok((
            package.getattr("_adopt_channel")?,
            (segment, doorbell, type_tag).into_pyobject(py)?,
        ))
    }
}

impl PyByteChannel {
    fn wrap(channel: ByteChannel) -> PyByteChannel {
        PyByteChannel {
            channel: Arc::new(channel),
        }
    }
}

/// `channel_from_fds(segment_fd, doorbell_fd, type_tag)`: a channel from descriptors another
/// process passed (duplicated: the caller keeps its own).
#[pyfunction]
pub fn channel_from_fds(
    segment_fd: i32,
    doorbell_fd: Option<i32>,
    type_tag: &str,
) -> PyResult<PyByteChannel> {
    let segment = SegmentOptions::new(type_tag, 0)
        .py()?
        .from_fd(duplicate_fd(segment_fd)?)
        .py()?;
    let doorbell = doorbell_fd.map(duplicate_fd).transpose()?;
    Ok(PyByteChannel::wrap(
        ByteChannel::from_segment(segment, doorbell).py()?,
    ))
}

/// Ends a wait without a timeout once no peer has attached within the grace period.
fn patience(
    timeout: Option<f64>,
    started: Instant,
    operation: &'static str,
    wait_for_peer: impl FnOnce(Duration) -> mmapkit::Result<()>,
) -> mmapkit::Result<()> {
    if timeout.is_some() || started.elapsed() < PEER_GRACE {
        return Ok(());
    }
    match wait_for_peer(Duration::ZERO) {
        Err(error) if error.kind() == ErrorKind::Timeout => Err(Error::new(
            ErrorKind::Disconnected,
            operation,
            format!("no peer attached within {} s", PEER_GRACE.as_secs_f64()),
        )),
        other => other,
    }
}

/// `Ok(None)` for a timeout (a slice that ran out), the result otherwise.
fn unless_timeout<T>(result: mmapkit::Result<T>) -> mmapkit::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == ErrorKind::Timeout => Ok(None),
        Err(error) => Err(error),
    }
}

fn timed_out(operation: &'static str) -> PyErr {
    to_py(Error::new(
        ErrorKind::Timeout,
        operation,
        "the wait timed out",
    ))
}

fn closed_endpoint() -> PyErr {
    PyValueError::new_err("the endpoint is closed")
}

/// The sending side of a `ByteChannel`. Not for use by two threads at once.
#[pyclass(name = "ByteSender", module = "mmapkit")]
pub struct PyByteSender {
    cell: Option<SenderCell>,
}

impl std::fmt::Debug for PyByteSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteSender")
            .field("closed", &self.cell.is_none())
            .finish()
    }
}

impl PyByteSender {
    fn cell(&mut self) -> PyResult<&mut SenderCell> {
        self.cell.as_mut().ok_or_else(closed_endpoint)
    }

    /// Sends `message`, waiting for room as `timeout` says.
    fn send_bytes(&mut self, py: Python<'_>, message: &[u8], timeout: Option<f64>) -> PyResult<()> {
        let cell = self.cell()?;
        match cell.with_dependent_mut(|_, sender| sender.try_send(message)) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            result => return result.py(),
        }
        let deadline = deadline_of(timeout)?;
        let started = Instant::now();
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            let sent = py
                .detach(|| {
                    cell.with_dependent_mut(|_, sender| {
                        let sent = unless_timeout(sender.send_timeout(message, slice))?;
                        if sent.is_none() {
                            patience(timeout, started, "send", |wait| sender.wait_for_peer(wait))?;
                        }
                        Ok(sent)
                    })
                })
                .py()?;
            if sent.is_some() {
                return Ok(());
            }
            if slice.is_zero() {
                return Err(timed_out("send"));
            }
            py.check_signals()?;
        }
    }
}

/// The bytes of a message to send: `bytes` as they are, any other buffer copied.
fn with_message<R>(
    data: &Bound<'_, PyAny>,
    send: impl FnOnce(&[u8]) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return send(bytes.as_bytes());
    }
    let buffer = Foreign::get(data, false)?;
    send(&buffer.to_vec(buffer.len()))
}

#[pymethods]
impl PyByteSender {
    /// `send(data, timeout=None)`: sends a bytes-like message, waiting while the channel is
    /// full (at most `timeout` seconds, then `TimeoutError`); `DisconnectedError` once the
    /// receiver is gone.
    #[pyo3(signature = (data, timeout = None))]
    fn send(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        with_message(data, |message| self.send_bytes(py, message, timeout))
    }

    /// `try_send(data)`: sends if there is room now; False if the channel is full.
    fn try_send(&mut self, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        let cell = self.cell()?;
        with_message(data, |message| {
            match cell.with_dependent_mut(|_, sender| sender.try_send(message)) {
                Ok(()) => Ok(true),
                Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(error) => Err(to_py(error)),
            }
        })
    }

    /// `send_many(messages, timeout=None)`: sends each message of an iterable in order, in
    /// one call; `timeout` applies to each wait for room. Returns how many were sent.
    #[pyo3(signature = (messages, timeout = None))]
    fn send_many(
        &mut self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        let mut sent = 0;
        for message in messages.try_iter()? {
            with_message(&message?, |message| self.send_bytes(py, message, timeout))?;
            sent += 1;
        }
        Ok(sent)
    }

    /// `wait_for_peer(timeout)`: waits up to `timeout` seconds for a receiver to attach.
    fn wait_for_peer(&mut self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let deadline = deadline_of(Some(timeout))?;
        let cell = self.cell()?;
        wait_for_peer(py, deadline, |slice| {
            cell.with_dependent_mut(|_, sender| sender.wait_for_peer(slice))
        })
    }

    /// Detaches the sender; the receiver is told once it has taken what was sent.
    fn close(&mut self) {
        self.cell = None;
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.cell.is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.ByteSender{}>",
            if self.cell.is_none() { " closed" } else { "" }
        )
    }
}

/// Waits for a peer in slices until `deadline`, checking for signals.
fn wait_for_peer(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(Duration) -> mmapkit::Result<()> + Send,
) -> PyResult<()> {
    loop {
        let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
        if py.detach(|| unless_timeout(attempt(slice))).py()?.is_some() {
            return Ok(());
        }
        if slice.is_zero() {
            return Err(timed_out("wait_for_peer"));
        }
        py.check_signals()?;
    }
}

/// The receiving side of a `ByteChannel`. Not for use by two threads at once. Iterating
/// yields messages until the sender is gone.
#[pyclass(name = "ByteReceiver", module = "mmapkit")]
pub struct PyByteReceiver {
    cell: Option<ReceiverCell>,
}

impl std::fmt::Debug for PyByteReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteReceiver")
            .field("closed", &self.cell.is_none())
            .finish()
    }
}

impl PyByteReceiver {
    fn cell(&mut self) -> PyResult<&mut ReceiverCell> {
        self.cell.as_mut().ok_or_else(closed_endpoint)
    }

    /// The next message if one is there, copied once into a new `bytes`.
    fn take<'py>(
        &mut self,
        py: Python<'py>,
        operation: &'static str,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.cell()?.with_dependent_mut(|_, receiver| {
            let received = receiver.try_receive_in_place();
            let Some(message) = received
                .map_err(|error| error.with_operation(operation))
                .py()?
            else {
                return Ok(None);
            };
            PyBytes::new_with(py, message.len(), |buffer| message.copy_to(buffer).py()).map(Some)
        })
    }

    fn receive<'py>(
        &mut self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if let Some(message) = self.take(py, "recv")? {
            return Ok(message);
        }
        let deadline = deadline_of(timeout)?;
        let started = Instant::now();
        let cell = self.cell()?;
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            let received = py
                .detach(|| {
                    cell.with_dependent_mut(|_, receiver| {
                        let received = unless_timeout(
                            receiver
                                .receive_in_place_timeout(slice)
                                .and_then(|message| message.to_vec()),
                        )?;
                        if received.is_none() {
                            patience(timeout, started, "recv", |wait| {
                                receiver.wait_for_peer(wait)
                            })?;
                        }
                        Ok(received)
                    })
                })
                .py()?;
            if let Some(message) = received {
                return Ok(PyBytes::new(py, &message));
            }
            if slice.is_zero() {
                return Err(timed_out("recv"));
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl PyByteReceiver {
    /// `recv(timeout=None)`: the next message as `bytes`, waiting for it (at most `timeout`
    /// seconds, then `TimeoutError`); `DisconnectedError` once the sender is gone and
    /// everything it sent has been received.
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(
        &mut self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.receive(py, timeout)
    }

    /// `try_recv()`: the next message if one is there, else None.
    fn try_recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.take(py, "try_recv")
    }

    /// `recv_many(max=1024, timeout=None)`: waits for one message as `recv` does, then takes
    /// the others already there, up to `max` in all, as a list.
    #[pyo3(signature = (max = 1024, timeout = None))]
    fn recv_many<'py>(
        &mut self,
        py: Python<'py>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let messages = PyList::empty(py);
        if max == 0 {
            return Ok(messages);
        }
        messages.append(self.receive(py, timeout)?)?;
        while messages.len() < max {
            match self.take(py, "recv_many") {
                Ok(Some(message)) => messages.append(message)?,
                Ok(None) => break,
                // What was taken is returned; the next call reports the disconnection.
                Err(error) if error.is_instance_of::<pyo3::exceptions::PyConnectionError>(py) => {
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(messages)
    }

    /// `wait_for_peer(timeout)`: waits up to `timeout` seconds for a sender to attach.
    fn wait_for_peer(&mut self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let deadline = deadline_of(Some(timeout))?;
        let cell = self.cell()?;
        wait_for_peer(py, deadline, |slice| {
            cell.with_dependent_mut(|_, receiver| receiver.wait_for_peer(slice))
        })
    }

    /// The doorbell descriptor of a pollable channel, readable when a message may wait: call
    /// `arm()` before each wait on it. Owned by the receiver: do not close it.
    fn fileno(&mut self) -> PyResult<i32> {
        self.cell()?.with_dependent(|_, receiver| {
            receiver
                .pollable_fd()
                .map(|fd| fd.as_raw_fd())
                .ok_or_else(|| {
                    to_py(
                        Error::new(
                            ErrorKind::Unsupported,
                            "fileno",
                            "this channel has no doorbell",
                        )
                        .with_hint("create it with ByteChannel.create(..., pollable=True)"),
                    )
                })
        })
    }

    /// `arm()`: prepares a wait on `fileno()`; True if messages (or the sender's departure)
    /// are already there and there is no need to wait.
    fn arm(&mut self) -> PyResult<bool> {
        self.cell()?
            .with_dependent_mut(|_, receiver| receiver.arm())
            .py()
    }

    /// `await recv_async()`: the next message, waiting on asyncio's event loop for the
    /// doorbell (a pollable channel) instead of blocking the thread; as `recv()` otherwise.
    fn recv_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("mmapkit._channel")?
            .getattr("recv_async")?
            .call1((slf,))
    }

    /// `_may_wait(waited)`: DisconnectedError when a wait without a timeout that has lasted
    /// `waited` seconds should give up, no sender having attached within the grace period.
    /// For `recv_async`.
    fn _may_wait(&mut self, waited: f64) -> PyResult<()> {
        let started = Instant::now()
            .checked_sub(Duration::try_from_secs_f64(waited.max(0.0)).unwrap_or_default())
            .unwrap_or_else(Instant::now);
        self.cell()?
            .with_dependent_mut(|_, receiver| {
                patience(None, started, "recv_async", |wait| {
                    receiver.wait_for_peer(wait)
                })
            })
            .py()
    }

    /// Detaches the receiver; the sender is told.
    fn close(&mut self) {
        self.cell = None;
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.cell.is_none()
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        match self.receive(py, None) {
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyConnectionError>(py) => {
                Err(PyStopIteration::new_err(()))
            }
            other => other,
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.ByteReceiver{}>",
            if self.cell.is_none() { " closed" } else { "" }
        )
    }
}
