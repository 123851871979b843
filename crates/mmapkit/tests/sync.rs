//! Synchronisation primitives in a segment, exercised by threads of one process (processes
//! are in `sync_processes.rs`).

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mmapkit::sync::{Condvar, Event, EventMode, LockError, Mutex, PollableEvent, Semaphore};
use mmapkit::{ErrorKind, Segment, SegmentOptions};

fn segment() -> Segment {
    SegmentOptions::new("test/sync", 4096)
        .unwrap()
        .create_memfd("sync")
        .unwrap()
}

#[test]
fn mutex_serialises_increments_from_many_threads() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 0u64).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let mutex = Mutex::<u64>::open(&segment, 0).unwrap();
                for _ in 0..2_000 {
                    let mut guard = mutex.lock().unwrap();
                    guard.update(|value| *value += 1).unwrap();
                }
            });
        }
    });
    assert_eq!(mutex.lock().unwrap().get().unwrap(), 8_000);
}

#[test]
fn try_lock_and_timeouts() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 64, [0u8; 16]).unwrap();
    let held = mutex.lock().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let other = Mutex::<[u8; 16]>::open(&segment, 64).unwrap();
            assert_eq!(other.try_lock().unwrap_err().kind(), ErrorKind::WouldBlock);
            let started = Instant::now();
            let error = other.lock_timeout(Duration::from_millis(30)).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Timeout);
            assert!(started.elapsed() >= Duration::from_millis(30));
        });
    });
    drop(held);
    assert!(mutex.try_lock().is_ok());
}

#[test]
fn timeouts_too_long_to_represent_wait_as_long_as_needed() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 64, 0u64).unwrap();
    let semaphore = Semaphore::init(&segment, 256, 1).unwrap();
    let event = Event::init(&segment, 512, EventMode::ManualReset).unwrap();
    event.set().unwrap();
    // Instant + Duration::MAX overflowed (a panic) before these waits began.
    drop(mutex.lock_timeout(Duration::MAX).unwrap());
    semaphore.wait_timeout(Duration::MAX).unwrap();
    event.wait_timeout(Duration::MAX).unwrap();
    let condvar = Condvar::init(&segment, 1024).unwrap();
    let mut guard = mutex.lock().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let other = Mutex::<u64>::open(&segment, 64).unwrap();
            let mut guard = other.lock().unwrap();
            guard.set(&1).unwrap();
            Condvar::open(&segment, 1024).unwrap().notify_all();
        });
        while guard.get().unwrap() == 0 {
            let (relocked, timed_out) = condvar.wait_timeout(guard, Duration::MAX);
            assert!(!timed_out);
            guard = relocked.unwrap();
        }
    });
}

#[test]
fn a_thread_that_ends_holding_the_lock_is_reported_and_recoverable() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 41u32).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut guard = mutex.lock().unwrap();
            guard.set(&42).unwrap();
            std::mem::forget(guard); // the thread ends without unlocking
        });
    });
    let Err(LockError::OwnerDied(guard)) = mutex.lock_timeout(Duration::from_secs(5)) else {
        panic!("the dead owner was not reported");
    };
    assert_eq!(guard.get().unwrap(), 42, "the data can be inspected");
    assert!(!guard.is_consistent());
    drop(guard);
    let again = mutex.lock().unwrap_err();
    assert_eq!(
        again.kind(),
        ErrorKind::OwnerDied,
        "still inconsistent until marked"
    );
    let mut guard = again.into_guard().unwrap();
    guard.set(&0).unwrap();
    guard.mark_consistent();
    drop(guard);
    assert_eq!(mutex.lock().unwrap().get().unwrap(), 0);
}

#[test]
fn a_garbage_lock_word_is_recovered_not_waited_on_for_ever() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 0u32).unwrap();
    // A hostile peer writes an owner that does not exist into the lock word.
    segment
        .atomic::<AtomicU32>(4)
        .unwrap()
        .store(0x3fff_fff0, Ordering::SeqCst);
    let error = mutex.lock_timeout(Duration::from_secs(5)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OwnerDied);
}

#[test]
fn condvar_hands_values_between_threads() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 0u64).unwrap();
    let condvar = Condvar::init(&segment, 64).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for value in 1..=100u64 {
                let mut guard = mutex.lock().unwrap();
                while guard.get().unwrap() != 0 {
                    guard = condvar.wait(guard).unwrap();
                }
                guard.set(&value).unwrap();
                condvar.notify_all();
            }
        });
        let mut received = Vec::new();
        while received.len() < 100 {
            let mut guard = mutex.lock().unwrap();
            while guard.get().unwrap() == 0 {
                guard = condvar.wait(guard).unwrap();
            }
            received.push(guard.get().unwrap());
            guard.set(&0).unwrap();
            condvar.notify_all();
        }
        assert_eq!(received, (1..=100).collect::<Vec<_>>());
    });
    let guard = mutex.lock().unwrap();
    let (guard, timed_out) = condvar.wait_timeout(guard, Duration::from_millis(20));
    assert!(timed_out);
    assert!(guard.is_ok());
}

