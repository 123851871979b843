//! Handles and arguments: everything a C caller passes is checked before it is used.
//!
//! A handle is a number the registry gave out for a library object it holds (an `Arc`),
//! never an address: numbers are not reused, so a handle kept after it was destroyed stays
//! invalid even when a new object takes its place, and a garbage value is looked up, never
//! dereferenced. Every call looks its handle up first, so a NULL, a garbage pointer, a handle
//! of another type or one already destroyed is `MMAPKIT_EINVAL`. The call then works on its
//! own reference to the object: a thread destroying the handle meanwhile only removes it
//! from the registry, and the object lives until the calls using it return.
//!
//! The registry's lock is held across `fork` (taken in a `pthread_atfork` prepare handler
//! and let go in both processes), so a child never inherits it locked by a thread it does
//! not have. Calls the forking thread makes meanwhile, from other libraries' fork handlers,
//! use the locks it holds. Objects with a lock of their own (a mapping's) are reached through the fork
//! gate ([`through_fork_gate`]), which fork closes first: it waits for the calls inside,
//! which never wait long, so no child inherits an object lock held by a missing thread.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, Once, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::Duration;

use mmapkit::{Error, ErrorKind, Result};

use crate::status::{CancellationHeldOff, invalid};

type Object = Arc<dyn Any + Send + Sync>;

/// The live handles of the process, by number, and the next number to give out.
struct Registry {
    live: HashMap<usize, Object, BuildHasherDefault<HandleHasher>>,
    next: usize,
}

/// Hashes a handle number with one multiplication: the numbers are the registry's own
/// (consecutive from a random start), so a keyed hash buys nothing on the hot path of every
/// call, and a caller's guesses only ever miss.
#[derive(Default)]
struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, number: usize) {
        self.0 = (number as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Open, but while a fork is under way (see the module docs).
static FORK_GATE: RwLock<()> = RwLock::new(());

/// The fork gate and the registry's lock, held by the forking thread from prepare to
/// parent/child.
type HeldAcrossFork = (
    RwLockWriteGuard<'static, ()>,
    MutexGuard<'static, Option<Registry>>,
);

/// Where the forking thread keeps the two locks from prepare to parent/child: a static, not a
/// thread-local, so that a fork from an `atexit` handler or a thread-local destructor (after
/// this thread's locals are gone) still holds them.
struct HeldAcrossForkSlot(UnsafeCell<Option<HeldAcrossFork>>);

// SAFETY: only the thread holding the fork gate's write lock touches the slot — `before_fork`
// fills it once it has the gate, and the parent or child handler (on that same thread, in
// either process) empties it before letting the gate go — so no two accesses overlap, and
// the guards are dropped on the thread that took them.
unsafe impl Sync for HeldAcrossForkSlot {}

static HELD_ACROSS_FORK: HeldAcrossForkSlot = HeldAcrossForkSlot(UnsafeCell::new(None));

thread_local! {
    /// Whether this thread holds the gate and the registry across a fork it makes, from its
    /// prepare handler to its parent or child handler. Calls it makes meanwhile — from the
    /// fork handlers of other libraries, which fork runs in between — use what it holds
    /// instead of waiting for itself. Without a destructor, so it works during thread exit.
    static FORKING: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn before_fork() {
    let gate = FORK_GATE.write().unwrap_or_else(PoisonError::into_inner);
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: this thread holds the gate's write lock (see `HeldAcrossForkSlot`).
    unsafe { *HELD_ACROSS_FORK.0.get() = Some((gate, registry)) };
    FORKING.set(true);
}

/// Passes the fork gate, for a call that takes an object's own lock: hold the result for as
/// long as that lock. Nothing to pass on the forking thread (see [`FORKING`]), which holds
/// the gate: no other call is inside.
pub(crate) fn through_fork_gate() -> Option<RwLockReadGuard<'static, ()>> {
    match FORKING.get() {
        true => None,
        false => Some(FORK_GATE.read().unwrap_or_else(PoisonError::into_inner)),
    }
}

extern "C" fn after_fork() {
    FORKING.set(false);
    // SAFETY: the forking thread, which `before_fork` left holding the gate's write lock (see
    // `HeldAcrossForkSlot`).
    let held = unsafe { (*HELD_ACROSS_FORK.0.get()).take() };
    drop(held);
}

/// In the child, the forking thread's kept channel ends are the parent's: they are let go,
/// so that closing the inherited handles releases their descriptors and mappings.
extern "C" fn after_fork_in_child() {
    after_fork();
    crate::channel::release_kept_ends();
}

/// Registers the fork handlers, once. Called when the library is loaded (see
/// [`REGISTER_AT_LOAD`]) and again, doing nothing, at the registry's every use.
extern "C" fn register_fork_handlers() {
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: the handlers are plain functions that take and drop the registry's lock on
        // the forking thread (and, in the child, drop references it kept); registering cannot
        // fail but for ENOMEM, and then fork safety is lost, not memory safety.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork),
                Some(after_fork_in_child),
            )
        };
    });
}

