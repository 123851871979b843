//! `mmapkit_channel_t` and its two ends: a channel of byte messages from one sender to one
//! receiver, in a segment of its own, between threads or processes.
//!
//! An end borrows its channel, so its handle keeps the channel (an `Arc`) next to it
//! (`self_cell`), behind a lock: an end is one party, and two threads calling on it take
//! turns.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use mmapkit::channel::{ByteChannel, ByteReceiver, ByteSender, ChannelOptions, ReceivedBytes};
use mmapkit::{Error, ErrorKind, Result};
use self_cell::self_cell;

use crate::closable::{Attempt, Closable, sliced, unless_waiting};
use crate::handles::{self, Wait, wait_of};
use crate::kept::{self, kept_type};
use crate::segment::lent_stream;
use crate::status::{MMAPKIT_OK, call, call_lean, invalid};

/// A byte channel (named, or a memfd passed to other processes). Safe to use from several
/// threads at once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_channel_t {
    _opaque: [u8; 0],
}

/// The sending end of a channel (one per channel at a time). Threads sharing it take turns.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_sender_t {
    _opaque: [u8; 0],
}

/// The receiving end of a channel (one per channel at a time). Threads sharing it take turns.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_receiver_t {
    _opaque: [u8; 0],
}

/// The channel has a doorbell descriptor for poll/epoll (`mmapkit_channel_doorbell_fd`).
pub const MMAPKIT_CHANNEL_POLLABLE: u32 = 1;

const CHANNEL: &str = "mmapkit_channel_t";
const SENDER: &str = "mmapkit_sender_t";
const RECEIVER: &str = "mmapkit_receiver_t";

self_cell!(
    struct SenderCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteSender,
    }
);

self_cell!(
    struct ReceiverCell {
        owner: Arc<ByteChannel>,
        #[covariant]
        dependent: ByteReceiver,
    }
);

/// An end, and the channel's largest message (looked up once: it reads the header).
struct SenderObject(Closable<SenderCell>, usize);
struct ReceiverObject(Closable<ReceiverCell>, usize);

kept_type!(SenderObject);
kept_type!(ReceiverObject);

/// Lets go of this thread's kept ends (in a child after fork, where they are the parent's).
pub(crate) fn release_kept_ends() {
    kept::release_all::<SenderObject>();
    kept::release_all::<ReceiverObject>();
}

fn channel(handle: *const mmapkit_channel_t) -> Result<Arc<ByteChannel>> {
    handles::get::<ByteChannel, _>(handle, CHANNEL)
}

fn options(capacity: usize, flags: u32) -> Result<ChannelOptions> {
    handles::check_flags("create channel", flags, MMAPKIT_CHANNEL_POLLABLE)?;
    if capacity == 0 {
        return Err(invalid(
            "create channel",
            "a channel of capacity 0 carries nothing",
        ));
    }
    let mut options = ChannelOptions::new(capacity);
    options.pollable(flags & MMAPKIT_CHANNEL_POLLABLE != 0);
    Ok(options)
}

/// Creates the named channel `name` with `capacity` bytes of ring. `MMAPKIT_EEXIST` if the
/// name is taken.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_create(
    name: *const c_char,
    capacity: usize,
    flags: u32,
    out: *mut *mut mmapkit_channel_t,
) -> c_int {
    call("mmapkit_channel_create", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let name = unsafe { handles::text(name, "name") }?;
        handles::hand_out(ByteChannel::create(name, &options(capacity, flags)?)?, out)
    })
}

/// Creates an anonymous channel (a memfd): shared with children forked later, or passed
/// with `mmapkit_channel_send_over`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_create_memfd(
    capacity: usize,
    flags: u32,
    out: *mut *mut mmapkit_channel_t,
) -> c_int {
    call("mmapkit_channel_create_memfd", || {
        handles::clear_out(out)?;
        handles::hand_out(ByteChannel::create_memfd(&options(capacity, flags)?)?, out)
    })
}

/// Opens the named channel `name`. A pollable channel opened by name has no doorbell (a
/// descriptor cannot travel by name): its receiver attaches but cannot poll, and its sender
/// cannot attach (`MMAPKIT_EUNSUPPORTED`), since the receiver would never hear it. Pass
/// pollable channels with `mmapkit_channel_send_over` or fork.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_open(
    name: *const c_char,
    out: *mut *mut mmapkit_channel_t,
) -> c_int {
    call("mmapkit_channel_open", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let name = unsafe { handles::text(name, "name") }?;
        handles::hand_out(ByteChannel::open(name)?, out)
    })
}

