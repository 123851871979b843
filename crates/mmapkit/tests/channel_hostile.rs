//! Channels whose endpoint table a third process scribbles on, and peers that never come:
//! no blocking call may wait for a process that is gone.
//!
//! Each case runs real processes: a receiver child, a hostile child that writes a few bytes of
//! the receiver's entry and exits, and the parent's blocked sender, which must come back with
//! `Disconnected` (a watchdog ends the test binary if it hangs). Runs without the libtest
//! harness (fork in a threaded harness is hazardous).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::processes::{self, Ended, fork, wait};
use mmapkit::channel::{ByteChannel, Channel, ChannelOptions, MpmcChannel, PEER_GRACE};
use mmapkit::shm::ProcessIdentity;
use mmapkit::sync::Semaphore;
use mmapkit::{ErrorKind, Segment, SegmentOptions};

/// Payload offsets of the endpoint table's entries (see the channel's control block).
const RECEIVER_ENTRY: usize = 336 + 16;
/// How long a call may take to notice that its peer is gone (it looks every 10 ms).
const NOTICE: Duration = Duration::from_secs(5);

fn main() {
    let cases: &[(&str, fn())] = &[
        (
            "a_bumped_generation_and_a_receiver_that_leaves",
            a_bumped_generation_and_a_receiver_that_leaves,
        ),
        (
            "a_bumped_generation_and_a_receiver_that_exits",
            a_bumped_generation_and_a_receiver_that_exits,
        ),
        (
            "an_entry_zeroed_before_the_sender_attaches",
            an_entry_zeroed_before_the_sender_attaches,
        ),
        (
            "a_live_process_forged_into_the_receivers_entry",
            a_live_process_forged_into_the_receivers_entry,
        ),
        (
            "a_forged_receiver_that_never_existed",
            a_forged_receiver_that_never_existed,
        ),
        (
            "a_freed_entry_of_a_live_receiver_lets_no_second_one_in",
            a_freed_entry_of_a_live_receiver_lets_no_second_one_in,
        ),
        ("a_sender_that_never_attaches", a_sender_that_never_attaches),
        (
            "a_sender_that_attaches_late_is_waited_for",
            a_sender_that_attaches_late_is_waited_for,
        ),
        (
            "a_peer_of_another_user_is_verified_by_its_lock",
            a_peer_of_another_user_is_verified_by_its_lock,
        ),
        (
            "passing_the_segment_keeps_the_lock_another_user_verifies",
            passing_the_segment_keeps_the_lock_another_user_verifies,
        ),
        (
            "closing_another_handle_keeps_the_lock_another_user_verifies",
            closing_another_handle_keeps_the_lock_another_user_verifies,
        ),
        (
            "racing_attachers_never_get_two_senders",
            racing_attachers_never_get_two_senders,
        ),
        (
            "read_locks_of_a_read_only_receiver_forge_no_endpoint",
            read_locks_of_a_read_only_receiver_forge_no_endpoint,
        ),
        (
            "a_receiver_after_a_crash_is_told_and_can_wait_for_the_next_sender",
            a_receiver_after_a_crash_is_told_and_can_wait_for_the_next_sender,
        ),
    ];
    processes::run(cases);
}

/// Ends the test binary if it is still alive after `limit`: a call under test hung.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn start(limit: Duration, what: &'static str) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                if started.elapsed() > limit {
                    eprintln!("\n{what} did not return within {limit:?}: it hangs");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A segment for the semaphores that order the steps between parent and children.
fn signals() -> Segment {
    SegmentOptions::new("test/steps", 128)
        .unwrap()
        .create_memfd("steps")
        .unwrap()
}

/// The semaphores in it: a child attached, and the parent's go-ahead.
fn steps(signals: &Segment) -> (Semaphore<'_>, Semaphore<'_>) {
    (
        Semaphore::init(signals, 0, 0).unwrap(),
        Semaphore::init(signals, 64, 0).unwrap(),
    )
}

