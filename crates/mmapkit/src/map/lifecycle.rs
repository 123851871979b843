//! What can be done to a mapping after it is made: protect, advise, flush, lock, residency,
//! remap (grow/shrink), seal. Each takes a range of the view (`..` for all of it) and acts on
//! the pages that range touches; see the [module docs](super) for the rounding rule.

use std::ops::{Range, RangeBounds};
use std::ptr::NonNull;

use super::mapping::Mapping;
use super::options::write_exec_refused;
use super::{Backing, Protection, Reach};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Errno, MemoryAdvice, MlockFlags, MremapFlags, MsyncFlags};

/// Advice that never changes what this process reads from the mapping (madvise(2)); the
/// fork-related advice decides only what children get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// No special treatment (`MADV_NORMAL`).
    Normal,
    /// Expect sequential access: read ahead aggressively, drop pages behind (`MADV_SEQUENTIAL`).
    Sequential,
    /// Expect random access: no read-ahead (`MADV_RANDOM`).
    Random,
    /// Expect access soon: start reading the file in (`MADV_WILLNEED`).
    WillNeed,
    /// Back the range with transparent huge pages where possible (`MADV_HUGEPAGE`).
    HugePage,
    /// Never use transparent huge pages here (`MADV_NOHUGEPAGE`).
    NoHugePage,
    /// Fault every page in for reading now (`MADV_POPULATE_READ`, Linux 5.14).
    PopulateRead,
    /// Fault every page in for writing now (`MADV_POPULATE_WRITE`, Linux 5.14); needs write
    /// access, and breaks copy-on-write sharing of private pages.
    PopulateWrite,
    /// The pages are cold: reclaim them first (`MADV_COLD`, Linux 5.4). Contents are kept.
    Cold,
    /// Reclaim the pages now (`MADV_PAGEOUT`, Linux 5.4). Contents are kept (swapped or
    /// written back).
    PageOut,
    /// Leave the range out of core dumps (`MADV_DONTDUMP`).
    DontDump,
    /// Include the range in core dumps again (`MADV_DODUMP`).
    DoDump,
    /// Let KSM merge identical pages (`MADV_MERGEABLE`).
    Mergeable,
    /// Stop KSM merging (`MADV_UNMERGEABLE`).
    Unmergeable,
    /// Children created by fork get the range zero-filled (`MADV_WIPEONFORK`, private
    /// anonymous memory only).
    WipeOnFork,
    /// Undo `WipeOnFork` (`MADV_KEEPONFORK`).
    KeepOnFork,
    /// Children created by fork get the range again (`MADV_DOFORK`).
    DoFork,
}

impl Advice {
    fn to_sys(self) -> MemoryAdvice {
        match self {
            Advice::Normal => MemoryAdvice::Normal,
            Advice::Sequential => MemoryAdvice::Sequential,
            Advice::Random => MemoryAdvice::Random,
            Advice::WillNeed => MemoryAdvice::WillNeed,
            Advice::HugePage => MemoryAdvice::LinuxHugepage,
            Advice::NoHugePage => MemoryAdvice::LinuxNoHugepage,
            Advice::PopulateRead => MemoryAdvice::LinuxPopulateRead,
            Advice::PopulateWrite => MemoryAdvice::LinuxPopulateWrite,
            Advice::Cold => MemoryAdvice::LinuxCold,
            Advice::PageOut => MemoryAdvice::LinuxPageOut,
            Advice::DontDump => MemoryAdvice::LinuxDontDump,
            Advice::DoDump => MemoryAdvice::LinuxDoDump,
            Advice::Mergeable => MemoryAdvice::LinuxMergeable,
            Advice::Unmergeable => MemoryAdvice::LinuxUnmergeable,
            Advice::WipeOnFork => MemoryAdvice::LinuxWipeOnFork,
            Advice::KeepOnFork => MemoryAdvice::LinuxKeepOnFork,
            Advice::DoFork => MemoryAdvice::LinuxDoFork,
        }
    }
}

