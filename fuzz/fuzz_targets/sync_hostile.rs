//! Synchronisation primitives whose words a hostile peer rewrites between operations: every
//! operation must end in a value or an error, never a crash or a hang (only non-waiting and
//! zero-timeout variants are used).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mmapkit::SegmentOptions;
use mmapkit::sync::{Condvar, Event, EventMode, Mutex, Semaphore};

fuzz_target!(|data: &[u8]| {
    let segment = SegmentOptions::new("fuzz/sync", 256).unwrap().create_memfd("sync").unwrap();
    let (Ok(mutex), Ok(condvar), Ok(semaphore), Ok(event)) = (
        Mutex::init(&segment, 0, [0u8; 8]),
        Condvar::init(&segment, 64),
        Semaphore::init(&segment, 80, 1),
        Event::init(&segment, 96, EventMode::AutoReset),
    ) else {
        return;
    };
    for op in data.chunks(4) {
        let arg = |index: usize| op.get(index).copied().unwrap_or(0);
        match arg(0) % 9 {
            0 => {
                if let Ok(mut guard) = mutex.try_lock() {
                    let _ = guard.set(&[arg(1); 8]);
                }
            }
            1 => drop(mutex.lock_timeout(Duration::ZERO).map(|guard| guard.get())),
            2 => condvar.notify_all(),
            3 => drop(semaphore.try_wait()),
            4 => drop(semaphore.post()),
            5 => drop(event.set()),
            6 => drop(event.try_wait()),
            7 => drop(Mutex::<[u8; 8]>::open(&segment, 0)),
            _ => {
                let offset = usize::from(arg(1)) % segment.payload_len();
                let _ = segment.write_at(offset, &[arg(2), arg(3), arg(1), arg(2)]);
            }
        }
    }
});
