//! How a [`Mapping`] is made from [`MapOptions`]: the descriptor is examined (type, size,
//! seals), the request is checked as a whole, the one mmap call is made, and a failure is
//! explained in terms of what was asked — the kernel's bare `EINVAL`, `EACCES` or `ENOMEM`
//! rarely says which argument was wrong.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use rustix::fs::{FileType, SealFlags};

use super::mapping::{Mapping, RawParts};
use super::options::{HugePageSize, MapOptions, Placement};
use super::{Backing, Protection, Reach, Sharing};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Errno, MapFlags};

impl MapOptions {
    /// Maps `len` (non-zero) bytes of anonymous memory.
    pub(super) fn map_anonymous_len(&self, len: usize) -> Result<Mapping> {
        let sharing = self.sharing.unwrap_or(Sharing::Private);
        let page_size = match self.huge_pages {
            Some(size) => size.bytes()?,
            None => sys::page_size(),
        };
        let request = Request {
            backing: Backing::Anonymous,
            sharing,
            protection: self.resolve_protection(Protection::READ_WRITE)?,
            offset: 0,
            len,
            stable_len: match sharing {
                Sharing::Private => None,
                Sharing::Shared => Some(len as u64),
            },
            seals: SealFlags::empty(),
            page_size,
            hugetlb: self.huge_pages.is_some(),
        };
        self.map_request(&request, None)
    }

    /// Maps a descriptor; `path` names it in errors when the caller knows it.
    pub(super) fn map_fd_at(&self, fd: BorrowedFd<'_>, path: Option<PathBuf>) -> Result<Mapping> {
        let context = |error: Error| match path.clone().or_else(|| fd_path(fd)) {
            Some(path) => error.with_path(path),
            None => error,
        };
        self.prepare_fd(fd)
            .and_then(|request| self.map_request(&request, Some(fd)))
            .map_err(context)
    }