/// Advice that can change what the bytes read as, or remove them from a child process; only
/// through [`Mapping::advise_unchecked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UncheckedAdvice {
    /// Drop the pages now (`MADV_DONTNEED`): private anonymous memory reads as zeros after,
    /// private file pages revert to the file's contents.
    DontNeed,
    /// The pages may be freed lazily (`MADV_FREE`): they read as their old contents or as zeros.
    Free,
    /// Punch a hole in the backing file or shmem (`MADV_REMOVE`): the range reads as zeros.
    Remove,
    /// Children created by fork do not get the range at all (`MADV_DONTFORK`).
    DontFork,
}

impl UncheckedAdvice {
    fn to_sys(self) -> MemoryAdvice {
        match self {
            UncheckedAdvice::DontNeed => MemoryAdvice::LinuxDontNeed,
            UncheckedAdvice::Free => MemoryAdvice::LinuxFree,
            UncheckedAdvice::Remove => MemoryAdvice::LinuxRemove,
            UncheckedAdvice::DontFork => MemoryAdvice::LinuxDontFork,
        }
    }
}

/// How [`Mapping::flush_range`] writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flush {
    /// Write dirty pages and wait for the write to finish (`MS_SYNC`).
    Sync,
    /// Start writing dirty pages and return (`MS_ASYNC`).
    Async,
    /// `MS_SYNC | MS_INVALIDATE`: write back, then ask other mappings of the file to see the
    /// file's current contents (on Linux the page cache is already coherent).
    SyncInvalidate,
}

/// Whether [`Mapping::remap`] may move the mapping to a new address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemapMode {
    /// Grow or shrink where it is; growing fails with `OutOfMemory` if the addresses after the
    /// mapping are taken.
    InPlace,
    /// Move if needed (`MREMAP_MAYMOVE`): contents are kept, the address may change.
    MayMove,
}

/// Which pages of a range are in RAM, from [`Mapping::residency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    page_size: usize,
    /// One byte per page, bit 0 set when resident (mincore's vector).
    pages: Vec<u8>,
}

impl Residency {
    /// Size of each page in bytes.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// How many pages the range touches.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// How many of them are resident.
    pub fn resident_pages(&self) -> usize {
        self.pages.iter().filter(|&&page| page & 1 != 0).count()
    }

    /// Whether page `index` (0 is the page holding the range's first byte) is resident.
    pub fn is_resident(&self, index: usize) -> bool {
        self.pages.get(index).is_some_and(|&page| page & 1 != 0)
    }

    /// Residency page by page.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        self.pages.iter().map(|&page| page & 1 != 0)
    }
}

impl Mapping {
    /// Changes the protection of the pages `range` touches (mprotect(2)). Write and execute
    /// together are refused; see [`protect_write_exec`](Self::protect_write_exec).
    pub fn protect(
        &mut self,
        range: impl RangeBounds<usize>,
        protection: Protection,
    ) -> Result<()> {
        if protection.is_write_exec() {
            return Err(write_exec_refused("protect"));
        }
        let range = self.byte_range("protect", range)?;
        self.protect_pages(range, protection)
    }

    /// Like [`protect`](Self::protect), but allows write and execute together.
    ///
    /// # Safety
    /// Memory both writable and executable lets any write become code: the caller guarantees
    /// that nothing untrusted can write into the range.
    pub unsafe fn protect_write_exec(
        &mut self,
        range: impl RangeBounds<usize>,
        protection: Protection,
    ) -> Result<()> {
        let range = self.byte_range("protect", range)?;
        self.protect_pages(range, protection)
    }

    fn protect_pages(&mut self, range: Range<usize>, protection: Protection) -> Result<()> {
        let (address, len) = self.page_span(&range);
        if len > 0 {
            self.refuse_if_sealed("protect", &range)?;
            // SAFETY: the pages belong to this mapping; `&mut self` guarantees no borrow of the
            // memory is alive, so none relies on access this call may take away.
            unsafe { sys::mprotect(address, len, protection.to_mprotect_flags()) }.map_err(
                |errno| {
                    Error::os("protect", errno).with_range(range.start as u64, range.len() as u64)
                },
            )?;
            self.protection.set(self.view_pages(&range), protection);
        }
        Ok(())
    }

