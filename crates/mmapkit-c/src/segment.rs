//! `mmapkit_segment_t`: named and memfd shared-memory segments with mmapkit's header, and
//! passing them to other processes by descriptor.

use std::ffi::{c_char, c_int, c_void};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use mmapkit::{Error, Result, Segment, SegmentOptions};

use crate::handles;
use crate::status::{MMAPKIT_OK, call, invalid};

/// A segment: the payload of a named or memfd shared-memory object. Safe to use from
/// several threads at once. Mutexes, events, semaphores and channels made from it keep it
/// mapped until they are closed too.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mmapkit_segment_t {
    _opaque: [u8; 0],
}

pub(crate) const KIND: &str = "mmapkit_segment_t";

/// The segment behind a handle.
pub(crate) fn segment(handle: *const mmapkit_segment_t) -> Result<Arc<Segment>> {
    handles::get::<Segment, _>(handle, KIND)
}

/// A segment is created with a payload: size 0 is a mistake (0 means "any size" only when
/// opening).
fn refuse_empty(size: usize) -> Result<()> {
    match size {
        0 => Err(invalid(
            "create segment",
            "a segment of 0 bytes holds nothing",
        )),
        _ => Ok(()),
    }
}

/// Options from C arguments; `mode` 0 is the default (0600, the owner only).
///
/// # Safety
/// `type_tag` is NULL or a NUL-terminated string.
unsafe fn options(type_tag: *const c_char, size: usize, mode: u32) -> Result<SegmentOptions> {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    let type_tag = unsafe { handles::text(type_tag, "type_tag") }?;
    if mode & !0o777 != 0 {
        return Err(invalid(
            "create segment",
            format!("mode {mode:#o} has bits beyond the permission bits (0777)"),
        ));
    }
    let mut options = SegmentOptions::new(type_tag, size)?;
    if mode != 0 {
        options.mode(mode);
    }
    Ok(options)
}

/// Creates the named segment `name` (in /dev/shm) with `size` bytes of payload, tagged with
/// `type_tag` (what it holds, checked by every opener). `MMAPKIT_EEXIST` if the name is taken.
/// `mode` is the permission bits (0: 0600), less the process umask as for any new file.
///
/// # Safety
/// `name` and `type_tag` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_create(
    name: *const c_char,
    type_tag: *const c_char,
    size: usize,
    mode: u32,
    out: *mut *mut mmapkit_segment_t,
) -> c_int {
    call("mmapkit_segment_create", || {
        handles::clear_out(out)?;
        refuse_empty(size)?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (name, options) =
            unsafe { (handles::text(name, "name")?, options(type_tag, size, mode)?) };
        handles::hand_out(options.create(name)?, out)
    })
}

/// Opens the named segment `name`, which must hold `type_tag` (and `size` bytes of payload,
/// unless `size` is 0). Waits up to `wait_ms` milliseconds for a creator still setting it up.
///
/// # Safety
/// `name` and `type_tag` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_open(
    name: *const c_char,
    type_tag: *const c_char,
    size: usize,
    wait_ms: u32,
    out: *mut *mut mmapkit_segment_t,
) -> c_int {
    call("mmapkit_segment_open", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (name, mut options) =
            unsafe { (handles::text(name, "name")?, options(type_tag, size, 0)?) };
        options.wait(Duration::from_millis(wait_ms.into()));
        handles::hand_out(options.open(name)?, out)
    })
}

/// Creates an anonymous segment (a memfd): shared with children forked later, and passed to
/// other processes by descriptor (`mmapkit_segment_send`). `debug_name` shows in
/// /proc/PID/fd.
///
/// # Safety
/// `type_tag` and `debug_name` are NULL or NUL-terminated strings; `out` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_create_memfd(
    type_tag: *const c_char,
    size: usize,
    debug_name: *const c_char,
    out: *mut *mut mmapkit_segment_t,
) -> c_int {
    call("mmapkit_segment_create_memfd", || {
        handles::clear_out(out)?;
        refuse_empty(size)?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (options, debug_name) = unsafe {
            (
                options(type_tag, size, 0)?,
                handles::text(debug_name, "debug_name")?,
            )
        };
        handles::hand_out(options.create_memfd(debug_name)?, out)
    })
}

/// The segment behind the descriptor `fd` (received from another process), which must hold
/// `type_tag`. The descriptor is duplicated: `fd` stays the caller's, to close when it likes.
///
/// # Safety
/// `type_tag` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_from_fd(
    fd: c_int,
    type_tag: *const c_char,
    out: *mut *mut mmapkit_segment_t,
) -> c_int {
    call("mmapkit_segment_from_fd", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let options = unsafe { options(type_tag, 0, 0) }?;
        let duplicate = handles::borrowed_fd(fd, "fd")?
            .try_clone_to_owned()
            .map_err(|error| Error::io("duplicate descriptor", &error))?;
        handles::hand_out(options.from_fd(duplicate)?, out)
    })
}

