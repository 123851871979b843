//! The mechanism: one copy routine whose faults the SIGBUS handler knows how to resume.
//!
//! `guarded_copy` is a naked function of a few instructions: a loop that copies 64-byte blocks
//! through SSE registers, then `rep movsb` for the rest. When `rep movsb` faults on a page that
//! no longer exists (the file behind a shared mapping was truncated), the kernel delivers
//! SIGBUS with the registers describing exactly how far the copy got: `rcx` holds the bytes
//! still to copy. Our handler recognises the faulting instruction by address, stores the signal
//! code in `rdx`, and moves the instruction pointer past the `rep movsb`; the routine then
//! returns `(remaining, code)` as if the copy had simply stopped early. A fault inside the
//! block loop (whose pointers and count move only after a whole block) is sent to `rep movsb`,
//! which copies that block again byte by byte up to the exact missing byte and faults there. This is the technique the Linux
//! kernel itself uses for `copy_from_user` (exception tables), applied in user space.
//!
//! Only a fault (a SIGBUS the kernel raised for the executing instruction) at those
//! instructions is ours. Every other SIGBUS — a fault elsewhere, one sent with kill(2), an
//! asynchronous machine-check report — goes on as the kernel would have delivered it without
//! us: to the handler that was installed before ours (Rust's own, or the application's), with
//! its mask and flags, or to the default action, which ends the process.
//!
//! Limits: only the copy routine is guarded, so only the copying accessors are safe against
//! truncation; slices handed out by `unsafe` methods are not. The handler is installed once,
//! process-wide, on the first guarded copy of a truncatable mapping. Code that later replaces
//! the SIGBUS handler without chaining to ours turns truncations back into crashes.
//! Implemented for x86-64; elsewhere, guarded copies of truncatable mappings report
//! `Unsupported`.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::OnceLock;

