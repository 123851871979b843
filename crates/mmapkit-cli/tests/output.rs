//! Readers that go away (`mmapkit ... | head`): no command panics, hangs or loses its exit
//! status, whether the reader leaves before the first line or after it, and a background
//! lock holder whose pid cannot be reported does not stay behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Runs mmapkit, reads `lines` lines of its stdout and closes it (and stderr's read end if
/// `close_stderr`); fails the test if it has not ended within ten seconds.
fn with_reader_gone(args: &[&str], lines: usize, close_stderr: bool) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        stdout.read_line(&mut String::new()).unwrap();
    }
    drop(stdout);
    if close_stderr {
        drop(child.stderr.take());
    }
    let output =
        common::output_within_ten_seconds(child, &format!("mmapkit {args:?} with its reader gone"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "mmapkit {args:?}: {stderr}");
    output
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    let file = file.to_str().unwrap();
    let tree = dir.path().to_str().unwrap();
    for args in [
        &["demo", "--all", "--time-scale", "0"][..],
        &["maps", "self"],
        &["maps", "-x", "self"],
        &["maps", "-X", "self"],
        &["maps", "--json", "self"],
        &["residency", tree],
        &["residency", "--json", "--pages", file],
        &["residency", "--touch", file],
        &["shm", "ls"],
        &["shm", "ls", "--json"],
        &["shm", "clean", "--dry-run"],
        &["page", file, "--budget", "256K"],
        &["page", file, "--json"],
    ] {
        for lines in [0, 1] {
            let output = with_reader_gone(args, lines, false);
            assert!(output.status.success(), "mmapkit {args:?}: {output:?}");
        }
    }
}

#[test]
fn a_closed_stdout_keeps_the_errors_and_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"x").unwrap();
    let output = with_reader_gone(
        &["residency", "/nonexistent", file.to_str().unwrap()],
        0,
        false,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent"));
}

#[test]
fn a_holder_whose_pid_cannot_be_reported_does_not_stay() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("locked");
    std::fs::write(&file, vec![1u8; 64 * 1024]).unwrap();
    let path = file.to_str().unwrap();
    let output = with_reader_gone(&["residency", "--lock", "--daemon", path], 0, true);
    assert_eq!(output.status.code(), Some(1));
    // Nothing maps the file once the holder has noticed its parent is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holders: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|process| {
                std::fs::read_to_string(process.path().join("maps"))
                    .is_ok_and(|maps| maps.contains(path))
            })
            .map(|process| process.file_name().to_string_lossy().into_owned())
            .collect();
        if holders.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes {holders:?} still hold {path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
