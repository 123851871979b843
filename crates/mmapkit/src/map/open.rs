//! Opening paths without waiting in open(2).
//!
//! open(2) of a FIFO waits for the other end, and some devices wait in open for a carrier or a
//! peer. A name another user can plant (a FIFO at `/dev/shm/NAME`, or in a shared directory)
//! would block the caller for ever. So every path the library opens is opened with
//! `O_NONBLOCK` (and `O_NOCTTY`, so that a terminal never becomes the controlling one), which
//! changes nothing for a regular file; `O_NONBLOCK` is cleared again once the descriptor is
//! open, so that it behaves as the caller asked, and the caller checks the type it was given.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, OFlags, Stat};

use crate::sys::{self, SysResult};

/// Opens `path` with `flags` and `mode` without waiting; returns the descriptor and its
/// status for the caller to check the type.
pub(crate) fn open_without_waiting(
    path: &Path,
    flags: OFlags,
    mode: u32,
) -> SysResult<(OwnedFd, Stat)> {
    let fd = sys::open(path, flags | OFlags::NONBLOCK | OFlags::NOCTTY, mode)?;
    settle(fd)
}

/// Clears `O_NONBLOCK` on a descriptor opened with it, and returns its status.
pub(crate) fn settle(fd: OwnedFd) -> SysResult<(OwnedFd, Stat)> {
    let flags = sys::fcntl_getfl(fd.as_fd())?;
    sys::fcntl_setfl(fd.as_fd(), flags - OFlags::NONBLOCK)?;
    let stat = sys::fstat(fd.as_fd())?;
    Ok((fd, stat))
}

/// What a file of this mode is, for messages: "a FIFO", "a directory"…
pub(crate) fn file_type_name(mode: u32) -> &'static str {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

/// Whether the mode is a regular file's.
pub(crate) fn is_regular(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}
