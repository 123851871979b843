//! [`SegmentOptions`]: creating and opening segments of every kind.
//!
//! Creation runs in three steps that a concurrent opener can observe: the object appears
//! (empty), it is sized and reserved, then the header is written in the *initialising* state,
//! the payload initialised, and the header switched to *ready*. Openers wait (up to
//! [`SegmentOptions::wait`]) through the first two steps and for the switch, and give up early
//! if the creator dies meanwhile.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, OFlags, SealFlags};

use super::header::{HEADER_SIZE, RawHeader, STATE_OFFSET, STATE_READY, TypeTag};
use super::{Location, ProcessIdentity, Segment};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::shield::Shield;
use crate::map::MapOptions;
use crate::map::open::{file_type_name, is_regular, open_without_waiting, settle};
use crate::sys::{self, Errno};

/// Longest segment name accepted (NAME_MAX is 255; room is left for suffixes tools add).
pub const MAX_NAME_LEN: usize = 250;

/// How to create or open a [`Segment`].
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    type_tag: TypeTag,
    payload_len: usize,
    mode: u32,
    wait: Duration,
}

impl SegmentOptions {
    /// Options for segments holding `type_tag` with `payload_len` bytes of payload. When
    /// opening, a `payload_len` of 0 accepts any size; otherwise the sizes must agree.
    pub fn new(type_tag: &str, payload_len: usize) -> Result<SegmentOptions> {
        Ok(SegmentOptions {
            type_tag: TypeTag::new(type_tag)?,
            payload_len,
            mode: 0o600,
            wait: Duration::from_secs(2),
        })
    }

