//! Mappings: [`MapOptions`] builds a [`Mapping`]; the mapping owns its address range until it
//! is dropped (munmap).
//!
//! # What a mapping is
//! A `Mapping` is a *view*: `len` bytes starting exactly at the file offset that was asked for.
//! The kernel maps whole pages, so the view usually starts inside the first page of the kernel
//! mapping; that rounding is done here, once, and never shows in the API. Offsets passed to a
//! mapping's methods are offsets into the view (0 is the requested file offset).
//!
//! Operations on a sub-range (`protect`, `advise`, `flush`, `lock`, `residency`) act on every
//! page the range touches: the start is rounded down and the end up to the mapping's page size
//! (the base page, or the huge page size for `MAP_HUGETLB` maps). An empty range is a no-op; a
//! range that leaves the view is an [`OutOfBounds`](crate::ErrorKind::OutOfBounds) error.
//!
//! # Who else can reach the memory
//! Every mapping knows its [`Reach`], decided when it is made:
//! * [`Reach::Exclusive`] — only this mapping can change the bytes: private anonymous memory,
//!   a private map of `/dev/zero`, a copy-on-write map of a memfd sealed against writing and
//!   shrinking, or a read-only map of such a memfd. Slices and typed views are safe here.
//! * [`Reach::Shared`] — others can change the bytes but cannot take them away: shared
//!   anonymous memory (shared with children after fork), a shared map of `/dev/zero`, a memfd
//!   sealed against shrinking. Atomics are safe here; plain slices are not.
//! * [`Reach::Truncatable`] — a file anyone may shrink: ordinary files, unsealed memfds and
//!   shm objects, devices. Only the fault-guarded copies are safe, because a truncation turns
//!   the next access into a SIGBUS.
//!
//! Copies (`read_at`, `write_at`, cursors; see [`crate::fault`]) work on every mapping.
//! Borrowing other memory as a slice is `unsafe`, with the contract written on the method.
//!
//! # Zero lengths
//! Mapping a zero-length file, or a zero-length window (`offset` at the end of the file, or an
//! explicit `len(0)`), succeeds and yields an empty mapping: no system call is made, every
//! empty range is valid, every non-empty one is out of bounds, and it cannot grow. Anonymous
//! and device mappings need a length: zero is an [`InvalidInput`](crate::ErrorKind::InvalidInput).

mod create;
mod lifecycle;
mod mapping;
pub(crate) mod open;
mod options;
mod pages;

pub use lifecycle::{Advice, Flush, RemapMode, Residency, UncheckedAdvice};
pub use mapping::{Mapping, SharedAtomic};
pub use options::{HugePageSize, MapOptions};

use bitflags::bitflags;

bitflags! {
    /// Access rights of mapped pages (`PROT_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Protection: u8 {
        /// Pages can be read.
        const READ = 1;
        /// Pages can be written.
        const WRITE = 1 << 1;
        /// Pages can be executed. Together with `WRITE` only through an `unsafe` opt-in (W^X).
        const EXEC = 1 << 2;
    }
}

impl Protection {
    /// Read and write.
    pub const READ_WRITE: Protection = Protection::READ.union(Protection::WRITE);

    /// The access in words: "no", "read", "read-write", "read-exec", …
    pub fn describe(self) -> &'static str {
        const NAMES: [&str; 8] = [
            "no",
            "read",
            "write",
            "read-write",
            "exec",
            "read-exec",
            "write-exec",
            "read-write-exec",
        ];
        NAMES[usize::from(self.bits() & 7)]
    }

    /// True when both write and execute are asked for.
    pub fn is_write_exec(self) -> bool {
        self.contains(Protection::WRITE | Protection::EXEC)
    }

    fn to_prot_flags(self) -> crate::sys::ProtFlags {
        use crate::sys::ProtFlags;
        let mut flags = ProtFlags::empty();
        flags.set(ProtFlags::READ, self.contains(Protection::READ));
        flags.set(ProtFlags::WRITE, self.contains(Protection::WRITE));
        flags.set(ProtFlags::EXEC, self.contains(Protection::EXEC));
        flags
    }

    fn to_mprotect_flags(self) -> crate::sys::MprotectFlags {
        use crate::sys::MprotectFlags;
        let mut flags = MprotectFlags::empty();
        flags.set(MprotectFlags::READ, self.contains(Protection::READ));
        flags.set(MprotectFlags::WRITE, self.contains(Protection::WRITE));
        flags.set(MprotectFlags::EXEC, self.contains(Protection::EXEC));
        flags
    }
}

/// Whether writes are shared with the file and other processes, or private copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sharing {
    /// `MAP_SHARED`: writes reach the file (or, for anonymous memory, children after fork).
    Shared,
    /// `MAP_PRIVATE`: copy-on-write; writes reach neither the file nor any other mapping.
    Private,
}

/// Who besides this mapping can change or remove its bytes. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Only this mapping can change the bytes.
    Exclusive,
    /// Others can change the bytes, but nobody can make them vanish.
    Shared,
    /// Others can change the bytes, and a truncation of the file makes them vanish.
    Truncatable,
}

/// What a mapping maps, for messages and for the reach rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Anonymous memory (`MAP_ANONYMOUS`).
    Anonymous,
    /// A regular file, shm object or memfd.
    File,
    /// `/dev/zero`.
    DevZero,
    /// Another character or block device.
    Device,
}
