//! Queues in shared memory: each channel is a segment of its own.
//!
//! * [`Channel<T>`]: single producer, single consumer, fixed-size plain-old-data messages;
//!   zero-copy sending ([`Sender::loan`]: reserve a slot, write in place, commit) and receiving
//!   in place ([`Receiver::receive_in_place`]). Lock-free.
//! * [`ByteChannel`]: single producer, single consumer, variable-length byte messages.
//! * [`MpmcChannel<T>`]: many producers and many consumers (in any processes); each message is
//!   delivered once. Producers and consumers each serialise on a robust mutex.
//!
//! Every channel offers `try_recv` (never waits), blocking `recv` and `recv_timeout` (spin
//! briefly, then sleep on a futex), and backpressure: `send` waits while the queue is full,
//! `try_send` reports `WouldBlock`. When the other side is gone — dropped, or its process
//! killed — the waiting side gets [`Disconnected`](crate::ErrorKind::Disconnected) within a
//! sleep slice or two (about 10–20 ms), never a hang. Messages already queued are still
//! delivered before a receiver reports the disconnection.
//!
//! # Waiting for a peer
//! No call waits for a process that is not there. Whether the other side is there is decided
//! by facts a peer cannot forge — each endpoint holds a lock the kernel drops when its
//! process dies, and each endpoint watches the processes of the peers it verified (see
//! `liveness`) — not by the endpoint table in shared memory, which any process that may write
//! the segment can write. So:
//! * a call **without a deadline** (`send`, `recv`, `loan`, `recv_async`, …) waits as long
//!   as a verified peer is attached. While none has attached yet — a thread or child that has
//!   not called `sender()` yet, or one that died before it could — it waits [`PEER_GRACE`]
//!   (2 s) for one, then fails with `Disconnected`, saying that no peer attached;
//! * a call **with a deadline** (`send_timeout`, `recv_timeout`) waits for a peer that has
//!   not attached yet until its deadline;
//! * **`wait_for_peer(timeout)`**, on every endpoint, waits for the other side to attach for as
//!   long as you choose: the way to start when the peer may take longer than the grace
//!   period (a slow exec, a client that connects later).
//!
//! ```no_run
//! # fn main() -> mmapkit::Result<()> {
//! use mmapkit::channel::{Channel, ChannelOptions};
//! use std::time::Duration;
//! let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(64))?;
//! let mut receiver = channel.receiver()?;
//! // ... start a process that attaches `channel.sender()` and sends ...
//! receiver.wait_for_peer(Duration::from_secs(30))?; // Timeout if it never attaches
//! let first = receiver.recv()?;                     // Disconnected once it is gone
//! # let _ = first; Ok(()) }
//! ```
//!
//! A peer that stays attached and alive but never sends (or never makes room) keeps a call
//! without a deadline waiting, as any peer can: use the timeout variants with peers you do not
//! trust. Non-blocking calls (`try_recv`, `try_send`) report `Disconnected` once the peer they
//! had is gone, and `WouldBlock` or nothing while none has attached yet. An endpoint that
//! attaches after its peer died (a restart after a crash) has had that peer: it takes what the
//! peer left, is told it is gone, and waits for the next one with `wait_for_peer`.
//!
//! What this rests on, and its limits: every process using a channel must share a pid
//! namespace and see /proc (a peer elsewhere cannot be verified: calls that need one fail
//! instead of waiting). A peer of another user is verified by its record lock, which its
//! process loses for a while whenever it closes some descriptor of the segment's file that the
//! library did not open (the library takes the locks again after its own closes): in that
//! window the peer is *unconfirmed* and waits without a deadline give it only the grace
//! period. A process that may write the segment can keep a wait going for as long as a
//! verified peer's process lives, or turn waits into errors; one that may only read it can do
//! neither.
//!
//! **Polling.** A channel created with [`ChannelOptions::pollable`] carries an eventfd
//! *doorbell*: a receiver can wait for it with poll/epoll next to other descriptors (or with
//! `recv_async` under the `tokio` feature). The doorbell is a descriptor, so senders must get
//! the channel from its creator with it — by fork, exec, or [`Channel::send_over`] on a Unix
//! socket; a sender that opens a pollable channel by name is refused, since it could not ring.
//!
//! **Trust.** Positions, record headers and lengths written by the other side are validated
//! before use; impossible values are [`Corrupt`](crate::ErrorKind::Corrupt) errors, and no read
//! or write ever leaves the channel's data area. Message contents are copied out before they
//! are handed over, except through the explicitly `unsafe` in-place borrows, whose contract is
//! that the peer follows the protocol.

