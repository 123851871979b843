//! Process-shared synchronisation living inside a [`Segment`]: a robust
//! [`Mutex`], a [`Condvar`], a counting [`Semaphore`], an [`Event`], and a [`PollableEvent`]
//! whose waiters can also use poll/epoll (and, with the `tokio` feature, `async`).
//!
//! Each primitive is *placed* at an offset of a segment's payload: the creator calls `init`
//! (typically inside [`SegmentOptions::create_with`](crate::SegmentOptions::create_with)),
//! everyone else `open`s it at the same offset. A primitive starts with a magic word, so
//! opening the wrong thing at an offset is an error, not undefined behaviour; `SIZE`/`size()`
//! tell how many bytes each takes, and offsets must be 8-byte aligned.
//!
//! All of them wait the same way: a short spin (the other side is often mid-operation on
//! the other core, and a sleeping wake-up costs hundreds of microseconds in a VM), then a
//! futex sleep, so idle waiters use no CPU. Sleeps are cut into slices of [`POLL_SLICE`]; at
//! each slice's end a waiter checks its deadline and the segment's integrity, and a mutex
//! waiter checks whether the lock's owner is still alive, which bounds how long an owner's
//! crash goes unnoticed.
//!
//! Everything read from the segment is treated as possibly hostile: a corrupt magic or state
//! is an error, no value read there is used as an index without a check, and a garbage lock
//! word naming a thread that does not exist is recovered by the next locker. A peer that
//! writes the id of a live thread into a lock word holds the lock as far as anyone can tell:
//! against untrusted peers, lock with a timeout.

mod condvar;
mod event;
mod mutex;
mod semaphore;
mod wait;

pub use condvar::Condvar;
pub use event::{Event, EventMode, PollableEvent};
pub use mutex::{LockError, Mutex, MutexGuard};
pub use semaphore::Semaphore;
pub use wait::POLL_SLICE;
pub(crate) use wait::{coarse_now, sleep, spin, wake};

use std::sync::atomic::AtomicU32;

use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;

/// Places a primitive of `size` bytes at `offset`: checks the placement, stores each
/// `(offset from the placement, value)` word, and the magic last, so that an opener never sees
/// the magic before the rest.
fn place(
    segment: &Segment,
    offset: usize,
    size: usize,
    what: &str,
    magic: u32,
    words: &[(usize, u32)],
) -> Result<()> {
    check_placement(segment, offset, size, what)?;
    for &(field, value) in words {
        segment
            .atomic::<AtomicU32>(offset + field)?
            .store(value, std::sync::atomic::Ordering::Relaxed);
    }
    segment
        .atomic::<AtomicU32>(offset)?
        .store(magic, std::sync::atomic::Ordering::Release);
    // Stores to a segment truncated under us land on the shield's zero pages.
    segment.check()
}

/// Checks that a primitive of `size` bytes with `magic` is placed at `offset`.
fn find(segment: &Segment, offset: usize, size: usize, what: &str, magic: u32) -> Result<()> {
    check_placement(segment, offset, size, what)?;
    expect_magic(segment, offset, magic, what).map(drop)
}

/// Checks the magic word at `offset` of `segment` and returns the word.
fn expect_magic<'s>(
    segment: &'s Segment,
    offset: usize,
    magic: u32,
    what: &str,
) -> Result<&'s AtomicU32> {
    let word: &AtomicU32 = segment.atomic(offset)?;
    let found = word.load(std::sync::atomic::Ordering::Acquire);
    if found != magic {
        // A segment truncated under us reads as zeros: that is `Truncated`, not corruption.
        segment.check()?;
        return Err(Error::new(
            ErrorKind::Corrupt,
            "open",
            format!("no {what} at offset {offset} (magic {found:#010x}, expected {magic:#010x})"),
        )
        .with_offset(offset as u64));
    }
    Ok(word)
}

/// "a" or "an", for the word `what`.
fn article(what: &str) -> &'static str {
    match what.starts_with(['a', 'e', 'i', 'o', 'u']) {
        true => "an",
        false => "a",
    }
}

/// Checks that `offset` is 8-byte aligned and that `size` bytes from it fit in the payload.
fn check_placement(segment: &Segment, offset: usize, size: usize, what: &str) -> Result<()> {
    let fits = offset
        .checked_add(size)
        .is_some_and(|end| end <= segment.payload_len());
    if !offset.is_multiple_of(8) || !fits {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "place",
            format!(
                "{} {what} needs {size} bytes at an 8-byte aligned offset inside the {}-byte payload",
                article(what),
                segment.payload_len()
            ),
        )
        .with_range(offset as u64, size as u64));
    }
    Ok(())
}