#[test]
fn semaphore_counts_and_wakes() {
    let segment = segment();
    let semaphore = Semaphore::init(&segment, 0, 2).unwrap();
    assert!(semaphore.try_wait().unwrap());
    assert!(semaphore.try_wait().unwrap());
    assert!(!semaphore.try_wait().unwrap());
    assert_eq!(
        semaphore
            .wait_timeout(Duration::from_millis(10))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            Semaphore::open(&segment, 0)
                .unwrap()
                .wait_timeout(Duration::from_secs(5))
        });
        std::thread::sleep(Duration::from_millis(20));
        semaphore.post().unwrap();
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(semaphore.value(), 0);
}

#[test]
fn events_manual_and_auto() {
    let segment = segment();
    let manual = Event::init(&segment, 0, EventMode::ManualReset).unwrap();
    let auto = Event::init(&segment, 16, EventMode::AutoReset).unwrap();
    manual.set().unwrap();
    assert!(
        manual.try_wait().unwrap() && manual.try_wait().unwrap(),
        "stays set"
    );
    manual.reset().unwrap();
    assert!(!manual.try_wait().unwrap());
    auto.set().unwrap();
    assert!(auto.try_wait().unwrap());
    assert!(!auto.try_wait().unwrap(), "one waiter per set");
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            Event::open(&segment, 16)
                .unwrap()
                .wait_timeout(Duration::from_secs(5))
        });
        std::thread::sleep(Duration::from_millis(20));
        auto.set().unwrap();
        waiter.join().unwrap().unwrap();
    });
}

#[test]
fn pollable_event_wakes_poll() {
    let segment = segment();
    let event = PollableEvent::init(&segment, 0, EventMode::AutoReset).unwrap();
    let mut fds = [rustix::event::PollFd::new(
        &event,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&zero)).unwrap(),
        0,
        "nothing yet"
    );
    let duplicate = event.eventfd().try_clone_to_owned().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let setter = PollableEvent::open(&segment, 0, duplicate).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            setter.set().unwrap();
        });
        let mut fds = [rustix::event::PollFd::new(
            &event,
            rustix::event::PollFlags::IN,
        )];
        assert_eq!(rustix::event::poll(&mut fds, None).unwrap(), 1);
    });
    assert!(event.try_wait().unwrap());
    assert!(!event.try_wait().unwrap(), "drained and cleared");
    let _ = event.as_fd();
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn pollable_event_wakes_async_waiters() {
    let segment = segment();
    let event = PollableEvent::init(&segment, 0, EventMode::AutoReset).unwrap();
    let setter =
        PollableEvent::open(&segment, 0, event.eventfd().try_clone_to_owned().unwrap()).unwrap();
    let waiting = event.wait_async();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            setter.set().unwrap();
        });
    });
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn placement_is_checked() {
    let segment = segment();
    let kind = |result: mmapkit::Result<()>| result.unwrap_err().kind();
    assert_eq!(
        kind(Mutex::init(&segment, 4, 0u64).map(drop)),
        ErrorKind::InvalidInput
    );
    let end = segment.payload_len();
    assert_eq!(
        kind(Semaphore::init(&segment, end - 8, 0).map(drop)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(Event::open(&segment, 0).map(drop)),
        ErrorKind::Corrupt,
        "nothing there"
    );
    Semaphore::init(&segment, 0, 0).unwrap();
    assert_eq!(
        kind(Mutex::<u64>::open(&segment, 0).map(drop)),
        ErrorKind::Corrupt
    );
    assert_eq!(kind(Event::open(&segment, 0).map(drop)), ErrorKind::Corrupt);
}

#[test]
fn a_forgotten_guard_is_taken_back_only_by_its_thread() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 7u64).unwrap();
    assert!(!mutex.is_held_by_current_thread());
    // SAFETY: no guard exists; the call must refuse, since this thread holds nothing.
    let refused = unsafe { mutex.assume_locked() }.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput);
    std::mem::forget(mutex.lock().unwrap());
    assert!(mutex.is_held_by_current_thread());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            assert!(!mutex.is_held_by_current_thread());
            // SAFETY: the forgotten guard is this test thread's, not this one's: refused.
            let elsewhere = unsafe { mutex.assume_locked() }.unwrap_err();
            assert_eq!(elsewhere.kind(), ErrorKind::InvalidInput);
            assert_eq!(
                mutex.try_lock().map(drop).unwrap_err().kind(),
                ErrorKind::WouldBlock
            );
        });
    });
    // SAFETY: this thread holds the lock through the guard forgotten above, and only it.
    let guard = unsafe { mutex.assume_locked() }.unwrap();
    assert_eq!(guard.get().unwrap(), 7);
    drop(guard);
    assert!(!mutex.is_held_by_current_thread());
    std::thread::scope(|scope| {
        scope.spawn(|| assert!(mutex.try_lock().is_ok()));
    });
}
