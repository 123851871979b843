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
//! can alias it); memory that can be lent out is only touched with the GIL held.

use std::ops::Range;
use std::os::raw::c_int;
use std::path::PathBuf;

use mmapkit::{Advice, ErrorKind, MapOptions, Mapping, Protection, Reach, Sharing};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::Foreign;
use crate::errors::{IntoPy, closed, exported};

/// Copies at least this long release the GIL (when the memory cannot be lent out).
const DETACH_FROM: usize = 64 << 10;

/// A memory mapping of a file or of anonymous memory.
#[derive(Debug)]
#[pyclass(name = "Mapping", module = "mmapkit")]
pub struct PyMapping {
    inner: Option<Mapping>,
    position: usize,
    exports: usize,
    source: String,
}

/// `map_file(path, *, write=False, private=False, offset=0, length=None, populate=False)`
#[pyfunction]
#[pyo3(signature = (path, *, write = false, private = false, offset = 0, length = None, populate = false))]
pub fn map_file(
    py: Python<'_>,
    path: PathBuf,
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
            inner: Some(mapping),
            position: 0,
            exports: 0,
            source,
        }
    }

    fn mapping(&self) -> PyResult<&Mapping> {
        self.inner.as_ref().ok_or_else(closed)
    }

    /// True when Python may hold views of the memory, so copies keep the GIL.
    fn lendable(mapping: &Mapping) -> bool {
        mapping.reach() == Reach::Exclusive
    }

    /// `start`/`end` as Python passes them (end None: the end of the mapping).
    fn range(
        &self,
        operation: &'static str,
        start: i64,
        end: Option<i64>,
    ) -> PyResult<Range<usize>> {
        let len = self.mapping()?.len();
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
        &self,
        py: Python<'py>,
        offset: usize,
        len: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mapping = self.mapping()?;
        // Checked before the bytes object is allocated: a huge length is out of bounds, not
        // out of memory.
        mapping.read_at(offset, &mut []).py()?;
        if len > mapping.len() - offset {
            return Err(out_of_bounds("read_at", offset, len, mapping.len()));
        }
        let detach = len >= DETACH_FROM && !Self::lendable(mapping);
        PyBytes::new_with(py, len, |buffer| {
            // The bytes object is new: nothing else can see it until it is returned.
            let mut copy = move || mapping.read_at(offset, buffer);
            if detach { py.detach(copy) } else { copy() }.py()
        })
    }

    fn copy_into(&self, buffer: &Bound<'_, PyAny>, offset: usize) -> PyResult<usize> {
        let mapping = self.mapping()?;
        if offset > mapping.len() {
            return mapping.read_at(offset, &mut []).py().map(|()| 0);
        }
        let target = Foreign::get(buffer, true)?;
        let len = target.len().min(mapping.len() - offset);
        if target.overlaps(Self::memory(mapping)) {
            let mut bounce = vec![0; len];
            mapping.read_at(offset, &mut bounce).py()?;
            target.fill_from(&bounce);
        } else {
            // SAFETY: the target is held writable for `len` bytes or more, no Rust reference
            // to it exists, and it does not overlap the mapping (checked).
            unsafe { mapping.read_to_ptr(offset, target.as_ptr(), len) }.py()?;
        }
        Ok(len)
    }

    fn copy_from(&self, data: &Bound<'_, PyAny>, offset: usize) -> PyResult<usize> {
        let mapping = self.mapping()?;
        let source = Foreign::get(data, false)?;
        if source.overlaps(Self::memory(mapping)) {
            mapping
                .write_at(offset, &source.to_vec(source.len()))
                .py()?;
        } else {
            // SAFETY: the source is held for its `len()` bytes and does not overlap the
            // mapping (checked).
            unsafe { mapping.write_from_ptr(offset, source.as_ptr(), source.len()) }.py()?;
        }
        Ok(source.len())
    }

    /// The addresses of the mapping's bytes.
    fn memory(mapping: &Mapping) -> Range<usize> {
        let start = mapping.as_ptr() as usize;
        start..start + mapping.len()
    }

    /// `find` (`reverse` false) or `rfind` (true): an offset of `sub` in `[start, end)`, or -1.
    fn search(
        &self,
        operation: &'static str,
        sub: &Bound<'_, PyAny>,
        start: i64,
        end: Option<i64>,
        reverse: bool,
    ) -> PyResult<i64> {
        // As bytes.find: a start past the end finds nothing.
        if usize::try_from(start).is_ok_and(|start| start > self.mapping().map_or(0, Mapping::len))
        {
            return Ok(-1);
        }
        let range = self.range(operation, start, end)?;
        let needle = Foreign::get(sub, false)?;
        let needle = needle.to_vec(needle.len());
        let mapping = self.mapping()?;
        let found = if reverse {
            mapping.rfind(&needle, range)
        } else {
            mapping.find(&needle, range)
        }
        .py()?;
        Ok(found.map_or(-1, |offset| offset as i64))
    }
}

