//! [`MpmcChannel<T>`]: many producers and many consumers, in any processes.
//!
//! The ring is the one of [`Channel`](super::Channel); producers serialise on one robust
//! [`Mutex`] and consumers on another, so a producer and a consumer still run in parallel.
//! Each message is taken by exactly one consumer. A producer killed while holding its lock
//! leaves nothing half-published (the head moves only after the slot is written), so the next
//! producer simply takes the lock over. A consumer killed after reading a message but before
//! moving the tail leaves that message to the next consumer: under crashes delivery is at
//! least once, never lost.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::control::{CONSUMER_LOCK_OFFSET, Control, PRODUCER_LOCK_OFFSET};
use super::endpoints::{self, Endpoint, Patience, Role};
use super::{ChannelOptions, Handle, Kind, Place, Ring, deadline, timed_out};
use crate::error::{ErrorKind, Result};
use crate::shm::Segment;
use crate::sync::{LockError, Mutex, MutexGuard};

/// A multi-producer, multi-consumer channel of `T`. See the [module docs](crate::channel).
#[derive(Debug)]
pub struct MpmcChannel<T> {
    handle: Handle,
    _messages: PhantomData<fn(T) -> T>,
}

/// Places the two locks (the creator, before publishing the segment).
pub(super) fn init_locks(segment: &Segment) -> Result<()> {
    Mutex::init(segment, PRODUCER_LOCK_OFFSET, 0u64)?;
    Mutex::init(segment, CONSUMER_LOCK_OFFSET, 0u64)?;
    Ok(())
}

impl<T: bytemuck::Pod> MpmcChannel<T> {
    /// Creates the named channel `name`.
    pub fn create(name: &str, options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Mpmc, size_of::<T>(), align_of::<T>())?;
        Self::wrap(Handle::create(Place::Named(name), options, shape)?)
    }

    /// Creates an anonymous channel in a memfd.
    pub fn create_memfd(options: &ChannelOptions) -> Result<Self> {
        let shape = options.shape(Kind::Mpmc, size_of::<T>(), align_of::<T>())?;
        Self::wrap(Handle::create(Place::Memfd, options, shape)?)
    }

    /// Opens the named channel `name`.
    pub fn open(name: &str) -> Result<Self> {
        Self::wrap(Handle::open(name, Kind::Mpmc)?)
    }

    /// Adopts a channel segment received or inherited from another process.
    pub fn from_segment(segment: Segment, doorbell: Option<OwnedFd>) -> Result<Self> {
        Self::wrap(Handle::from_segment(segment, doorbell))
    }

    /// Receives a channel sent with [`send_over`](Self::send_over).
    pub fn receive_from(stream: &UnixStream) -> Result<Self> {
        Self::wrap(Handle::receive_from(stream, Kind::Mpmc)?)
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
        Self::wrap(Handle::from_inherited(variable, Kind::Mpmc)?)
    }

    fn wrap(handle: Handle) -> Result<Self> {
        handle.control(Kind::Mpmc, size_of::<T>(), align_of::<T>())?;
        Mutex::<u64>::open(&handle.segment, PRODUCER_LOCK_OFFSET)?;
        Mutex::<u64>::open(&handle.segment, CONSUMER_LOCK_OFFSET)?;
        Ok(MpmcChannel {
            handle,
            _messages: PhantomData,
        })
    }

    fn control(&self) -> Result<Control<'_>> {
        self.handle
            .control(Kind::Mpmc, size_of::<T>(), align_of::<T>())
    }

    /// The segment behind the channel.
    pub fn segment(&self) -> &Segment {
        &self.handle.segment
    }

    /// Attaches one more sender.
    pub fn sender(&self) -> Result<MpmcSender<'_, T>> {
        let control = self.control()?;
        self.handle.check_doorbell(&control)?;
        let doorbell = self.handle.doorbell.as_ref();
        Ok(MpmcSender {
            ring: Ring::new(control),
            lock: Mutex::open(&self.handle.segment, PRODUCER_LOCK_OFFSET)?,
            endpoint: endpoints::attach(&control, Role::Sender, false, doorbell)?,
            doorbell,
            _messages: PhantomData,
        })
    }

    /// Attaches one more receiver.
    pub fn receiver(&self) -> Result<MpmcReceiver<'_, T>> {
        let control = self.control()?;
        let doorbell = self.handle.doorbell.as_ref();
        Ok(MpmcReceiver {
            ring: Ring::new(control),
            lock: Mutex::open(&self.handle.segment, CONSUMER_LOCK_OFFSET)?,
            endpoint: endpoints::attach(&control, Role::Receiver, false, doorbell)?,
            _messages: PhantomData,
        })
    }
}