/// How a guarded copy ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyOutcome {
    /// Bytes not copied; 0 when the copy completed.
    pub(crate) remaining: usize,
    /// The SIGBUS `si_code` when the copy stopped on a fault, else 0.
    pub(crate) fault_code: usize,
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::CopyOutcome;

    /// Byte offsets in `guarded_copy` of the 64-byte block copy: its first instruction, and
    /// the instruction after its last memory access. A fault in between is restarted at the
    /// block's start by `rep movsb`, which finds the exact byte.
    pub(super) const BLOCK_START: usize = 0x0e;
    pub(super) const BLOCK_END: usize = 0x34;
    /// Byte offset of `rep movsb` from the start of `guarded_copy`.
    pub(super) const COPY_INSTRUCTION: usize = 0x46;
    /// Byte offset of the instruction after it, where a faulted copy resumes.
    pub(super) const RESUME: usize = 0x48;
    /// The encoding the offsets above describe (checked by a test).
    #[cfg(test)]
    pub(super) const ENCODING: [u8; 76] = [
        0x48, 0x89, 0xd1, // mov rcx, rdx
        0x31, 0xd2, // xor edx, edx
        0x48, 0x81, 0xf9, 0x00, 0x20, 0x00, 0x00, // cmp rcx, 8192
        0x72, 0x38, // jb tail
        0xf3, 0x0f, 0x6f, 0x06, // movdqu xmm0, [rsi]
        0xf3, 0x0f, 0x6f, 0x4e, 0x10, // movdqu xmm1, [rsi + 16]
        0xf3, 0x0f, 0x6f, 0x56, 0x20, // movdqu xmm2, [rsi + 32]
        0xf3, 0x0f, 0x6f, 0x5e, 0x30, // movdqu xmm3, [rsi + 48]
        0xf3, 0x0f, 0x7f, 0x07, // movdqu [rdi], xmm0
        0xf3, 0x0f, 0x7f, 0x4f, 0x10, // movdqu [rdi + 16], xmm1
        0xf3, 0x0f, 0x7f, 0x57, 0x20, // movdqu [rdi + 32], xmm2
        0xf3, 0x0f, 0x7f, 0x5f, 0x30, // movdqu [rdi + 48], xmm3
        0x48, 0x83, 0xc6, 0x40, // add rsi, 64
        0x48, 0x83, 0xc7, 0x40, // add rdi, 64
        0x48, 0x83, 0xe9, 0x40, // sub rcx, 64
        0x48, 0x83, 0xf9, 0x40, // cmp rcx, 64
        0x73, 0xc8, // jae block
        0xf3, 0xa4, // tail: rep movsb
        0x48, 0x89, 0xc8, // mov rax, rcx
        0xc3, // ret
    ];

    /// Copies `len` bytes from `src` to `dst`; returns what was not copied and why.
    ///
    /// From 8 KiB on, blocks of 64 bytes through SSE registers (faster than `rep movsb` for
    /// long copies from memory on the machine measured: the safe chunked scan went from 9.0 to
    /// 11.5 GB/s), and `rep movsb` for shorter copies (a 4 KiB `read_at` is 8 % faster with it),
    /// the rest, and the exact end of a copy that faults.
    ///
    /// # Safety
    /// `dst` and `src` are valid for `len` bytes apart from pages that fault with SIGBUS, and
    /// the ranges do not overlap.
    #[unsafe(naked)]
    pub(super) unsafe extern "C" fn guarded_copy(
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> CopyOutcome {
        core::arch::naked_asm!(
            "mov rcx, rdx",
            "xor edx, edx",
            "cmp rcx, 8192",
            "jb 3f",
            "2:",
            "movdqu xmm0, [rsi]",
            "movdqu xmm1, [rsi + 16]",
            "movdqu xmm2, [rsi + 32]",
            "movdqu xmm3, [rsi + 48]",
            "movdqu [rdi], xmm0",
            "movdqu [rdi + 16], xmm1",
            "movdqu [rdi + 32], xmm2",
            "movdqu [rdi + 48], xmm3",
            "add rsi, 64",
            "add rdi, 64",
            "sub rcx, 64",
            "cmp rcx, 64",
            "jae 2b",
            "3:",
            "rep movsb",
            "mov rax, rcx",
            "ret",
        )
    }

    /// The instruction pointer and the registers the handler reads and writes.
    pub(super) struct Registers<'a>(pub(super) &'a mut libc::ucontext_t);

    impl Registers<'_> {
        pub(super) fn instruction_pointer(&self) -> usize {
            self.0.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
        }

        /// Resumes the copy routine after its copy instruction, reporting `code`.
        pub(super) fn resume(&mut self, start: usize, code: i32) {
            let gregs = &mut self.0.uc_mcontext.gregs;
            gregs[libc::REG_RDX as usize] = i64::from(code);
            gregs[libc::REG_RIP as usize] = (start + RESUME) as i64;
        }

        /// Sends a block copy that faulted to `rep movsb`, which copies from the block's
        /// start (its pointers and count have not moved yet) up to the exact faulting byte.
        pub(super) fn finish_bytewise(&mut self, start: usize) {
            self.0.uc_mcontext.gregs[libc::REG_RIP as usize] = (start + COPY_INSTRUCTION) as i64;
        }
    }
}

/// Whether this build has the guard. Without it, callers must not copy from memory that can
/// be truncated.
pub(crate) const AVAILABLE: bool = cfg!(target_arch = "x86_64");

/// Whether a copy may fault, and so needs SIGBUS deliverable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Faults {
    /// The memory can vanish under the copy (a truncatable file, a failed pager page).
    Possible,
    /// Nothing can take the memory away (anonymous memory, a memfd sealed against
    /// shrinking): the copy runs with the thread's signal mask as it is.
    Impossible,
}

