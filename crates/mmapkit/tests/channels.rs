//! Channels between threads of one process: ordering, backpressure, loans, disconnection,
//! polling, and hostile bytes. (Processes are in `channel_processes.rs`.)

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::SegmentName;
use mmapkit::ErrorKind;
use mmapkit::channel::{ByteChannel, Channel, ChannelOptions, MpmcChannel};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Message {
    sequence: u64,
    payload: [u8; 56],
}

#[test]
fn spsc_delivers_every_message_in_order_through_wrap_and_backpressure() {
    let channel = Channel::<Message>::create_memfd(&ChannelOptions::new(8)).unwrap();
    assert_eq!(channel.capacity(), 8);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = channel.sender().unwrap();
            for sequence in 0..50_000u64 {
                let message = Message {
                    sequence,
                    payload: [sequence as u8; 56],
                };
                sender.send(&message).unwrap();
            }
        });
        let mut receiver = channel.receiver().unwrap();
        for expected in 0..50_000u64 {
            let message = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(message.sequence, expected);
            assert_eq!(message.payload, [expected as u8; 56]);
        }
    });
}

#[test]
fn batches_arrive_whole_and_in_order() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(64)).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = channel.sender().unwrap();
            let values: Vec<u64> = (0..10_000).collect();
            for batch in values.chunks(100) {
                sender.send_batch(batch).unwrap();
            }
        });
        let mut receiver = channel.receiver().unwrap();
        let mut received = Vec::new();
        while received.len() < 10_000 {
            let taken = receiver.recv_batch(&mut received, 48).unwrap();
            assert!((1..=48).contains(&taken));
        }
        assert_eq!(received, (0..10_000).collect::<Vec<u64>>());
    });
}

#[test]
fn try_variants_report_full_and_empty() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(2)).unwrap();
    let mut sender = channel.sender().unwrap();
    let mut receiver = channel.receiver().unwrap();
    assert_eq!(receiver.try_recv().unwrap(), None);
    sender.try_send(&1).unwrap();
    sender.try_send(&2).unwrap();
    assert_eq!(
        sender.try_send(&3).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    let started = Instant::now();
    let error = sender
        .send_timeout(&3, Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(receiver.try_recv().unwrap(), Some(1));
    assert_eq!(receiver.recv().unwrap(), 2);
    assert_eq!(
        receiver
            .recv_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
}

#[test]
fn timeouts_too_long_to_represent_wait_as_long_as_needed() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut sender = channel.sender().unwrap();
    let mut receiver = channel.receiver().unwrap();
    sender.send_timeout(&7, Duration::MAX).unwrap();
    assert_eq!(receiver.recv_timeout(Duration::MAX).unwrap(), 7);
    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(256)).unwrap();
    let mut sender = bytes.sender().unwrap();
    let mut receiver = bytes.receiver().unwrap();
    sender.send_timeout(b"far", Duration::MAX).unwrap();
    assert_eq!(receiver.recv_timeout(Duration::MAX).unwrap(), b"far");
    receiver.wait_for_peer(Duration::MAX).unwrap();
}

#[test]
fn loans_write_in_place_and_uncommitted_loans_send_nothing() {
    let channel = Channel::<[u64; 4]>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut sender = channel.sender().unwrap();
    let mut receiver = channel.receiver().unwrap();
    {
        let mut uncommitted = sender.loan().unwrap();
        uncommitted.write(&[9; 4]);
    }
    assert_eq!(
        receiver.try_recv().unwrap(),
        None,
        "an uncommitted loan sends nothing"
    );
    let mut loan = sender.loan().unwrap();
    let slot = loan.as_mut_ptr();
    // SAFETY: the slot is ours until commit; writing one element through the raw pointer.
    unsafe { (*slot)[0] = 1 };
    // SAFETY: the receiver (this thread) follows the protocol.
    unsafe { loan.as_mut()[1..].copy_from_slice(&[2, 3, 4]) };
    loan.commit().unwrap();
    let received = receiver.receive_in_place().unwrap();
    assert_eq!(received.read(), [1, 2, 3, 4]);
    // SAFETY: the sender (this thread) follows the protocol.
    assert_eq!(unsafe { received.get() }, &[1, 2, 3, 4]);
}

