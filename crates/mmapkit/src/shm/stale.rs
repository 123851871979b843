//! Finding and removing stale named segments.
//!
//! Named segments outlive their processes: a creator killed with SIGKILL leaves its object in
//! /dev/shm for good. A segment is *stale* when it carries a valid mmapkit header, its creator
//! is dead (pid and start time, so a reused pid does not count), and no process maps it or
//! holds it open (found by reading every /proc/PID/maps and /proc/PID/fd this process may
//! read). Users are matched by device and inode, never by path: /proc escapes a newline in a
//! mapped path and marks a deleted file with a " (deleted)" suffix that a live name can carry
//! too, so a path match would call a segment in use "unused" and let it be removed. [`list`] reports every object in /dev/shm, mmapkit's or not; [`cleanup`] unlinks the
//! stale ones and never touches anything without an mmapkit header.
//!
//! Processes of other users whose /proc entries cannot be read are not seen as users: run as
//! the segments' owner (or root) for an exact answer. Nor are processes in another PID
//! namespace (a container sharing /dev/shm): their creator looks dead and their mappings
//! unused, so run [`cleanup`] where every user of /dev/shm is visible. (A creator hidden by
//! `hidepid` whose pid is in use counts as alive: nothing says it is not.)
//! The check and the unlink are not atomic: a process that opens a stale segment between the
//! two keeps its mapping, but the name is gone, as with any unlink.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Header;
use super::header::{HEADER_SIZE, RawHeader};
use crate::error::{Error, Result};
use crate::map::MapOptions;

/// Where named segments live.
pub const SHM_DIR: &str = "/dev/shm";

/// One object in /dev/shm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Name (the file name in /dev/shm; invalid UTF-8 replaced, see `file_name`).
    pub name: String,
    /// The file name exactly, for [`remove`].
    pub file_name: OsString,
    /// Size in bytes.
    pub size: u64,
    /// Inode number: the object's identity, checked again before [`cleanup`] unlinks it.
    pub inode: u64,
    /// Owner's user id.
    pub uid: u32,
    /// Permission bits.
    pub mode: u32,
    /// The mmapkit header, when the object has a valid one.
    pub header: Option<Header>,
    /// Whether the creator still runs (mmapkit segments only).
    pub creator_alive: Option<bool>,
    /// Processes that map the object or hold it open.
    pub users: Vec<u32>,
}

impl SegmentInfo {
    /// A valid mmapkit segment whose creator is dead and that no process uses.
    pub fn is_stale(&self) -> bool {
        self.header.is_some() && self.creator_alive == Some(false) && self.users.is_empty()
    }
}

/// Every regular file in /dev/shm, with what can be learned about it.
pub fn list() -> Result<Vec<SegmentInfo>> {
    list_in(Path::new(SHM_DIR))
}

/// What [`cleanup`] did.
#[derive(Debug, Default)]
pub struct Cleanup {
    /// The stale segments removed.
    pub removed: Vec<String>,
    /// The stale segments that could not be removed, and why.
    pub failed: Vec<(String, Error)>,
}

/// Unlinks the stale segments (see the [module docs](self)). One that cannot be removed
/// does not stop the others; one that vanished meanwhile is not an error.
pub fn cleanup() -> Result<Cleanup> {
    cleanup_matching(|_| true)
}

/// Unlinks the stale segments that `select` accepts (an application's own, by name), as
/// [`cleanup`] does.
pub fn cleanup_matching(select: impl Fn(&SegmentInfo) -> bool) -> Result<Cleanup> {
    let mut outcome = Cleanup::default();
    for info in list()?
        .into_iter()
        .filter(|info| info.is_stale() && select(info))
    {
        // Replaced since it was examined: not the stale segment any more.
        let path = Path::new(SHM_DIR).join(&info.file_name);
        if std::fs::symlink_metadata(&path).map_or(true, |now| now.ino() != info.inode) {
            continue;
        }
        match remove(&info.file_name) {
            Ok(()) => outcome.removed.push(info.name),
            Err(error) if error.kind() == crate::ErrorKind::NotFound => {}
            Err(error) => outcome.failed.push((info.name, error)),
        }
    }
    Ok(outcome)
}

