//! Record locks that say "this process holds this place in the segment": POSIX write locks
//! on single bytes of a segment's file, far past its end (channel endpoints use them).
//!
//! Why these: the kernel drops them when their process dies, keeps them out of forked
//! children, and names the holder's pid to any process that asks (F_GETLK), whatever its
//! user. A write lock needs a descriptor open for writing, so a reader given the segment
//! read-only cannot take one, and probes ask about write locks only: read locks, which anyone
//! who can read the file may take, are ignored.
//!
//! Their flaw: a process loses all its locks on a file when it closes *any* descriptor of
//! it. So the locks this process holds are kept in a registry with the descriptor each was
//! taken through, and the places in the library that close a descriptor of a segment's file
//! (a segment dropped, a header read by `stale`) take that file's locks again right after
//! ([`retake_all`]). A close the library does not make — a descriptor the program opened
//! itself — drops them until their holders take them again (channel endpoints do on every
//! slow path).
//!
//! The registry is a fixed table of atomics, read without locks so that a child forked at any
//! moment never finds it locked. Taking a lock is serialised within the process by a spin
//! word that holds the pid of its holder; a forked child takes it over from its parent's pid,
//! since the thread that held it did not survive the fork.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::ProcessIdentity;
use crate::error::{Error, ErrorKind, Result};
use crate::inspect::{self, Pid};
use crate::sys;

/// A segment's file as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileKey {
    device: u64,
    inode: u64,
}

impl FileKey {
    pub(crate) fn of(fd: BorrowedFd<'_>) -> Result<FileKey> {
        let stat = sys::fstat(fd).map_err(|errno| Error::os("segment", errno))?;
        Ok(FileKey {
            device: stat.st_dev,
            inode: stat.st_ino,
        })
    }

    /// Whether process `pid` has this file mapped, by /proc/PID/maps; `None` when that cannot
    /// be told (maps unreadable: another user's process, a non-dumpable one, no /proc; or the
    /// inode shown under another device number).
    pub(crate) fn mapping_seen(&self, pid: u32) -> Option<bool> {
        let major = rustix::fs::major(self.device);
        let minor = rustix::fs::minor(self.device);
        let entries = inspect::maps(Pid::Id(pid)).ok()?;
        let same_inode = || entries.iter().filter(|entry| entry.inode == self.inode);
        if same_inode().any(|entry| entry.device_major == major && entry.device_minor == minor) {
            return Some(true);
        }
        // Some file systems (btrfs subvolumes, older overlayfs) show another device number in
        // /proc/PID/maps than fstat does: the same inode elsewhere cannot tell either way.
        match same_inode().next() {
            Some(_) => None,
            None => Some(false),
        }
    }
}

/// Locks this process may hold at once.
const SLOTS: usize = 1024;
/// An owner value for a slot being filled in or emptied.
const BUSY: u32 = u32::MAX;

/// A held lock: which process registered it (0: free), on which file and byte, through which
/// descriptor, and how many `retake_all` calls are using that descriptor right now.
struct Slot {
    owner: AtomicU32,
    device: AtomicU64,
    inode: AtomicU64,
    byte: AtomicU64,
    fd: AtomicI32,
    users: AtomicU32,
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
    fd: AtomicI32::new(-1),
    users: AtomicU32::new(0),
};

static REGISTRY: [Slot; SLOTS] = [FREE_SLOT; SLOTS];

/// The pid of the thread's process taking a lock now, or 0.
static TAKING: AtomicU32 = AtomicU32::new(0);

impl Slot {
    fn is(&self, owner: u32, key: FileKey, byte: i64) -> bool {
        self.owner.load(Ordering::Acquire) == owner
            && self.device.load(Ordering::Relaxed) == key.device
            && self.inode.load(Ordering::Relaxed) == key.inode
            && self.byte.load(Ordering::Relaxed) == byte as u64
    }
}

/// Serialises `ByteLock::take` within the process.
struct Taking;

impl Taking {
    fn enter() -> Taking {
        let me = ProcessIdentity::current().pid;
        loop {
            let holder = TAKING.load(Ordering::Acquire);
            // Another pid can only be the parent's, copied by fork with its thread gone.
            let free = holder == 0 || holder != me;
            if free
                && TAKING
                    .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Taking;
            }
            std::thread::yield_now();
        }
    }
}

impl Drop for Taking {
    fn drop(&mut self) {
        TAKING.store(0, Ordering::Release);
    }
}

/// A byte lock this process holds; given up on drop.
#[derive(Debug)]
pub(crate) struct ByteLock {
    slot: usize,
    owner: u32,
    fd: RawFd,
    byte: i64,
}

