//! The IPC scenarios, each between this process and a forked partner:
//!
//! * `ipc-latency`: ping-pong of 64 B, 4 KiB and 1 MiB messages, one-way latency (half a round
//!   trip). Shared-memory transports are measured zero-copy, the way iceoryx2's own benchmark
//!   measures itself: a slot is loaned and published without writing the payload, and received
//!   in place without reading it. Sockets and pipes have to copy the bytes through the kernel.
//! * `ipc-throughput`: 64 B messages streamed one way as fast as the receiver takes them; each
//!   message is copied in and out, one by one (`send(&msg)`, `recv()`, the JSON line) and in
//!   batches of 64 (`send_batch`, `recv_batch`).
//! * `ipc-wake`: a receiver that has gone to sleep (the sender pauses 3 ms between messages);
//!   the time from the sender's timestamp to the receiver holding the message.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use mmapkit::channel::{ByteChannel, Channel, ChannelOptions};

use crate::harness::{self, Contender, Unit};
use crate::process::{Handshake, WAKE_GAP, fork, now_ns, reap};

/// Round trips measured per run, by message size and by kind of transport.
fn iterations(size: usize, shared_memory: bool) -> u64 {
    match (size, shared_memory) {
        (..=4096, true) => 20_000,
        (_, true) => 2_000,
        (..=4096, false) => 2_000,
        (_, false) => 200,
    }
}

/// One-way nanoseconds from a timed loop of `iterations` round trips.
fn one_way(started: Instant, iterations: u64) -> f64 {
    started.elapsed().as_nanos() as f64 / (2 * iterations) as f64
}

/// Times `iterations` round trips after a tenth as many to warm up: the forked partner runs
/// `pong(rounds)` (answer `rounds` pings), this process runs `ping` once per round trip.
fn timed_ping_pong(iterations: u64, pong: impl FnOnce(u64), mut ping: impl FnMut()) -> f64 {
    let warm_up = iterations / 10;
    let child = fork(|| pong(warm_up + iterations));
    (0..warm_up).for_each(|_| ping());
    let started = Instant::now();
    (0..iterations).for_each(|_| ping());
    let result = one_way(started, iterations);
    reap(child);
    result
}

fn mmapkit_latency_typed<const N: usize>(iterations: u64) -> f64 {
    let ping = Channel::<[u8; N]>::create_memfd(&ChannelOptions::new(16)).expect("channel");
    let pong = Channel::<[u8; N]>::create_memfd(&ChannelOptions::new(16)).expect("channel");
    let mut sender = ping.sender().expect("sender");
    let mut receiver = pong.receiver().expect("receiver");
    timed_ping_pong(
        iterations,
        |rounds| {
            let mut receiver = ping.receiver().expect("receiver");
            let mut sender = pong.sender().expect("sender");
            for _ in 0..rounds {
                drop(receiver.receive_in_place().expect("receive"));
                sender.loan().expect("loan").commit().expect("commit");
            }
        },
        || {
            sender.loan().expect("loan").commit().expect("commit");
            drop(receiver.receive_in_place().expect("receive"));
        },
    )
}

fn mmapkit_latency_bytes(size: usize, iterations: u64) -> f64 {
    let options = ChannelOptions::new(4 * size);
    let ping = ByteChannel::create_memfd(&options).expect("channel");
    let pong = ByteChannel::create_memfd(&options).expect("channel");
    let mut sender = ping.sender().expect("sender");
    let mut receiver = pong.receiver().expect("receiver");
    timed_ping_pong(
        iterations,
        |rounds| {
            let mut receiver = ping.receiver().expect("receiver");
            let mut sender = pong.sender().expect("sender");
            for _ in 0..rounds {
                drop(receiver.receive_in_place().expect("receive"));
                sender.loan(size).expect("loan").commit().expect("commit");
            }
        },
        || {
            sender.loan(size).expect("loan").commit().expect("commit");
            drop(receiver.receive_in_place().expect("receive"));
        },
    )
}

fn mmapkit_latency(size: usize) -> f64 {
    let iterations = iterations(size, true);
    match size {
        64 => mmapkit_latency_typed::<64>(iterations),
        4096 => mmapkit_latency_typed::<4096>(iterations),
        _ => mmapkit_latency_bytes(size, iterations),
    }
}

