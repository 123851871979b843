//! `mmapkit.ByteSender` and `mmapkit.ByteReceiver`: the two sides of a `ByteChannel`.
//!
//! An endpoint borrows its channel in Rust; here each endpoint owns a share of the channel
//! (`Arc`) next to the endpoint that borrows it (`self_cell`), so Python can hold it. The
//! endpoint sits in a [`Closable`]: calls from several threads take turns, and `close()` from
//! another thread stops a blocked `recv()`/`send()` within one wait slice (it then raises
//! "the endpoint is closed").
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

use mmapkit::channel::{ByteChannel, ByteReceiver, ByteSender, ReceivedBytes};
use mmapkit::{Error, ErrorKind};
use pyo3::exceptions::{PyConnectionError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use self_cell::self_cell;

use crate::buffers::Foreign;
use crate::closable::Closable;
use crate::errors::{IntoPy, to_py};
use crate::peer_waits::{patience, sender_or_verdict, timed_out, unless_timeout, wait_for_peer};
use crate::sync::{deadline_of, next_slice};

self_cell!(
    pub(crate) struct SenderCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteSender,
    }
);

self_cell!(
    pub(crate) struct ReceiverCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteReceiver,
    }
);

fn closed_endpoint() -> PyErr {
    PyValueError::new_err("the endpoint is closed")
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

/// The sending side of a `ByteChannel`.
#[pyclass(name = "ByteSender", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyByteSender {
    cell: Closable<SenderCell>,
}

impl std::fmt::Debug for SenderCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SenderCell")
    }
}

impl PyByteSender {
    pub(crate) fn new(cell: SenderCell) -> PyByteSender {
        PyByteSender {
            cell: Closable::new(cell, closed_endpoint),
        }
    }

    /// Sends `message`, waiting for room as `timeout` says.
    fn send_bytes(
        &self,
        py: Python<'_>,
        operation: &'static str,
        message: &[u8],
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let deadline = deadline_of(timeout)?;
        let try_send = |cell: &mut SenderCell| {
            Ok(cell.with_dependent_mut(|_, sender| sender.try_send(message)))
        };
        // A call that may not wait does not wait for another thread's call either.
        let no_wait = timeout == Some(0.0);
        let sent = match no_wait {
            true => self.cell.try_with_mut(try_send)?,
            false => Some(self.cell.with_mut(py, try_send)?),
        };
        match sent {
            Some(Err(error)) if error.kind() == ErrorKind::WouldBlock => {}
            Some(result) => return result.map_err(|error| error.with_operation(operation)).py(),
            None => {}
        }
        if no_wait {
            return Err(timed_out(operation));
        }
        let started = Instant::now();
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            let sent = self.cell.detached_mut(py, |cell| {
                cell.with_dependent_mut(|_, sender| {
                    let sent = unless_timeout(sender.send_timeout(message, slice))?;
                    if sent.is_none() {
                        patience(timeout, started, operation, |wait| {
                            sender.wait_for_peer(wait)
                        })?;
                    }
                    Ok(sent)
                })
            })?;
            if sent
                .map_err(|error: Error| error.with_operation(operation))
                .py()?
                .is_some()
            {
                return Ok(());
            }
            if slice.is_zero() {
                return Err(timed_out(operation));
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl PyByteSender {
    /// `send(data, timeout=None)`: sends a bytes-like message, waiting while the channel is
    /// full (at most `timeout` seconds, then `TimeoutError`); `DisconnectedError` once the
    /// receiver is gone.
    #[pyo3(signature = (data, timeout = None))]
    fn send(&self, py: Python<'_>, data: &Bound<'_, PyAny>, timeout: Option<f64>) -> PyResult<()> {
        with_message(data, |message| {
            self.send_bytes(py, "send", message, timeout)
        })
    }

    /// `try_send(data)`: sends if there is room now; False if the channel is full.
    fn try_send(&self, data: &Bound<'_, PyAny>) -> PyResult<bool> {
        with_message(data, |message| {
            let sent = self.cell.try_with_mut(|cell| {
                match cell.with_dependent_mut(|_, sender| sender.try_send(message)) {
                    Ok(()) => Ok(true),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(false),
                    Err(error) => Err(to_py(error.with_operation("try_send"))),
                }
            })?;
            // Another thread is sending through this sender: no room for this call now.
            Ok(sent.unwrap_or(false))
        })
    }

    /// `send_many(messages, timeout=None)`: sends each message of an iterable in order, in
    /// one call; `timeout` applies to each wait for room. Returns how many were sent; when it
    /// stops early (a timeout, a receiver gone, a message that is not bytes-like), the
    /// exception's `messages_sent` says how many went before it.
    #[pyo3(signature = (messages, timeout = None))]
    fn send_many(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        let mut sent = 0;
        let sent_each: PyResult<()> = (|| {
            for message in messages.try_iter()? {
                with_message(&message?, |message| {
                    self.send_bytes(py, "send_many", message, timeout)
                })?;
                sent += 1;
            }
            Ok(())
        })();
        if let Err(error) = sent_each {
            // An exception that takes no attributes is raised as it is.
            let _ = error.value(py).setattr("messages_sent", sent);
            return Err(error);
        }
        Ok(sent)
    }

    /// `wait_for_peer(timeout)`: waits up to `timeout` seconds for a receiver to attach.
    fn wait_for_peer(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let deadline = deadline_of(Some(timeout))?;
        wait_for_peer(py, &self.cell, deadline, |cell, slice| {
            cell.with_dependent_mut(|_, sender| sender.wait_for_peer(slice))
        })
    }

    /// Detaches the sender; the receiver is told once it has taken what was sent. A `send()`
    /// waiting in another thread stops with "the endpoint is closed".
    fn close(&self, py: Python<'_>) {
        self.cell.close(py);
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.cell.is_closed()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.ByteSender{}>",
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// The receiving side of a `ByteChannel`. Iterating yields messages until the sender is gone.
#[pyclass(name = "ByteReceiver", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyByteReceiver {
    cell: Closable<ReceiverCell>,
}

impl std::fmt::Debug for ReceiverCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiverCell")
    }
}

/// The next message if one is there, handed to `deliver`.
fn take_with<T>(
    cell: &mut ReceiverCell,
    operation: &'static str,
    deliver: impl FnOnce(ReceivedBytes<'_, '_>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    cell.with_dependent_mut(|_, receiver| {
        let received = receiver.try_receive_in_place();
        let Some(message) = received
            .map_err(|error| error.with_operation(operation))
            .py()?
        else {
            return Ok(None);
        };
        deliver(message).map(Some)
    })
}

/// The next message if one is there, copied once into a new `bytes`.
fn take<'py>(
    py: Python<'py>,
    cell: &mut ReceiverCell,
    operation: &'static str,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    take_with(cell, operation, |message| {
        PyBytes::new_with(py, message.len(), |buffer| message.copy_to(buffer).py())
    })
}

