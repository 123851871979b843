//! `mmapkit.ByteChannel` and its endpoints: the library's single-producer, single-consumer
//! channel of byte messages between processes.
//!
//! The channel object only creates, opens, pickles and attaches; the endpoints (in
//! `endpoints`) carry the messages.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use mmapkit::SegmentOptions;
use mmapkit::channel::{ByteChannel, ChannelOptions};
use mmapkit::shm::Location;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::endpoints::{PyByteReceiver, PyByteSender, ReceiverCell, SenderCell};
use crate::errors::IntoPy;
use crate::segment::duplicate_fd;

/// A channel of byte messages from one sender to one receiver, in a segment of its own.
/// Each process attaches one side: `sender()` or `receiver()`. `close()` (or the end of a
/// `with` block) lets go of this handle; endpoints keep the channel until they are closed.
#[pyclass(name = "ByteChannel", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PyByteChannel {
    channel: Mutex<Option<Arc<ByteChannel>>>,
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
        let channel = self.shared()?;
        let cell = py
            .detach(|| SenderCell::try_new(channel, |channel| channel.sender()))
            .py()?;
        Ok(PyByteSender::new(cell))
    }

    /// Attaches the receiving side (one per channel at a time).
    fn receiver(&self, py: Python<'_>) -> PyResult<PyByteReceiver> {
        let channel = self.shared()?;
        let cell = py
            .detach(|| ReceiverCell::try_new(channel, |channel| channel.receiver()))
            .py()?;
        Ok(PyByteReceiver::new(cell))
    }

    /// The longest message the channel carries (half its capacity, less 8 bytes).
    #[getter]
    fn max_message(&self) -> PyResult<usize> {
        self.shared()?.max_message().py()
    }

    /// The name in /dev/shm, or None for a memfd channel.
    #[getter]
    fn name(&self) -> PyResult<Option<String>> {
        Ok(match self.shared()?.segment().location() {
            Location::Named(name) => Some(name.clone()),
            _ => None,
        })
    }

    /// Whether the channel has a doorbell to poll.
    #[getter]
    fn pollable(&self) -> PyResult<bool> {
        Ok(self.shared()?.doorbell().is_some())
    }

    /// Removes a named channel's name; its users keep it.
    fn unlink(&self) -> PyResult<()> {
        match self.shared()?.segment().location() {
            Location::Named(name) => mmapkit::shm::unlink(name).py(),
            _ => Err(PyTypeError::new_err(
                "only a named channel has a name to unlink",
            )),
        }
    }

    fn __repr__(&self) -> String {
        let (Ok(name), Ok(pollable)) = (self.name(), self.pollable()) else {
            return "<mmapkit.ByteChannel closed>".to_owned();
        };
        format!(
            "<mmapkit.ByteChannel {} max_message={}{}>",
            name.map_or_else(|| "memfd".to_owned(), |name| format!("{name:?}")),
            self.max_message().unwrap_or(0),
            if pollable { " pollable" } else { "" }
        )
    }

    /// Lets go of this handle (its endpoints keep the channel). Closing twice is harmless.
    fn close(&self) {
        let taken = self
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(taken);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    /// A named channel without a doorbell pickles as its name; a memfd or pollable channel as
    /// its descriptors (segment, and doorbell if pollable: a doorbell cannot be opened by
    /// name), which multiprocessing passes to `spawn`ed children — a named pollable one with
    /// its name as well, which it keeps while the name leads to the same segment.
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let package = py.import("mmapkit")?;
        let channel = self.shared()?;
        let name = self.name()?;
        if let Some(name) = name.clone().filter(|_| channel.doorbell().is_none()) {
            return Ok((
                package.getattr("_open_channel")?,
                (name,).into_pyobject(py)?,
            ));
        }
        let pass = py.import("multiprocessing.reduction")?.getattr("DupFd")?;
        // A named pollable channel travels with its name too, to keep it where it still
        // leads to this segment.
        let segment = pass.call1((channel.segment().fd().as_raw_fd(),))?;
        let doorbell = match channel.doorbell() {
            Some(doorbell) => Some(pass.call1((doorbell.as_raw_fd(),))?),
            None => None,
        };
        let type_tag = channel.segment().header().type_tag.as_str().into_owned();
        Ok((
            package.getattr("_adopt_channel")?,
            (segment, doorbell, type_tag, name).into_pyobject(py)?,
        ))
    }
}

impl PyByteChannel {
    fn wrap(channel: ByteChannel) -> PyByteChannel {
        PyByteChannel {
            channel: Mutex::new(Some(Arc::new(channel))),
        }
    }

    /// The channel, unless this handle was closed.
    fn shared(&self) -> PyResult<Arc<ByteChannel>> {
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| PyValueError::new_err("the channel handle is closed"))
    }
}

/// `channel_from_fds(segment_fd, doorbell_fd, type_tag, name=None)`: a channel from
/// descriptors another process passed (duplicated: the caller keeps its own). With a
/// `name`, the segment is opened by name when the name still leads to that very segment (so
/// that it keeps its name), and used by descriptor otherwise (unlinked, or replaced).
#[pyfunction]
#[pyo3(signature = (segment_fd, doorbell_fd, type_tag, name = None))]
pub fn channel_from_fds(
    segment_fd: Option<i32>,
    doorbell_fd: Option<i32>,
    type_tag: &str,
    name: Option<&str>,
) -> PyResult<PyByteChannel> {
    let options = SegmentOptions::new(type_tag, 0).py()?;
    let passed = segment_fd
        .map(|fd| options.from_fd(duplicate_fd(fd)?).py())
        .transpose()?;
    let named = name.and_then(|name| options.open(name).ok());
    let segment = match (passed, named) {
        (Some(passed), Some(named)) if named.header().segment_id == passed.header().segment_id => {
            named
        }
        (Some(passed), _) => passed,
        (None, Some(named)) => named,
        (None, None) => {
            return Err(PyTypeError::new_err(
                "channel_from_fds: the segment is neither passed nor found by its name",
            ));
        }
    };
    let doorbell = doorbell_fd.map(duplicate_fd).transpose()?;
    Ok(PyByteChannel::wrap(
        ByteChannel::from_segment(segment, doorbell).py()?,
    ))
}