/// Runs [`register_fork_handlers`] when the library is loaded, before the code of any library
/// that links to it: fork runs prepare handlers last-registered first and the others
/// first-registered first, so such a library's handlers, which may call into this one, then
/// run outside the span in which these hold the registry.
// SAFETY: an `.init_array` entry is a function pointer the loader calls once, before main or
// when the library is loaded; this one takes no arguments and only registers handlers.
#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER_AT_LOAD: extern "C" fn() = register_fork_handlers;

fn with_registry<R>(use_it: impl FnOnce(&mut Registry) -> R) -> R {
    register_fork_handlers();
    // A send or receive comes here without holding off cancellation (`status::call_lean`),
    // and making the registry reads random bytes (getrandom, a cancellation point).
    let _held_off = CancellationHeldOff::new();
    let new = || Registry {
        live: HashMap::default(),
        // A random start, so that small integers and stray pointers name no handle.
        next: (RandomState::new().hash_one(std::process::id()) as usize | 1 << 12) & !0xF,
    };
    if FORKING.get() {
        // SAFETY: this thread holds the registry across its fork (see `HeldAcrossForkSlot`),
        // and nothing else reaches the slot until it lets go.
        let held = unsafe { &mut *HELD_ACROSS_FORK.0.get() };
        if let Some((_, registry)) = held {
            return use_it(registry.get_or_insert_with(new));
        }
    }
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    use_it(registry.get_or_insert_with(new))
}

/// Registers `object` and returns its handle.
pub(crate) fn register<T: Any + Send + Sync>(object: T) -> *mut c_void {
    let object: Object = Arc::new(object);
    with_registry(|registry| {
        let mut number = registry.next;
        while number == 0 || registry.live.contains_key(&number) {
            number = number.wrapping_add(16);
        }
        registry.next = number.wrapping_add(16);
        registry.live.insert(number, object);
        std::ptr::without_provenance_mut(number)
    })
}

/// Registers `object` and stores its handle in `*out`.
pub(crate) fn hand_out<T: Any + Send + Sync, H>(object: T, out: *mut *mut H) -> Result<c_int> {
    // `out` was checked by `clear_out` at the start of the call, so the handle is not lost.
    put(out, register(object).cast::<H>())
}

/// The object behind `handle`, if it is a live handle of type `T`.
pub(crate) fn get<T: Any + Send + Sync, H>(handle: *const H, kind: &str) -> Result<Arc<T>> {
    if handle.is_null() {
        return Err(invalid("handle", format!("the {kind} handle is NULL")));
    }
    let number = handle.addr();
    let object = recently_used(number).or_else(|| {
        let destroys = DESTROYS.load(Ordering::Acquire);
        let object = with_registry(|registry| registry.live.get(&number).cloned())?;
        remember_use(number, destroys, &object);
        Some(object)
    });
    object
        .and_then(|object| object.downcast::<T>().ok())
        .ok_or_else(|| {
            invalid(
                "handle",
                format!(
                    "{handle:p} is not a live {kind} handle (destroyed, never made, or a \
                     handle of another type)"
                ),
            )
        })
}

