//! Every command whose reader goes away (`mmapkit ... | head`) ends quietly with status 0,
//! not with a panic: the read end of stdout is closed before the command writes anything.

use std::process::{Command, Stdio};

/// Runs mmapkit with a stdout pipe whose read end is already closed.
fn with_stdout_closed(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("panicked"),
        "mmapkit {args:?}: {:?}\n{stderr}",
        output.status
    );
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
        with_stdout_closed(args);
    }
}
