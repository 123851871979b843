//! [`Channel<T>`]: a lock-free single-producer, single-consumer ring of plain-old-data values.
//!
//! The ring has a power-of-two number of slots; `head` and `tail` count messages ever sent
//! and received, so `head - tail` is the fill level and `position % capacity` the slot. Each
//! side keeps the last value it saw of the other's position and reads the shared one only
//! when that copy says the ring is full (sender) or empty (receiver).

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::control::Control;
use super::endpoints::{self, Endpoint, Role};
use super::{ChannelOptions, Handle, Kind, Parts, Place, Ring, Side, Waiter, deadline, wait_for};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;

/// A single-producer, single-consumer channel of `T`. See the [module docs](super).
///
/// Messages are plain old data ([`bytemuck::Pod`]: no pointers, no padding), copied as
/// bytes. The crate re-exports bytemuck, derive included:
///
/// ```
/// # fn main() -> mmapkit::Result<()> {
/// use mmapkit::bytemuck::{Pod, Zeroable};
/// use mmapkit::channel::{Channel, ChannelOptions};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[bytemuck(crate = "mmapkit::bytemuck")]
/// #[repr(C)]
/// struct Tick {
///     price: u64,
///     quantity: u32,
///     venue: u32,
/// }
///
/// let channel = Channel::<Tick>::create_memfd(&ChannelOptions::new(1024))?;
/// let (mut sender, mut receiver) = (channel.sender()?, channel.receiver()?);
/// sender.send(&Tick { price: 101, quantity: 5, venue: 2 })?;
/// assert_eq!(receiver.recv()?.price, 101);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Channel<T> {
    handle: Handle,
    _messages: PhantomData<fn(T) -> T>,
}

impl<T: bytemuck::Pod> Channel<T> {
    /// Creates the named channel `name` (a segment in /dev/shm).
    pub fn create(name: &str, options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Spsc, size_of::<T>(), align_of::<T>())?;
        Self::wrap(Handle::create(Place::Named(name), options, shape)?)
    }

    /// Creates an anonymous channel in a memfd, to share by fork, exec or a Unix socket.
    pub fn create_memfd(options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Spsc, size_of::<T>(), align_of::<T>())?;
        Self::wrap(Handle::create(Place::Memfd, options, shape)?)
    }

    /// Opens the named channel `name`; its element type must have `T`'s size and alignment.
    pub fn open(name: &str) -> Result<Self> {
        Self::wrap(Handle::open(name, Kind::Spsc)?)
    }

    /// Adopts a channel segment received or inherited from another process.
    pub fn from_segment(segment: Segment, doorbell: Option<OwnedFd>) -> Result<Self> {
        Self::wrap(Handle::from_segment(segment, doorbell))
    }

    /// Receives a channel sent with [`send_over`](Self::send_over).
    pub fn receive_from(stream: &UnixStream) -> Result<Self> {
        Self::wrap(Handle::receive_from(stream, Kind::Spsc)?)
    }

    /// Sends the channel (its segment and doorbell) to another process over a Unix socket.
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
        Self::wrap(Handle::from_inherited(variable, Kind::Spsc)?)
    }

    fn wrap(handle: Handle) -> Result<Self> {
        handle.control(Kind::Spsc, size_of::<T>(), align_of::<T>())?;
        Ok(Channel {
            handle,
            _messages: PhantomData,
        })
    }

    fn control(&self) -> Result<Control<'_>> {
        self.handle
            .control(Kind::Spsc, size_of::<T>(), align_of::<T>())
    }

    /// The segment behind the channel.
    pub fn segment(&self) -> &Segment {
        &self.handle.segment
    }

    /// How many messages fit.
    pub fn capacity(&self) -> usize {
        self.control()
            .map_or(0, |control| control.shape.capacity as usize)
    }

    /// Attaches the sending side (one per channel; a dead one is taken over).
    pub fn sender(&self) -> Result<Sender<'_, T>> {
        let control = self.control()?;
        self.handle.check_doorbell(&control)?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Sender, true, doorbell)?;
        let (head, tail) = control.positions()?;
        Ok(Sender {
            ring: Ring::new(control),
            endpoint,
            doorbell,
            head,
            tail_seen: tail,
            _messages: PhantomData,
        })
    }

    /// Attaches the receiving side (one per channel; a dead one is taken over).
    pub fn receiver(&self) -> Result<Receiver<'_, T>> {
        let control = self.control()?;
        let doorbell = self.handle.doorbell.as_ref();
        let endpoint = endpoints::attach(&control, Role::Receiver, true, doorbell)?;
        let (head, tail) = control.positions()?;
        Ok(Receiver {
            ring: Ring::new(control),
            endpoint,
            doorbell,
            tail,
            head_seen: head,
            _messages: PhantomData,
        })
    }
}