mod bytes;
mod control;
mod endpoints;
mod liveness;
mod mpmc;
mod spsc;

pub use bytes::{ByteChannel, ByteReceiver, ByteSender, LoanBytes, ReceivedBytes};
pub use mpmc::{MpmcChannel, MpmcReceiver, MpmcSender};
pub use spsc::{Channel, Loan, Received, Receiver, Sender};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::shm::{Segment, SegmentOptions};
use control::{Control, Shape, slot_size};
pub use endpoints::PEER_GRACE;
use endpoints::Patience;

/// The kinds of channel, as recorded in the control block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Spsc = 1,
    Bytes = 2,
    Mpmc = 3,
}

impl Kind {
    fn from_word(word: u32) -> Option<Kind> {
        match word {
            1 => Some(Kind::Spsc),
            2 => Some(Kind::Bytes),
            3 => Some(Kind::Mpmc),
            _ => None,
        }
    }

    fn type_tag(self) -> &'static str {
        match self {
            Kind::Spsc => "mmapkit/spsc",
            Kind::Bytes => "mmapkit/bytes",
            Kind::Mpmc => "mmapkit/mpmc",
        }
    }
}

/// How to create a channel.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    capacity: usize,
    pollable: bool,
    mode: u32,
}

impl ChannelOptions {
    /// A channel of `capacity` messages (typed channels) or bytes (byte channels), rounded up
    /// to a power of two.
    pub fn new(capacity: usize) -> ChannelOptions {
        ChannelOptions {
            capacity,
            pollable: false,
            mode: 0o600,
        }
    }

    /// Gives the channel a doorbell eventfd, so that receivers can poll it (see the
    /// [module docs](self)).
    pub fn pollable(&mut self, pollable: bool) -> &mut Self {
        self.pollable = pollable;
        self
    }

    /// Permission bits of a named channel's segment (default 0600).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    fn shape(&self, kind: Kind, element_size: usize, element_align: usize) -> Result<Shape> {
        let invalid =
            |message: String| Error::new(ErrorKind::InvalidInput, "create channel", message);
        if element_align > control::MAX_ALIGN {
            return Err(invalid(format!(
                "elements aligned to {element_align} bytes; slots are aligned to at most {}",
                control::MAX_ALIGN
            )));
        }
        let minimum = if kind == Kind::Bytes {
            control::MIN_BYTE_CAPACITY
        } else {
            1
        };
        let capacity = self
            .capacity
            .max(minimum as usize)
            .checked_next_power_of_two()
            .filter(|&capacity| {
                kind != Kind::Bytes || capacity as u64 <= control::MAX_BYTE_CAPACITY
            })
            .ok_or_else(|| invalid(format!("capacity {} is too large", self.capacity)))?;
        let element = |value: usize| {
            u32::try_from(value).map_err(|_| invalid("the element type is too large".into()))
        };
        Ok(Shape {
            kind,
            element_size: element(element_size)?,
            element_align: element(element_align)?,
            capacity: capacity as u64,
            pollable: self.pollable,
        })
    }
}

/// A channel's segment and, for pollable channels, its doorbell.
#[derive(Debug)]
struct Handle {
    segment: Segment,
    doorbell: Option<OwnedFd>,
}

/// Where a new channel lives.
enum Place<'a> {
    Named(&'a str),
    Memfd,
}

