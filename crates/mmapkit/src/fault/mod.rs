//! The fault guard: copies into and out of mappings that return
//! [`Truncated`](crate::ErrorKind::Truncated) when the file behind the mapping was shrunk,
//! instead of killing the process with SIGBUS.
//!
//! A shared file mapping is a promise the kernel cannot keep once another process truncates
//! the file: the next access to a page past the new end raises SIGBUS, whose default action
//! ends the process. [Python's mmap](https://docs.python.org/3/library/mmap.html) and memmap2
//! crash there; the JVM turns it into an exception. mmapkit does the same as the JVM with a
//! narrower mechanism, described in the `guard` submodule: every copy runs through one small
//! assembly routine, and the SIGBUS handler resumes that routine — and only that routine —
//! with an error instead of a crash.
//!
//! What this module offers on every [`Mapping`]:
//! * [`read_at`](Mapping::read_at) / [`write_at`](Mapping::write_at): exact copies at an
//!   offset of the view;
//! * [`read_pod`](Mapping::read_pod) / [`write_pod`](Mapping::write_pod): the same for
//!   plain-old-data values;
//! * [`find`](Mapping::find) / [`rfind`](Mapping::rfind): search for a byte pattern;
//! * [`cursor`](Mapping::cursor): a [`MappingCursor`] with `io::Read`, `io::Write`, `io::Seek`.
//!
//! # Scanning
//! A safe scan of memory others can change or truncate cannot borrow it; it copies. Copying
//! the whole range into a heap buffer doubles the memory traffic; [`Mapping::chunks`] and
//! [`Mapping::for_each_chunk`] copy it a chunk at a time into one small buffer that stays in
//! cache, and lend the memory in place, without a copy, where it is exclusive to the mapping.
//! Summing the u64 words of a hot 1 GiB file (`mmapkit-bench scan-chunks`, one run, ratio to a
//! memmap2 slice, page cache in large folios):
//!
//! | chunk | 4 KiB | 16 KiB | 64 KiB | 128 KiB | 256 KiB | 1 MiB | 4 MiB |
//! |---|---|---|---|---|---|---|---|
//! | ratio | 0.43 | 0.66 | 0.76 | 0.77 | 0.76 | 0.57 | 0.43 |
//!
//! Small chunks pay the signal-mask call of every copy often (≈ 0.2 µs each, see below; a
//! [`SigbusUnblocked`] promise saves it: 0.77 → 0.78 at 128 KiB) and restart the hardware's
//! prefetching often; from 1 MiB the buffer no longer stays in cache while the file streams
//! through. [`DEFAULT_CHUNK`] is 128 KiB. What remains is the copy itself: the scan reads the
//! file at the memory's speed either way, but a copy cannot overlap the caller's pass over the
//! chunk, which a direct read of the mapping does. On small folios, where the kernel's per-page
//! mapping cost dominates both, the safe scan reaches 0.84.
//!
//! Which path for what:
//! * [`chunks`](Mapping::chunks) / [`for_each_chunk`](Mapping::for_each_chunk) to scan: sum,
//!   hash, search, parse a stream;
//! * [`read_at`](Mapping::read_at) / [`read_pod`](Mapping::read_pod) for records at known
//!   offsets, the [cursor](Mapping::cursor) for `io::Read` consumers;
//! * [`as_slice`](Mapping::as_slice) where the memory is exclusive (no copy at all);
//! * the `unsafe` [`as_slice_unchecked`](Mapping::as_slice_unchecked) only when nothing can
//!   change or truncate the file and the last quarter of the speed matters.
//!
//! # Signal masks
//! The kernel delivers a fault's SIGBUS to a handler only if the faulting thread does not block
//! SIGBUS; otherwise it resets the action to the default and the process ends. Worker threads
//! of signal-handling designs often block every signal, so each copy of memory that can fault
//! (a truncatable file mapping, a named or file segment, a pager region) runs with SIGBUS
//! unblocked in its thread and restores the mask after: one `rt_sigprocmask` call per copy,
//! about 0.1–0.2 µs here, which nearly doubles the time of a 4 KiB copy and is lost in a 1 MiB
//! one. Copies of memory that cannot vanish (anonymous memory, sealed memfds) make no call. A
//! thread that never blocks SIGBUS can say so once with the `unsafe`
//! [`SigbusUnblocked::promise`], and its copies skip the call.
//!
//! What the mask does not cover: in-place access through references into a segment a peer can
//! truncate (the atomics of [`Segment::atomic`](crate::Segment::atomic), and the locks,
//! channel indices and heap built on them) relies on the shield, which needs SIGBUS
//! deliverable in the accessing thread. A thread that blocks SIGBUS must use memfd segments
//! (sealed against shrinking: they never fault) for in-place access, or accept that a peer
//! with write access to a named segment can end the process by truncating it.
//!
//! The copies take `&self` and are safe on memory others change: the routine is opaque
//! assembly outside the Rust abstract machine, and behaves as the hardware's sequence of byte
//! accesses, so a concurrent writer in another process can at worst make a copy see a mix of
//! old and new bytes. Within one process the same holds for two copies racing each other. A
//! copy racing an atomic operation on the *same bytes* (see [`Mapping::atomic`]) is a
//! mixed-size race that Rust's memory model leaves undefined; protocols in shared memory must
//! hand bytes over with the atomics (a ring index, a sequence number) so that copies and
//! atomics never touch the same bytes at once, as they must across processes anyway.

