//! [`Heap`]: a general-purpose allocator inside a segment, shared by every process that maps
//! it.
//!
//! Layout of the heap region (offsets from its start, which is 16-byte aligned):
//!
//! ```text
//!    0  u32 magic "HEP1", u32 version, u64 region length, u64 root, u64 reserved[5]
//!   64  robust mutex (allocation lock)
//!  128  32 free-list heads, one per size class (u64 block offsets, 0 = empty)
//!  384  blocks, back to back, up to the end of the region
//! ```
//!
//! A block is a 16-byte header (`size | allocated` and a check word derived from size and
//! position), the payload (16-byte aligned), and an 8-byte footer repeating the header's first
//! word. Free blocks keep `next` and `prev` free-list links in their payload; free neighbours
//! are always merged (boundary tags), and size classes are powers of two searched best-fit, so
//! fragmentation stays low under mixed sizes.
//!
//! Metadata words are read with atomic loads at checked offsets, payloads with the segment's
//! bounds-checked copies, and everything is validated before use:
//! a block that leaves the region, a header that disagrees with its footer or check word, a
//! free-list link to something that is not a free block — each is a
//! [`Corrupt`](crate::ErrorKind::Corrupt) error. If a process dies holding the allocation lock,
//! the next one repairs the heap (see `repair`): every metadata word is written with one atomic
//! store, headers last, so the chain of headers survives any crash. A crash can leak the block
//! being allocated; it never loses or corrupts another.

use std::sync::atomic::{AtomicU64, Ordering};

use super::RelPtr;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;
use crate::sync::{LockError, Mutex, MutexGuard};

const MAGIC: u32 = u32::from_le_bytes(*b"HEP1");
const VERSION: u32 = 1;
const LOCK: usize = 64;
const LISTS: usize = 128;
const CLASSES: usize = 32;
const FIRST_BLOCK: u64 = 384;
const HEADER: u64 = 16;
const FOOTER: u64 = 8;
const MIN_BLOCK: u64 = 48;
const ALLOCATED: u64 = 1;
const CHECK_SALT: u64 = 0x6d6d_6170_6b69_7421;
/// How many candidates of one size class are compared for the best fit.
const BEST_FIT_WINDOW: usize = 16;

/// Statistics from a full walk of the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapStats {
    /// Blocks in use.
    pub allocated_blocks: u64,
    /// Bytes of those blocks, headers included.
    pub allocated_bytes: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Bytes of free blocks.
    pub free_bytes: u64,
    /// The largest free block's usable payload.
    pub largest_free: u64,
}

/// An allocator in a segment region. See the [module docs](crate::alloc).
pub struct Heap<'s> {
    segment: &'s Segment,
    /// Payload offset of the region.
    base: usize,
    /// Region length in bytes.
    len: u64,
    lock: Mutex<'s, u64>,
}

impl std::fmt::Debug for Heap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

fn corrupt(message: String) -> Error {
    Error::new(ErrorKind::Corrupt, "heap", message)
}

fn size_class(size: u64) -> usize {
    (63 - size.leading_zeros() as usize).min(CLASSES - 1)
}