impl Handle {
    fn create(place: Place<'_>, options: &ChannelOptions, shape: Shape) -> Result<Handle> {
        let payload = shape.payload_len().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "create channel",
                "the capacity is too large",
            )
        })?;
        let mut segment_options = SegmentOptions::new(shape.kind.type_tag(), payload)?;
        segment_options.mode(options.mode);
        let init = |segment: &Segment| {
            Control::init(segment, shape)?;
            let control =
                Control::open(segment, shape.kind, shape.element_size, shape.element_align)?;
            endpoints::init(&control)?;
            if shape.kind == Kind::Mpmc {
                mpmc::init_locks(segment)?;
            }
            Ok(())
        };
        let segment = match place {
            Place::Named(name) => segment_options.create_with(name, init)?,
            Place::Memfd => segment_options.create_memfd_with(shape.kind.type_tag(), init)?,
        };
        let doorbell = match shape.pollable {
            true => {
                Some(crate::sys::eventfd(0).map_err(|errno| Error::os("create channel", errno))?)
            }
            false => None,
        };
        Ok(Handle { segment, doorbell })
    }

    fn open(name: &str, kind: Kind) -> Result<Handle> {
        let segment = SegmentOptions::new(kind.type_tag(), 0)?.open(name)?;
        Ok(Handle {
            segment,
            doorbell: None,
        })
    }

    fn from_segment(segment: Segment, doorbell: Option<OwnedFd>) -> Handle {
        Handle { segment, doorbell }
    }

    fn receive_from(stream: &UnixStream, kind: Kind) -> Result<Handle> {
        let (segment, mut extra) = SegmentOptions::new(kind.type_tag(), 0)?.receive(stream)?;
        Ok(Handle {
            segment,
            doorbell: extra.pop(),
        })
    }

    fn send_over(&self, stream: &UnixStream) -> Result<()> {
        let extra: Vec<BorrowedFd<'_>> = self.doorbell.iter().map(AsFd::as_fd).collect();
        self.segment.send(stream, &extra)
    }

    /// Passes the segment (`$variable`) and the doorbell, if any (`${variable}_DOORBELL`),
    /// into `command`'s child across exec.
    fn pass_to(&self, command: &mut Command, variable: &str) -> Result<()> {
        self.segment.pass_to(command, variable)?;
        let Some(doorbell) = &self.doorbell else {
            command.env_remove(doorbell_variable(variable));
            return Ok(());
        };
        let duplicate = crate::sys::fcntl_dupfd_cloexec(doorbell.as_fd(), 3)
            .map_err(|errno| Error::os("pass channel", errno))?;
        command.env(
            doorbell_variable(variable),
            duplicate.as_raw_fd().to_string(),
        );
        // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
        // which is async-signal-safe; it owns the duplicate, open until the command is gone.
        unsafe {
            command.pre_exec(move || {
                crate::sys::fcntl_set_cloexec(duplicate.as_fd(), false)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(())
    }

    /// Takes a channel a parent passed with `pass_to`.
    fn from_inherited(variable: &str, kind: Kind) -> Result<Handle> {
        let segment = SegmentOptions::new(kind.type_tag(), 0)?.from_inherited(variable)?;
        let doorbell = inherited_doorbell(&doorbell_variable(variable))?;
        Ok(Handle { segment, doorbell })
    }

    fn control(
        &self,
        kind: Kind,
        element_size: usize,
        element_align: usize,
    ) -> Result<Control<'_>> {
        let size = u32::try_from(element_size).unwrap_or(u32::MAX);
        let align = u32::try_from(element_align).unwrap_or(u32::MAX);
        Control::open(&self.segment, kind, size, align)
    }

    /// Refuses a sender that could not ring a pollable channel's doorbell.
    fn check_doorbell(&self, control: &Control<'_>) -> Result<()> {
        if control.shape.pollable && self.doorbell.is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "attach sender",
                "this channel is pollable, and this handle has no doorbell to ring",
            )
            .with_hint(
                "get the channel from its creator (fork, exec or receive_from) instead of by name",
            ));
        }
        Ok(())
    }
}

/// The variable naming a passed channel's doorbell.
fn doorbell_variable(variable: &str) -> String {
    format!("{variable}_DOORBELL")
}