/// Destroys so far: a thread's recently used handles are valid only while none happened.
static DESTROYS: AtomicU64 = AtomicU64::new(0);

/// A handle this thread looked up, with the count of destroys then. A weak reference: it
/// does not keep the object (a mapping, say) alive once the handle is destroyed.
type RecentUse = Option<(usize, u64, Weak<dyn Any + Send + Sync>)>;

thread_local! {
    /// A few handles this thread used last, by their number's low bits: a sender and a
    /// receiver used in turns each keep theirs. Looking one up here takes no lock, which
    /// keeps a call through the ABI close to the Rust call it makes.
    static RECENT: RefCell<[RecentUse; 4]> = const { RefCell::new([const { None }; 4]) };
}

fn recent_slot(number: usize) -> usize {
    (number >> 4) & 3
}

/// The object of `number` if this thread used it since the last destroy anywhere.
fn recently_used(number: usize) -> Option<Object> {
    let destroys = DESTROYS.load(Ordering::Acquire);
    // Gone during thread exit (a handle closed from a thread-local destructor or atexit):
    // then the registry answers.
    RECENT
        .try_with(|recent| match &recent.borrow()[recent_slot(number)] {
            Some((used, seen, object)) if *used == number && *seen == destroys => object.upgrade(),
            _ => None,
        })
        .ok()
        .flatten()
}

/// Remembers that this thread found `object` for `number`, `destroys` having been counted
/// before the registry was asked.
fn remember_use(number: usize, destroys: u64, object: &Object) {
    let _ = RECENT.try_with(|recent| {
        recent.borrow_mut()[recent_slot(number)] = Some((number, destroys, Arc::downgrade(object)));
    });
}

/// Removes `handle` from the registry (the object goes once no call uses it). NULL is
/// accepted and does nothing, as `free(NULL)` does.
pub(crate) fn destroy<T: Any + Send + Sync, H>(handle: *mut H, kind: &str) -> Result<c_int> {
    destroy_with::<T, H>(handle, kind, |_| ())
}

/// As [`destroy`], running `closing` on the object once it is out of the registry (and
/// before this call's reference goes), for objects that must stop calls in progress.
pub(crate) fn destroy_with<T: Any + Send + Sync, H>(
    handle: *mut H,
    kind: &str,
    closing: impl FnOnce(&T),
) -> Result<c_int> {
    if handle.is_null() {
        return Ok(crate::status::MMAPKIT_OK);
    }
    let object = get::<T, H>(handle, kind)?;
    let removed = with_registry(|registry| registry.live.remove(&handle.addr()));
    // Counted after the removal: a thread that read the count before it and found the
    // handle in the registry still remembered the old count, which no longer matches.
    DESTROYS.fetch_add(1, Ordering::AcqRel);
    let Some(removed) = removed else {
        return Err(invalid(
            "handle",
            format!("{handle:p} is not a live {kind} handle (another thread destroyed it)"),
        ));
    };
    closing(&object);
    // Dropped outside the registry's lock: unmapping or closing takes a system call.
    drop((removed, object));
    Ok(crate::status::MMAPKIT_OK)
}

/// Checks an out-pointer and sets it to NULL, so that a failed call leaves no stale handle.
pub(crate) fn clear_out<H>(out: *mut *mut H) -> Result<()> {
    let out = nonnull(out, "out")?;
    // SAFETY: non-NULL, and the caller passes where it wants the handle.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(())
}

/// Writes a value through an out-pointer that was checked by [`nonnull`].
pub(crate) fn put<T>(out: *mut T, value: T) -> Result<c_int> {
    let out = nonnull(out, "out")?;
    // SAFETY: non-NULL, and the caller passes where it wants the value.
    unsafe { out.write(value) };
    Ok(crate::status::MMAPKIT_OK)
}

