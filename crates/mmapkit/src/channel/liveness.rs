//! Whether the other side of a channel is there, decided by facts a peer cannot forge.
//!
//! The endpoint table (see `endpoints`) lives in shared memory, and any process that may
//! write the segment can write anything there: bump a generation so that a departing
//! endpoint's entry is never freed, zero an entry before a peer reads it, or name a process
//! that never attached. So the table only says where to look. Whether a peer is there is
//! decided from what the kernel keeps:
//!
//! * **Locks.** Each endpoint holds a POSIX read lock on one byte of the segment's file, far
//!   past its end: [`lock_byte`] of its side and entry. The kernel drops the lock when the
//!   process dies or leaves, and tells any process, whatever its user, which pid holds it
//!   (F_GETLK): a process holding that byte has the segment open and took that place.
//! * **Processes.** An endpoint pins the peers it verified — pid, and the start time it read
//!   from /proc itself — and a pinned peer is there while that very process lives and either
//!   its entry still names it or it still holds its byte. A peer that leaves frees both; a
//!   dead one loses both.
//! * **This process.** The kernel never reports a process's own locks to it, so endpoints of
//!   the calling process are known from a process-local registry instead.
//!
//! A POSIX lock is also lost when its process closes *any* descriptor of the file (a second
//! handle of the same channel, a read-only duplicate). Endpoints take theirs again on every
//! slow path, a pinned peer survives the loss through its entry, and a peer whose lock is
//! missing when it is first seen is verified instead by /proc/PID/maps showing the segment
//! mapped — readable for processes of the same user, or as root. A process that can be
//! verified neither way is not taken for a peer: a wait that needs one then fails rather
//! than waits.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::inspect::{self, Pid};
use crate::shm::ProcessIdentity;
use crate::sys;

/// The first lock byte, far beyond the end of any segment.
const LOCK_BASE: i64 = 1 << 60;

/// The byte endpoint `index` of side `side` (1 senders, 2 receivers) locks.
pub(super) fn lock_byte(side: u64, index: usize) -> i64 {
    LOCK_BASE + (side as i64 - 1) * 64 + index as i64
}

/// A segment's file as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileKey {
    device: u64,
    inode: u64,
}

impl FileKey {
    pub(super) fn of(fd: BorrowedFd<'_>) -> crate::Result<FileKey> {
        let stat = sys::fstat(fd).map_err(|errno| crate::Error::os("attach", errno))?;
        Ok(FileKey {
            device: stat.st_dev,
            inode: stat.st_ino,
        })
    }

    /// Whether process `pid` has this file mapped, by /proc/PID/maps (false when it cannot be
    /// read).
    fn mapped_by(&self, pid: u32) -> bool {
        let major = rustix::fs::major(self.device);
        let minor = rustix::fs::minor(self.device);
        inspect::maps(Pid::Id(pid)).is_ok_and(|entries| {
            entries.iter().any(|entry| {
                entry.inode == self.inode
                    && entry.device_major == major
                    && entry.device_minor == minor
            })
        })
    }
}

/// Endpoints this process holds, most at once.
const SLOTS: usize = 1024;
/// An owner value for a slot being filled in.
const FILLING: u32 = u32::MAX;

/// A registered endpoint: which process registered it (0: free), on which file, which byte.
/// Lock-free, so that a child forked while another thread registers never finds it locked;
/// a child sees its parent's entries under its parent's pid and ignores them.
struct Slot {
    owner: AtomicU32,
    device: AtomicU64,
    inode: AtomicU64,
    byte: AtomicU64,
}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "used only to initialise the table"
)]
const FREE_SLOT: Slot = Slot {
    owner: AtomicU32::new(0),
    device: AtomicU64::new(0),
    inode: AtomicU64::new(0),
    byte: AtomicU64::new(0),
};

static REGISTRY: [Slot; SLOTS] = [FREE_SLOT; SLOTS];

/// An endpoint's place in the registry; freed on drop by the process that registered it.
#[derive(Debug)]
pub(super) struct Registration {
    slot: usize,
    owner: u32,
}

impl Registration {
    /// Registers endpoint byte `byte` of `key` for this process; `None` when full.
    pub(super) fn new(key: FileKey, byte: i64) -> Option<Registration> {
        let owner = ProcessIdentity::current().pid;
        let slot = REGISTRY.iter().position(|slot| {
            slot.owner
                .compare_exchange(0, FILLING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        let entry = &REGISTRY[slot];
        entry.device.store(key.device, Ordering::Relaxed);
        entry.inode.store(key.inode, Ordering::Relaxed);
        entry.byte.store(byte as u64, Ordering::Relaxed);
        entry.owner.store(owner, Ordering::Release);
        Some(Registration { slot, owner })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A forked child holds a copy of its parent's registration: the slot is not its own.
        if ProcessIdentity::current().pid == self.owner {
            REGISTRY[self.slot].owner.store(0, Ordering::Release);
        }
    }
}

/// Whether an endpoint of this process holds byte `byte` of `key`.
fn registered(key: FileKey, byte: i64) -> bool {
    let me = ProcessIdentity::current().pid;
    REGISTRY.iter().any(|slot| {
        slot.owner.load(Ordering::Acquire) == me
            && slot.device.load(Ordering::Relaxed) == key.device
            && slot.inode.load(Ordering::Relaxed) == key.inode
            && slot.byte.load(Ordering::Relaxed) == byte as u64
    })
}

/// How to look at one segment's endpoints.
#[derive(Debug, Clone, Copy)]
pub(super) struct Witness<'c> {
    pub(super) fd: BorrowedFd<'c>,
    pub(super) key: FileKey,
}

impl Witness<'_> {
    /// Takes (again) this process's lock on `byte`; false if someone holds a write lock there.
    pub(super) fn lock(&self, byte: i64) -> bool {
        sys::fcntl_lock_byte(self.fd, byte, true).is_ok()
    }

    /// Gives up this process's lock on `byte`.
    pub(super) fn unlock(&self, byte: i64) {
        let _ = sys::fcntl_lock_byte(self.fd, byte, false);
    }

    /// The process holding `byte`, if the kernel names one; this process if one of its
    /// endpoints does.
    pub(super) fn holder(&self, byte: i64) -> Option<u32> {
        if registered(self.key, byte) {
            return Some(ProcessIdentity::current().pid);
        }
        match sys::fcntl_lock_holder(self.fd, byte) {
            Ok(Some(pid)) if pid > 0 => Some(pid as u32),
            _ => None,
        }
    }

    /// Whether `pid` holds the endpoint at `byte`: by the registry for this process, by the
    /// lock, or by its mapping of the segment (a peer that lost its lock).
    pub(super) fn verify(&self, pid: u32, byte: i64) -> bool {
        if pid == ProcessIdentity::current().pid {
            return registered(self.key, byte);
        }
        self.holder(byte) == Some(pid) || self.key.mapped_by(pid)
    }

    /// Whether `pid` still holds `byte`, by the registry or the lock only.
    pub(super) fn holds(&self, pid: u32, byte: i64) -> bool {
        if pid == ProcessIdentity::current().pid {
            return registered(self.key, byte);
        }
        self.holder(byte) == Some(pid)
    }
}
