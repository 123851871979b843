//! Status codes, the thread's last error, and the wrapper every exported function runs in.
//!
//! A call returns `MMAPKIT_OK` (0) or a negative code, one per [`ErrorKind`], so C can
//! `switch` on what went wrong; the sentence that says why (operation, path, offset, OS
//! error, hint) and the OS errno wait in thread-local storage for
//! `mmapkit_last_error_message` and `mmapkit_last_error_errno`. No panic crosses the
//! boundary: [`call`] catches it and answers `MMAPKIT_EINTERNAL`.

use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use mmapkit::{Error, ErrorKind};

/// Success.
pub const MMAPKIT_OK: c_int = 0;
/// The file, device or segment does not exist.
pub const MMAPKIT_ENOTFOUND: c_int = -1;
/// The OS refused: file modes, read-only descriptors, sealed mappings, resource limits.
pub const MMAPKIT_EPERMISSION: c_int = -2;
/// An argument is wrong in itself: NULL, zero length, unknown flags, a handle that is not a
/// live handle of the right type.
pub const MMAPKIT_EINVAL: c_int = -3;
/// An offset or range lies outside the mapping, segment or file.
pub const MMAPKIT_EOUTOFBOUNDS: c_int = -4;
/// The memory can be changed by someone else and cannot be lent.
pub const MMAPKIT_ENOTEXCLUSIVE: c_int = -5;
/// The file behind a mapping no longer covers the bytes accessed (it was truncated): what a
/// plain mmap reports by killing the process with SIGBUS.
pub const MMAPKIT_ETRUNCATED: c_int = -6;
/// Something already occupies the requested name or address.
pub const MMAPKIT_EEXIST: c_int = -7;
/// Out of memory, address space, lockable memory or descriptors (EMFILE, ENFILE).
pub const MMAPKIT_ENOMEM: c_int = -8;
/// The file system (for shared memory, /dev/shm) is full.
pub const MMAPKIT_ENOSPC: c_int = -9;
/// Bytes from outside (another process's header or index) failed validation.
pub const MMAPKIT_ECORRUPT: c_int = -10;
/// A valid object of another layout version, type or size than the one asked for.
pub const MMAPKIT_EINCOMPATIBLE: c_int = -11;
/// A wait ran out of time.
pub const MMAPKIT_ETIMEDOUT: c_int = -12;
/// The previous holder of a lock died holding it. The lock is now held by the caller: repair
/// the data, call `mmapkit_mutex_mark_consistent`, then `mmapkit_mutex_unlock`.
pub const MMAPKIT_EOWNERDIED: c_int = -13;
/// The other end of a channel is gone (closed, or its process died), or none attached.
pub const MMAPKIT_EDISCONNECTED: c_int = -14;
/// The call would have to wait (a timeout of 0 on a full channel or a held lock).
pub const MMAPKIT_EWOULDBLOCK: c_int = -15;
/// The kernel or file system does not offer the operation.
pub const MMAPKIT_EUNSUPPORTED: c_int = -16;
/// Any other OS error (see `mmapkit_last_error_errno`).
pub const MMAPKIT_EIO: c_int = -17;
/// A bug in mmapkit (a Rust panic, caught at the boundary); the message says where.
pub const MMAPKIT_EINTERNAL: c_int = -18;
/// The name the issue tracker and other bindings use for [`MMAPKIT_EOWNERDIED`].
pub const MMAPKIT_OWNER_DIED: c_int = MMAPKIT_EOWNERDIED;

/// Every status with its name, for `mmapkit_status_name`.
const NAMES: [(c_int, &std::ffi::CStr); 19] = [
    (MMAPKIT_OK, c"MMAPKIT_OK"),
    (MMAPKIT_ENOTFOUND, c"MMAPKIT_ENOTFOUND"),
    (MMAPKIT_EPERMISSION, c"MMAPKIT_EPERMISSION"),
    (MMAPKIT_EINVAL, c"MMAPKIT_EINVAL"),
    (MMAPKIT_EOUTOFBOUNDS, c"MMAPKIT_EOUTOFBOUNDS"),
    (MMAPKIT_ENOTEXCLUSIVE, c"MMAPKIT_ENOTEXCLUSIVE"),
    (MMAPKIT_ETRUNCATED, c"MMAPKIT_ETRUNCATED"),
    (MMAPKIT_EEXIST, c"MMAPKIT_EEXIST"),
    (MMAPKIT_ENOMEM, c"MMAPKIT_ENOMEM"),
    (MMAPKIT_ENOSPC, c"MMAPKIT_ENOSPC"),
    (MMAPKIT_ECORRUPT, c"MMAPKIT_ECORRUPT"),
    (MMAPKIT_EINCOMPATIBLE, c"MMAPKIT_EINCOMPATIBLE"),
    (MMAPKIT_ETIMEDOUT, c"MMAPKIT_ETIMEDOUT"),
    (MMAPKIT_EOWNERDIED, c"MMAPKIT_EOWNERDIED"),
    (MMAPKIT_EDISCONNECTED, c"MMAPKIT_EDISCONNECTED"),
    (MMAPKIT_EWOULDBLOCK, c"MMAPKIT_EWOULDBLOCK"),
    (MMAPKIT_EUNSUPPORTED, c"MMAPKIT_EUNSUPPORTED"),
    (MMAPKIT_EIO, c"MMAPKIT_EIO"),
    (MMAPKIT_EINTERNAL, c"MMAPKIT_EINTERNAL"),
];