/// `pointer`, or an error naming the argument if it is NULL.
pub(crate) fn nonnull<T>(pointer: *mut T, what: &str) -> Result<*mut T> {
    if pointer.is_null() {
        return Err(invalid("argument", format!("{what} is NULL")));
    }
    Ok(pointer)
}

/// A C string argument as text.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string.
pub(crate) unsafe fn text<'a>(text: *const c_char, what: &str) -> Result<&'a str> {
    nonnull(text.cast_mut(), what)?;
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map_err(|_| invalid("argument", format!("{what} is not UTF-8")))
}

/// A C string argument as a path (any bytes but NUL).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
pub(crate) unsafe fn path<'a>(path: *const c_char) -> Result<&'a std::path::Path> {
    use std::os::unix::ffi::OsStrExt;
    nonnull(path.cast_mut(), "path")?;
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// A caller's buffer of `len` bytes. `len` is checked against `limit` (what the call may
/// touch) before any slice is made, so an absurd length is an error, not a wild access.
///
/// # Safety
/// When `len` is within `limit`, `buf` is NULL or valid for `len` bytes.
pub(crate) unsafe fn bytes<'a>(buf: *const c_void, len: usize) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    nonnull(buf.cast_mut(), "the buffer")?;
    // SAFETY: non-NULL and valid for `len` bytes, as the caller promises; the callers check
    // `len` against the object first, which keeps it under isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// As [`bytes`], writable.
///
/// # Safety
/// As [`bytes`], and nothing else uses the buffer during the call.
pub(crate) unsafe fn bytes_mut<'a>(buf: *mut c_void, len: usize) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    nonnull(buf, "the buffer")?;
    // SAFETY: as in `bytes`; the caller does not use the buffer meanwhile.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) })
}

/// `offset..offset + len` within an object of `size` bytes; `len` [`MMAPKIT_TO_END`] means
/// to the end.
pub(crate) fn range(
    operation: &'static str,
    offset: usize,
    len: usize,
    size: usize,
) -> Result<std::ops::Range<usize>> {
    let end = if len == crate::MMAPKIT_TO_END {
        Some(size)
    } else {
        offset.checked_add(len)
    };
    match end {
        Some(end) if offset <= end && end <= size => Ok(offset..end),
        _ => Err(outside(operation, offset, len, size)),
    }
}

/// Checks that exactly `len` bytes at `offset` lie within an object of `size` bytes (for
/// copies, where the length is the caller's buffer's and `MMAPKIT_TO_END` is not special).
pub(crate) fn fits(operation: &'static str, offset: usize, len: usize, size: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(outside(operation, offset, len, size)),
    }
}

fn outside(operation: &'static str, offset: usize, len: usize, size: usize) -> Error {
    Error::new(
        ErrorKind::OutOfBounds,
        operation,
        format!("the range lies outside the {size} bytes"),
    )
    .with_range(offset as u64, len as u64)
}

/// A C timeout in milliseconds: negative waits without one, 0 does not wait.
pub(crate) enum Wait {
    Forever,
    Try,
    For(Duration),
}

pub(crate) fn wait_of(timeout_ms: i64) -> Wait {
    match u64::try_from(timeout_ms) {
        Err(_) => Wait::Forever,
        Ok(0) => Wait::Try,
        Ok(ms) => Wait::For(Duration::from_millis(ms)),
    }
}

/// A descriptor the caller lends for the call: it must be open.
pub(crate) fn borrowed_fd<'a>(fd: c_int, what: &str) -> Result<BorrowedFd<'a>> {
    // SAFETY: F_GETFD only reads the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(invalid(
            "argument",
            format!("{what} {fd} is not an open descriptor"),
        ));
    }
    // SAFETY: the descriptor is open; the caller keeps it open for the call (it is theirs).
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Flags outside `known` are refused (a newer caller's flag must not be ignored).
pub(crate) fn check_flags(operation: &'static str, flags: u32, known: u32) -> Result<()> {
    if flags & !known != 0 {
        return Err(invalid(
            operation,
            format!("unknown flags {:#x}", flags & !known),
        ));
    }
    Ok(())
}
