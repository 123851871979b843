//! `Closable`: a channel end that one thread may close while another waits in it, and the
//! sliced waits that make that work.
//!
//! An end is one party: calls on it take turns behind a lock. A call that waits holds the
//! lock for one slice of its wait at a time ([`SLICE`]), so `mmapkit_receiver_close` from
//! another thread raises a flag every later slice sees, waits for the slice in progress to
//! end, and detaches the end before it returns: the peer learns of it at once, and the
//! waiting call returns `MMAPKIT_EINVAL` ("closed"). A call's timeout covers its wait for
//! the lock too: it polls for the lock until its deadline, and a waiter whose slice ran out
//! lets a polling call in before it takes the lock again.
//!
//! A child process that inherited the handle across `fork` is refused before the lock is
//! touched: the parent's threads may have held it at the fork, and the child would wait for
//! it forever (the library refuses the inherited end itself too, for the same ring).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use mmapkit::channel::PEER_GRACE;
use mmapkit::shm::ProcessIdentity;
use mmapkit::{Error, ErrorKind, Result};

use crate::handles::Wait;
use crate::status::invalid;

/// The longest a waiting call holds an end's lock at a time.
const SLICE: Duration = Duration::from_millis(10);
/// How often a call polls for an end another thread holds.
const POLL: Duration = Duration::from_millis(1);

/// How long a call waits for an end another thread is using.
#[derive(Clone, Copy)]
enum LockWait {
    AsLongAsItTakes,
    Never,
    Until(Instant),
}

/// An end (or any state) that calls use one at a time, until it is closed.
pub(crate) struct Closable<T> {
    state: Mutex<Option<T>>,
    closing: AtomicBool,
    /// Calls polling for the lock (see [`sliced`]).
    polling: AtomicUsize,
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
            polling: AtomicUsize::new(0),
            owner: ProcessIdentity::current(),
            kind,
        }
    }

    /// Whether this process made it (a child that inherited the handle did not).
    pub(crate) fn belongs_here(&self) -> bool {
        ProcessIdentity::current() == self.owner
    }

    #[inline(always)]
    fn refuse_inherited(&self, operation: &'static str) -> Result<()> {
        let me = ProcessIdentity::current();
        if me == self.owner {
            return Ok(());
        }
        Err(self.inherited(operation, me))
    }

    #[cold]
    fn inherited(&self, operation: &'static str, me: ProcessIdentity) -> Error {
        Error::new(
            ErrorKind::InvalidInput,
            operation,
            format!(
                "this {} belongs to process {}; this process ({}) inherited it across fork",
                self.kind, self.owner.pid, me.pid
            ),
        )
    }

    fn closed(&self, operation: &'static str) -> Error {
        invalid(operation, format!("the {} was closed", self.kind))
    }

    /// Runs `step` on the value alone (one call, or one slice of a wait), waiting for the
    /// value as long as another thread's step lasts.
    pub(crate) fn step<R>(
        &self,
        operation: &'static str,
        step: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        self.step_until(operation, LockWait::AsLongAsItTakes, step)
    }

    /// Takes the lock, waiting for it as `patience` says.
    #[inline(always)]
    fn lock(
        &self,
        operation: &'static str,
        patience: LockWait,
    ) -> Result<MutexGuard<'_, Option<T>>> {
        match patience {
            LockWait::AsLongAsItTakes => {
                Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner))
            }
            LockWait::Never => self
                .try_lock()
                .ok_or_else(|| busy(operation, self.kind, true)),
            LockWait::Until(deadline) => self.poll_for_lock(operation, deadline),
        }
    }

    /// The lock, if no other thread holds it (a poisoned one too: a panic in a step leaves
    /// the end as the library left it).
    fn try_lock(&self) -> Option<MutexGuard<'_, Option<T>>> {
        match self.state.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// As [`step`](Self::step), without waiting for another thread's step
    /// (`WouldBlock`): for calls with a timeout of 0.
    pub(crate) fn try_step<R>(
        &self,
        operation: &'static str,
        step: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        self.step_until(operation, LockWait::Never, step)
    }

    /// As [`step`](Self::step), waiting for the value as [`lock`](Self::lock) says
    /// (`Timeout` when the deadline passes, `WouldBlock` when it may not wait at all).
    #[inline(always)]
    fn step_until<R>(
        &self,
        operation: &'static str,
        patience: LockWait,
        step: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        self.refuse_inherited(operation)?;
        if self.closing.load(Ordering::Acquire) {
            return Err(self.closed(operation));
        }
        let mut state = self.lock(operation, patience)?;
        match state.as_mut() {
            Some(value) if !self.closing.load(Ordering::Acquire) => step(value),
            _ => Err(self.closed(operation)),
        }
    }

    fn poll_for_lock(
        &self,
        operation: &'static str,
        deadline: Instant,
    ) -> Result<MutexGuard<'_, Option<T>>> {
        if let Some(guard) = self.try_lock() {
            return Ok(guard);
        }
        self.polling.fetch_add(1, Ordering::AcqRel);
        let taken = loop {
            if let Some(guard) = self.try_lock() {
                break Ok(guard);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(busy(operation, self.kind, false));
            }
            pause(POLL.min(deadline - now));
        };
        self.polling.fetch_sub(1, Ordering::AcqRel);
        taken
    }

    /// Closes: later steps fail at once, the step in progress ends first, and the value is
    /// dropped before this returns. In a child that inherited the handle nothing waits — a
    /// parent's thread may have held the lock at the fork, and then it stays held — but the
    /// value (the child's copy of the parent's end, with its channel's descriptor and
    /// mapping) is dropped when the lock is free: references to the object that the parent's
    /// other threads kept live on in the child, where nothing will ever let them go.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let taken = match self.belongs_here() {
            true => self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
            false => self.try_lock().and_then(|mut state| state.take()),
        };
        drop(taken);
    }
}

