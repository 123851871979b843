//! `c-abi-latency`: 64-byte ping-pong between two processes over mmapkit byte channels, from
//! C through libmmapkit (bench/c/pingpong.c, compiled with the system `cc` against the release
//! static library) and from Rust through the same calls the ABI makes (`send`, then a message
//! received in place and copied out). The ABI should add a call, not a copy: target ≤ 1.1×.

use std::path::{Path, PathBuf};
use std::process::Command;

use mmapkit::channel::{ByteChannel, ChannelOptions};

use crate::harness::{self, Contender, Unit};
use crate::process::{fork, reap};

const ITERATIONS: u64 = 20_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the release static library and the C program; returns the program.
fn build_c_program() -> PathBuf {
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "mmapkit-c"])
        .current_dir(root())
        .status()
        .expect("cargo starts");
    assert!(built.success(), "cargo build --release -p mmapkit-c failed");
    let program = std::env::temp_dir().join(format!("mmapkit-pingpong-{}", std::process::id()));
    let compiled = Command::new("cc")
        .args(["-O2", "-I"])
        .arg(root().join("include"))
        .arg(root().join("bench/c/pingpong.c"))
        .arg(root().join("target/release/libmmapkit.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&program)
        .status()
        .expect("cc starts");
    assert!(compiled.success(), "cc failed on bench/c/pingpong.c");
    program
}

fn c_latency(program: &Path) -> f64 {
    let output = Command::new(program)
        .arg(ITERATIONS.to_string())
        .output()
        .expect("the C program runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the C program prints nanoseconds")
}

fn rust_latency() -> f64 {
    let options = ChannelOptions::new(256);
    let ping = ByteChannel::create_memfd(&options).expect("channel");
    let pong = ByteChannel::create_memfd(&options).expect("channel");
    let mut sender = ping.sender().expect("sender");
    let mut receiver = pong.receiver().expect("receiver");
    let message = [0u8; 64];
    let warm_up = ITERATIONS / 10;
    let child = fork(|| {
        let mut receiver = ping.receiver().expect("receiver");
        let mut sender = pong.sender().expect("sender");
        let mut buf = [0u8; 64];
        for _ in 0..warm_up + ITERATIONS {
            let received = receiver.receive_in_place().expect("receive");
            let len = received.len();
            received.copy_to(&mut buf[..len]).expect("copy");
            drop(received);
            sender.send(&buf[..len]).expect("send");
        }
    });
    let mut buf = [0u8; 64];
    let mut round_trip = || {
        sender.send(&message).expect("send");
        let received = receiver.receive_in_place().expect("receive");
        let len = received.len();
        received.copy_to(&mut buf[..len]).expect("copy");
    };
    (0..warm_up).for_each(|_| round_trip());
    let started = std::time::Instant::now();
    (0..ITERATIONS).for_each(|_| round_trip());
    let one_way = started.elapsed().as_nanos() as f64 / (2 * ITERATIONS) as f64;
    reap(child);
    one_way
}

pub fn latency(rounds: usize) {
    let program = build_c_program();
    let mut contenders = vec![
        Contender::new("C through libmmapkit", || c_latency(&program)),
        Contender::new("Rust mmapkit API", rust_latency),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    harness::print_table(
        "c-abi-latency: 64-byte ping-pong between two processes, one way",
        Unit::Nanoseconds,
        &samples,
    );
    harness::print_json("c-abi-latency", &samples[0], &samples[1], Unit::Nanoseconds);
    let _ = std::fs::remove_file(&program);
}
