//! `mmapkit.ByteChannel` and its endpoints: the library's single-producer, single-consumer
//! channel of byte messages between processes.
//!
//! The channel object only creates, opens, pickles and attaches; the endpoints (in
//! `endpoints`) carry the messages.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use mmapkit::SegmentOptions;
use mmapkit::channel::{ByteChannel, ChannelOptions};
use mmapkit::shm::Location;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::endpoints::{PyByteReceiver, PyByteSender, ReceiverCell, SenderCell};
use crate::errors::IntoPy;
use crate::segment::duplicate_fd;

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
        Ok(PyByteSender::new(cell))
    }

    /// Attaches the receiving side (one per channel at a time).
    fn receiver(&self, py: Python<'_>) -> PyResult<PyByteReceiver> {
        let cell = py
            .detach(|| {
                ReceiverCell::try_new(Arc::clone(&self.channel), |channel| channel.receiver())
            })
            .py()?;
        Ok(PyByteReceiver::new(cell))
    }

    /// The longest message the channel carries (half its capacity, less 8 bytes).
    #[getter]
    fn max_message(&self) -> PyResult<usize> {
        self.channel.max_message().py()
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
            self.max_message().unwrap_or(0),
            if self.pollable() { " pollable" } else { "" }
        )
    }

    /// A named channel without a doorbell pickles as its name; a memfd channel as its
    /// descriptors (segment, and doorbell if pollable), which multiprocessing passes to
    /// `spawn`ed children; a named pollable channel as its name and its doorbell's descriptor
    /// (a doorbell cannot be opened by name).
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let package = py.import("mmapkit")?;
        if let Some(name) = self.name().filter(|_| !self.pollable()) {
            return Ok((
                package.getattr("_open_channel")?,
                (name,).into_pyobject(py)?,
            ));
        }
        let pass = py.import("multiprocessing.reduction")?.getattr("DupFd")?;
        // A named pollable channel travels as its name and its doorbell's descriptor.
        let name = self.name();
        let segment = match name {
            Some(_) => None,
            None => Some(pass.call1((self.channel.segment().fd().as_raw_fd(),))?),
        };
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
            (segment, doorbell, type_tag, name).into_pyobject(py)?,
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

/// `channel_from_fds(segment_fd, doorbell_fd, type_tag, name=None)`: a channel from
/// descriptors another process passed (duplicated: the caller keeps its own); a named
/// channel's segment is opened by `name` instead, so that it keeps its name.
#[pyfunction]
#[pyo3(signature = (segment_fd, doorbell_fd, type_tag, name = None))]
pub fn channel_from_fds(
    segment_fd: Option<i32>,
    doorbell_fd: Option<i32>,
    type_tag: &str,
    name: Option<&str>,
) -> PyResult<PyByteChannel> {
    let options = SegmentOptions::new(type_tag, 0).py()?;
    let segment = match (name, segment_fd) {
        (Some(name), _) => options.open(name).py()?,
        (None, Some(fd)) => options.from_fd(duplicate_fd(fd)?).py()?,
        (None, None) => {
            return Err(PyTypeError::new_err(
                "channel_from_fds: a segment descriptor or a name is needed",
            ));
        }
    };
    let doorbell = doorbell_fd.map(duplicate_fd).transpose()?;
    Ok(PyByteChannel::wrap(
        ByteChannel::from_segment(segment, doorbell).py()?,
    ))
}