mod chunks;
mod cursor;
mod guard;
pub(crate) mod shield;

pub use chunks::{Chunk, Chunks, DEFAULT_CHUNK};
pub use cursor::MappingCursor;
pub(crate) use guard::Faults;
pub use guard::SigbusUnblocked;

use crate::error::{Error, ErrorKind, Result};
use crate::map::{Mapping, Protection};

impl Mapping {
    /// Copies `buf.len()` bytes from the view at `offset` into `buf`.
    ///
    /// Errors: `OutOfBounds` when the range leaves the view, `PermissionDenied` when it is not
    /// readable, `Truncated` when the file no longer covers it (then `buf` holds the bytes
    /// before the missing page; [`Error::offset`] says where the copy stopped).
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        // SAFETY: `buf` is valid for writes of its length, no other reference covers it (a
        // unique borrow), and it cannot overlap the view: the view is never borrowed mutably
        // while `&self` is.
        unsafe { self.read_to_ptr(offset, buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `data` into the view at `offset`.
    ///
    /// Errors as for [`read_at`](Self::read_at), with write access needed.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        // SAFETY: `data` is valid for reads of its length and cannot overlap the writable
        // bytes of the view: safe `&self` slices exist only for memory with no write access,
        // which the copy refuses.
        unsafe { self.write_from_ptr(offset, data.as_ptr(), data.len()) }
    }

    /// [`read_at`](Self::read_at) into memory given by a pointer instead of a slice: for
    /// targets no Rust reference may cover, because someone else may write them too (a
    /// buffer of another language, memory shared with other processes).
    ///
    /// # Safety
    /// `target` is valid for writes of `len` bytes for the whole call, no Rust reference to
    /// it is alive, and it does not overlap the view's bytes `offset..offset + len`.
    pub unsafe fn read_to_ptr(&self, offset: usize, target: *mut u8, len: usize) -> Result<()> {
        let range = self.byte_span("read_at", offset, len)?;
        self.require("read_at", &range, Protection::READ)?;
        // SAFETY: the source lies in the view and is readable (checked above); the caller
        // vouches for the target and for their not overlapping.
        unsafe { self.guarded_copy("read_at", offset, target, self.as_ptr().add(offset), len) }
    }

    /// [`write_at`](Self::write_at) from memory given by a pointer instead of a slice: for
    /// sources no Rust reference may cover (see [`read_to_ptr`](Self::read_to_ptr)).
    ///
    /// # Safety
    /// `source` is valid for reads of `len` bytes for the whole call and does not overlap
    /// the view's bytes `offset..offset + len`.
    pub unsafe fn write_from_ptr(
        &self,
        offset: usize,
        source: *const u8,
        len: usize,
    ) -> Result<()> {
        let range = self.byte_span("write_at", offset, len)?;
        self.require("write_at", &range, Protection::WRITE)?;
        // SAFETY: the target lies in the view and is writable (checked above). No Rust
        // reference covers it: safe slices of writable memory need `&mut self`, and safe
        // `&self` slices exist only for memory with no write access. The caller vouches for
        // the source.
        unsafe {
            self.guarded_copy(
                "write_at",
                offset,
                self.as_mut_ptr().add(offset),
                source,
                len,
            )
        }
    }

    /// Reads a plain-old-data value at `offset` (any alignment).
    pub fn read_pod<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let mut value = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut value))?;
        Ok(value)
    }

    /// Writes a plain-old-data value at `offset` (any alignment).
    pub fn write_pod<T: bytemuck::NoUninit>(&self, offset: usize, value: &T) -> Result<()> {
        self.write_at(offset, bytemuck::bytes_of(value))
    }

    /// Creates a cursor at position 0 with `io::Read`, `io::Write` and `io::Seek`.
    pub fn cursor(&self) -> MappingCursor<'_> {
        MappingCursor::new(self)
    }

    /// # Safety
    /// `dst` and `src` are valid for `len` bytes (apart from mapping pages the file no longer
    /// covers), do not overlap, and no Rust reference covers `dst`.
    unsafe fn guarded_copy(
        &self,
        operation: &'static str,
        offset: usize,
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> Result<()> {
        let faults = if self.is_truncatable() {
            Faults::Possible
        } else {
            Faults::Impossible
        };
        if faults == Faults::Possible {
            if !guard::AVAILABLE {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    operation,
                    "the fault guard is not implemented for this architecture, so a mapping \
                     that can be truncated cannot be copied safely",
                ));
            }
            guard::install().map_err(|errno| Error::os(operation, errno))?;
        }
        // SAFETY: forwarded from this function's contract; the handler is installed whenever
        // the memory can fault, and only memory that cannot be truncated is `Impossible`.
        let outcome = unsafe { guard::copy(dst, src, len, faults) };
        if outcome.remaining == 0 {
            return Ok(());
        }
        let stopped_at = offset + (len - outcome.remaining);
        Err(truncated(operation, stopped_at, outcome.fault_code))
    }
}

