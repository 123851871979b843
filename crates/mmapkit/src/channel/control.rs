//! The control block every channel starts with, and the wake-up protocol between its sides.
//!
//! ```text
//! offset  line  contents
//!      0     0  magic "CHN1", kind, element size, element align, capacity, data offset, flags
//!     64     1  head: producer position (u64, only ever grows)
//!    128     2  tail: consumer position (u64, only ever grows)
//!    192     3  receiver wake word (futex sequence), sleeping receivers, armed pollers
//!    256     4  sender wake word (futex sequence), sleeping senders
//!    320  5-12  endpoint table: attach counters, then 30 entries (see `endpoints`)
//!    832    13  MPMC only: producers' mutex;  896: consumers' mutex
//!   1024        data
//! ```
//!
//! Producer and consumer each write their own cache line and only read the other's, so the
//! two sides do not fight over a line on every message.
//!
//! **Waking.** A side about to sleep counts itself in its sleeper word and then checks the
//! queue once more; the other side moves its position with an exchange and then looks at that
//! sleeper count. All four accesses are sequentially consistent (a Dekker pairing, with no
//! separate fence), so either the sleeper sees the new position or the mover sees the
//! sleeper. Sleeps are cut into slices anyway (see [`crate::sync::POLL_SLICE`]), so
//! that a dead peer is noticed.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::Kind;
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;
use crate::sync::POLL_SLICE;
use crate::sys::Errno;

const MAGIC: u32 = u32::from_le_bytes(*b"CHN1");
/// Positions may not reach this far: far beyond anything real, it keeps `+ 1` from
/// overflowing on values a peer wrote.
pub(super) const MAX_POSITION: u64 = 1 << 62;
/// Offset of the data area from the start of the payload.
pub(super) const DATA_OFFSET: usize = 1024;
pub(super) const ENDPOINTS_OFFSET: usize = 320;
pub(super) const PRODUCER_LOCK_OFFSET: usize = 832;
pub(super) const CONSUMER_LOCK_OFFSET: usize = 896;
const FLAG_POLLABLE: u32 = 1;
/// Largest element alignment: the data area is 128-byte aligned in memory (the segment's
/// payload starts 128 bytes into a page, the data area 1024 bytes further).
pub(super) const MAX_ALIGN: usize = 64;
/// Byte channels hold between 64 bytes and 4 GiB (record lengths are 32-bit).
pub(super) const MIN_BYTE_CAPACITY: u64 = 64;
pub(super) const MAX_BYTE_CAPACITY: u64 = 1 << 32;

/// What `init` writes and `open` checks on line 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(super) kind: Kind,
    pub(super) element_size: u32,
    pub(super) element_align: u32,
    /// Slots (typed channels) or bytes (byte channels); a power of two.
    pub(super) capacity: u64,
    pub(super) pollable: bool,
}

impl Shape {
    /// Bytes of payload a channel of this shape needs.
    pub(super) fn payload_len(&self) -> Option<usize> {
        let slot = match self.kind {
            Kind::Bytes => 1,
            Kind::Spsc | Kind::Mpmc => {
                slot_size(self.element_size as usize, self.element_align as usize)
            }
        };
        usize::try_from(self.capacity)
            .ok()?
            .checked_mul(slot)?
            .checked_add(DATA_OFFSET)
    }
}

/// Bytes between consecutive slots of a typed channel.
pub(super) fn slot_size(size: usize, align: usize) -> usize {
    size.max(1).next_multiple_of(align.max(1))
}

/// The control block's atomics, borrowed from the segment once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Control<'c> {
    pub(super) segment: &'c Segment,
    pub(super) shape: Shape,
    pub(super) head: &'c AtomicU64,
    pub(super) tail: &'c AtomicU64,
    rx_sequence: &'c AtomicU32,
    rx_sleepers: &'c AtomicU32,
    rx_pollers: &'c AtomicU32,
    tx_sequence: &'c AtomicU32,
    tx_sleepers: &'c AtomicU32,
}

