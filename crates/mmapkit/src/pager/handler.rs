//! The handler threads: they read faults off the userfaultfd, serve them, and fill pages
//! ahead of demand when no fault waits.
//!
//! By default there is one handler per CPU the process may run on, each pinned to its CPU,
//! and an idle handler sleeps in poll(2). Measured on a 2-vCPU VM (see the bench crate), a
//! fault served by a sleeping handler on the *other* CPU costs 40–50 µs, most of it waking an
//! idle vCPU; busy-polling there brings it to about 15 µs but burns a CPU. The handler pinned
//! to the faulting thread's own CPU is woken locally as the faulting thread blocks, and serves
//! the fault in 7–10 µs without spinning at all. So faults are served where they happen, and
//! the other handlers pick up read-ahead in parallel.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::engine::Engine;
use crate::map::{MapOptions, Mapping};
use crate::sys::uffd::MESSAGE_BYTES;
use crate::{Error, Result};

/// Messages read from the userfaultfd in one read(2).
const MESSAGES_PER_READ: usize = 64;

/// A handler's scratch buffer: page-aligned, one run of pages long.
pub(crate) struct Scratch(Mapping);

impl Scratch {
    pub(crate) fn new(bytes: usize) -> Result<Scratch> {
        Ok(Scratch(
            MapOptions::new().len(bytes).write(true).map_anonymous()?,
        ))
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        self.0
            .as_mut_slice()
            .expect("a private anonymous writable mapping lends a mutable slice")
    }
}

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
    scratch: Scratch,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("mmapkit-pager-{index}"))
        .spawn(move || {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&engine, cpu, scratch)
            }));
            if served.is_err() {
                // Threads blocked on faults of the region would wait for ever: a pager with
                // a broken invariant must stop the process rather than hang it.
                eprintln!("mmapkit: a pager handler thread panicked; aborting");
                std::process::abort();
            }
        })
        .map_err(|error| Error::io("pager", &error).with_message("cannot start a handler thread"))
}

fn run(engine: &Engine, cpu: Option<usize>, mut scratch: Scratch) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        // Pinning is an optimisation: an unpinned handler serves faults all the same.
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    let mut messages = vec![0u8; MESSAGE_BYTES * MESSAGES_PER_READ];
    let mut faults = Vec::with_capacity(MESSAGES_PER_READ);
    while !engine.is_shut_down() {
        if engine.read_faults(&mut messages, &mut faults) > 0 {
            for fault in faults.drain(..) {
                engine.on_fault(fault, scratch.bytes());
            }
            continue;
        }
        if let Some(run) = engine.next_work() {
            // A failed read ahead leaves the pages absent; a demand fault reports the error.
            let _ = engine.fill_ahead(run, scratch.bytes());
            continue;
        }
        engine.wait();
    }
    engine.signal();
}
