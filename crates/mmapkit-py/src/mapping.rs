//! `mmapkit.Mapping`: a memory mapping with CPython mmap's file-like methods, and none of its
//! crashes.
//!
//! Every read and write is a copy made by the library's guarded routines, so a file truncated
//! by someone else raises `TruncatedError` where CPython's mmap dies of SIGBUS. The buffer
//! protocol (`memoryview(m)`, `numpy.frombuffer(m)`) is offered only for memory nobody else
//! can change or remove (private anonymous memory): a view of a shared file would let the
//! bytes change, or vanish, under the reader. While views are alive, `close()` and `protect()`
//! raise `BufferError`, as CPython's mmap does for `close()` and `resize()`.
//!
//! The GIL is released during copies of memory that cannot be lent out (nothing of Python's
//! can alias it); memory that can be lent out is only touched with the GIL held. The mapping
//! sits in a [`Closable`], so `close()` from another thread waits for a copy in progress
//! instead of failing, and unmaps nothing under it.

use std::ops::Range;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};

use mmapkit::{Advice, ErrorKind, MapOptions, Mapping, Protection, Reach, Sharing};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::Foreign;
use crate::closable::Closable;
use crate::errors::{IntoPy, closed, exported};

/// Copies at least this long release the GIL (when the memory cannot be lent out).
const DETACH_FROM: usize = 64 << 10;

/// A memory mapping of a file or of anonymous memory.
#[derive(Debug)]
#[pyclass(name = "Mapping", module = "mmapkit", frozen)]
pub struct PyMapping {
    inner: Closable<Mapping>,
    position: AtomicUsize,
    /// Buffer views alive; changed and compared with the GIL held.
    exports: AtomicUsize,
    source: String,
}

/// `map_file(path, *, write=False, private=False, offset=0, length=None, populate=False)`
#[pyfunction]
#[pyo3(signature = (path, *, write = false, private = false, offset = 0, length = None, populate = false))]
pub fn map_file(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    write: bool,
    private: bool,
    offset: i64,
    length: Option<i64>,
    populate: bool,
) -> PyResult<PyMapping> {
    let mut options = MapOptions::new();
    options
        .write(write)
        .offset(unsigned("map_file", "offset", offset)? as u64)
        .populate(populate);
    if private {
        options.private();
    } else {
        options.shared();
    }
    if let Some(length) = length {
        options.len(unsigned("map_file", "length", length)?);
    }
    let path = crate::inspect::fs_path(path)?;
    let mapping = py.detach(|| options.map_path(&path)).py()?;
    Ok(PyMapping::new(
        mapping,
        format!("{:?}", path.display().to_string()),
    ))
}

/// `map_anonymous(length, *, shared=False, populate=False)`
#[pyfunction]
#[pyo3(signature = (length, *, shared = false, populate = false))]
pub fn map_anonymous(length: i64, shared: bool, populate: bool) -> PyResult<PyMapping> {
    let mut options = MapOptions::new();
    options
        .len(unsigned("map_anonymous", "length", length)?)
        .write(true)
        .populate(populate);
    if shared {
        options.shared();
    }
    let mapping = options.map_anonymous().py()?;
    let source = if shared {
        "anonymous, shared"
    } else {
        "anonymous"
    };
    Ok(PyMapping::new(mapping, source.to_owned()))
}

/// The library's result, its error naming the Python call.
fn named<T>(operation: &'static str, result: mmapkit::Result<T>) -> PyResult<T> {
    result.map_err(|error| error.with_operation(operation)).py()
}

/// A non-negative Python integer, or `OutOfBoundsError`.
pub(crate) fn unsigned(operation: &'static str, what: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| {
            mmapkit::Error::new(
                ErrorKind::OutOfBounds,
                operation,
                format!("{what} {value} is negative"),
            )
        })
        .py()
}

/// `OutOfBoundsError` for `len` bytes at `offset` of `size`.
pub(crate) fn out_of_bounds(
    operation: &'static str,
    offset: usize,
    len: usize,
    size: usize,
) -> PyErr {
    crate::errors::to_py(mmapkit::Error::new(
        ErrorKind::OutOfBounds,
        operation,
        format!("{len} bytes at offset {offset} leave the {size} bytes there are"),
    ))
}

