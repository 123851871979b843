//! Waiting in slices for a peer: the helpers `recv`/`send` and `wait_for_peer` share.
//!
//! A wait without a timeout gives up as the library's does once no peer attached within
//! [`PEER_GRACE`], and says why in the library's words where it can ("every sender of this
//! channel is gone" for a sender that was there and died, not "no peer attached").

use std::time::{Duration, Instant};

use mmapkit::channel::{ByteReceiver, PEER_GRACE};
use mmapkit::{Error, ErrorKind};
use pyo3::prelude::*;

use crate::closable::Closable;
use crate::errors::{IntoPy, to_py};
use crate::sync::next_slice;

/// Ends a wait without a timeout once no peer has attached within the grace period.
pub(crate) fn patience(
    timeout: Option<f64>,
    started: Instant,
    operation: &'static str,
    wait_for_peer: impl FnOnce(Duration) -> mmapkit::Result<()>,
) -> mmapkit::Result<()> {
    if timeout.is_some() || started.elapsed() < PEER_GRACE {
        return Ok(());
    }
    match wait_for_peer(Duration::ZERO) {
        Err(error) if error.kind() == ErrorKind::Timeout => Err(Error::new(
            ErrorKind::Disconnected,
            operation,
            format!("no peer attached within {} s", PEER_GRACE.as_secs_f64()),
        )),
        other => other,
    }
}

/// For [`patience`] on the receiving side: `Ok` when a sender is attached or a message
/// waits; the library's own `Disconnected` ("gone") when a sender was there and left, so
/// that the error says so instead of "no peer attached"; `Timeout` when none ever came.
pub(crate) fn sender_or_verdict(
    receiver: &mut ByteReceiver<'_>,
    wait: Duration,
) -> mmapkit::Result<()> {
    match receiver.wait_for_peer(wait) {
        Err(error) if error.kind() == ErrorKind::Timeout => {
            match receiver.try_receive_in_place()? {
                Some(message) => {
                    message.put_back();
                    Ok(())
                }
                None => Err(error),
            }
        }
        other => other,
    }
}

/// `Ok(None)` for a timeout (a slice that ran out), the result otherwise.
pub(crate) fn unless_timeout<T>(result: mmapkit::Result<T>) -> mmapkit::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == ErrorKind::Timeout => Ok(None),
        Err(error) => Err(error),
    }
}

pub(crate) fn timed_out(operation: &'static str) -> PyErr {
    to_py(Error::new(
        ErrorKind::Timeout,
        operation,
        "the wait timed out",
    ))
}

/// Waits for a peer in slices until `deadline`, checking for signals.
pub(crate) fn wait_for_peer<C: Send + Sync>(
    py: Python<'_>,
    endpoint: &Closable<C>,
    deadline: Option<Instant>,
    attempt: impl Fn(&mut C, Duration) -> mmapkit::Result<()> + Sync,
) -> PyResult<()> {
    loop {
        let slice = next_slice(deadline).unwrap_or(Duration::ZERO);
        let attached = endpoint.detached_mut(py, |cell| unless_timeout(attempt(cell, slice)))?;
        if attached.py()?.is_some() {
            return Ok(());
        }
        if slice.is_zero() {
            return Err(timed_out("wait_for_peer"));
        }
        py.check_signals()?;
    }
}