/// The segment's descriptor, owned by the handle: valid until the handle is closed. Never
/// close it; duplicate it (dup) to keep it longer.
///
/// # Safety
/// `fd` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_fd(
    segment: *const mmapkit_segment_t,
    fd: *mut c_int,
) -> c_int {
    call("mmapkit_segment_fd", || {
        let raw = self::segment(segment)?.fd().as_raw_fd();
        handles::put(fd, raw)
    })
}

/// The segment's payload length in bytes.
///
/// # Safety
/// `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_len(
    segment: *const mmapkit_segment_t,
    len: *mut usize,
) -> c_int {
    call("mmapkit_segment_len", || {
        let payload = self::segment(segment)?.payload_len();
        handles::put(len, payload)
    })
}

/// Copies `len` payload bytes at `offset` into `buf`. Another process may write them
/// meanwhile; the copy is what the bytes were while it ran.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes (checked against the payload first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_read_at(
    segment: *const mmapkit_segment_t,
    offset: usize,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    call("mmapkit_segment_read_at", || {
        let segment = self::segment(segment)?;
        handles::fits("read_at", offset, len, segment.payload_len())?;
        // SAFETY: the length fits the payload; the caller's buffer holds `len` bytes.
        let buf = unsafe { handles::bytes_mut(buf, len) }?;
        segment.read_at(offset, buf)?;
        Ok(MMAPKIT_OK)
    })
}

/// Copies `len` bytes from `data` to payload `offset`.
///
/// # Safety
/// `data` is NULL or valid for `len` bytes (checked against the payload first).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_write_at(
    segment: *const mmapkit_segment_t,
    offset: usize,
    data: *const c_void,
    len: usize,
) -> c_int {
    call("mmapkit_segment_write_at", || {
        let segment = self::segment(segment)?;
        handles::fits("write_at", offset, len, segment.payload_len())?;
        // SAFETY: the length fits the payload; the caller's data holds `len` bytes.
        let data = unsafe { handles::bytes(data, len) }?;
        segment.write_at(offset, data)?;
        Ok(MMAPKIT_OK)
    })
}

/// The caller's Unix stream socket `fd`, lent for the call (never closed).
pub(crate) fn lent_stream(fd: c_int) -> Result<ManuallyDrop<UnixStream>> {
    let borrowed = handles::borrowed_fd(fd, "socket")?;
    // SAFETY: fstat writes a stat structure for an open descriptor.
    let mut stat = unsafe { std::mem::zeroed::<libc::stat>() };
    // SAFETY: as above; `stat` is a valid place for it.
    let is_socket = unsafe { libc::fstat(borrowed.as_raw_fd(), &mut stat) } == 0
        && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    if !is_socket {
        return Err(invalid("pass", format!("descriptor {fd} is not a socket")));
    }
    // SAFETY: the descriptor is an open socket; ManuallyDrop keeps it from being closed.
    Ok(ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) }))
}

/// Sends the segment over the connected Unix socket `socket` (SCM_RIGHTS); the peer takes it
/// with `mmapkit_segment_receive`.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_send(
    segment: *const mmapkit_segment_t,
    socket: c_int,
) -> c_int {
    call("mmapkit_segment_send", || {
        let segment = self::segment(segment)?;
        segment.send(&*lent_stream(socket)?, &[])?;
        Ok(MMAPKIT_OK)
    })
}

/// Receives a segment sent with `mmapkit_segment_send` on `socket`; it must hold `type_tag`.
///
/// # Safety
/// `type_tag` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_receive(
    socket: c_int,
    type_tag: *const c_char,
    out: *mut *mut mmapkit_segment_t,
) -> c_int {
    call("mmapkit_segment_receive", || {
        handles::clear_out(out)?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let options = unsafe { options(type_tag, 0, 0) }?;
        let (segment, extra): (Segment, Vec<OwnedFd>) = options.receive(&*lent_stream(socket)?)?;
        drop(extra);
        handles::hand_out(segment, out)
    })
}

/// Removes the name of the named segment `name`; processes that have it open keep it.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_unlink(name: *const c_char) -> c_int {
    call("mmapkit_segment_unlink", || {
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let name = unsafe { handles::text(name, "name") }?;
        mmapkit::shm::unlink(name)?;
        Ok(MMAPKIT_OK)
    })
}

/// Closes the handle (the segment is unmapped once its mutexes, events and channels are
/// closed too). NULL does nothing.
///
/// # Safety
/// None beyond the C rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmapkit_segment_close(segment: *mut mmapkit_segment_t) -> c_int {
    call("mmapkit_segment_close", || {
        handles::destroy::<Segment, _>(segment, KIND)
    })
}