/// How long an operation may wait for its side's lock.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Not at all: a held lock means "would block".
    Never,
    /// Until the deadline (for ever with `None`).
    Until(Option<Instant>),
}

/// Locks one side's mutex (`None`: it is held and `wait` says not to wait); a dead previous
/// holder is harmless here (see the module docs).
fn lock<'m>(mutex: &'m Mutex<'m, u64>, wait: Wait) -> Result<Option<MutexGuard<'m, u64>>> {
    let result = match wait {
        Wait::Never => mutex.try_lock(),
        Wait::Until(Some(deadline)) => {
            mutex.lock_timeout(deadline.saturating_duration_since(Instant::now()))
        }
        Wait::Until(None) => mutex.lock(),
    };
    match result {
        Ok(guard) => Ok(Some(guard)),
        Err(LockError::OwnerDied(mut guard)) => {
            guard.mark_consistent();
            Ok(Some(guard))
        }
        Err(LockError::Failed(error)) if error.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(LockError::Failed(error)) => Err(error),
    }
}

/// The sending side of an [`MpmcChannel`].
#[derive(Debug)]
pub struct MpmcSender<'c, T> {
    ring: Ring<'c>,
    lock: Mutex<'c, u64>,
    endpoint: Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
    _messages: PhantomData<fn(T)>,
}

impl<T: bytemuck::Pod> MpmcSender<'_, T> {
    /// Sends `value` if there is room, under the producers' lock; returns whether it did.
    fn try_push(&mut self, value: &T, wait: Wait) -> Result<bool> {
        self.endpoint.attached_here("send")?;
        let Some(guard) = lock(&self.lock, wait)? else {
            return Ok(false);
        };
        let (head, tail) = self.ring.control.positions()?;
        if head - tail >= self.ring.capacity() {
            return Ok(false);
        }
        // SAFETY: the slot lies in the data area and is aligned for T; consumers do not read
        // it until the head moves past it, and the producers' lock makes it ours.
        unsafe { self.ring.slot::<T>(head).write_volatile(*value) };
        self.ring.control.segment.check()?;
        self.ring.control.publish_head(head + 1, self.doorbell);
        drop(guard);
        Ok(true)
    }

    fn send_until(
        &mut self,
        value: &T,
        deadline: Option<Instant>,
        operation: &'static str,
    ) -> Result<()> {
        let patience = Patience::new(deadline);
        loop {
            if self.try_push(value, Wait::Until(deadline))? {
                return Ok(());
            }
            if !patience.may_wait(self.endpoint.peer()?) {
                return Err(endpoints::disconnected(operation, &self.endpoint));
            }
            let control = self.ring.control;
            let room = || {
                control
                    .positions()
                    .map(|(head, tail)| head - tail < control.shape.capacity)
            };
            if !crate::sync::spin(|| room().unwrap_or(true)) {
                control
                    .sleep_as_sender(room, deadline)
                    .map_err(|error| match error.kind() {
                        ErrorKind::Timeout => timed_out(operation),
                        _ => error,
                    })?;
            }
        }
    }

    /// Sends `value`, waiting while the channel is full (only while a receiver is attached:
    /// see the [module docs](crate::channel#waiting-for-a-peer)).
    pub fn send(&mut self, value: &T) -> Result<()> {
        self.send_until(value, None, "send")
    }

    /// Waits at most `timeout` until a receiver is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Sends `value`, waiting at most `timeout`.
    pub fn send_timeout(&mut self, value: &T, timeout: Duration) -> Result<()> {
        self.send_until(value, Some(deadline(timeout)), "send")
    }

    /// Sends `value` if there is room now and no other producer holds the lock; otherwise
    /// `WouldBlock` (or `Disconnected`).
    pub fn try_send(&mut self, value: &T) -> Result<()> {
        if self.try_push(value, Wait::Never)? {
            return Ok(());
        }
        if self.endpoint.peer_gone()? {
            return Err(endpoints::disconnected("try_send", &self.endpoint));
        }
        Err(crate::Error::new(
            ErrorKind::WouldBlock,
            "try_send",
            "the channel is full",
        ))
    }
}