/// The doorbell a parent passed under `variable`, if it passed one: taken only once it is
/// shown to be an inherited eventfd (open, close-on-exec clear, `anon_inode:[eventfd]`), so a
/// number that names anything else is left alone.
fn inherited_doorbell(variable: &str) -> Result<Option<OwnedFd>> {
    use std::os::fd::{FromRawFd, RawFd};
    let Ok(text) = std::env::var(variable) else {
        return Ok(None);
    };
    let refused = |why: String| {
        Error::new(
            ErrorKind::InvalidInput,
            "inherit channel",
            format!("${variable}={text:?}: {why}"),
        )
    };
    let raw: RawFd = Some(&text)
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .filter(|&raw| raw > 2)
        .ok_or_else(|| refused("not a descriptor number above the standard streams".into()))?;
    match crate::sys::fcntl_getfd_raw(raw) {
        Ok(flags) if !flags.contains(rustix::io::FdFlags::CLOEXEC) => {}
        Ok(_) => return Err(refused("close-on-exec: not inherited, left alone".into())),
        Err(_) => return Err(refused("not open".into())),
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(refused(format!("it is {}, not an eventfd", link.display())));
    }
    // SAFETY: the number was inherited across exec (FD_CLOEXEC clear) and is an eventfd, as
    // `pass_to` leaves the doorbell; it becomes this handle's, and close-on-exec again.
    let doorbell = unsafe { OwnedFd::from_raw_fd(raw) };
    crate::sys::fcntl_set_cloexec(doorbell.as_fd(), true)
        .map_err(|errno| Error::os("inherit channel", errno))?;
    Ok(Some(doorbell))
}

/// The ring's geometry.
#[derive(Debug, Clone, Copy)]
struct Ring<'c> {
    control: Control<'c>,
    mask: u64,
    slot_size: usize,
}

impl<'c> Ring<'c> {
    fn new(control: Control<'c>) -> Ring<'c> {
        let shape = control.shape;
        Ring {
            control,
            mask: shape.capacity - 1,
            slot_size: slot_size(shape.element_size as usize, shape.element_align as usize),
        }
    }

    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The slot of `position`; always inside the data area (`Control::open` checked its size).
    fn slot<T>(&self, position: u64) -> *mut T {
        let index = (position & self.mask) as usize;
        self.control
            .data()
            .wrapping_add(index * self.slot_size)
            .cast()
    }
}

/// Which side of a channel waits: a sender for room, a receiver for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Sender,
    Receiver,
}

/// The pieces of an endpoint that waiting and polling need.
struct Parts<'a, 'c> {
    control: Control<'c>,
    endpoint: &'a mut endpoints::Endpoint<'c>,
    doorbell: Option<&'c OwnedFd>,
}

/// An endpoint waiting for its condition (room to send, or a message to receive).
trait Waiter<'c> {
    /// Whether the condition holds now.
    fn ready(&mut self) -> Result<bool>;
    /// The endpoint's pieces.
    fn parts(&mut self) -> Parts<'_, 'c>;
}

/// A receiving endpoint awaited on tokio's reactor.
#[cfg(feature = "tokio")]
trait Polled<'c>: Waiter<'c> {
    type Message;
    fn try_recv(&mut self) -> Result<Option<Self::Message>>;
}

/// Waits until `waiter` is ready: a spin, then sleeps of one slice each until the condition
/// holds, the deadline passes (`Timeout`) or the peer is gone (`Disconnected` — a receiver
/// first takes what the peer left in the queue).
fn wait_for<'c>(
    waiter: &mut impl Waiter<'c>,
    side: Side,
    deadline: Option<Instant>,
    operation: &'static str,
) -> Result<()> {
    if waiter.ready()? {
        return Ok(());
    }
    let mut failure = None;
    if crate::sync::spin(|| match waiter.ready() {
        Ok(ready) => ready,
        Err(error) => {
            failure = Some(error);
            true
        }
    }) {
        return failure.map_or(Ok(()), Err);
    }
    let control = waiter.parts().control;
    let patience = Patience::new(deadline);
    loop {
        if !patience.may_wait(waiter.parts().endpoint.peer()?) {
            return match side == Side::Receiver && waiter.ready()? {
                true => Ok(()),
                false => Err(endpoints::disconnected(operation, waiter.parts().endpoint)),
            };
        }
        let slept = match side {
            Side::Sender => control.sleep_as_sender(|| waiter.ready(), deadline),
            Side::Receiver => control.sleep_as_receiver(|| waiter.ready(), deadline),
        };
        slept.map_err(|error| match error.kind() {
            ErrorKind::Timeout => timed_out(operation),
            _ => error,
        })?;
        control.segment.check()?;
        if waiter.ready()? {
            return Ok(());
        }
    }
}

