//! mmapkit: memory-mapped I/O and shared memory, with mmap's speed and without its crashes.
//!
//! ```
//! use mmapkit::MapOptions;
//! # fn main() -> mmapkit::Result<()> {
//! let file = tempfile::tempfile().unwrap();
//! file.set_len(8192).unwrap();
//! let map = MapOptions::new().write(true).offset(100).len(5).map_file(&file)?;
//! map.write_at(0, b"hello")?;          // lands at file offset 100
//! map.flush()?;                        // msync: the file now holds it
//! let mut back = [0u8; 5];
//! map.read_at(0, &mut back)?;          // a truncated file gives Err(Truncated), not SIGBUS
//! assert_eq!(&back, b"hello");
//! # Ok(()) }
//! ```
//!
//! # Layers
//! Each module uses only those listed before it.
//!
//! | module | what lives there |
//! |---|---|
//! | [`sys`] | one function per system call, no policy |
//! | [`map`] | [`MapOptions`] → [`Mapping`]: every kind of mapping and its lifecycle |
//! | [`fault`] | the SIGBUS guard and the copying accessors built on it |
//! | [`growable`] | [`GrowableMap`], a file mapping that grows for append-only logs |
//! | [`inspect`] | process mappings (maps/smaps), page-cache residency, touch/evict/lock, tree walks |
//! | [`shm`] | [`Segment`]: named, memfd and file segments, their header, passing, cleanup |
//! | [`sync`] | robust mutex, condition variable, semaphore, events (pollable, async) in segments |
//! | [`channel`] | SPSC, byte and MPMC queues in segments: zero-copy, blocking, disconnect-aware |
//! | [`alloc`] | relative pointers, a multi-process heap, and vec/string/map containers on it |
//! | [`pager`] | demand paging in user space: userfaultfd, stores, budget, eviction, write-back |
//!
//! # Safety model
//! A Rust reference promises that what it points to does not change behind it. Memory that
//! another process, another mapping of the same file, or a truncation can change or take away
//! breaks that promise, so mmapkit hands out references only where nothing else can reach the
//! memory, and reaches everything else through copies or atomics. The rules are in the [`map`]
//! module docs; every way around them is an `unsafe` method with its contract written out.
//! Mapping memory both writable and executable needs an `unsafe` opt-in (W^X). One caveat is
//! inherent to shared memory and documented in [`fault`]: within one process, a copy that races
//! an atomic on the same bytes is a mixed-size race Rust's memory model leaves undefined; the
//! layers here never let their copies and atomics meet on the same bytes.
//!
//! # Conventions
//! One rule for each, everywhere in the crate:
//! * **Offsets**: a position in memory the library maps — a mapping's view, a segment's
//!   payload, a pager region, a channel message — is a `usize`, like a slice index; a position
//!   in a file or a store — [`MapOptions::offset`], [`GrowableMap`] (an append-only log in a
//!   file), [`pager::Store::read_at`] — is a `u64`, like `std::os::unix::fs::FileExt`.
//! * **Builders** are option values whose setters take `&mut self` and return `&mut Self`, and
//!   whose final calls take `&self`, as `std::fs::OpenOptions` does: [`MapOptions`],
//!   [`SegmentOptions`], [`channel::ChannelOptions`], [`pager::Pager`], and the setters of
//!   values such as [`pager::FileStore::drop_behind`].
//! * **Results**: every fallible call returns [`Result`] with the crate's [`Error`], except the
//!   methods of traits the caller implements or std defines (a [`pager::Store`]'s methods, and
//!   `io::Read`/`Write`/`Seek`, which speak `std::io::Error`), and the robust lock, whose
//!   [`LockError`](sync::LockError) carries the guard (see [`sync::Mutex::lock_consistent`]
//!   for the `?`-friendly path).
//!
//! # Features
//! The defaults are lean: rustix, libc, bitflags, bytemuck and memchr.
//! * `tokio`: `recv_async` on channel receivers and `wait_async` on pollable events.
//! * `zstd`: the pager's [`CompressedStore`](pager::CompressedStore) and
//!   `SeekableWriter` for seekable zstd archives (builds libzstd from C).
//! * `http`: the pager's `HttpStore`, pages from HTTP range requests.
//!
//! The `mmapkit` command enables `zstd` and `http`.
//!
//! **bytemuck** is re-exported: channel messages and values in segments are
//! [`bytemuck::Pod`]; derive it through the re-export with
//! `#[bytemuck(crate = "mmapkit::bytemuck")]` (see [`channel::Channel`]).
//!
//! # Platform
//! Linux is the platform this is built and tested on. The fault guard is implemented for
//! x86-64.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod alloc;
pub mod channel;
pub mod error;
pub mod fault;
pub mod growable;
#[cfg(target_os = "linux")]
pub mod inspect;
pub mod map;
#[cfg(target_os = "linux")]
pub mod pager;
pub mod shm;
pub mod sync;
pub mod sys;

pub use bytemuck;
pub use error::{Error, ErrorKind, Result};
pub use fault::MappingCursor;
pub use growable::GrowableMap;
pub use map::{
    Advice, Backing, Flush, HugePageSize, MapOptions, Mapping, Protection, Reach, RemapMode,
    Residency, Sharing, UncheckedAdvice,
};
pub use shm::{Segment, SegmentOptions};

/// The instant `timeout` from now; a timeout too long to represent (`Duration::MAX`) ends a
/// century from now, which no wait outlives, instead of overflowing.
pub(crate) fn deadline_after(timeout: std::time::Duration) -> std::time::Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
    let now = std::time::Instant::now();
    now.checked_add(timeout.min(CENTURY)).unwrap_or(now)
}
