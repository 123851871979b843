//! The sending side of a [`ByteChannel`](super::ByteChannel).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{MESSAGE, RECORD_HEADER, SKIP, max_message, record_len};
use crate::channel::control::Control;
use crate::channel::endpoints::{self, Endpoint};
use crate::channel::{Parts, Side, Waiter, deadline, wait_for};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::copy_shared;

/// The sending side of a [`ByteChannel`](super::ByteChannel).
#[derive(Debug)]
pub struct ByteSender<'c> {
    control: Control<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    head: u64,
    tail_seen: u64,
}

impl<'c> ByteSender<'c> {
    pub(super) fn new(
        control: Control<'c>,
        endpoint: Endpoint<'c>,
        doorbell: Option<&'c OwnedFd>,
        head: u64,
        tail_seen: u64,
    ) -> ByteSender<'c> {
        ByteSender {
            control,
            endpoint,
            doorbell,
            head,
            tail_seen,
        }
    }

    fn capacity(&self) -> u64 {
        self.control.shape.capacity
    }

    /// Whether `needed` bytes are free, reading the receiver's position only when needed.
    fn has_room(&mut self, needed: u64) -> Result<bool> {
        if self.capacity() - (self.head - self.tail_seen) >= needed {
            return Ok(true);
        }
        let tail = self.control.tail.load(Ordering::SeqCst);
        self.control.segment.check()?;
        match self.head.checked_sub(tail) {
            Some(used) if used <= self.capacity() && tail.is_multiple_of(8) => {
                self.tail_seen = tail;
                Ok(self.capacity() - used >= needed)
            }
            _ => Err(Error::new(
                ErrorKind::Corrupt,
                "send",
                format!(
                    "the receiver's position {tail} is impossible (head {})",
                    self.head
                ),
            )),
        }
    }

    fn wait_for_room(
        &mut self,
        needed: u64,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<()> {
        wait_for(
            &mut RoomFor {
                sender: self,
                needed,
            },
            Side::Sender,
            deadline,
            operation,
        )
    }

    fn header_at(&self, position: u64) -> *mut [u32; 2] {
        let offset = (position % self.capacity()) as usize;
        self.control.data().wrapping_add(offset).cast()
    }

    /// Reserves room for a `len`-byte message (after a skip record if it would wrap) and
    /// returns where its payload goes; nothing is published but the skip.
    fn reserve(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
        wait: bool,
        operation: &'static str,
    ) -> Result<u64> {
        let len = len as u64;
        if len > max_message(self.capacity()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                operation,
                format!(
                    "a {len}-byte message exceeds this channel's maximum of {}",
                    max_message(self.capacity())
                ),
            ));
        }
        let record = record_len(len);
        let to_end = self.capacity() - self.head % self.capacity();
        if record > to_end {
            self.make_room(to_end, deadline, wait, operation)?;
            // SAFETY: the header lies in the data area (positions are 8-aligned, the data area
            // 64-aligned) and is ours until published.
            unsafe {
                self.header_at(self.head)
                    .write_volatile([to_end as u32, SKIP])
            };
            self.publish(to_end)?;
        }
        self.make_room(record, deadline, wait, operation)?;
        Ok(self.head)
    }

    fn make_room(
        &mut self,
        needed: u64,
        deadline: Option<Instant>,
        wait: bool,
        operation: &'static str,
    ) -> Result<()> {
        if wait {
            return self.wait_for_room(needed, deadline, operation);
        }
        if self.has_room(needed)? {
            return Ok(());
        }
        if self.endpoint.peer_gone()? {
            return Err(endpoints::disconnected(operation, &self.endpoint));
        }
        Err(Error::new(
            ErrorKind::WouldBlock,
            operation,
            "the channel is full",
        ))
    }

    fn publish(&mut self, bytes: u64) -> Result<()> {
        self.control.segment.check()?;
        self.head += bytes;
        self.control.publish_head(self.head, self.doorbell);
        Ok(())
    }

    fn payload_at(&self, position: u64) -> *mut u8 {
        self.header_at(position)
            .cast::<u8>()
            .wrapping_add(RECORD_HEADER as usize)
    }

    fn commit(&mut self, position: u64, len: usize) -> Result<()> {
        // SAFETY: as in `reserve`: the header lies in the data area and is ours until published.
        unsafe {
            self.header_at(position)
                .write_volatile([len as u32, MESSAGE])
        };
        self.publish(record_len(len as u64))
    }

    fn send_with(
        &mut self,
        data: &[u8],
        deadline: Option<Instant>,
        wait: bool,
        operation: &'static str,
    ) -> Result<()> {
        self.endpoint.attached_here(operation)?;
        self.control.segment.check()?;
        if self.endpoint.peer_detached()? {
            return Err(endpoints::disconnected(operation, &self.endpoint));
        }
        let position = self.reserve(data.len(), deadline, wait, operation)?;
        // SAFETY: the payload area of the reserved record holds `data.len()` bytes inside the
        // data area (the record fits before the end) and the receiver does not read it yet.
        unsafe {
            copy_shared(
                operation,
                self.payload_at(position),
                data.as_ptr(),
                data.len(),
                self.control.segment.faults(),
            )
        }?;
        self.commit(position, data.len())
    }

    /// Waits at most `timeout` until a receiver is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Sends `data`, waiting while the channel is full — as long as a receiver is attached.
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.send_with(data, None, true, "send")
    }

    /// Sends `data`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, data: &[u8], timeout: Duration) -> Result<()> {
        self.send_with(data, Some(deadline(timeout)), true, "send")
    }

    /// Sends `data` if there is room now; otherwise `WouldBlock` (or `Disconnected`).
    pub fn try_send(&mut self, data: &[u8]) -> Result<()> {
        self.send_with(data, None, false, "try_send")
    }

    /// Reserves a `len`-byte message if there is room now; otherwise `WouldBlock` (or
    /// `Disconnected`).
    pub fn try_loan(&mut self, len: usize) -> Result<LoanBytes<'_, 'c>> {
        self.loan_with(len, false, "try_loan")
    }

    /// Reserves a `len`-byte message to fill in place, waiting for room; publish it with
    /// [`LoanBytes::commit`].
    pub fn loan(&mut self, len: usize) -> Result<LoanBytes<'_, 'c>> {
        self.loan_with(len, true, "loan")
    }

    fn loan_with(
        &mut self,
        len: usize,
        wait: bool,
        operation: &'static str,
    ) -> Result<LoanBytes<'_, 'c>> {
        self.endpoint.attached_here(operation)?;
        self.control.segment.check()?;
        if self.endpoint.peer_detached()? {
            return Err(endpoints::disconnected(operation, &self.endpoint));
        }
        let position = self.reserve(len, None, wait, operation)?;
        Ok(LoanBytes {
            sender: self,
            position,
            len,
        })
    }
}

