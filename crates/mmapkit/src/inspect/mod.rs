//! Looking at memory from the outside: a process's mappings, a file's page-cache residency,
//! and the controls that change it (touch, evict, lock).
//!
//! * [`maps`] / [`smaps`]: /proc/PID/maps and /proc/PID/smaps as typed records
//!   ([`MapsEntry`], [`SmapsEntry`]) — what pmap shows.
//! * [`residency`]: how much of a file is in the page cache — what vmtouch and fincore show.
//!   It asks cachestat(2) (Linux 6.5), one system call for any range, which also counts dirty,
//!   under-writeback and evicted pages; where the kernel lacks it, it falls back to mincore(2)
//!   over windows of at most 128 MiB, so a 100 GiB file is never mapped at once. A per-page
//!   map is available on request (mincore, windowed the same way).
//! * [`touch`], [`evict`], [`lock`]: read a range into the cache, drop it from the cache, and
//!   hold it there with mlock.
//! * [`walk`]: the files under some paths, each once, for tools that report on trees.
//!
//! One caveat is the kernel's: since Linux 5.2, mincore reports every page of a file the
//! caller could not open for writing as resident (a side channel was closed that way).
//! Residency reports say which method answered, and the mincore fallback refuses files it
//! would lie about instead of reporting them full.

mod control;
mod maps;
mod residency;
pub mod walk;

pub use control::{LockedRange, evict, lock, touch};
pub use maps::{
    MappingKind, MapsEntry, Permissions, SmapsEntry, SmapsFields, parse_maps, parse_smaps,
};
pub(crate) use residency::open_regular;
pub use residency::{
    FileResidency, MAX_PAGE_MAP_PAGES, Method, PageMap, ResidencyOptions, residency, residency_of,
};

use std::path::{Path, PathBuf};

use crate::{Error, ErrorKind, Result};

/// Which process to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// The calling process (/proc/self).
    Current,
    /// Another process by id.
    Id(u32),
}

impl Pid {
    fn dir(self) -> PathBuf {
        match self {
            Pid::Current => PathBuf::from("/proc/self"),
            Pid::Id(pid) => PathBuf::from(format!("/proc/{pid}")),
        }
    }
}

/// Reads `/proc/PID/<file>`, with errors that say which process and why.
fn read_proc(pid: Pid, file: &str, operation: &'static str) -> Result<Vec<u8>> {
    let path = pid.dir().join(file);
    read_file(&path).map_err(|error| proc_error(pid, &path, operation, &error))
}

/// Reads a whole file (a /proc file) by system calls alone, none of them a libc thread
/// cancellation point: channels read a peer's /proc/PID/stat and maps on their hot path,
/// which the C ABI does not shield from `pthread_cancel` (that costs 6 ns a call), and a
/// cancellation acted on inside the library aborts the process.
pub(crate) fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let fd = crate::sys::open(path, crate::sys::OFlags::RDONLY, 0)?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = loop {
        match crate::sys::read(std::os::fd::AsFd::as_fd(&fd), &mut chunk) {
            Ok(0) => break Ok(data),
            Ok(count) => data.extend_from_slice(&chunk[..count]),
            Err(crate::sys::Errno::INTR) => {}
            Err(errno) => break Err(errno.into()),
        }
    };
    crate::sys::close(fd);
    read
}

/// The error for a /proc file of `pid` that could not be read.
fn proc_error(pid: Pid, path: &Path, operation: &'static str, error: &std::io::Error) -> Error {
    let base = Error::io(operation, error).with_path(path);
    match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => {
            let who = match pid {
                Pid::Id(pid) => format!("no process with PID {pid}"),
                Pid::Current => String::from("this process has no /proc entry"),
            };
            base.with_kind(ErrorKind::NotFound).with_message(who)
        }
        Some(libc::EACCES) | Some(libc::EPERM) => base.with_hint(
            "reading another process's mappings takes ptrace read access: the same user \
             (as /proc/sys/kernel/yama/ptrace_scope allows) or CAP_SYS_PTRACE; a security \
             module or an outer user namespace can refuse even root",
        ),
        _ => base,
    }
}

/// The mappings of a process, from /proc/PID/maps.
pub fn maps(pid: Pid) -> Result<Vec<MapsEntry>> {
    let text = read_proc(pid, "maps", "maps")?;
    let mut entries = parse_maps(&text).map_err(|error| error.with_path(pid.dir().join("maps")))?;
    entries.iter_mut().for_each(settle_deleted);
    Ok(entries)
}

/// A live file whose own name ends in " (deleted)" reads like a deleted file in /proc; a
/// file at the whole path with the mapping's device and inode settles it. (Seen from this
/// process's mount namespace: for a process in another one, the kernel's reading stands.)
fn settle_deleted(entry: &mut MapsEntry) {
    use std::os::unix::fs::MetadataExt;
    let MappingKind::DeletedFile(path) = &entry.kind else {
        return;
    };
    let mut whole = path.clone().into_os_string();
    whole.push(" (deleted)");
    let same_file = std::fs::metadata(&whole).is_ok_and(|file| {
        file.ino() == entry.inode
            && file.dev() == rustix::fs::makedev(entry.device_major, entry.device_minor)
    });
    if same_file {
        entry.kind = MappingKind::File(whole.into());
    }
}

/// The mappings of a process with their memory figures, from /proc/PID/smaps (read and
/// parsed a line at a time).
pub fn smaps(pid: Pid) -> Result<Vec<SmapsEntry>> {
    let path = pid.dir().join("smaps");
    let failed = |error: std::io::Error| proc_error(pid, &path, "smaps", &error);
    let file = std::fs::File::open(&path).map_err(failed)?;
    let mut entries = maps::read_smaps(file)
        .map_err(failed)?
        .map_err(|error| error.with_path(&path))?;
    for entry in &mut entries {
        settle_deleted(&mut entry.map);
    }
    Ok(entries)
}

/// The process a thread id belongs to (its thread group: /proc/TID/status `Tgid`); a
/// process id is its own. /proc answers for thread ids it does not list.
pub fn process_of(pid: Pid) -> Result<u32> {
    let status = read_proc(pid, "status", "status")?;
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                "status",
                "no Tgid line in /proc/PID/status",
            )
            .with_path(pid.dir().join("status"))
        })
}

/// The arguments a process was started with (/proc/PID/cmdline; empty for a kernel thread
/// or a process that has exited), each as it was but for invalid UTF-8, which is replaced.
pub fn arguments(pid: Pid) -> Result<Vec<String>> {
    let raw = read_proc(pid, "cmdline", "cmdline")?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect())
}

/// The command line of a process (arguments joined by spaces), or its name in brackets for a
/// kernel thread, as pmap prints it.
pub fn command_line(pid: Pid) -> Result<String> {
    let words = arguments(pid)?;
    if !words.is_empty() {
        return Ok(words.join(" "));
    }
    // No command line: a kernel thread, or a process that has exited (a zombie, as ps says).
    let comm = read_proc(pid, "comm", "comm")?;
    // The kernel ends the name with a newline; one the name itself holds stays.
    let name = String::from_utf8_lossy(comm.strip_suffix(b"\n").unwrap_or(&comm)).into_owned();
    let stat = read_proc(pid, "stat", "stat").unwrap_or_default();
    let state = stat
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|end| stat.get(end + 2));
    Ok(match state {
        Some(b'Z') => format!("[{name}] <defunct>"),
        _ => format!("[{name}]"),
    })
}