/// Runs `scribble` on the channel's segment in another process, which then exits.
fn hostile(segment: &Segment, scribble: impl FnOnce(&Segment)) {
    let child = fork(|| {
        scribble(segment);
        0
    });
    assert_eq!(wait(child), Ended::Exited(0));
}

fn word(segment: &Segment, offset: usize) -> &AtomicU64 {
    segment.atomic(offset).unwrap()
}

fn kill(pid: libc::pid_t) {
    // SAFETY: kills our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A receiver child that attaches, then on `go` either drops its receiver and lives on
/// (`exit` false) or exits.
fn receiver_child(
    channel: &Channel<u64>,
    (attached, go): &(Semaphore<'_>, Semaphore<'_>),
    exit: bool,
) -> libc::pid_t {
    fork(|| {
        let receiver = channel.receiver().unwrap();
        attached.post().unwrap();
        go.wait_timeout(Duration::from_secs(30)).unwrap();
        drop(receiver);
        if !exit {
            std::thread::sleep(Duration::from_secs(60));
        }
        0
    })
}

/// The parent's side: attach, fill the ring, let the hostile scribble, release the
/// receiver, and expect the blocked send to come back `Disconnected`.
fn blocked_sender_comes_back(exit: bool, scribble: impl FnOnce(&Segment)) {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let steps = steps(&signals);
    let receiver = receiver_child(&channel, &steps, exit);
    steps.0.wait_timeout(Duration::from_secs(10)).unwrap();
    let mut sender = channel.sender().unwrap();
    sender.wait_for_peer(Duration::from_secs(10)).unwrap();
    for value in 0..4 {
        sender.send(&value).unwrap();
    }
    hostile(channel.segment(), scribble);
    steps.1.post().unwrap();
    let _watchdog = Watchdog::start(NOTICE, "a blocked send");
    let error = sender.send(&4).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Disconnected, "{error}");
    kill(receiver);
    wait(receiver);
}

fn bump_receiver_generation(segment: &Segment) {
    word(segment, RECEIVER_ENTRY).fetch_add(1 << 2, Ordering::SeqCst);
}

fn a_bumped_generation_and_a_receiver_that_leaves() {
    blocked_sender_comes_back(false, bump_receiver_generation);
}

fn a_bumped_generation_and_a_receiver_that_exits() {
    blocked_sender_comes_back(true, bump_receiver_generation);
}

fn a_live_process_forged_into_the_receivers_entry() {
    // Init never exits: a sender that trusted the entry would wait for ever.
    let init = ProcessIdentity::of(1).unwrap();
    blocked_sender_comes_back(true, |segment| {
        let state = word(segment, RECEIVER_ENTRY);
        let generation = (state.load(Ordering::SeqCst) + 4) & (((1 << 30) - 1) << 2);
        state.store(1 << 32 | generation | 2, Ordering::SeqCst);
        word(segment, RECEIVER_ENTRY + 8).store(init.start_time, Ordering::SeqCst);
    });
}

fn an_entry_zeroed_before_the_sender_attaches() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let (attached, go) = steps(&signals);
    let receiver = fork(|| {
        let mut receiver = channel.receiver().unwrap();
        attached.post().unwrap();
        go.wait_timeout(Duration::from_secs(30)).unwrap();
        // Still a receiver, whatever the table says: take what was sent, then leave.
        for expected in 0..4 {
            if receiver.recv_timeout(Duration::from_secs(10)).unwrap() != expected {
                return 1;
            }
        }
        go.wait_timeout(Duration::from_secs(30)).unwrap();
        0
    });
    attached.wait_timeout(Duration::from_secs(10)).unwrap();
    hostile(channel.segment(), |segment| {
        word(segment, RECEIVER_ENTRY).store(0, Ordering::SeqCst);
        word(segment, RECEIVER_ENTRY + 8).store(0, Ordering::SeqCst);
    });
    let mut sender = channel.sender().unwrap();
    {
        let _watchdog = Watchdog::start(NOTICE, "sends to a receiver whose entry was zeroed");
        sender
            .wait_for_peer(Duration::from_secs(2))
            .expect("the receiver holds its lock: it is found without its entry");
        for value in 0..4 {
            sender.send(&value).unwrap();
        }
        go.post().unwrap();
        for value in 4..8 {
            sender.send(&value).unwrap();
        }
    }
    go.post().unwrap();
    assert_eq!(wait(receiver), Ended::Exited(0));
    let _watchdog = Watchdog::start(NOTICE, "a blocked send after the receiver exited");
    let error = sender.send(&8).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Disconnected, "{error}");
}

