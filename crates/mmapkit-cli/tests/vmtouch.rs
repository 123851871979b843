//! `mmapkit residency` with vmtouch's letters beside vmtouch itself: lists from a file or
//! standard input (-b, -0), -t/-e/-l, -i/-I/-f on trees, -q and -v, and the pidfile of -P
//! with the holder it names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{json, mmapkit, partly_cached, tool};

/// vmtouch's "Resident Pages: A/B" (or Touched/Evicted), as (A, B).
fn vmtouch_pages(args: &[&str]) -> (u64, u64) {
    let text = tool("vmtouch", args);
    let line = text
        .lines()
        .find(|line| line.contains("Pages:"))
        .unwrap_or_else(|| panic!("{text}"));
    let counts = line.split_whitespace().nth(2).unwrap();
    let (resident, total) = counts.split_once('/').unwrap();
    (resident.parse().unwrap(), total.parse().unwrap())
}

/// vmtouch's "Files: N".
fn vmtouch_files(args: &[&str]) -> u64 {
    let text = tool("vmtouch", args);
    let line = text.lines().find(|line| line.contains("Files:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn summary(report: &serde_json::Value) -> (u64, u64) {
    let summary = &report["summary"];
    (
        summary["resident_pages"].as_u64().unwrap(),
        summary["pages"].as_u64().unwrap(),
    )
}

/// Three files, one with a newline in its name, partly cached.
fn listed_files(dir: &Path) -> Vec<PathBuf> {
    let paths = ["one", "two", "three\nlines"].map(|name| dir.join(name));
    for (index, path) in paths.iter().enumerate() {
        partly_cached(path, 16, (0..16).step_by(index + 1));
    }
    paths.to_vec()
}

fn with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn lists_from_a_file_or_standard_input_name_what_vmtouch_reads() {
    let dir = tempfile::tempdir().unwrap();
    let paths = listed_files(dir.path());
    let nul_list: Vec<u8> = paths
        .iter()
        .flat_map(|path| [path.to_str().unwrap().as_bytes(), b"\0"].concat())
        .collect();
    let list = dir.path().join("list0");
    std::fs::write(&list, &nul_list).unwrap();
    let list = list.to_str().unwrap();
    let expected = vmtouch_pages(&["-0", "-b", list]);
    // Every page of the first file, every second of the second, every third of the third.
    assert_eq!(expected, (16 + 8 + 6, 48));
    assert_eq!(
        summary(&json(&["residency", "--json", "-0", "-b", list])),
        expected
    );

    let from_stdin = with_stdin(&["residency", "--json", "-0", "-b", "-"], &nul_list);
    assert!(from_stdin.status.success(), "{from_stdin:?}");
    let report: serde_json::Value = serde_json::from_slice(&from_stdin.stdout).unwrap();
    assert_eq!(summary(&report), expected);

    // Newline-separated: the name with a newline in it is two names (both missing), as
    // vmtouch reads it; paths given on the command line are added to the list's.
    let lines = dir.path().join("lines");
    std::fs::write(
        &lines,
        format!("{}\n{}\n\n", paths[0].display(), paths[1].display()),
    )
    .unwrap();
    let report = json(&[
        "residency",
        "--json",
        "-b",
        lines.to_str().unwrap(),
        paths[2].to_str().unwrap(),
    ]);
    assert_eq!(report["summary"]["files"], 3);

    // A path named again is counted once, without a warning (vmtouch says nothing either).
    let twice = dir.path().join("twice");
    std::fs::write(&twice, format!("{0}\n{0}\n", paths[0].display())).unwrap();
    let output = mmapkit(&["residency", "-s", "-b", twice.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{output:?}"
    );
    assert!(
        text.contains("Files: 1") && text.contains("Skipped: 1 (already counted: 1)"),
        "{text}"
    );

    let missing = mmapkit(&["residency", "-b", "/nonexistent/list"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/list"));
    let without_list = mmapkit(&["residency", "-0", paths[0].to_str().unwrap()]);
    assert_eq!(without_list.status.code(), Some(2), "{without_list:?}");
}

#[test]
fn vmtouchs_letters_touch_evict_and_filter_as_vmtouch_does() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("logs")).unwrap();
    for name in ["a.db", "b.db", "logs/c.log", "logs/d.db"] {
        partly_cached(&tree.join(name), 8, std::iter::empty());
    }
    std::os::unix::fs::symlink(tree.join("a.db"), tree.join("link.db")).unwrap();
    let tree = tree.to_str().unwrap();

    let (resident, total) = summary(&json(&["residency", "--json", "-t", tree]));
    assert_eq!((resident, total), (32, 32));
    assert_eq!(vmtouch_pages(&[tree]), (32, 32));
    assert_eq!(summary(&json(&["residency", "--json", "-e", tree])).0, 0);
    assert_eq!(vmtouch_pages(&[tree]).0, 0);

    // vmtouch counts a file reached through a symbolic link once more unless it has hard
    // links; mmapkit counts it once unless -H: so vmtouch's -f is our -f -H.
    for (ours, theirs) in [
        (&["-i", "*.log"][..], &["-i", "*.log"][..]),
        (&["-I", "*.db"], &["-I", "*.db"]),
        (&["-i", "logs"], &["-i", "logs"]),
        (&["-f", "-H"], &["-f"]),
        (&["-F"], &["-F"]),
    ] {
        let report = json(&[&["residency", "--json"][..], ours, &[tree]].concat());
        let files = report["summary"]["files"].as_u64().unwrap();
        assert_eq!(
            files,
            vmtouch_files(&[theirs, &[tree]].concat()),
            "{ours:?}"
        );
    }
    let once = json(&["residency", "--json", "-f", tree]);
    assert_eq!(once["summary"]["files"], 4);
}

#[test]
fn quiet_prints_nothing_but_errors_and_verbose_shows_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    partly_cached(&path, 8, [0, 1, 2, 3].into_iter());
    let fifo = dir.path().join("fifo");
    common::make_fifo(&fifo);
    let (path, fifo) = (path.to_str().unwrap(), fifo.to_str().unwrap());

    let quiet = mmapkit(&["residency", "-q", "-e", path, fifo]);
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(
        quiet.stdout.is_empty() && quiet.stderr.is_empty(),
        "{quiet:?}"
    );
    assert_eq!(vmtouch_pages(&[path]).0, 0);
    let failing = mmapkit(&["residency", "-q", path, "/nonexistent"]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(failing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&failing.stderr).contains("/nonexistent"));
    assert_eq!(
        mmapkit(&["residency", "-q", "-v", path]).status.code(),
        Some(2)
    );

    let verbose = String::from_utf8(mmapkit(&["residency", "-t", "-v", path]).stdout).unwrap();
    assert!(verbose.contains("[OOOOOOOO] 8/8"), "{verbose}");
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn locked_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmLck:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_pidfile_names_the_holder_until_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, vec![9u8; 128 * 1024]).unwrap();
    let path = path.to_str().unwrap();
    let pidfile = dir.path().join("holder.pid");
    let pidfile_arg = pidfile.to_str().unwrap();

    // In the background: the pid is in the file when the command returns.
    let daemon = mmapkit(&["residency", "-q", "-l", "-d", "-w", "-P", pidfile_arg, path]);
    assert!(daemon.status.success(), "{daemon:?}");
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    assert_eq!(locked_kib(&pid), 128);
    assert!(daemon.stdout.is_empty(), "{daemon:?}");
    // SAFETY: signals the holder this test started.
    unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
    wait_until("the pidfile removed", || !pidfile.exists());

    // In the foreground: the pid appears once the locks are held.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(["residency", "-l", "-P", pidfile_arg, path])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the pid written", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|text| text.ends_with('\n'))
    });
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    assert_eq!(pid, holder.id().to_string());
    assert_eq!(locked_kib(&pid), 128);
    // SAFETY: signals our own child.
    unsafe { libc::kill(holder.id() as i32, libc::SIGTERM) };
    assert!(holder.wait().unwrap().success());
    assert!(!pidfile.exists());

    // Only a regular file of ours serves: a symbolic link, a device (written to, or
    // unlinked at the end, it would be lost), a FIFO, another user's file and a file with
    // other hard links are refused before anything is locked, and left as they were.
    let target = dir.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.pid");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let device = dir.path().join("null.pid");
    let device_c = std::ffi::CString::new(device.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid NUL-terminated path; the device is /dev/null's (1, 3).
    let made = unsafe {
        libc::mknod(
            device_c.as_ptr(),
            libc::S_IFCHR | 0o644,
            libc::makedev(1, 3),
        )
    };
    assert_eq!(made, 0, "mknod");
    let fifo = dir.path().join("fifo.pid");
    common::make_fifo(&fifo);
    let foreign = dir.path().join("foreign.pid");
    std::fs::write(&foreign, b"someone else's\n").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let linked = dir.path().join("linked.pid");
    std::fs::hard_link(&target, &linked).unwrap();
    for (refused_path, reason) in [
        (&link, "symbolic link"),
        (&device, "not a regular file"),
        (&fifo, "not a regular file"),
        (&foreign, "another user"),
        (&linked, "hard links"),
    ] {
        let refused = mmapkit(&[
            "residency",
            "-l",
            "-d",
            "-P",
            refused_path.to_str().unwrap(),
            path,
        ]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{refused:?}");
        assert!(
            stderr.contains(reason) && !stderr.contains("kill"),
            "{stderr}"
        );
        assert!(
            std::fs::symlink_metadata(refused_path).is_ok(),
            "{} kept",
            refused_path.display()
        );
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"someone else's\n");

    // A relative pidfile is removed by the holder, which has left for / meanwhile; SIGQUIT
    // releases as SIGTERM does; nothing is held, the pidfile is gone, when nothing is locked.
    let relative = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args(["residency", "-q", "-l", "-d", "-P", "relative.pid", path])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        relative.status.success() && relative.stderr.is_empty(),
        "{relative:?}"
    );
    let relative_pidfile = dir.path().join("relative.pid");
    let pid = std::fs::read_to_string(&relative_pidfile)
        .unwrap()
        .trim()
        .to_owned();
    // SAFETY: signals the holder this test started.
    unsafe { libc::kill(pid.parse().unwrap(), libc::SIGQUIT) };
    wait_until("the relative pidfile removed", || {
        !relative_pidfile.exists()
    });
    let nothing = mmapkit(&[
        "residency",
        "-q",
        "-l",
        "-d",
        "-m",
        "1",
        "-P",
        pidfile_arg,
        path,
    ]);
    assert!(nothing.status.success(), "{nothing:?}");
    assert!(!pidfile.exists());

    for unrelated in [&["-P", pidfile_arg][..], &["-w"]] {
        let output = mmapkit(&[&["residency"][..], unrelated, &[path]].concat());
        assert_eq!(output.status.code(), Some(2), "{unrelated:?} without -l/-d");
    }
}
