//! userfaultfd(2): the descriptor through which the kernel hands page faults in a registered
//! range to a thread of ours, and the ioctls that resolve them.
//!
//! rustix makes the userfaultfd() call and the ioctls; linux-raw-sys (rustix's own
//! dependency) has the structures and the feature bits. UFFDIO_POISON is not among its ioctl
//! numbers, so its opcode is computed here from the structure, as the kernel header does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use linux_raw_sys::general as uapi;
use rustix::ioctl::{Opcode, Updater, opcode};

use super::{Errno, SysResult};

pub use uapi::{
    UFFD_FEATURE_MINOR_SHMEM as FEATURE_MINOR_SHMEM,
    UFFD_FEATURE_PAGEFAULT_FLAG_WP as FEATURE_WRITE_PROTECT, UFFD_FEATURE_POISON as FEATURE_POISON,
    UFFD_FEATURE_WP_ASYNC as FEATURE_WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM as FEATURE_WP_SHMEM,
};

const UFFDIO_API: Opcode = linux_raw_sys::ioctl::UFFDIO_API as Opcode;
const UFFDIO_REGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_REGISTER as Opcode;
const UFFDIO_UNREGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_UNREGISTER as Opcode;
const UFFDIO_WAKE: Opcode = linux_raw_sys::ioctl::UFFDIO_WAKE as Opcode;
const UFFDIO_COPY: Opcode = linux_raw_sys::ioctl::UFFDIO_COPY as Opcode;
const UFFDIO_WRITEPROTECT: Opcode = linux_raw_sys::ioctl::UFFDIO_WRITEPROTECT as Opcode;
const UFFDIO_CONTINUE: Opcode = linux_raw_sys::ioctl::UFFDIO_CONTINUE as Opcode;
/// `PAGEMAP_SCAN` on /proc/self/pagemap: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: Opcode = opcode::read_write::<uapi::pm_scan_arg>(b'f', 16);
/// `UFFDIO_CONTINUE_MODE_DONTWAKE` and `UFFDIO_CONTINUE_MODE_WP` (absent from linux-raw-sys).
const CONTINUE_MODE_DONTWAKE: u64 = 1;
const CONTINUE_MODE_WP: u64 = 2;
const UFFDIO_POISON: Opcode =
    opcode::read_write::<uapi::uffdio_poison>(uapi::UFFDIO as u8, uapi::_UFFDIO_POISON as u8);
/// `UFFDIO_WRITEPROTECT_MODE_WP` (absent from linux-raw-sys): protect rather than unprotect.
const WRITEPROTECT_MODE_WP: u64 = 1;
/// `USERFAULTFD_IOC_NEW` on /dev/userfaultfd: `_IO(0xAA, 0)`.
const USERFAULTFD_IOC_NEW: Opcode = opcode::none(0xAA, 0x00);

/// How the descriptor was obtained, which decides which faults it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// userfaultfd(2) with every fault (root, or vm.unprivileged_userfaultfd = 1).
    Full,
    /// /dev/userfaultfd (every fault; its file mode decides who may open it).
    Device,
    /// userfaultfd(2) with `UFFD_USER_MODE_ONLY`: faults the kernel takes on our behalf, in a
    /// system call reading into the range, fail with EFAULT instead of reaching the handler.
    UserModeOnly,
}

/// Opens a non-blocking, close-on-exec userfaultfd, trying in turn the full system call,
/// /dev/userfaultfd and the user-mode-only system call. Returns the last refusal when all fail.
pub fn open() -> SysResult<(OwnedFd, Access)> {
    use rustix::mm::UserfaultfdFlags;
    let flags = UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK;
    // SAFETY: userfaultfd creates a descriptor and changes no memory.
    let full = unsafe { rustix::mm::userfaultfd(flags) };
    let refused = match full {
        Ok(fd) => return Ok((fd, Access::Full)),
        Err(errno) => errno,
    };
    if let Ok(fd) = from_device(flags.bits()) {
        return Ok((fd, Access::Device));
    }
    let user_mode_only = UserfaultfdFlags::from_bits_retain(uapi::UFFD_USER_MODE_ONLY);
    // SAFETY: as above.
    match unsafe { rustix::mm::userfaultfd(flags | user_mode_only) } {
        Ok(fd) => Ok((fd, Access::UserModeOnly)),
        Err(_) => Err(refused),
    }
}