fn a_forged_receiver_that_never_existed() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let init = ProcessIdentity::of(1).unwrap();
    hostile(channel.segment(), |segment| {
        word(segment, RECEIVER_ENTRY).store(1 << 32 | 4 | 2, Ordering::SeqCst);
        word(segment, RECEIVER_ENTRY + 8).store(init.start_time, Ordering::SeqCst);
    });
    let mut sender = channel.sender().unwrap();
    let error = sender
        .wait_for_peer(Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::Timeout,
        "init is no receiver: {error}"
    );
    // The forged entry may make the sends fail at once, or the ring fill; either way the
    // blocked send gives up.
    let _watchdog = Watchdog::start(PEER_GRACE + NOTICE, "sends to a forged receiver");
    let error = (0..5u64)
        .find_map(|value| sender.send(&value).err())
        .expect("a send with no receiver fails");
    assert_eq!(error.kind(), ErrorKind::Disconnected, "{error}");
}

fn a_freed_entry_of_a_live_receiver_lets_no_second_one_in() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let steps = steps(&signals);
    let receiver = receiver_child(&channel, &steps, true);
    steps.0.wait_timeout(Duration::from_secs(10)).unwrap();
    hostile(channel.segment(), |segment| {
        word(segment, RECEIVER_ENTRY).store(0, Ordering::SeqCst);
    });
    let second = channel.receiver().unwrap_err();
    assert_eq!(second.kind(), ErrorKind::AlreadyExists, "{second}");
    steps.1.post().unwrap();
    assert_eq!(wait(receiver), Ended::Exited(0));
    channel
        .receiver()
        .expect("the entry is free once its holder is gone");
}

fn a_sender_that_never_attaches() {
    for kind in ["typed", "bytes", "mpmc"] {
        let typed = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
        let bytes = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
        let mpmc = MpmcChannel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
        // The child that should have sent dies before it attaches.
        let child = fork(|| 0);
        assert_eq!(wait(child), Ended::Exited(0));
        let started = Instant::now();
        let _watchdog = Watchdog::start(PEER_GRACE + NOTICE, "recv with no sender");
        let (waited, error) = match kind {
            "typed" => {
                let mut receiver = typed.receiver().unwrap();
                let waited = receiver.wait_for_peer(Duration::from_millis(100));
                (waited, receiver.recv().unwrap_err())
            }
            "bytes" => {
                let mut receiver = bytes.receiver().unwrap();
                let waited = receiver.wait_for_peer(Duration::from_millis(100));
                (waited, receiver.recv().unwrap_err())
            }
            _ => {
                let mut receiver = mpmc.receiver().unwrap();
                let waited = receiver.wait_for_peer(Duration::from_millis(100));
                (waited, receiver.recv().unwrap_err())
            }
        };
        assert_eq!(waited.unwrap_err().kind(), ErrorKind::Timeout, "{kind}");
        assert_eq!(error.kind(), ErrorKind::Disconnected, "{kind}: {error}");
        assert!(error.to_string().contains("no sender attached"), "{error}");
        let took = started.elapsed();
        assert!(took >= PEER_GRACE, "{kind}: gave up after {took:?}");
    }
}

