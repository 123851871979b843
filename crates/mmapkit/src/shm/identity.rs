//! Which process is which, in a way that survives pid reuse: a pid together with the process's
//! start time (clock ticks since boot, field 22 of /proc/PID/stat). Shared structures record
//! the identity of their creator, lock owners and channel endpoints; a peer is alive when a
//! process with that pid exists *and* started at that time.
//!
//! This process's own identity is cached, and forgotten in a child: the `pthread_atfork`
//! child handler says so after `fork`, and a page wiped on fork says so after `_Fork` or a raw
//! `clone`, which skip the handlers.
//!
//! All processes that share a segment must share a pid namespace for this to mean anything.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};

use crate::sys;

/// A process, identified so that a reused pid does not pass for the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (0 when it could not be read).
    pub start_time: u64,
}

/// This process's identity, cached; reset in the child after fork.
static CURRENT_PID: AtomicU32 = AtomicU32::new(0);
static CURRENT_START: AtomicU64 = AtomicU64::new(0);
/// Bumped in every child after fork, so that per-thread caches notice.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    CURRENT_PID.store(0, Ordering::Relaxed);
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    if let Some(Some(marker)) = FORK_MARKER.get() {
        marker.store(ARMED, Ordering::Release);
    }
}

/// A word that reads 0 in a child process however the child was made — `fork`, `_Fork` or a
/// raw `clone`, which skip the `pthread_atfork` handlers — because its page is wiped on fork
/// (`MADV_WIPEONFORK`, Linux 4.14). `None` where the kernel cannot; then only the handlers
/// tell.
static FORK_MARKER: OnceLock<Option<&'static AtomicU64>> = OnceLock::new();
const ARMED: u64 = 1;

fn fork_marker() -> Option<&'static AtomicU64> {
    *FORK_MARKER.get_or_init(|| {
        let len = sys::page_size();
        let read_write = sys::ProtFlags::READ | sys::ProtFlags::WRITE;
        // SAFETY: a new private anonymous mapping; without MAP_FIXED nothing is replaced.
        let page =
            unsafe { sys::mmap(null_mut(), len, read_write, sys::MapFlags::PRIVATE, None, 0) }
                .ok()?;
        // SAFETY: the page was just mapped and is ours.
        if unsafe { sys::madvise(page, len, sys::MemoryAdvice::LinuxWipeOnFork) }.is_err() {
            // SAFETY: ours, and nothing refers to it.
            let _ = unsafe { sys::munmap(page, len) };
            return None;
        }
        // SAFETY: the page stays mapped for the life of the process (it is never unmapped), is
        // page-aligned and zero-filled, and only this module reaches it, as an atomic.
        let marker = unsafe { &*page.cast::<AtomicU64>() };
        marker.store(ARMED, Ordering::Release);
        Some(marker)
    })
}

fn watch_forks() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler only stores to atomics, which is safe in a child after fork.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    if let Some(marker) = fork_marker()
        && marker.load(Ordering::Acquire) != ARMED
    {
        after_fork_in_child();
    }
}

impl ProcessIdentity {
    /// The calling process.
    pub fn current() -> ProcessIdentity {
        watch_forks();
        let pid = CURRENT_PID.load(Ordering::Relaxed);
        if pid != 0 {
            return ProcessIdentity {
                pid,
                start_time: CURRENT_START.load(Ordering::Relaxed),
            };
        }
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let identity = ProcessIdentity {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        };
        CURRENT_START.store(identity.start_time, Ordering::Relaxed);
        CURRENT_PID.store(pid, Ordering::Relaxed);
        identity
    }

    /// The process `pid` as it is now, if it exists; its start time is 0 when /proc cannot
    /// say (another user's process behind `hidepid`, or no /proc mounted).
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let start_time = match start_time(pid) {
            Some(start_time) => start_time,
            None if exists(pid) => 0,
            None => return None,
        };
        Some(ProcessIdentity { pid, start_time })
    }

    /// Whether this process still runs (a zombie counts as gone). One that exists but whose
    /// /proc entry cannot be read (`hidepid`, no /proc) counts as running: nothing says
    /// otherwise.
    pub fn is_alive(&self) -> bool {
        runs_as(self.pid, self.start_time)
    }
}

/// A thread, identified so that a reused thread id does not pass for the old thread: lock
/// owners are recorded this way, so that a thread (or the whole process) that dies holding a
/// lock is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadIdentity {
    /// Thread id (the kernel's tid; the pid for a process's main thread).
    pub tid: u32,
    /// Start time in clock ticks since boot (0 when it could not be read).
    pub start_time: u64,
}

