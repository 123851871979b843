//! [`ShmVec<T>`]: a growable array of plain-old-data values in a [`Heap`].
//!
//! The vector is a 24-byte header in the heap — length, capacity, data pointer — and a data
//! block that is replaced by one twice as large when it fills. The header's fields are checked
//! on every access: length within capacity, and the data block inside the heap.

use std::marker::PhantomData;

use super::{Heap, RelPtr};
use crate::error::{Error, ErrorKind, Result};

/// The stored form of a [`ShmVec`]: point to it from the root or from other structures.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct VecHeader {
    len: u64,
    capacity: u64,
    data: u64,
}

/// A vector of `T` in a heap.
pub struct ShmVec<'h, T> {
    heap: &'h Heap<'h>,
    header: RelPtr<VecHeader>,
    _values: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for ShmVec<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmVec")
            .field("header", &self.header)
            .finish()
    }
}

impl<'h, T: bytemuck::Pod> ShmVec<'h, T> {
    /// Creates an empty vector in `heap`; zero-sized element types are refused.
    pub fn new(heap: &'h Heap<'h>) -> Result<Self> {
        Self::check_element()?;
        let header = heap.alloc_value(&VecHeader {
            len: 0,
            capacity: 0,
            data: 0,
        })?;
        Ok(ShmVec {
            heap,
            header,
            _values: PhantomData,
        })
    }

    /// Opens the vector whose header is at `header`.
    pub fn open(heap: &'h Heap<'h>, header: RelPtr<VecHeader>) -> Result<Self> {
        Self::check_element()?;
        let vector = ShmVec {
            heap,
            header,
            _values: PhantomData,
        };
        vector.load()?;
        Ok(vector)
    }

    /// The capacity of a vector of zero-sized values would be bounded by nothing in the heap.
    fn check_element() -> Result<()> {
        match size_of::<T>() {
            0 => Err(Error::new(
                ErrorKind::InvalidInput,
                "vector",
                "zero-sized element types are not supported",
            )),
            _ => Ok(()),
        }
    }

    /// Where the vector's header is, to store in other structures.
    pub fn pointer(&self) -> RelPtr<VecHeader> {
        self.header
    }

    /// Reads and validates the header.
    fn load(&self) -> Result<VecHeader> {
        let header = self.heap.read_value(self.header)?;
        let data_fits = match header.capacity.checked_mul(size_of::<T>() as u64) {
            Some(0) => true,
            Some(bytes) => self.heap.check_span(header.data, bytes).is_ok(),
            None => false,
        };
        let valid = header.len <= header.capacity && data_fits;
        if !valid {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "vector",
                format!(
                    "length {} / capacity {} / data {:#x} are impossible",
                    header.len, header.capacity, header.data
                ),
            ));
        }
        Ok(header)
    }

    fn element(&self, header: &VecHeader, index: u64) -> RelPtr<T> {
        RelPtr::from_offset(header.data + index * size_of::<T>() as u64)
    }

    /// The number of elements.
    pub fn len(&self) -> Result<usize> {
        Ok(self.load()?.len as usize)
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy of element `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        let header = self.load()?;
        if index as u64 >= header.len {
            return Ok(None);
        }
        self.heap
            .read_value(self.element(&header, index as u64))
            .map(Some)
    }

    /// Replaces element `index`.
    pub fn set(&mut self, index: usize, value: &T) -> Result<()> {
        let header = self.load()?;
        if index as u64 >= header.len {
            return Err(Error::new(
                ErrorKind::OutOfBounds,
                "vector set",
                format!("the vector has {} elements", header.len),
            )
            .with_offset(index as u64));
        }
        self.heap.write(self.element(&header, index as u64), value)
    }

    /// Appends `value`, growing the data block when full.
    pub fn push(&mut self, value: &T) -> Result<()> {
        let mut header = self.load()?;
        if header.len == header.capacity {
            header = self.grow(header, header.len + 1)?;
        }
        self.heap.write(self.element(&header, header.len), value)?;
        header.len += 1;
        self.heap.write(self.header, &header)
    }

    /// Appends every value of `values`.
    pub fn extend_from_slice(&mut self, values: &[T]) -> Result<()> {
        let mut header = self.load()?;
        let needed = header.len + values.len() as u64;
        if needed > header.capacity {
            header = self.grow(header, needed)?;
        }
        let start = self.element(&header, header.len);
        self.heap
            .write_bytes(start, 0, bytemuck::cast_slice(values))?;
        header.len = needed;
        self.heap.write(self.header, &header)
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Result<Option<T>> {
        let mut header = self.load()?;
        if header.len == 0 {
            return Ok(None);
        }
        header.len -= 1;
        let value = self.heap.read_value(self.element(&header, header.len))?;
        self.heap.write(self.header, &header)?;
        Ok(Some(value))
    }

    /// Removes every element (keeps the capacity).
    pub fn clear(&mut self) -> Result<()> {
        let mut header = self.load()?;
        header.len = 0;
        self.heap.write(self.header, &header)
    }

    /// Copies all elements out.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let header = self.load()?;
        let mut values = vec![T::zeroed(); header.len as usize];
        self.heap.read_bytes(
            self.element(&header, 0),
            0,
            bytemuck::cast_slice_mut(&mut values),
        )?;
        Ok(values)
    }

    /// Frees the data block and the header.
    pub fn free(self) -> Result<()> {
        let header = self.load()?;
        if header.capacity > 0 {
            self.heap.free(RelPtr::<u8>::from_offset(header.data))?;
        }
        self.heap.free(self.header)
    }

    /// Moves the elements into a new data block of at least `needed` (doubling) elements.
    fn grow(&self, mut header: VecHeader, needed: u64) -> Result<VecHeader> {
        let capacity = needed.max(header.capacity * 2).max(4);
        let bytes = capacity
            .checked_mul(size_of::<T>() as u64)
            .and_then(|bytes| usize::try_from(bytes).ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfMemory,
                    "vector",
                    "the vector would be too large",
                )
            })?;
        let data = self.heap.alloc(bytes.max(1))?;
        if header.len > 0 {
            let mut old = vec![0u8; (header.len as usize) * size_of::<T>()];
            self.heap
                .read_bytes(RelPtr::<u8>::from_offset(header.data), 0, &mut old)?;
            self.heap.write_bytes(data, 0, &old)?;
        }
        if header.capacity > 0 {
            self.heap.free(RelPtr::<u8>::from_offset(header.data))?;
        }
        header.capacity = capacity;
        header.data = data.offset();
        self.heap.write(self.header, &header)?;
        Ok(header)
    }
}