impl PyMapping {
    fn new(mapping: Mapping, source: String) -> PyMapping {
        PyMapping {
            inner: Closable::new(mapping, closed),
            position: AtomicUsize::new(0),
            exports: AtomicUsize::new(0),
            source,
        }
    }

    fn position(&self) -> usize {
        self.position.load(Ordering::Relaxed)
    }

    fn exports(&self) -> usize {
        self.exports.load(Ordering::Relaxed)
    }

    /// Runs `step` on the open mapping, the GIL held.
    fn with<R>(&self, py: Python<'_>, step: impl FnOnce(&Mapping) -> PyResult<R>) -> PyResult<R> {
        self.inner.with(py, step)
    }

    /// True when Python may hold views of the memory, so copies keep the GIL.
    fn lendable(mapping: &Mapping) -> bool {
        mapping.reach() == Reach::Exclusive
    }

    /// `start`/`end` as Python passes them (end None: the end of the mapping).
    fn range(
        len: usize,
        operation: &'static str,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<Range<usize>> {
        let start = unsigned(operation, "start", start)?;
        let end = match end {
            Some(end) => unsigned(operation, "end", end)?,
            None => len.max(start),
        };
        if start > end || end > len {
            return Err(mmapkit::Error::new(
                ErrorKind::OutOfBounds,
                operation,
                format!("range {start}..{end} leaves the mapping of {len} bytes"),
            ))
            .py();
        }
        Ok(start..end)
    }

    fn read_bytes<'py>(
        py: Python<'py>,
        mapping: &Mapping,
        operation: &'static str,
        offset: usize,
        len: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // Checked before the bytes object is allocated: a huge length is out of bounds, not
        // out of memory.
        if offset > mapping.len() || len > mapping.len() - offset {
            return Err(out_of_bounds(operation, offset, len, mapping.len()));
        }
        let detach = len >= DETACH_FROM && !Self::lendable(mapping);
        PyBytes::new_with(py, len, |buffer| {
            // The bytes object is new: nothing else can see it until it is returned.
            let mut copy = move || mapping.read_at(offset, buffer);
            named(operation, if detach { py.detach(copy) } else { copy() })
        })
    }

    fn copy_into(
        mapping: &Mapping,
        operation: &'static str,
        target: &Foreign,
        offset: usize,
    ) -> PyResult<usize> {
        if offset > mapping.len() {
            return Err(out_of_bounds(
                operation,
                offset,
                target.len(),
                mapping.len(),
            ));
        }
        let len = target.len().min(mapping.len() - offset);
        if target.overlaps(Self::memory(mapping)) {
            let mut bounce = vec![0; len];
            named(operation, mapping.read_at(offset, &mut bounce))?;
            target.fill_from(&bounce);
        } else {
            // SAFETY: the target is held writable for `len` bytes or more, no Rust reference
            // to it exists, and it does not overlap the mapping (checked).
            named(operation, unsafe {
                mapping.read_to_ptr(offset, target.as_ptr(), len)
            })?;
        }
        Ok(len)
    }

    fn copy_from(
        mapping: &Mapping,
        operation: &'static str,
        source: &Foreign,
        offset: usize,
    ) -> PyResult<usize> {
        if source.overlaps(Self::memory(mapping)) {
            named(
                operation,
                mapping.write_at(offset, &source.to_vec(source.len())),
            )?;
        } else {
            // SAFETY: the source is held for its `len()` bytes and does not overlap the
            // mapping (checked).
            named(operation, unsafe {
                mapping.write_from_ptr(offset, source.as_ptr(), source.len())
            })?;
        }
        Ok(source.len())
    }

    /// The addresses of the mapping's bytes.
    fn memory(mapping: &Mapping) -> Range<usize> {
        let start = mapping.as_ptr() as usize;
        start..start + mapping.len()
    }

    /// `find` (`reverse` false) or `rfind` (true): an offset of `sub` in `[start, end)`, or -1.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        py: Python<'_>,
        operation: &'static str,
        sub: &Bound<'_, PyAny>,
        start: i64,
        end: Option<i64>,
        reverse: bool,
    ) -> PyResult<i64> {
        let needle = Foreign::get(sub, false)?;
        let needle = needle.to_vec(needle.len());
        self.with(py, |mapping| {
            // As bytes.find: a start past the end finds nothing.
            if usize::try_from(start).is_ok_and(|start| start > mapping.len()) {
                return Ok(-1);
            }
            let range = Self::range(mapping.len(), operation, start, end)?;
            let found = if reverse {
                mapping.rfind(&needle, range)
            } else {
                mapping.find(&needle, range)
            };
            let found = named(operation, found)?;
            Ok(found.map_or(-1, |offset| offset as i64))
        })
    }
}

