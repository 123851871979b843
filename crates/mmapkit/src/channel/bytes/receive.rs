//! The receiving side of a [`ByteChannel`](super::ByteChannel).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{MESSAGE, RECORD_HEADER, SKIP, max_message, record_len};
use crate::channel::control::Control;
use crate::channel::endpoints::{self, Endpoint};
use crate::channel::{Parts, Side, Waiter, deadline, wait_for};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::copy_shared;

/// The receiving side of a [`ByteChannel`](super::ByteChannel).
#[derive(Debug)]
pub struct ByteReceiver<'c> {
    control: Control<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    tail: u64,
    head_seen: u64,
}

impl<'c> ByteReceiver<'c> {
    pub(super) fn new(
        control: Control<'c>,
        endpoint: Endpoint<'c>,
        doorbell: Option<&'c OwnedFd>,
        tail: u64,
        head_seen: u64,
    ) -> ByteReceiver<'c> {
        ByteReceiver {
            control,
            endpoint,
            doorbell,
            tail,
            head_seen,
        }
    }

    fn capacity(&self) -> u64 {
        self.control.shape.capacity
    }

    fn published(&mut self) -> Result<u64> {
        self.endpoint.attached_here("receive")?;
        if self.head_seen > self.tail {
            return Ok(self.head_seen - self.tail);
        }
        let head = self.control.head.load(Ordering::SeqCst);
        self.control.segment.check()?;
        match head.checked_sub(self.tail) {
            Some(used) if used <= self.capacity() && head.is_multiple_of(8) => {
                self.head_seen = head;
                Ok(used)
            }
            _ => Err(Error::new(
                ErrorKind::Corrupt,
                "receive",
                format!(
                    "the sender's position {head} is impossible (tail {})",
                    self.tail
                ),
            )),
        }
    }

    /// The next message's payload offset in the data area and its length, skipping skip
    /// records; `None` when nothing is published. Every header is validated.
    fn next_message(&mut self) -> Result<Option<(usize, usize)>> {
        loop {
            let published = self.published()?;
            if published == 0 {
                return Ok(None);
            }
            let offset = self.tail % self.capacity();
            let to_end = self.capacity() - offset;
            // SAFETY: the header lies in the data area and was published (Acquire on head).
            let [len, kind] = unsafe {
                self.control
                    .data()
                    .wrapping_add(offset as usize)
                    .cast::<[u32; 2]>()
                    .read_volatile()
            };
            self.control.segment.check()?;
            let len = u64::from(len);
            match kind {
                SKIP if len == to_end && len <= published => {
                    self.advance(len)?;
                }
                MESSAGE
                    if len <= max_message(self.capacity())
                        && record_len(len) <= to_end.min(published) =>
                {
                    return Ok(Some(((offset + RECORD_HEADER) as usize, len as usize)));
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        "receive",
                        format!(
                            "record at {} has kind {kind} and length {len}: impossible here",
                            self.tail
                        ),
                    ));
                }
            }
        }
    }

    fn advance(&mut self, bytes: u64) -> Result<()> {
        self.control.segment.check()?;
        self.tail += bytes;
        self.control.publish_tail(self.tail);
        Ok(())
    }

    fn copy_out(&mut self, (offset, len): (usize, usize), buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.reserve(len);
        let source = self.control.data().wrapping_add(offset);
        // SAFETY: the message lies in the data area (validated in `next_message`); `buf` has
        // room for `len` bytes, which the copy initialises before `set_len`.
        unsafe {
            copy_shared(
                "receive",
                buf.as_mut_ptr(),
                source,
                len,
                self.control.segment.faults(),
            )?;
            buf.set_len(len);
        }
        self.advance(record_len(len as u64))
    }

    fn wait_for_message(
        &mut self,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<(usize, usize)> {
        wait_for(self, Side::Receiver, deadline, operation)?;
        self.next_message()?.ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                operation,
                "a published message vanished",
            )
        })
    }

    /// Waits at most `timeout` until a sender is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Receives the next message into `buf` (replacing its contents), waiting for it as long
    /// as a sender is attached.
    pub fn recv_into(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let message = self.wait_for_message(None, "recv")?;
        self.copy_out(message, buf)
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&mut self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.recv_into(&mut buf)?;
        Ok(buf)
    }

    /// Receives the next message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let message = self.wait_for_message(Some(deadline(timeout)), "recv")?;
        let mut buf = Vec::new();
        self.copy_out(message, &mut buf)?;
        Ok(buf)
    }

    /// Receives the next message if one is there; `Ok(None)` if not, `Disconnected` when
    /// there is none and the sender is gone.
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(message) = self.try_next("try_recv")? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        self.copy_out(message, &mut buf)?;
        Ok(Some(buf))
    }

    /// The next message if one is there, as [`try_recv`](Self::try_recv) decides.
    fn try_next(&mut self, operation: &'static str) -> Result<Option<(usize, usize)>> {
        match self.next_message()? {
            Some(message) => Ok(Some(message)),
            None if self.endpoint.peer_gone()? => self
                .next_message()?
                .ok_or_else(|| endpoints::disconnected(operation, &self.endpoint))
                .map(Some),
            None => Ok(None),
        }
    }

    /// Waits for the next message and lends it in place; released when dropped.
    pub fn receive_in_place(&mut self) -> Result<ReceivedBytes<'_, 'c>> {
        let message = self.wait_for_message(None, "receive_in_place")?;
        Ok(self.lend(message))
    }

    /// As [`receive_in_place`](Self::receive_in_place), waiting at most `timeout`.
    pub fn receive_in_place_timeout(&mut self, timeout: Duration) -> Result<ReceivedBytes<'_, 'c>> {
        let message = self.wait_for_message(Some(deadline(timeout)), "receive_in_place")?;
        Ok(self.lend(message))
    }

    /// Lends the next message in place if one is there, as [`try_recv`](Self::try_recv)
    /// decides.
    pub fn try_receive_in_place(&mut self) -> Result<Option<ReceivedBytes<'_, 'c>>> {
        let message = self.try_next("try_receive_in_place")?;
        Ok(message.map(|message| self.lend(message)))
    }

    fn lend(&mut self, (offset, len): (usize, usize)) -> ReceivedBytes<'_, 'c> {
        ReceivedBytes {
            receiver: self,
            offset,
            len,
        }
    }

    /// Whether no message waits now: a look at the ring, without waiting and without a look
    /// at the sender (for a caller that spins a little before a wait of its own).
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.next_message()?.is_none())
    }

    /// The doorbell to poll, for a pollable channel.
    pub fn pollable_fd(&self) -> Option<BorrowedFd<'_>> {
        self.doorbell.map(AsFd::as_fd)
    }

    /// Prepares to poll: `true` if messages already wait, `false` once the doorbell is armed.
    pub fn arm(&mut self) -> Result<bool> {
        crate::channel::arm(self)
    }
}