/// Removes the object called `name` in /dev/shm, whatever its name (not only the valid
/// UTF-8 of at most 250 bytes that [`super::unlink`] takes): `list` shows every object, so
/// every one can be removed. Only a name that is not a single file name is refused.
pub fn remove(name: &OsStr) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(Error::new(
            crate::ErrorKind::InvalidInput,
            "segment name",
            format!("{:?} is not a name in {SHM_DIR}", name.to_string_lossy()),
        ));
    }
    let path = Path::new(SHM_DIR).join(name);
    std::fs::remove_file(&path).map_err(|error| Error::io("unlink segment", &error).with_path(path))
}

fn list_in(directory: &Path) -> Result<Vec<SegmentInfo>> {
    let entries = std::fs::read_dir(directory)
        .map_err(|error| Error::io("list segments", &error).with_path(directory))?;
    let shm_device = std::fs::metadata(directory)
        .map_err(|error| Error::io("list segments", &error).with_path(directory))?
        .dev();
    let users = users_by_file(shm_device);
    let mut infos = Vec::new();
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let file_name = entry.file_name();
        if !metadata.is_file() {
            continue;
        }
        let path = entry.path();
        let header = read_header(&path);
        let mut pids: Vec<u32> = users
            .get(&metadata.ino())
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        pids.sort_unstable();
        infos.push(SegmentInfo {
            name: file_name.to_string_lossy().into_owned(),
            file_name,
            size: metadata.len(),
            inode: metadata.ino(),
            uid: metadata.uid(),
            mode: metadata.mode() & 0o7777,
            creator_alive: header.map(|header| header.creator.is_alive()),
            header,
            users: pids,
        });
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// The header of the segment at `path`, if it has a valid one. The open neither follows a
/// symbolic link nor blocks (a name swapped for a FIFO after the listing), and only a
/// regular file is read.
///
/// Closing the file drops this process's record locks on it, which a channel endpoint of this
/// process in that segment holds: they are taken again right after.
fn read_header(path: &Path) -> Option<Header> {
    let file = crate::inspect::open_regular(path, false).ok()?;
    let key = super::locks::FileKey::of(std::os::fd::AsFd::as_fd(&file)).ok()?;
    let header = header_of(&file);
    drop(file);
    super::locks::retake_all(key);
    header
}

fn header_of(file: &std::fs::File) -> Option<Header> {
    let size = file.metadata().ok()?.len();
    if size < HEADER_SIZE as u64 {
        return None;
    }
    let map = MapOptions::new().len(HEADER_SIZE).map_file(file).ok()?;
    map.read_pod::<RawHeader>(0).ok()?.validate(size).ok()
}

/// For every file on `device` that some process maps or holds open: its inode and the pids
/// that do, from /proc.
fn users_by_file(device: u64) -> HashMap<u64, HashSet<u32>> {
    let mut users: HashMap<u64, HashSet<u32>> = HashMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return users;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let mapped = crate::inspect::maps(crate::inspect::Pid::Id(pid)).unwrap_or_default();
        for entry in mapped.iter().filter(|entry| {
            entry.inode != 0
                && rustix::fs::makedev(entry.device_major, entry.device_minor) == device
        }) {
            users.entry(entry.inode).or_default().insert(pid);
        }
        if let Ok(fds) = std::fs::read_dir(process.path().join("fd")) {
            for fd in fds.flatten() {
                // stat follows the link to the open file itself, deleted or renamed.
                if let Ok(file) = std::fs::metadata(fd.path())
                    && file.dev() == device
                {
                    users.entry(file.ino()).or_default().insert(pid);
                }
            }
        }
    }
    users
}