/// Copies between ordinary memory and a shielded shared segment (a channel's data area, say)
/// or a pager's region through the guarded routine: opaque to the compiler, so bytes a peer
/// changes meanwhile are merely bytes, and a fault ends the copy with `Truncated` instead of a
/// crash, whatever the thread's signal mask (see `guard::copy`). `faults` says whether the
/// memory can fault at all; a segment sealed against shrinking cannot.
///
/// # Safety
/// `dst` and `src` are valid for `len` bytes (apart from pages a truncation removed), do not
/// overlap, and no Rust reference covers `dst`; with [`Faults::Impossible`], no page of them
/// can fault.
pub(crate) unsafe fn copy_shared(
    operation: &'static str,
    dst: *mut u8,
    src: *const u8,
    len: usize,
    faults: Faults,
) -> Result<()> {
    guard::install().map_err(|errno| Error::os(operation, errno))?;
    // SAFETY: forwarded from this function's contract; the handler is installed.
    let outcome = unsafe { guard::copy(dst, src, len, faults) };
    match outcome.remaining {
        0 => Ok(()),
        remaining => Err(truncated(operation, len - remaining, outcome.fault_code)),
    }
}

fn truncated(operation: &'static str, offset: usize, fault_code: usize) -> Error {
    let hardware = fault_code == libc::BUS_MCEERR_AR as usize;
    let message = if hardware {
        "the page holds a memory error (hardware poison)"
    } else {
        "the file behind the mapping no longer covers this offset (it was truncated, or the \
         page could not be read)"
    };
    Error::new(
        if hardware {
            ErrorKind::Io
        } else {
            ErrorKind::Truncated
        },
        operation,
        message,
    )
    .with_offset(offset as u64)
}
