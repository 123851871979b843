//! [`Event`]: a process-shared event (set / reset / wait), and [`PollableEvent`], the same
//! with an eventfd so that a waiter can use poll, select, epoll — or `async` with the `tokio`
//! feature.
//!
//! Layout: `u32` magic "EVT1", `u32` state (0 clear, 1 set), `u32` mode, `u32` sleepers.
//! A manual-reset event stays set until [`Event::reset`]; an auto-reset event lets exactly one
//! waiter through per [`Event::set`].
//!
//! The eventfd of a [`PollableEvent`] is a descriptor, not memory: the creator makes it and
//! hands it to the other processes with the segment (inherited across fork, or sent with
//! [`Segment::send`](crate::Segment::send) as an extra descriptor).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{find, place, wait};
use crate::error::{Error, ErrorKind, Result};
use crate::shm::Segment;
use crate::sys::{self, Errno};

const MAGIC: u32 = u32::from_le_bytes(*b"EVT1");
const WHAT: &str = "event";
const CLEAR: u32 = 0;
const SET: u32 = 1;

/// Whether a set event lets every waiter through until reset, or one waiter per set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// Stays set until reset.
    ManualReset,
    /// A waiter that sees the event set clears it.
    AutoReset,
}

/// A process-shared event, placed in a segment.
#[derive(Debug)]
pub struct Event<'s> {
    segment: &'s Segment,
    state: &'s AtomicU32,
    mode: EventMode,
    sleepers: &'s AtomicU32,
}

impl<'s> Event<'s> {
    /// Bytes an event takes.
    pub const SIZE: usize = 16;

    /// Places a new, clear event at payload `offset` (8-byte aligned).
    pub fn init(segment: &'s Segment, offset: usize, mode: EventMode) -> Result<Self> {
        let mode_word = match mode {
            EventMode::ManualReset => 0,
            EventMode::AutoReset => 1,
        };
        place(
            segment,
            offset,
            Self::SIZE,
            WHAT,
            MAGIC,
            &[(4, CLEAR), (8, mode_word), (12, 0)],
        )?;
        Self::open(segment, offset)
    }

    /// Opens the event placed at payload `offset`.
    pub fn open(segment: &'s Segment, offset: usize) -> Result<Self> {
        find(segment, offset, Self::SIZE, WHAT, MAGIC)?;
        let mode = match segment
            .atomic::<AtomicU32>(offset + 8)?
            .load(Ordering::Relaxed)
        {
            0 => EventMode::ManualReset,
            1 => EventMode::AutoReset,
            other => {
                segment.check()?;
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "open",
                    format!("event mode {other} is unknown"),
                )
                .with_offset(offset as u64));
            }
        };
        Ok(Event {
            segment,
            state: segment.atomic(offset + 4)?,
            mode,
            sleepers: segment.atomic(offset + 12)?,
        })
    }

    /// The event's mode.
    pub fn mode(&self) -> EventMode {
        self.mode
    }

    /// Sets the event, waking waiters (all of them for manual reset, one for auto reset).
    pub fn set(&self) -> Result<()> {
        self.state.store(SET, Ordering::Release);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let count = match self.mode {
                EventMode::ManualReset => i32::MAX as u32,
                EventMode::AutoReset => 1,
            };
            wait::wake(self.state, count);
        }
        self.segment.check()
    }

    /// Clears the event.
    pub fn reset(&self) -> Result<()> {
        self.state.store(CLEAR, Ordering::Release);
        self.segment.check()
    }

    /// Whether the event is set now.
    pub fn is_set(&self) -> bool {
        self.state.load(Ordering::Acquire) == SET
    }

    /// Passes if the event is set (clearing it for auto reset); never waits.
    pub fn try_wait(&self) -> Result<bool> {
        let state = self.state.load(Ordering::Acquire);
        if state > SET {
            self.segment.check()?;
            return Err(Error::new(
                ErrorKind::Corrupt,
                "wait",
                format!("event state {state} is unknown"),
            ));
        }
        let passed = match self.mode {
            EventMode::ManualReset => self.is_set(),
            EventMode::AutoReset => self
                .state
                .compare_exchange(SET, CLEAR, Ordering::Acquire, Ordering::Relaxed)
                .is_ok(),
        };
        self.segment.check().map(|()| passed)
    }

    /// Waits until the event is set.
    pub fn wait(&self) -> Result<()> {
        self.wait_until(None)
    }

    /// Waits at most `timeout` for the event (then `Timeout`).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait_until(Some(crate::deadline_after(timeout)))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<()> {
        wait::until_taken(self.state, CLEAR, self.sleepers, deadline, || {
            self.try_wait()
        })
    }
}

