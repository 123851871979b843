//! Whether the other side of a channel is there, decided by facts a peer cannot forge.
//!
//! The endpoint table (see `endpoints`) lives in shared memory, and any process that may
//! write the segment can write anything there: bump a generation so that a departing
//! endpoint's entry is never freed, zero an entry before a peer reads it, or name a process
//! that never attached. So the table only says where to look. Whether a peer is there is
//! decided from what the kernel keeps:
//!
//! * **Locks.** Each endpoint holds a write lock on one byte of the segment's file, far past
//!   its end — [`lock_byte`] of its side and entry (see `shm::locks`). The kernel drops it
//!   when the process dies, and names the pid holding it to any process that asks, whatever
//!   its user; only a process that may write the segment can take one. Taking the lock is
//!   also how an entry is claimed, so two processes can never hold one entry.
//! * **Processes.** An endpoint pins the peers it verified — pid, and the start time it read
//!   from /proc itself — and a pinned peer is there while that very process lives and either
//!   its entry still names it or it still holds its byte. A peer that leaves frees both; a
//!   dead one loses both.
//! * **This process.** The kernel never reports a process's own locks to it; `shm::locks`
//!   keeps a registry of them instead.
//!
//! A process loses its record locks on a file when it closes any descriptor of it. The library
//! takes them again after each close it makes, endpoints take theirs again on every slow path,
//! a pinned peer survives the loss through its entry, and a peer whose lock is missing when it
//! is first seen is verified instead by /proc/PID/maps showing the segment mapped — readable
//! for processes of the same user, or as root. A pinned peer whose lock stays missing is
//! looked up in /proc/PID/maps about once a second: a process that exec'd another program
//! (which closes the segment and unmaps it, but keeps the pid and start time) is gone once
//! the segment is not there. A live process the table names that can be
//! verified neither way leaves the peer unconfirmed: waits give it the grace period only.
//!
//! All of this needs the processes to share a pid namespace, and /proc: across namespaces the
//! kernel names a lock's holder as pid 0 and the table's pids mean nothing, so peers there
//! cannot be verified and calls that need one fail instead of waiting.

use std::os::fd::BorrowedFd;

use crate::shm::ProcessIdentity;
use crate::shm::locks::{self, FileKey};

/// The first lock byte, far beyond the end of any segment.
const LOCK_BASE: i64 = 1 << 60;

/// The byte endpoint `index` of side `side` (1 senders, 2 receivers) locks.
pub(super) fn lock_byte(side: u64, index: usize) -> i64 {
    LOCK_BASE + (side as i64 - 1) * 64 + index as i64
}

/// How to look at one segment's endpoints.
#[derive(Debug, Clone, Copy)]
pub(super) struct Witness<'c> {
    pub(super) fd: BorrowedFd<'c>,
    pub(super) key: FileKey,
}

impl Witness<'_> {
    /// The process holding `byte`: this process if one of its endpoints does, or the one the
    /// kernel names.
    pub(super) fn holder(&self, byte: i64) -> Option<u32> {
        locks::holder(self.fd, self.key, byte)
    }

    /// Whether `pid` holds the endpoint at `byte`: by the registry for this process, by the
    /// lock, or by its mapping of the segment (a peer that lost its lock). `Some(false)` when
    /// it certainly does not (no lock, and /proc/PID/maps shows no mapping of the segment: a
    /// process that exec'd another program, or a forged entry), `None` when it cannot tell
    /// (another user's process, whose maps it may not read).
    pub(super) fn verify(&self, pid: u32, byte: i64) -> Option<bool> {
        if pid == ProcessIdentity::current().pid {
            return Some(locks::held_here(self.key, byte));
        }
        if self.holder(byte) == Some(pid) {
            return Some(true);
        }
        self.key.mapping_seen(pid)
    }

    /// Whether `pid` still holds `byte`, by the registry or the lock only.
    pub(super) fn holds(&self, pid: u32, byte: i64) -> bool {
        self.holder(byte) == Some(pid)
    }

    /// Whether /proc says `pid` no longer maps the segment: it exec'd another program or
    /// closed the segment, lock or no lock. False when /proc/PID/maps cannot be read.
    pub(super) fn unmapped_by(&self, pid: u32) -> bool {
        self.key.mapping_seen(pid) == Some(false)
    }
}
