//! [`ByteChannel`]: a single-producer, single-consumer ring of variable-length byte messages.
//!
//! Positions count bytes. Each record starts on an 8-byte boundary with an 8-byte header,
//! `u32` length and `u32` kind (message or skip), followed by the payload padded to 8 bytes.
//! A message never wraps: when it does not fit before the end of the ring, the sender fills
//! the rest with a skip record and starts again at offset 0. Messages can therefore be up to
//! half the ring's capacity.
//!
//! The receiver checks every header against the ring before using it: a skip must reach
//! exactly to the end, a message must fit both in what was published and before the end, and
//! its length must not exceed the maximum. Anything else is `Corrupt`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::control::Control;
use super::endpoints::{self, Endpoint, Role};
use super::{ChannelOptions, Handle, Kind, PeerCheck, Place, deadline, timed_out};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::copy_shared;
use crate::shm::Segment;

const RECORD_HEADER: u64 = 8;
const MESSAGE: u32 = 1;
const SKIP: u32 = 2;

/// A single-producer, single-consumer channel of byte messages. See the
/// [module docs](super).
#[derive(Debug)]
pub struct ByteChannel {
    handle: Handle,
}

impl ByteChannel {
    /// Creates the named channel `name`; `options` give its capacity in bytes.
    pub fn create(name: &str, options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Bytes, 1, 1)?;
        Self::wrap(Handle::create(Place::Named(name), options, shape)?)
    }

    /// Creates an anonymous channel in a memfd.
    pub fn create_memfd(options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Bytes, 1, 1)?;
        Self::wrap(Handle::create(Place::Memfd, options, shape)?)
    }

    /// Opens the named channel `name`.
    pub fn open(name: &str) -> Result<Self> {
        Self::wrap(Handle::open(name, Kind::Bytes)?)
    }

    /// Adopts a channel segment received or inherited from another process.
    pub fn from_segment(segment: Segment, doorbell: Option<OwnedFd>) -> Result<Self> {
        Self::wrap(Handle::from_segment(segment, doorbell))
    }

    /// Receives a channel sent with [`send_over`](Self::send_over).
    pub fn receive_from(stream: &UnixStream) -> Result<Self> {
        Self::wrap(Handle::receive_from(stream, Kind::Bytes)?)
    }

    /// Sends the channel (segment and doorbell) over a Unix socket.
    pub fn send_over(&self, stream: &UnixStream) -> Result<()> {
        self.handle.send_over(stream)
    }

    fn wrap(handle: Handle) -> Result<Self> {
        handle.control(Kind::Bytes, 1, 1)?;
        Ok(ByteChannel { handle })
    }

    fn control(&self) -> Result<Control<'_>> {
        self.handle.control(Kind::Bytes, 1, 1)
    }

    /// The segment behind the channel.
    pub fn segment(&self) -> &Segment {
        &self.handle.segment
    }

    /// The longest message the channel carries: half its capacity, less a record header.
    pub fn max_message(&self) -> usize {
        self.control()
            .map_or(0, |control| max_message(control.shape.capacity) as usize)
    }

    /// Attaches the sending side.
    pub fn sender(&self) -> Result<ByteSender<'_>> {
        let control = self.control()?;
        self.handle.check_doorbell(&control)?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Sender, true, doorbell)?;
        let (head, tail) = control.positions()?;
        check_aligned(head, tail)?;
        Ok(ByteSender {
            control,
            endpoint,
            doorbell,
            head,
            tail_seen: tail,
            peer: PeerCheck::new(),
        })
    }

    /// Attaches the receiving side.
    pub fn receiver(&self) -> Result<ByteReceiver<'_>> {
        let control = self.control()?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Receiver, true, doorbell)?;
        let (head, tail) = control.positions()?;
        check_aligned(head, tail)?;
        Ok(ByteReceiver {
            control,
            endpoint,
            doorbell,
            tail,
            head_seen: head,
            peer: PeerCheck::new(),
        })
    }
}

fn max_message(capacity: u64) -> u64 {
    capacity / 2 - RECORD_HEADER
}

fn record_len(len: u64) -> u64 {
    RECORD_HEADER + len.next_multiple_of(8)
}

fn check_aligned(head: u64, tail: u64) -> Result<()> {
    if !head.is_multiple_of(8) || !tail.is_multiple_of(8) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            "attach",
            format!("byte positions {head} and {tail} are not 8-byte aligned"),
        ));
    }
    Ok(())
}

/// The sending side of a [`ByteChannel`].
#[derive(Debug)]
pub struct ByteSender<'c> {
    control: Control<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    head: u64,
    tail_seen: u64,
    peer: PeerCheck,
}

impl<'c> ByteSender<'c> {
    fn capacity(&self) -> u64 {
        self.control.shape.capacity
    }

    /// Whether `needed` bytes are free, reading the receiver's position only when needed.
    fn has_room(&mut self, needed: u64) -> Result<bool> {
        if self.capacity() - (self.head - self.tail_seen) >= needed {
            return Ok(true);
        }
        let tail = self.control.tail.load(Ordering::Acquire);
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
        if self.has_room(needed)? {
            return Ok(());
        }
        let mut failure = None;
        if crate::sync::spin(|| match self.has_room(needed) {
            Ok(room) => room,
            Err(error) => {
                failure = Some(error);
                true
            }
        }) {
            return failure.map_or(Ok(()), Err);
        }
        loop {
            if self.peer.gone(&self.control, &self.endpoint)? {
                return Err(endpoints::disconnected(operation, &self.endpoint));
            }
            let control = self.control;
            control
                .sleep_as_sender(|| self.has_room(needed), deadline)
                .map_err(|error| match error.kind() {
                    ErrorKind::Timeout => timed_out(operation),
                    _ => error,
                })?;
            control.segment.check()?;
            if self.has_room(needed)? {
                return Ok(());
            }
        }
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
        if self.peer.gone(&self.control, &self.endpoint)? {
            return Err(endpoints::disconnected(operation, &self.endpoint));
        }
        Err(Error::new(
            ErrorKind::WouldBlock,
            operation,
            "the channel is full",
        ))
    }