/// Sends the channel (its segment and doorbell) over the connected Unix socket `socket`.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_send_over(
    channel: *const mmapkit_channel_t,
    socket: c_int,
) -> c_int {
    call("mmapkit_channel_send_over", || {
        self::channel(channel)?.send_over(&*lent_stream(socket)?)?;
        Ok(MMAPKIT_OK)
    })
}

/// Receives a channel sent with `mmapkit_channel_send_over` on `socket`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_receive_from(
    socket: c_int,
    out: *mut *mut mmapkit_channel_t,
) -> c_int {
    call("mmapkit_channel_receive_from", || {
        handles::clear_out(out)?;
        handles::hand_out(ByteChannel::receive_from(&*lent_stream(socket)?)?, out)
    })
}

/// Removes a named channel's name; processes that have it open keep it.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_unlink(name: *const c_char) -> c_int {
    call("mmapkit_channel_unlink", || {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let name = unsafe { handles::text(name, "name") }?;
        mmapkit::shm::unlink(name)?;
        Ok(MMAPKIT_OK)
    })
}

/// The longest message the channel carries, in bytes.
///
/// # Safety
/// `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_max_message(
    channel: *const mmapkit_channel_t,
    len: *mut usize,
) -> c_int {
    call("mmapkit_channel_max_message", || {
        let max = self::channel(channel)?.max_message()?;
        handles::put(len, max)
    })
}

/// The doorbell descriptor of a pollable channel, readable when messages may be waiting:
/// poll it after `mmapkit_receiver_arm` answers 0. Owned by the handle (never close it).
/// `MMAPKIT_EUNSUPPORTED` for a channel created without `MMAPKIT_CHANNEL_POLLABLE`.
///
/// # Safety
/// `fd` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_doorbell_fd(
    channel: *const mmapkit_channel_t,
    fd: *mut c_int,
) -> c_int {
    call("mmapkit_channel_doorbell_fd", || {
        let channel = self::channel(channel)?;
        let doorbell = channel.doorbell().map(|fd| fd.as_raw_fd()).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "doorbell",
                "this handle has no doorbell: the channel was created without \
                 MMAPKIT_CHANNEL_POLLABLE, or opened by name (a doorbell reaches other \
                 processes only by fork or mmapkit_channel_send_over)",
            )
        })?;
        handles::put(fd, doorbell)
    })
}

/// Closes the handle; its sender and receiver keep the channel until they are closed. NULL
/// does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_close(channel: *mut mmapkit_channel_t) -> c_int {
    call("mmapkit_channel_close", || {
        handles::destroy::<ByteChannel, _>(channel, CHANNEL)
    })
}

/// Attaches this process as the channel's sender. `MMAPKIT_EEXIST` if a live sender is
/// attached already.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_sender(
    channel: *const mmapkit_channel_t,
    out: *mut *mut mmapkit_sender_t,
) -> c_int {
    call("mmapkit_channel_sender", || {
        handles::clear_out(out)?;
        let channel = self::channel(channel)?;
        let max = channel.max_message()?;
        let cell = SenderCell::try_new(channel, |channel| channel.sender())?;
        handles::hand_out(SenderObject(Closable::new(cell, SENDER), max), out)
    })
}

/// Sends the `len` bytes at `data` as one message, waiting up to `timeout_ms` for room
/// (negative: as long as a receiver is attached; 0: `MMAPKIT_EWOULDBLOCK` if full).
/// `MMAPKIT_EDISCONNECTED` once the receiver is gone.
///
/// # Safety
/// `data` is NULL or valid for `len` bytes (checked against the largest message first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_sender_send(
    sender: *const mmapkit_sender_t,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
) -> c_int {
    call_lean("mmapkit_sender_send", || {
        kept::with_kept(sender, SENDER, |object: &SenderObject| {
            let max = object.1;
            if len > max {
                return Err(invalid(
                    "send",
                    format!("the message is {len} bytes and the channel carries at most {max}"),
                ));
            }
            // SAFETY: the length is a message's; the caller's data holds `len` bytes.
            let data = unsafe { handles::bytes(data, len) }?;
            let wait = wait_of(timeout_ms);
            if let Wait::Try = wait {
                object.0.try_step("send", |cell| {
                    cell.with_dependent_mut(|_, sender| sender.try_send(data))
                })?;
                return Ok(MMAPKIT_OK);
            }
            sliced(
                &object.0,
                "send",
                wait,
                |cell, slice| {
                    cell.with_dependent_mut(|_, sender| {
                        unless_waiting(match slice.is_zero() {
                            true => sender.try_send(data),
                            false => sender.send_timeout(data, slice),
                        })
                    })
                },
                |cell| {
                    cell.with_dependent_mut(|_, sender| {
                        attached(sender.wait_for_peer(Duration::ZERO))
                    })
                },
            )?;
            Ok(MMAPKIT_OK)
        })
    })
}

