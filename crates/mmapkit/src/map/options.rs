//! [`MapOptions`]: the builder, and the one procedure that turns options plus a descriptor into
//! a [`Mapping`]. All argument checking happens here, before the kernel is asked, so that bad
//! input gets a message that names the mistake rather than a bare `EINVAL`.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, SealFlags};

use super::mapping::Mapping;
use super::{Backing, Protection, Reach, Sharing};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, Errno, MapFlags};

/// The size of the pages behind a `MAP_HUGETLB` mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HugePageSize {
    /// The system's default huge page size (`Hugepagesize` in /proc/meminfo; 2 MiB on x86-64).
    Default,
    /// An explicit size in bytes: a power of two the CPU supports (2 MiB or 1 GiB on x86-64).
    Bytes(usize),
}

impl HugePageSize {
    /// 2 MiB pages.
    pub const MIB_2: HugePageSize = HugePageSize::Bytes(2 << 20);
    /// 1 GiB pages.
    pub const GIB_1: HugePageSize = HugePageSize::Bytes(1 << 30);

    /// The size in bytes, reading the system default when needed.
    pub fn bytes(self) -> Result<usize> {
        match self {
            HugePageSize::Bytes(size) if size.is_power_of_two() && size > sys::page_size() => {
                Ok(size)
            }
            HugePageSize::Bytes(size) => Err(Error::new(
                ErrorKind::InvalidInput,
                "map",
                format!("huge page size {size} is not a power of two above the base page size"),
            )),
            HugePageSize::Default => default_huge_page_size(),
        }
    }

    /// The file that says how many pages of this size are reserved.
    fn reservation_file(self, bytes: usize) -> String {
        match self {
            HugePageSize::Default => "/proc/sys/vm/nr_hugepages".to_owned(),
            HugePageSize::Bytes(_) => format!(
                "/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages",
                bytes / 1024
            ),
        }
    }
}

fn default_huge_page_size() -> Result<usize> {
    let unsupported = || {
        Error::new(
            ErrorKind::Unsupported,
            "map",
            "this kernel reports no huge page size (Hugepagesize in /proc/meminfo)",
        )
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|_| unsupported())?;
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Hugepagesize:"))
        .ok_or_else(unsupported)?;
    let kib: usize = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|_| unsupported())?;
    Ok(kib * 1024)
}

/// Where the kernel should place the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Anywhere,
    /// A hint: the kernel uses the address if it is free, and another one if not.
    Hint(usize),
    /// Exactly here, or fail with `AlreadyExists`; never replaces an existing mapping.
    Exactly(usize),
}

/// Builder for every kind of [`Mapping`].
///
/// ```
/// use mmapkit::MapOptions;
/// # fn main() -> mmapkit::Result<()> {
/// let mut scratch = MapOptions::new().len(1 << 20).map_anonymous()?;
/// scratch.as_mut_slice()?[..5].copy_from_slice(b"hello");
///
/// let file = tempfile::tempfile().unwrap();
/// file.set_len(4096).unwrap();
/// let shared = MapOptions::new().write(true).map_file(&file)?;
/// shared.write_at(0, b"visible to read(2)")?;
/// shared.flush()?;
/// # Ok(()) }
/// ```
///
/// Defaults: file and device mappings are shared and read-only, anonymous mappings are private
/// and read-write; a file mapping covers the file from `offset` to its end.
#[derive(Debug, Clone)]
pub struct MapOptions {
    offset: u64,
    len: Option<usize>,
    protection: Option<Protection>,
    write: bool,
    exec: bool,
    sharing: Option<Sharing>,
    populate: bool,
    huge_pages: Option<HugePageSize>,
    transparent_huge_pages: Option<bool>,
    stack: bool,
    no_reserve: bool,
    locked: bool,
    placement: Placement,
    allow_write_exec: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions::new()
    }
}

impl MapOptions {
    /// Options with every default.
    pub fn new() -> MapOptions {
        MapOptions {
            offset: 0,
            len: None,
            protection: None,
            write: false,
            exec: false,
            sharing: None,
            populate: false,
            huge_pages: None,
            transparent_huge_pages: None,
            stack: false,
            no_reserve: false,
            locked: false,
            placement: Placement::Anywhere,
            allow_write_exec: false,
        }
    }