/// What one attempt of a sliced wait came to.
pub(crate) enum Attempt<T> {
    Done(T),
    /// The slice ran out.
    NotYet,
}

/// `Ok(NotYet)` for a slice that ran out (`Timeout`) or a try that found nothing to do
/// (`WouldBlock`), the result otherwise.
pub(crate) fn unless_waiting<T>(result: Result<T>) -> Result<Attempt<T>> {
    match result {
        Ok(value) => Ok(Attempt::Done(value)),
        Err(error) if matches!(error.kind(), ErrorKind::Timeout | ErrorKind::WouldBlock) => {
            Ok(Attempt::NotYet)
        }
        Err(error) => Err(error),
    }
}

/// The error of a call whose deadline passed while another thread used the end.
fn busy(operation: &'static str, kind: &str, at_once: bool) -> Error {
    let why = format!("another thread is using this {kind}");
    match at_once {
        true => Error::new(ErrorKind::WouldBlock, operation, why),
        false => Error::new(
            ErrorKind::Timeout,
            operation,
            format!("the wait timed out ({why})"),
        ),
    }
}

/// Waits as `wait` says, in slices on `end`: `attempt(value, slice)` waits at most `slice`,
/// and a zero slice only tries (the first attempt, which reads no clock, and the last one,
/// at the deadline). The deadline covers the wait for the end as well. A wait without a
/// timeout gives up as the library's does, with `MMAPKIT_EDISCONNECTED`, once no peer
/// attached within [`PEER_GRACE`] (`peer_attached(value)` answers whether one is attached
/// now).
// Inlined, as `step_until` is, for the reason `status::call` is.
#[inline(always)]
pub(crate) fn sliced<T, R>(
    end: &Closable<T>,
    operation: &'static str,
    wait: Wait,
    mut attempt: impl FnMut(&mut T, Duration) -> Result<Attempt<R>>,
    mut peer_attached: impl FnMut(&mut T) -> Result<bool>,
) -> Result<R> {
    let deadline = match wait {
        Wait::For(timeout) => Instant::now().checked_add(timeout),
        Wait::Try => Some(Instant::now()),
        Wait::Forever => None,
    };
    // A wait without a timeout counts its slices (each waited a whole SLICE) instead of
    // reading the clock: the grace period has passed after this many.
    let grace_slices = PEER_GRACE.as_millis() / SLICE.as_millis();
    let forever = matches!(wait, Wait::Forever);
    let mut slices = 0;
    loop {
        let patience = deadline.map_or(LockWait::AsLongAsItTakes, LockWait::Until);
        let outcome = end.step_until(operation, patience, |value| {
            // The slice is measured once the end is ours; past the deadline it is zero, so a
            // ready end is not reported as a timeout.
            let slice = match (slices, deadline) {
                (0, _) => Duration::ZERO,
                (_, None) => SLICE,
                (_, Some(deadline)) => deadline
                    .saturating_duration_since(Instant::now())
                    .min(SLICE),
            };
            if let Attempt::Done(done) = attempt(value, slice)? {
                return Ok(Ok(done));
            }
            slices += 1;
            if forever && slices > grace_slices && !peer_attached(value)? {
                return Err(Error::new(
                    ErrorKind::Disconnected,
                    operation,
                    format!("no peer attached within {} s", PEER_GRACE.as_secs_f64()),
                ));
            }
            Ok(Err(slice))
        })?;
        match outcome {
            Ok(done) => return Ok(done),
            Err(slice)
                if slice.is_zero()
                    && deadline.is_some_and(|deadline| Instant::now() >= deadline) =>
            {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    operation,
                    "the wait timed out",
                ));
            }
            // Let a call polling for the end in before taking it again.
            Err(_) if end.polling.load(Ordering::Acquire) > 0 => pause(POLL * 2),
            Err(_) => {}
        }
    }
}

/// Sleeps by the system call itself: libc's sleeps are thread cancellation points, which a
/// send or a receive must not reach (see `status::call_lean`).
fn pause(duration: Duration) {
    let request = rustix::time::Timespec {
        tv_sec: duration.as_secs() as i64,
        tv_nsec: i64::from(duration.subsec_nanos()),
    };
    let _ = rustix::thread::nanosleep(&request);
}