#[test]
fn dropping_the_sender_disconnects_after_the_queue_drains() {
    let channel = Channel::<u32>::create_memfd(&ChannelOptions::new(16)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    // A receiver that starts first waits; it is not disconnected from a sender never seen.
    let early = receiver
        .recv_timeout(Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(early.kind(), ErrorKind::Timeout);
    let mut sender = channel.sender().unwrap();
    sender.send(&7).unwrap();
    sender.send(&8).unwrap();
    drop(sender);
    assert_eq!(receiver.recv().unwrap(), 7);
    assert_eq!(receiver.try_recv().unwrap(), Some(8));
    assert_eq!(
        receiver.try_recv().unwrap_err().kind(),
        ErrorKind::Disconnected
    );
    assert_eq!(receiver.recv().unwrap_err().kind(), ErrorKind::Disconnected);
    // A receiver attached anew has had no sender yet: it waits for the next one.
    drop(receiver);
    let mut receiver = channel.receiver().unwrap();
    let waiting = receiver
        .recv_timeout(Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(waiting.kind(), ErrorKind::Timeout);
    channel.sender().unwrap().send(&9).unwrap();
    assert_eq!(receiver.recv().unwrap(), 9);

    let mut sender = channel.sender().unwrap();
    drop(receiver);
    assert_eq!(sender.send(&1).unwrap_err().kind(), ErrorKind::Disconnected);
}

#[test]
fn a_sender_attached_first_sees_a_later_receiver_leave() {
    let channel = Channel::<u32>::create_memfd(&ChannelOptions::new(16)).unwrap();
    let mut sender = channel.sender().unwrap();
    sender.send(&1).unwrap();
    let mut receiver = channel.receiver().unwrap();
    assert_eq!(receiver.recv().unwrap(), 1);
    drop(receiver);
    assert_eq!(sender.send(&2).unwrap_err().kind(), ErrorKind::Disconnected);
    assert_eq!(
        sender.try_send(&2).unwrap_err().kind(),
        ErrorKind::Disconnected
    );

    // A receiver that attaches and leaves between two messages, reading nothing.
    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    let mut sender = bytes.sender().unwrap();
    sender.send(b"before").unwrap();
    drop(bytes.receiver().unwrap());
    let error = sender.send(b"after").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Disconnected);
    assert_eq!(
        sender.try_send(b"after").unwrap_err().kind(),
        ErrorKind::Disconnected
    );
}

#[test]
fn a_blocked_receiver_wakes_when_the_sender_leaves() {
    let channel = Channel::<u32>::create_memfd(&ChannelOptions::new(16)).unwrap();
    let sender = channel.sender().unwrap();
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let mut receiver = channel.receiver().unwrap();
            let started = Instant::now();
            let error = receiver.recv().unwrap_err();
            (error.kind(), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(sender);
        let (kind, _) = waiting.join().unwrap();
        assert_eq!(kind, ErrorKind::Disconnected);
    });
}

#[test]
fn one_sender_and_one_receiver_only() {
    let channel = Channel::<u8>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let _sender = channel.sender().unwrap();
    assert_eq!(
        channel.sender().unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let receiver = channel.receiver().unwrap();
    assert_eq!(
        channel.receiver().unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    drop(receiver);
    channel.receiver().unwrap();
}

#[test]
fn named_channels_check_the_element_type() {
    let name = SegmentName::new("channel");
    let created = Channel::<u64>::create(&name, &ChannelOptions::new(4)).unwrap();
    let opened = Channel::<u64>::open(&name).unwrap();
    created.sender().unwrap().send(&5).unwrap();
    assert_eq!(opened.receiver().unwrap().recv().unwrap(), 5);
    assert_eq!(
        Channel::<u32>::open(&name).unwrap_err().kind(),
        ErrorKind::Incompatible
    );
    assert_eq!(
        ByteChannel::open(&name).unwrap_err().kind(),
        ErrorKind::Incompatible
    );
}

#[test]
fn byte_messages_of_every_length_survive_wrap_around() {
    let channel = ByteChannel::create_memfd(&ChannelOptions::new(4096)).unwrap();
    assert_eq!(channel.max_message().unwrap(), 2040);
    let lengths: Vec<usize> = (0..3000).map(|i| (i * 7919) % 2041).collect();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = channel.sender().unwrap();
            for (index, &len) in lengths.iter().enumerate() {
                let message: Vec<u8> = (0..len).map(|byte| (byte + index) as u8).collect();
                sender.send(&message).unwrap();
            }
        });
        let mut receiver = channel.receiver().unwrap();
        let mut buf = Vec::new();
        for (index, &len) in lengths.iter().enumerate() {
            receiver.recv_into(&mut buf).unwrap();
            assert_eq!(buf.len(), len);
            assert!(
                buf.iter()
                    .enumerate()
                    .all(|(byte, &value)| value == (byte + index) as u8)
            );
        }
    });
}