    /// Byte offset into the file where the view starts. Any value: the page alignment the
    /// kernel needs is handled inside.
    pub fn offset(&mut self, offset: u64) -> &mut Self {
        self.offset = offset;
        self
    }

    /// Length of the view in bytes. Files default to "from `offset` to the end"; anonymous and
    /// device mappings need it.
    pub fn len(&mut self, len: usize) -> &mut Self {
        self.len = Some(len);
        self
    }

    /// Adds (or removes) write access.
    pub fn write(&mut self, write: bool) -> &mut Self {
        self.write = write;
        self
    }

    /// Adds (or removes) execute access. With write access too, mapping is refused unless
    /// [`allow_write_exec`](Self::allow_write_exec) was called.
    pub fn exec(&mut self, exec: bool) -> &mut Self {
        self.exec = exec;
        self
    }

    /// Sets the whole protection, overriding `write` and `exec`.
    pub fn protection(&mut self, protection: Protection) -> &mut Self {
        self.protection = Some(protection);
        self
    }

    /// `MAP_SHARED`: writes reach the file, other processes, and children after fork.
    pub fn shared(&mut self) -> &mut Self {
        self.sharing = Some(Sharing::Shared);
        self
    }

    /// `MAP_PRIVATE`: copy-on-write. Private file mappings are writable even from a read-only
    /// descriptor, and their writes reach neither the file nor any other mapping.
    pub fn private(&mut self) -> &mut Self {
        self.sharing = Some(Sharing::Private);
        self
    }

    /// `MAP_POPULATE`: fault every page in now (read ahead for files) instead of on first touch.
    pub fn populate(&mut self, populate: bool) -> &mut Self {
        self.populate = populate;
        self
    }

    /// `MAP_HUGETLB`: back the mapping with reserved huge pages of `size`. The length is
    /// rounded up to a whole huge page. Fails with `OutOfMemory` when none are reserved.
    pub fn huge_pages(&mut self, size: HugePageSize) -> &mut Self {
        self.huge_pages = Some(size);
        self
    }

    /// Transparent huge pages: `MADV_HUGEPAGE` (true) or `MADV_NOHUGEPAGE` (false) right after
    /// mapping. For files on file systems with large folios, `true` also makes read-ahead fill
    /// the page cache in 2 MiB folios, which later mappings can map with one entry each.
    pub fn transparent_huge_pages(&mut self, enabled: bool) -> &mut Self {
        self.transparent_huge_pages = Some(enabled);
        self
    }

    /// `MAP_STACK`: the mapping is used as a thread stack.
    pub fn stack(&mut self, stack: bool) -> &mut Self {
        self.stack = stack;
        self
    }

    /// `MAP_NORESERVE`: do not reserve swap space; writes may fail later with SIGSEGV under
    /// memory pressure if overcommit is exhausted (see vm.overcommit_memory).
    pub fn no_reserve(&mut self, no_reserve: bool) -> &mut Self {
        self.no_reserve = no_reserve;
        self
    }

    /// `MAP_LOCKED`: lock the pages in RAM, as `mlock` would (subject to RLIMIT_MEMLOCK).
    pub fn locked(&mut self, locked: bool) -> &mut Self {
        self.locked = locked;
        self
    }

    /// Ask for the mapping near `address`; the kernel picks another address if it is taken.
    pub fn address_hint(&mut self, address: usize) -> &mut Self {
        self.placement = Placement::Hint(address);
        self
    }

    /// Map exactly at `address` (page aligned) or fail with `AlreadyExists`. Existing mappings
    /// are never replaced (`MAP_FIXED_NOREPLACE`).
    pub fn fixed_address(&mut self, address: usize) -> &mut Self {
        self.placement = Placement::Exactly(address);
        self
    }

    /// Permits write and execute access together.
    ///
    /// # Safety
    /// Memory that is both writable and executable lets any write become code. The caller
    /// guarantees that nothing untrusted can write into the mapping.
    pub unsafe fn allow_write_exec(&mut self) -> &mut Self {
        self.allow_write_exec = true;
        self
    }

