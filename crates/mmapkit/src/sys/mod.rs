//! One function per system call, and nothing else.
//!
//! This layer has no policy and allocates nothing: it turns each call into a Rust signature with
//! an [`Errno`] result, so that the layers above deal with one error shape. rustix makes the
//! calls where it has them; `libc` makes the few it lacks (mincore, mseal, cachestat,
//! sigaction). Callers
//! add context (which operation, which path) when they turn an `Errno` into the library's
//! [`Error`](crate::Error).
//!
//! Functions that take addresses are `unsafe`: the kernel acts on whatever is mapped there, so
//! the caller must own the range.

#[cfg(target_os = "linux")]
pub mod uffd;

use std::ffi::c_void;
use std::os::fd::{BorrowedFd, OwnedFd};

pub use rustix::fs::{Advice as FileAdvice, OFlags, SealFlags, Stat, StatFs};
pub use rustix::io::Errno;
pub use rustix::mm::{
    Advice as MemoryAdvice, MapFlags, MlockFlags, MprotectFlags, MremapFlags, MsyncFlags, ProtFlags,
};

/// Result of a system call.
pub type SysResult<T> = Result<T, Errno>;

/// The size of a base page (`sysconf(_SC_PAGESIZE)`, getpagesize(2)).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Maps `len` bytes of `fd` at `offset`, or anonymous memory when `fd` is `None` (mmap(2)).
///
/// # Safety
/// With `MAP_FIXED` in `flags`, whatever was mapped at `addr` is replaced; the caller must own
/// that range. Without it, `addr` is only a hint and any value is allowed.
pub unsafe fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
    fd: Option<BorrowedFd<'_>>,
    offset: u64,
) -> SysResult<*mut c_void> {
    match fd {
        // SAFETY: forwarded from this function's contract.
        Some(fd) => unsafe { rustix::mm::mmap(addr, len, prot, flags, fd, offset) },
        // SAFETY: forwarded from this function's contract.
        None => unsafe { rustix::mm::mmap_anonymous(addr, len, prot, flags) },
    }
}

/// Removes the mappings in `[addr, addr + len)` (munmap(2)).
///
/// # Safety
/// The caller owns the range and nothing refers to it any more.
pub unsafe fn munmap(addr: *mut c_void, len: usize) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::munmap(addr, len) }
}

/// Changes the protection of whole pages (mprotect(2)).
///
/// # Safety
/// The caller owns the range, and no reference into it relies on access the new protection
/// takes away.
pub unsafe fn mprotect(addr: *mut c_void, len: usize, prot: MprotectFlags) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::mprotect(addr, len, prot) }
}

/// Gives the kernel advice about a range (madvise(2)).
///
/// # Safety
/// The caller owns the range; destructive advice (`DONTNEED`, `FREE`, `REMOVE`) discards
/// contents, which no reference may rely on.
pub unsafe fn madvise(addr: *mut c_void, len: usize, advice: MemoryAdvice) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::madvise(addr, len, advice) }
}

/// Writes dirty pages of a shared file mapping back to the file (msync(2)).
///
/// # Safety
/// The caller owns the range.
pub unsafe fn msync(addr: *mut c_void, len: usize, flags: MsyncFlags) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::msync(addr, len, flags) }
}

/// Locks pages in RAM, now or as they are faulted in (mlock2(2)).
///
/// # Safety
/// The caller owns the range.
pub unsafe fn mlock2(addr: *mut c_void, len: usize, flags: MlockFlags) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::mlock_with(addr, len, flags) }
}

/// Unlocks pages (munlock(2)).
///
/// # Safety
/// The caller owns the range.
pub unsafe fn munlock(addr: *mut c_void, len: usize) -> SysResult<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::munlock(addr, len) }
}

/// Grows or shrinks a mapping, moving it if `MAYMOVE` allows (mremap(2)).
///
/// # Safety
/// The caller owns the old range; after a move, nothing may refer to the old address.
pub unsafe fn mremap(
    addr: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: MremapFlags,
) -> SysResult<*mut c_void> {
    // SAFETY: forwarded from this function's contract.
    unsafe { rustix::mm::mremap(addr, old_len, new_len, flags) }
}

