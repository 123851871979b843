//! `mmapkit_mapping_t`: file, device and anonymous mappings.
//!
//! Reads and writes through `mmapkit_mapping_read_at`/`write_at` are guarded: a file
//! truncated under the mapping gives `MMAPKIT_ETRUNCATED` instead of SIGBUS. The raw address
//! (`mmapkit_mapping_data`) is there for C code that wants it, with plain mmap's rules.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use mmapkit::{Advice, Flush, MapOptions, Mapping, Protection, Result};

use crate::handles;
use crate::status::{MMAPKIT_OK, call, invalid};

/// A mapping. Safe to use from several threads at once; `mmapkit_mapping_protect` waits for
/// the other calls on the handle to finish.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_mapping_t {
    _opaque: [u8; 0],
}

/// Map for writing (files: opened read-write; shared writes reach the file).
pub const MMAPKIT_MAP_WRITE: u32 = 1;
/// Copy-on-write: writes stay in this process (the default for anonymous memory).
pub const MMAPKIT_MAP_PRIVATE: u32 = 1 << 1;
/// Shared: writes are seen by every mapping of the file, and anonymous memory is shared with
/// children forked later (the default for files).
pub const MMAPKIT_MAP_SHARED: u32 = 1 << 2;
/// Fault every page in at once (MAP_POPULATE).
pub const MMAPKIT_MAP_POPULATE: u32 = 1 << 3;
const MAP_FLAGS: u32 =
    MMAPKIT_MAP_WRITE | MMAPKIT_MAP_PRIVATE | MMAPKIT_MAP_SHARED | MMAPKIT_MAP_POPULATE;

/// No access.
pub const MMAPKIT_PROT_NONE: u32 = 0;
/// Pages can be read.
pub const MMAPKIT_PROT_READ: u32 = 1;
/// Pages can be written.
pub const MMAPKIT_PROT_WRITE: u32 = 1 << 1;
/// Pages can be executed (never together with write).
pub const MMAPKIT_PROT_EXEC: u32 = 1 << 2;

/// Start the write-back and return (MS_ASYNC); without it a flush waits (MS_SYNC).
pub const MMAPKIT_FLUSH_ASYNC: u32 = 1;
/// Write back, then invalidate other mappings' views (MS_SYNC | MS_INVALIDATE).
pub const MMAPKIT_FLUSH_INVALIDATE: u32 = 1 << 1;

/// madvise advice that never changes what the bytes read as.
pub const MMAPKIT_ADVICE_NORMAL: c_int = 0;
/// Expect sequential access: read ahead aggressively, drop behind.
pub const MMAPKIT_ADVICE_SEQUENTIAL: c_int = 1;
/// Expect random access: no read-ahead.
pub const MMAPKIT_ADVICE_RANDOM: c_int = 2;
/// Read the pages in now, in the background.
pub const MMAPKIT_ADVICE_WILLNEED: c_int = 3;
/// Back the range with transparent huge pages.
pub const MMAPKIT_ADVICE_HUGEPAGE: c_int = 4;
/// Never back the range with transparent huge pages.
pub const MMAPKIT_ADVICE_NOHUGEPAGE: c_int = 5;
/// Fault the pages in readable, now.
pub const MMAPKIT_ADVICE_POPULATE_READ: c_int = 6;
/// Fault the pages in writable, now.
pub const MMAPKIT_ADVICE_POPULATE_WRITE: c_int = 7;
/// The pages are cold: reclaim them first.
pub const MMAPKIT_ADVICE_COLD: c_int = 8;
/// Reclaim the pages now (written back first if needed).
pub const MMAPKIT_ADVICE_PAGEOUT: c_int = 9;
/// Leave the range out of core dumps.
pub const MMAPKIT_ADVICE_DONTDUMP: c_int = 10;
/// Include the range in core dumps again.
pub const MMAPKIT_ADVICE_DODUMP: c_int = 11;

/// The registry's object behind a `mmapkit_mapping_t`.
pub(crate) struct MappingObject(RwLock<Mapping>);

const KIND: &str = "mmapkit_mapping_t";

fn mapping(handle: *const mmapkit_mapping_t) -> Result<std::sync::Arc<MappingObject>> {
    handles::get::<MappingObject, _>(handle, KIND)
}