fn from_device(flags: u32) -> SysResult<OwnedFd> {
    let device = super::open(
        std::path::Path::new("/dev/userfaultfd"),
        super::OFlags::RDWR | super::OFlags::CLOEXEC,
        0,
    )?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the userfaultfd flags as its integer argument and
    // returns a new descriptor, which is what `NewDescriptor` describes.
    unsafe { rustix::ioctl::ioctl(&device, NewDescriptor(flags as usize)) }
}

/// The USERFAULTFD_IOC_NEW request: an integer in, a new descriptor out.
struct NewDescriptor(usize);

// SAFETY: the opcode takes an integer argument (passed as the pointer value, not
// dereferenced), mutates nothing of ours, and returns a descriptor that nothing else owns.
unsafe impl rustix::ioctl::Ioctl for NewDescriptor {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        USERFAULTFD_IOC_NEW
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.0 as *mut std::ffi::c_void
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: a successful USERFAULTFD_IOC_NEW returns a fresh descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// Features the kernel offers on a fresh descriptor (the UFFDIO_API handshake on a probe).
pub fn available_features() -> SysResult<u64> {
    let (probe, _) = open()?;
    handshake(probe.as_fd(), 0)
}

/// The UFFDIO_API handshake, asking for `features`; returns the features granted.
pub fn handshake(fd: BorrowedFd<'_>, features: u64) -> SysResult<u64> {
    let mut api = uapi::uffdio_api {
        api: u64::from(uapi::UFFD_API),
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a uffdio_api, which `api` is.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_API, _>::new(&mut api)) }?;
    Ok(api.features)
}

/// Registers `[start, start + len)` of a shared memory mapping for missing-page faults and
/// minor faults (a page that is in the file but not mapped here) and, with `write_protect`,
/// for write-protect faults.
///
/// # Safety
/// The caller owns the range: from now on, accesses to its unmapped pages block until this
/// descriptor resolves them.
pub unsafe fn register(
    fd: BorrowedFd<'_>,
    start: usize,
    len: usize,
    write_protect: bool,
) -> SysResult<()> {
    let mut mode = u64::from(uapi::UFFDIO_REGISTER_MODE_MISSING | uapi::UFFDIO_REGISTER_MODE_MINOR);
    if write_protect {
        mode |= u64::from(uapi::UFFDIO_REGISTER_MODE_WP);
    }
    let mut register = uapi::uffdio_register {
        range: range(start, len),
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a uffdio_register; the range is the caller's.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_REGISTER, _>::new(&mut register)) }
}

/// Unregisters the range; threads waiting on faults there are woken.
///
/// # Safety
/// The caller owns the range.
pub unsafe fn unregister(fd: BorrowedFd<'_>, start: usize, len: usize) -> SysResult<()> {
    let mut range = range(start, len);
    // SAFETY: UFFDIO_UNREGISTER reads a uffdio_range; the range is the caller's.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_UNREGISTER, _>::new(&mut range)) }
}

/// Wakes the threads waiting on faults in the range, which then retry their access.
pub fn wake(fd: BorrowedFd<'_>, start: usize, len: usize) -> SysResult<()> {
    let mut range = range(start, len);
    // SAFETY: UFFDIO_WAKE reads a uffdio_range and changes no memory.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_WAKE, _>::new(&mut range)) }
}

/// Atomically installs a copy of `len` bytes at `src` as the missing pages at `dst`
/// (UFFDIO_COPY), write-protected when `write_protect` is set, and with `wake` wakes the
/// threads waiting on them. On failure, returns the error and how many bytes were installed
/// before it.
///
/// # Safety
/// The caller owns the destination range (registered on `fd`, its pages missing) and `src` is
/// valid for reads of `len` bytes. `dst`, `src` and `len` are page-aligned.
pub unsafe fn copy(
    fd: BorrowedFd<'_>,
    dst: usize,
    src: *const u8,
    len: usize,
    write_protect: bool,
    wake: bool,
) -> Result<(), (Errno, usize)> {
    let mut mode = 0;
    if write_protect {
        mode |= u64::from(uapi::UFFDIO_COPY_MODE_WP);
    }
    if !wake {
        mode |= u64::from(uapi::UFFDIO_COPY_MODE_DONTWAKE);
    }
    let mut copy = uapi::uffdio_copy {
        dst: dst as u64,
        src: src as u64,
        len: len as u64,
        mode,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads and writes a uffdio_copy; the ranges are the caller's contract.
    let outcome = unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_COPY, _>::new(&mut copy)) };
    outcome.map_err(|errno| (errno, usize::try_from(copy.copy).unwrap_or(0)))
}

