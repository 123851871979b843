//! `mmapkit.residency`, `touch`, `evict` and `maps`: the inspection layer, as plain values
//! that `mmapkit/_inspect.py` turns into dataclasses.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mmapkit::ErrorKind;
use mmapkit::inspect::{MappingKind, Method, Pid, ResidencyOptions};
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::mapping::unsigned;

/// A file's page-cache state: path, size, range start and end, page size, pages, cached,
/// dirty, writeback, evicted, recently evicted (the last four None without cachestat), and
/// the system call that answered.
type Measured = (
    PathBuf,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    &'static str,
);

/// One mapping: start, end, permissions ("r-xp"), offset, device ("fe:00"), inode, path
/// (None unless a file), and the label pmap prints.
type Mapped = (u64, u64, String, u64, String, u64, Option<PathBuf>, String);

fn byte_range(
    operation: &'static str,
    start: i64,
    end: Option<i64>,
) -> PyResult<Option<Range<u64>>> {
    let start = unsigned(operation, "start", start)? as u64;
    match end {
        None if start == 0 => Ok(None),
        None => Ok(Some(start..u64::MAX)),
        Some(end) => {
            let end = unsigned(operation, "end", end)? as u64;
            if end < start {
                return Err(mmapkit::Error::new(
                    ErrorKind::OutOfBounds,
                    operation,
                    format!("end {end} is before start {start}"),
                ))
                .py();
            }
            Ok(Some(start..end))
        }
    }
}

/// A path argument as Python's `os` functions take it: `str`, `bytes` or `os.PathLike`.
pub(crate) fn fs_path(path: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let path = path.py().import("os")?.getattr("fspath")?.call1((path,))?;
    match path.cast::<pyo3::types::PyBytes>() {
        Ok(bytes) => Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes.as_bytes()))),
        Err(_) => path.extract(),
    }
}

/// `residency_of(path, start=0, end=None)`: the page-cache state of (a range of) a file.
#[pyfunction]
#[pyo3(signature = (path, start = 0, end = None))]
pub fn residency_of(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    start: i64,
    end: Option<i64>,
) -> PyResult<Measured> {
    let path = fs_path(path)?;
    let options = ResidencyOptions {
        range: byte_range("residency", start, end)?,
        page_map: false,
    };
    let measured = py
        .detach(|| mmapkit::inspect::residency(&path, &options))
        .py()?;
    Ok((
        path,
        measured.size,
        measured.range.start,
        measured.range.end,
        measured.page_size,
        measured.pages,
        measured.cached,
        measured.dirty,
        measured.writeback,
        measured.evicted,
        measured.recently_evicted,
        match measured.method {
            Method::Cachestat => "cachestat",
            Method::Mincore => "mincore",
        },
    ))
}

/// Opens a regular file for reading without waiting (a FIFO's open would block).
fn open_regular(operation: &'static str, path: &Path) -> mmapkit::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| mmapkit::Error::io(operation, &error).with_path(path))?;
    let metadata = file
        .metadata()
        .map_err(|error| mmapkit::Error::io(operation, &error).with_path(path))?;
    if !metadata.is_file() {
        return Err(
            mmapkit::Error::new(ErrorKind::InvalidInput, operation, "not a regular file")
                .with_path(path),
        );
    }
    Ok(file)
}

/// `touch(path, start=0, end=None)`: reads (a range of) a file into the page cache; returns
/// the bytes read.
#[pyfunction]
#[pyo3(signature = (path, start = 0, end = None))]
pub fn touch(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    start: i64,
    end: Option<i64>,
) -> PyResult<u64> {
    let path = fs_path(path)?;
    let range = byte_range("touch", start, end)?;
    py.detach(|| mmapkit::inspect::touch(&open_regular("touch", &path)?, range))
        .py()
}

/// `evict(path, start=0, end=None)`: asks the kernel to drop (a range of) a file from the
/// page cache.
#[pyfunction]
#[pyo3(signature = (path, start = 0, end = None))]
pub fn evict(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    start: i64,
    end: Option<i64>,
) -> PyResult<()> {
    let path = fs_path(path)?;
    let range = byte_range("evict", start, end)?;
    py.detach(|| mmapkit::inspect::evict(&open_regular("evict", &path)?, range))
        .py()
}

/// `maps(pid=None)`: the mappings of a process (this one by default), from /proc.
#[pyfunction]
#[pyo3(signature = (pid = None))]
pub fn maps(py: Python<'_>, pid: Option<u32>) -> PyResult<Vec<Mapped>> {
    let pid = pid.map_or(Pid::Current, Pid::Id);
    let entries = py.detach(|| mmapkit::inspect::maps(pid)).py()?;
    Ok(entries
        .into_iter()
        .map(|entry| {
            let path = match &entry.kind {
                MappingKind::File(path) | MappingKind::DeletedFile(path) => Some(path.clone()),
                _ => None,
            };
            (
                entry.start,
                entry.end,
                entry.permissions.to_string(),
                entry.offset,
                format!("{:02x}:{:02x}", entry.device_major, entry.device_minor),
                entry.inode,
                path,
                entry.kind.label(),
            )
        })
        .collect())
}
