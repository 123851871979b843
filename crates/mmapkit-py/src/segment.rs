//! `mmapkit.Segment`: named and memfd shared-memory segments with mmapkit's header.
//!
//! A segment lives until `unlink()`: no resource tracker removes it behind its users' backs
//! (CPython gh-82300). Its memory is shared, so it is never lent out as a buffer; every read
//! and write is a copy, and a peer's truncation raises `TruncatedError`. A named segment
//! pickles as its name, so a `spawn`ed child reopens the same segment.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use mmapkit::shm::Location;
use mmapkit::{Segment, SegmentOptions};
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::buffers::Foreign;
use crate::errors::IntoPy;
use crate::mapping::{out_of_bounds, unsigned};

/// The type tag of segments that hold plain bytes.
const BYTES: &str = "mmapkit/bytes";

/// Copies at least this long release the GIL.
const DETACH_FROM: usize = 64 << 10;

/// A shared-memory segment: a header, then `len(segment)` bytes of payload.
///
/// Each call takes its own share of the segment, so `close()` from another thread while a
/// long copy runs neither fails nor unmaps the memory under the copy: the mapping goes when
/// the last share does.
#[pyclass(name = "Segment", module = "mmapkit", frozen)]
#[derive(Debug)]
pub struct PySegment {
    inner: std::sync::Mutex<Option<Arc<Segment>>>,
}

fn options(type_tag: &str, size: usize, mode: u32, wait: f64) -> PyResult<SegmentOptions> {
    if wait.is_nan() || wait < 0.0 {
        return Err(PyValueError::new_err(format!(
            "wait must be a number of seconds >= 0, not {wait}"
        )));
    }
    let mut options = SegmentOptions::new(type_tag, size).py()?;
    // A wait too long to represent waits as long as it takes.
    options
        .mode(mode)
        .wait(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX));
    Ok(options)
}

/// `create_segment(name, size, *, type_tag="mmapkit/bytes", mode=0o600)`: a new named
/// segment in /dev/shm; `AlreadyExistsError` if the name is taken.
#[pyfunction]
#[pyo3(signature = (name, size, *, type_tag = BYTES, mode = 0o600))]
pub fn create_segment(
    py: Python<'_>,
    name: &str,
    size: usize,
    type_tag: &str,
    mode: u32,
) -> PyResult<PySegment> {
    let options = options(type_tag, size, mode, 0.0)?;
    let segment = py.detach(|| options.create(name)).py()?;
    Ok(PySegment::new(segment))
}

/// `open_segment(name, *, size=0, type_tag="mmapkit/bytes", read_only=False, wait=2.0)`:
/// an existing named segment (size 0 accepts any size); waits up to `wait` seconds for a
/// creator still initialising it.
#[pyfunction]
#[pyo3(signature = (name, *, size = 0, type_tag = BYTES, read_only = false, wait = 2.0))]
pub fn open_segment(
    py: Python<'_>,
    name: &str,
    size: usize,
    type_tag: &str,
    read_only: bool,
    wait: f64,
) -> PyResult<PySegment> {
    let mut options = options(type_tag, size, 0o600, wait)?;
    // The wait for a creator still setting the segment up goes in slices, with a look for
    // signals between them, so that Ctrl-C ends it.
    let deadline = if wait.is_infinite() {
        None
    } else {
        crate::sync::deadline_of(Some(wait))?
    };
    loop {
        let slice = crate::sync::next_slice(deadline).unwrap_or(Duration::ZERO);
        options.wait(slice);
        let opened = py.detach(|| {
            if read_only {
                options.open_read_only(name)
            } else {
                options.open(name)
            }
        });
        match opened {
            Err(error) if error.kind() == mmapkit::ErrorKind::Timeout && !slice.is_zero() => {
                py.check_signals()?;
            }
            opened => return Ok(PySegment::new(opened.py()?)),
        }
    }
}

