//! The C ABI of mmapkit: `libmmapkit.so`, `libmmapkit.a` and `include/mmapkit.h`.
//!
//! Every function is a thin shell over the Rust library: it checks its arguments (handles
//! through the registry in `handles`, NULL pointers, lengths against the object before
//! any slice is made), calls the library, and turns the outcome into a status code (see
//! `status`). Nothing is reimplemented here, so the C caller gets the library's
//! behaviour: a truncated file is `MMAPKIT_ETRUNCATED`, a dead lock holder is
//! `MMAPKIT_EOWNERDIED`, a dead peer is `MMAPKIT_EDISCONNECTED`.
//!
//! The conventions C programmers read are in the header's opening comment (cbindgen.toml).
//! Every exported function is `unsafe extern "C"`: its contract is the C one, stated in the
//! header next to it.

use std::ffi::{c_char, c_int};

mod channel;
mod closable;
mod handles;
mod kept;
mod mapping;
mod residency;
mod segment;
mod status;
mod sync;

pub use channel::*;
pub use mapping::*;
pub use residency::*;
pub use segment::*;
pub use status::*;
pub use sync::*;

/// A length meaning "to the end" of the mapping or segment, in range arguments.
pub const MMAPKIT_TO_END: usize = 0xFFFFFFFFFFFFFFFF;

/// A timeout meaning "wait as long as it takes" (any negative value does).
pub const MMAPKIT_FOREVER: i64 = -1;

/// This thread's last error: one sentence with the operation, path, offset and OS error. The
/// empty string after a call that succeeded. Valid until the next mmapkit call on this
/// thread; never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn mmapkit_last_error_message() -> *const c_char {
    status::last_message()
}

/// The OS errno behind this thread's last error; 0 when the OS gave none or the last call
/// succeeded.
#[unsafe(no_mangle)]
pub extern "C" fn mmapkit_last_error_errno() -> c_int {
    status::last_errno()
}

/// The name of a status code ("MMAPKIT_ETRUNCATED"), or "unknown status". A static string.
#[unsafe(no_mangle)]
pub extern "C" fn mmapkit_status_name(status: c_int) -> *const c_char {
    status::name_of(status)
}

/// The library's version ("0.1.0"). A static string.
#[unsafe(no_mangle)]
pub extern "C" fn mmapkit_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