/// Reports which pages of a range are resident, one byte per page, bit 0 set when resident
/// (mincore(2)). `vec` holds at least `len.div_ceil(page_size())` bytes.
///
/// # Safety
/// `addr` is page aligned and the caller owns the range.
pub unsafe fn mincore(addr: *mut c_void, len: usize, vec: &mut [u8]) -> SysResult<()> {
    debug_assert!(vec.len() >= len.div_ceil(page_size()));
    // SAFETY: `vec` has room for one byte per page of the range (checked above in debug
    // builds, guaranteed by the contract); the kernel validates the address range itself.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Seals a range against munmap, mprotect, mremap and destructive madvise (mseal(2), Linux
/// 6.10). Fails with `ENOSYS` on older kernels and on 32-bit systems.
///
/// # Safety
/// The caller owns the range and accepts that it can never be unmapped by this process.
#[cfg(target_os = "linux")]
pub unsafe fn mseal(addr: *mut c_void, len: usize) -> SysResult<()> {
    // SAFETY: mseal takes (address, length, flags = 0) and only changes the range's
    // permissions to change; the caller owns the range.
    let rc = unsafe { libc::syscall(libc::SYS_mseal, addr, len, 0 as libc::c_ulong) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// File status (fstat(2)).
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    rustix::fs::fstat(fd)
}

/// File system status of the file behind a descriptor (fstatfs(2)).
pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<StatFs> {
    rustix::fs::fstatfs(fd)
}

/// Sets a file's length (ftruncate(2)).
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    rustix::fs::ftruncate(fd, len)
}

/// Advice about a file's page cache (posix_fadvise(2)); `len` 0 means to the end.
pub fn fadvise(fd: BorrowedFd<'_>, offset: u64, len: u64, advice: FileAdvice) -> SysResult<()> {
    rustix::fs::fadvise(fd, offset, std::num::NonZeroU64::new(len), advice)
}

/// The file status flags, including the access mode (fcntl(2) `F_GETFL`).
pub fn fcntl_getfl(fd: BorrowedFd<'_>) -> SysResult<OFlags> {
    rustix::fs::fcntl_getfl(fd)
}

/// The seals on a memfd or shmem file (fcntl(2) `F_GET_SEALS`); `EINVAL` for other files.
pub fn fcntl_get_seals(fd: BorrowedFd<'_>) -> SysResult<SealFlags> {
    rustix::fs::fcntl_get_seals(fd)
}

/// Creates an anonymous file in memory (memfd_create(2)).
pub fn memfd_create(name: &str, flags: rustix::fs::MemfdFlags) -> SysResult<OwnedFd> {
    rustix::fs::memfd_create(name, flags)
}

/// Opens or creates a POSIX shared memory object, `/dev/shm/NAME`, as glibc's shm_open(3)
/// does: open(2) with `O_NOFOLLOW` and `O_CLOEXEC` added. `name` is given without the leading
/// slash.
pub fn shm_open(name: &str, flags: OFlags, mode: u32) -> SysResult<OwnedFd> {
    rustix::fs::open(
        format!("/dev/shm/{name}"),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    )
}

/// Removes a POSIX shared memory object's name (shm_unlink(3)).
pub fn shm_unlink(name: &str) -> SysResult<()> {
    rustix::shm::unlink(format!("/{name}"))
}

/// Allocates the blocks of `[offset, offset + len)` now, so that later writes cannot fail for
/// lack of space (fallocate(2)); `ENOSPC` when the file system is full.
pub fn fallocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> SysResult<()> {
    rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::empty(), offset, len)
}

/// Opens a path (openat(2) relative to the working directory), always with `O_CLOEXEC`.
pub fn open(path: &std::path::Path, flags: OFlags, mode: u32) -> SysResult<OwnedFd> {
    rustix::fs::open(
        path,
        flags | OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    )
}

/// Reads into `buf` (read(2)); the count read, 0 at the end.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    rustix::io::read(fd, buf)
}

/// Closes a descriptor by the system call itself (close(2)): libc's `close`, which dropping an
/// `OwnedFd` calls, is a thread cancellation point, and a cancellation acted on inside the
/// library aborts a C caller's process.
pub fn close(fd: OwnedFd) {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor was owned here and is given up: nothing else closes or uses it.
    unsafe { rustix::io::close(fd.into_raw_fd()) };
}