    /// Permission bits of the segment's inode, for every kind (default 0600: owner only). For
    /// a named or file segment they decide who can open it by name; for every kind, who can
    /// open it again through `/proc/PID/fd` from a descriptor they were given — which is why
    /// [`Segment::send_read_only`] refuses a segment whose mode lets others write.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode & 0o777;
        self
    }

    /// How long opening waits for a creator that is still initialising (default 2 s).
    pub fn wait(&mut self, wait: Duration) -> &mut Self {
        self.wait = wait;
        self
    }

    /// Creates the named segment `name`; fails with `AlreadyExists` if it exists.
    pub fn create(&self, name: &str) -> Result<Segment> {
        self.create_with(name, |_| Ok(()))
    }

    /// Creates the named segment `name` and runs `init` on it before any opener can use it.
    /// If `init` fails, the segment is removed again.
    pub fn create_with(
        &self,
        name: &str,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        validate_name(name)?;
        // O_EXCL: nothing that exists under the name (a FIFO, a link) is ever opened.
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR;
        let fd = sys::shm_open(name, flags, self.mode)
            .map_err(|errno| named_error("create segment", name, errno))?;
        let location = Location::Named(name.to_owned());
        self.initialise(fd, location, init).inspect_err(|_| {
            let _ = sys::shm_unlink(name);
        })
    }

    /// Opens the named segment `name` for reading and writing. Whatever another user put
    /// under the name, this never waits in open(2): a FIFO or anything but a shm object is an
    /// `InvalidInput` error.
    pub fn open(&self, name: &str) -> Result<Segment> {
        let fd = open_named(name, OFlags::RDWR)?;
        self.adopt(fd, Location::Named(name.to_owned()), true)
    }

    /// Opens the named segment `name` read-only: atomics and writes are refused, and the
    /// mapping cannot be made writable. Never waits in open(2), as [`open`](Self::open).
    pub fn open_read_only(&self, name: &str) -> Result<Segment> {
        let fd = open_named(name, OFlags::RDONLY)?;
        self.adopt(fd, Location::Named(name.to_owned()), false)
    }

    /// Opens `name`, or creates it (running `init`) if it does not exist; safe against a
    /// concurrent creator.
    pub fn open_or_create_with(
        &self,
        name: &str,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        match self.create_with(name, init) {
            Err(error) if error.kind() == ErrorKind::AlreadyExists => self.open(name),
            result => result,
        }
    }

    /// Opens `name`, or creates it with a zeroed payload.
    pub fn open_or_create(&self, name: &str) -> Result<Segment> {
        self.open_or_create_with(name, |_| Ok(()))
    }

    /// Creates an anonymous memfd segment, sealed against shrinking and growing (see
    /// [`Segment::seal_future_writes`] for freezing its contents too). Its inode gets the
    /// [`mode`](Self::mode) (0600 by default), which decides who may open it again through
    /// `/proc/PID/fd` — the way a read-only receiver would try to get a writable descriptor.
    pub fn create_memfd(&self, debug_name: &str) -> Result<Segment> {
        self.create_memfd_with(debug_name, |_| Ok(()))
    }

    /// Creates a memfd segment and runs `init` on it.
    pub fn create_memfd_with(
        &self,
        debug_name: &str,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = sys::memfd_create(debug_name, flags)
            .map_err(|errno| Error::os("create segment", errno))?;
        // A memfd's inode is born with mode 0777 (0666 when no-exec): anyone holding a
        // descriptor could reopen it read-write through /proc/self/fd.
        sys::fchmod(fd.as_fd(), self.mode).map_err(|errno| Error::os("create segment", errno))?;
        sys::ftruncate(fd.as_fd(), self.total_len()? as u64)
            .map_err(|errno| Error::os("create segment", errno))?;
        sys::fcntl_add_seals(fd.as_fd(), SealFlags::SHRINK | SealFlags::GROW)
            .map_err(|errno| Error::os("seal segment", errno))?;
        self.initialise(fd, Location::Memfd, init)
    }

    /// Creates a segment in a new file at `path` (fails if it exists) and runs `init` on it.
    pub fn create_file_with(
        &self,
        path: impl AsRef<Path>,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        let path = path.as_ref();
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR;
        let fd = open_path(path, flags, self.mode)?;
        self.initialise(fd, Location::File(path.to_owned()), init)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(path);
            })
    }

    /// Opens the segment in the file at `path` for reading and writing.
    pub fn open_file(&self, path: impl AsRef<Path>) -> Result<Segment> {
        let path = path.as_ref();
        let fd = open_path(path, OFlags::RDWR, 0)?;
        self.adopt(fd, Location::File(path.to_owned()), true)
    }

    /// Takes a descriptor received from another process (its access mode decides whether the
    /// segment is writable) and validates the segment behind it.
    pub fn from_fd(&self, fd: OwnedFd) -> Result<Segment> {
        let mode =
            sys::fcntl_getfl(fd.as_fd()).map_err(|errno| Error::os("open segment", errno))?;
        let writable = mode & OFlags::RWMODE == OFlags::RDWR;
        self.adopt(fd, Location::Received, writable)
    }

    fn total_len(&self) -> Result<usize> {
        HEADER_SIZE
            .checked_add(self.payload_len)
            .and_then(|len| len.checked_next_multiple_of(sys::page_size()))
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "create segment",
                    "the payload length is too large",
                )
                .with_range(0, self.payload_len as u64)
            })
    }

    /// Sizes a new object, writes its header, runs `init`, and marks it ready.
    fn initialise(
        &self,
        fd: OwnedFd,
        location: Location,
        init: impl FnOnce(&Segment) -> Result<()>,
    ) -> Result<Segment> {
        let total = self.total_len()?;
        let reserve = match location {
            Location::Memfd => Ok(()),
            _ => sys::fallocate(fd.as_fd(), 0, total as u64),
        };
        reserve.map_err(|errno| {
            let error = Error::os("create segment", errno).with_range(0, total as u64);
            match errno {
                Errno::NOSPC => error.with_hint(
                    "/dev/shm is full (in containers it is often only 64 MiB); a memfd segment \
                     does not depend on it",
                ),
                _ => error,
            }
        })?;
        let raw = RawHeader::new(total as u64, self.type_tag, ProcessIdentity::current());
        let mapping = MapOptions::new()
            .write(true)
            .len(total)
            .map_fd(fd.as_fd())?;
        mapping.write_pod(0, &raw)?;
        let header = raw.validate(total as u64)?;
        let segment = Mapped::shield(mapping, header, true)?.with_fd(fd, location);
        init(&segment)?;
        segment.check()?;
        state_word(&segment.mapping)?.store(STATE_READY, Ordering::Release);
        Ok(segment)
    }

    /// Validates an existing object and waits until its creator has marked it ready.
    fn adopt(&self, fd: OwnedFd, location: Location, writable: bool) -> Result<Segment> {
        match self.validate(fd.as_fd(), writable) {
            Ok(mapped) => Ok(mapped.with_fd(fd, location)),
            Err(error) => {
                // The descriptor is closed; if this process holds record locks on that file
                // (an endpoint of a channel opened twice), they are taken again.
                let key = super::locks::FileKey::of(fd.as_fd()).ok();
                drop(fd);
                if let Some(key) = key {
                    super::locks::retake_all(key);
                }
                Err(error)
            }
        }
    }

    /// Validates the object behind a descriptor it does not take: maps it, checks the
    /// header and waits until its creator has marked it ready. Nothing is closed or changed,
    /// whatever the outcome.
    pub(super) fn validate(&self, fd: BorrowedFd<'_>, writable: bool) -> Result<Mapped> {
        let deadline = crate::deadline_after(self.wait);
        let stat = sys::fstat(fd).map_err(|errno| Error::os("open segment", errno))?;
        if !is_regular(&stat) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "open segment",
                format!(
                    "the descriptor is {}, not a segment",
                    file_type_name(stat.st_mode)
                ),
            ));
        }
        // A memfd sealed against writes can only be mapped read-only, whatever the descriptor.
        let sealed = sys::fcntl_get_seals(fd).unwrap_or(SealFlags::empty());
        let writable = writable && !sealed.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
        let (mapping, header, file_size) = loop {
            if let Some(found) = self.map_header(fd, writable, deadline)? {
                break found;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if header.type_tag != self.type_tag {
            return Err(Error::new(
                ErrorKind::Incompatible,
                "open segment",
                format!(
                    "it holds {:?}, not {:?}",
                    header.type_tag.as_str(),
                    self.type_tag.as_str()
                ),
            ));
        }
        if self.payload_len != 0 && self.total_len()? as u64 != file_size {
            return Err(Error::new(
                ErrorKind::Incompatible,
                "open segment",
                format!(
                    "its payload is {} bytes, not the {} asked for",
                    file_size - HEADER_SIZE as u64,
                    self.payload_len
                ),
            ));
        }
        let mapped = Mapped::shield(mapping, header, writable)?;
        wait_until_ready(&mapped, deadline)?;
        Ok(mapped)
    }
}