/// Prepares a receiver to poll its doorbell: `true` if messages already wait (or the sender
/// is gone, which the next receive reports), `false` once the doorbell is armed.
fn arm<'c>(receiver: &mut impl Waiter<'c>) -> Result<bool> {
    let Some(doorbell) = receiver.parts().doorbell else {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "arm",
            "this channel has no doorbell",
        )
        .with_hint("create it with ChannelOptions::pollable(true)"));
    };
    control::drain(doorbell);
    if receiver.ready()? {
        return Ok(true);
    }
    receiver.parts().control.arm_pollers();
    if receiver.parts().endpoint.peer_gone()? {
        return Ok(true);
    }
    receiver.ready()
}

/// Receives on tokio's reactor: waits for the doorbell instead of blocking the thread.
#[cfg(feature = "tokio")]
async fn recv_async<'c, R: Polled<'c>>(receiver: &mut R) -> Result<R::Message> {
    let doorbell = match receiver.parts().doorbell {
        Some(doorbell) => AsyncDoorbell::new(doorbell)?,
        None => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "recv_async",
                "this channel has no doorbell",
            ));
        }
    };
    // Like `recv`, this waits without a deadline: while a verified sender is there, or for a
    // sender to attach for the grace period.
    let patience = Patience::new(None);
    loop {
        let received = receiver
            .try_recv()
            .map_err(|error| error.with_operation("recv_async"))?;
        if let Some(message) = received {
            return Ok(message);
        }
        if !patience.may_wait(receiver.parts().endpoint.peer()?) {
            return Err(endpoints::disconnected(
                "recv_async",
                receiver.parts().endpoint,
            ));
        }
        if !arm(receiver)? {
            doorbell.ready().await?;
        }
    }
}

/// The deadline `timeout` from now.
fn deadline(timeout: Duration) -> Instant {
    crate::deadline_after(timeout)
}

fn timed_out(operation: &'static str) -> Error {
    Error::new(ErrorKind::Timeout, operation, "the wait timed out")
}

/// A doorbell registered with tokio's reactor.
#[cfg(feature = "tokio")]
struct AsyncDoorbell {
    registered: tokio::io::unix::AsyncFd<OwnedFd>,
}

#[cfg(feature = "tokio")]
impl AsyncDoorbell {
    fn new(doorbell: &OwnedFd) -> Result<AsyncDoorbell> {
        use tokio::io::Interest;
        let duplicate = doorbell
            .try_clone()
            .map_err(|error| Error::io("recv_async", &error))?;
        // SAFETY: an OwnedFd is a valid open descriptor that returns the same number for as
        // long as it lives, and the AsyncFd owns it until dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(duplicate, Interest::READABLE)
        }
        .map_err(|error| Error::io("recv_async", &error.into()))?;
        Ok(AsyncDoorbell { registered })
    }

    /// Waits until the doorbell rings or a poll slice passes (so that a dead peer is noticed).
    async fn ready(&self) -> Result<()> {
        match tokio::time::timeout(crate::sync::POLL_SLICE, self.registered.readable()).await {
            Ok(Ok(mut ready)) => {
                ready.clear_ready();
                Ok(())
            }
            Ok(Err(error)) => Err(Error::io("recv_async", &error)),
            Err(_elapsed) => Ok(()),
        }
    }
}