/// Ping-pong over a pair of byte streams (a socket pair, or two pipes).
fn stream_latency(size: usize, mut near: impl Read + Write, mut far: impl Read + Write) -> f64 {
    let mut buffer = vec![0u8; size];
    timed_ping_pong(
        iterations(size, false),
        move |rounds| {
            let mut buffer = vec![0u8; size];
            for _ in 0..rounds {
                far.read_exact(&mut buffer).expect("read");
                far.write_all(&buffer).expect("write");
            }
        },
        || {
            near.write_all(&buffer).expect("write");
            near.read_exact(&mut buffer).expect("read");
        },
    )
}

fn socket_latency(size: usize) -> f64 {
    let (near, far) = UnixStream::pair().expect("socketpair");
    stream_latency(size, near, far)
}

/// Two pipes joined into one duplex stream.
struct PipePair {
    read: std::fs::File,
    write: std::fs::File,
}

impl PipePair {
    fn new() -> (PipePair, PipePair) {
        let (a_read, b_write) = rustix::pipe::pipe().expect("pipe");
        let (b_read, a_write) = rustix::pipe::pipe().expect("pipe");
        (
            PipePair {
                read: a_read.into(),
                write: a_write.into(),
            },
            PipePair {
                read: b_read.into(),
                write: b_write.into(),
            },
        )
    }
}