#[pymethods]
impl PyMapping {
    /// Length of the mapping in bytes.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |mapping| Ok(mapping.len()))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let open = self.with(py, |mapping| {
            Ok(format!(
                "<mmapkit.Mapping {} len={} {}{} position={}>",
                self.source,
                mapping.len(),
                match mapping.sharing() {
                    Sharing::Shared => "shared",
                    Sharing::Private => "private",
                },
                if mapping
                    .protection()
                    .is_some_and(|p| p.contains(Protection::WRITE))
                {
                    " writable"
                } else {
                    ""
                },
                self.position()
            ))
        });
        open.unwrap_or_else(|_| format!("<mmapkit.Mapping {} closed>", self.source))
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// True when writes reach the file (or, for anonymous memory, other processes).
    #[getter]
    fn shared(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |mapping| Ok(mapping.sharing() == Sharing::Shared))
    }

    /// True when nobody else can change or remove the bytes: only then are buffer views lent.
    #[getter]
    fn exclusive(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |mapping| Ok(Self::lendable(mapping)))
    }

    /// Size of the mapping's pages in bytes.
    #[getter]
    fn page_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |mapping| Ok(mapping.page_size()))
    }

    /// `read_at(offset, length)`: `length` bytes from `offset`, as `bytes`.
    fn read_at<'py>(
        &self,
        py: Python<'py>,
        offset: i64,
        length: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let offset = unsigned("read_at", "offset", offset)?;
        let length = unsigned("read_at", "length", length)?;
        self.with(py, |mapping| {
            Self::read_bytes(py, mapping, "read_at", offset, length)
        })
    }

    /// `read_into(buffer, offset)`: fills a writable buffer (a `bytearray`, a numpy array…)
    /// from `offset`, without allocating; returns the bytes copied (fewer at the end).
    fn read_into(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>, offset: i64) -> PyResult<usize> {
        let offset = unsigned("read_into", "offset", offset)?;
        let target = Foreign::get(buffer, true)?;
        self.with(py, |mapping| {
            Self::copy_into(mapping, "read_into", &target, offset)
        })
    }

    /// `write_at(offset, data)`: copies a bytes-like object to `offset`; returns its length.
    fn write_at(&self, py: Python<'_>, offset: i64, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let offset = unsigned("write_at", "offset", offset)?;
        let source = Foreign::get(data, false)?;
        self.with(py, |mapping| {
            Self::copy_from(mapping, "write_at", &source, offset)
        })
    }

    /// `read(n=-1)`: up to `n` bytes from the position (all that is left if `n` < 0).
    #[pyo3(signature = (n = -1))]
    fn read<'py>(&self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.with(py, |mapping| {
            let position = self.position();
            let left = mapping.len().saturating_sub(position);
            let len = match n {
                Some(n) if n >= 0 => (n as u64).min(left as u64) as usize,
                _ => left,
            };
            let bytes = Self::read_bytes(py, mapping, "read", position, len)?;
            self.position.store(position + len, Ordering::Relaxed);
            Ok(bytes)
        })
    }

    /// `readinto(buffer)`: fills `buffer` from the position; returns the bytes copied.
    fn readinto(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let target = Foreign::get(buffer, true)?;
        self.with(py, |mapping| {
            let position = self.position();
            let copied = Self::copy_into(mapping, "readinto", &target, position)?;
            self.position.store(position + copied, Ordering::Relaxed);
            Ok(copied)
        })
    }

    /// `write(data)`: writes at the position and moves it; data past the end is an error and
    /// nothing is written.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let source = Foreign::get(data, false)?;
        self.with(py, |mapping| {
            let position = self.position();
            let written = Self::copy_from(mapping, "write", &source, position)?;
            self.position.store(position + written, Ordering::Relaxed);
            Ok(written)
        })
    }

    /// `seek(pos, whence=0)`: as for files (0: from the start, 1: the position, 2: the end);
    /// the new position must lie within the mapping.
    #[pyo3(signature = (pos, whence = 0))]
    fn seek(&self, py: Python<'_>, pos: i64, whence: i32) -> PyResult<usize> {
        let len = self.with(py, |mapping| Ok(mapping.len()))? as i128;
        let base = match whence {
            0 => 0,
            1 => self.position() as i128,
            2 => len,
            _ => {
                return Err(mmapkit::Error::new(
                    ErrorKind::InvalidInput,
                    "seek",
                    format!("whence {whence} is not 0, 1 or 2"),
                ))
                .py();
            }
        };
        let target = base + pos as i128;
        if !(0..=len).contains(&target) {
            return Err(mmapkit::Error::new(
                ErrorKind::OutOfBounds,
                "seek",
                format!("position {target} leaves the mapping of {len} bytes"),
            ))
            .py();
        }
        self.position.store(target as usize, Ordering::Relaxed);
        Ok(target as usize)
    }

    /// The position of `read`, `write` and `readinto`.
    fn tell(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |_| Ok(self.position()))
    }

    /// `find(sub, start=0, end=None)`: the lowest offset of `sub` in `[start, end)`, or -1.
    #[pyo3(signature = (sub, start = 0, end = None))]
    fn find(
        &self,
        py: Python<'_>,
        sub: &Bound<'_, PyAny>,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<i64> {
        self.search(py, "find", sub, start, end, false)
    }

    /// `rfind(sub, start=0, end=None)`: the highest offset of `sub` in `[start, end)`, or -1.
    #[pyo3(signature = (sub, start = 0, end = None))]
    fn rfind(
        &self,
        py: Python<'_>,
        sub: &Bound<'_, PyAny>,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<i64> {
        self.search(py, "rfind", sub, start, end, true)
    }

    /// `flush(start=0, end=None)`: writes the range's dirty pages to the file and waits (msync).
    #[pyo3(signature = (start = 0, end = None))]
    fn flush(&self, py: Python<'_>, start: i64, end: Option<i64>) -> PyResult<()> {
        self.inner.detached(py, |mapping| {
            let range = Self::range(mapping.len(), "flush", start, end)?;
            named("flush", mapping.flush_range(range, mmapkit::Flush::Sync))
        })?
    }

    /// `advise(advice, start=0, end=None)`: madvise with one of `mmapkit.Advice` (or its name:
    /// "normal", "sequential", "random", "willneed", "hugepage", "nohugepage",
    /// "populate_read", "populate_write", "cold", "pageout", "dontdump", "dodump",
    /// "mergeable", "unmergeable"). Advice that would change the bytes is not offered.
    #[pyo3(signature = (advice, start = 0, end = None))]
    fn advise(&self, py: Python<'_>, advice: &str, start: i64, end: Option<i64>) -> PyResult<()> {
        let advice = parse_advice(advice)?;
        self.inner.detached(py, |mapping| {
            let range = Self::range(mapping.len(), "advise", start, end)?;
            named("advise", mapping.advise(range, advice))
        })?
    }

    /// `protect(protection, start=0, end=None)`: mprotect the pages of the range to "" (no
    /// access), "r" or "rw". Refused with `BufferError` while buffer views are alive.
    #[pyo3(signature = (protection, start = 0, end = None))]
    fn protect(
        &self,
        py: Python<'_>,
        protection: &str,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<()> {
        let protection = match protection {
            "" | "none" => Protection::empty(),
            "r" => Protection::READ,
            "rw" => Protection::READ_WRITE,
            other => {
                return Err(mmapkit::Error::new(
                    ErrorKind::InvalidInput,
                    "protect",
                    format!("protection {other:?} is not \"\", \"r\" or \"rw\""),
                ))
                .py();
            }
        };
        self.inner.with_mut(py, |mapping| {
            // Counted with the GIL held, as views are made: none can appear before the change.
            if self.exports() > 0 {
                return Err(exported("protect", self.exports()));
            }
            let range = Self::range(mapping.len(), "protect", start, end)?;
            named("protect", mapping.protect(range, protection))
        })
    }

    /// `lock(start=0, end=None)`: keeps the range's pages in RAM (mlock).
    #[pyo3(signature = (start = 0, end = None))]
    fn lock(&self, py: Python<'_>, start: i64, end: Option<i64>) -> PyResult<()> {
        self.inner.detached(py, |mapping| {
            let range = Self::range(mapping.len(), "lock", start, end)?;
            named("lock", mapping.lock(range))
        })?
    }

    /// `unlock(start=0, end=None)`: undoes `lock` (munlock).
    #[pyo3(signature = (start = 0, end = None))]
    fn unlock(&self, py: Python<'_>, start: i64, end: Option<i64>) -> PyResult<()> {
        self.with(py, |mapping| {
            let range = Self::range(mapping.len(), "unlock", start, end)?;
            named("unlock", mapping.unlock(range))
        })
    }

    /// `residency(start=0, end=None)`: which pages of the range are in RAM (mincore).
    #[pyo3(signature = (start = 0, end = None))]
    fn residency(
        &self,
        py: Python<'_>,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<crate::residency::PyResidency> {
        self.with(py, |mapping| {
            let range = Self::range(mapping.len(), "residency", start, end)?;
            Ok(named("residency", mapping.residency(range))?.into())
        })
    }

    /// Unmaps the memory, once a copy in progress in another thread has ended. `BufferError`
    /// while buffer views are alive; closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        // Views are counted with the GIL held, and the flag that refuses new ones is raised
        // before the GIL is released: no view can appear after this check.
        if self.exports() > 0 {
            return Err(exported("close", self.exports()));
        }
        self.inner.close(py);
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> PyResult<Py<Self>> {
        if slf.get().closed() {
            return Err(closed());
        }
        Ok(slf)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// The buffer protocol, for exclusive memory only (see the module docs).
    unsafe fn __getbuffer__(
        slf: PyRef<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let object = slf.as_ptr();
        let py = slf.py();
        slf.inner.with_mut(py, |mapping| {
            if !Self::lendable(mapping) {
                return Err(PyBufferError::new_err(
                    "this mapping's memory can be changed or removed by others (a shared or \
                     file-backed mapping): use read_at / read_into, which copy",
                ));
            }
            let writable = mapping
                .protection()
                .is_some_and(|p| p.contains(Protection::WRITE));
            let (pointer, len) = if writable {
                let bytes = mapping.as_mut_slice().py()?;
                (bytes.as_mut_ptr(), bytes.len())
            } else {
                let bytes = mapping.as_slice().py()?;
                (bytes.as_ptr().cast_mut(), bytes.len())
            };
            // SAFETY: `view` is the Py_buffer CPython passes to bf_getbuffer; the memory is
            // this mapping's, exclusive and accessible as checked above, and stays mapped and
            // accessible while the export lives: `close` and `protect` refuse while `exports`
            // is not zero, and the view holds a reference to this object.
            let filled = unsafe {
                pyo3::ffi::PyBuffer_FillInfo(
                    view,
                    object,
                    pointer.cast(),
                    len as pyo3::ffi::Py_ssize_t,
                    c_int::from(!writable),
                    flags,
                )
            };
            if filled != 0 {
                return Err(PyErr::fetch(py));
            }
            slf.exports.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    unsafe fn __releasebuffer__(slf: PyRef<'_, Self>, _view: *mut pyo3::ffi::Py_buffer) {
        slf.exports.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_advice(name: &str) -> PyResult<Advice> {
    Ok(match name {
        "normal" => Advice::Normal,
        "sequential" => Advice::Sequential,
        "random" => Advice::Random,
        "willneed" => Advice::WillNeed,
        "hugepage" => Advice::HugePage,
        "nohugepage" => Advice::NoHugePage,
        "populate_read" => Advice::PopulateRead,
        "populate_write" => Advice::PopulateWrite,
        "cold" => Advice::Cold,
        "pageout" => Advice::PageOut,
        "dontdump" => Advice::DontDump,
        "dodump" => Advice::DoDump,
        "mergeable" => Advice::Mergeable,
        "unmergeable" => Advice::Unmergeable,
        other => {
            return Err(mmapkit::Error::new(
                ErrorKind::InvalidInput,
                "advise",
                format!("unknown advice {other:?}"),
            ))
            .py();
        }
    })
}