/// Detaches the sender (the receiver then gets `MMAPKIT_EDISCONNECTED` after the last
/// message). NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_sender_close(sender: *mut mmapkit_sender_t) -> c_int {
    call("mmapkit_sender_close", || {
        handles::destroy_with(sender, SENDER, |object: &SenderObject| {
            kept::destroyed::<SenderObject>();
            object.0.close();
        })
    })
}

/// Attaches this process as the channel's receiver. `MMAPKIT_EEXIST` if a live receiver is
/// attached already.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_channel_receiver(
    channel: *const mmapkit_channel_t,
    out: *mut *mut mmapkit_receiver_t,
) -> c_int {
    call("mmapkit_channel_receiver", || {
        handles::clear_out(out)?;
        let channel = self::channel(channel)?;
        let max = channel.max_message()?;
        let cell = ReceiverCell::try_new(channel, |channel| channel.receiver())?;
        handles::hand_out(ReceiverObject(Closable::new(cell, RECEIVER), max), out)
    })
}

/// Receives the next message into `buf` (`capacity` bytes), waiting up to `timeout_ms`
/// (negative: as long as a sender is attached; 0: `MMAPKIT_EWOULDBLOCK` if none is there).
/// `*len` is the message's length. A message longer than `capacity` is not received:
/// `MMAPKIT_EOUTOFBOUNDS`, with `*len` its length, and the next call gets it again.
/// `MMAPKIT_EDISCONNECTED` once the sender is gone and every message was received.
///
/// # Safety
/// `buf` is NULL or valid for `capacity` bytes; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_receiver_recv(
    receiver: *const mmapkit_receiver_t,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    timeout_ms: i64,
) -> c_int {
    call_lean("mmapkit_receiver_recv", || {
        handles::nonnull(len, "len")?;
        kept::with_kept(receiver, RECEIVER, |object: &ReceiverObject| {
            let max = object.1;
            // SAFETY: the caller's buffer holds `capacity` bytes; no more than a message's
            // length of it is ever written.
            let buf = unsafe { handles::bytes_mut(buf, capacity.min(max)) }?;
            // A message that fits is copied out; one that does not stays, its size reported.
            let mut take =
                |message: ReceivedBytes<'_, '_>| -> Result<std::result::Result<usize, usize>> {
                    let size = message.len();
                    if size > buf.len() {
                        message.put_back();
                        return Ok(Err(size));
                    }
                    message.copy_to(&mut buf[..size])?;
                    Ok(Ok(size))
                };
            let wait = wait_of(timeout_ms);
            let received = match wait {
                Wait::Try => object.0.try_step("recv", |cell| {
                    cell.with_dependent_mut(|_, receiver| {
                        match receiver.try_receive_in_place()? {
                            Some(message) => take(message),
                            None => Err(Error::new(
                                ErrorKind::WouldBlock,
                                "recv",
                                "no message is waiting",
                            )),
                        }
                    })
                })?,
                _ => sliced(
                    &object.0,
                    "recv",
                    wait,
                    |cell, slice| {
                        cell.with_dependent_mut(|_, receiver| {
                            let received = match slice.is_zero() || arrives_soon(receiver)? {
                                true => receiver.try_receive_in_place(),
                                false => receiver.receive_in_place_timeout(slice).map(Some),
                            };
                            match unless_waiting(received)? {
                                Attempt::Done(Some(message)) => take(message).map(Attempt::Done),
                                Attempt::Done(None) | Attempt::NotYet => Ok(Attempt::NotYet),
                            }
                        })
                    },
                    |cell| cell.with_dependent_mut(|_, receiver| sender_or_verdict(receiver)),
                )?,
            };
            match received {
                Ok(size) => handles::put(len, size),
                Err(size) => {
                    handles::put(len, size)?;
                    Err(Error::new(
                        ErrorKind::OutOfBounds,
                        "recv",
                        format!(
                            "the message is {size} bytes and the buffer {capacity}; it stays for \
                         the next call"
                        ),
                    ))
                }
            }
        })
    })
}