    fn publish(&mut self, bytes: u64) -> Result<()> {
        self.head += bytes;
        self.control.head.store(self.head, Ordering::Release);
        self.control.wake_receivers(self.doorbell, false);
        self.control.segment.check()
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
        if self.endpoint.peer_detached() {
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
            )
        }?;
        self.commit(position, data.len())
    }

    /// Sends `data`, waiting while the channel is full.
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

    /// Reserves a `len`-byte message to fill in place, waiting for room; publish it with
    /// [`LoanBytes::commit`].
    pub fn loan(&mut self, len: usize) -> Result<LoanBytes<'_, 'c>> {
        let position = self.reserve(len, None, true, "loan")?;
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
        // SAFETY: the range lies inside the reserved payload, which nobody else reads yet.
        unsafe { copy_shared("write_at", target, data.as_ptr(), data.len()) }
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

/// The receiving side of a [`ByteChannel`].
#[derive(Debug)]
pub struct ByteReceiver<'c> {
    control: Control<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    tail: u64,
    head_seen: u64,
    peer: PeerCheck,
}

impl<'c> ByteReceiver<'c> {
    fn capacity(&self) -> u64 {
        self.control.shape.capacity
    }

    fn published(&mut self) -> Result<u64> {
        if self.head_seen > self.tail {
            return Ok(self.head_seen - self.tail);
        }
        let head = self.control.head.load(Ordering::Acquire);
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
        self.tail += bytes;
        self.control.tail.store(self.tail, Ordering::Release);
        self.control.wake_senders(false);
        self.control.segment.check()
    }

    fn copy_out(&mut self, (offset, len): (usize, usize), buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        buf.reserve(len);
        let source = self.control.data().wrapping_add(offset);
        // SAFETY: the message lies in the data area (validated in `next_message`); `buf` has
        // room for `len` bytes, which the copy initialises before `set_len`.
        unsafe {
            copy_shared("receive", buf.as_mut_ptr(), source, len)?;
            buf.set_len(len);
        }
        self.advance(record_len(len as u64))
    }

    fn wait_for_message(
        &mut self,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<(usize, usize)> {
        if let Some(message) = self.next_message()? {
            return Ok(message);
        }
        let mut found = None;
        let mut failure = None;
        crate::sync::spin(|| match self.next_message() {
            Ok(message) => {
                found = message;
                found.is_some()
            }
            Err(error) => {
                failure = Some(error);
                true
            }
        });
        if let Some(error) = failure {
            return Err(error);
        }
        if let Some(message) = found {
            return Ok(message);
        }
        loop {
            if self.peer.gone(&self.control, &self.endpoint)? {
                return self
                    .next_message()?
                    .ok_or_else(|| endpoints::disconnected(operation, &self.endpoint));
            }
            let control = self.control;
            control
                .sleep_as_receiver(|| self.published().map(|bytes| bytes > 0), deadline)
                .map_err(|error| match error.kind() {
                    ErrorKind::Timeout => timed_out(operation),
                    _ => error,
                })?;
            control.segment.check()?;
            if let Some(message) = self.next_message()? {
                return Ok(message);
            }
        }
    }

    /// Receives the next message into `buf` (replacing its contents), waiting for it.
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
        let message = match self.next_message()? {
            Some(message) => message,
            None if self.peer.gone(&self.control, &self.endpoint)? => self
                .next_message()?
                .ok_or_else(|| endpoints::disconnected("try_recv", &self.endpoint))?,
            None => return Ok(None),
        };
        let mut buf = Vec::new();
        self.copy_out(message, &mut buf)?;
        Ok(Some(buf))
    }

    /// Waits for the next message and lends it in place; released when dropped.
    pub fn receive_in_place(&mut self) -> Result<ReceivedBytes<'_, 'c>> {
        let (offset, len) = self.wait_for_message(None, "receive_in_place")?;
        Ok(ReceivedBytes {
            receiver: self,
            offset,
            len,
        })
    }

    /// The doorbell to poll, for a pollable channel.
    pub fn pollable_fd(&self) -> Option<BorrowedFd<'_>> {
        self.doorbell.map(AsFd::as_fd)
    }

    /// Prepares to poll: `true` if messages already wait, `false` once the doorbell is armed.
    pub fn arm(&mut self) -> Result<bool> {
        let Some(doorbell) = self.doorbell else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "arm",
                "this channel has no doorbell",
            )
            .with_hint("create it with ChannelOptions::pollable(true)"));
        };
        super::control::drain(doorbell);
        if self.published()? > 0 {
            return Ok(true);
        }
        self.control.arm_pollers();
        if self.peer.gone(&self.control, &self.endpoint)? {
            return Ok(true);
        }
        Ok(self.published()? > 0)
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
        unsafe { copy_shared("copy_to", buf.as_mut_ptr(), self.as_ptr(), self.len) }
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
