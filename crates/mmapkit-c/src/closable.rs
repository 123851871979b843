//! `Closable`: a channel end that one thread may close while another waits in it, and the
//! sliced waits that make that work.
//!
//! An end is one party: calls on it take turns behind a lock. A call that waits holds the
//! lock for one slice of its wait at a time ([`SLICE`]), so `mmapkit_receiver_close` from
//! another thread raises a flag every later slice sees, waits for the slice in progress to
//! end, and detaches the end before it returns: the peer learns of it at once, and the
//! waiting call returns `MMAPKIT_EINVAL` ("closed").
//!
//! A child process that inherited the handle across `fork` is refused before the lock is
//! touched: the parent's threads may have held it at the fork, and the child would wait for
//! it forever (the library refuses the inherited end itself too, for the same ring).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mmapkit::channel::PEER_GRACE;
use mmapkit::shm::ProcessIdentity;
use mmapkit::{Error, ErrorKind, Result};

use crate::handles::Wait;
use crate::status::invalid;

/// The longest a waiting call holds an end's lock at a time.
const SLICE: Duration = Duration::from_millis(50);

/// An end (or any state) that calls use one at a time, until it is closed.
pub(crate) struct Closable<T> {
    state: Mutex<Option<T>>,
    closing: AtomicBool,
    /// The process that made it; a child that inherited the handle has another identity.
    owner: ProcessIdentity,
    kind: &'static str,
}

impl<T> Closable<T> {
    /// `kind` names the handle type in errors.
    pub(crate) fn new(value: T, kind: &'static str) -> Closable<T> {
        Closable {
            state: Mutex::new(Some(value)),
            closing: AtomicBool::new(false),
            owner: ProcessIdentity::current(),
            kind,
        }
    }

    fn refuse_inherited(&self, operation: &'static str) -> Result<()> {
        let me = ProcessIdentity::current();
        if me == self.owner {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            operation,
            format!(
                "this {} belongs to process {}; this process ({}) inherited it across fork",
                self.kind, self.owner.pid, me.pid
            ),
        ))
    }

    fn closed(&self, operation: &'static str) -> Error {
        invalid(operation, format!("the {} was closed", self.kind))
    }

    /// Runs `step` on the value alone: one call, or one slice of a wait.
    pub(crate) fn step<R>(
        &self,
        operation: &'static str,
        step: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        self.refuse_inherited(operation)?;
        if self.closing.load(Ordering::Acquire) {
            return Err(self.closed(operation));
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.as_mut() {
            Some(value) if !self.closing.load(Ordering::Acquire) => step(value),
            _ => Err(self.closed(operation)),
        }
    }

    /// Closes: later steps fail at once, the step in progress ends first, and the value is
    /// dropped before this returns. In a child that inherited the handle nothing waits: the
    /// value is the parent's (dropping the handle's last reference frees only memory).
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if ProcessIdentity::current() == self.owner {
            let taken = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(taken);
        }
    }
}

/// What one attempt of a sliced wait came to.
pub(crate) enum Attempt<T> {
    Done(T),
    /// The slice ran out.
    NotYet,
}

/// `Ok(NotYet)` for a timeout (a slice that ran out), the result otherwise.
pub(crate) fn unless_timeout<T>(result: Result<T>) -> Result<Attempt<T>> {
    match result {
        Ok(value) => Ok(Attempt::Done(value)),
        Err(error) if error.kind() == ErrorKind::Timeout => Ok(Attempt::NotYet),
        Err(error) => Err(error),
    }
}

/// Waits as `wait` says (not [`Wait::Try`], which callers handle in one step), in slices on
/// `end`: `attempt(value, slice)` waits at most `slice`. A wait without a timeout gives up
/// as the library's does, with `MMAPKIT_EDISCONNECTED`, once no peer attached within
/// [`PEER_GRACE`] (`peer_attached(value)` answers whether one is attached now).
pub(crate) fn sliced<T, R>(
    end: &Closable<T>,
    operation: &'static str,
    wait: Wait,
    mut attempt: impl FnMut(&mut T, Duration) -> Result<Attempt<R>>,
    mut peer_attached: impl FnMut(&mut T) -> Result<bool>,
) -> Result<R> {
    let started = Instant::now();
    let deadline = match wait {
        Wait::For(timeout) => started.checked_add(timeout),
        Wait::Forever | Wait::Try => None,
    };
    let forever = matches!(wait, Wait::Forever);
    loop {
        let slice = match deadline {
            None => SLICE,
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(SLICE),
        };
        let outcome = end.step(operation, |value| {
            if let Attempt::Done(done) = attempt(value, slice)? {
                return Ok(Some(done));
            }
            if forever && started.elapsed() >= PEER_GRACE && !peer_attached(value)? {
                return Err(Error::new(
                    ErrorKind::Disconnected,
                    operation,
                    format!("no peer attached within {} s", PEER_GRACE.as_secs_f64()),
                ));
            }
            Ok(None)
        })?;
        if let Some(done) = outcome {
            return Ok(done);
        }
        // Past the deadline the last attempt had a zero slice: a ready end was not missed.
        if slice.is_zero() {
            return Err(Error::new(
                ErrorKind::Timeout,
                operation,
                "the wait timed out",
            ));
        }
    }
}
