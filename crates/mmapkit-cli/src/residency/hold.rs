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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use mmapkit::inspect::LockedRange;

/// Waits for a termination signal, then releases the locks. Call
/// [`block_termination_signals`] first, before the pid is written or anything is printed: a
/// signal that arrives meanwhile then waits for us instead of ending the process.
pub fn until_interrupted(locks: Vec<LockedRange>, pidfile: Option<Pidfile>) {
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

/// The pidfile of `-P`: a regular file of ours, never a link, a device or someone else's.
pub struct Pidfile {
    path: PathBuf,
    file: File,
    /// Device and inode: the file removed at the end must be the one created.
    identity: (u64, u64),
}

impl Pidfile {
    /// Creates the pidfile, or empties one of ours; anything else in its place is refused
    /// before it is opened for writing (a device or FIFO would be written to, or block).
    pub fn create(path: &Path) -> mmapkit::Result<Pidfile> {
        let refuse = |why: String| {
            Err(
                mmapkit::Error::new(mmapkit::ErrorKind::InvalidInput, "create the pidfile", why)
                    .with_path(path),
            )
        };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) => {
                if let Some(why) = not_ours(&metadata) {
                    return refuse(why);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(mmapkit::Error::io("create the pidfile", &error).with_path(path));
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|error| mmapkit::Error::io("create the pidfile", &error).with_path(path))?;
        // What was opened, in case the path changed since it was looked at.
        let metadata = file
            .metadata()
            .map_err(|error| mmapkit::Error::io("create the pidfile", &error).with_path(path))?;
        if let Some(why) = not_ours(&metadata) {
            return refuse(why);
        }
        file.set_len(0)
            .map_err(|error| mmapkit::Error::io("create the pidfile", &error).with_path(path))?;
        Ok(Pidfile {
            // The holder leaves its directory for /, and still removes the pidfile at the end.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            file,
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// Writes this process's pid.
    pub fn write_pid(&mut self) -> mmapkit::Result<()> {
        writeln!(self.file, "{}", std::process::id())
            .and_then(|()| self.file.sync_all())
            .map_err(|error| mmapkit::Error::io("write the pidfile", &error).with_path(&self.path))
    }

    /// Removes the pidfile if it is still the file created, holding this pid or nothing.
    pub fn remove(self) {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        else {
            return;
        };
        let same = file
            .metadata()
            .is_ok_and(|now| (now.dev(), now.ino()) == self.identity);
        let mut held = Vec::new();
        // A pid is a few bytes: anything longer is not ours.
        let read = file.take(32).read_to_end(&mut held);
        let ours = format!("{}\n", std::process::id());
        if same && read.is_ok() && (held.is_empty() || held == ours.as_bytes()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why an existing file may not serve as the pidfile, if it may not.
fn not_ours(metadata: &std::fs::Metadata) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if metadata.file_type().is_symlink() {
        Some("it is a symbolic link, and a pidfile is never written through one".into())
    } else if !metadata.is_file() {
        Some("it is not a regular file".into())
    } else if metadata.uid() != me {
        Some(format!(
            "it belongs to another user (uid {})",
            metadata.uid()
        ))
    } else if metadata.nlink() > 1 {
        Some("it has other hard links".into())
    } else {
        None
    }
}

fn wait_for_termination() {
    block_termination_signals();
    let mut received = 0;
    // SAFETY: sigwait reads the set and writes the signal number into a valid integer.
    unsafe { libc::sigwait(&termination_signals(), &mut received) };
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in this (only) thread, so they wait for sigwait.
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
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Runs `lock_all` in a detached child that keeps its locks until SIGTERM; prints the child's
/// report and pid (not the pid when `quiet` with a pidfile, which holds it). Returns whether
/// the child's work succeeded.
///
/// The child dies with the parent (PR_SET_PDEATHSIG while it locks; once it holds locks the
/// termination signals wait, and the parent's end of the socket closing ends it) until the
/// parent has printed its pid, so no holder is ever left that nobody heard of. A handshake
/// over a socket pair orders the steps: report, the pid printed on stderr, "printed", then the
/// child drops the death signal and answers "detached" before the parent may exit (exiting
/// earlier would deliver that very signal, and the child would release at once).
pub fn in_background(
    pidfile: Option<Pidfile>,
    quiet: bool,
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
        let (mut worked, text, mut errors, mut locks) = lock_all();
        if !locks.is_empty() {
            // Before the pid is out (in the pidfile, or printed by the parent): a signal sent
            // at once waits for the release instead of ending us with the pidfile left
            // behind. The parent's death is still noticed: its end of the socket closes.
            block_termination_signals();
        }
        // The pid is in the pidfile before the parent returns; a pid that cannot be written
        // leaves nothing held (nobody could find the holder by it).
        let pidfile = match pidfile {
            Some(mut pidfile) if !locks.is_empty() => match pidfile.write_pid() {
                Ok(()) => Some(pidfile),
                Err(error) => {
                    errors.push(error.to_string());
                    worked = false;
                    locks.clear();
                    pidfile.remove();
                    None
                }
            },
            Some(pidfile) => {
                pidfile.remove();
                None
            }
            None => None,
        };
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
    let has_pidfile = pidfile.is_some();
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
    // the child is not told "printed" and ends with us. Quiet, it is in the pidfile.
    let told = if quiet && has_pidfile {
        Ok(())
    } else {
        writeln!(
            std::io::stderr(),
            "mmapkit: {locked} file(s) locked by background process {pid}; release with: kill {pid}"
        )
    };
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
