//! Spin, then sleep on a futex: the one waiting strategy of this module.

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Errno};

/// Longest single futex sleep; waiters wake at least this often to check on their peers.
pub const POLL_SLICE: Duration = Duration::from_millis(10);

/// Busy iterations before yielding, and yields before sleeping.
const SPINS: u32 = 200;
const YIELDS: u32 = 20;

/// Spins until `done` returns true or the spin budget is spent; returns whether it did.
pub(crate) fn spin(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..SPINS {
        if done() {
            return true;
        }
        std::hint::spin_loop();
    }
    for _ in 0..YIELDS {
        if done() {
            return true;
        }
        std::thread::yield_now();
    }
    done()
}

/// Sleeps while `word` holds `expected`, for at most `slice` and never past `deadline`.
/// Returns `Timeout` once the deadline has passed; otherwise `Ok` after a wake-up, the slice's
/// end, a signal, or because the word had already changed.
pub(crate) fn sleep(
    word: &AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
    slice: Duration,
    operation: &'static str,
) -> Result<()> {
    let slice = match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    operation,
                    "the wait timed out",
                ));
            }
            left.min(slice)
        }
        None => slice,
    };
    match sys::futex_wait(word, expected, Some(slice)) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => Ok(()),
        Err(errno) => Err(Error::os(operation, errno)),
    }
}

/// Wakes up to `count` sleepers of `word`.
pub(crate) fn wake(word: &AtomicU32, count: u32) {
    // FUTEX_WAKE fails only for an invalid address, which a borrowed atomic cannot be.
    let _ = sys::futex_wake(word, count);
}

/// Waits until `take` succeeds: spin first, then sleep on `word` while it holds `idle` (the
/// value meaning "nothing to take"), counted in `sleepers` so that the waker knows to wake.
/// `take` is retried after every wake-up and at the end of every slice.
pub(crate) fn until_taken(
    word: &AtomicU32,
    idle: u32,
    sleepers: &AtomicU32,
    deadline: Option<Instant>,
    mut take: impl FnMut() -> Result<bool>,
) -> Result<()> {
    if spin(|| matches!(take(), Ok(true))) {
        return Ok(());
    }
    loop {
        if take()? {
            return Ok(());
        }
        sleepers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slept = sleep(word, idle, deadline, POLL_SLICE, "wait");
        sleepers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        slept?;
    }
}

/// The coarse monotonic clock: a read of the vDSO's last tick (a few nanoseconds, resolution
/// of a scheduler tick), cheap enough for a look on every message and fine enough for checks
/// made every few milliseconds.
pub(crate) fn coarse_now() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(now.tv_sec.unsigned_abs(), now.tv_nsec as u32)
}