#[test]
fn byte_loans_and_limits() {
    let channel = ByteChannel::create_memfd(&ChannelOptions::new(1024)).unwrap();
    let mut sender = channel.sender().unwrap();
    let mut receiver = channel.receiver().unwrap();
    let error = sender
        .send(&vec![0; channel.max_message().unwrap() + 1])
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let mut loan = sender.loan(11).unwrap();
    loan.write_at(0, b"hello").unwrap();
    loan.write_at(5, b" world").unwrap();
    assert_eq!(
        loan.write_at(6, b"overflow").unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    loan.commit().unwrap();
    let received = receiver.receive_in_place().unwrap();
    assert_eq!(received.len(), 11);
    assert_eq!(received.to_vec().unwrap(), b"hello world");
    drop(received);
    sender.try_send(b"").unwrap();
    assert_eq!(receiver.try_recv().unwrap(), Some(Vec::new()));
}

#[test]
fn mpmc_delivers_each_message_exactly_once_between_threads() {
    let channel = MpmcChannel::<u64>::create_memfd(&ChannelOptions::new(64)).unwrap();
    let received = std::sync::Mutex::new(Vec::new());
    // Every endpoint attaches first: a blocking send waits only while a receiver is there.
    let senders: Vec<_> = (0..4).map(|_| channel.sender().unwrap()).collect();
    let receivers: Vec<_> = (0..3).map(|_| channel.receiver().unwrap()).collect();
    std::thread::scope(|scope| {
        for (producer, mut sender) in (0..4u64).zip(senders) {
            scope.spawn(move || {
                for sequence in 0..5_000u64 {
                    sender.send(&(producer << 32 | sequence)).unwrap();
                }
            });
        }
        for mut receiver in receivers {
            let received = &received;
            scope.spawn(move || {
                let mut mine = Vec::new();
                loop {
                    match receiver.recv_timeout(Duration::from_secs(10)) {
                        Ok(value) => mine.push(value),
                        Err(error) if error.kind() == ErrorKind::Disconnected => break,
                        Err(error) => panic!("{error}"),
                    }
                }
                received.lock().unwrap().extend(mine);
            });
        }
    });
    let received = received.into_inner().unwrap();
    let unique: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(received.len(), 20_000, "no duplicates");
    assert_eq!(unique.len(), 20_000, "nothing lost");
}

#[test]
fn polling_the_doorbell_wakes_for_a_message() {
    let channel = Channel::<u64>::create_memfd(ChannelOptions::new(4).pollable(true)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    assert!(!receiver.arm().unwrap(), "nothing yet: armed");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            channel.sender().unwrap().send(&99).unwrap();
        });
        let fd = receiver.pollable_fd().unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let five_seconds = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        assert_eq!(
            rustix::event::poll(&mut fds, Some(&five_seconds)).unwrap(),
            1
        );
    });
    assert_eq!(receiver.try_recv().unwrap(), Some(99));
}

#[test]
fn a_pollable_channel_opened_by_name_cannot_send() {
    let name = SegmentName::new("pollable");
    let _created = Channel::<u64>::create(&name, ChannelOptions::new(4).pollable(true)).unwrap();
    let by_name = Channel::<u64>::open(&name).unwrap();
    let error = by_name.sender().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(error.to_string().contains("doorbell"), "{error}");
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn async_receive_wakes_on_the_doorbell() {
    let channel = Channel::<u64>::create_memfd(ChannelOptions::new(4).pollable(true)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            channel.sender().unwrap().send(&7).unwrap();
        });
    });
    let value = tokio::time::timeout(Duration::from_secs(5), receiver.recv_async())
        .await
        .unwrap();
    assert_eq!(value.unwrap(), 7);
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn async_byte_receive_wakes_on_the_doorbell() {
    let channel = ByteChannel::create_memfd(ChannelOptions::new(1024).pollable(true)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            channel.sender().unwrap().send(b"async bytes").unwrap();
        });
    });
    let message = tokio::time::timeout(Duration::from_secs(5), receiver.recv_async())
        .await
        .unwrap();
    assert_eq!(message.unwrap(), b"async bytes");
}

#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(128))]
struct OverAligned([u8; 128]);

#[test]
fn over_aligned_elements_are_refused() {
    let error = Channel::<OverAligned>::create_memfd(&ChannelOptions::new(4)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("aligned"), "{error}");
}