    /// Gives the kernel advice about the pages `range` touches (madvise(2)).
    pub fn advise(&self, range: impl RangeBounds<usize>, advice: Advice) -> Result<()> {
        let range = self.byte_range("advise", range)?;
        // SAFETY: `Advice` holds only advice that keeps the bytes' values and the mapping's
        // presence in this process, so no borrow is affected.
        unsafe { self.madvise(range, advice.to_sys()) }
    }

    /// Gives advice that may change what the bytes read as (see [`UncheckedAdvice`]).
    ///
    /// # Safety
    /// No reference into the range may rely on its contents across the call (for
    /// `DontFork`: a forked child must not touch the range).
    pub unsafe fn advise_unchecked(
        &self,
        range: impl RangeBounds<usize>,
        advice: UncheckedAdvice,
    ) -> Result<()> {
        let range = self.byte_range("advise", range)?;
        if advice != UncheckedAdvice::DontFork && !range.is_empty() {
            self.refuse_if_sealed("advise", &range)?;
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.madvise(range, advice.to_sys()) }
    }

    /// # Safety
    /// `advice` must not invalidate a borrow of the range.
    unsafe fn madvise(&self, range: Range<usize>, advice: MemoryAdvice) -> Result<()> {
        let (address, len) = self.page_span(&range);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the pages belong to this mapping; the effect on borrows is the caller's
        // contract.
        unsafe { sys::madvise(address, len, advice) }.map_err(|errno| {
            let error =
                Error::os("advise", errno).with_range(range.start as u64, range.len() as u64);
            let populating_writes = advice == MemoryAdvice::LinuxPopulateWrite;
            let populating = populating_writes || advice == MemoryAdvice::LinuxPopulateRead;
            match errno {
                // The kernel met a SIGBUS: pages past the end of the file behind the range.
                Errno::FAULT if populating && self.backing == Backing::File => {
                    error.with_kind(ErrorKind::Truncated).with_message(
                        "the file no longer covers the range (it was truncated): its pages \
                         cannot be populated",
                    )
                }
                Errno::INVAL | Errno::FAULT | Errno::PERM
                    if populating_writes
                        && !self.protection_floor(&range).contains(Protection::WRITE) =>
                {
                    error.with_hint(
                        "populating for writing needs write access, and this range is not \
                         writable: map it writable (or protect it read-write) first",
                    )
                }
                Errno::INVAL => error.with_hint(format!(
                    "this advice does not apply to a {:?} {:?} mapping on this kernel",
                    self.sharing, self.backing
                )),
                _ => error,
            }
        })
    }

    /// Writes the whole view's dirty pages back to the file and waits (msync(2) `MS_SYNC`).
    pub fn flush(&self) -> Result<()> {
        self.flush_range(.., Flush::Sync)
    }

    /// Starts writing the whole view's dirty pages back (`MS_ASYNC`).
    pub fn flush_async(&self) -> Result<()> {
        self.flush_range(.., Flush::Async)
    }

    /// Writes back the pages `range` touches, as `mode` says.
    pub fn flush_range(&self, range: impl RangeBounds<usize>, mode: Flush) -> Result<()> {
        let range = self.byte_range("flush", range)?;
        let (address, len) = self.page_span(&range);
        if len == 0 {
            return Ok(());
        }
        let flags = match mode {
            Flush::Sync => MsyncFlags::SYNC,
            Flush::Async => MsyncFlags::ASYNC,
            Flush::SyncInvalidate => MsyncFlags::SYNC | MsyncFlags::INVALIDATE,
        };
        // SAFETY: the pages belong to this mapping; msync does not change their contents.
        unsafe { sys::msync(address, len, flags) }.map_err(|errno| {
            Error::os("flush", errno).with_range(range.start as u64, range.len() as u64)
        })
    }

