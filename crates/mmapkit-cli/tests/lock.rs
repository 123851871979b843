//! `mmapkit residency --touch`, `--evict` and `--lock` (foreground and `--daemon`): each
//! shows its effect in the residency figures, what another process sees (VmLck) and what
//! happens when there is nothing to hold or nobody left reading.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{json, mmapkit, partly_cached};

#[test]
fn touch_evict_and_lock_show_their_effect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    partly_cached(&path, 256, std::iter::empty());
    let path = path.to_str().unwrap();
    let resident =
        |report: &serde_json::Value| report["summary"]["resident_pages"].as_u64().unwrap();
    assert_eq!(resident(&json(&["residency", "--json", path])), 0);
    assert_eq!(
        resident(&json(&["residency", "--json", "--touch", path])),
        256
    );
    assert_eq!(
        resident(&json(&["residency", "--json", "--evict", path])),
        0
    );

    let daemon = mmapkit(&[
        "residency",
        "--json",
        "--lock",
        "--daemon",
        "-p",
        "0-256K",
        path,
    ]);
    assert!(daemon.status.success(), "{daemon:?}");
    let report: serde_json::Value = serde_json::from_slice(&daemon.stdout).unwrap();
    assert_eq!(resident(&report), 64);
    let pid = report["holder_pid"].as_i64().unwrap() as i32;
    assert!(String::from_utf8_lossy(&daemon.stderr).contains(&format!("kill {pid}")));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("VmLck:") && l.contains(" 256 kB")),
        "{status}"
    );
    // Locked pages survive an eviction until the holder goes.
    assert_eq!(
        resident(&json(&["residency", "--json", "--evict", path])),
        64
    );
    // SAFETY: signals our own daemon child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        resident(&json(&["residency", "--json", "--evict", path])),
        0
    );

    // Files over --max-size are neither touched nor locked; nothing may lock more than
    // half the memory available (a large sparse file would otherwise call the OOM killer).
    let skipped = json(&["residency", "--json", "--lock", "-m", "100K", path]);
    assert_eq!(
        skipped["skipped"][0]["reason"],
        "more bytes to act on than --max-size"
    );
    // The limit is on what is acted on: a range within it is touched in a larger file.
    let ranged = json(&[
        "residency",
        "--json",
        "--touch",
        "-m",
        "100K",
        "-p",
        "0-64K",
        path,
    ]);
    assert_eq!(resident(&ranged), 16);
    let sparse = dir.path().join("sparse");
    // Twice what is available: more than half of it whatever the machine.
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(2 * common::memory_available())
        .unwrap();
    let refused = mmapkit(&["residency", "--lock", "-m", "1T", sparse.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("half the memory available") && message.contains("sparse"),
        "{message}"
    );

    // In the foreground, the lock holds until SIGTERM.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(["residency", "-s", "--lock", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(
        resident(&json(&["residency", "--json", "--evict", path])),
        256
    );
    // SAFETY: signals our own child.
    unsafe { libc::kill(holder.id() as i32, libc::SIGTERM) };
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        resident(&json(&["residency", "--json", "--evict", path])),
        0
    );
}

/// Runs mmapkit (as `nobody` if asked) with stdout closed or piped; fails the test if it has
/// not ended within ten seconds (a holder that should have had nothing to hold).
fn finishes(args: &[&str], stdout_closed: bool, nobody: bool) -> std::process::Output {
    let mut command = if nobody {
        common::command_as_nobody()
    } else {
        Command::new(env!("CARGO_BIN_EXE_mmapkit"))
    };
    let mut child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if stdout_closed {
        drop(child.stdout.take());
    }
    common::output_within_ten_seconds(child, &format!("mmapkit {args:?} (holding?)"))
}

#[test]
fn nothing_to_hold_ends_the_command_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, vec![1u8; 8192]).unwrap();
    let (empty, small) = (empty.to_str().unwrap(), small.to_str().unwrap());
    for args in [
        &["residency", "--lock", empty][..],
        &["residency", "--lock", "-p", "1G-", small],
        &["residency", "--lock", "--daemon", "--json", empty],
    ] {
        let output = finishes(args, false, false);
        assert!(output.status.success(), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("holding") && !stderr.contains("kill"),
            "{stderr}"
        );
    }
}

#[test]
fn a_closed_stdout_does_not_stop_a_background_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, vec![3u8; 256 * 1024]).unwrap();
    let args = ["residency", "--lock", "--daemon", "-p", "0-64K"];
    let output = finishes(
        &[&args[..], &[path.to_str().unwrap()]].concat(),
        true,
        false,
    );
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let pid: i32 = stderr
        .rsplit("kill ")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no holder pid: {stderr}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // SAFETY: signals our own daemon child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("VmLck:") && l.contains(" 64 kB")),
        "{status}"
    );
}

#[test]
fn a_file_that_cannot_be_measured_holds_no_lock() {
    // Readable by `nobody` but not writable: the page cache may not be asked about it
    // (cachestat refuses, mincore would lie), so its residency fails — and so must its lock.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("root-owned");
    std::fs::write(&path, vec![5u8; 64 * 1024]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = finishes(
        &["residency", "--lock", path.to_str().unwrap()],
        false,
        true,
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("root-owned") && !stderr.contains("holding"),
        "{stderr}"
    );
}