/// A mapping in use by one call, shared with other calls or alone, through the fork gate.
struct InUse<Guard> {
    mapping: Guard,
    _gate: Option<RwLockReadGuard<'static, ()>>,
}

impl<Guard: std::ops::Deref<Target = Mapping>> std::ops::Deref for InUse<Guard> {
    type Target = Mapping;
    fn deref(&self) -> &Mapping {
        &self.mapping
    }
}

impl<Guard: std::ops::DerefMut<Target = Mapping>> std::ops::DerefMut for InUse<Guard> {
    fn deref_mut(&mut self) -> &mut Mapping {
        &mut self.mapping
    }
}

impl MappingObject {
    fn read(&self) -> InUse<RwLockReadGuard<'_, Mapping>> {
        let gate = handles::through_fork_gate();
        InUse {
            mapping: self.0.read().unwrap_or_else(PoisonError::into_inner),
            _gate: gate,
        }
    }

    fn write(&self) -> InUse<RwLockWriteGuard<'_, Mapping>> {
        let gate = handles::through_fork_gate();
        InUse {
            mapping: self.0.write().unwrap_or_else(PoisonError::into_inner),
            _gate: gate,
        }
    }
}

/// Shared or private from the flags; `default` (one of the two flags) when neither is given.
fn set_sharing(options: &mut MapOptions, flags: u32, default: u32) -> Result<()> {
    let wanted = flags & (MMAPKIT_MAP_PRIVATE | MMAPKIT_MAP_SHARED);
    match if wanted == 0 { default } else { wanted } {
        MMAPKIT_MAP_PRIVATE => options.private(),
        MMAPKIT_MAP_SHARED => options.shared(),
        _ => {
            return Err(invalid(
                "map",
                "MMAPKIT_MAP_PRIVATE and MMAPKIT_MAP_SHARED together",
            ));
        }
    };
    Ok(())
}

/// The options of a file or descriptor mapping.
fn file_options(flags: u32, offset: u64, length: usize) -> Result<MapOptions> {
    handles::check_flags("map", flags, MAP_FLAGS)?;
    let mut options = MapOptions::new();
    options
        .offset(offset)
        .write(flags & MMAPKIT_MAP_WRITE != 0)
        .populate(flags & MMAPKIT_MAP_POPULATE != 0);
    set_sharing(&mut options, flags, MMAPKIT_MAP_SHARED)?;
    if length != 0 {
        options.len(length);
    }
    Ok(options)
}

/// Maps the file at `path`: `length` bytes from `offset` (length 0: to the end of the
/// file). Devices need a length (`/dev/zero` with `MMAPKIT_MAP_SHARED | MMAPKIT_MAP_WRITE`
/// is memory shared with forked children). On success `*out` is the new handle; on failure
/// NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_map_path(
    path: *const c_char,
    flags: u32,
    offset: u64,
    length: usize,
    out: *mut *mut mmapkit_mapping_t,
) -> c_int {
    call("mmapkit_map_path", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let path = unsafe { handles::path(path) }?;
        let mapping = file_options(flags, offset, length)?.map_path(path)?;
        handles::hand_out(MappingObject(RwLock::new(mapping)), out)
    })
}

/// Maps the open descriptor `fd` (a file, memfd, shm object or device), as
/// `mmapkit_map_path` does. The descriptor stays the caller's: it is neither taken nor
/// closed, and may be closed once this returns.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_map_fd(
    fd: c_int,
    flags: u32,
    offset: u64,
    length: usize,
    out: *mut *mut mmapkit_mapping_t,
) -> c_int {
    call("mmapkit_map_fd", || {
        handles::clear_out(out)?;
        let fd = handles::borrowed_fd(fd, "fd")?;
        let mapping = file_options(flags, offset, length)?.map_fd(fd)?;
        handles::hand_out(MappingObject(RwLock::new(mapping)), out)
    })
}

/// Maps `length` bytes of zeroed anonymous memory, readable and writable: private by
/// default, shared with children forked later with `MMAPKIT_MAP_SHARED`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_map_anonymous(
    length: usize,
    flags: u32,
    out: *mut *mut mmapkit_mapping_t,
) -> c_int {
    call("mmapkit_map_anonymous", || {
        handles::clear_out(out)?;
        handles::check_flags("map", flags, MAP_FLAGS)?;
        let mut options = MapOptions::new();
        options
            .len(length)
            .populate(flags & MMAPKIT_MAP_POPULATE != 0);
        set_sharing(&mut options, flags, MMAPKIT_MAP_PRIVATE)?;
        let mapping = options.map_anonymous()?;
        handles::hand_out(MappingObject(RwLock::new(mapping)), out)
    })
}