/// Copies `len` bytes, stopping at the first page that raises SIGBUS.
///
/// A fault the kernel raises while the thread blocks SIGBUS is not delivered to any handler:
/// the kernel resets the action to the default and the process ends (`force_sig_fault`). Many
/// designs block every signal in their worker threads, so when `faults` is
/// [`Faults::Possible`] the copy runs with SIGBUS unblocked in the calling thread — one
/// `rt_sigprocmask` call to unblock it, and a second only if it was blocked, to block it
/// again — unless the thread holds a [`SigbusUnblocked`] promise. A SIGBUS sent to the thread
/// (kill(2), tgkill(2)) while it was blocked is delivered the moment it is unblocked, and goes
/// where it would have gone without mmapkit.
///
/// # Safety
/// `dst` and `src` are valid for `len` bytes except for pages that fault with SIGBUS (which
/// requires [`install`] to have run, or the process dies), the ranges do not overlap, and no
/// Rust reference covers `dst` during the copy. With [`Faults::Impossible`], no page of the
/// ranges can fault.
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize, faults: Faults) -> CopyOutcome {
    if faults == Faults::Impossible || len == 0 || PROMISES.get().live > 0 {
        // SAFETY: forwarded from this function's contract.
        return unsafe { copy_as_masked(dst, src, len) };
    }
    let was_blocked = unblock_sigbus();
    // SAFETY: forwarded from this function's contract; SIGBUS is deliverable now.
    let outcome = unsafe { copy_as_masked(dst, src, len) };
    if was_blocked {
        block_sigbus();
    }
    outcome
}

/// SIGBUS in the kernel's signal set (bit `n - 1` is signal `n`).
const SIGBUS_BIT: u64 = 1 << (libc::SIGBUS - 1);

/// Unblocks SIGBUS in the calling thread; returns whether it was blocked.
fn unblock_sigbus() -> bool {
    crate::sys::sigprocmask_thread(libc::SIG_UNBLOCK, SIGBUS_BIT) & SIGBUS_BIT != 0
}

/// Blocks SIGBUS again in the calling thread.
fn block_sigbus() {
    crate::sys::sigprocmask_thread(libc::SIG_BLOCK, SIGBUS_BIT);
}

/// The calling thread's live [`SigbusUnblocked`] promises, and whether SIGBUS was blocked
/// before the first of them.
#[derive(Clone, Copy)]
struct Promises {
    live: usize,
    reblock: bool,
}

thread_local! {
    static PROMISES: Cell<Promises> = const { Cell::new(Promises { live: 0, reblock: false }) };
}

/// A thread's promise that SIGBUS stays unblocked in it, so that its guarded copies can skip
/// the `rt_sigprocmask` call each of them otherwise makes on memory that can fault.
///
/// Every guarded copy of truncatable memory (a file mapping, a named segment, a pager region)
/// makes sure SIGBUS is deliverable while it runs, because the kernel ends a process whose
/// thread faults with SIGBUS blocked, whatever handler is installed. That costs one system
/// call per copy — about 0.1–0.2 µs here, most of the price of a small copy. A thread that
/// makes many small copies and never blocks SIGBUS can take the promise once instead:
///
/// ```
/// # fn main() -> mmapkit::Result<()> {
/// # let file = tempfile::tempfile().unwrap();
/// # file.set_len(1 << 20).unwrap();
/// let map = mmapkit::MapOptions::new().map_file(&file)?;
/// // SAFETY: this thread never blocks SIGBUS while the promise lives.
/// let _promise = unsafe { mmapkit::fault::SigbusUnblocked::promise() };
/// let mut record = [0u8; 64];
/// for index in 0..16_384 {
///     map.read_at(index * 64, &mut record)?;     // no system call per read
/// }
/// # Ok(()) }
/// ```
///
/// Taking a promise unblocks SIGBUS in the calling thread (one system call, for the first
/// live promise); dropping the last one blocks it again if it was blocked before. Promises
/// nest, and belong to the thread that took them (the type is neither `Send` nor `Sync`).
#[derive(Debug)]
pub struct SigbusUnblocked {
    _this_thread: PhantomData<*const ()>,
}

