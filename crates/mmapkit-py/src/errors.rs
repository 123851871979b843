//! mmapkit's errors as Python exceptions.
//!
//! The classes live in `mmapkit/_errors.py`: multiple inheritance from builtins
//! (`FileNotFoundError`, `TimeoutError`, `IndexError`…) is plain in Python and awkward in an
//! extension. Rust hands each error's kind, text and context to `_errors._raise`, which
//! returns the exception to raise.

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// `mmapkit._errors._raise`, looked up once.
static RAISE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The Python exception for `error`.
pub fn to_py(error: mmapkit::Error) -> PyErr {
    Python::attach(|py| match build(py, &error) {
        Ok(exception) => PyErr::from_value(exception),
        Err(failure) => failure,
    })
}

fn build<'py>(py: Python<'py>, error: &mmapkit::Error) -> PyResult<Bound<'py, PyAny>> {
    let raise = RAISE.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("mmapkit._errors")?.getattr("_raise")?.unbind())
    })?;
    let path = error.path().map(|path| path.to_string_lossy().into_owned());
    raise.bind(py).call1((
        format!("{:?}", error.kind()),
        error.to_string(),
        error.raw_os_error(),
        path,
        error.operation(),
        error.offset(),
        error.length(),
        error.hint(),
    ))
}

/// Results of the library as Python results.
pub trait IntoPy<T> {
    /// The value, or the error as its Python exception.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for mmapkit::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// What `close()` and calls on a closed object raise, as CPython's mmap does.
pub fn closed() -> PyErr {
    PyValueError::new_err("the mapping is closed")
}

/// Raised when an operation would take memory away from buffers lent out.
pub fn exported(operation: &str, exports: usize) -> PyErr {
    PyBufferError::new_err(format!(
        "{operation}: {exports} buffer view(s) of this mapping are alive; release them first"
    ))
}