    /// Maps anonymous memory: zero-filled, private by default; shared memory is inherited by
    /// children across fork.
    pub fn map_anonymous(&self) -> Result<Mapping> {
        let len = match self.len {
            Some(0) | None => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "map",
                    "an anonymous mapping needs a non-zero length",
                )
                .with_hint("call MapOptions::len"));
            }
            Some(len) => len,
        };
        if self.offset != 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "map",
                "an anonymous mapping has no offset",
            )
            .with_offset(self.offset));
        }
        let sharing = self.sharing.unwrap_or(Sharing::Private);
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
        };
        self.map_request(&request, None)
    }

    /// Maps an open file.
    pub fn map_file(&self, file: &File) -> Result<Mapping> {
        self.map_fd(file)
    }

    /// Opens `path` with the access the options need, then maps it.
    pub fn map_path(&self, path: impl AsRef<Path>) -> Result<Mapping> {
        let path = path.as_ref();
        let protection = self.resolve_protection(Protection::READ)?;
        let writes_through = protection.contains(Protection::WRITE)
            && self.sharing.unwrap_or(Sharing::Shared) == Sharing::Shared;
        let file = OpenOptions::new()
            .read(true)
            .write(writes_through)
            .open(path)
            .map_err(|error| Error::io("open", &error).with_path(path))?;
        self.map_fd_at(file.as_fd(), Some(path.to_path_buf()))
    }

    /// Maps any descriptor: a regular file, a memfd or shm object, `/dev/zero`, a device.
    pub fn map_fd(&self, fd: impl AsFd) -> Result<Mapping> {
        self.map_fd_at(fd.as_fd(), None)
    }

    fn map_fd_at(&self, fd: BorrowedFd<'_>, path: Option<PathBuf>) -> Result<Mapping> {
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
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "map",
                    format!("cannot map a {other:?}; only files and devices can be mapped"),
                ));
            }
        };
        let sharing = self.sharing.unwrap_or(Sharing::Shared);
        let protection = self.resolve_protection(Protection::READ)?;

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
        let stable_len = match (backing, sharing) {
            (Backing::File, _) if seals.contains(SealFlags::SHRINK) => Some(file_size),
            (Backing::DevZero, Sharing::Shared) => self.offset.checked_add(len as u64),
            _ => None,
        };
        Ok(Request {
            backing,
            sharing,
            protection,
            offset: self.offset,
            len,
            stable_len,
            seals,
        })
    }

    fn resolve_protection(&self, default: Protection) -> Result<Protection> {
        let mut protection = self.protection.unwrap_or(default);
        if self.protection.is_none() {
            protection.set(
                Protection::WRITE,
                self.write || protection.contains(Protection::WRITE),
            );
            protection.set(Protection::EXEC, self.exec);
        }
        if protection.is_write_exec() && !self.allow_write_exec {
            return Err(write_exec_refused("map"));
        }
        Ok(protection)
    }

    /// Makes the mmap call for a checked request and wraps the result.
    fn map_request(&self, request: &Request, fd: Option<BorrowedFd<'_>>) -> Result<Mapping> {
        let range = |error: Error| error.with_range(request.offset, request.len as u64);
        if request.len > isize::MAX as usize {
            return Err(range(too_long(request.len as u64)));
        }
        if request.offset.checked_add(request.len as u64).is_none() {
            return Err(range(Error::new(
                ErrorKind::InvalidInput,
                "map",
                "offset + len overflows",
            )));
        }
        let page_size = match self.huge_pages {
            Some(size) => size.bytes().map_err(range)?,
            None => sys::page_size(),
        };
        let reach = request.reach();
        if request.len == 0 {
            return Ok(Mapping::empty(
                request.backing,
                request.sharing,
                reach,
                page_size,
            ));
        }
        let lead = (request.offset % page_size as u64) as usize;
        let map_len = (lead + request.len)
            .checked_next_multiple_of(page_size)
            .filter(|&len| len <= isize::MAX as usize)
            .ok_or_else(|| range(too_long(request.len as u64)))?;

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

        let mapping = Mapping::from_raw_parts(super::mapping::RawParts {
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
        format!("length {len} is larger than isize::MAX, the most a mapping can address"),
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

pub(super) fn write_exec_refused(operation: &'static str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        operation,
        "write and execute together are refused (W^X)",
    )
    .with_hint(
        "use the unsafe opt-in (MapOptions::allow_write_exec or Mapping::protect_write_exec)",
    )
}