fn a_sender_that_attaches_late_is_waited_for() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    let child = fork(|| {
        std::thread::sleep(Duration::from_millis(300));
        let mut sender = channel.sender().unwrap();
        sender.send(&42).unwrap();
        0
    });
    let _watchdog = Watchdog::start(PEER_GRACE + NOTICE, "recv from a late sender");
    assert_eq!(
        receiver.recv().unwrap(),
        42,
        "a sender late by less than the grace"
    );
    assert_eq!(wait(child), Ended::Exited(0));
    assert_eq!(receiver.recv().unwrap_err().kind(), ErrorKind::Disconnected);
}

fn a_peer_of_another_user_is_verified_by_its_lock() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let (attached, _) = steps(&signals);
    let receiver = channel.receiver().unwrap();
    // As nobody, the child may not read this process's /proc/PID/maps: only the lock tells.
    let child = as_nobody(|| {
        let mut sender = channel.sender().unwrap();
        if let Err(error) = sender.wait_for_peer(Duration::from_secs(5)) {
            eprintln!("the receiver of another user was not found: {error}");
            return 3;
        }
        for value in 0..4 {
            sender.send(&value).unwrap();
        }
        attached.post().unwrap();
        // The ring is full: this waits while the receiver is there, and no longer.
        match sender.send(&4) {
            Err(error) if error.kind() == ErrorKind::Disconnected => 0,
            other => {
                eprintln!("a send after the receiver left: {other:?}");
                4
            }
        }
    });
    attached.wait_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(receiver);
    let _watchdog = Watchdog::start(NOTICE, "the other user's blocked send");
    assert_eq!(wait(child), Ended::Exited(0));
}

/// Forks a child that drops to user nobody and runs `work`; 2 if it could not drop or could
/// still read this process's /proc/PID/maps (then the test would prove nothing).
fn as_nobody(work: impl FnOnce() -> i32) -> libc::pid_t {
    fork(|| {
        // SAFETY: drops privileges in this forked, single-threaded child only.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(65534) == 0
                && libc::setuid(65534) == 0
        };
        let parent_maps = format!("/proc/{}/maps", std::os::unix::process::parent_id());
        if !dropped || std::fs::read(parent_maps).is_ok() {
            return 2;
        }
        work()
    })
}

fn passing_the_segment_keeps_the_lock_another_user_verifies() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut sender = channel.sender().unwrap();
    // Every way the library hands the segment on; none may close a descriptor of its file,
    // which would drop the sender's lock (record locks go with any close).
    let segment = channel.segment();
    segment.read_only_fd().unwrap();
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    segment.send_read_only(&ours, &[]).unwrap();
    channel.send_over(&ours).unwrap();
    let mut command = std::process::Command::new("true");
    segment
        .pass_to(&mut command, "MMAPKIT_TEST_UNUSED")
        .unwrap();
    command.status().unwrap();
    drop(command);
    let child = as_nobody(|| {
        let mut receiver = channel.receiver().unwrap();
        match receiver.wait_for_peer(Duration::from_secs(3)) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("the sender of another user was not verified: {error}");
                3
            }
        }
    });
    assert_eq!(wait(child), Ended::Exited(0));
    // The receiver of the other user attached, verified this sender, and left.
    assert_eq!(
        sender.try_send(&1).unwrap_err().kind(),
        ErrorKind::Disconnected
    );
}

