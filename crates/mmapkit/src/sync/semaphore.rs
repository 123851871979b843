//! [`Semaphore`]: a process-shared counting semaphore on a futex.
//!
//! Layout: `u32` magic "SEM1", `u32` count, `u32` sleepers, `u32` reserved. `post` wakes a
//! sleeper only when one is registered, so an uncontended semaphore makes no system call.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{find, place, wait};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;

const MAGIC: u32 = u32::from_le_bytes(*b"SEM1");
const WHAT: &str = "semaphore";

/// A process-shared counting semaphore, placed in a segment.
#[derive(Debug)]
pub struct Semaphore<'s> {
    segment: &'s Segment,
    count: &'s AtomicU32,
    sleepers: &'s AtomicU32,
}

impl<'s> Semaphore<'s> {
    /// Bytes a semaphore takes.
    pub const SIZE: usize = 16;

    /// Places a new semaphore holding `initial` at payload `offset` (8-byte aligned).
    pub fn init(segment: &'s Segment, offset: usize, initial: u32) -> Result<Self> {
        place(
            segment,
            offset,
            Self::SIZE,
            WHAT,
            MAGIC,
            &[(4, initial), (8, 0)],
        )?;
        Self::open(segment, offset)
    }

    /// Opens the semaphore placed at payload `offset`.
    pub fn open(segment: &'s Segment, offset: usize) -> Result<Self> {
        find(segment, offset, Self::SIZE, WHAT, MAGIC)?;
        Ok(Semaphore {
            segment,
            count: segment.atomic(offset + 4)?,
            sleepers: segment.atomic(offset + 8)?,
        })
    }

    /// The current count.
    pub fn value(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Takes one unit if there is one.
    pub fn try_wait(&self) -> Result<bool> {
        let mut count = self.count.load(Ordering::Relaxed);
        while count > 0 {
            match self.count.compare_exchange_weak(
                count,
                count - 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.segment.check().map(|()| true),
                Err(now) => count = now,
            }
        }
        self.segment.check().map(|()| false)
    }

    /// Takes one unit, waiting for it as long as it takes.
    pub fn wait(&self) -> Result<()> {
        self.wait_until(None)
    }

    /// Takes one unit, waiting at most `timeout` (then `Timeout`).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_until(Some(crate::deadline_after(timeout)))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<()> {
        wait::until_taken(self.count, 0, self.sleepers, deadline, || self.try_wait())
    }

    /// Returns one unit, waking a sleeper if there is one.
    pub fn post(&self) -> Result<()> {
        self.post_many(1)
    }

    /// Returns `units` units at once, waking as many sleepers: all or none (`InvalidInput`
    /// when the count would exceed `u32::MAX`, and then nothing is returned).
    pub fn post_many(&self, units: u32) -> Result<()> {
        let mut count = self.count.load(Ordering::Relaxed);
        loop {
            let next = count.checked_add(units).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "post",
                    format!("the count {count} would exceed 4294967295"),
                )
            })?;
            match self.count.compare_exchange_weak(
                count,
                next,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => count = now,
            }
        }
        if units > 0 && self.sleepers.load(Ordering::SeqCst) > 0 {
            wait::wake(self.count, units.min(i32::MAX as u32));
        }
        self.segment.check()
    }
}