impl Read for PipePair {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for PipePair {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pipe_latency(size: usize) -> f64 {
    let (near, far) = PipePair::new();
    stream_latency(size, near, far)
}

pub fn latency(rounds: usize) {
    for (size, label) in [(64, "64"), (4096, "4k"), (1 << 20, "1m")] {
        let mut contenders = vec![Contender::new("mmapkit channel (zero-copy)", move || {
            mmapkit_latency(size)
        })];
        #[cfg(feature = "iceoryx2")]
        contenders.push(Contender::new("iceoryx2 0.10 (zero-copy)", move || {
            crate::iceoryx::latency(size, iterations(size, true))
        }));
        contenders.push(Contender::new("Unix domain socket", move || {
            socket_latency(size)
        }));
        contenders.push(Contender::new("pipe", move || pipe_latency(size)));
        let samples = harness::alternate(rounds, &mut contenders);
        let title = format!(
            "ipc-latency-{label}: ping-pong between two processes, {size}-byte messages, one way"
        );
        harness::print_table(&title, Unit::Nanoseconds, &samples);
        harness::print_json(
            &format!("ipc-latency-{label}"),
            &samples[0],
            &samples[1],
            Unit::Nanoseconds,
        );
    }
}

const STREAMED: u64 = 4_000_000;
const STREAMED_SLOW: u64 = 200_000;

fn mmapkit_throughput() -> f64 {
    let channel = Channel::<[u8; 64]>::create_memfd(&ChannelOptions::new(4096)).expect("channel");
    let child = fork(|| {
        let mut sender = channel.sender().expect("sender");
        let mut message = [0u8; 64];
        for sequence in 0..STREAMED {
            message[..8].copy_from_slice(&sequence.to_ne_bytes());
            sender.send(&message).expect("send");
        }
    });
    let mut receiver = channel.receiver().expect("receiver");
    let first = receiver.recv().expect("recv");
    assert_eq!(first[..8], 0u64.to_ne_bytes());
    let started = Instant::now();
    for sequence in 1..STREAMED {
        let message = receiver.recv().expect("recv");
        debug_assert_eq!(message[..8], sequence.to_ne_bytes());
    }
    let per_second = (STREAMED - 1) as f64 / started.elapsed().as_secs_f64();
    reap(child);
    per_second / 1e6
}

/// The same stream sent and received in batches of up to 64 messages.
fn mmapkit_throughput_batched() -> f64 {
    let channel = Channel::<[u8; 64]>::create_memfd(&ChannelOptions::new(4096)).expect("channel");
    let child = fork(|| {
        let mut sender = channel.sender().expect("sender");
        let mut batch = [[0u8; 64]; 64];
        for first in (0..STREAMED).step_by(64) {
            let count = 64.min(STREAMED - first) as usize;
            for (index, message) in batch[..count].iter_mut().enumerate() {
                message[..8].copy_from_slice(&(first + index as u64).to_ne_bytes());
            }
            sender.send_batch(&batch[..count]).expect("send");
        }
    });
    let mut receiver = channel.receiver().expect("receiver");
    let mut messages = Vec::with_capacity(64);
    let mut received = receiver.recv_batch(&mut messages, 64).expect("recv") as u64;
    let started = Instant::now();
    let first_batch = received;
    while received < STREAMED {
        messages.clear();
        received += receiver.recv_batch(&mut messages, 64).expect("recv") as u64;
    }
    let per_second = (STREAMED - first_batch) as f64 / started.elapsed().as_secs_f64();
    reap(child);
    per_second / 1e6
}

fn stream_throughput(mut near: impl Read, mut far: impl Write + Send) -> f64 {
    let child = fork(move || {
        let message = [7u8; 64];
        for _ in 0..STREAMED_SLOW {
            far.write_all(&message).expect("write");
        }
    });
    let mut message = [0u8; 64];
    near.read_exact(&mut message).expect("read");
    let started = Instant::now();
    for _ in 1..STREAMED_SLOW {
        near.read_exact(&mut message).expect("read");
    }
    let per_second = (STREAMED_SLOW - 1) as f64 / started.elapsed().as_secs_f64();
    reap(child);
    per_second / 1e6
}

pub fn throughput(rounds: usize) {
    let mut contenders = vec![
        Contender::new("mmapkit channel (copy in/out)", mmapkit_throughput),
        Contender::new("mmapkit channel, batches of 64", mmapkit_throughput_batched),
        Contender::new("Unix domain socket", || {
            let (near, far) = UnixStream::pair().expect("socketpair");
            stream_throughput(near, far)
        }),
        Contender::new("pipe", || {
            let (near, far) = PipePair::new();
            stream_throughput(near, far)
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    harness::print_table(
        "ipc-throughput-64: 64-byte messages streamed between two processes",
        Unit::MillionsPerSecond,
        &samples,
    );
    harness::print_json(
        "ipc-throughput-64",
        &samples[0],
        &samples[2],
        Unit::MillionsPerSecond,
    );
    harness::print_json(
        "ipc-throughput-64-batched",
        &samples[1],
        &samples[2],
        Unit::MillionsPerSecond,
    );
}

const WAKES: u64 = 100;

fn mmapkit_wake() -> f64 {
    let channel = Channel::<u64>::create_memfd(&ChannelOptions::new(16)).expect("channel");
    let ready = Handshake::new();
    let child = fork(|| {
        let mut sender = channel.sender().expect("sender");
        ready.wait();
        for _ in 0..WAKES {
            std::thread::sleep(WAKE_GAP);
            sender.send(&now_ns()).expect("send");
        }
    });
    let mut receiver = channel.receiver().expect("receiver");
    ready.signal();
    let mut total = 0;
    for _ in 0..WAKES {
        let sent = receiver.recv().expect("recv");
        total += now_ns() - sent;
    }
    reap(child);
    total as f64 / WAKES as f64 / 1e3
}

fn socket_wake() -> f64 {
    let (mut near, mut far) = UnixStream::pair().expect("socketpair");
    let child = fork(move || {
        for _ in 0..WAKES {
            std::thread::sleep(WAKE_GAP);
            far.write_all(&now_ns().to_ne_bytes()).expect("write");
        }
    });
    let mut total = 0;
    let mut stamp = [0u8; 8];
    for _ in 0..WAKES {
        near.read_exact(&mut stamp).expect("read");
        total += now_ns() - u64::from_ne_bytes(stamp);
    }
    reap(child);
    total as f64 / WAKES as f64 / 1e3
}

pub fn wake(rounds: usize) {
    let mut contenders = vec![
        Contender::new("mmapkit channel (futex)", mmapkit_wake),
        Contender::new("Unix domain socket", socket_wake),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    harness::print_table(
        "ipc-wake: a sleeping receiver woken by a message, sender to receiver",
        Unit::Microseconds,
        &samples,
    );
    harness::print_json("ipc-wake", &samples[0], &samples[1], Unit::Microseconds);
}