/// Unmaps and destroys the handle. NULL does nothing. Pointers from `mmapkit_mapping_data`
/// are dangling afterwards.
///
/// # Safety
/// None beyond the C rules: any pointer value is checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_unmap(mapping: *mut mmapkit_mapping_t) -> c_int {
    call("mmapkit_mapping_unmap", || {
        handles::destroy::<MappingObject, _>(mapping, KIND)
    })
}

/// The mapping's length in bytes.
///
/// # Safety
/// `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_len(
    mapping: *const mmapkit_mapping_t,
    len: *mut usize,
) -> c_int {
    call("mmapkit_mapping_len", || {
        let length = self::mapping(mapping)?.read().len();
        handles::put(len, length)
    })
}

/// The mapping's first byte, for raw access. Raw access has plain mmap's rules: a page of a
/// truncated file kills the process with SIGBUS here; `mmapkit_mapping_read_at` and
/// `mmapkit_mapping_write_at` report `MMAPKIT_ETRUNCATED` instead.
///
/// # Safety
/// `data` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_data(
    mapping: *const mmapkit_mapping_t,
    data: *mut *mut c_void,
) -> c_int {
    call("mmapkit_mapping_data", || {
        let address = self::mapping(mapping)?.read().as_mut_ptr();
        handles::put(data, address.cast())
    })
}

/// Copies `len` bytes at `offset` of the mapping into `buf`. `MMAPKIT_ETRUNCATED` if the file
/// no longer covers them; `MMAPKIT_EOUTOFBOUNDS` if they lie outside the mapping.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes (checked against the mapping first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_read_at(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    call("mmapkit_mapping_read_at", || {
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        handles::fits("read_at", offset, len, mapping.len())?;
        // SAFETY: the length fits the mapping; the caller's buffer holds `len` bytes.
        let buf = unsafe { handles::bytes_mut(buf, len) }?;
        mapping.read_at(offset, buf)?;
        Ok(MMAPKIT_OK)
    })
}

/// Copies `len` bytes from `data` to `offset` of the mapping (which must be writable).
///
/// # Safety
/// `data` is NULL or valid for `len` bytes (checked against the mapping first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_write_at(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    data: *const c_void,
    len: usize,
) -> c_int {
    call("mmapkit_mapping_write_at", || {
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        handles::fits("write_at", offset, len, mapping.len())?;
        // SAFETY: the length fits the mapping; the caller's data holds `len` bytes.
        let data = unsafe { handles::bytes(data, len) }?;
        mapping.write_at(offset, data)?;
        Ok(MMAPKIT_OK)
    })
}

/// Writes the range's dirty pages back to the file (msync): waits unless
/// `MMAPKIT_FLUSH_ASYNC`. `len` `MMAPKIT_TO_END` means to the end.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_flush(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
    flags: u32,
) -> c_int {
    call("mmapkit_mapping_flush", || {
        handles::check_flags(
            "flush",
            flags,
            MMAPKIT_FLUSH_ASYNC | MMAPKIT_FLUSH_INVALIDATE,
        )?;
        let mode = match (
            flags & MMAPKIT_FLUSH_ASYNC != 0,
            flags & MMAPKIT_FLUSH_INVALIDATE != 0,
        ) {
            (false, false) => Flush::Sync,
            (true, false) => Flush::Async,
            (false, true) => Flush::SyncInvalidate,
            (true, true) => {
                return Err(invalid(
                    "flush",
                    "MMAPKIT_FLUSH_ASYNC with MMAPKIT_FLUSH_INVALIDATE",
                ));
            }
        };
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        let range = handles::range("flush", offset, len, mapping.len())?;
        mapping.flush_range(range, mode)?;
        Ok(MMAPKIT_OK)
    })
}