impl<'s> Heap<'s> {
    /// Places an empty heap in `len` bytes of payload at `offset` (16-byte aligned).
    pub fn init(segment: &'s Segment, offset: usize, len: usize) -> Result<Heap<'s>> {
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= segment.payload_len());
        if !offset.is_multiple_of(16) || !fits || (len as u64) < FIRST_BLOCK + MIN_BLOCK {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "place heap",
                format!(
                    "a heap needs at least {} bytes at a 16-byte aligned offset inside the payload",
                    FIRST_BLOCK + MIN_BLOCK
                ),
            )
            .with_range(offset as u64, len as u64));
        }
        let len = (len as u64) & !15;
        segment.write_at(offset, &[0u8; FIRST_BLOCK as usize])?;
        segment.write_pod(offset + 4, &VERSION)?;
        segment.write_pod(offset + 8, &len)?;
        Mutex::init(segment, offset + LOCK, 0u64)?;
        let heap = Heap {
            segment,
            base: offset,
            len,
            lock: Mutex::open(segment, offset + LOCK)?,
        };
        let first = FIRST_BLOCK;
        heap.write_block(first, len - first, false)?;
        heap.push_free(first, len - first)?;
        segment.write_pod(offset, &MAGIC)?;
        Ok(heap)
    }

    /// Opens the heap placed at payload `offset`.
    pub fn open(segment: &'s Segment, offset: usize) -> Result<Heap<'s>> {
        if segment.read_pod::<u32>(offset)? != MAGIC
            || segment.read_pod::<u32>(offset + 4)? != VERSION
        {
            return Err(corrupt(format!(
                "no heap (version {VERSION}) at offset {offset}"
            )));
        }
        let len: u64 = segment.read_pod(offset + 8)?;
        let fits = (offset as u64)
            .checked_add(len)
            .is_some_and(|end| end <= segment.payload_len() as u64);
        if !fits || len < FIRST_BLOCK + MIN_BLOCK || !len.is_multiple_of(16) {
            return Err(corrupt(format!(
                "region length {len} does not fit the payload"
            )));
        }
        Ok(Heap {
            segment,
            base: offset,
            len,
            lock: Mutex::open(segment, offset + LOCK)?,
        })
    }

    /// The segment the heap lives in.
    pub fn segment(&self) -> &'s Segment {
        self.segment
    }

    /// Takes the allocation lock; after a holder's death, rebuilds the free lists first.
    fn locked(&self) -> Result<MutexGuard<'_, u64>> {
        match self.lock.lock() {
            Ok(guard) => Ok(guard),
            Err(LockError::OwnerDied(mut guard)) => {
                self.repair()?;
                guard.mark_consistent();
                Ok(guard)
            }
            Err(LockError::Failed(error)) => Err(error),
        }
    }

    /// Allocates `size` bytes (16-byte aligned); `OutOfMemory` when no free block fits.
    pub fn alloc(&self, size: usize) -> Result<RelPtr<u8>> {
        let need = (size as u64)
            .checked_add(HEADER + FOOTER)
            .map(|bytes| bytes.next_multiple_of(16).max(MIN_BLOCK))
            .filter(|&bytes| bytes <= self.len)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "alloc",
                    format!("{size} bytes can never fit this heap"),
                )
            })?;
        let _guard = self.locked()?;
        let block = self.find_fit(need)?.ok_or_else(|| {
            Error::new(
                ErrorKind::OutOfMemory,
                "alloc",
                format!("no free block of {need} bytes in the heap"),
            )
        })?;
        let block_size = self.block_size(block)?.0;
        self.unlink_free(block)?;
        let rest = block_size
            .checked_sub(need)
            .ok_or_else(|| corrupt(format!("free block {block} shrank below {need} bytes")))?;
        if rest >= MIN_BLOCK {
            // The remainder is written inside the old block, where no walk looks, and becomes
            // a block of its own only when the first part's header commits the split.
            self.write_block(block + need, rest, false)?;
            self.write_block(block, need, true)?;
            self.push_free(block + need, rest)?;
        } else {
            self.write_block(block, block_size, true)?;
        }
        Ok(RelPtr::from_offset(self.base as u64 + block + HEADER))
    }

    /// Allocates room for a `T` and writes `value` there.
    pub fn alloc_value<T: bytemuck::Pod>(&self, value: &T) -> Result<RelPtr<T>> {
        let pointer = self.alloc(size_of::<T>())?.cast();
        self.write(pointer, value)?;
        Ok(pointer)
    }

    /// Frees a block returned by [`alloc`](Self::alloc); merges it with free neighbours.
    pub fn free<T>(&self, pointer: RelPtr<T>) -> Result<()> {
        let _guard = self.locked()?;
        let mut block = self.block_of(pointer.offset())?;
        let (mut size, allocated) = self.block_size(block)?;
        if !allocated {
            return Err(
                Error::new(ErrorKind::InvalidInput, "free", "the block is already free")
                    .with_offset(pointer.offset()),
            );
        }
        let next = block + size;
        if next < self.len {
            let (next_size, next_allocated) = self.block_size(next)?;
            if !next_allocated {
                self.unlink_free(next)?;
                size += next_size;
            }
        }
        if block > FIRST_BLOCK {
            let previous_footer = self.load(block - FOOTER)?;
            if previous_footer & ALLOCATED == 0 {
                let previous = block
                    .checked_sub(previous_footer)
                    .filter(|&previous| previous >= FIRST_BLOCK)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "the block before {block} claims {previous_footer} bytes"
                        ))
                    })?;
                let (previous_size, previous_allocated) = self.block_size(previous)?;
                if previous_allocated || previous + previous_size != block {
                    return Err(corrupt(format!(
                        "the block before {block} disagrees with its footer"
                    )));
                }
                self.unlink_free(previous)?;
                block = previous;
                size += previous_size;
            }
        }
        self.write_block(block, size, false)?;
        self.push_free(block, size)
    }

    /// Copies the `T` at `pointer` out of the heap.
    pub fn read_value<T: bytemuck::Pod>(&self, pointer: RelPtr<T>) -> Result<T> {
        self.check_span(pointer.offset(), size_of::<T>() as u64)?;
        self.segment.read_pod(pointer.offset() as usize)
    }

    /// Writes a `T` at `pointer`.
    pub fn write<T: bytemuck::Pod>(&self, pointer: RelPtr<T>, value: &T) -> Result<()> {
        self.check_span(pointer.offset(), size_of::<T>() as u64)?;
        self.segment.write_pod(pointer.offset() as usize, value)
    }

    /// Copies bytes at `pointer + offset` into `buf`.
    pub fn read_bytes<T>(&self, pointer: RelPtr<T>, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = pointer
            .offset()
            .checked_add(offset)
            .ok_or_else(|| corrupt("offset overflows".into()))?;
        self.check_span(start, buf.len() as u64)?;
        self.segment.read_at(start as usize, buf)
    }

    /// Copies `data` to `pointer + offset`.
    pub fn write_bytes<T>(&self, pointer: RelPtr<T>, offset: u64, data: &[u8]) -> Result<()> {
        let start = pointer
            .offset()
            .checked_add(offset)
            .ok_or_else(|| corrupt("offset overflows".into()))?;
        self.check_span(start, data.len() as u64)?;
        self.segment.write_at(start as usize, data)
    }

    /// The root pointer: where a structure built by one process is found by the others.
    pub fn root<T>(&self) -> Result<RelPtr<T>> {
        Ok(RelPtr::from_offset(
            self.segment.read_pod::<u64>(self.base + 16)?,
        ))
    }

    /// Sets the root pointer.
    pub fn set_root<T>(&self, pointer: RelPtr<T>) -> Result<()> {
        self.segment.write_pod(self.base + 16, &pointer.offset())
    }

    /// Walks every block and checks the whole heap: block chain, headers, footers, merging,
    /// free lists. Returns the statistics it gathered.
    pub fn check(&self) -> Result<HeapStats> {
        let _guard = self.locked()?;
        let stats = self.walk()?;
        let mut listed = 0;
        for class in 0..CLASSES {
            let mut block = self.list_head(class)?;
            let mut previous = 0;
            while block != 0 {
                listed += 1;
                if listed > stats.free_blocks {
                    return Err(corrupt(
                        "the free lists hold more blocks than the heap".into(),
                    ));
                }
                let (size, allocated) = self.block_size(block)?;
                let (next, back) = (self.load(block + HEADER)?, self.load(block + HEADER + 8)?);
                if allocated || size_class(size) != class || back != previous {
                    return Err(corrupt(format!(
                        "free list {class} is inconsistent at block {block}"
                    )));
                }
                previous = block;
                block = next;
            }
        }
        if listed != stats.free_blocks {
            return Err(corrupt(format!(
                "{} free blocks, {listed} on the free lists",
                stats.free_blocks
            )));
        }
        Ok(stats)
    }

    /// Payload offset of a block's payload → block offset, validated.
    fn block_of(&self, payload: u64) -> Result<u64> {
        payload
            .checked_sub(self.base as u64 + HEADER)
            .filter(|&block| block >= FIRST_BLOCK && block < self.len && block.is_multiple_of(16))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "free",
                    "the pointer is not a block of this heap",
                )
                .with_offset(payload)
            })
    }

    /// Fails unless `len` bytes at payload offset `start` lie inside the block area.
    pub(super) fn check_span(&self, start: u64, len: u64) -> Result<()> {
        let first = self.base as u64 + FIRST_BLOCK;
        let end = self.base as u64 + self.len;
        match start.checked_add(len) {
            Some(stop) if start >= first && stop <= end => Ok(()),
            _ => Err(Error::new(
                ErrorKind::OutOfBounds,
                "heap",
                "the pointer leaves the heap",
            )
            .with_range(start, len)),
        }
    }

    /// The metadata word at region offset `at` (8-byte aligned). Metadata is read and written
    /// with single atomic loads and stores, so a process killed mid-operation never leaves a
    /// torn word behind.
    fn word(&self, at: u64) -> Result<&'s AtomicU64> {
        self.segment.atomic(self.base + at as usize)
    }

    fn load(&self, at: u64) -> Result<u64> {
        Ok(self.word(at)?.load(Ordering::Acquire))
    }

    fn store(&self, at: u64, value: u64) -> Result<()> {
        self.word(at)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Writes a block's check word and footer; its header (the commit) is written separately
    /// by the caller, last.
    fn write_tail(&self, block: u64, size: u64, allocated: bool) -> Result<()> {
        let word = size | u64::from(allocated);
        self.store(block + 8, word ^ block ^ CHECK_SALT)?;
        self.store(block + size - FOOTER, word)
    }

    /// Writes a whole block: tail first, header last.
    fn write_block(&self, block: u64, size: u64, allocated: bool) -> Result<()> {
        self.write_tail(block, size, allocated)?;
        self.store(block, size | u64::from(allocated))
    }

    /// A block's size and allocation flag, after checking header, check word and footer.
    fn block_size(&self, block: u64) -> Result<(u64, bool)> {
        if block < FIRST_BLOCK || block >= self.len || !block.is_multiple_of(16) {
            return Err(corrupt(format!("block offset {block} is outside the heap")));
        }
        let (word, check) = (self.load(block)?, self.load(block + 8)?);
        let size = word & !15;
        let fits = block.checked_add(size).is_some_and(|end| end <= self.len);
        if check != word ^ block ^ CHECK_SALT || size < MIN_BLOCK || !fits || word & 14 != 0 {
            return Err(corrupt(format!("the header of block {block} is damaged")));
        }
        if self.load(block + size - FOOTER)? != word {
            return Err(corrupt(format!(
                "the footer of block {block} disagrees with its header"
            )));
        }
        Ok((size, word & ALLOCATED != 0))
    }

    fn list_head(&self, class: usize) -> Result<u64> {
        self.load(LISTS as u64 + class as u64 * 8)
    }

    fn set_list_head(&self, class: usize, block: u64) -> Result<()> {
        self.store(LISTS as u64 + class as u64 * 8, block)
    }

    fn push_free(&self, block: u64, size: u64) -> Result<()> {
        let class = size_class(size);
        let head = self.list_head(class)?;
        self.store(block + HEADER, head)?;
        self.store(block + HEADER + 8, 0)?;
        if head != 0 {
            self.block_size(head)?;
            self.store(head + HEADER + 8, block)?;
        }
        self.set_list_head(class, block)
    }

    fn unlink_free(&self, block: u64) -> Result<()> {
        let (size, allocated) = self.block_size(block)?;
        if allocated {
            return Err(corrupt(format!(
                "block {block} is on a free list but allocated"
            )));
        }
        let (next, previous) = (self.load(block + HEADER)?, self.load(block + HEADER + 8)?);
        if next != 0 {
            self.block_size(next)?;
            self.store(next + HEADER + 8, previous)?;
        }
        if previous == 0 {
            let class = size_class(size);
            if self.list_head(class)? != block {
                return Err(corrupt(format!(
                    "block {block} has no predecessor yet does not head its list"
                )));
            }
            self.set_list_head(class, next)
        } else {
            self.block_size(previous)?;
            self.store(previous + HEADER, next)
        }
    }

    /// The best-fitting free block of at least `need` bytes among the first candidates of
    /// each class, searching upwards from `need`'s class.
    fn find_fit(&self, need: u64) -> Result<Option<u64>> {
        for class in size_class(need)..CLASSES {
            let mut best: Option<(u64, u64)> = None;
            let mut block = self.list_head(class)?;
            for _ in 0..BEST_FIT_WINDOW {
                if block == 0 {
                    break;
                }
                let (size, allocated) = self.block_size(block)?;
                if allocated {
                    return Err(corrupt(format!(
                        "allocated block {block} is on free list {class}"
                    )));
                }
                if size >= need && best.is_none_or(|(_, best_size)| size < best_size) {
                    best = Some((block, size));
                }
                block = self.load(block + HEADER)?;
            }
            if let Some((block, _)) = best {
                return Ok(Some(block));
            }
        }
        Ok(None)
    }

    /// Walks the block chain from start to end, checking every block.
    fn walk(&self) -> Result<HeapStats> {
        let mut stats = HeapStats::default();
        let mut block = FIRST_BLOCK;
        let mut previous_free = false;
        while block < self.len {
            let (size, allocated) = self.block_size(block)?;
            if allocated {
                stats.allocated_blocks += 1;
                stats.allocated_bytes += size;
            } else {
                if previous_free {
                    return Err(corrupt(format!(
                        "free blocks before {block} were not merged"
                    )));
                }
                stats.free_blocks += 1;
                stats.free_bytes += size;
                stats.largest_free = stats.largest_free.max(size - HEADER - FOOTER);
            }
            previous_free = !allocated;
            block += size;
        }
        if block != self.len {
            return Err(corrupt("the block chain overruns the heap".into()));
        }
        Ok(stats)
    }

    /// Repairs the heap after a lock holder died mid-operation. Headers are always written
    /// last and atomically, so the chain of headers is intact: walk it, rewrite every check
    /// word and footer from its header, merge free neighbours the dead process had not merged
    /// yet, and rebuild the free lists. A broken chain is `Corrupt`.
    fn repair(&self) -> Result<()> {
        let mut blocks = Vec::new();
        let mut block = FIRST_BLOCK;
        while block < self.len {
            let word = self.load(block)?;
            let size = word & !15;
            let fits = block.checked_add(size).is_some_and(|end| end <= self.len);
            if size < MIN_BLOCK || word & 14 != 0 || !fits {
                return Err(corrupt(format!("the header chain breaks at block {block}")));
            }
            blocks.push((block, size, word & ALLOCATED != 0));
            block += size;
        }
        for class in 0..CLASSES {
            self.set_list_head(class, 0)?;
        }
        let mut index = 0;
        while index < blocks.len() {
            let (start, mut size, allocated) = blocks[index];
            index += 1;
            while !allocated && index < blocks.len() && !blocks[index].2 {
                size += blocks[index].1;
                index += 1;
            }
            self.write_block(start, size, allocated)?;
            if !allocated {
                self.push_free(start, size)?;
            }
        }
        Ok(())
    }
}
