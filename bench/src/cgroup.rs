//! A memory cgroup for a benchmark's child processes: the same limit for ours and the anchor.
//!
//! cgroup v2 puts the limit in `memory.max`; v1, still what some container hosts run, in
//! `memory.limit_in_bytes` of the memory hierarchy. The group is created under the one this
//! process is in (found in /proc/self/cgroup) and removed on drop.

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    version: u8,
}

impl MemoryCgroup {
    /// Creates the group `name` with a limit of `limit` bytes; `None` where no memory cgroup
    /// can be created or limited (no controller, no permission).
    pub fn create(name: &str, limit: usize) -> Option<MemoryCgroup> {
        let (parent, version) = memory_parent()?;
        let dir = parent.join(name);
        if !dir.exists() && std::fs::create_dir(&dir).is_err() {
            return None;
        }
        let file = if version == 2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let group = MemoryCgroup { dir, version };
        // Where the limit cannot be set (v2 without the controller delegated), no group.
        std::fs::write(group.dir.join(file), limit.to_string())
            .is_ok()
            .then_some(group)
    }

    /// The file a process writes its pid to, to join.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub fn kind(&self) -> &'static str {
        if self.version == 2 {
            "cgroup v2 memory.max"
        } else {
            "cgroup v1 memory.limit_in_bytes"
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Fails only while a child is still inside, which cannot be after the run.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The directory of this process's memory cgroup, and the cgroup version.
fn memory_parent() -> Option<(PathBuf, u8)> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path);
            if dir.join("memory.limit_in_bytes").exists() {
                return Some((dir, 1));
            }
        }
        if id == "0" && controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(path);
            let offered =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if offered.split_whitespace().any(|c| c == "memory") {
                return Some((dir, 2));
            }
        }
    }
    None
}