/// The receiving side of an [`MpmcChannel`].
#[derive(Debug)]
pub struct MpmcReceiver<'c, T> {
    ring: Ring<'c>,
    lock: Mutex<'c, u64>,
    endpoint: Endpoint<'c>,
    _messages: PhantomData<fn() -> T>,
}

impl<T: bytemuck::Pod> MpmcReceiver<'_, T> {
    /// Takes a message if there is one, under the consumers' lock.
    fn try_pop(&mut self, wait: Wait) -> Result<Option<T>> {
        self.endpoint.attached_here("receive")?;
        let Some(guard) = lock(&self.lock, wait)? else {
            return Ok(None);
        };
        let (head, tail) = self.ring.control.positions()?;
        if head == tail {
            return Ok(None);
        }
        // SAFETY: the slot lies in the data area and is aligned for T; it was published (head
        // read with Acquire) and the consumers' lock makes it ours to take.
        let value = unsafe { self.ring.slot::<T>(tail).read_volatile() };
        self.ring.control.segment.check()?;
        self.ring.control.publish_tail(tail + 1);
        drop(guard);
        Ok(Some(value))
    }

    fn recv_until(&mut self, deadline: Option<Instant>, operation: &'static str) -> Result<T> {
        let patience = Patience::new(deadline);
        loop {
            if let Some(value) = self.try_pop(Wait::Until(deadline))? {
                return Ok(value);
            }
            if !patience.may_wait(self.endpoint.peer()?) {
                return self
                    .try_pop(Wait::Until(deadline))?
                    .ok_or_else(|| endpoints::disconnected(operation, &self.endpoint));
            }
            let control = self.ring.control;
            let waiting = || control.positions().map(|(head, tail)| head > tail);
            if !crate::sync::spin(|| waiting().unwrap_or(true)) {
                control
                    .sleep_as_receiver(waiting, deadline)
                    .map_err(|error| match error.kind() {
                        ErrorKind::Timeout => timed_out(operation),
                        _ => error,
                    })?;
            }
        }
    }

    /// Takes a message, waiting as long as a sender is attached (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn recv(&mut self) -> Result<T> {
        self.recv_until(None, "recv")
    }

    /// Waits at most `timeout` until a sender is attached, or one has attached (and
    /// perhaps left again) since the call began (see the [module
    /// docs](crate::channel#waiting-for-a-peer)).
    pub fn wait_for_peer(&mut self, timeout: Duration) -> Result<()> {
        self.endpoint
            .wait_for_peer(deadline(timeout), "wait_for_peer")
    }

    /// Takes a message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.recv_until(Some(deadline(timeout)), "recv")
    }

    /// Takes a message if one is there; `Ok(None)` if not, `Disconnected` when there is none
    /// and every sender is gone.
    pub fn try_recv(&mut self) -> Result<Option<T>> {
        if let Some(value) = self.try_pop(Wait::Never)? {
            return Ok(Some(value));
        }
        if self.endpoint.peer_gone()? {
            return match self.try_pop(Wait::Never)? {
                Some(value) => Ok(Some(value)),
                None => Err(endpoints::disconnected("try_recv", &self.endpoint)),
            };
        }
        Ok(None)
    }
}