/// The status of an error kind.
pub(crate) fn status_of(kind: ErrorKind) -> c_int {
    match kind {
        ErrorKind::NotFound => MMAPKIT_ENOTFOUND,
        ErrorKind::PermissionDenied => MMAPKIT_EPERMISSION,
        ErrorKind::InvalidInput => MMAPKIT_EINVAL,
        ErrorKind::OutOfBounds => MMAPKIT_EOUTOFBOUNDS,
        ErrorKind::NotExclusive => MMAPKIT_ENOTEXCLUSIVE,
        ErrorKind::Truncated => MMAPKIT_ETRUNCATED,
        ErrorKind::AlreadyExists => MMAPKIT_EEXIST,
        ErrorKind::OutOfMemory => MMAPKIT_ENOMEM,
        ErrorKind::NoSpace => MMAPKIT_ENOSPC,
        ErrorKind::Corrupt => MMAPKIT_ECORRUPT,
        ErrorKind::Incompatible => MMAPKIT_EINCOMPATIBLE,
        ErrorKind::Timeout => MMAPKIT_ETIMEDOUT,
        ErrorKind::OwnerDied => MMAPKIT_EOWNERDIED,
        ErrorKind::Disconnected => MMAPKIT_EDISCONNECTED,
        ErrorKind::WouldBlock => MMAPKIT_EWOULDBLOCK,
        ErrorKind::Unsupported => MMAPKIT_EUNSUPPORTED,
        _ => MMAPKIT_EIO,
    }
}

/// The name of a status code.
pub(crate) fn name_of(status: c_int) -> *const c_char {
    NAMES
        .iter()
        .find(|(code, _)| *code == status)
        .map_or(c"unknown status", |(_, name)| name)
        .as_ptr()
}

/// The last error of this thread: its sentence (none after a success) and its OS errno (0
/// when none).
struct LastError {
    message: Option<CString>,
    errno: c_int,
}

thread_local! {
    static LAST: RefCell<LastError> = const {
        RefCell::new(LastError {
            message: None,
            errno: 0,
        })
    };
    /// Whether `LAST` holds an error: a cell without a destructor, so the check every
    /// successful call makes is a plain load, and a thread that never failed never sets up
    /// `LAST` (nor its destructor).
    static ERRED: Cell<bool> = const { Cell::new(false) };
}

fn remember(message: String, errno: c_int) {
    // A message cannot hold NUL bytes (a path could): they are shown as spaces.
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // During thread exit (an atexit handler, a thread-local destructor) the slot is gone:
    // the status still says what happened.
    let _ = LAST.try_with(|last| {
        *last.borrow_mut() = LastError {
            message: Some(message),
            errno,
        };
        ERRED.set(true);
    });
}

/// Clears the last error without allocating (the hot path of every successful call).
fn forget_last_error() {
    if !ERRED.get() {
        return;
    }
    ERRED.set(false);
    let _ = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        if last.errno != 0 || last.message.is_some() {
            *last = LastError {
                message: None,
                errno: 0,
            };
        }
    });
}

/// This thread's last error message; empty after a call that succeeded.
pub(crate) fn last_message() -> *const c_char {
    LAST.try_with(|last| last.borrow().message.as_deref().unwrap_or(c"").as_ptr())
        .unwrap_or(c"(no message: this thread is exiting)".as_ptr())
}

/// This thread's last OS errno; 0 when the last call succeeded or the OS gave none.
pub(crate) fn last_errno() -> c_int {
    LAST.try_with(|last| last.borrow().errno).unwrap_or(0)
}

/// Runs the body of the exported function `function`: its error becomes a status and the
/// thread's last error (named after `function`, the name the C caller knows), a panic
/// becomes `MMAPKIT_EINTERNAL`, and success clears the last error. Thread cancellation is
/// held off meanwhile (see [`CancellationHeldOff`]).
#[inline(always)]
pub(crate) fn call(function: &'static str, body: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    let _held_off = CancellationHeldOff::new();
    call_lean(function, body)
}