/// Maps the pages of the range that are in the backing file's page cache but not mapped in
/// the registered range (UFFDIO_CONTINUE), write-protected when `write_protect` is set, and
/// with `wake` wakes the threads waiting on them. Pages already mapped are an `EEXIST` error
/// after the others are mapped.
///
/// # Safety
/// The caller owns the range (registered for minor faults on `fd`) and has put the bytes it
/// wants there into the backing file; page-aligned.
pub unsafe fn continue_pages(
    fd: BorrowedFd<'_>,
    start: usize,
    len: usize,
    write_protect: bool,
    wake: bool,
) -> Result<(), (Errno, usize)> {
    let mut mode = 0;
    if write_protect {
        mode |= CONTINUE_MODE_WP;
    }
    if !wake {
        mode |= CONTINUE_MODE_DONTWAKE;
    }
    let mut request = uapi::uffdio_continue {
        range: range(start, len),
        mode,
        mapped: 0,
    };
    // SAFETY: UFFDIO_CONTINUE reads and writes a uffdio_continue; the range is the caller's.
    let outcome =
        unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_CONTINUE, _>::new(&mut request)) };
    outcome.map_err(|errno| (errno, usize::try_from(request.mapped).unwrap_or(0)))
}

/// The runs of pages in `[start, end)` written since they were last write-protected (the
/// `PAGE_IS_WRITTEN` category of PAGEMAP_SCAN, Linux 6.7), appended to `out` as address
/// ranges; the look changes nothing (the pages stay marked written). Needs a userfaultfd with
/// `UFFD_FEATURE_WP_ASYNC` registered over the range. Pages with nothing mapped count as
/// written (a write-protected page that is unmapped leaves a marker, and does not), unless
/// `present_only` asks for mapped pages alone.
pub fn written_pages(
    pagemap: BorrowedFd<'_>,
    start: usize,
    end: usize,
    present_only: bool,
    out: &mut Vec<std::ops::Range<usize>>,
) -> SysResult<()> {
    let mut category = u64::from(uapi::PAGE_IS_WRITTEN);
    if present_only {
        category |= u64::from(uapi::PAGE_IS_PRESENT);
    }
    let mut regions = [uapi::page_region {
        start: 0,
        end: 0,
        categories: 0,
    }; 256];
    let mut from = start;
    while from < end {
        let flags = u64::from(uapi::PM_SCAN_CHECK_WPASYNC);
        let mut request = uapi::pm_scan_arg {
            size: std::mem::size_of::<uapi::pm_scan_arg>() as u64,
            flags,
            start: from as u64,
            end: end as u64,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: category,
            category_anyof_mask: 0,
            return_mask: u64::from(uapi::PAGE_IS_WRITTEN),
        };
        // SAFETY: PAGEMAP_SCAN reads a pm_scan_arg and writes up to `vec_len` page_regions
        // into `vec`, which is `regions`, and changes nothing else.
        let found =
            unsafe { rustix::ioctl::ioctl(pagemap, Updater::<PAGEMAP_SCAN, _>::new(&mut request)) };
        found?;
        let count = regions
            .iter()
            .take_while(|region| region.end > region.start)
            .count();
        out.extend(
            regions[..count]
                .iter()
                .map(|region| region.start as usize..region.end as usize),
        );
        for region in &mut regions[..count] {
            region.end = 0;
        }
        let walked = request.walk_end as usize;
        if walked <= from {
            break;
        }
        from = walked;
    }
    Ok(())
}