#[pymethods]
impl PyMapping {
    /// Length of the mapping in bytes.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.mapping()?.len())
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            None => format!("<mmapkit.Mapping {} closed>", self.source),
            Some(mapping) => format!(
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
                self.position
            ),
        }
    }

    /// True once `close()` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    /// True when writes reach the file (or, for anonymous memory, other processes).
    #[getter]
    fn shared(&self) -> PyResult<bool> {
        Ok(self.mapping()?.sharing() == Sharing::Shared)
    }

    /// True when nobody else can change or remove the bytes: only then are buffer views lent.
    #[getter]
    fn exclusive(&self) -> PyResult<bool> {
        Ok(Self::lendable(self.mapping()?))
    }

    /// Size of the mapping's pages in bytes.
    #[getter]
    fn page_size(&self) -> PyResult<usize> {
        Ok(self.mapping()?.page_size())
    }

    /// `read_at(offset, length)`: `length` bytes from `offset`, as `bytes`.
    fn read_at<'py>(
        &self,
        py: Python<'py>,
        offset: i64,
        length: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let offset = unsigned("read_at", "offset", offset)?;
        self.read_bytes(py, offset, unsigned("read_at", "length", length)?)
    }

    /// `read_into(buffer, offset)`: fills a writable buffer (a `bytearray`, a numpy array…)
    /// from `offset`, without allocating; returns the bytes copied (fewer at the end).
    fn read_into(&self, buffer: &Bound<'_, PyAny>, offset: i64) -> PyResult<usize> {
        self.copy_into(buffer, unsigned("read_into", "offset", offset)?)
    }

    /// `write_at(offset, data)`: copies a bytes-like object to `offset`; returns its length.
    fn write_at(&self, offset: i64, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.copy_from(data, unsigned("write_at", "offset", offset)?)
    }

    /// `read(n=-1)`: up to `n` bytes from the position (all that is left if `n` < 0).
    #[pyo3(signature = (n = -1))]
    fn read<'py>(&mut self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let left = self.mapping()?.len().saturating_sub(self.position);
        let len = match n {
            Some(n) if n >= 0 => (n as u64).min(left as u64) as usize,
            _ => left,
        };
        let bytes = self.read_bytes(py, self.position, len)?;
        self.position += len;
        Ok(bytes)
    }

    /// `readinto(buffer)`: fills `buffer` from the position; returns the bytes copied.
    fn readinto(&mut self, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let copied = self.copy_into(buffer, self.position)?;
        self.position += copied;
        Ok(copied)
    }

    /// `write(data)`: writes at the position and moves it; data past the end is an error and
    /// nothing is written.
    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let written = self.copy_from(data, self.position)?;
        self.position += written;
        Ok(written)
    }

    /// `seek(pos, whence=0)`: as for files (0: from the start, 1: the position, 2: the end);
    /// the new position must lie within the mapping.
    #[pyo3(signature = (pos, whence = 0))]
    fn seek(&mut self, pos: i64, whence: i32) -> PyResult<usize> {
        let len = self.mapping()?.len() as i128;
        let base = match whence {
            0 => 0,
            1 => self.position as i128,
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
        self.position = target as usize;
        Ok(self.position)
    }

    /// The position of `read`, `write` and `readinto`.
    fn tell(&self) -> PyResult<usize> {
        self.mapping()?;
        Ok(self.position)
    }

    /// `find(sub, start=0, end=None)`: the lowest offset of `sub` in `[start, end)`, or -1.
    #[pyo3(signature = (sub, start = 0, end = None))]
    fn find(&self, sub: &Bound<'_, PyAny>, start: i64, end: Option<i64>) -> PyResult<i64> {
        self.search("find", sub, start, end, false)
    }

    /// `rfind(sub, start=0, end=None)`: the highest offset of `sub` in `[start, end)`, or -1.
    #[pyo3(signature = (sub, start = 0, end = None))]
    fn rfind(&self, sub: &Bound<'_, PyAny>, start: i64, end: Option<i64>) -> PyResult<i64> {
        self.search("rfind", sub, start, end, true)
    }

    /// `flush(start=0, end=None)`: writes the range's dirty pages to the file and waits (msync).
    #[pyo3(signature = (start = 0, end = None))]
    fn flush(&self, py: Python<'_>, start: i64, end: Option<i64>) -> PyResult<()> {
        let range = self.range("flush", start, end)?;
        let mapping = self.mapping()?;
        py.detach(|| mapping.flush_range(range, mmapkit::Flush::Sync))
            .py()
    }

    /// `advise(advice, start=0, end=None)`: madvise with one of `mmapkit.Advice` (or its name:
    /// "normal", "sequential", "random", "willneed", "hugepage", "nohugepage",
    /// "populate_read", "populate_write", "cold", "pageout", "dontdump", "dodump",
    /// "mergeable", "unmergeable"). Advice that would change the bytes is not offered.
    #[pyo3(signature = (advice, start = 0, end = None))]
    fn advise(&self, py: Python<'_>, advice: &str, start: i64, end: Option<i64>) -> PyResult<()> {
        let advice = parse_advice(advice)?;
        let range = self.range("advise", start, end)?;
        let mapping = self.mapping()?;
        py.detach(|| mapping.advise(range, advice)).py()
    }

    /// `protect(protection, start=0, end=None)`: mprotect the pages of the range to "" (no
    /// access), "r" or "rw". Refused with `BufferError` while buffer views are alive.
    #[pyo3(signature = (protection, start = 0, end = None))]
    fn protect(&mut self, protection: &str, start: i64, end: Option<i64>) -> PyResult<()> {
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
        if self.exports > 0 {
            return Err(exported("protect", self.exports));
        }
        let range = self.range("protect", start, end)?;
        self.inner
            .as_mut()
            .ok_or_else(closed)?
            .protect(range, protection)
            .py()
    }

    /// `lock(start=0, end=None)`: keeps the range's pages in RAM (mlock).
    #[pyo3(signature = (start = 0, end = None))]
    fn lock(&self, py: Python<'_>, start: i64, end: Option<i64>) -> PyResult<()> {
        let range = self.range("lock", start, end)?;
        let mapping = self.mapping()?;
        py.detach(|| mapping.lock(range)).py()
    }

    /// `unlock(start=0, end=None)`: undoes `lock` (munlock).
    #[pyo3(signature = (start = 0, end = None))]
    fn unlock(&self, start: i64, end: Option<i64>) -> PyResult<()> {
        let range = self.range("unlock", start, end)?;
        self.mapping()?.unlock(range).py()
    }

    /// `residency(start=0, end=None)`: which pages of the range are in RAM (mincore).
    #[pyo3(signature = (start = 0, end = None))]
    fn residency(&self, start: i64, end: Option<i64>) -> PyResult<crate::residency::PyResidency> {
        let range = self.range("residency", start, end)?;
        Ok(self.mapping()?.residency(range).py()?.into())
    }

    /// Unmaps the memory. `BufferError` while buffer views are alive; closing twice is
    /// harmless.
    fn close(&mut self) -> PyResult<()> {
        if self.exports > 0 {
            return Err(exported("close", self.exports));
        }
        self.inner = None;
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close()?;
        Ok(false)
    }

    /// The buffer protocol, for exclusive memory only (see the module docs).
    unsafe fn __getbuffer__(
        mut slf: PyRefMut<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let object = slf.as_ptr();
        let mapping = slf.inner.as_mut().ok_or_else(closed)?;
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
        // SAFETY: `view` is the Py_buffer CPython passes to bf_getbuffer; the memory is this
        // mapping's, exclusive and accessible as checked above, and stays mapped and
        // accessible while the export lives: `close` and `protect` refuse while `exports` is
        // not zero, and the view holds a reference to this object.
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
            return Err(PyErr::fetch(slf.py()));
        }
        slf.exports += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut pyo3::ffi::Py_buffer) {
        slf.exports -= 1;
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
