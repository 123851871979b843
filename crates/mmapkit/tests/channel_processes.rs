//! Channels between processes: forked and exec'd peers, peers killed mid-send or mid-receive,
//! several producer and consumer processes, a named channel between unrelated processes, and
//! a pollable channel handed over a Unix socket.
//!
//! Runs without the libtest harness (fork in a threaded harness is hazardous). Exec'd children
//! are fresh copies of this binary started with `MMAPKIT_CHANNEL_SCENARIO` naming their part.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::SegmentName;
use common::processes::{self, Ended, fork, wait};
use mmapkit::channel::{ByteChannel, Channel, ChannelOptions, MpmcChannel};
use mmapkit::sync::Semaphore;
use mmapkit::{ErrorKind, SegmentOptions};

const SCENARIO: &str = "MMAPKIT_CHANNEL_SCENARIO";
const NAME: &str = "MMAPKIT_TEST_CHANNEL";
const SOCKET: &str = "MMAPKIT_TEST_SOCKET";

fn main() {
    if let Ok(scenario) = std::env::var(SCENARIO) {
        let code = match scenario.as_str() {
            "named-sender" => named_sender(),
            "socket-sender" => socket_sender(),
            "inherited-receiver" => inherited_receiver(),
            "reattached-receiver" => reattached_receiver(),
            other => panic!("unknown scenario {other}"),
        };
        std::process::exit(code);
    }
    let cases: &[(&str, fn())] = &[
        (
            "forked_sender_streams_in_order",
            forked_sender_streams_in_order,
        ),
        (
            "a_child_dropping_an_inherited_endpoint_leaves_the_parent_attached",
            a_child_dropping_an_inherited_endpoint_leaves_the_parent_attached,
        ),
        (
            "endpoints_inherited_across_fork_refuse_to_work_in_the_child",
            endpoints_inherited_across_fork_refuse_to_work_in_the_child,
        ),
        (
            "sender_killed_mid_send_disconnects",
            sender_killed_mid_send_disconnects,
        ),
        (
            "receiver_killed_unblocks_a_full_sender",
            receiver_killed_unblocks_a_full_sender,
        ),
        (
            "a_receiver_killed_after_the_sender_attached_disconnects_it",
            a_receiver_killed_after_the_sender_attached_disconnects_it,
        ),
        (
            "a_receiver_that_execs_another_program_disconnects_its_sender",
            a_receiver_that_execs_another_program_disconnects_its_sender,
        ),
        (
            "a_process_that_execs_attaches_again_in_its_new_program",
            a_process_that_execs_attaches_again_in_its_new_program,
        ),
        (
            "mpmc_processes_deliver_exactly_once",
            mpmc_processes_deliver_exactly_once,
        ),
        (
            "named_channel_between_unrelated_processes",
            named_channel_between_unrelated_processes,
        ),
        (
            "pollable_channel_over_a_unix_socket",
            pollable_channel_over_a_unix_socket,
        ),
        (
            "a_pollable_channel_passed_across_exec",
            a_pollable_channel_passed_across_exec,
        ),
    ];
    processes::run(cases);
}

/// A small memfd segment for the semaphores a test and its child signal each other with.
fn signal_segment() -> mmapkit::Segment {
    SegmentOptions::new("test/signals", 64)
        .unwrap()
        .create_memfd("signals")
        .unwrap()
}

fn kill(pid: libc::pid_t) {
    // SAFETY: kills our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

fn forked_sender_streams_in_order() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(256)).unwrap();
    let child = fork(|| {
        let mut sender = channel.sender().unwrap();
        for value in 0..200_000u64 {
            sender.send(&value).unwrap();
        }
        0
    });
    let mut receiver = channel.receiver().unwrap();
    for expected in 0..200_000u64 {
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(10)).unwrap(),
            expected
        );
    }
    assert_eq!(
        receiver
            .recv_timeout(Duration::from_secs(5))
            .unwrap_err()
            .kind(),
        ErrorKind::Disconnected
    );
    assert_eq!(wait(child), Ended::Exited(0));
}