impl SegmentOptions {
    /// Maps the object and validates its header, or `None` while a creator may still be
    /// writing it (smaller than a header, or a header still all zeros: a creator sizes the
    /// object before it writes the header) and `deadline` has not passed.
    fn map_header(
        &self,
        fd: BorrowedFd<'_>,
        writable: bool,
        deadline: Instant,
    ) -> Result<Option<(crate::Mapping, super::Header, u64)>> {
        let waited_enough = Instant::now() >= deadline;
        let size = sys::fstat(fd)
            .map_err(|errno| Error::os("open segment", errno))?
            .st_size as u64;
        if size < HEADER_SIZE as u64 {
            if !waited_enough {
                return Ok(None);
            }
            return Err(Error::new(
                ErrorKind::Corrupt,
                "open segment",
                format!("the object is {size} bytes, smaller than a segment header"),
            )
            .with_hint("it is not an mmapkit segment, or its creator died while creating it"));
        }
        let len = usize::try_from(size).map_err(|_| {
            Error::new(
                ErrorKind::Corrupt,
                "open segment",
                "the object is too large to map",
            )
        })?;
        let mapping = MapOptions::new().write(writable).len(len).map_fd(fd)?;
        let raw = mapping.read_pod::<RawHeader>(0)?;
        let blank = bytemuck::bytes_of(&raw).iter().all(|&byte| byte == 0);
        if blank && !waited_enough {
            return Ok(None);
        }
        let header = raw.validate(size).map_err(|error| {
            if blank {
                error.with_hint(
                    "its header is still blank: it is not an mmapkit segment, or its creator \
                     died while creating it",
                )
            } else {
                error
            }
        })?;
        Ok(Some((mapping, header, size)))
    }
}

/// A validated segment, mapped and shielded, that does not hold its descriptor yet.
pub(super) struct Mapped {
    // Field order is drop order: the shield goes before the mapping it covers.
    shield: Shield,
    mapping: crate::Mapping,
    header: super::Header,
    writable: bool,
}

impl Mapped {
    fn shield(mapping: crate::Mapping, header: super::Header, writable: bool) -> Result<Mapped> {
        let shield = Shield::register(
            mapping.as_ptr(),
            mapping.len().next_multiple_of(sys::page_size()),
        )?;
        Ok(Mapped {
            shield,
            mapping,
            header,
            writable,
        })
    }

    /// The segment, holding `fd` from now on.
    pub(super) fn with_fd(self, fd: OwnedFd, location: Location) -> Segment {
        Segment {
            shield: self.shield,
            mapping: self.mapping,
            read_only: std::sync::OnceLock::new(),
            fd: super::SegmentFd::new(fd),
            location,
            header: self.header,
            writable: self.writable,
        }
    }

    fn check(&self) -> Result<()> {
        super::poisoned_error(&self.shield)
    }
}

/// The header's state word, read atomically, of a segment's mapping (which every caller has
/// shielded: see `Mapped::shield`).
fn state_word(mapping: &crate::Mapping) -> Result<&AtomicU32> {
    // SAFETY: the callers pass the mapping of a `Mapped` or a `Segment`, shielded whole.
    unsafe { mapping.atomic_in_shielded::<AtomicU32>(STATE_OFFSET) }
}