/// Copies `message` to the `capacity` bytes at `address`: its length, or `Err(length)`
/// when it does not fit (it then stays for the next receive).
fn copy_out(
    message: ReceivedBytes<'_, '_>,
    address: usize,
    capacity: usize,
) -> mmapkit::Result<Result<usize, usize>> {
    let len = message.len();
    if len > capacity {
        message.put_back();
        return Ok(Err(len));
    }
    // SAFETY: `address` is a Python buffer held writable for `capacity` bytes for the whole
    // call (see `recv_into`), no Rust reference to it exists, and it cannot overlap the
    // channel's segment, whose mapping no Python object exports.
    unsafe { message.copy_to_ptr(address as *mut u8) }?;
    Ok(Ok(len))
}

impl PyByteReceiver {
    pub(crate) fn new(cell: ReceiverCell) -> PyByteReceiver {
        PyByteReceiver {
            cell: Closable::new(cell, closed_endpoint),
        }
    }

    /// Receives the next message, waiting as `timeout` says: handed to `now` when it is
    /// there at once (the GIL held), else to `later` in a wait slice (the GIL released),
    /// whose result `finish` turns into `now`'s.
    fn receive<T, Later: Send>(
        &self,
        py: Python<'_>,
        operation: &'static str,
        timeout: Option<f64>,
        now: impl FnOnce(ReceivedBytes<'_, '_>) -> PyResult<T>,
        later: impl Fn(ReceivedBytes<'_, '_>) -> mmapkit::Result<Later> + Sync,
        finish: impl FnOnce(Later) -> PyResult<T>,
    ) -> PyResult<T> {
        let deadline = deadline_of(timeout)?;
        // A call that may not wait does not wait for another thread's call either.
        let no_wait = timeout == Some(0.0);
        let look = |cell: &mut ReceiverCell| take_with(cell, operation, now);
        let taken = match no_wait {
            true => self.cell.try_with_mut(look)?.flatten(),
            false => self.cell.with_mut(py, look)?,
        };
        if let Some(message) = taken {
            return Ok(message);
        }
        if no_wait {
            return Err(timed_out(operation));
        }
        let started = Instant::now();
        loop {
            let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
            let received = self.cell.detached_mut(py, |cell| {
                cell.with_dependent_mut(|_, receiver| {
                    let received =
                        unless_timeout(receiver.receive_in_place_timeout(slice).and_then(&later))?;
                    if received.is_none() {
                        patience(timeout, started, operation, |wait| {
                            sender_or_verdict(receiver, wait)
                        })?;
                    }
                    Ok(received)
                })
            })?;
            let received: Option<Later> = received
                .map_err(|error: Error| error.with_operation(operation))
                .py()?;
            if let Some(message) = received {
                return finish(message);
            }
            if slice.is_zero() {
                return Err(timed_out(operation));
            }
            py.check_signals()?;
        }
    }