fn a_child_dropping_an_inherited_endpoint_leaves_the_parent_attached() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut sender = channel.sender().unwrap();
    let inherited: *mut _ = &mut sender;
    let child = fork(|| {
        // SAFETY: in the child this is the child's own copy of the parent's sender; it is
        // dropped once here and never touched again (the child exits right after).
        unsafe { std::ptr::drop_in_place(inherited) };
        0
    });
    assert_eq!(wait(child), Ended::Exited(0));
    assert_eq!(
        channel.sender().unwrap_err().kind(),
        ErrorKind::AlreadyExists,
        "still attached"
    );
    let mut receiver = channel.receiver().unwrap();
    sender.send(&1).unwrap();
    assert_eq!(receiver.recv().unwrap(), 1);
}

/// A child that used its parent's endpoints would race the parent for the same ring
/// positions: every call refuses, and the parent's endpoints go on as before.
fn endpoints_inherited_across_fork_refuse_to_work_in_the_child() {
    let refused = |result: mmapkit::Result<()>| {
        result.is_err_and(|error| {
            error.kind() == ErrorKind::InvalidInput && error.to_string().contains("fork")
        })
    };
    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    let typed = Channel::<u64>::create_memfd(&ChannelOptions::new(16)).unwrap();
    let shared = MpmcChannel::<u64>::create_memfd(&ChannelOptions::new(16)).unwrap();
    let (mut byte_tx, mut byte_rx) = (bytes.sender().unwrap(), bytes.receiver().unwrap());
    let (mut typed_tx, mut typed_rx) = (typed.sender().unwrap(), typed.receiver().unwrap());
    let (mut shared_tx, mut shared_rx) = (shared.sender().unwrap(), shared.receiver().unwrap());
    byte_tx.send(b"before").unwrap();
    typed_tx.send(&1).unwrap();
    shared_tx.send(&1).unwrap();
    let child = fork(|| {
        let second = Duration::from_secs(1);
        let checks = [
            refused(byte_tx.send(b"child")),
            refused(byte_tx.try_loan(4).map(drop)),
            refused(byte_rx.try_recv().map(drop)),
            refused(byte_rx.recv_timeout(second).map(drop)),
            refused(byte_rx.wait_for_peer(second)),
            refused(typed_tx.try_send(&2)),
            refused(typed_tx.send_batch(&[2, 3])),
            refused(typed_rx.try_recv().map(drop)),
            refused(typed_rx.recv_timeout(second).map(drop)),
            refused(shared_tx.try_send(&2)),
            refused(shared_rx.try_recv().map(drop)),
        ];
        checks
            .iter()
            .position(|refused| !refused)
            .map_or(0, |index| 10 + index as i32)
    });
    assert_eq!(wait(child), Ended::Exited(0));
    assert_eq!(byte_rx.try_recv().unwrap().unwrap(), b"before");
    assert_eq!(byte_rx.try_recv().unwrap(), None, "the child sent nothing");
    assert_eq!(typed_rx.try_recv().unwrap(), Some(1));
    assert_eq!(typed_rx.try_recv().unwrap(), None);
    assert_eq!(shared_rx.try_recv().unwrap(), Some(1));
    assert_eq!(shared_rx.try_recv().unwrap(), None);
    byte_tx.send(b"after").unwrap();
    assert_eq!(byte_rx.recv().unwrap(), b"after");
}