    /// Checks the descriptor and the options against each other and works out the view.
    fn prepare_fd(&self, fd: BorrowedFd<'_>) -> Result<Request> {
        let stat = sys::fstat(fd).map_err(|errno| match errno {
            Errno::BADF => Error::os("map", errno).with_message("not an open file descriptor"),
            _ => Error::os("map", errno),
        })?;
        let backing = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Backing::File,
            FileType::CharacterDevice if stat.st_rdev == rustix::fs::makedev(1, 5) => {
                Backing::DevZero
            }
            FileType::CharacterDevice | FileType::BlockDevice => Backing::Device,
            FileType::Directory => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "map",
                    "is a directory; only files and devices can be mapped",
                ));
            }
            other => {
                let what = match other {
                    FileType::Fifo => "a FIFO",
                    FileType::Socket => "a socket",
                    FileType::Symlink => "a symbolic link",
                    _ => "a file of an unknown type",
                };
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "map",
                    format!("cannot map {what}; only files and devices can be mapped"),
                ));
            }
        };
        let sharing = self.sharing.unwrap_or(Sharing::Shared);
        let protection = self.resolve_protection(Protection::READ)?;
        let huge_page_size = hugetlbfs_page_size(fd, &stat);
        if self.huge_pages.is_some() && huge_page_size.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "map",
                "huge_pages applies to anonymous memory; files get huge pages from hugetlbfs",
            ));
        }

        let file_size = u64::try_from(stat.st_size).unwrap_or(0);
        let len = match (backing, self.len) {
            (Backing::File, Some(len)) => len,
            (Backing::File, None) => {
                let rest = file_size
                    .checked_sub(self.offset)
                    .ok_or_else(|| past_the_end(self.offset, file_size))?;
                usize::try_from(rest).map_err(|_| too_long(rest))?
            }
            (_, Some(len)) if len > 0 => len,
            (_, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "map",
                    "a device mapping needs a non-zero length",
                )
                .with_hint("call MapOptions::len"));
            }
        };
        if self.offset.checked_add(len as u64).is_none() {
            return Err(
                Error::new(ErrorKind::InvalidInput, "map", "offset + len overflows")
                    .with_range(self.offset, len as u64),
            );
        }
        if backing == Backing::File && self.offset > file_size {
            return Err(past_the_end(self.offset, file_size).with_range(self.offset, len as u64));
        }
        // Only memfds carry seals that matter (shm_open files are born with F_SEAL_SEAL and no
        // other), and a memfd has no name in any directory: skip the call for linked files.
        let seals = match backing {
            Backing::File if stat.st_nlink == 0 => {
                sys::fcntl_get_seals(fd).unwrap_or(SealFlags::empty())
            }
            _ => SealFlags::empty(),
        };
        let stable_len = match backing {
            // The size is read again after the seals: seals are only ever added, so a size
            // read once SHRINK is set can no longer fall (a peer could have shrunk the file
            // between the first fstat and sealing).
            Backing::File if seals.contains(SealFlags::SHRINK) => {
                let sealed = sys::fstat(fd).map_err(|errno| Error::os("map", errno))?;
                Some(u64::try_from(sealed.st_size).unwrap_or(0))
            }
            // A shared map of /dev/zero is an anonymous shmem object exactly as long as the
            // mapping; its offset is ignored (below), so all of it is stable.
            Backing::DevZero if sharing == Sharing::Shared => Some(len as u64),
            _ => None,
        };
        Ok(Request {
            backing,
            sharing,
            protection,
            // Every byte of /dev/zero is zero: the offset means nothing, and passing it on
            // would make the kernel index its shmem object past the end (SIGBUS).
            offset: if backing == Backing::DevZero {
                0
            } else {
                self.offset
            },
            len,
            stable_len,
            seals,
            page_size: huge_page_size.unwrap_or_else(sys::page_size),
            hugetlb: huge_page_size.is_some(),
        })
    }

    /// Makes the mmap call for a checked request and wraps the result.
    fn map_request(&self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Mapping> {
        let range = |error: Error| error.with_range(request.offset, request.len as u64);
        if request.len > isize::MAX as usize {
            return Err(range(too_long(request.len as u64)));
        }
        let page_size = request.page_size;
        // Huge pages taken at fault time instead of reserved now can run out, and running out
        // is a SIGBUS: such memory needs the guard like a truncatable file.
        let reach = if request.hugetlb && self.no_reserve {
            Reach::Truncatable
        } else {
            request.reach()
        };
        if request.len == 0 {
            return Ok(Mapping::empty(
                request.backing,
                request.sharing,
                reach,
                page_size,
                request.offset,
            ));
        }
        let lead = (request.offset % page_size as u64) as usize;
        let map_len = (lead + request.len)
            .checked_next_multiple_of(page_size)
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or_else(|| {
                range(Error::new(
                    ErrorKind::InvalidInput,
                    "map",
                    format!(
                        "length {} in whole pages of {page_size} bytes is larger than {}, the \
                         most a mapping can address",
                        request.len,
                        isize::MAX
                    ),
                ))
            })?;

        let (address, placement_flags) = match self.placement {
            Placement::Anywhere => (0, MapFlags::empty()),
            Placement::Hint(address) => (address, MapFlags::empty()),
            Placement::Exactly(address) if address % page_size != 0 || address == 0 => {
                return Err(range(Error::new(
                    ErrorKind::InvalidInput,
                    "map",
                    format!(
                        "fixed address {address:#x} is not a non-zero multiple of the page size {page_size}"
                    ),
                )));
            }
            Placement::Exactly(address) => (address, MapFlags::FIXED_NOREPLACE),
        };
        let flags = self.map_flags(request.sharing, page_size) | placement_flags;
        // SAFETY: no MAP_FIXED: the kernel never replaces an existing mapping (FIXED_NOREPLACE
        // fails with EEXIST instead), so no memory anyone else owns is touched.
        let mapped = unsafe {
            sys::mmap(
                address as *mut _,
                map_len,
                request.protection.to_prot_flags(),
                flags,
                fd,
                request.offset - lead as u64,
            )
        }
        .map_err(|errno| range(self.explain_mmap_error(errno, request, fd, page_size)))?;

        let mapping = Mapping::from_raw_parts(RawParts {
            base: mapped.cast(),
            map_len,
            lead,
            len: request.len,
            page_size,
            backing: request.backing,
            sharing: request.sharing,
            reach,
            protection: request.protection,
            file_offset: request.offset,
            stable_len: request.stable_len,
        });
        if let Placement::Exactly(address) = self.placement
            && mapped as usize != address
        {
            // Kernels before 4.17 treat FIXED_NOREPLACE as a hint; `mapping` unmaps on drop.
            return Err(range(occupied(address)));
        }
        if let Some(enabled) = self.transparent_huge_pages {
            let advice = if enabled {
                super::Advice::HugePage
            } else {
                super::Advice::NoHugePage
            };
            mapping.advise(.., advice).map_err(range)?;
        }
        Ok(mapping)
    }

    fn map_flags(&self, sharing: Sharing, page_size: usize) -> MapFlags {
        let mut flags = match sharing {
            Sharing::Shared => MapFlags::SHARED,
            Sharing::Private => MapFlags::PRIVATE,
        };
        flags.set(MapFlags::POPULATE, self.populate);
        flags.set(MapFlags::STACK, self.stack);
        flags.set(MapFlags::NORESERVE, self.no_reserve);
        flags.set(MapFlags::LOCKED, self.locked);
        if self.huge_pages.is_some() {
            const MAP_HUGE_SHIFT: u32 = 26;
            let log2 = page_size.trailing_zeros();
            flags |= MapFlags::HUGETLB | MapFlags::from_bits_retain(log2 << MAP_HUGE_SHIFT);
        }
        flags
    }

    fn explain_mmap_error(
        &self,
        errno: Errno,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
        page_size: usize,
    ) -> Error {
        let error = Error::os("map", errno);
        if let (Errno::ACCESS, Some(fd)) = (errno, fd)
            && let Some(explained) = explain_access_mode(fd, request)
        {
            return explained;
        }
        match errno {
            Errno::NOMEM if self.huge_pages.is_some() => {
                let size = self.huge_pages.unwrap_or(HugePageSize::Default);
                let file = size.reservation_file(page_size);
                let reserved = std::fs::read_to_string(&file).unwrap_or_default();
                error
                    .with_message(format!(
                        "no free huge pages of {} KiB ({} reserved)",
                        page_size / 1024,
                        reserved.trim()
                    ))
                    .with_hint(format!("reserve some with `echo N > {file}`"))
            }
            Errno::NOMEM | Errno::AGAIN if self.locked => error
                .with_kind(ErrorKind::OutOfMemory)
                .with_hint("raise RLIMIT_MEMLOCK (ulimit -l) to lock this much"),
            Errno::NOMEM => error.with_hint("check `ulimit -v` and vm.max_map_count"),
            Errno::EXIST => match self.placement {
                Placement::Exactly(address) => occupied(address),
                _ => error,
            },
            Errno::NODEV => error.with_message(format!(
                "this {} does not support mmap",
                match request.backing {
                    Backing::File => "file system",
                    _ => "device",
                }
            )),
            Errno::PERM | Errno::ACCESS if request.protection.contains(Protection::EXEC) => {
                error.with_hint("executable mappings need a file system mounted without noexec")
            }
            Errno::PERM if !request.seals.is_empty() => {
                error.with_hint("the memfd is sealed against writing; map it read-only or private")
            }
            _ => error,
        }
    }
}