impl<'c> Control<'c> {
    /// Writes a fresh control block (the creator, before the segment is published).
    pub(super) fn init(segment: &Segment, shape: Shape) -> Result<()> {
        let words: [(usize, u32); 6] = [
            (4, shape.kind as u32),
            (8, shape.element_size),
            (12, shape.element_align),
            (32, DATA_OFFSET as u32),
            (36, if shape.pollable { FLAG_POLLABLE } else { 0 }),
            (0, MAGIC),
        ];
        segment
            .atomic::<AtomicU64>(16)?
            .store(shape.capacity, Ordering::Relaxed);
        for offset in [64, 128] {
            segment
                .atomic::<AtomicU64>(offset)?
                .store(0, Ordering::Relaxed);
        }
        for offset in [192, 196, 200, 256, 260] {
            segment
                .atomic::<AtomicU32>(offset)?
                .store(0, Ordering::Relaxed);
        }
        for (offset, value) in words {
            segment
                .atomic::<AtomicU32>(offset)?
                .store(value, Ordering::Release);
        }
        Ok(())
    }

    /// Validates the control block of an existing channel against what the opener expects.
    /// A segment truncated under us reads as zeros: that is `Truncated`, not a bad header.
    pub(super) fn open(
        segment: &'c Segment,
        expected: Kind,
        element_size: u32,
        element_align: u32,
    ) -> Result<Self> {
        Self::validate(segment, expected, element_size, element_align)
            .map_err(|error| segment.check().err().unwrap_or(error))
    }

    fn validate(
        segment: &'c Segment,
        expected: Kind,
        element_size: u32,
        element_align: u32,
    ) -> Result<Self> {
        let word = |offset: usize| -> Result<u32> {
            Ok(segment.atomic::<AtomicU32>(offset)?.load(Ordering::Acquire))
        };
        let corrupt = |message: String| Error::new(ErrorKind::Corrupt, "open channel", message);
        if word(0)? != MAGIC {
            return Err(corrupt("the segment holds no channel".into()));
        }
        let kind = Kind::from_word(word(4)?)
            .ok_or_else(|| corrupt(format!("channel kind {} is unknown", word(4).unwrap_or(0))))?;
        if kind != expected {
            return Err(Error::new(
                ErrorKind::Incompatible,
                "open channel",
                format!("it is a {kind:?} channel, not {expected:?}"),
            ));
        }
        let shape = Shape {
            kind,
            element_size: word(8)?,
            element_align: word(12)?,
            capacity: segment.atomic::<AtomicU64>(16)?.load(Ordering::Relaxed),
            pollable: word(36)? & FLAG_POLLABLE != 0,
        };
        if (shape.element_size, shape.element_align) != (element_size, element_align) {
            return Err(Error::new(
                ErrorKind::Incompatible,
                "open channel",
                format!(
                    "its elements are {} bytes aligned to {}, not {element_size} aligned to {element_align}",
                    shape.element_size, shape.element_align
                ),
            ));
        }
        let fits = shape
            .payload_len()
            .is_some_and(|needed| needed <= segment.payload_len());
        let byte_capacity_ok = kind != Kind::Bytes
            || (MIN_BYTE_CAPACITY..=MAX_BYTE_CAPACITY).contains(&shape.capacity);
        let align_ok =
            shape.element_align.is_power_of_two() && shape.element_align as usize <= MAX_ALIGN;
        if !shape.capacity.is_power_of_two()
            || word(32)? as usize != DATA_OFFSET
            || !fits
            || !byte_capacity_ok
            || !align_ok
        {
            return Err(corrupt(format!(
                "capacity {} and data offset {} do not fit a {}-byte payload",
                shape.capacity,
                word(32)?,
                segment.payload_len()
            )));
        }
        Ok(Control {
            segment,
            shape,
            head: segment.atomic(64)?,
            tail: segment.atomic(128)?,
            rx_sequence: segment.atomic(192)?,
            rx_sleepers: segment.atomic(196)?,
            rx_pollers: segment.atomic(200)?,
            tx_sequence: segment.atomic(256)?,
            tx_sleepers: segment.atomic(260)?,
        })
    }

    /// Reads both positions and checks them against each other: `head - tail` must lie in
    /// `0..=capacity` (in slots or bytes), and the head must leave room to grow for 2^62
    /// messages, whatever a peer wrote.
    pub(super) fn positions(&self) -> Result<(u64, u64)> {
        let tail = self.tail.load(Ordering::SeqCst);
        let head = self.head.load(Ordering::SeqCst);
        self.segment.check()?;
        match head.checked_sub(tail) {
            Some(used) if used <= self.shape.capacity && head < MAX_POSITION => Ok((head, tail)),
            _ => Err(Error::new(
                ErrorKind::Corrupt,
                "channel",
                format!(
                    "impossible positions: head {head}, tail {tail}, capacity {}",
                    self.shape.capacity
                ),
            )),
        }
    }

