//! Synchronisation across processes made by fork: the robust mutex against SIGKILL (1,000
//! rounds) and against a holder that execs another program, a semaphore between processes,
//! and waiters that sleep without using CPU.
//!
//! Runs without the libtest harness (fork in a threaded harness is hazardous).

mod common;

use std::time::{Duration, Instant};

use common::processes::{self, fork};
use mmapkit::sync::{Event, EventMode, LockError, Mutex, Semaphore};
use mmapkit::{ErrorKind, Segment, SegmentOptions};

fn main() {
    let cases: &[(&str, fn())] = &[
        (
            "kill_9_of_the_lock_holder_1000_rounds",
            kill_9_of_the_lock_holder_1000_rounds,
        ),
        (
            "a_lock_holder_that_execs_another_program_is_gone",
            a_lock_holder_that_execs_another_program_is_gone,
        ),
        (
            "a_holder_or_waiter_without_proc_takes_no_lock_over",
            a_holder_or_waiter_without_proc_takes_no_lock_over,
        ),
        ("semaphore_between_processes", semaphore_between_processes),
        ("idle_waiters_use_no_cpu", idle_waiters_use_no_cpu),
    ];
    processes::run(cases);
}

fn segment() -> Segment {
    SegmentOptions::new("test/sync", 4096)
        .unwrap()
        .create_memfd("sync")
        .unwrap()
}

/// Waits for a child; returns its wait status and the CPU time it used.
fn wait_with_cpu(pid: libc::pid_t) -> (i32, Duration) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into valid locals.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (status, time(usage.ru_utime) + time(usage.ru_stime))
}

fn kill_9_of_the_lock_holder_1000_rounds() {
    const ROUNDS: u64 = 1000;
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, [0u64; 2]).unwrap();
    let ready = Semaphore::init(&segment, 64, 0).unwrap();
    let started = Instant::now();
    for round in 1..=ROUNDS {
        let child = fork(|| {
            let mut guard = match mutex.lock() {
                Ok(guard) => guard,
                Err(error) => error.into_guard().unwrap(),
            };
            guard.set(&[round, 0]).unwrap(); // half-done work: [round, not finished]
            ready.post().unwrap();
            std::thread::sleep(Duration::from_secs(60));
            0
        });
        ready.wait_timeout(Duration::from_secs(10)).unwrap();
        // SAFETY: kills our own child.
        assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
        let (status, _) = wait_with_cpu(child);
        assert!(libc::WIFSIGNALED(status));
        match mutex.lock_timeout(Duration::from_secs(10)) {
            Err(LockError::OwnerDied(mut guard)) => {
                assert_eq!(
                    guard.get().unwrap(),
                    [round, 0],
                    "the dead owner's data is there"
                );
                guard.set(&[round, 1]).unwrap();
                guard.mark_consistent();
            }
            Ok(_) => panic!("round {round}: the owner's death was not reported"),
            Err(error) => panic!("round {round}: {error}"),
        }
    }
    assert_eq!(mutex.lock().unwrap().get().unwrap(), [ROUNDS, 1]);
    println!("({ROUNDS} rounds in {:?})", started.elapsed());
}

/// A holder that execs keeps its pid, thread id and start time, but no longer maps the
/// segment: it is gone, while the same holder before its exec is not.
fn a_lock_holder_that_execs_another_program_is_gone() {
    use std::os::unix::process::CommandExt;
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 0u64).unwrap();
    let ready = Semaphore::init(&segment, 64, 0).unwrap();
    let child = fork(|| {
        let mut guard = mutex.lock().unwrap();
        guard.set(&7).unwrap();
        ready.post().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let error = std::process::Command::new("sleep").arg("30").exec();
        panic!("exec failed: {error}");
    });
    ready.wait_timeout(Duration::from_secs(10)).unwrap();
    match mutex.lock_timeout(Duration::from_millis(1200)) {
        Err(error) => assert_eq!(error.kind(), ErrorKind::Timeout, "{error}"),
        Ok(_) => panic!("a live holder's lock was taken"),
    }
    let started = Instant::now();
    match mutex.lock_timeout(Duration::from_secs(10)) {
        Err(LockError::OwnerDied(guard)) => assert_eq!(guard.get().unwrap(), 7),
        Ok(_) => panic!("the lock was free"),
        Err(error) => panic!("the exec was not noticed: {error}"),
    }
    println!(
        "(the holder's exec was noticed {:?} later)",
        started.elapsed()
    );
    // SAFETY: kills our own child.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    wait_with_cpu(child);
}

/// Unmounts /proc for this process alone (a mount namespace of its own).
fn lose_proc() {
    // SAFETY: plain system calls on this process's own mount namespace; the strings are
    // NUL-terminated literals.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        let root = c"/".as_ptr();
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                flags,
                std::ptr::null()
            ),
            0
        );
        assert_eq!(
            libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH),
            0,
            "umount /proc"
        );
    }
    assert!(std::fs::metadata("/proc/self/stat").is_err());
}

/// Where /proc cannot be read (here: not mounted; for another user's process: `hidepid`),
/// a live holder cannot be verified, and is not taken for dead: by a waiter without /proc,
/// nor when the holder itself had none to record its start time.
fn a_holder_or_waiter_without_proc_takes_no_lock_over() {
    let segment = segment();
    let mutex = Mutex::init(&segment, 0, 0u64).unwrap();
    let ready = Semaphore::init(&segment, 64, 0).unwrap();
    for holder_without_proc in [false, true] {
        let holder = fork(|| {
            if holder_without_proc {
                lose_proc();
            }
            let guard = mutex.lock().unwrap();
            ready.post().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(guard);
            0
        });
        ready.wait_timeout(Duration::from_secs(10)).unwrap();
        let waiter = fork(|| {
            if !holder_without_proc {
                lose_proc();
            }
            match mutex.lock_timeout(Duration::from_millis(1200)) {
                Err(error) if error.kind() == ErrorKind::Timeout => 0,
                Err(LockError::OwnerDied(_)) => 2,
                _ => 3,
            }
        });
        let (status, _) = wait_with_cpu(waiter);
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "holder without /proc: {holder_without_proc}: 2 means the live holder was taken over"
        );
        let (status, _) = wait_with_cpu(holder);
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}

fn semaphore_between_processes() {
    let segment = segment();
    let semaphore = Semaphore::init(&segment, 0, 0).unwrap();
    let child = fork(|| {
        for _ in 0..1000 {
            semaphore.post().unwrap();
        }
        0
    });
    for _ in 0..1000 {
        semaphore.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(wait_with_cpu(child).0, 0);
    assert_eq!(semaphore.value(), 0);
}

fn idle_waiters_use_no_cpu() {
    let segment = segment();
    let event = Event::init(&segment, 0, EventMode::ManualReset).unwrap();
    let child = fork(|| {
        let error = event.wait_timeout(Duration::from_millis(600)).unwrap_err();
        i32::from(error.kind() != ErrorKind::Timeout)
    });
    let (status, cpu) = wait_with_cpu(child);
    assert_eq!(status, 0);
    // A busy waiter would use about the whole 600 ms; a sleeping one a few milliseconds.
    assert!(
        cpu < Duration::from_millis(150),
        "the waiter used {cpu:?} of CPU in 600 ms"
    );
    println!("(a 600 ms wait used {cpu:?} of CPU)");
}