fn wait_until_ready(segment: &Mapped, deadline: Instant) -> Result<()> {
    let read_state = || -> Result<u32> {
        let state = match state_word(&segment.mapping) {
            Ok(word) => word.load(Ordering::Acquire),
            // A read-only handle cannot borrow atomics; a guarded copy reads the word.
            Err(_) => segment.mapping.read_pod::<u32>(STATE_OFFSET)?,
        };
        segment.check().map(|()| state)
    };
    loop {
        match read_state()? {
            STATE_READY => return Ok(()),
            state if state > STATE_READY => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "open segment",
                    format!("unknown state {state}"),
                ));
            }
            _ if !segment.header.creator.is_alive() => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "open segment",
                    format!(
                        "its creator (pid {}) died while initialising it",
                        segment.header.creator.pid
                    ),
                )
                .with_hint("remove it (mmapkit::shm::unlink) and create it again"));
            }
            _ if Instant::now() >= deadline => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "open segment",
                    "its creator is still initialising it",
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Checks a segment name: 1 to [`MAX_NAME_LEN`] bytes, no '/', no NUL, not "." or "..".
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 250 bytes")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name == "." || name == ".." {
        Some("is a directory name")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::new(
            ErrorKind::InvalidInput,
            "segment name",
            format!("{:?} {problem}", truncate_for_message(name)),
        )),
        None => Ok(()),
    }
}

fn truncate_for_message(name: &str) -> String {
    name.chars().take(40).collect::<String>() + if name.chars().count() > 40 { "…" } else { "" }
}

fn named_error(operation: &'static str, name: &str, errno: Errno) -> Error {
    let error = Error::os(operation, errno).with_path(format!("/dev/shm/{name}"));
    match errno {
        Errno::EXIST => error.with_hint("open it instead, or unlink it if it is stale"),
        Errno::NOENT => error.with_hint("create it first"),
        Errno::ACCESS => error.with_hint("segments are created owner-only (mode 0600) by default"),
        _ => error,
    }
}

/// Opens the named object `name` without waiting, and checks that it is a shm object.
fn open_named(name: &str, access: OFlags) -> Result<OwnedFd> {
    validate_name(name)?;
    let fail = |errno| named_error("open segment", name, errno);
    let fd = sys::shm_open(name, access | OFlags::NONBLOCK, 0).map_err(fail)?;
    let (fd, stat) = settle(fd).map_err(fail)?;
    if !is_regular(&stat) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "open segment",
            format!(
                "{} is under that name, not a shared memory object",
                file_type_name(stat.st_mode)
            ),
        )
        .with_path(format!("/dev/shm/{name}"))
        .with_hint("someone else made it; remove it (mmapkit shm rm) if it should not be there"));
    }
    Ok(fd)
}

/// Opens the file at `path` without waiting, and checks that it is a regular file.
fn open_path(path: &Path, flags: OFlags, mode: u32) -> Result<OwnedFd> {
    let (fd, stat) = open_without_waiting(path, flags, mode)
        .map_err(|errno| Error::os("open segment", errno).with_path(path))?;
    if !is_regular(&stat) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "open segment",
            format!("it is {}, not a regular file", file_type_name(stat.st_mode)),
        )
        .with_path(path));
    }
    Ok(fd)
}

/// A read-only duplicate of a segment's descriptor: a new open file description of the same
/// inode, opened again through /proc/self/fd (a name may meanwhile belong to another object).
///
/// Refused under the rule of [`check_read_only_promise`].
pub(super) fn reopen_read_only(segment: &Segment) -> Result<OwnedFd> {
    check_read_only_promise(segment)?;
    let fd = segment.fd();
    let fail = |errno| Error::os("duplicate segment", errno);
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let (read_only, _) =
        open_without_waiting(Path::new(&path), OFlags::RDONLY, 0).map_err(|errno| match errno {
            Errno::ACCESS => fail(errno).with_hint(
                "only users the segment's mode lets read it can make read-only duplicates; \
                 send the descriptor itself instead",
            ),
            _ => fail(errno),
        })?;
    Ok(read_only)
}

/// Refuses a read-only duplicate of a segment whose inode's permission bits let group or
/// others write it, unless a seal forbids writable mappings: such a receiver could open it
/// again read-write. Checked on every use, since the mode can change after the duplicate
/// was made.
pub(super) fn check_read_only_promise(segment: &Segment) -> Result<()> {
    let fd = segment.fd();
    let fail = |errno| Error::os("duplicate segment", errno);
    let stat = sys::fstat(fd).map_err(fail)?;
    let sealed = sys::fcntl_get_seals(fd)
        .unwrap_or(SealFlags::empty())
        .intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE);
    if stat.st_mode & 0o022 != 0 && !sealed {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "duplicate segment",
            format!(
                "the segment's mode {:04o} lets other users write it, so a read-only receiver \
                 could open it again read-write",
                stat.st_mode & 0o7777
            ),
        )
        .with_hint(
            "create it with a mode that gives write to its owner only (the default 0600), or \
             freeze it with seal_future_writes",
        ));
    }
    Ok(())
}