impl ByteReceiver<'_> {
    /// Receives the next message without blocking the thread, on tokio's reactor (needs a
    /// pollable channel).
    #[cfg(feature = "tokio")]
    pub async fn recv_async(&mut self) -> Result<Vec<u8>> {
        crate::channel::recv_async(self).await
    }
}

/// A message lent in place by [`ByteReceiver::receive_in_place`]; released on drop.
#[derive(Debug)]
pub struct ReceivedBytes<'r, 'c> {
    receiver: &'r mut ByteReceiver<'c>,
    offset: usize,
    len: usize,
}

impl ReceivedBytes<'_, '_> {
    /// The message's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the message into `buf`, which must be exactly as long.
    pub fn copy_to(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() != self.len {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "copy_to",
                format!(
                    "the buffer is {} bytes and the message {}",
                    buf.len(),
                    self.len
                ),
            ));
        }
        // SAFETY: the message lies in the data area and stays ours until this value drops.
        unsafe {
            copy_shared(
                "copy_to",
                buf.as_mut_ptr(),
                self.as_ptr(),
                self.len,
                self.receiver.control.segment.faults(),
            )
        }
    }

    /// [`copy_to`](Self::copy_to) into memory given by a pointer: for targets no Rust
    /// reference may be made to (a buffer of a foreign runtime that others may write).
    ///
    /// # Safety
    /// `target` is valid for writes of [`len`](Self::len) bytes, no Rust reference to those
    /// bytes is alive, and they do not overlap the channel's segment.
    pub unsafe fn copy_to_ptr(&self, target: *mut u8) -> Result<()> {
        // SAFETY: the message lies in the data area and stays ours until this value drops;
        // the target is the caller's promise.
        unsafe {
            copy_shared(
                "copy_to",
                target,
                self.as_ptr(),
                self.len,
                self.receiver.control.segment.faults(),
            )
        }
    }

    /// A copy of the message.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0; self.len];
        self.copy_to(&mut buf)?;
        Ok(buf)
    }

    /// The message's first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.receiver.control.data().wrapping_add(self.offset)
    }

    /// Leaves the message in the channel, unreceived: the next receive gets it again (for a
    /// caller whose buffer turned out too small).
    pub fn put_back(self) {
        std::mem::forget(self);
    }

    /// Borrows the message in place.
    ///
    /// # Safety
    /// The sender follows the protocol: it does not write published bytes (nor truncate the
    /// segment) while the borrow lives.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes at the message's offset lie in the data area; the caller
        // guarantees the peer leaves them alone.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

impl Drop for ReceivedBytes<'_, '_> {
    fn drop(&mut self) {
        // A truncated segment is reported by the next operation.
        let _ = self.receiver.advance(record_len(self.len as u64));
    }
}

impl<'c> Waiter<'c> for ByteReceiver<'c> {
    fn ready(&mut self) -> Result<bool> {
        self.next_message().map(|message| message.is_some())
    }

    fn parts(&mut self) -> Parts<'_, 'c> {
        Parts {
            control: self.control,
            endpoint: &mut self.endpoint,
            doorbell: self.doorbell,
        }
    }
}

#[cfg(feature = "tokio")]
impl<'c> crate::channel::Polled<'c> for ByteReceiver<'c> {
    type Message = Vec<u8>;

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>> {
        ByteReceiver::try_recv(self)
    }
}
