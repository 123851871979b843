//! Python buffers that mmapkit copies into or out of (`bytes`, `bytearray`, `memoryview`,
//! numpy arrays).
//!
//! Such a buffer may be memory that someone else writes at the same time (a numpy array over
//! memory shared with other processes), or a view of the very mapping it is copied to or
//! from (an exclusive mapping lends its memory out). So no Rust reference to it is ever made:
//! the library copies through its pointer (`read_to_ptr`, `write_from_ptr`), and a copy whose
//! two sides overlap goes through a bounce buffer.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;

/// A C-contiguous buffer of another object, held (exported) for one call.
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

    /// Its first byte: valid for `len()` bytes while `self` holds the export (for writes
    /// too, if it was got writable).
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.buf_ptr().cast()
    }

    /// True when its bytes and `memory` share any byte.
    pub fn overlaps(&self, memory: std::ops::Range<usize>) -> bool {
        let start = self.as_ptr() as usize;
        start < memory.end && memory.start < start + self.len()
    }

    /// A copy of its first `len` bytes (at most `len()`).
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        let len = len.min(self.len());
        let mut copy = vec![0; len];
        // SAFETY: the buffer is valid for reads of `len()` bytes while held, and the new
        // vector cannot overlap it; a raw copy makes no reference to bytes others may write.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), copy.as_mut_ptr(), len) };
        copy
    }

    /// Copies `bytes` to its start (at most `len()` of them); it must have been got writable.
    pub fn fill_from(&self, bytes: &[u8]) {
        let len = bytes.len().min(self.len());
        debug_assert!(!self.0.readonly());
        // SAFETY: the buffer is writable (checked in `get`) and valid for `len()` bytes while
        // held; `bytes` is our own memory, which cannot overlap it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.as_ptr(), len) };
    }
}
