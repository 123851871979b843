//! What the CLI tests share: running the binary (as ourselves or as `nobody`) and files with
//! a known page-cache state.

#![allow(dead_code)] // each test file uses its own part

use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs mmapkit with `args` and collects its output.
pub fn mmapkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(args)
        .output()
        .expect("run mmapkit")
}

/// Runs mmapkit, which must succeed, and parses its stdout as one JSON value.
pub fn json(args: &[&str]) -> serde_json::Value {
    let output = mmapkit(args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs a reference tool (vmtouch, fincore, pmap), which must succeed, and returns its stdout.
pub fn tool(name: &str, args: &[&str]) -> String {
    let output = Command::new(name).args(args).output().unwrap_or_else(|_| {
        panic!("{name} is needed for the agreement tests (scripts/test installs it)")
    });
    assert!(output.status.success(), "{name} {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Makes a FIFO at `path` (one with no writer blocks a plain open for reading for ever).
pub fn make_fifo(path: &Path) {
    assert!(
        Command::new("mkfifo").arg(path).status().unwrap().success(),
        "mkfifo {}",
        path.display()
    );
}

/// A file of `pages` 4 KiB pages of which exactly those in `resident` are in the page cache.
pub fn partly_cached(path: &Path, pages: u64, resident: impl Iterator<Item = u64>) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all_at(&vec![7u8; (pages * 4096) as usize], 0)
        .unwrap();
    file.sync_all().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: advice on our own open file.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_RANDOM);
    }
    let mut page = [0u8; 4096];
    for index in resident {
        file.read_exact_at(&mut page, index * 4096).unwrap();
    }
}

/// Runs mmapkit as the unprivileged user `nobody`.
pub fn as_nobody(args: &[&str]) -> Output {
    command_as_nobody().args(args).output().unwrap()
}

/// A command for mmapkit that runs as the unprivileged user `nobody`.
pub fn command_as_nobody() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmapkit"));
    // SAFETY: setgroups/setgid/setuid are async-signal-safe and run in the child before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn memory_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .map(|kib: u64| kib * 1024)
        .expect("MemAvailable in /proc/meminfo")
}

/// Waits for `child` to end and collects its output; kills it and fails the test if it has
/// not ended within ten seconds (`what` says what it was doing).
pub fn output_within_ten_seconds(mut child: std::process::Child, what: &str) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "{what}: still running after 10 s: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}