/// As [`call`], without holding off cancellation: for a send and a receive, whose paths reach
/// no cancellation point at all (the library makes its system calls through rustix, reads
/// /proc by system calls alone, and these calls sleep by `nanosleep` itself; a look in the
/// registry holds cancellation off itself). So the 6 ns stay
/// off the messaging path; a thread waiting in one of them is not cancelled until it returns.
// Inlined into every exported function: a closure passed to a call that is not inlined
// gets its captures through memory, which cost a send or receive about 6 ns.
#[inline(always)]
pub(crate) fn call_lean(
    function: &'static str,
    body: impl FnOnce() -> Result<c_int, Error>,
) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => {
            if status == MMAPKIT_OK {
                forget_last_error();
            }
            status
        }
        Ok(Err(error)) => {
            let (status, errno) = (status_of(error.kind()), error.raw_os_error().unwrap_or(0));
            remember(message_for_c(function, error), errno);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            remember(
                format!("internal error in mmapkit (please report): {what}"),
                0,
            );
            MMAPKIT_EINTERNAL
        }
    }
}

/// Holds off thread cancellation (`pthread_cancel`) while it lives. The library reaches libc
/// functions that are cancellation points (opening files, closing descriptors, sleeping),
/// and a cancellation acted on there would unwind through Rust frames that cannot let it
/// pass: the process would abort. Held off, it is acted on at the thread's next cancellation
/// point after the call. Costs about 6 ns.
pub(crate) struct CancellationHeldOff(c_int);

// The libc crate leaves thread cancellation out; these are glibc's and musl's.
const PTHREAD_CANCEL_ENABLE: c_int = 0;
const PTHREAD_CANCEL_DISABLE: c_int = 1;

unsafe extern "C" {
    fn pthread_setcancelstate(state: c_int, old_state: *mut c_int) -> c_int;
}

impl CancellationHeldOff {
    #[inline(always)]
    pub(crate) fn new() -> CancellationHeldOff {
        let mut before = PTHREAD_CANCEL_ENABLE;
        // SAFETY: only sets this thread's cancellation state, writing the old one to a local.
        unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut before) };
        CancellationHeldOff(before)
    }
}

impl Drop for CancellationHeldOff {
    #[inline(always)]
    fn drop(&mut self) {
        let mut ignored = 0;
        // SAFETY: as in `new`, restoring the state found there.
        unsafe { pthread_setcancelstate(self.0, &mut ignored) };
    }
}

/// Hints of the Rust library that name Rust calls, and what a C caller does instead.
const C_HINTS: [(&str, &str); 8] = [
    (
        "sender() or receiver()",
        "attach this process's own end with mmapkit_channel_sender or mmapkit_channel_receiver",
    ),
    (
        "wait_for_peer(timeout)",
        "a call with a timeout (timeout_ms > 0) waits for a peer to attach until then",
    ),
    (
        "ChannelOptions::pollable(true)",
        "create the channel with MMAPKIT_CHANNEL_POLLABLE",
    ),
    (
        "receive_from",
        "get the channel from its creator (fork, or mmapkit_channel_receive_from) instead of \
         by name",
    ),
    (
        "allow_write_exec",
        "the C ABI never makes pages writable and executable at once",
    ),
    (
        "change it with Mapping::protect",
        "change it with mmapkit_mapping_protect, or map with the access you need",
    ),
    (
        "mmapkit::shm::unlink",
        "remove it (mmapkit_segment_unlink) and create it again",
    ),
    (
        "LockError::OwnerDied",
        "the lock is held: repair the data, call mmapkit_mutex_mark_consistent, then \
         mmapkit_mutex_unlock",
    ),
];

/// The sentence a C caller reads: the error as the library words it, named after the C
/// function, with a hint that names Rust calls put in C terms (or left out when C has no
/// counterpart).
fn message_for_c(function: &'static str, error: Error) -> String {
    let hint = error.hint().map(str::to_owned);
    let mut message = error.with_operation(function).to_string();
    if let Some(hint) = hint {
        message.truncate(message.len().saturating_sub(hint.len() + 2));
        let translated = C_HINTS
            .iter()
            .find(|(rust, _)| hint.contains(rust))
            .map(|(_, c)| (*c).to_owned());
        if let Some(hint) = translated.or((!names_rust(&hint)).then_some(hint)) {
            message.push_str("; ");
            message.push_str(&hint);
        }
    }
    message
}

/// Whether a hint names a Rust item: a path, a call, or a snake_case method.
fn names_rust(hint: &str) -> bool {
    let snake_case = hint
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| word.contains('_') && word.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    hint.contains("::") || hint.contains("()") || snake_case
}

/// A status that is not OK, with its message, for results the library reports as a value
/// (a lock taken from a dead owner is held, and still reported).
pub(crate) fn with_message(status: c_int, message: String) -> Result<c_int, Error> {
    remember(message, 0);
    Ok(status)
}

/// An `InvalidInput` error of `operation`.
pub(crate) fn invalid(operation: &'static str, why: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, operation, why.into())
}
