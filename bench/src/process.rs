//! Forked peers for the IPC benchmarks: the measuring process forks one partner per run, so
//! that every transport is measured between two real processes. The measuring process runs
//! on CPU 0 and the partner on CPU 1 (as iceoryx2's own benchmark pins its two sides): left to
//! the scheduler, a partner woken by a futex is often placed on the waker's CPU, and two
//! processes that poll each other on one CPU measure the scheduler, not the transport.

use std::time::Duration;

/// Runs `child` in a forked process and returns its pid. The benchmark binary is
/// single-threaded, so forking is sound.
pub fn fork(child: impl FnOnce()) -> libc::pid_t {
    pin_to(0);
    // SAFETY: mmapkit-bench runs on one thread, so the child inherits no lock held by another.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        pin_to(1);
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)) {
            Ok(()) => 0,
            Err(_) => 101,
        };
        // SAFETY: ends the child without running the parent's exit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Runs the calling process on `cpu` only (when the machine has it).
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    // A machine with one CPU keeps the default placement.
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Waits for a forked partner and panics if it failed.
pub fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a valid integer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the benchmark partner failed (status {status:#x})"
    );
}

/// A monotonic timestamp in nanoseconds that both processes read from the same clock.
pub fn now_ns() -> u64 {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// A pipe pair for start-up handshakes.
pub struct Handshake {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Handshake {
    pub fn new() -> Handshake {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        Handshake { read, write }
    }

    pub fn signal(&self) {
        rustix::io::write(&self.write, &[1]).expect("handshake write");
    }

    pub fn wait(&self) {
        let mut byte = [0u8];
        rustix::io::read(&self.read, &mut byte).expect("handshake read");
    }
}

/// Sleeps a little between a wake-up benchmark's messages, so that the receiver goes to sleep.
pub const WAKE_GAP: Duration = Duration::from_millis(3);