impl SigbusUnblocked {
    /// Unblocks SIGBUS in the calling thread and lets its guarded copies rely on that until
    /// the value is dropped.
    ///
    /// # Safety
    /// While the value lives, the calling thread must not block SIGBUS (pthread_sigmask or
    /// sigprocmask with SIGBUS in a blocking set, a `SIG_SETMASK` that includes it), nor make
    /// guarded copies from a signal handler whose mask includes SIGBUS. If it does, a guarded
    /// copy of a truncated file kills the process instead of returning `Truncated`.
    pub unsafe fn promise() -> SigbusUnblocked {
        let mut promises = PROMISES.get();
        if promises.live == 0 {
            promises.reblock = unblock_sigbus();
        }
        promises.live += 1;
        PROMISES.set(promises);
        SigbusUnblocked {
            _this_thread: PhantomData,
        }
    }
}

impl Drop for SigbusUnblocked {
    fn drop(&mut self) {
        let mut promises = PROMISES.get();
        promises.live -= 1;
        if promises.live == 0 && promises.reblock {
            promises.reblock = false;
            block_sigbus();
        }
        PROMISES.set(promises);
    }
}

/// The copy itself, under whatever signal mask the thread has.
///
/// # Safety
/// As [`copy`], and a page that faults needs SIGBUS unblocked in this thread.
unsafe fn copy_as_masked(dst: *mut u8, src: *const u8, len: usize) -> CopyOutcome {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded from this function's contract.
        unsafe { arch::guarded_copy(dst, src, len) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: forwarded from this function's contract; without a guard, callers copy only
        // memory that cannot fault (see AVAILABLE).
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        CopyOutcome {
            remaining: 0,
            fault_code: 0,
        }
    }
}

/// The handler that was installed before ours, to chain to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the SIGBUS handler, once per process. Returns the OS error if sigaction fails.
pub(crate) fn install() -> Result<(), crate::sys::Errno> {
    static INSTALLED: OnceLock<Result<(), crate::sys::Errno>> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // The previous handler is recorded before ours is installed, so that ours never
            // runs without knowing where to chain.
            // SAFETY: querying the current action installs nothing.
            let previous = unsafe { crate::sys::sigaction(libc::SIGBUS, None) }?;
            let _ = PREVIOUS.set(previous);
            // SAFETY: an all-zero sigaction is a valid value to fill in.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            // SAFETY: `on_sigbus` is async-signal-safe (it reads registers and a OnceLock that
            // is already set, and calls only sigaction, pthread_sigmask and raise) and lives
            // for the whole process.
            unsafe { crate::sys::sigaction(libc::SIGBUS, Some(&action)) }?;
        }
        Ok(())
    })
}

/// Whether a SIGBUS was raised by the instruction that was executing (as opposed to sent by
/// kill(2), or an asynchronous machine-check report).
fn is_fault(code: i32) -> bool {
    matches!(
        code,
        libc::BUS_ADRALN | libc::BUS_ADRERR | libc::BUS_OBJERR | libc::BUS_MCEERR_AR
    )
}

#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigbus(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let start = arch::guarded_copy as *const () as usize;
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let code = unsafe { (*info).si_code };
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers, exclusively ours
    // for the duration of the handler.
    let mut registers = arch::Registers(unsafe { &mut *context.cast::<libc::ucontext_t>() });
    let at = registers.instruction_pointer().wrapping_sub(start);
    if is_fault(code) && at == arch::COPY_INSTRUCTION {
        registers.resume(start, code);
        return;
    }
    if is_fault(code) && (arch::BLOCK_START..arch::BLOCK_END).contains(&at) {
        registers.finish_bytewise(start);
        return;
    }
    // SAFETY: the kernel fills si_addr for SIGBUS faults.
    if is_fault(code) && super::shield::absorb(unsafe { (*info).si_addr() } as usize) {
        return;
    }
    // SAFETY: forwarding a signal we did not cause, with the arguments we were given.
    unsafe { chain(signal, info, context, is_fault(code)) }
}