impl ThreadIdentity {
    /// The calling thread, cached per thread and refreshed after fork.
    pub fn current() -> ThreadIdentity {
        use std::cell::Cell;
        thread_local! {
            static CACHED: Cell<(u64, ThreadIdentity)> =
                const { Cell::new((u64::MAX, ThreadIdentity { tid: 0, start_time: 0 })) };
        }
        watch_forks();
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        CACHED.with(|cached| {
            let (cached_generation, identity) = cached.get();
            if cached_generation == generation {
                return identity;
            }
            let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
            let identity = ThreadIdentity {
                tid,
                start_time: start_time(tid).unwrap_or(0),
            };
            cached.set((generation, identity));
            identity
        })
    }

    /// The thread `tid` as it is now, if it exists and has not exited.
    pub fn of(tid: u32) -> Option<ThreadIdentity> {
        let fields = stat_fields(tid)?;
        let zombie = fields
            .first()
            .is_some_and(|state| *state == "Z" || *state == "X");
        let start_time = fields.get(19)?.parse().ok()?;
        (!zombie).then_some(ThreadIdentity { tid, start_time })
    }

    /// Whether the thread `tid` exists, runs, and (when `start_time` is known) started then.
    /// Reads /proc/TID/stat, which exists for every thread of the pid namespace; one that
    /// exists but whose entry cannot be read counts as running.
    pub fn is_alive(&self) -> bool {
        if self.tid == 0 {
            return false;
        }
        runs_as(self.tid, self.start_time)
    }
}

/// Fields 3 onwards of /proc/PID/stat (state first), split after the command name, which may
/// itself contain spaces and parentheses.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = crate::inspect::read_file(format!("/proc/{pid}/stat").as_ref()).ok()?;
    // The name, in parentheses, is any bytes (not only UTF-8); the fields after it are ASCII.
    let after_name = &stat[stat.iter().rposition(|&byte| byte == b')')? + 1..];
    let fields = std::str::from_utf8(after_name).ok()?;
    Some(fields.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// What /proc and the kernel say of a process or thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// It runs, and started then (0: /proc gave no start time).
    Running { start_time: u64 },
    /// No such id, or a zombie.
    Gone,
    /// The id is in use, but its /proc entry cannot be read: another user's process behind
    /// `hidepid`, or no /proc mounted. A process or thread of that id runs; whether it is
    /// the one recorded cannot be told.
    CannotTell,
}

/// Looks at `id` in /proc, and asks the kernel whether the id is in use when /proc cannot
/// say: a `kill` with signal 0, which any process may make (EPERM still means it exists).
pub(crate) fn look_at(id: u32) -> Seen {
    match stat_fields(id) {
        Some(fields)
            if fields
                .first()
                .is_some_and(|state| *state == "Z" || *state == "X") =>
        {
            Seen::Gone
        }
        Some(fields) => Seen::Running {
            start_time: fields
                .get(19)
                .and_then(|field| field.parse().ok())
                .unwrap_or(0),
        },
        None if exists(id) => Seen::CannotTell,
        None => Seen::Gone,
    }
}

/// Whether `id` runs and, when both start times are known, started at `start_time`; an id in
/// use whose /proc entry cannot be read counts as running.
fn runs_as(id: u32, start_time: u64) -> bool {
    match look_at(id) {
        Seen::Running { start_time: now } => start_time == 0 || now == 0 || now == start_time,
        Seen::Gone => false,
        Seen::CannotTell => true,
    }
}

/// Whether the process or thread id `id` is in use (kill(2) with signal 0).
fn exists(id: u32) -> bool {
    let Some(pid) = i32::try_from(id)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Ok(()) | Err(rustix::io::Errno::PERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessIdentity::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !impostor.is_alive(),
            "same pid, other start time: another process"
        );
        assert!(
            !ProcessIdentity {
                pid: 0x3fff_ffff,
                start_time: 1
            }
            .is_alive()
        );
    }

    #[test]
    fn threads_are_told_apart_and_a_finished_one_is_dead() {
        let main = ThreadIdentity::current();
        let other = std::thread::spawn(ThreadIdentity::current).join().unwrap();
        assert_ne!(main.tid, other.tid);
        assert_eq!(main, ThreadIdentity::current(), "cached");
        assert!(main.is_alive());
        assert!(!other.is_alive(), "the thread has finished");
        assert!(main.start_time > 0);
    }
}