/// `create_memfd(size, *, type_tag="mmapkit/bytes", debug_name="mmapkit")`: an anonymous
/// segment, shared with children across fork (and passed by descriptor).
#[pyfunction]
#[pyo3(signature = (size, *, type_tag = BYTES, debug_name = "mmapkit"))]
pub fn create_memfd(size: usize, type_tag: &str, debug_name: &str) -> PyResult<PySegment> {
    let segment = options(type_tag, size, 0o600, 0.0)?
        .create_memfd(debug_name)
        .py()?;
    Ok(PySegment::new(segment))
}

/// `segment_from_fd(fd, *, type_tag="mmapkit/bytes")`: the segment behind a descriptor
/// received from another process (`socket.recv_fds`, a pickled memfd segment). The
/// descriptor is duplicated: the caller still owns `fd` and closes it when it likes.
#[pyfunction]
#[pyo3(signature = (fd, *, type_tag = BYTES))]
pub fn segment_from_fd(fd: i32, type_tag: &str) -> PyResult<PySegment> {
    let options = options(type_tag, 0, 0o600, 0.0)?;
    let duplicate = duplicate_fd(fd)?;
    Ok(PySegment::new(options.from_fd(duplicate).py()?))
}

/// A close-on-exec duplicate of the caller's descriptor `fd`, which stays the caller's.
pub(crate) fn duplicate_fd(fd: i32) -> PyResult<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; a number that is not open
    // fails with EBADF and touches nothing.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if duplicate < 0 {
        let error = std::io::Error::last_os_error();
        return Err(PyOSError::new_err((
            error.raw_os_error().unwrap_or(0),
            format!("descriptor {fd}: {error}"),
        )));
    }
    // SAFETY: fcntl just returned this new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// `unlink_segment(name)`: removes a named segment's name; its users keep their mappings.
#[pyfunction]
pub fn unlink_segment(name: &str) -> PyResult<()> {
    mmapkit::shm::unlink(name).py()
}

impl PySegment {
    fn new(segment: Segment) -> PySegment {
        PySegment {
            inner: std::sync::Mutex::new(Some(Arc::new(segment))),
        }
    }

    /// The state, whose lock is only held to clone or drop the share (never while waiting).
    fn state(&self) -> std::sync::MutexGuard<'_, Option<Arc<Segment>>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn segment(&self) -> PyResult<Arc<Segment>> {
        self.shared()
    }

    /// The segment, shared with the locks and events placed in it: they keep it mapped
    /// after this handle is closed.
    pub(crate) fn shared(&self) -> PyResult<Arc<Segment>> {
        self.state()
            .clone()
            .ok_or_else(|| PyValueError::new_err("the segment is closed"))
    }
}

