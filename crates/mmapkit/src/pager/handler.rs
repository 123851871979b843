//! The handler threads: they read faults off the userfaultfd, serve them, and fill pages
//! ahead of demand when no fault waits.
//!
//! By default there is one handler per CPU the process may run on, each pinned to its CPU,
//! and an idle handler sleeps in poll(2). Measured on a 2-vCPU VM (the pager-random bench
//! and a probe of the mechanism): a fault served by a sleeping handler on the *other*
//! CPU costs 40–50 µs, most of it waking an idle vCPU; busy-polling there brings it to about
//! 15 µs but burns a CPU. The handler pinned to the faulting thread's own CPU is woken
//! locally as the faulting thread blocks, and serves the fault in 8–10 µs without spinning
//! at all. So faults are served where they happen, and the other handlers fill ahead in
//! parallel.
//!
//! Every handler waiting on the userfaultfd is woken by every fault (the kernel wakes all
//! pollers), and only one gets the message. A handler that served none of the last 64
//! faults therefore stops waiting on the userfaultfd for 20 ms at a time — it still fills
//! ahead when work is queued — so that a many-CPU machine does not wake every handler for
//! every fault. Threads that fault should stay on few CPUs (pin them, if latency matters:
//! an unpinned thread that the scheduler moves between CPUs after each fault pays 13–14 µs
//! per fault here instead of 8–10).

use std::sync::Arc;
use std::thread::JoinHandle;

use super::engine::Engine;
use crate::sys::uffd::MESSAGE_BYTES;
use crate::{Error, Result};

/// A handler that served none of the last this many faults stops waiting on the
/// userfaultfd...
const QUIET_AFTER: u64 = 64;
/// ...for this long at a time (queued work still wakes it).
const QUIET_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// Messages read from the userfaultfd in one read(2).
const MESSAGES_PER_READ: usize = 64;

/// The CPUs this process may run on (sched_getaffinity), in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts handler `index`, pinned to `cpu` if given.
pub(crate) fn spawn(
    engine: Arc<Engine>,
    index: usize,
    cpu: Option<usize>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("mmapkit-pager-{index}"))
        .spawn(move || {
            let served =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&engine, cpu)));
            if served.is_err() {
                // Store panics never get here: they are caught around each store call and
                // become that page's error. What is left is a panic in the pager's own code,
                // a broken invariant with pages half-claimed. The threads blocked on faults
                // of the region would wait for ever on a handler that is gone, and nothing
                // can safely finish the claims it held, so the process stops rather than
                // hangs.
                eprintln!("mmapkit: a pager handler thread panicked; aborting");
                std::process::abort();
            }
        })
        .map_err(|error| Error::io("pager", &error).with_message("cannot start a handler thread"))
}

fn run(engine: &Engine, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        // Pinning is an optimisation: an unpinned handler serves faults all the same.
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    let mut messages = vec![0u8; MESSAGE_BYTES * MESSAGES_PER_READ];
    let mut faults = Vec::with_capacity(MESSAGES_PER_READ);
    // Read the userfaultfd only when poll says it holds faults (or after filling ahead,
    // when some may have come in): an empty read is a wasted system call per fault.
    let mut pending = true;
    // The total of faults served when this handler last served one or rejoined.
    let mut mark = engine.served_total();
    while !engine.is_shut_down() {
        if pending {
            let count = engine.read_faults(&mut messages, &mut faults);
            if count > 0 {
                mark = engine.served(count);
            }
            // Several threads faulting on one page send one message each: one fill and one
            // wake serve them all.
            faults.sort_unstable_by_key(|fault| (fault.address, fault.write_protect, !fault.write));
            faults.dedup_by(|later, kept| {
                later.address == kept.address && later.write_protect == kept.write_protect
            });
            for fault in faults.drain(..) {
                engine.on_fault(fault);
            }
        }
        if let Some(run) = engine.next_work() {
            // A failed read ahead leaves the pages absent; a demand fault reports the error.
            let _ = engine.fill_ahead(run);
            pending = true;
            continue;
        }
        if engine.served_total() - mark > QUIET_AFTER {
            // The faults happen on other CPUs: stop being woken by each of them (a wasted
            // cross-CPU wake-up per fault), but keep filling ahead, and rejoin after a while
            // in case the faulting threads moved here.
            engine.wait_for_work(QUIET_FOR);
            if engine.served_total() - mark > QUIET_AFTER {
                mark = engine.served_total();
            }
            pending = true;
        } else {
            pending = engine.wait();
        }
    }
    engine.signal();
}