impl ByteLock {
    /// Takes byte `byte` of the file behind `fd` (open for writing) and runs `claim`, as one
    /// step for this process: `Ok(None)` when an endpoint of this process or another process
    /// holds the byte, or when `claim` declines; the lock is then given back. A byte that only
    /// read locks cover is taken without its lock, which a later `retake` may get. The
    /// descriptor must stay open for as long as the lock is held.
    pub(crate) fn take<T>(
        fd: BorrowedFd<'_>,
        key: FileKey,
        byte: i64,
        claim: impl FnOnce() -> Option<T>,
    ) -> Result<Option<(ByteLock, T)>> {
        let _taking = Taking::enter();
        let owner = ProcessIdentity::current().pid;
        if held_here(key, byte) {
            return Ok(None);
        }
        let Some(slot) = REGISTRY.iter().position(|slot| {
            slot.owner
                .compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) else {
            return Err(Error::new(
                ErrorKind::OutOfMemory,
                "attach",
                format!("this process holds as many segment locks as it can track ({SLOTS})"),
            ));
        };
        let release = || REGISTRY[slot].owner.store(0, Ordering::Release);
        let locked = sys::fcntl_lock_byte(fd, byte, true).is_ok();
        // Without the lock, either a process holds it (a write lock: the place is taken), or
        // someone who can merely read the file holds a read lock there to keep endpoints out:
        // go on without it then (a retake may get it later), rather than let a reader refuse.
        if !locked && !matches!(sys::fcntl_write_lock_holder(fd, byte), Ok(None)) {
            release();
            return Ok(None);
        }
        let Some(claimed) = claim() else {
            if locked {
                let _ = sys::fcntl_lock_byte(fd, byte, false);
            }
            release();
            return Ok(None);
        };
        let entry = &REGISTRY[slot];
        entry.device.store(key.device, Ordering::Relaxed);
        entry.inode.store(key.inode, Ordering::Relaxed);
        entry.byte.store(byte as u64, Ordering::Relaxed);
        entry.fd.store(fd.as_raw_fd(), Ordering::Relaxed);
        entry.owner.store(owner, Ordering::Release);
        let lock = ByteLock {
            slot,
            owner,
            fd: fd.as_raw_fd(),
            byte,
        };
        Ok(Some((lock, claimed)))
    }

    /// Takes the lock again, in case a close elsewhere in the process dropped it.
    pub(crate) fn retake(&self, fd: BorrowedFd<'_>) {
        debug_assert_eq!(fd.as_raw_fd(), self.fd);
        let _ = sys::fcntl_lock_byte(fd, self.byte, true);
    }
}

impl Drop for ByteLock {
    fn drop(&mut self) {
        // A forked child holds a copy of its parent's lock: neither the lock nor the slot is
        // its own.
        if ProcessIdentity::current().pid != self.owner {
            return;
        }
        let entry = &REGISTRY[self.slot];
        // SeqCst with `retake_all`'s pair: either it sees BUSY, or this sees its count.
        entry.owner.store(BUSY, Ordering::SeqCst);
        while entry.users.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SAFETY: the descriptor stays open while the lock is held (`take`'s contract), and
        // the lock is still held: it is given up here.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = sys::fcntl_lock_byte(fd, self.byte, false);
        entry.owner.store(0, Ordering::Release);
    }
}

/// Whether this process holds byte `byte` of `key`.
pub(crate) fn held_here(key: FileKey, byte: i64) -> bool {
    let me = ProcessIdentity::current().pid;
    REGISTRY.iter().any(|slot| slot.is(me, key, byte))
}

/// The process holding byte `byte` of the file behind `fd` (`key`): this process, by the
/// registry, or the one the kernel names for a write lock there.
pub(crate) fn holder(fd: BorrowedFd<'_>, key: FileKey, byte: i64) -> Option<u32> {
    if held_here(key, byte) {
        return Some(ProcessIdentity::current().pid);
    }
    match sys::fcntl_write_lock_holder(fd, byte) {
        Ok(Some(pid)) if pid > 0 => Some(pid as u32),
        _ => None,
    }
}

/// Takes again every lock this process holds on `key`'s file: a descriptor of it was just
/// closed, which dropped them all.
pub(crate) fn retake_all(key: FileKey) {
    let me = ProcessIdentity::current().pid;
    for entry in &REGISTRY {
        if entry.owner.load(Ordering::Acquire) != me {
            continue;
        }
        entry.users.fetch_add(1, Ordering::SeqCst);
        // Still registered (its drop waits for `users` before it unlocks and lets the
        // descriptor go), so the descriptor is open.
        if entry.owner.load(Ordering::SeqCst) == me
            && entry.device.load(Ordering::Relaxed) == key.device
            && entry.inode.load(Ordering::Relaxed) == key.inode
        {
            // SAFETY: the lock's holder keeps the descriptor open while registered, and the
            // registration cannot end while `users` counts this call.
            let fd = unsafe { BorrowedFd::borrow_raw(entry.fd.load(Ordering::Relaxed)) };
            let _ = sys::fcntl_lock_byte(fd, entry.byte.load(Ordering::Relaxed) as i64, true);
        }
        entry.users.fetch_sub(1, Ordering::AcqRel);
    }
}
