//! [`MapOptions`]: the builder, and the one procedure that turns options plus a descriptor into
//! a [`Mapping`]. All argument checking happens here, before the kernel is asked, so that bad
//! input gets a message that names the mistake rather than a bare `EINVAL`.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::OFlags;

use super::mapping::Mapping;
use super::open::open_without_waiting;
use super::{Protection, Sharing};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

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
    pub(super) fn reservation_file(self, bytes: usize) -> String {
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
pub(super) enum Placement {
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
    pub(super) offset: u64,
    pub(super) len: Option<usize>,
    pub(super) protection: Option<Protection>,
    pub(super) write: bool,
    pub(super) exec: bool,
    pub(super) sharing: Option<Sharing>,
    pub(super) populate: bool,
    pub(super) huge_pages: Option<HugePageSize>,
    pub(super) transparent_huge_pages: Option<bool>,
    pub(super) stack: bool,
    pub(super) no_reserve: bool,
    pub(super) locked: bool,
    pub(super) placement: Placement,
    pub(super) allow_write_exec: bool,
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

    /// `MAP_NORESERVE`: do not reserve swap space (or, with [`huge_pages`](Self::huge_pages),
    /// huge pages) now. Under memory pressure a first touch may then meet the OOM killer; for
    /// huge pages it raises SIGBUS, so such a mapping is reached only through the fault guard.
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
        self.map_anonymous_len(len)
    }

    /// Maps an open file.
    pub fn map_file(&self, file: &File) -> Result<Mapping> {
        self.map_fd(file)
    }

    /// Opens `path` with the access the options need, then maps it. The open never waits: a
    /// FIFO (or a device that would wait in open(2)) is refused at once instead of blocking
    /// (see `map::open`).
    pub fn map_path(&self, path: impl AsRef<Path>) -> Result<Mapping> {
        let path = path.as_ref();
        let protection = self.resolve_protection(Protection::READ)?;
        let writes_through = protection.contains(Protection::WRITE)
            && self.sharing.unwrap_or(Sharing::Shared) == Sharing::Shared;
        let access = if writes_through {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let (fd, _) = open_without_waiting(path, access, 0)
            .map_err(|errno| Error::os("open", errno).with_path(path))?;
        self.map_fd_at(fd.as_fd(), Some(path.to_path_buf()))
    }

    /// Maps any descriptor: a regular file, a memfd or shm object, `/dev/zero`, a device.
    pub fn map_fd(&self, fd: impl AsFd) -> Result<Mapping> {
        self.map_fd_at(fd.as_fd(), None)
    }

    pub(super) fn resolve_protection(&self, default: Protection) -> Result<Protection> {
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
