//! Shields: address ranges whose vanished pages are replaced instead of killing the process.
//!
//! The copy guard covers copies. Shared-memory primitives (locks, ring indices, allocator
//! metadata) instead work in place, with atomics, on segments that any peer with write access
//! can truncate — a named POSIX shm object cannot be sealed. For those ranges the SIGBUS
//! handler does what the JVM, llfio and several Wayland compositors do: it maps a zero-filled
//! private page over the page that vanished, marks the range *poisoned*, and lets the faulting
//! instruction run again against the new page. The owner of the range checks the mark at the
//! end of each operation and reports [`Truncated`](crate::ErrorKind::Truncated); whatever was
//! read from the zero page in between is treated like any other bytes a peer may have written,
//! which the layers above validate anyway.
//!
//! The handler can only run if the faulting thread does not block SIGBUS: a thread that does
//! is killed by the kernel, shield or not (see "Signal masks" in the module above). Copies
//! unblock it around themselves; in-place access cannot, so the limit is documented there.
//!
//! Shields live in a fixed table ([`CAPACITY`] entries) that the handler reads without locks.
//! A shield must be dropped before the range it covers is unmapped (the segment that owns both
//! drops them in that order), otherwise a SIGBUS in whatever is mapped there next would be
//! absorbed too.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, MapFlags, ProtFlags};

/// How many ranges can be shielded at once in one process.
pub const CAPACITY: usize = 1024;

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const ACTIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    end: AtomicUsize,
    poisoned: AtomicBool,
}

#[allow(
    clippy::declare_interior_mutable_const,
    reason = "used only to initialise the table"
)]
const EMPTY_SLOT: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};

static SLOTS: [Slot; CAPACITY] = [EMPTY_SLOT; CAPACITY];

/// The base page size, read once outside the signal handler.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// A registered range; unregistered on drop.
#[derive(Debug)]
pub(crate) struct Shield {
    index: usize,
}

impl Shield {
    /// Shields `[start, start + len)`, a range of whole pages the caller has mapped.
    pub(crate) fn register(start: *const u8, len: usize) -> Result<Shield> {
        if !super::guard::AVAILABLE {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "shield",
                "the fault guard is not implemented for this architecture, so shared segments \
                 that a peer could truncate cannot be used safely",
            ));
        }
        super::guard::install().map_err(|errno| Error::os("shield", errno))?;
        PAGE_SIZE.store(sys::page_size(), Ordering::Relaxed);
        let index = SLOTS
            .iter()
            .position(|slot| {
                slot.state
                    .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfMemory,
                    "shield",
                    format!("all {CAPACITY} shield slots of this process are in use"),
                )
                .with_hint("close (drop) segments and channels that are no longer needed")
            })?;
        let slot = &SLOTS[index];
        slot.poisoned.store(false, Ordering::Relaxed);
        slot.start.store(start as usize, Ordering::Relaxed);
        slot.end.store(start as usize + len, Ordering::Relaxed);
        slot.state.store(ACTIVE, Ordering::Release);
        Ok(Shield { index })
    }

    /// Whether a page of the range vanished and was replaced since registration.
    pub(crate) fn is_poisoned(&self) -> bool {
        SLOTS[self.index].poisoned.load(Ordering::Acquire)
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        SLOTS[self.index].state.store(FREE, Ordering::Release);
    }
}

/// Called by the SIGBUS handler for a fault at `address`: if a shield covers it, replaces the
/// page with a zero-filled private one, poisons the shield and returns true (the faulting
/// instruction then runs again). Async-signal-safe: atomics and one raw mmap system call.
pub(super) fn absorb(address: usize) -> bool {
    for slot in &SLOTS {
        if slot.state.load(Ordering::Acquire) != ACTIVE {
            continue;
        }
        let (start, end) = (
            slot.start.load(Ordering::Relaxed),
            slot.end.load(Ordering::Relaxed),
        );
        if !(start..end).contains(&address) {
            continue;
        }
        let page_size = PAGE_SIZE.load(Ordering::Relaxed);
        let page = address & !(page_size - 1);
        // SAFETY: the page lies in a range its owner registered as mapped and shielded: its
        // old contents are gone (the file behind it was truncated), and replacing it with a
        // private zero page is exactly what the owner asked for by registering.
        let replaced = unsafe {
            sys::mmap(
                page as *mut _,
                page_size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED,
                None,
                0,
            )
        };
        if replaced.is_ok() {
            slot.poisoned.store(true, Ordering::Release);
            return true;
        }
        return false;
    }
    false
}