    /// Moves `head` to `head` and wakes receivers that sleep or poll. The sequentially
    /// consistent exchange (one locked instruction on x86) orders the new head before the look
    /// at the sleepers, as the sleepers' counted increment orders theirs before their look at
    /// the head: one of the two always sees the other, without a separate fence.
    pub(super) fn publish_head(&self, head: u64, doorbell: Option<&OwnedFd>) {
        self.head.swap(head, Ordering::SeqCst);
        if self.rx_sleepers.load(Ordering::SeqCst) > 0 {
            self.rx_sequence.fetch_add(1, Ordering::Release);
            crate::sync::wake(self.rx_sequence, 1);
        }
        if let Some(doorbell) = doorbell
            && self.rx_pollers.load(Ordering::SeqCst) > 0
            && self.rx_pollers.swap(0, Ordering::AcqRel) > 0
        {
            ring(doorbell);
        }
    }

    /// Moves `tail` to `tail` and wakes senders that wait for room (see `publish_head`).
    pub(super) fn publish_tail(&self, tail: u64) {
        self.tail.swap(tail, Ordering::SeqCst);
        if self.tx_sleepers.load(Ordering::SeqCst) > 0 {
            self.tx_sequence.fetch_add(1, Ordering::Release);
            crate::sync::wake(self.tx_sequence, 1);
        }
    }

    /// Sleeps one slice as a receiver, unless `ready` turns true once counted as a sleeper.
    pub(super) fn sleep_as_receiver(
        &self,
        ready: impl FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        sleep(
            self.rx_sequence,
            self.rx_sleepers,
            ready,
            deadline,
            "receive",
        )
    }

    /// Sleeps one slice as a sender waiting for room.
    pub(super) fn sleep_as_sender(
        &self,
        ready: impl FnMut() -> Result<bool>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        sleep(self.tx_sequence, self.tx_sleepers, ready, deadline, "send")
    }

    /// Asks senders to ring the doorbell at their next message; sequentially consistent like
    /// `publish_head`, so the check of the queue that follows sees their message.
    pub(super) fn arm_pollers(&self) {
        self.rx_pollers.swap(1, Ordering::SeqCst);
    }

    /// Wakes everything: an endpoint left.
    pub(super) fn wake_everyone(&self, doorbell: Option<&OwnedFd>) {
        self.rx_sequence.fetch_add(1, Ordering::Release);
        self.tx_sequence.fetch_add(1, Ordering::Release);
        crate::sync::wake(self.rx_sequence, i32::MAX as u32);
        crate::sync::wake(self.tx_sequence, i32::MAX as u32);
        if let Some(doorbell) = doorbell {
            ring(doorbell);
        }
    }

    /// Address of the data area's first byte.
    pub(super) fn data(&self) -> *mut u8 {
        self.segment.payload_ptr().wrapping_add(DATA_OFFSET)
    }
}

fn sleep(
    sequence: &AtomicU32,
    sleepers: &AtomicU32,
    mut ready: impl FnMut() -> Result<bool>,
    deadline: Option<Instant>,
    operation: &'static str,
) -> Result<()> {
    let seen = sequence.load(Ordering::Acquire);
    sleepers.fetch_add(1, Ordering::SeqCst);
    let result = match ready() {
        Ok(false) => crate::sync::sleep(sequence, seen, deadline, POLL_SLICE, operation),
        Ok(true) => Ok(()),
        Err(error) => Err(error),
    };
    sleepers.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Makes the doorbell eventfd readable.
fn ring(doorbell: &OwnedFd) {
    // EAGAIN means the counter is saturated: it is readable anyway.
    match rustix::io::write(doorbell.as_fd(), &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => {}
        Err(_) => debug_assert!(false, "writing an eventfd failed"),
    }
}

/// Empties the doorbell after it polled readable.
pub(super) fn drain(doorbell: &OwnedFd) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(doorbell.as_fd(), &mut count);
}