/// Write-protects the present pages of the range (`protect`), or lifts the protection and
/// wakes the threads waiting on it.
///
/// # Safety
/// The caller owns the range (registered for write-protect faults on `fd`).
pub unsafe fn write_protect(
    fd: BorrowedFd<'_>,
    start: usize,
    len: usize,
    protect: bool,
) -> SysResult<()> {
    let mut request = uapi::uffdio_writeprotect {
        range: range(start, len),
        mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads a uffdio_writeprotect; the range is the caller's.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_WRITEPROTECT, _>::new(&mut request)) }
}

/// Marks the missing pages of the range poisoned (UFFDIO_POISON): every access raises SIGBUS
/// until the pages are discarded (MADV_DONTNEED). Wakes the threads waiting on them.
///
/// # Safety
/// The caller owns the range (registered on `fd`, its pages missing).
pub unsafe fn poison(fd: BorrowedFd<'_>, start: usize, len: usize) -> SysResult<()> {
    let mut request = uapi::uffdio_poison {
        range: range(start, len),
        mode: 0,
        updated: 0,
    };
    // SAFETY: UFFDIO_POISON reads and writes a uffdio_poison; the range is the caller's.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<UFFDIO_POISON, _>::new(&mut request)) }
}

/// A page fault the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address, rounded down to the base page.
    pub address: usize,
    /// The access was a write.
    pub write: bool,
    /// The fault is a write to a write-protected page (as opposed to a missing page).
    pub write_protect: bool,
}

/// Bytes of one `struct uffd_msg`.
pub const MESSAGE_BYTES: usize = std::mem::size_of::<uapi::uffd_msg>();

/// Reads the pending messages into `buf` (a multiple of [`MESSAGE_BYTES`]) without blocking
/// and appends the page faults among them to `faults`. Returns how many messages were read: 0
/// when none was pending.
pub fn read_faults(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    faults: &mut Vec<Fault>,
) -> SysResult<usize> {
    let read = match rustix::io::read(fd, &mut *buf) {
        Ok(read) => read,
        Err(Errno::AGAIN) => return Ok(0),
        Err(errno) => return Err(errno),
    };
    let messages = buf[..read].chunks_exact(MESSAGE_BYTES);
    let count = messages.len();
    for message in messages {
        // struct uffd_msg: u8 event, 7 reserved bytes, then for a page fault u64 flags and
        // u64 address, little-endian like the machine.
        if u32::from(message[0]) != uapi::UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let word = |at: usize| u64::from_ne_bytes(message[at..at + 8].try_into().unwrap_or([0; 8]));
        let flags = word(8);
        faults.push(Fault {
            address: word(16) as usize,
            write: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
            write_protect: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WP) != 0,
        });
    }
    Ok(count)
}

fn range(start: usize, len: usize) -> uapi::uffdio_range {
    uapi::uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_opcode_matches_the_kernel_header() {
        // _IOWR(0xAA, 0x08, struct uffdio_poison): direction 3, size 32.
        assert_eq!(UFFDIO_POISON as u64, 0xC020_AA08);
        assert_eq!(MESSAGE_BYTES, 32);
    }
}
