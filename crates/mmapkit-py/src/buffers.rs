//! Python buffers that mmapkit copies into or out of (`bytes`, `bytearray`, `memoryview`,
//! numpy arrays).
//!
//! Such a buffer may be a view of the very mapping it is copied to or from (an exclusive
//! mapping lends its memory out), so the library's copies, which take a Rust slice, are given
//! one only when the two do not overlap; an overlapping copy goes through a bounce buffer. The
//! slices exist only while the GIL is held: Python code cannot write the buffer meanwhile
//! (C code that releases the GIL and writes a buffer others use is racing by its own doing).

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

/// A C-contiguous buffer of another object, held for one call.
pub struct Foreign(PyUntypedBuffer);

impl Foreign {
    /// The buffer of `object`, which must be C-contiguous, and writable if `writable`.
    pub fn get(object: &Bound<'_, PyAny>, writable: bool) -> PyResult<Foreign> {
        let buffer = PyUntypedBuffer::get(object)?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("the buffer must be C-contiguous"));
        }
        if writable && buffer.readonly() {
            return Err(PyBufferError::new_err("the buffer is read-only"));
        }
        Ok(Foreign(buffer))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len_bytes()
    }

    fn span(&self) -> std::ops::Range<usize> {
        let start = self.0.buf_ptr() as usize;
        start..start + self.len()
    }

    /// True when its bytes and `memory` share any byte.
    pub fn overlaps(&self, memory: std::ops::Range<usize>) -> bool {
        let span = self.span();
        span.start < memory.end && memory.start < span.end
    }

    /// Runs `copy` with the buffer as a slice. The GIL is held (`_py`) and the caller has
    /// checked that no slice of the mapping's memory is taken while this one lives.
    pub fn with_bytes<T>(&self, _py: Python<'_>, copy: impl FnOnce(&[u8]) -> T) -> T {
        if self.len() == 0 {
            return copy(&[]);
        }
        // SAFETY: the buffer is held (PyObject_GetBuffer), C-contiguous and `len` bytes long;
        // with the GIL held no Python code writes it while the slice lives, and the caller's
        // copies never take a mutable slice of the same memory (overlaps are bounced).
        copy(unsafe { std::slice::from_raw_parts(self.0.buf_ptr().cast::<u8>(), self.len()) })
    }

    /// Runs `copy` with the buffer as a mutable slice; as [`with_bytes`](Self::with_bytes),
    /// for a writable buffer.
    pub fn with_bytes_mut<T>(&self, _py: Python<'_>, copy: impl FnOnce(&mut [u8]) -> T) -> T {
        if self.len() == 0 {
            return copy(&mut []);
        }
        debug_assert!(!self.0.readonly());
        // SAFETY: as in `with_bytes`; the buffer is writable (checked in `get`), and with the
        // GIL held nothing else reads or writes it while this slice is the only one made.
        copy(unsafe { std::slice::from_raw_parts_mut(self.0.buf_ptr().cast::<u8>(), self.len()) })
    }
}