    /// Receives the next message as `bytes`.
    fn receive_bytes<'py>(
        &self,
        py: Python<'py>,
        operation: &'static str,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.receive(
            py,
            operation,
            timeout,
            |message| PyBytes::new_with(py, message.len(), |buffer| message.copy_to(buffer).py()),
            |message| message.to_vec(),
            |message| Ok(PyBytes::new(py, &message)),
        )
    }
}

#[pymethods]
impl PyByteReceiver {
    /// `recv(timeout=None)`: the next message as `bytes`, waiting for it (at most `timeout`
    /// seconds, then `TimeoutError`); `DisconnectedError` once the sender is gone and
    /// everything it sent has been received.
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyBytes>> {
        self.receive_bytes(py, "recv", timeout)
    }

    /// `recv_into(buffer, timeout=None)`: receives the next message into a writable buffer
    /// (a `bytearray`, a numpy array…) without allocating, and returns its length; waits as
    /// `recv` does. A message longer than the buffer is not received: `ValueError` names
    /// its length, and the next call gets it again.
    #[pyo3(signature = (buffer, timeout = None))]
    fn recv_into(
        &self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        let target = Foreign::get(buffer, true)?;
        let (address, capacity) = (target.as_ptr() as usize, target.len());
        let copied = self.receive(
            py,
            "recv_into",
            timeout,
            |message| copy_out(message, address, capacity).py(),
            |message| copy_out(message, address, capacity),
            Ok,
        )?;
        drop(target);
        copied.map_err(|len| {
            PyValueError::new_err(format!(
                "recv_into: the message is {len} bytes and the buffer {capacity}; it stays \
                 for the next call"
            ))
        })
    }

    /// `try_recv()`: the next message if one is there, else None.
    fn try_recv<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        // None as well while another thread is receiving through this receiver.
        Ok(self
            .cell
            .try_with_mut(|cell| take(py, cell, "try_recv"))?
            .flatten())
    }

    /// `recv_many(max=1024, timeout=None)`: waits for one message as `recv` does, then takes
    /// the others already there, up to `max` in all, as a list.
    #[pyo3(signature = (max = 1024, timeout = None))]
    fn recv_many<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let messages = PyList::empty(py);
        if max == 0 {
            return Ok(messages);
        }
        messages.append(self.receive_bytes(py, "recv_many", timeout)?)?;
        let mut messages_left = max - 1;
        let mut taken = Vec::new();
        // The rest is only what is there now: if another thread is receiving meanwhile, the
        // batch ends with the first message rather than wait for that thread.
        self.cell.try_with_mut(|cell| {
            while messages_left > 0 {
                match take(py, cell, "recv_many") {
                    Ok(Some(message)) => taken.push(message),
                    // What was taken is returned (at least the first message); the next call
                    // reports the disconnection or the error.
                    Ok(None) | Err(_) => break,
                }
                messages_left -= 1;
            }
            Ok(())
        })?;
        for message in taken {
            messages.append(message)?;
        }
        Ok(messages)
    }

    /// `wait_for_peer(timeout)`: waits up to `timeout` seconds for a sender to attach.
    fn wait_for_peer(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let deadline = deadline_of(Some(timeout))?;
        wait_for_peer(py, &self.cell, deadline, |cell, slice| {
            cell.with_dependent_mut(|_, receiver| receiver.wait_for_peer(slice))
        })
    }

    /// The doorbell descriptor of a pollable channel, readable when a message may wait: call
    /// `arm()` before each wait on it. Owned by the receiver (closed by `close()`): do not
    /// close it.
    fn fileno(&self, py: Python<'_>) -> PyResult<i32> {
        self.cell.with(py, |cell| {
            cell.with_dependent(|_, receiver| {
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
        })
    }

    /// `arm()`: prepares a wait on `fileno()`; True if messages (or the sender's departure)
    /// are already there and there is no need to wait.
    fn arm(&self, py: Python<'_>) -> PyResult<bool> {
        self.cell.with_mut(py, |cell| {
            cell.with_dependent_mut(|_, receiver| receiver.arm()).py()
        })
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
    fn _may_wait(&self, py: Python<'_>, waited: f64) -> PyResult<()> {
        let started = Instant::now()
            .checked_sub(Duration::try_from_secs_f64(waited.max(0.0)).unwrap_or_default())
            .unwrap_or_else(Instant::now);
        self.cell.with_mut(py, |cell| {
            cell.with_dependent_mut(|_, receiver| {
                patience(None, started, "recv_async", |wait| {
                    sender_or_verdict(receiver, wait)
                })
            })
            .py()
        })
    }

    /// Detaches the receiver; the sender is told. A `recv()` waiting in another thread stops
    /// with "the endpoint is closed".
    fn close(&self, py: Python<'_>) {
        self.cell.close(py);
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.cell.is_closed()
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        match self.receive_bytes(py, "recv", None) {
            Err(error) if error.is_instance_of::<PyConnectionError>(py) => {
                Err(PyStopIteration::new_err(()))
            }
            other => other,
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmapkit.ByteReceiver{}>",
            if self.closed() { " closed" } else { "" }
        )
    }
}