#[test]
fn a_hostile_byte_channel_capacity_is_refused() {
    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(256)).unwrap();
    bytes.segment().write_pod(16, &4u64).unwrap(); // capacity: 4 bytes
    assert_eq!(bytes.sender().unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(bytes.receiver().unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn hostile_positions_and_records_are_errors() {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(4)).unwrap();
    let mut receiver = channel.receiver().unwrap();
    let head: &AtomicU64 = channel.segment().atomic(64).unwrap();
    head.store(1 << 40, Ordering::SeqCst);
    assert_eq!(receiver.try_recv().unwrap_err().kind(), ErrorKind::Corrupt);
    // Positions at the top of the range would overflow when moved: refused on attach.
    head.store(u64::MAX, Ordering::SeqCst);
    channel
        .segment()
        .atomic::<AtomicU64>(128)
        .unwrap()
        .store(u64::MAX, Ordering::SeqCst);
    drop(receiver);
    assert_eq!(channel.receiver().unwrap_err().kind(), ErrorKind::Corrupt);

    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(256)).unwrap();
    let mut sender = bytes.sender().unwrap();
    let mut receiver = bytes.receiver().unwrap();
    sender.send(b"honest").unwrap();
    // The peer rewrites the record's length to run past the end of the ring.
    bytes.segment().write_pod(1024, &[100_000u32, 1]).unwrap();
    assert_eq!(receiver.try_recv().unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn byte_messages_lent_without_waiting_or_with_a_deadline() {
    let mut options = ChannelOptions::new(4096);
    let channel = ByteChannel::create_memfd(&options).unwrap();
    assert!(channel.doorbell().is_none());
    let mut receiver = channel.receiver().unwrap();
    assert!(receiver.try_receive_in_place().unwrap().is_none());
    let started = Instant::now();
    let waited = receiver
        .receive_in_place_timeout(Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(waited.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(50));
    let mut sender = channel.sender().unwrap();
    sender.send(b"first").unwrap();
    sender.send(b"second").unwrap();
    // Put back, a message is received again, and nothing after it is skipped.
    receiver.try_receive_in_place().unwrap().unwrap().put_back();
    receiver
        .receive_in_place_timeout(Duration::from_secs(5))
        .unwrap()
        .put_back();
    {
        let first = receiver.try_receive_in_place().unwrap().unwrap();
        assert_eq!(first.to_vec().unwrap(), b"first");
    }
    let second = receiver
        .receive_in_place_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(second.to_vec().unwrap(), b"second");
    drop(second);
    drop(sender);
    let gone = receiver.try_receive_in_place().map(|_| ()).unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::Disconnected);
    let pollable = ByteChannel::create_memfd(options.pollable(true)).unwrap();
    let doorbell = pollable
        .doorbell()
        .expect("a pollable channel has a doorbell");
    let receiver = pollable.receiver().unwrap();
    assert_eq!(
        std::os::fd::AsRawFd::as_raw_fd(&doorbell),
        std::os::fd::AsRawFd::as_raw_fd(&receiver.pollable_fd().unwrap())
    );
}

/// Truncates the named segment behind a channel, as a hostile peer would.
fn truncate_segment(name: &str) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
        .set_len(0)
        .unwrap();
}

#[test]
fn a_truncated_channel_neither_publishes_nor_hands_out_a_message() {
    let truncated = |error: mmapkit::Error| error.kind() == ErrorKind::Truncated;
    let name = SegmentName::new("truncated-bytes");
    let bytes = ByteChannel::create(&name, &ChannelOptions::new(4096)).unwrap();
    let (mut sender, mut receiver) = (bytes.sender().unwrap(), bytes.receiver().unwrap());
    sender.send(b"before").unwrap();
    truncate_segment(&name);
    // The receiver's look at the ring faults on the vanished pages: the shield notices.
    assert!(receiver.try_recv().is_err_and(truncated));
    assert!(sender.send(b"after").is_err_and(truncated));
    assert!(sender.try_loan(8).map(drop).is_err_and(truncated));
    assert!(
        receiver.try_recv().is_err_and(truncated),
        "nothing was published"
    );

    let name = SegmentName::new("truncated-typed");
    let typed = Channel::<u64>::create(&name, &ChannelOptions::new(16)).unwrap();
    let (mut sender, mut receiver) = (typed.sender().unwrap(), typed.receiver().unwrap());
    sender.send(&1).unwrap();
    truncate_segment(&name);
    let mut taken = Vec::new();
    assert!(receiver.recv_batch(&mut taken, 8).is_err_and(truncated));
    assert!(
        taken.is_empty(),
        "a failed batch hands out nothing: {taken:?}"
    );
    assert!(sender.try_send(&2).is_err_and(truncated));
    assert!(receiver.try_recv().is_err_and(truncated));

    let name = SegmentName::new("truncated-mpmc");
    let shared = MpmcChannel::<u64>::create(&name, &ChannelOptions::new(16)).unwrap();
    let (mut sender, mut receiver) = (shared.sender().unwrap(), shared.receiver().unwrap());
    sender.send(&1).unwrap();
    truncate_segment(&name);
    assert!(receiver.try_recv().is_err_and(truncated));
    assert!(sender.try_send(&2).is_err_and(truncated));
    assert!(receiver.try_recv().is_err_and(truncated));
}
