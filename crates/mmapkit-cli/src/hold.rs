//! Holding locked pages: in the foreground until a signal, or in a background process.
//!
//! mlock does not survive fork, so the background process is forked first and does the
//! locking itself; it sends its report back through a pipe, then detaches (new session,
//! standard streams on /dev/null) and waits for SIGTERM, SIGINT or SIGHUP.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use mmapkit::inspect::LockedRange;

/// Blocks the termination signals and waits for one; the locks are released on return.
pub fn until_interrupted(locks: Vec<LockedRange>) {
    eprintln!(
        "mmapkit: holding {} locked file(s); interrupt (Ctrl-C) or SIGTERM to release",
        locks.len()
    );
    wait_for_termination();
    drop(locks);
}

fn wait_for_termination() {
    // SAFETY: an all-zero sigset_t is a valid value to fill in; the calls only read and
    // write the sets passed, and blocking these signals in this (only) thread is the point.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut received = 0;
        libc::sigwait(&set, &mut received);
    }
}

/// Runs `lock_all` in a detached child that keeps its locks until SIGTERM; prints the child's
/// report and pid. Returns whether the child's work succeeded.
pub fn in_background(
    lock_all: impl FnOnce() -> (bool, String, Vec<String>, Vec<LockedRange>),
) -> bool {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("mmapkit: pipe: {}", std::io::Error::last_os_error());
        return false;
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the command is single-threaded until here (no progress bar or pager threads
    // exist yet), so the child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("mmapkit: fork: {}", std::io::Error::last_os_error());
        return false;
    }
    if pid == 0 {
        drop(read_end);
        // SAFETY: setsid has no preconditions; it detaches from the terminal's session.
        unsafe { libc::setsid() };
        let (worked, text, errors, locks) = lock_all();
        let mut pipe = std::fs::File::from(write_end);
        let mut message = vec![u8::from(worked)];
        message.extend_from_slice(text.as_bytes());
        message.push(0);
        message.extend_from_slice(errors.join("\n").as_bytes());
        let _ = pipe.write_all(&message);
        drop(pipe);
        detach_standard_streams();
        if !locks.is_empty() {
            wait_for_termination();
        }
        drop(locks);
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) };
    }
    drop(write_end);
    let mut message = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut message);
    let Some((&worked, rest)) = message.split_first() else {
        eprintln!("mmapkit: the background process {pid} ended without a report");
        return false;
    };
    let (text, errors) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    print!("{}", String::from_utf8_lossy(text));
    for error in String::from_utf8_lossy(errors).lines() {
        eprintln!("mmapkit: {error}");
    }
    println!("locked by background process {pid}; release with: kill {pid}");
    worked == 1
}

fn detach_standard_streams() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), target) };
    }
}