fn sender_killed_mid_send_disconnects() {
    let channel = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    let signals = signal_segment();
    let loaned = Semaphore::init(&signals, 0, 0).unwrap();
    let child = fork(|| {
        let mut sender = channel.sender().unwrap();
        for index in 0..10u8 {
            sender.send(&[index; 100]).unwrap();
        }
        let mut loan = sender.loan(500).unwrap();
        loan.write_at(0, &[0xEE; 250]).unwrap(); // half-written, never committed
        loaned.post().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    loaned.wait_timeout(Duration::from_secs(10)).unwrap();
    kill(child);
    let killed = Instant::now();
    let mut receiver = channel.receiver().unwrap();
    for index in 0..10u8 {
        assert_eq!(receiver.recv().unwrap(), vec![index; 100]);
    }
    let error = receiver.recv().unwrap_err();
    let noticed = killed.elapsed();
    assert_eq!(error.kind(), ErrorKind::Disconnected);
    assert!(
        noticed < Duration::from_millis(500),
        "the death was noticed after {noticed:?}"
    );
    println!("(the sender's death was noticed {noticed:?} after SIGKILL)");
    wait(child);
}

fn receiver_killed_unblocks_a_full_sender() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let signals = signal_segment();
    let attached = Semaphore::init(&signals, 0, 0).unwrap();
    let child = fork(|| {
        let _receiver = channel.receiver().unwrap();
        attached.post().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    attached.wait_timeout(Duration::from_secs(10)).unwrap();
    let mut sender = channel.sender().unwrap();
    for value in 0..4 {
        sender.send(&value).unwrap();
    }
    kill(child);
    let killed = Instant::now();
    let error = sender.send(&4).unwrap_err();
    let noticed = killed.elapsed();
    assert_eq!(error.kind(), ErrorKind::Disconnected);
    assert!(
        noticed < Duration::from_millis(500),
        "the death was noticed after {noticed:?}"
    );
    println!("(the receiver's death was noticed {noticed:?} after SIGKILL)");
    wait(child);
}

fn a_receiver_killed_after_the_sender_attached_disconnects_it() {
    let channel = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    let mut sender = channel.sender().unwrap();
    sender.send(b"first").unwrap();
    let signals = signal_segment();
    let received = Semaphore::init(&signals, 0, 0).unwrap();
    let child = fork(|| {
        let mut receiver = channel.receiver().unwrap();
        let mut buf = Vec::new();
        receiver.recv_into(&mut buf).unwrap();
        assert_eq!(buf, b"first");
        received.post().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    received.wait_timeout(Duration::from_secs(10)).unwrap();
    sender.send(b"second").unwrap();
    kill(child);
    wait(child);
    // The channel has room: the sender learns of the death at its next look at the peers,
    // within milliseconds, not when the ring fills.
    let killed = Instant::now();
    let error = loop {
        match sender.send(b"after the death") {
            Ok(()) => std::thread::sleep(Duration::from_millis(1)),
            Err(error) => break error,
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "never noticed");
    };
    assert_eq!(error.kind(), ErrorKind::Disconnected);
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_millis(500),
        "the death was noticed after {noticed:?}"
    );
    println!("(a receiver's death with room in the ring was noticed after {noticed:?})");
}

fn a_receiver_that_execs_another_program_disconnects_its_sender() {
    use std::os::unix::process::CommandExt;
    let channel = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    let mut sender = channel.sender().unwrap();
    let signals = signal_segment();
    let attached = Semaphore::init(&signals, 0, 0).unwrap();
    let child = fork(|| {
        let _receiver = channel.receiver().unwrap();
        attached.post().unwrap();
        // The pid and its start time live on in `sleep`; the segment does not.
        let error = std::process::Command::new("sleep").arg("30").exec();
        panic!("exec failed: {error}");
    });
    attached.wait_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let error = loop {
        match sender.send_timeout(b"to a program that never reads", Duration::from_millis(50)) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::Timeout => {}
            Err(error) => break error,
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the exec was never noticed"
        );
    };
    assert_eq!(error.kind(), ErrorKind::Disconnected);
    println!(
        "(the receiver's exec was noticed after {:?})",
        started.elapsed()
    );
    kill(child);
    wait(child);
}

fn a_process_that_execs_attaches_again_in_its_new_program() {
    use std::os::unix::process::CommandExt;
    let name = SegmentName::new("reexec");
    let channel = ByteChannel::create(&name, &ChannelOptions::new(4096)).unwrap();
    let mut sender = channel.sender().unwrap();
    let child = fork(|| {
        let _receiver = channel.receiver().unwrap();
        // Same pid and start time, a new program: the entry it leaves names it still.
        let error = Command::new(std::env::current_exe().unwrap())
            .env(SCENARIO, "reattached-receiver")
            .env(NAME, &*name)
            .exec();
        panic!("exec failed: {error}");
    });
    let started = Instant::now();
    while sender
        .send_timeout(b"again", Duration::from_millis(50))
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never attached again"
        );
    }
    assert_eq!(wait(child), Ended::Exited(0));
}

fn reattached_receiver() -> i32 {
    let channel = ByteChannel::open(&std::env::var(NAME).unwrap()).unwrap();
    let mut receiver = match channel.receiver() {
        Ok(receiver) => receiver,
        Err(error) => {
            eprintln!("the new program could not attach: {error}");
            return 3;
        }
    };
    match receiver.recv_timeout(Duration::from_secs(20)) {
        Ok(message) if message == b"again" => 0,
        other => {
            eprintln!("unexpected: {other:?}");
            4
        }
    }
}

fn mpmc_processes_deliver_exactly_once() {
    const PRODUCERS: u64 = 3;
    const CONSUMERS: usize = 3;
    const PER_PRODUCER: u64 = 20_000;
    let channel = MpmcChannel::<u64>::create_memfd(&ChannelOptions::new(128)).unwrap();
    // One bit per message, and a duplicate counter, shared by all consumers.
    let words = (PRODUCERS * PER_PRODUCER).div_ceil(64) as usize;
    let tally = SegmentOptions::new("test/tally", words * 8 + 8)
        .unwrap()
        .create_memfd("tally")
        .unwrap();
    let start_gate = SegmentOptions::new("test/gate", 64)
        .unwrap()
        .create_memfd("gate")
        .unwrap();
    let gate = Semaphore::init(&start_gate, 0, 0).unwrap();
    let mut children = Vec::new();
    for _ in 0..CONSUMERS {
        children.push(fork(|| {
            let mut receiver = channel.receiver().unwrap();
            gate.post().unwrap();
            loop {
                match receiver.recv_timeout(Duration::from_secs(20)) {
                    Ok(message) => {
                        let id = (message >> 32) * PER_PRODUCER + (message & 0xffff_ffff);
                        let word: &AtomicU64 = tally.atomic(8 + (id / 64) as usize * 8).unwrap();
                        if word.fetch_or(1 << (id % 64), Ordering::SeqCst) & (1 << (id % 64)) != 0 {
                            tally
                                .atomic::<AtomicU64>(0)
                                .unwrap()
                                .fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::Disconnected => return 0,
                    Err(_) => return 1,
                }
            }
        }));
    }
    for _ in 0..CONSUMERS {
        gate.wait_timeout(Duration::from_secs(10)).unwrap();
    }
    for producer in 0..PRODUCERS {
        children.push(fork(|| {
            let mut sender = channel.sender().unwrap();
            for sequence in 0..PER_PRODUCER {
                sender.send(&(producer << 32 | sequence)).unwrap();
            }
            0
        }));
    }
    for child in children {
        assert_eq!(wait(child), Ended::Exited(0));
    }
    assert_eq!(
        tally.atomic::<AtomicU64>(0).unwrap().load(Ordering::SeqCst),
        0,
        "duplicates"
    );
    let mut delivered = 0;
    for word in 0..words {
        delivered += tally
            .atomic::<AtomicU64>(8 + word * 8)
            .unwrap()
            .load(Ordering::SeqCst)
            .count_ones();
    }
    assert_eq!(
        u64::from(delivered),
        PRODUCERS * PER_PRODUCER,
        "every message arrived"
    );
}

fn named_channel_between_unrelated_processes() {
    let name = SegmentName::new("named-channel");
    let channel = ByteChannel::create(&name, &ChannelOptions::new(4096)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, "named-sender")
        .env(NAME, &*name)
        .spawn()
        .unwrap();
    for index in 0..100 {
        let message = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            message,
            format!("message {index} from an unrelated process").into_bytes()
        );
    }
    assert_eq!(
        receiver
            .recv_timeout(Duration::from_secs(5))
            .unwrap_err()
            .kind(),
        ErrorKind::Disconnected
    );
    assert!(child.wait().unwrap().success());
}

fn named_sender() -> i32 {
    let channel = ByteChannel::open(&std::env::var(NAME).unwrap()).unwrap();
    let mut sender = channel.sender().unwrap();
    for index in 0..100 {
        sender
            .send(format!("message {index} from an unrelated process").as_bytes())
            .unwrap();
    }
    0
}

fn pollable_channel_over_a_unix_socket() {
    let directory = tempfile::tempdir().unwrap();
    let socket_path = directory.path().join("socket");
    let listener = UnixListener::bind(&socket_path).unwrap();
    let channel = Channel::<u64>::create_memfd(ChannelOptions::new(16).pollable(true)).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, "socket-sender")
        .env(SOCKET, &socket_path)
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    channel.send_over(&stream).unwrap();
    let mut receiver = channel.receiver().unwrap();
    let mut received = Vec::new();
    // A poll loop over the channel's doorbell and the socket at once, until the channel is
    // drained and disconnected and the socket has spoken.
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut socket_said = String::new();
    let mut disconnected = false;
    while !disconnected || socket_said.is_empty() {
        let channel_ready = disconnected || receiver.arm().unwrap();
        let doorbell = receiver.pollable_fd().unwrap();
        let mut fds = [
            PollFd::new(&stream, PollFlags::IN),
            PollFd::new(&doorbell, PollFlags::IN),
        ];
        let watched = if channel_ready { 1 } else { 2 };
        let timeout = Timespec {
            tv_sec: if channel_ready { 0 } else { 10 },
            tv_nsec: 0,
        };
        let ready = rustix::event::poll(&mut fds[..watched], Some(&timeout)).unwrap();
        assert!(ready > 0 || channel_ready, "nothing arrived in 10 s");
        if fds[0].revents().contains(PollFlags::IN) && socket_said.is_empty() {
            let mut buf = [0u8; 64];
            let len = rustix::io::read(&stream, &mut buf).unwrap();
            socket_said = String::from_utf8_lossy(&buf[..len]).into_owned();
        }
        while !disconnected {
            match receiver.try_recv() {
                Ok(Some(value)) => received.push(value),
                Ok(None) => break,
                Err(error) if error.kind() == ErrorKind::Disconnected => disconnected = true,
                Err(error) => panic!("{error}"),
            }
        }
    }
    assert_eq!(received, (0..50).collect::<Vec<u64>>());
    assert_eq!(socket_said, "done");
    assert!(child.wait().unwrap().success());
}

fn socket_sender() -> i32 {
    let stream = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    let channel = Channel::<u64>::receive_from(&stream).unwrap();
    let mut sender = channel.sender().unwrap();
    for value in 0..50u64 {
        sender.send(&value).unwrap();
        if value % 10 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    rustix::io::write(&stream, b"done").unwrap();
    0
}

const INHERITED: &str = "MMAPKIT_TEST_INHERITED_CHANNEL";

fn a_pollable_channel_passed_across_exec() {
    let channel = ByteChannel::create_memfd(ChannelOptions::new(4096).pollable(true)).unwrap();
    let mut sender = channel.sender().unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(SCENARIO, "inherited-receiver");
    channel.pass_to(&mut command, INHERITED).unwrap();
    let mut child = command.spawn().unwrap();
    sender.wait_for_peer(Duration::from_secs(10)).unwrap();
    sender.send(b"across exec").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Takes the channel and its doorbell from the environment, waits on the doorbell with poll,
/// and receives.
fn inherited_receiver() -> i32 {
    let channel = ByteChannel::from_inherited(INHERITED).unwrap();
    let mut receiver = channel.receiver().unwrap();
    let Some(doorbell) = receiver
        .pollable_fd()
        .map(|fd| fd.try_clone_to_owned().unwrap())
    else {
        return 2;
    };
    if !receiver.arm().unwrap() {
        let mut fds = [rustix::event::PollFd::new(
            &doorbell,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap() != 1 {
            return 3;
        }
    }
    let message = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
    // A second take finds nothing to take.
    let again = ByteChannel::from_inherited(INHERITED).unwrap_err();
    i32::from(message != b"across exec" || again.kind() != ErrorKind::NotFound)
}