/// Prepares to poll the doorbell: `*waiting` is 1 if messages already wait (receive them
/// first), 0 once the doorbell is armed (poll it, then receive).
///
/// # Safety
/// `waiting` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_receiver_arm(
    receiver: *const mmapkit_receiver_t,
    waiting: *mut c_int,
) -> c_int {
    call("mmapkit_receiver_arm", || {
        handles::nonnull(waiting, "waiting")?;
        let object = handles::get::<ReceiverObject, _>(receiver, RECEIVER)?;
        let ready = object.0.step("arm", |cell| {
            cell.with_dependent_mut(|_, receiver| receiver.arm())
        })?;
        handles::put(waiting, c_int::from(ready))
    })
}

/// Detaches the receiver (the sender then gets `MMAPKIT_EDISCONNECTED`). NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_receiver_close(receiver: *mut mmapkit_receiver_t) -> c_int {
    call("mmapkit_receiver_close", || {
        handles::destroy_with(receiver, RECEIVER, |object: &ReceiverObject| {
            kept::destroyed::<ReceiverObject>();
            object.0.close();
        })
    })
}

/// Whether a look for a peer without waiting found one.
fn attached(looked: Result<()>) -> Result<bool> {
    match looked {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::Timeout => Ok(false),
        Err(error) => Err(error),
    }
}

/// Spins briefly for a message before a timed wait, which reads the clock: a peer that
/// answers within a microsecond or two (a ping-pong) costs no clock read.
fn arrives_soon(receiver: &mut ByteReceiver<'_>) -> Result<bool> {
    for _ in 0..SPINS {
        if !receiver.is_empty()? {
            return Ok(true);
        }
        std::hint::spin_loop();
    }
    Ok(false)
}

/// Iterations of [`arrives_soon`]; about as many as the library spins before it sleeps.
const SPINS: usize = 200;

/// Whether a sender is attached, or a message waits; the library's own `Disconnected`
/// ("gone") when a sender was there and left, so that the error says so instead of "no peer
/// attached".
fn sender_or_verdict(receiver: &mut ByteReceiver<'_>) -> Result<bool> {
    if attached(receiver.wait_for_peer(Duration::ZERO))? {
        return Ok(true);
    }
    Ok(match receiver.try_receive_in_place()? {
        Some(message) => {
            message.put_back();
            true
        }
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use std::ptr::null_mut;

    use super::*;

    /// Strong references to the object behind `sender`, counted from outside the registry.
    fn references(sender: *const mmapkit_sender_t) -> usize {
        Arc::strong_count(&handles::get::<SenderObject, _>(sender, SENDER).expect("live")) - 1
    }

    /// Sends on `sender` from this thread, which then keeps it: one reference more.
    fn send_and_keep(sender: *const mmapkit_sender_t, only_the_registry: usize) {
        // SAFETY: a live handle and 4 bytes of data.
        let sent = unsafe { mmapkit_sender_send(sender, b"kept".as_ptr().cast(), 4, 0) };
        assert_eq!(sent, MMAPKIT_OK);
        let kept = references(sender);
        assert_eq!(kept, only_the_registry + 1, "kept by this thread");
    }

    #[test]
    fn ends_are_kept_by_the_threads_that_use_them_until_they_exit_or_close() {
        let (mut channel, mut sender) = (null_mut(), null_mut());
        // SAFETY: the out-pointers are writable; the data is 4 bytes.
        unsafe {
            assert_eq!(
                mmapkit_channel_create_memfd(4096, 0, &mut channel),
                MMAPKIT_OK
            );
            assert_eq!(mmapkit_channel_sender(channel, &mut sender), MMAPKIT_OK);
        }
        let only_the_registry = references(sender);
        let address = sender.addr();
        std::thread::spawn(move || {
            let sender = std::ptr::without_provenance::<mmapkit_sender_t>(address);
            send_and_keep(sender, only_the_registry);
        })
        .join()
        .expect("the thread ran");
        assert_eq!(
            references(sender),
            only_the_registry,
            "released at the thread's exit"
        );

        send_and_keep(sender, only_the_registry);
        let object = handles::get::<SenderObject, _>(sender, SENDER).expect("live");
        // SAFETY: live handles.
        unsafe {
            assert_eq!(mmapkit_sender_close(sender), MMAPKIT_OK);
            assert_eq!(mmapkit_channel_close(channel), MMAPKIT_OK);
        }
        assert_eq!(Arc::strong_count(&object), 1, "released by the close");
    }
}