/// Passes a signal that is not ours on, as the kernel would have delivered it without us: to
/// the previous handler (with its mask and flags), or to the default action — for a fault by
/// returning to the faulting instruction with the default restored, for a signal sent from
/// outside by raising it again.
///
/// # Safety
/// Called from a signal handler with the kernel's arguments.
#[cfg(target_arch = "x86_64")]
unsafe fn chain(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void, fault: bool) {
    // SAFETY: an all-zero sigaction with SIG_DFL is the default action.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // PREVIOUS is set before our handler is installed; the default is only a fallback.
    let previous = PREVIOUS.get().unwrap_or(&default);
    match previous.sa_sigaction {
        libc::SIG_DFL => {
            // SAFETY: installing the default action is always valid.
            let _ = unsafe { crate::sys::sigaction(signal, Some(&default)) };
            if !fault {
                // SAFETY: raise is async-signal-safe; the default action now handles it.
                unsafe { libc::raise(signal) };
            }
        }
        libc::SIG_IGN if fault => {
            // An ignored fault would repeat for ever; the kernel forces the default too.
            // SAFETY: installing the default action is always valid.
            let _ = unsafe { crate::sys::sigaction(signal, Some(&default)) };
        }
        libc::SIG_IGN => {}
        handler => {
            if previous.sa_flags & libc::SA_RESETHAND != 0 {
                // SAFETY: installing the default action is always valid.
                let _ = unsafe { crate::sys::sigaction(signal, Some(&default)) };
            }
            let mut mask = previous.sa_mask;
            if previous.sa_flags & libc::SA_NODEFER == 0 {
                // SAFETY: `mask` is a valid signal set.
                unsafe { libc::sigaddset(&mut mask, signal) };
            }
            // SAFETY: an all-zero sigset_t is a valid value to fill in.
            let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: pthread_sigmask is async-signal-safe; both sets are valid.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut saved) };
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so this is its
                // type.
                let handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(handler) };
                handler(signal, info, context);
            } else {
                // SAFETY: installed without SA_SIGINFO, so the handler takes only the signal.
                let handler: extern "C" fn(i32) = unsafe { std::mem::transmute(handler) };
                handler(signal);
            }
            // SAFETY: restores the mask saved above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn copy_routine_has_the_layout_the_handler_expects() {
        let start = arch::guarded_copy as *const () as *const u8;
        // SAFETY: reading the routine's own machine code, which is mapped readable.
        let code = unsafe { std::slice::from_raw_parts(start, arch::ENCODING.len()) };
        assert_eq!(code, arch::ENCODING);
        assert_eq!(code[arch::COPY_INSTRUCTION..arch::RESUME], [0xf3, 0xa4]);
        assert_eq!(
            code[arch::BLOCK_START..arch::BLOCK_START + 4],
            [0xf3, 0x0f, 0x6f, 0x06]
        );
        assert_eq!(
            code[arch::BLOCK_END..arch::BLOCK_END + 4],
            [0x48, 0x83, 0xc6, 0x40]
        );
    }

    #[test]
    fn copies_every_byte_when_nothing_faults() {
        let source: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        let mut target = vec![0u8; source.len()];
        // SAFETY: both buffers are valid for their length and distinct.
        let outcome = unsafe {
            copy(
                target.as_mut_ptr(),
                source.as_ptr(),
                source.len(),
                Faults::Possible,
            )
        };
        assert_eq!(
            outcome,
            CopyOutcome {
                remaining: 0,
                fault_code: 0
            }
        );
        assert_eq!(source, target);
    }
}