    /// Locks the pages `range` touches in RAM, faulting them in now (mlock2(2)).
    pub fn lock(&self, range: impl RangeBounds<usize>) -> Result<()> {
        self.lock_with("lock", range, MlockFlags::empty())
    }

    /// Locks the pages `range` touches as they are faulted in (`MLOCK_ONFAULT`).
    pub fn lock_on_fault(&self, range: impl RangeBounds<usize>) -> Result<()> {
        self.lock_with("lock_on_fault", range, MlockFlags::ONFAULT)
    }

    fn lock_with(
        &self,
        operation: &'static str,
        range: impl RangeBounds<usize>,
        flags: MlockFlags,
    ) -> Result<()> {
        let range = self.byte_range(operation, range)?;
        let (address, len) = self.page_span(&range);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the pages belong to this mapping; locking does not change their contents.
        unsafe { sys::mlock2(address, len, flags) }.map_err(|errno| {
            let error =
                Error::os(operation, errno).with_range(range.start as u64, range.len() as u64);
            match errno {
                Errno::NOMEM | Errno::AGAIN | Errno::PERM => self.why_not_locked(error),
                _ => error,
            }
        })
    }

    /// The cause of a failed mlock, among those that all look like `ENOMEM`: the lock limit,
    /// or pages that could not be brought in (memory short, or a file shorter than the range:
    /// `inspect::lock` tells that case apart).
    fn why_not_locked(&self, error: Error) -> Error {
        let privileged = rustix::thread::capabilities(None).is_ok_and(|sets| {
            sets.effective
                .contains(rustix::thread::CapabilitySet::IPC_LOCK)
        });
        if privileged {
            return error.with_hint(
                "the lock limit is not the cause (CAP_IPC_LOCK is held): the pages could not \
                 be brought into memory (memory is short, or the file ends before the range)",
            );
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
        match limit {
            Some(bytes) => error.with_hint(format!(
                "RLIMIT_MEMLOCK allows {bytes} bytes locked (ulimit -l); raise it or run with \
                 CAP_IPC_LOCK"
            )),
            None => error.with_hint(
                "the pages could not be brought into memory (memory is short, or the file ends \
                 before the range)",
            ),
        }
    }

    /// Unlocks the pages `range` touches (munlock(2)).
    pub fn unlock(&self, range: impl RangeBounds<usize>) -> Result<()> {
        let range = self.byte_range("unlock", range)?;
        let (address, len) = self.page_span(&range);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the pages belong to this mapping; unlocking does not change their contents.
        unsafe { sys::munlock(address, len) }.map_err(|errno| {
            Error::os("unlock", errno).with_range(range.start as u64, range.len() as u64)
        })
    }

    /// Which of the pages `range` touches are resident in RAM (mincore(2)).
    pub fn residency(&self, range: impl RangeBounds<usize>) -> Result<Residency> {
        let range = self.byte_range("residency", range)?;
        let (address, len) = self.page_span(&range);
        // mincore reports base pages even for huge-page mappings; keep one entry per page of
        // this mapping (all base pages of a huge page are resident together).
        let base_page = sys::page_size();
        let mut base_pages = vec![0u8; len / base_page];
        if len > 0 {
            // SAFETY: the range is page aligned and belongs to this mapping; `base_pages` has
            // one byte per base page.
            unsafe { sys::mincore(address, len, &mut base_pages) }.map_err(|errno| {
                Error::os("residency", errno).with_range(range.start as u64, range.len() as u64)
            })?;
        }
        let pages = base_pages
            .into_iter()
            .step_by(self.page_size / base_page)
            .collect();
        Ok(Residency {
            page_size: self.page_size,
            pages,
        })
    }

    /// Grows or shrinks the view to `new_len` bytes (mremap(2)); the contents up to the smaller
    /// length are kept. With [`RemapMode::MayMove`] the address may change, which is why this
    /// takes `&mut self`.
    ///
    /// Growing a file mapping past the end of the file is allowed: the new bytes read as
    /// [`Truncated`](ErrorKind::Truncated) until the file grows. Growing shared anonymous memory
    /// past its original size gives the same (the shared object does not grow). The whole
    /// mapping must have one protection, as the kernel remaps only single areas.
    pub fn remap(&mut self, new_len: usize, mode: RemapMode) -> Result<()> {
        let fail = |kind, message: &'static str| {
            Error::new(kind, "remap", message).with_range(0, new_len as u64)
        };
        if self.map_len == 0 {
            return Err(fail(
                ErrorKind::InvalidInput,
                "an empty mapping cannot grow; map again",
            ));
        }
        if new_len == 0 {
            return Err(fail(
                ErrorKind::InvalidInput,
                "the new length is zero; drop the mapping instead",
            ));
        }
        if self.sealed {
            return Err(fail(
                ErrorKind::PermissionDenied,
                "the mapping is sealed (mseal)",
            ));
        }
        if self.protection.uniform().is_none() {
            return Err(fail(
                ErrorKind::InvalidInput,
                "parts of the mapping have different protections, and mremap moves one area",
            )
            .with_hint("protect the whole mapping alike first"));
        }
        let new_map_len = self
            .lead
            .checked_add(new_len)
            .and_then(|len| len.checked_next_multiple_of(self.page_size))
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or_else(|| {
                fail(
                    ErrorKind::InvalidInput,
                    "the new length is larger than the most a mapping can address",
                )
            })?;
        if new_map_len != self.map_len {
            let flags = match mode {
                RemapMode::InPlace => MremapFlags::empty(),
                RemapMode::MayMove => MremapFlags::MAYMOVE,
            };
            // SAFETY: the mapping owns [base, base + map_len); `&mut self` guarantees nothing
            // borrows it, so a move or a shrink invalidates no reference.
            let moved =
                unsafe { sys::mremap(self.base.as_ptr().cast(), self.map_len, new_map_len, flags) }
                    .map_err(|errno| {
                        let error = Error::os("remap", errno).with_range(0, new_len as u64);
                        match (errno, mode) {
                        (Errno::NOMEM, RemapMode::InPlace) => error
                            .with_message("the addresses after the mapping are taken")
                            .with_hint("use RemapMode::MayMove"),
                        (Errno::FAULT, _) => error.with_message(
                            "the mapping was split into several kernel areas (by lock or advise \
                             on a part of it)",
                        ),
                        _ => error,
                    }
                    })?;
            self.base = NonNull::new(moved.cast()).expect("mremap never returns null on success");
            self.map_len = new_map_len;
            self.protection.resize(new_map_len / self.page_size);
        }
        self.len = new_len;
        Ok(())
    }