/// A reserved message of a [`ByteSender`]; see [`ByteSender::loan`].
#[derive(Debug)]
pub struct LoanBytes<'s, 'c> {
    sender: &'s mut ByteSender<'c>,
    position: u64,
    len: usize,
}

impl LoanBytes<'_, '_> {
    /// The message's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` into the message at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let fits = offset
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len);
        if !fits {
            return Err(Error::new(
                ErrorKind::OutOfBounds,
                "write_at",
                format!("the message is {} bytes", self.len),
            )
            .with_range(offset as u64, data.len() as u64));
        }
        let target = self.as_mut_ptr().wrapping_add(offset);
        let faults = self.sender.control.segment.faults();
        // SAFETY: the range lies inside the reserved payload, which nobody else reads yet.
        unsafe { copy_shared("write_at", target, data.as_ptr(), data.len(), faults) }
    }

    /// The payload's first byte, to fill through raw pointers.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.sender.payload_at(self.position)
    }

    /// Borrows the payload.
    ///
    /// # Safety
    /// The receiver follows the protocol: it does not write the reserved bytes (nor truncate
    /// the segment) while the borrow lives.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes from the payload's start lie in the data area; the caller
        // guarantees the peer leaves them alone.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.len) }
    }

    /// Publishes the message.
    pub fn commit(self) -> Result<()> {
        self.sender.commit(self.position, self.len)
    }
}

/// A sender waiting for `needed` bytes of room.
struct RoomFor<'s, 'c> {
    sender: &'s mut ByteSender<'c>,
    needed: u64,
}

impl<'c> Waiter<'c> for RoomFor<'_, 'c> {
    fn ready(&mut self) -> Result<bool> {
        self.sender.has_room(self.needed)
    }

    fn parts(&mut self) -> Parts<'_, 'c> {
        let sender = &mut *self.sender;
        Parts {
            control: sender.control,
            endpoint: &mut sender.endpoint,
            doorbell: sender.doorbell,
        }
    }
}