/// An [`Event`] whose waiters can also poll a descriptor: the eventfd becomes readable when
/// the event is set.
#[derive(Debug)]
pub struct PollableEvent<'s> {
    event: Event<'s>,
    eventfd: OwnedFd,
}

impl<'s> PollableEvent<'s> {
    /// Bytes a pollable event takes in the segment.
    pub const SIZE: usize = Event::SIZE;

    /// Places a new event at payload `offset` and creates its eventfd; pass
    /// [`eventfd`](Self::eventfd) to the processes that will [`open`](Self::open) it.
    pub fn init(segment: &'s Segment, offset: usize, mode: EventMode) -> Result<Self> {
        let event = Event::init(segment, offset, mode)?;
        let eventfd = sys::eventfd(0).map_err(|errno| Error::os("create event", errno))?;
        Ok(PollableEvent { event, eventfd })
    }

    /// Opens the event at payload `offset` with the eventfd its creator passed on.
    pub fn open(segment: &'s Segment, offset: usize, eventfd: OwnedFd) -> Result<Self> {
        Ok(PollableEvent {
            event: Event::open(segment, offset)?,
            eventfd,
        })
    }

    /// The eventfd, to pass on or to register with poll/epoll.
    pub fn eventfd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }

    /// Sets the event and makes the eventfd readable.
    pub fn set(&self) -> Result<()> {
        self.event.set()?;
        match rustix::io::write(&self.eventfd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(errno) => Err(Error::os("set event", errno)),
        }
    }

    /// Clears the event.
    pub fn reset(&self) -> Result<()> {
        self.event.reset()
    }

    /// After the eventfd polled readable: drains it and passes if the event is set (clearing
    /// it for auto reset).
    pub fn try_wait(&self) -> Result<bool> {
        self.drain()?;
        self.event.try_wait()
    }

    /// Waits (spin, then futex) until the event is set.
    pub fn wait(&self) -> Result<()> {
        self.event.wait()?;
        self.drain()
    }

    /// Waits at most `timeout` for the event.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.event.wait_timeout(timeout)?;
        self.drain()
    }

    /// Empties the eventfd, so that it polls readable again only at the next `set`.
    fn drain(&self) -> Result<()> {
        let mut count = [0u8; 8];
        match rustix::io::read(&self.eventfd, &mut count) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(errno) => Err(Error::os("wait", errno)),
        }
    }

    /// The event in the segment.
    pub fn event(&self) -> &Event<'s> {
        &self.event
    }

    /// Waits for the event without blocking the thread, on tokio's reactor.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&self) -> Result<()> {
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        let duplicate = self
            .eventfd
            .try_clone()
            .map_err(|error| Error::io("wait", &error))?;
        // SAFETY: an OwnedFd is a valid open descriptor, returns the same number for as long as
        // it lives, and the AsyncFd owns it until dropped at the end of this function.
        let registered = unsafe { AsyncFd::register_with_interest(duplicate, Interest::READABLE) }
            .map_err(|error| Error::io("wait", &error.into()))?;
        loop {
            if self.try_wait()? {
                return Ok(());
            }
            let mut ready = registered
                .readable()
                .await
                .map_err(|error| Error::io("wait", &error))?;
            ready.clear_ready();
        }
    }
}

impl AsFd for PollableEvent<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}