/// What the options and the descriptor together ask of the kernel.
struct Request {
    backing: Backing,
    sharing: Sharing,
    protection: Protection,
    offset: u64,
    len: usize,
    /// Bytes of the backing object (from its start) that can never vanish, when known.
    stable_len: Option<u64>,
    seals: SealFlags,
    /// Size of the pages behind the mapping.
    page_size: usize,
    /// Whether they are hugetlb pages (anonymous `MAP_HUGETLB`, or a hugetlbfs file).
    hugetlb: bool,
}

impl Request {
    /// Who besides the new mapping can change or remove its bytes (see the module docs).
    fn reach(&self) -> Reach {
        let view_end = self.offset.saturating_add(self.len as u64);
        let within_stable = self.stable_len.is_some_and(|stable| view_end <= stable);
        match (self.backing, self.sharing) {
            (Backing::Anonymous | Backing::DevZero, Sharing::Private) => Reach::Exclusive,
            (Backing::Anonymous | Backing::DevZero, Sharing::Shared) => Reach::Shared,
            (Backing::File, _) if within_stable && self.seals.contains(SealFlags::WRITE) => {
                Reach::Exclusive
            }
            (Backing::File, _) if within_stable => Reach::Shared,
            (Backing::File | Backing::Device, _) => Reach::Truncatable,
        }
    }
}

/// Says which access the descriptor lacks, when that is why mmap failed with `EACCES`.
fn explain_access_mode(fd: BorrowedFd<'_>, request: &Request) -> Option<Error> {
    let mode = sys::fcntl_getfl(fd).ok()? & rustix::fs::OFlags::RWMODE;
    if mode == rustix::fs::OFlags::WRONLY {
        return Some(Error::new(
            ErrorKind::PermissionDenied,
            "map",
            "the descriptor is open for writing only; mappings need read access",
        ));
    }
    let writes_through =
        request.protection.contains(Protection::WRITE) && request.sharing == Sharing::Shared;
    (writes_through && mode != rustix::fs::OFlags::RDWR).then(|| {
        Error::new(
            ErrorKind::PermissionDenied,
            "map",
            "the descriptor is open read-only, so a shared mapping cannot be writable",
        )
        .with_hint("open the file read-write, or map it private (copy-on-write)")
    })
}

/// The huge page size of a file on hugetlbfs (including `MFD_HUGETLB` memfds), whose mappings
/// must be aligned and sized in huge pages; `None` for every other file. Only files whose
/// block size exceeds the base page are asked about their file system.
fn hugetlbfs_page_size(fd: BorrowedFd<'_>, stat: &sys::Stat) -> Option<usize> {
    const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
    let block_size = usize::try_from(stat.st_blksize).ok()?;
    if block_size <= sys::page_size() {
        return None;
    }
    let statfs = sys::fstatfs(fd).ok()?;
    (statfs.f_type as u64 == HUGETLBFS_MAGIC).then_some(block_size)
}

/// The path behind a descriptor, for error messages only.
fn fd_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

fn past_the_end(offset: u64, file_size: u64) -> Error {
    Error::new(
        ErrorKind::OutOfBounds,
        "map",
        format!("offset is past the end of the file (size {file_size})"),
    )
    .with_offset(offset)
}

fn too_long(len: u64) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        "map",
        format!(
            "length {len} is larger than {}, the most a mapping can address",
            isize::MAX
        ),
    )
}

fn occupied(address: usize) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        "map",
        format!("the address range at {address:#x} is already mapped"),
    )
    .with_hint("pick a free address, or use address_hint to let the kernel choose")
}
