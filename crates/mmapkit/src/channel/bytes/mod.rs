//! [`ByteChannel`]: a single-producer, single-consumer ring of variable-length byte messages.
//!
//! Positions count bytes. Each record starts on an 8-byte boundary with an 8-byte header,
//! `u32` length and `u32` kind (message or skip), followed by the payload padded to 8 bytes.
//! A message never wraps: when it does not fit before the end of the ring, the sender fills
//! the rest with a skip record and starts again at offset 0. Messages can therefore be up to
//! half the ring's capacity less an 8-byte record header ([`ByteChannel::max_message`]).
//!
//! The receiver checks every header against the ring before using it: a skip must reach
//! exactly to the end, a message must fit both in what was published and before the end, and
//! its length must not exceed the maximum. Anything else is `Corrupt`.

mod receive;
mod send;

pub use receive::{ByteReceiver, ReceivedBytes};
pub use send::{ByteSender, LoanBytes};

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::control::Control;
use super::endpoints::{self, Role};
use super::{ChannelOptions, Handle, Kind, Place};
use crate::error::{Error, ErrorKind, Result};
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

    /// Makes the channel (its segment, and its doorbell if it has one) survive exec into
    /// `command`'s child, named in the child's environment variable `variable` (and
    /// `{variable}_DOORBELL`); the child takes it with [`from_inherited`](Self::from_inherited).
    pub fn pass_to(&self, command: &mut std::process::Command, variable: &str) -> Result<()> {
        self.handle.pass_to(command, variable)
    }

    /// Takes the channel a parent passed with [`pass_to`](Self::pass_to) under `variable`.
    /// Descriptors that are not what the parent passed are refused and left alone.
    pub fn from_inherited(variable: &str) -> Result<Self> {
        Self::wrap(Handle::from_inherited(variable, Kind::Bytes)?)
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

    /// The doorbell eventfd of a pollable channel, for handing it to another process with
    /// the segment (the library's own passing does so already).
    pub fn doorbell(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.handle.doorbell.as_ref().map(AsFd::as_fd)
    }

    /// The longest message the channel carries: half its capacity, less a record header.
    /// Fails (`Truncated`, `Corrupt`) when the segment no longer holds a byte channel.
    pub fn max_message(&self) -> Result<usize> {
        Ok(max_message(self.control()?.shape.capacity) as usize)
    }

    /// Attaches the sending side.
    pub fn sender(&self) -> Result<ByteSender<'_>> {
        let control = self.control()?;
        self.handle.check_doorbell(&control)?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Sender, true, doorbell)?;
        let (head, tail) = control.positions()?;
        check_aligned(head, tail)?;
        Ok(ByteSender::new(control, endpoint, doorbell, head, tail))
    }

    /// Attaches the receiving side.
    pub fn receiver(&self) -> Result<ByteReceiver<'_>> {
        let control = self.control()?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Receiver, true, doorbell)?;
        let (head, tail) = control.positions()?;
        check_aligned(head, tail)?;
        Ok(ByteReceiver::new(control, endpoint, doorbell, tail, head))
    }
}

pub(super) fn max_message(capacity: u64) -> u64 {
    capacity / 2 - RECORD_HEADER
}

pub(super) fn record_len(len: u64) -> u64 {
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