fn advice_of(advice: c_int) -> Result<Advice> {
    Ok(match advice {
        MMAPKIT_ADVICE_NORMAL => Advice::Normal,
        MMAPKIT_ADVICE_SEQUENTIAL => Advice::Sequential,
        MMAPKIT_ADVICE_RANDOM => Advice::Random,
        MMAPKIT_ADVICE_WILLNEED => Advice::WillNeed,
        MMAPKIT_ADVICE_HUGEPAGE => Advice::HugePage,
        MMAPKIT_ADVICE_NOHUGEPAGE => Advice::NoHugePage,
        MMAPKIT_ADVICE_POPULATE_READ => Advice::PopulateRead,
        MMAPKIT_ADVICE_POPULATE_WRITE => Advice::PopulateWrite,
        MMAPKIT_ADVICE_COLD => Advice::Cold,
        MMAPKIT_ADVICE_PAGEOUT => Advice::PageOut,
        MMAPKIT_ADVICE_DONTDUMP => Advice::DontDump,
        MMAPKIT_ADVICE_DODUMP => Advice::DoDump,
        other => return Err(invalid("advise", format!("unknown advice {other}"))),
    })
}

/// Gives the kernel advice (`MMAPKIT_ADVICE_*`) about the pages the range touches.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_advise(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
    advice: c_int,
) -> c_int {
    call("mmapkit_mapping_advise", || {
        let advice = advice_of(advice)?;
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        let range = handles::range("advise", offset, len, mapping.len())?;
        mapping.advise(range, advice)?;
        Ok(MMAPKIT_OK)
    })
}

/// Changes the protection (`MMAPKIT_PROT_*`) of the pages the range touches (mprotect).
/// Write and execute together are refused.
///
/// # Safety
/// No pointer from `mmapkit_mapping_data` is used in a way the new protection forbids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_protect(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
    protection: u32,
) -> c_int {
    call("mmapkit_mapping_protect", || {
        handles::check_flags(
            "protect",
            protection,
            MMAPKIT_PROT_READ | MMAPKIT_PROT_WRITE | MMAPKIT_PROT_EXEC,
        )?;
        let protection = Protection::from_bits_truncate(protection as u8);
        let object = self::mapping(mapping)?;
        let mut mapping = object.write();
        let range = handles::range("protect", offset, len, mapping.len())?;
        mapping.protect(range, protection)?;
        Ok(MMAPKIT_OK)
    })
}

/// Locks the pages the range touches in RAM (mlock).
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_lock(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
) -> c_int {
    call("mmapkit_mapping_lock", || {
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        let range = handles::range("lock", offset, len, mapping.len())?;
        mapping.lock(range)?;
        Ok(MMAPKIT_OK)
    })
}

/// Unlocks the pages the range touches (munlock).
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_unlock(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
) -> c_int {
    call("mmapkit_mapping_unlock", || {
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        let range = handles::range("unlock", offset, len, mapping.len())?;
        mapping.unlock(range)?;
        Ok(MMAPKIT_OK)
    })
}

/// How many of the pages the range touches are resident in RAM (mincore): `*resident` of
/// `*pages`. With `page_map` (NULL for none), one byte per page, 1 for resident; it must
/// hold `page_map_len >= *pages` bytes, which is checked before it is written.
///
/// # Safety
/// `resident` and `pages` are NULL or writable; `page_map` is NULL or valid for
/// `page_map_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_mapping_residency(
    mapping: *const mmapkit_mapping_t,
    offset: usize,
    len: usize,
    resident: *mut usize,
    pages: *mut usize,
    page_map: *mut u8,
    page_map_len: usize,
) -> c_int {
    call("mmapkit_mapping_residency", || {
        handles::nonnull(resident, "resident")?;
        handles::nonnull(pages, "pages")?;
        let object = self::mapping(mapping)?;
        let mapping = object.read();
        let range = handles::range("residency", offset, len, mapping.len())?;
        let residency = mapping.residency(range)?;
        if !page_map.is_null() {
            if page_map_len < residency.pages() {
                return Err(mmapkit::Error::new(
                    mmapkit::ErrorKind::OutOfBounds,
                    "residency",
                    format!(
                        "the page map holds {page_map_len} bytes and the range {} pages",
                        residency.pages()
                    ),
                ));
            }
            // SAFETY: the caller's map holds `page_map_len` bytes, at least one per page.
            let map = unsafe { std::slice::from_raw_parts_mut(page_map, residency.pages()) };
            for (byte, resident) in map.iter_mut().zip(residency.iter()) {
                *byte = u8::from(resident);
            }
        }
        handles::put(pages, residency.pages())?;
        handles::put(resident, residency.resident_pages())
    })
}
