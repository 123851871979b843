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
        // SAFETY: plain system calls in the new child. PR_SET_PDEATHSIG ends the child if
        // the parent goes before the report is delivered (nobody would learn its pid);
        // setsid detaches it from the terminal's session.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            libc::setsid();
        }
        let (worked, text, errors, locks) = lock_all();
        let mut message = vec![u8::from(worked)];
        message.extend_from_slice(&(locks.len() as u64).to_le_bytes());
        message.extend_from_slice(text.as_bytes());
        message.push(0);
        message.extend_from_slice(errors.join("\n").as_bytes());
        let delivered = std::fs::File::from(write_end).write_all(&message).is_ok();
        if !delivered || locks.is_empty() {
            drop(locks);
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { libc::_exit(i32::from(!delivered)) };
        }
        // SAFETY: plain system calls: the report is out, so the holder outlives the parent
        // from now on, and keeps no directory busy.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::chdir(c"/".as_ptr());
        }
        detach_standard_streams();
        wait_for_termination();
        drop(locks);
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    drop(write_end);
    let mut message = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut message);
    if message.len() < 9 {
        eprintln!("mmapkit: the background process {pid} ended without a report");
        return false;
    }
    let worked = message[0] == 1;
    let locked = u64::from_le_bytes(message[1..9].try_into().unwrap_or([0; 8]));
    let rest = &message[9..];
    let (text, errors) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    print!("{}", String::from_utf8_lossy(text));
    for error in String::from_utf8_lossy(errors).lines() {
        eprintln!("mmapkit: {error}");
    }
    if locked > 0 {
        eprintln!(
            "mmapkit: {locked} file(s) locked by background process {pid}; release with: kill {pid}"
        );
    } else {
        // Nothing to hold: the child has exited; collect it.
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    worked
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
