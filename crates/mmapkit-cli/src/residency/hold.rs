//! Holding locked pages: in the foreground until a signal, or in a background process.
//!
//! mlock does not survive fork, so the background process is forked first and does the
//! locking itself; it sends its report back over a socket pair, then detaches (new session,
//! standard streams on /dev/null) and waits for SIGTERM, SIGINT or SIGHUP.
//!
//! A pidfile (`-P`) is created before anything is locked, so that a path that cannot be
//! written is refused while nothing is done yet; the holder writes its pid into it once it
//! holds its locks, and removes it when it releases them.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use mmapkit::inspect::LockedRange;

/// Waits for a termination signal, then releases the locks. Call
/// [`block_termination_signals`] first, before anything is printed: a signal that arrives
/// meanwhile then waits for us instead of ending the process.
pub fn until_interrupted(locks: Vec<LockedRange>, pidfile: Option<Pidfile>) {
    let pidfile = pidfile.and_then(Pidfile::written);
    errln!(
        "mmapkit: holding {} locked file(s); interrupt (Ctrl-C) or SIGTERM to release",
        locks.len()
    );
    wait_for_termination();
    drop(locks);
    if let Some(pidfile) = pidfile {
        pidfile.remove();
    }
}

/// The pidfile of `-P`.
pub struct Pidfile {
    path: PathBuf,
    file: File,
}

