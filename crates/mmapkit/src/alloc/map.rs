//! [`ShmMap<K, V>`]: a hash map of plain-old-data keys and values in a [`Heap`].
//!
//! Open addressing with linear probing over a power-of-two table of buckets, each
//! `u64 state` (empty, full, deleted) followed by the key and the value. Keys are compared and
//! hashed by their bytes (FNV-1a), so the same key finds the same bucket in every process —
//! which is why keys must be `Eq` plain-old-data without padding (no floats). The table doubles
//! when three quarters of it are full or deleted. Probing stops after one lap of the table, so
//! a table corrupted into being all full ends a lookup instead of looping.

use std::marker::PhantomData;

use super::{Heap, RelPtr};
use crate::error::{Error, ErrorKind, Result};

const EMPTY: u64 = 0;
const FULL: u64 = 1;
const DELETED: u64 = 2;

/// The stored form of a [`ShmMap`].
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MapHeader {
    len: u64,
    deleted: u64,
    capacity: u64,
    buckets: u64,
}

/// Marks the key and value types without owning any (the entries live in the heap).
type Entries<K, V> = fn(K, V) -> (K, V);

/// A hash map from `K` to `V` in a heap.
pub struct ShmMap<'h, K, V> {
    heap: &'h Heap<'h>,
    header: RelPtr<MapHeader>,
    _entries: PhantomData<Entries<K, V>>,
}

impl<K, V> std::fmt::Debug for ShmMap<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmMap")
            .field("header", &self.header)
            .finish()
    }
}

