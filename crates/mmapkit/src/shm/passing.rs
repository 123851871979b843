//! Passing segments to other processes.
//!
//! * **fork**: a child inherits every segment as it is; nothing to do.
//! * **exec**: [`Segment::pass_to`] makes a duplicate of the descriptor survive exec into a
//!   [`Command`] child and names it in an environment variable; the child takes it with
//!   [`SegmentOptions::from_inherited`].
//! * **unrelated processes**: [`Segment::send`] sends the descriptor (and any extra ones, an
//!   eventfd for instance) over a Unix socket with SCM_RIGHTS; [`SegmentOptions::receive`]
//!   takes it on the other side. [`Segment::send_read_only`] sends a read-only duplicate for
//!   a reader that is not trusted to write.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::options::{check_read_only_promise, reopen_read_only};
use super::{Segment, SegmentOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// The bytes that accompany a passed segment, so that a stray message is not taken for one.
const GREETING: &[u8] = b"mmapkit-segment/1";
/// Most descriptors one message carries (the segment's and extras).
const MAX_FDS: usize = 16;

impl Segment {
    /// Sends the segment's descriptor, followed by `extra` descriptors, over `stream`.
    pub fn send(&self, stream: &UnixStream, extra: &[BorrowedFd<'_>]) -> Result<()> {
        send_fds(stream, self.fd(), extra)
    }

    /// Sends a read-only duplicate of the segment over `stream`: the receiver can read the
    /// payload but neither write it nor map it writable (see [Read-only
    /// receivers](crate::shm#read-only-receivers) for what that rests on). Fails with
    /// `PermissionDenied` when the segment's mode lets other users write it.
    pub fn send_read_only(&self, stream: &UnixStream, extra: &[BorrowedFd<'_>]) -> Result<()> {
        send_fds(stream, self.read_only_fd()?, extra)
    }

    /// The segment's read-only duplicate (a new open file description of the same inode),
    /// under the rule of [`send_read_only`](Self::send_read_only). It is made on first use
    /// and kept with the segment: every read-only receiver shares it. Borrowed rather than
    /// handed over, because closing any descriptor of the segment's file drops this process's
    /// channel endpoint locks on it (see the channel module's docs); clone it with
    /// `try_clone_to_owned` to own one anyway.
    pub fn read_only_fd(&self) -> Result<BorrowedFd<'_>> {
        if let Some(fd) = self.read_only.get() {
            check_read_only_promise(self)?;
            return Ok(fd.as_fd());
        }
        // A thread that raced this one may have stored its duplicate first; this one is then
        // closed, and this process's record locks on the file taken again.
        if let Err(extra) = self.read_only.set(reopen_read_only(self)?) {
            drop(extra);
            if let Ok(key) = super::locks::FileKey::of(self.fd()) {
                super::locks::retake_all(key);
            }
        }
        Ok(self
            .read_only
            .get()
            .map(AsFd::as_fd)
            .expect("set just above"))
    }

    /// Makes the segment's descriptor survive exec into `command`'s child and stores its
    /// number in the child's environment variable `variable`. The child calls
    /// [`SegmentOptions::from_inherited`] with the same variable.
    ///
    /// No duplicate is made in this process: the command shares the descriptor (it stays
    /// open, under the same number, until both the segment and the command are gone), and
    /// only the child clears its close-on-exec flag.
    pub fn pass_to(&self, command: &mut Command, variable: &str) -> Result<()> {
        let shared = match self.fd().as_raw_fd() {
            // The child's standard streams are set up under 0..=2 before the closure runs.
            0..=2 => Arc::new(
                sys::fcntl_dupfd_cloexec(self.fd(), 3)
                    .map_err(|errno| Error::os("pass segment", errno))?,
            ),
            _ => Arc::clone(self.fd.shared()),
        };
        command.env(variable, shared.as_raw_fd().to_string());
        // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
        // which is async-signal-safe. It owns a reference to the descriptor, which therefore
        // stays open under this number for as long as the command lives.
        unsafe {
            command.pre_exec(move || {
                sys::fcntl_set_cloexec(shared.as_fd(), false).map_err(std::io::Error::from)
            });
        }
        Ok(())
    }
}

impl SegmentOptions {
    /// Receives a segment sent with [`Segment::send`]; returns it and the extra descriptors.
    pub fn receive(&self, stream: &UnixStream) -> Result<(Segment, Vec<OwnedFd>)> {
        let mut buf = [0u8; 64];
        let (len, mut fds) = sys::recv_with_fds(stream.as_fd(), &mut buf, MAX_FDS)
            .map_err(|errno| socket_error("receive segment", errno))?;
        if &buf[..len] != GREETING || fds.is_empty() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "receive segment",
                format!(
                    "the message is not a segment ({len} bytes, {} descriptors)",
                    fds.len()
                ),
            ));
        }
        let segment = self.from_fd(fds.remove(0))?;
        Ok((segment, fds))
    }

    /// Takes the segment a parent passed with [`Segment::pass_to`], from the descriptor named
    /// in the environment variable `variable`. Each descriptor can be taken once.
    ///
    /// The number in the variable is not trusted: a descriptor is taken over only once it
    /// has been shown to be a passed segment — open, inherited across exec (`FD_CLOEXEC`
    /// clear, as `pass_to` leaves it; every descriptor the Rust standard library opens has it
    /// set), never taken before, and holding a valid segment. Anything else is an error that
    /// leaves the descriptor as it was: a number that names a file the program holds is
    /// neither closed nor changed.
    pub fn from_inherited(&self, variable: &str) -> Result<Segment> {
        static TAKEN: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);
        let missing = |message: String| {
            Error::new(ErrorKind::NotFound, "inherit segment", message)
                .with_hint("the parent passes it with Segment::pass_to")
        };
        let text =
            std::env::var(variable).map_err(|_| missing(format!("${variable} is not set")))?;
        let raw: RawFd = Some(&text)
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| missing(format!("${variable}={text:?} is not a descriptor number")))?;
        if raw <= 2 {
            // `pass_to` never passes a standard stream's number.
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "inherit segment",
                format!("${variable}={raw} names a standard stream, which is left alone"),
            ));
        }
        let mut taken = TAKEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        if taken.contains(&raw) {
            return Err(missing(format!(
                "descriptor {raw} from ${variable} was taken already"
            )));
        }
        match sys::fcntl_getfd_raw(raw) {
            Err(_) => {
                return Err(missing(format!(
                    "descriptor {raw} from ${variable} is not open"
                )));
            }
            Ok(flags) if flags.contains(rustix::io::FdFlags::CLOEXEC) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "inherit segment",
                    format!(
                        "descriptor {raw} from ${variable} was not inherited across exec (it is \
                         close-on-exec): it belongs to this program and is left alone"
                    ),
                )
                .with_hint("the parent passes a segment with Segment::pass_to"));
            }
            Ok(_) => {}
        }
        // SAFETY: the number is open (checked above, and nothing closes it while we look: it
        // is not ours to close, and a program that closes descriptors it does not own breaks
        // I/O safety itself). The borrow lasts only while the segment behind it is validated.
        let inherited = unsafe { BorrowedFd::borrow_raw(raw) };
        // Validated where it is, without a duplicate: closing one would drop the process's
        // record locks on the file, so a descriptor that is not a segment is left untouched.
        let mode =
            sys::fcntl_getfl(inherited).map_err(|errno| Error::os("inherit segment", errno))?;
        let writable = mode & rustix::fs::OFlags::RWMODE == rustix::fs::OFlags::RDWR;
        let mapped = self.validate(inherited, writable)?;
        taken.insert(raw);
        // SAFETY: the descriptor was inherited across exec (FD_CLOEXEC clear), holds the
        // segment just validated, and the take-once set makes this its only taker: the parent
        // made it for this process, so it is ours from now on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sys::fcntl_set_cloexec(fd.as_fd(), true)
            .map_err(|errno| Error::os("inherit segment", errno))?;
        Ok(mapped.with_fd(fd, super::Location::Received))
    }
}

fn send_fds(stream: &UnixStream, fd: BorrowedFd<'_>, extra: &[BorrowedFd<'_>]) -> Result<()> {
    if extra.len() + 1 > MAX_FDS {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "send segment",
            format!(
                "at most {} extra descriptors fit in one message",
                MAX_FDS - 1
            ),
        ));
    }
    let mut fds = Vec::with_capacity(extra.len() + 1);
    fds.push(fd);
    fds.extend_from_slice(extra);
    sys::send_with_fds(stream.as_fd(), GREETING, &fds)
        .map(drop)
        .map_err(|errno| socket_error("send segment", errno))
}

/// An error of a socket call: on a non-blocking socket `EAGAIN` means "nothing yet" (or
/// "no room yet"), `WouldBlock`, not the `OutOfMemory` it means for memory calls.
fn socket_error(operation: &'static str, errno: rustix::io::Errno) -> Error {
    let error = Error::os(operation, errno);
    match errno {
        rustix::io::Errno::AGAIN => error.with_kind(ErrorKind::WouldBlock),
        _ => error,
    }
}