#[pymethods]
impl PySegment {
    /// Bytes of payload.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.segment()?.payload_len())
    }

    fn __repr__(&self) -> String {
        let Ok(segment) = self.segment() else {
            return "<mmapkit.Segment closed>".to_owned();
        };
        let header = segment.header();
        format!(
            "<mmapkit.Segment {} {} bytes type={:?} creator={}{}>",
            match segment.location() {
                Location::Named(name) => format!("{name:?}"),
                Location::Memfd => "memfd".to_owned(),
                Location::File(path) => format!("{:?}", path.display().to_string()),
                Location::Received => "received".to_owned(),
            },
            segment.payload_len(),
            header.type_tag.as_str(),
            header.creator.pid,
            if segment.is_writable() {
                ""
            } else {
                " read-only"
            }
        )
    }

    /// The name in /dev/shm, or None for a memfd.
    #[getter]
    fn name(&self) -> PyResult<Option<String>> {
        Ok(match self.segment()?.location() {
            Location::Named(name) => Some(name.clone()),
            _ => None,
        })
    }

    /// What the payload holds, as its creator said.
    #[getter]
    fn type_tag(&self) -> PyResult<String> {
        Ok(self.segment()?.header().type_tag.as_str().into_owned())
    }

    /// The process id of the segment's creator.
    #[getter]
    fn creator_pid(&self) -> PyResult<u32> {
        Ok(self.segment()?.header().creator.pid)
    }

    /// Whether this handle may write.
    #[getter]
    fn writable(&self) -> PyResult<bool> {
        Ok(self.segment()?.is_writable())
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.state().is_none()
    }

    /// `read_at(offset, length)`: payload bytes, as `bytes`.
    fn read_at<'py>(
        &self,
        py: Python<'py>,
        offset: i64,
        length: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let segment = self.segment()?;
        let offset = unsigned("read_at", "offset", offset)?;
        let length = unsigned("read_at", "length", length)?;
        let size = segment.payload_len();
        if offset > size || length > size - offset {
            return Err(out_of_bounds("read_at", offset, length, size));
        }
        PyBytes::new_with(py, length, |buffer| {
            // The bytes object is new: nothing else can see it until it is returned.
            let mut copy = move || segment.read_at(offset, buffer);
            if length >= DETACH_FROM {
                py.detach(copy)
            } else {
                copy()
            }
            .py()
        })
    }

    /// `read_into(buffer, offset)`: fills a writable buffer from the payload at `offset`;
    /// returns the bytes copied (fewer at the end of the payload).
    fn read_into(&self, buffer: &Bound<'_, PyAny>, offset: i64) -> PyResult<usize> {
        let segment = self.segment()?;
        let offset = unsigned("read_into", "offset", offset)?;
        let size = segment.payload_len();
        if offset > size {
            return Err(out_of_bounds("read_into", offset, 0, size));
        }
        let target = Foreign::get(buffer, true)?;
        let len = target.len().min(size - offset);
        // SAFETY: the target is held writable for `len` bytes or more and no Rust reference
        // to it exists; it cannot overlap the segment, whose memory is never lent out.
        unsafe { segment.read_to_ptr(offset, target.as_ptr(), len) }.py()?;
        Ok(len)
    }

    /// `write_at(offset, data)`: copies a bytes-like object into the payload at `offset`.
    fn write_at(&self, offset: i64, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let segment = self.segment()?;
        let offset = unsigned("write_at", "offset", offset)?;
        let source = Foreign::get(data, false)?;
        // SAFETY: the source is held for its `len()` bytes; it cannot overlap the segment,
        // whose memory is never lent out.
        unsafe { segment.write_from_ptr(offset, source.as_ptr(), source.len()) }.py()?;
        Ok(source.len())
    }

    /// The segment's descriptor (owned by the segment: do not close it).
    fn fileno(&self) -> PyResult<i32> {
        use std::os::fd::AsRawFd;
        Ok(self.segment()?.fd().as_raw_fd())
    }

    /// Removes the segment's name (named segments); users keep their mappings.
    fn unlink(&self) -> PyResult<()> {
        match self.segment()?.location() {
            Location::Named(name) => mmapkit::shm::unlink(name).py(),
            _ => Err(PyTypeError::new_err(
                "only a named segment has a name to unlink",
            )),
        }
    }

    /// Unmaps the segment here; it lives on for its other users until unlinked.
    fn close(&self) {
        let share = self.state().take();
        drop(share);
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

    /// A named segment pickles as its name, size, type and access: unpickling opens it. A
    /// memfd segment pickles as its descriptor (`multiprocessing.reduction.DupFd`), so it
    /// reaches `spawn`ed children and processes on the other end of a multiprocessing pipe.
    fn __reduce__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        use std::os::fd::AsRawFd;
        let segment = self.segment()?;
        let type_tag = segment.header().type_tag.as_str().into_owned();
        let package = py.import("mmapkit")?;
        if let Location::Named(name) = segment.location() {
            let arguments = (
                name.clone(),
                segment.payload_len(),
                type_tag,
                !segment.is_writable(),
            );
            return Ok((
                package.getattr("_reopen_segment")?,
                arguments.into_pyobject(py)?,
            ));
        }
        let passed = py
            .import("multiprocessing.reduction")?
            .getattr("DupFd")?
            .call1((segment.fd().as_raw_fd(),))?;
        Ok((
            package.getattr("_adopt_segment")?,
            (passed, type_tag).into_pyobject(py)?,
        ))
    }
}