impl Pidfile {
    /// Creates (or empties) the pidfile; a symbolic link in its place is refused.
    pub fn create(path: &Path) -> mmapkit::Result<Pidfile> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|error| match error.raw_os_error() {
                Some(libc::ELOOP) => mmapkit::Error::new(
                    mmapkit::ErrorKind::InvalidInput,
                    "create the pidfile",
                    "it is a symbolic link, and a pidfile is never written through one",
                ),
                _ => mmapkit::Error::io("create the pidfile", &error),
            })
            .map_err(|error| error.with_path(path))?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes this process's pid; a pidfile that cannot take it is removed (with a warning).
    fn written(mut self) -> Option<Pidfile> {
        let pid = std::process::id();
        match writeln!(self.file, "{pid}").and_then(|()| self.file.sync_all()) {
            Ok(()) => Some(self),
            Err(error) => {
                errln!(
                    "mmapkit: {}: could not write the pid: {error}",
                    self.path.display()
                );
                self.remove();
                None
            }
        }
    }

    /// Removes the pidfile, unless it now names another process (someone else's since).
    pub fn remove(self) {
        let ours = format!("{}\n", std::process::id());
        let held = std::fs::read_to_string(&self.path).unwrap_or_default();
        if held.is_empty() || held == ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn wait_for_termination() {
    block_termination_signals();
    let mut received = 0;
    // SAFETY: sigwait reads the set and writes the signal number into a valid integer.
    unsafe { libc::sigwait(&termination_signals(), &mut received) };
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this (only) thread, so they wait for sigwait.
pub fn block_termination_signals() {
    // SAFETY: pthread_sigmask reads the set; blocking these signals is the point.
    unsafe {
        libc::pthread_sigmask(
            libc::SIG_BLOCK,
            &termination_signals(),
            std::ptr::null_mut(),
        )
    };
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to fill in; the calls only write the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Runs `lock_all` in a detached child that keeps its locks until SIGTERM; prints the child's
/// report and pid. Returns whether the child's work succeeded.
///
/// The child dies with the parent (PR_SET_PDEATHSIG) until the parent has printed its pid, so
/// no holder is ever left that nobody heard of. A handshake over a socket pair orders the
/// steps: report, the pid printed on stderr, "printed", then the child drops the death signal
/// and answers "detached" before the parent may exit (exiting earlier would deliver that
/// very signal).
pub fn in_background(
    pidfile: Option<Pidfile>,
    lock_all: impl FnOnce() -> (bool, String, Vec<String>, Vec<LockedRange>),
) -> bool {
    let (mut parent_end, mut child_end) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(error) => {
            errln!("mmapkit: socketpair: {error}");
            if let Some(pidfile) = pidfile {
                pidfile.remove();
            }
            return false;
        }
    };
    let parent_pid = std::process::id() as libc::pid_t;
    // SAFETY: the command is single-threaded until here (no progress bar or pager threads
    // exist yet), so the child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        errln!("mmapkit: fork: {}", std::io::Error::last_os_error());
        if let Some(pidfile) = pidfile {
            pidfile.remove();
        }
        return false;
    }
    if pid == 0 {
        drop(parent_end);
        // SAFETY: plain system calls in the new child; setsid detaches it from the
        // terminal's session.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // The parent died before the death signal was set (a subreaper, not only
            // init, may have adopted us).
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            libc::setsid();
        }
        let (worked, text, errors, locks) = lock_all();
        // The pid is in the pidfile before the parent returns.
        let pidfile = pidfile
            .filter(|_| !locks.is_empty())
            .and_then(Pidfile::written);
        let release = |locks: Vec<LockedRange>, pidfile: Option<Pidfile>| {
            drop(locks);
            if let Some(pidfile) = pidfile {
                pidfile.remove();
            }
        };
        let report = encode_report(worked, locks.len(), &text, &errors);
        let delivered = child_end.write_all(&report).is_ok();
        if !delivered || locks.is_empty() {
            release(locks, pidfile);
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { libc::_exit(i32::from(!delivered)) };
        }
        let mut printed = [0u8];
        if child_end.read_exact(&mut printed).is_err() {
            release(locks, pidfile);
            // SAFETY: as above; the parent is gone without telling anyone our pid.
            unsafe { libc::_exit(1) };
        }
        // SAFETY: plain system calls: the pid is out, so the holder outlives the parent
        // from now on, and keeps no directory busy.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            libc::chdir(c"/".as_ptr());
        }
        let _ = child_end.write_all(&[1]);
        drop(child_end);
        detach_standard_streams();
        wait_for_termination();
        release(locks, pidfile);
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    // The child writes and removes the pidfile; this copy of its descriptor is closed.
    drop(pidfile);
    drop(child_end);
    let Some((worked, locked, text, errors)) = read_report(&mut parent_end) else {
        errln!("mmapkit: the background process {pid} ended without a report");
        return false;
    };
    out!("{text}");
    for error in errors.lines() {
        errln!("mmapkit: {error}");
    }
    if locked == 0 {
        // Nothing to hold: the child has exited; collect it.
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return worked;
    }
    // The pid must reach someone before the child may outlive us: if stderr cannot take it,
    // the child is not told "printed" and ends with us.
    let told = writeln!(
        std::io::stderr(),
        "mmapkit: {locked} file(s) locked by background process {pid}; release with: kill {pid}"
    );
    if told.is_err() {
        return false;
    }
    let mut detached = [0u8];
    let handshake = parent_end
        .write_all(&[1])
        .and_then(|()| parent_end.read_exact(&mut detached));
    if handshake.is_err() {
        errln!("mmapkit: the background process {pid} ended before it detached; nothing is held");
        return false;
    }
    worked
}

/// The child's report: success, number of locked files, the text to print, the errors.
fn encode_report(worked: bool, locked: usize, text: &str, errors: &[String]) -> Vec<u8> {
    let errors = errors.join("\n");
    let mut report = Vec::with_capacity(25 + text.len() + errors.len());
    report.push(u8::from(worked));
    report.extend_from_slice(&(locked as u64).to_le_bytes());
    report.extend_from_slice(&(text.len() as u64).to_le_bytes());
    report.extend_from_slice(&(errors.len() as u64).to_le_bytes());
    report.extend_from_slice(text.as_bytes());
    report.extend_from_slice(errors.as_bytes());
    report
}

fn read_report(stream: &mut UnixStream) -> Option<(bool, u64, String, String)> {
    let mut head = [0u8; 25];
    stream.read_exact(&mut head).ok()?;
    let field = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
    let mut read_text = |len: u64| {
        let mut bytes = vec![0; usize::try_from(len).ok()?];
        stream.read_exact(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let text = read_text(field(9))?;
    let errors = read_text(field(17))?;
    Some((head[0] == 1, field(1), text, errors))
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
