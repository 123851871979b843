//! [`Condvar`]: a process-shared condition variable on a futex sequence word.
//!
//! Layout: `u32` magic "CVR1", `u32` sequence. Waiting reads the sequence, unlocks the mutex,
//! and sleeps until the sequence moves (each notify bumps it) or the time is up; then it
//! locks again. As with every condition variable, wake-ups may be spurious: wait in a loop
//! that re-checks the condition.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::mutex::{LockResult, MutexGuard};
use super::{POLL_SLICE, find, place, wait};
use crate::error::Result;
use crate::shm::Segment;

const MAGIC: u32 = u32::from_le_bytes(*b"CVR1");
const WHAT: &str = "condition variable";

/// A process-shared condition variable, placed in a segment.
#[derive(Debug)]
pub struct Condvar<'s> {
    segment: &'s Segment,
    sequence: &'s AtomicU32,
}

impl<'s> Condvar<'s> {
    /// Bytes a condition variable takes.
    pub const SIZE: usize = 8;

    /// Places a new condition variable at payload `offset` (8-byte aligned).
    pub fn init(segment: &'s Segment, offset: usize) -> Result<Self> {
        place(segment, offset, Self::SIZE, WHAT, MAGIC, &[(4, 0)])?;
        Self::open(segment, offset)
    }

    /// Opens the condition variable placed at payload `offset`.
    pub fn open(segment: &'s Segment, offset: usize) -> Result<Self> {
        find(segment, offset, Self::SIZE, WHAT, MAGIC)?;
        Ok(Condvar {
            segment,
            sequence: segment.atomic(offset + 4)?,
        })
    }

    /// Unlocks `guard`'s mutex, waits for a notification, and locks it again.
    pub fn wait<'a, T: bytemuck::Pod>(&self, guard: MutexGuard<'a, T>) -> LockResult<'a, T> {
        self.wait_until(guard, None).0
    }

    /// As [`wait`](Self::wait), for at most `timeout`; the flag says whether time ran out.
    pub fn wait_timeout<'a, T: bytemuck::Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (LockResult<'a, T>, bool) {
        self.wait_until(guard, Some(crate::deadline_after(timeout)))
    }

    fn wait_until<'a, T: bytemuck::Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> (LockResult<'a, T>, bool) {
        let sequence = self.sequence.load(Ordering::Acquire);
        let mutex = guard.mutex();
        drop(guard);
        let mut timed_out = false;
        while self.sequence.load(Ordering::Acquire) == sequence {
            match wait::sleep(self.sequence, sequence, deadline, POLL_SLICE, "wait") {
                Ok(()) => {}
                Err(_) => {
                    timed_out = true;
                    break;
                }
            }
            if self.segment.check().is_err() || mutex.segment().check().is_err() {
                break;
            }
        }
        (mutex.lock(), timed_out)
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.sequence.fetch_add(1, Ordering::Release);
        wait::wake(self.sequence, 1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.sequence.fetch_add(1, Ordering::Release);
        wait::wake(self.sequence, i32::MAX as u32);
    }
}