/// The error for a bucket state the header's counts say cannot exist.
fn inconsistent(state: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "map",
        format!("a {state} bucket that the header does not count"),
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<'h, K: bytemuck::Pod + Eq, V: bytemuck::Pod> ShmMap<'h, K, V> {
    const BUCKET: u64 = (8 + size_of::<K>() + size_of::<V>()).next_multiple_of(8) as u64;
    const KEY: u64 = 8;
    const VALUE: u64 = 8 + size_of::<K>() as u64;

    /// Creates an empty map in `heap`.
    pub fn new(heap: &'h Heap<'h>) -> Result<Self> {
        let header = heap.alloc_value(&MapHeader {
            len: 0,
            deleted: 0,
            capacity: 0,
            buckets: 0,
        })?;
        Ok(ShmMap {
            heap,
            header,
            _entries: PhantomData,
        })
    }

    /// Opens the map whose header is at `header`.
    pub fn open(heap: &'h Heap<'h>, header: RelPtr<MapHeader>) -> Result<Self> {
        let map = ShmMap {
            heap,
            header,
            _entries: PhantomData,
        };
        map.load()?;
        Ok(map)
    }

    /// Where the map's header is.
    pub fn pointer(&self) -> RelPtr<MapHeader> {
        self.header
    }

    fn load(&self) -> Result<MapHeader> {
        let header = self.heap.read_value(self.header)?;
        let table_fits = match header.capacity.checked_mul(Self::BUCKET) {
            Some(0) => header.capacity == 0,
            Some(bytes) => {
                header.capacity.is_power_of_two()
                    && self.heap.check_span(header.buckets, bytes).is_ok()
            }
            None => false,
        };
        let counts_fit = header
            .len
            .checked_add(header.deleted)
            .is_some_and(|used| used <= header.capacity);
        if !table_fits || !counts_fit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "map",
                format!("header {header:?} is impossible"),
            ));
        }
        Ok(header)
    }

    fn bucket(&self, header: &MapHeader, index: u64) -> RelPtr<u8> {
        RelPtr::from_offset(header.buckets + index * Self::BUCKET)
    }

    fn state(&self, bucket: RelPtr<u8>) -> Result<u64> {
        let state = self.heap.read_value(bucket.cast::<u64>())?;
        if state > DELETED {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "map",
                format!("bucket state {state} is unknown"),
            ));
        }
        Ok(state)
    }

    fn key_at(&self, bucket: RelPtr<u8>) -> Result<K> {
        self.heap
            .read_value(RelPtr::from_offset(bucket.offset() + Self::KEY))
    }

    /// The bucket holding `key`, or `None` (one lap of probing at most).
    fn find(&self, header: &MapHeader, key: &K) -> Result<Option<RelPtr<u8>>> {
        if header.capacity == 0 {
            return Ok(None);
        }
        let mask = header.capacity - 1;
        let start = fnv1a(bytemuck::bytes_of(key)) & mask;
        for step in 0..header.capacity {
            let bucket = self.bucket(header, (start + step) & mask);
            match self.state(bucket)? {
                EMPTY => return Ok(None),
                FULL if self.key_at(bucket)? == *key => return Ok(Some(bucket)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        Ok(self.load()?.len as usize)
    }

    /// True when the map has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy of the value for `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let header = self.load()?;
        match self.find(&header, key)? {
            Some(bucket) => self
                .heap
                .read_value(RelPtr::from_offset(bucket.offset() + Self::VALUE))
                .map(Some),
            None => Ok(None),
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: &K, value: &V) -> Result<Option<V>> {
        let mut header = self.load()?;
        if let Some(bucket) = self.find(&header, key)? {
            let slot = RelPtr::from_offset(bucket.offset() + Self::VALUE);
            let old = self.heap.read_value(slot)?;
            self.heap.write(slot, value)?;
            return Ok(Some(old));
        }
        if (header.len + header.deleted + 1) * 4 > header.capacity * 3 {
            header = self.resize(header, (header.len + 1) * 2)?;
        }
        let mask = header.capacity - 1;
        let start = fnv1a(bytemuck::bytes_of(key)) & mask;
        for step in 0..header.capacity {
            let bucket = self.bucket(&header, (start + step) & mask);
            let state = self.state(bucket)?;
            if state != FULL {
                if state == DELETED {
                    header.deleted = header
                        .deleted
                        .checked_sub(1)
                        .ok_or_else(|| inconsistent("deleted"))?;
                }
                self.write_entry(bucket, key, value)?;
                header.len += 1;
                self.heap.write(self.header, &header)?;
                return Ok(None);
            }
        }
        Err(Error::new(
            ErrorKind::Corrupt,
            "map",
            "no free bucket in a table that should have one",
        ))
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Result<Option<V>> {
        let mut header = self.load()?;
        let Some(bucket) = self.find(&header, key)? else {
            return Ok(None);
        };
        let value = self
            .heap
            .read_value(RelPtr::from_offset(bucket.offset() + Self::VALUE))?;
        header.len = header
            .len
            .checked_sub(1)
            .ok_or_else(|| inconsistent("full"))?;
        header.deleted += 1;
        self.heap.write(bucket.cast::<u64>(), &DELETED)?;
        self.heap.write(self.header, &header)?;
        Ok(Some(value))
    }

    /// Copies every entry out, in table order.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        let header = self.load()?;
        let mut entries = Vec::with_capacity(header.len as usize);
        for index in 0..header.capacity {
            let bucket = self.bucket(&header, index);
            if self.state(bucket)? == FULL {
                let value = self
                    .heap
                    .read_value(RelPtr::from_offset(bucket.offset() + Self::VALUE))?;
                entries.push((self.key_at(bucket)?, value));
            }
        }
        Ok(entries)
    }

    /// Frees the table and the header.
    pub fn free(self) -> Result<()> {
        let header = self.load()?;
        if header.capacity > 0 {
            self.heap.free(RelPtr::<u8>::from_offset(header.buckets))?;
        }
        self.heap.free(self.header)
    }

    fn write_entry(&self, bucket: RelPtr<u8>, key: &K, value: &V) -> Result<()> {
        self.heap
            .write(RelPtr::from_offset(bucket.offset() + Self::KEY), key)?;
        self.heap
            .write(RelPtr::from_offset(bucket.offset() + Self::VALUE), value)?;
        self.heap.write(bucket.cast::<u64>(), &FULL)
    }

    /// Moves every entry into a new table of at least `minimum` buckets.
    fn resize(&self, old: MapHeader, minimum: u64) -> Result<MapHeader> {
        let capacity = minimum.max(8).next_power_of_two();
        let bytes = capacity
            .checked_mul(Self::BUCKET)
            .and_then(|bytes| usize::try_from(bytes).ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfMemory,
                    "map",
                    "the table would be too large",
                )
            })?;
        let buckets = self.heap.alloc(bytes)?;
        self.heap.write_bytes(buckets, 0, &vec![0u8; bytes])?;
        let mut header = MapHeader {
            len: 0,
            deleted: 0,
            capacity,
            buckets: buckets.offset(),
        };
        let mask = capacity - 1;
        for index in 0..old.capacity {
            let bucket = self.bucket(&old, index);
            if self.state(bucket)? != FULL {
                continue;
            }
            let key = self.key_at(bucket)?;
            let value: V = self
                .heap
                .read_value(RelPtr::from_offset(bucket.offset() + Self::VALUE))?;
            let start = fnv1a(bytemuck::bytes_of(&key)) & mask;
            let free = (0..capacity)
                .map(|step| self.bucket(&header, (start + step) & mask))
                .find(|&candidate| matches!(self.state(candidate), Ok(EMPTY)))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt,
                        "map",
                        "more entries than the header says",
                    )
                })?;
            self.write_entry(free, &key, &value)?;
            header.len += 1;
        }
        if old.capacity > 0 {
            self.heap.free(RelPtr::<u8>::from_offset(old.buckets))?;
        }
        self.heap.write(self.header, &header)?;
        Ok(header)
    }
}