    /// Seals the mapping (mseal(2), Linux 6.10): from now on the kernel refuses to unmap,
    /// move, resize or re-protect it, and refuses destructive advice on read-only pages. A
    /// sealed mapping stays mapped until the process exits or execs: dropping it releases the
    /// handle but not the address range.
    pub fn seal(&mut self) -> Result<()> {
        if self.map_len == 0 || self.sealed {
            self.sealed = self.map_len != 0;
            return Ok(());
        }
        // SAFETY: the mapping owns the range and, by sealing, gives up unmapping it: `sealed`
        // makes drop skip munmap.
        unsafe { sys::mseal(self.base.as_ptr().cast(), self.map_len) }.map_err(|errno| {
            let error = Error::os("seal", errno);
            match errno {
                Errno::NOSYS | Errno::INVAL => {
                    error.with_kind(ErrorKind::Unsupported).with_message(
                        "this kernel has no mseal (it needs Linux 6.10 on a 64-bit system)",
                    )
                }
                _ => error,
            }
        })?;
        self.sealed = true;
        Ok(())
    }

    fn refuse_if_sealed(&self, operation: &'static str, range: &Range<usize>) -> Result<()> {
        if !self.sealed {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            operation,
            "the mapping is sealed (mseal): its protection and contents are fixed",
        )
        .with_range(range.start as u64, range.len() as u64))
    }

    /// True when the memory may vanish under a truncation, so that accesses need the guard.
    pub(crate) fn is_truncatable(&self) -> bool {
        self.reach() == Reach::Truncatable
    }
}