/// Sets the file status flags that can change after open, `O_NONBLOCK` among them (fcntl(2)
/// `F_SETFL`).
pub fn fcntl_setfl(fd: BorrowedFd<'_>, flags: OFlags) -> SysResult<()> {
    rustix::fs::fcntl_setfl(fd, flags)
}

/// Changes a file's permission bits (fchmod(2)).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode))
}

/// The descriptor flags of a descriptor number, to learn whether it is open and whether
/// `FD_CLOEXEC` is set (fcntl(2) `F_GETFD`); `EBADF` when nothing is open under it. Takes a
/// number rather than a descriptor because it is how a number of unknown ownership is examined
/// without taking it.
pub fn fcntl_getfd_raw(fd: std::os::fd::RawFd) -> SysResult<rustix::io::FdFlags> {
    // SAFETY: F_GETFD reads the descriptor table entry only; it acts on no memory and changes
    // nothing, whatever the number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        Err(last_errno())
    } else {
        Ok(rustix::io::FdFlags::from_bits_retain(flags as u32))
    }
}

/// Frees the blocks of `[offset, offset + len)` of a file, keeping its size
/// (fallocate(2) `FALLOC_FL_PUNCH_HOLE`): the range reads as zeros after, and every mapping
/// of it loses those pages.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> SysResult<()> {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
}

/// Adds seals to a memfd (fcntl(2) `F_ADD_SEALS`).
pub fn fcntl_add_seals(fd: BorrowedFd<'_>, seals: SealFlags) -> SysResult<()> {
    rustix::fs::fcntl_add_seals(fd, seals)
}

/// Duplicates a descriptor to the lowest free number at or above `min`, with `FD_CLOEXEC`
/// (fcntl(2) `F_DUPFD_CLOEXEC`).
pub fn fcntl_dupfd_cloexec(fd: BorrowedFd<'_>, min: i32) -> SysResult<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, min)
}

/// Sets or clears `FD_CLOEXEC` (fcntl(2) `F_SETFD`).
pub fn fcntl_set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> SysResult<()> {
    let flags = if cloexec {
        rustix::io::FdFlags::CLOEXEC
    } else {
        rustix::io::FdFlags::empty()
    };
    rustix::io::fcntl_setfd(fd, flags)
}

/// Changes the calling thread's signal mask (rt_sigprocmask(2) with `how` = `SIG_BLOCK`,
/// `SIG_UNBLOCK` or `SIG_SETMASK`) and returns the previous one, in the kernel's 64-bit form
/// (bit `n - 1` is signal `n`) rather than libc's 128-byte `sigset_t`: the cheapest way to
/// change one signal. libc, because rustix offers it only in its unstable runtime module. An
/// invalid `how` changes nothing and returns 0.
pub fn sigprocmask_thread(how: libc::c_int, set: u64) -> u64 {
    let mut previous: u64 = 0;
    // SAFETY: both pointers are valid 8-byte sets, the size the kernel expects on Linux; the
    // call changes only the calling thread's mask, and touches no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &set as *const u64,
            &mut previous as *mut u64,
            std::mem::size_of::<u64>(),
        )
    };
    previous
}

/// A record-lock request of `kind` for the one byte at `offset`.
fn one_byte_lock(kind: libc::c_int, offset: i64) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value to fill in.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = kind as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = offset;
    request.l_len = 1;
    request
}