fn closing_another_handle_keeps_the_lock_another_user_verifies() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let name = common::SegmentName::new("second-handle");
    let mut options = ChannelOptions::new(4);
    options.mode(0o666);
    // SAFETY: umask affects only this process's later creations; one case runs at a time.
    let previous = unsafe { libc::umask(0) };
    let channel = Channel::<u64>::create(&name, &options).unwrap();
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(previous) };
    let mut sender = channel.sender().unwrap();
    // Each of these closes a descriptor of the segment's file in this process, which drops
    // every record lock this process holds on it: the library must take the sender's again.
    drop(Channel::<u64>::open(&name).unwrap());
    mmapkit::shm::stale::list().unwrap();
    let other = name.0.clone();
    let child = as_nobody(move || {
        let channel = Channel::<u64>::open(&other).unwrap();
        let mut receiver = channel.receiver().unwrap();
        match receiver.wait_for_peer(Duration::from_secs(3)) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("the sender of another user was not verified: {error}");
                3
            }
        }
    });
    assert_eq!(wait(child), Ended::Exited(0));
    // The receiver of the other user attached, verified this sender, and left.
    assert_eq!(
        sender.try_send(&1).unwrap_err().kind(),
        ErrorKind::Disconnected
    );
}

fn racing_attachers_never_get_two_senders() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    // A race, so the test is probabilistic: before claims took the entry's lock first, about
    // one round in 700 let two threads in (an outside review measured 7 in 5,000).
    for _ in 0..300 {
        // The entry's last holder was another process: its start time stays in the entry.
        let previous = fork(|| {
            drop(channel.sender().unwrap());
            0
        });
        assert_eq!(wait(previous), Ended::Exited(0));
        let attached = AtomicU64::new(0);
        let most = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    if let Ok(sender) = channel.sender() {
                        let now = attached.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        attached.fetch_sub(1, Ordering::SeqCst);
                        drop(sender);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 1, "two senders at once");
    }
}

fn read_locks_of_a_read_only_receiver_forge_no_endpoint() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let (locked, done) = steps(&signals);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    channel.segment().send_read_only(&ours, &[]).unwrap();
    let hostile = as_nobody(|| {
        let (segment, _) = SegmentOptions::new("mmapkit/spsc", 0)
            .unwrap()
            .receive(&theirs)
            .unwrap();
        use std::os::fd::AsRawFd;
        for byte in [(1i64 << 60), (1i64 << 60) + 65] {
            // SAFETY: an all-zero flock is a valid value; F_SETLK reads it and locks the
            // received descriptor's file.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = libc::F_RDLCK as libc::c_short;
            lock.l_start = byte;
            lock.l_len = 1;
            // SAFETY: as above.
            if unsafe { libc::fcntl(segment.fd().as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
                return 4;
            }
        }
        locked.post().unwrap();
        done.wait_timeout(Duration::from_secs(30)).unwrap();
        0
    });
    locked.wait_timeout(Duration::from_secs(10)).unwrap();
    let mut receiver = channel.receiver().expect("a read lock is no receiver");
    {
        let _watchdog = Watchdog::start(PEER_GRACE + NOTICE, "recv with a forged sender");
        let error = receiver.recv().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Disconnected, "{error}");
    }
    channel.sender().expect("a read lock is no sender");
    done.post().unwrap();
    assert_eq!(wait(hostile), Ended::Exited(0));
}

fn a_receiver_after_a_crash_is_told_and_can_wait_for_the_next_sender() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signals();
    let (attached, _) = steps(&signals);
    let crashed = fork(|| {
        let _sender = channel.sender().unwrap();
        attached.post().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    attached.wait_timeout(Duration::from_secs(10)).unwrap();
    kill(crashed);
    wait(crashed);
    let mut receiver = channel.receiver().unwrap();
    let restarted = fork(|| {
        std::thread::sleep(Duration::from_millis(300));
        channel.sender().unwrap().send(&7).unwrap();
        0
    });
    let _watchdog = Watchdog::start(PEER_GRACE + NOTICE, "recv after a crash");
    // The sender it had is gone: a receive says so at once; waiting for the next is explicit.
    assert_eq!(receiver.recv().unwrap_err().kind(), ErrorKind::Disconnected);
    receiver.wait_for_peer(Duration::from_secs(5)).unwrap();
    assert_eq!(
        receiver.recv().unwrap(),
        7,
        "the next sender, once waited for"
    );
    assert_eq!(wait(restarted), Ended::Exited(0));
}