/// The sending side of a [`Channel`].
#[derive(Debug)]
pub struct Sender<'c, T> {
    ring: Ring<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    head: u64,
    tail_seen: u64,
    _messages: PhantomData<fn(T)>,
}

impl<'c, T: bytemuck::Pod> Sender<'c, T> {
    /// Whether a slot is free, reading the receiver's position only when needed.
    fn has_room(&mut self) -> Result<bool> {
        if self.head - self.tail_seen < self.ring.capacity() {
            return Ok(true);
        }
        let tail = self.ring.control.tail.load(Ordering::SeqCst);
        self.ring.control.segment.check()?;
        match self.head.checked_sub(tail) {
            Some(used) if used <= self.ring.capacity() => {
                self.tail_seen = tail;
                Ok(used < self.ring.capacity())
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

    /// Waits for a free slot until `deadline`.
    fn wait_for_room(&mut self, deadline: Option<Instant>, operation: &'static str) -> Result<()> {
        wait_for(self, Side::Sender, deadline, operation)
    }

    fn publish(&mut self) -> Result<()> {
        self.publish_many(1)
    }

    /// Publishes the next `count` slots, written already, at once.
    fn publish_many(&mut self, count: u64) -> Result<()> {
        self.ring.control.segment.check()?;
        self.head += count;
        self.ring.control.publish_head(self.head, self.doorbell);
        Ok(())
    }

    fn write_slot(&mut self, value: &T) {
        self.write_slot_at(self.head, value);
    }

    fn write_slot_at(&mut self, position: u64, value: &T) {
        // SAFETY: the slot lies in the data area and is aligned for T (slot size is a
        // multiple of T's alignment, which is at most 64; the data area is 128-byte aligned);
        // the receiver does not read it until `publish`, and the shield keeps the page mapped.
        unsafe { self.ring.slot::<T>(position).write_volatile(*value) };
    }

    /// Fails unless this process attached the sender, the segment is whole and a receiver
    /// has not detached.
    fn check_can_send(&mut self, operation: &'static str) -> Result<()> {
        self.endpoint.attached_here(operation)?;
        self.ring.control.segment.check()?;
        match self.endpoint.peer_detached()? {
            true => Err(endpoints::disconnected(operation, &self.endpoint)),
            false => Ok(()),
        }
    }

    /// Waits at most `timeout` until a receiver is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Sends `value`, waiting while the channel is full — as long as a receiver is attached.
    pub fn send(&mut self, value: &T) -> Result<()> {
        self.check_can_send("send")?;
        self.wait_for_room(None, "send")?;
        self.write_slot(value);
        self.publish()
    }

    /// Sends `value`, waiting at most `timeout` for room.
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<()> {
        self.check_can_send("send")?;
        self.wait_for_room(Some(deadline(timeout)), "send")?;
        self.write_slot(value);
        self.publish()
    }

    /// Sends every value of `values` in order, waiting for room as needed, and publishes them
    /// in as few steps as the room allows: one shared-position update per batch instead of
    /// one per message, for streaming.
    pub fn send_batch(&mut self, values: &[T]) -> Result<()> {
        self.check_can_send("send_batch")?;
        let mut rest = values;
        while !rest.is_empty() {
            self.wait_for_room(None, "send_batch")?;
            let free = self.ring.capacity() - (self.head - self.tail_seen);
            let count = rest.len().min(free as usize);
            for (index, value) in rest[..count].iter().enumerate() {
                self.write_slot_at(self.head + index as u64, value);
            }
            self.publish_many(count as u64)?;
            rest = &rest[count..];
        }
        Ok(())
    }

    /// Sends `value` if there is room now; otherwise `WouldBlock`. `Disconnected` once the
    /// receiver has detached; a receiver whose process was killed is noticed when the ring
    /// fills (a full ring checks whether the receiver's process is alive).
    pub fn try_send(&mut self, value: &T) -> Result<()> {
        self.check_can_send("try_send")?;
        if !self.has_room()? {
            return Err(self.full_error("try_send")?);
        }
        self.write_slot(value);
        self.publish()
    }

    fn full_error(&mut self, operation: &'static str) -> Result<Error> {
        if self.endpoint.peer_gone()? {
            return Ok(endpoints::disconnected(operation, &self.endpoint));
        }
        Ok(Error::new(
            ErrorKind::WouldBlock,
            operation,
            "the channel is full",
        ))
    }

    /// Reserves the next slot, waiting for room: write the message in place, then
    /// [`commit`](Loan::commit). Dropping the loan uncommitted sends nothing.
    pub fn loan(&mut self) -> Result<Loan<'_, 'c, T>> {
        self.check_can_send("loan")?;
        self.wait_for_room(None, "loan")?;
        Ok(Loan { sender: self })
    }

    /// Reserves the next slot if there is room now; otherwise `WouldBlock`.
    pub fn try_loan(&mut self) -> Result<Loan<'_, 'c, T>> {
        self.check_can_send("try_loan")?;
        if !self.has_room()? {
            return Err(self.full_error("try_loan")?);
        }
        Ok(Loan { sender: self })
    }
}

/// A reserved slot of a [`Sender`]; see [`Sender::loan`].
#[derive(Debug)]
pub struct Loan<'s, 'c, T: bytemuck::Pod> {
    sender: &'s mut Sender<'c, T>,
}

impl<T: bytemuck::Pod> Loan<'_, '_, T> {
    /// Writes the message into the slot.
    pub fn write(&mut self, value: &T) {
        self.sender.write_slot(value);
    }

    /// The slot's address, to fill it field by field through raw pointers.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.sender.ring.slot(self.sender.head)
    }

    /// Borrows the slot (holding whatever an earlier message left there).
    ///
    /// # Safety
    /// The receiver follows the protocol: it does not write the slot (nor truncate the
    /// segment) while the loan lives.
    pub unsafe fn as_mut(&mut self) -> &mut T {
        // SAFETY: the slot lies in the data area, is aligned for T and holds a valid T (any
        // bit pattern is one); no other reference to it exists on our side, and the caller
        // guarantees the peer does not touch it.
        unsafe { &mut *self.as_mut_ptr() }
    }

    /// Publishes the message.
    pub fn commit(self) -> Result<()> {
        self.sender.publish()
    }
}

/// The receiving side of a [`Channel`].
#[derive(Debug)]
pub struct Receiver<'c, T> {
    ring: Ring<'c>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    tail: u64,
    head_seen: u64,
    _messages: PhantomData<fn() -> T>,
}

impl<'c, T: bytemuck::Pod> Receiver<'c, T> {
    /// Whether a message waits, reading the sender's position only when needed.
    fn available(&mut self) -> Result<bool> {
        self.endpoint.attached_here("receive")?;
        if self.head_seen > self.tail {
            return Ok(true);
        }
        let head = self.ring.control.head.load(Ordering::SeqCst);
        self.ring.control.segment.check()?;
        match head.checked_sub(self.tail) {
            Some(used) if used <= self.ring.capacity() => {
                self.head_seen = head;
                Ok(used > 0)
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

    fn release(&mut self) -> Result<()> {
        self.release_many(1)
    }

    /// Gives the next `count` slots, read already, back to the sender at once.
    fn release_many(&mut self, count: u64) -> Result<()> {
        self.ring.control.segment.check()?;
        self.tail += count;
        self.ring.control.publish_tail(self.tail);
        Ok(())
    }

    fn take(&mut self) -> Result<T> {
        // SAFETY: the slot lies in the data area and is aligned for T; the sender published
        // it (Acquire on head) and does not reuse it until `release`; any bits are a valid T.
        let value = unsafe { self.ring.slot::<T>(self.tail).read_volatile() };
        self.release()?;
        Ok(value)
    }

    /// Waits until a message is available or `deadline`; `Disconnected` when the queue is
    /// empty and every sender is gone.
    fn wait_for_message(
        &mut self,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<()> {
        wait_for(self, Side::Receiver, deadline, operation)
    }

    /// Takes the next message if one is there; `Ok(None)` if not, `Disconnected` if there is
    /// none and every sender is gone.
    pub fn try_recv(&mut self) -> Result<Option<T>> {
        if self.available()? {
            return self.take().map(Some);
        }
        if self.endpoint.peer_gone()? {
            // A last message may have been published just before the sender left.
            return match self.available()? {
                true => self.take().map(Some),
                false => Err(endpoints::disconnected("try_recv", &self.endpoint)),
            };
        }
        Ok(None)
    }

    /// Waits at most `timeout` until a sender is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Takes the next message, waiting as long as a sender is attached.
    pub fn recv(&mut self) -> Result<T> {
        self.wait_for_message(None, "recv")?;
        self.take()
    }

    /// Waits for at least one message, then appends every message waiting (at most `max`) to
    /// `out`, handing their slots back at once; returns how many it took. The receiving half
    /// of [`Sender::send_batch`].
    pub fn recv_batch(&mut self, out: &mut Vec<T>, max: usize) -> Result<usize> {
        self.wait_for_message(None, "recv_batch")?;
        let count = (self.head_seen - self.tail).min(max as u64);
        let before = out.len();
        out.reserve(count as usize);
        for index in 0..count {
            // SAFETY: as in `take`: these slots were published (the head was read with
            // SeqCst ordering) and stay ours until `release_many`.
            out.push(unsafe { self.ring.slot::<T>(self.tail + index).read_volatile() });
        }
        if let Err(error) = self.release_many(count) {
            out.truncate(before);
            return Err(error);
        }
        Ok(count as usize)
    }

    /// Takes the next message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.wait_for_message(Some(deadline(timeout)), "recv")?;
        self.take()
    }

    /// Waits for the next message and lends it in place; it is released when the
    /// [`Received`] is dropped.
    pub fn receive_in_place(&mut self) -> Result<Received<'_, 'c, T>> {
        self.wait_for_message(None, "receive_in_place")?;
        Ok(Received { receiver: self })
    }

    /// The doorbell to poll, for a pollable channel.
    pub fn pollable_fd(&self) -> Option<BorrowedFd<'_>> {
        self.doorbell.map(AsFd::as_fd)
    }

    /// Prepares to poll the doorbell: returns `true` if messages are already waiting (receive
    /// them instead of polling), `false` once the doorbell is armed and polling may begin.
    pub fn arm(&mut self) -> Result<bool> {
        super::arm(self)
    }

    /// Takes the next message without blocking the thread, on tokio's reactor (needs a
    /// pollable channel).
    #[cfg(feature = "tokio")]
    pub async fn recv_async(&mut self) -> Result<T> {
        super::recv_async(self).await
    }
}

/// A message lent in place by [`Receiver::receive_in_place`]; released on drop.
#[derive(Debug)]
pub struct Received<'r, 'c, T: bytemuck::Pod> {
    receiver: &'r mut Receiver<'c, T>,
}

impl<T: bytemuck::Pod> Received<'_, '_, T> {
    /// A copy of the message.
    pub fn read(&self) -> T {
        // SAFETY: as in `Receiver::take`; the slot stays ours until this value drops.
        unsafe { self.as_ptr().read_volatile() }
    }

    /// The message's address.
    pub fn as_ptr(&self) -> *const T {
        self.receiver.ring.slot(self.receiver.tail)
    }

    /// Borrows the message in place.
    ///
    /// # Safety
    /// The sender follows the protocol: it does not write a published slot (nor truncate the
    /// segment) while the borrow lives.
    pub unsafe fn get(&self) -> &T {
        // SAFETY: the slot lies in the data area, is aligned and holds a valid T; the caller
        // guarantees the sender does not change it meanwhile.
        unsafe { &*self.as_ptr() }
    }
}

impl<T: bytemuck::Pod> Drop for Received<'_, '_, T> {
    fn drop(&mut self) {
        // A truncated segment is reported by the next operation.
        let _ = self.receiver.release();
    }
}

impl<'c, T: bytemuck::Pod> Waiter<'c> for Sender<'c, T> {
    fn ready(&mut self) -> Result<bool> {
        self.has_room()
    }

    fn parts(&mut self) -> Parts<'_, 'c> {
        Parts {
            control: self.ring.control,
            endpoint: &mut self.endpoint,
            doorbell: self.doorbell,
        }
    }
}

impl<'c, T: bytemuck::Pod> Waiter<'c> for Receiver<'c, T> {
    fn ready(&mut self) -> Result<bool> {
        self.available()
    }

    fn parts(&mut self) -> Parts<'_, 'c> {
        Parts {
            control: self.ring.control,
            endpoint: &mut self.endpoint,
            doorbell: self.doorbell,
        }
    }
}

#[cfg(feature = "tokio")]
impl<'c, T: bytemuck::Pod> super::Polled<'c> for Receiver<'c, T> {
    type Message = T;

    fn try_recv(&mut self) -> Result<Option<T>> {
        Receiver::try_recv(self)
    }
}