/// A POSIX record lock of one byte: write-locks (`lock`) or unlocks byte `offset` of the
/// file, without waiting (fcntl(2) `F_SETLK`); the descriptor must be open for writing to
/// lock. Such locks belong to the process, vanish when it dies or closes any descriptor of
/// the file, and are not inherited by fork; `EAGAIN` or `EACCES` when another process holds a
/// lock there. libc, because rustix offers only whole-file locks.
pub fn fcntl_lock_byte(fd: BorrowedFd<'_>, offset: i64, lock: bool) -> SysResult<()> {
    let request = one_byte_lock(if lock { libc::F_WRLCK } else { libc::F_UNLCK }, offset);
    // SAFETY: F_SETLK reads a valid flock; it changes only this process's locks.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_SETLK,
            &request,
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// The process holding a write lock on byte `offset` of the file (fcntl(2) `F_GETLK`, asking
/// whether a read lock could be placed there), if any: `Some(pid)`, or `Some(-1)` for an
/// open-file-description lock, whose holder the kernel does not name (0 for a holder in
/// another pid namespace). Read locks are not reported, nor are locks of the calling
/// process itself.
pub fn fcntl_write_lock_holder(fd: BorrowedFd<'_>, offset: i64) -> SysResult<Option<i32>> {
    let mut request = one_byte_lock(libc::F_RDLCK, offset);
    // SAFETY: F_GETLK reads and writes a valid flock and changes no lock.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::F_GETLK,
            &mut request,
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok((request.l_type != libc::F_UNLCK as libc::c_short).then_some(request.l_pid))
}

/// Sleeps while the shared futex word at `word` holds `expected`, at most `timeout`
/// (futex(2) `FUTEX_WAIT`, not private: the word may live in memory shared between
/// processes). Returns `EAGAIN` when the word differs, `ETIMEDOUT` on timeout, `EINTR`.
pub fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) -> SysResult<()> {
    let timeout = timeout.map(|duration| rustix::thread::futex::Timespec {
        tv_sec: duration.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(duration.subsec_nanos()),
    });
    rustix::thread::futex::wait(
        word,
        rustix::thread::futex::Flags::empty(),
        expected,
        timeout.as_ref(),
    )
}

/// Wakes at most `count` waiters of the shared futex word (futex(2) `FUTEX_WAKE`); returns
/// how many woke.
pub fn futex_wake(word: &std::sync::atomic::AtomicU32, count: u32) -> SysResult<usize> {
    rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), count)
}

/// Creates an eventfd (eventfd(2)), close-on-exec and non-blocking.
pub fn eventfd(initial: u32) -> SysResult<OwnedFd> {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(initial, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
}

/// Sends `bytes` and the descriptors `fds` over a Unix socket (sendmsg(2) with SCM_RIGHTS).
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> SysResult<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    rustix::net::sendmsg(
        socket,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// Receives bytes into `buf` and up to `max_fds` descriptors from a Unix socket (recvmsg(2)
/// with SCM_RIGHTS, `MSG_CMSG_CLOEXEC`). Returns the byte count and the descriptors.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> SysResult<(usize, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    Ok((received.bytes, fds))
}

/// Page-cache counts of `len` bytes of `fd` from `offset` (0: to the end), in pages
/// (cachestat(2), Linux 6.5): cached, dirty, under writeback, evicted, recently evicted.
#[cfg(target_os = "linux")]
pub fn cachestat(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
) -> SysResult<linux_raw_sys::general::cachestat> {
    use std::os::fd::AsRawFd;
    let range = linux_raw_sys::general::cachestat_range { off: offset, len };
    let mut stat = linux_raw_sys::general::cachestat {
        nr_cache: 0,
        nr_dirty: 0,
        nr_writeback: 0,
        nr_evicted: 0,
        nr_recently_evicted: 0,
    };
    // SAFETY: cachestat reads `range` and writes `stat`, both valid for the call; it takes a
    // descriptor by number, which `fd` keeps open.
    let result = unsafe {
        libc::syscall(
            linux_raw_sys::general::__NR_cachestat as libc::c_long,
            fd.as_raw_fd(),
            &range as *const linux_raw_sys::general::cachestat_range,
            &mut stat as *mut linux_raw_sys::general::cachestat,
            0u32,
        )
    };
    if result == 0 {
        Ok(stat)
    } else {
        Err(last_errno())
    }
}

/// Installs a signal handler (or with `None`, only reads the current one) and returns the one
/// it replaces (sigaction(2)).
///
/// # Safety
/// `action` must describe a handler that is async-signal-safe and valid for as long as it is
/// installed.
pub unsafe fn sigaction(
    signal: i32,
    action: Option<&libc::sigaction>,
) -> SysResult<libc::sigaction> {
    let action = action.map_or(std::ptr::null(), |action| action as *const libc::sigaction);
    // SAFETY: sigaction only reads `action` (or nothing, when null) and writes `previous`,
    // both valid for the call; the handler's validity is the caller's contract. An all-zero
    // sigaction is a valid value.
    unsafe {
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, action, &mut previous) == 0 {
            Ok(previous)
        } else {
            Err(last_errno())
        }
    }
}
