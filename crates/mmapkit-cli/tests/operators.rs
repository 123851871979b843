//! What an operator runs into: hostile text in command lines and file names, names pasted
//! from `shm ls`, actions whose measurement is refused, skipped files, range forms.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use common::{as_nobody, json, mmapkit};

#[test]
fn a_command_line_cannot_forge_lines_of_the_maps_listing() {
    // A real newline, and a backslash and an n that must not read as one.
    let forged = "x\n0000000000400000      4K r-x-- forged\u{1b}[31m \\n";
    let mut child = Command::new("sh")
        .args(["-c", "read line", forged])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // Until it has exec'd, the child shows this test's own command line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .starts_with(b"sh\0")
    {
        assert!(std::time::Instant::now() < deadline, "sh did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let output = mmapkit(&["maps", &pid]);
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.contains("x\\n0000000000400000"), "{header}");
    assert!(header.ends_with("[31m \\\\n"), "{header}");
    assert!(
        !text.contains('\u{1b}'),
        "an escape reached the terminal: {text:?}"
    );
    assert!(
        !text.lines().any(|line| line.ends_with("forged")),
        "a forged row: {text}"
    );
}

#[test]
fn json_maps_carry_the_command_itself() {
    let report = json(&["maps", "--json", "self"]);
    let command = &report[0]["command"];
    assert!(command.is_array(), "{report}");
    assert!(
        command[0].as_str().unwrap().ends_with("mmapkit"),
        "{command}"
    );
    assert_eq!(command[1], "maps");
}

#[test]
fn file_names_in_errors_cannot_reach_the_terminal_raw() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("no\u{1b}[2Jsuch\nfile");
    let output = mmapkit(&["residency", name.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!message.contains('\u{1b}'), "{message:?}");
    assert!(message.contains("no\\u{1b}[2Jsuch\\nfile"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

#[test]
fn a_name_pasted_from_shm_ls_removes_that_segment() {
    let name = format!("mmapkit-cli-ops-{}-a\nb\\c", std::process::id());
    let path = std::path::Path::new("/dev/shm").join(&name);
    std::fs::write(&path, b"odd").unwrap();
    let listing = String::from_utf8(mmapkit(&["shm", "ls"]).stdout).unwrap();
    let shown = format!("mmapkit-cli-ops-{}-a\\nb\\\\c", std::process::id());
    assert!(listing.contains(&shown), "{listing}");
    let removed = mmapkit(&["shm", "rm", &shown]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!path.exists(), "the segment shown as {shown:?} is gone");
    // The exact name still works, and a name that exists as typed is taken as typed.
    let literal = format!("mmapkit-cli-ops-{}-plain\\n", std::process::id());
    let literal_path = std::path::Path::new("/dev/shm").join(&literal);
    std::fs::write(&literal_path, b"odd").unwrap();
    assert!(mmapkit(&["shm", "rm", &literal]).status.success());
    assert!(!literal_path.exists());
}

#[test]
fn touch_and_evict_of_another_users_file_are_done_though_not_measured() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("(skipped: needs root to make a file nobody cannot measure)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = dir.path().join("roots");
    std::fs::write(&path, vec![5u8; 64 * 4096]).unwrap();
    // Clean pages: eviction drops only those.
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let path = path.to_str().unwrap();
    let resident = |report: &serde_json::Value| report["summary"]["resident_pages"].clone();
    json(&["residency", "--json", "--touch", path]);
    let evicted = as_nobody(&["residency", "--evict", path]);
    assert_eq!(evicted.status.code(), Some(0), "{evicted:?}");
    let text = String::from_utf8_lossy(&evicted.stdout);
    assert!(text.contains("Not measured: 1"), "{text}");
    assert!(!text.contains("Failed"), "{text}");
    let warning = String::from_utf8_lossy(&evicted.stderr);
    assert!(warning.contains("acted on, but not measured"), "{warning}");
    assert_eq!(
        resident(&json(&["residency", "--json", path])),
        0,
        "it was evicted"
    );
    let touched = as_nobody(&["residency", "--touch", path]);
    assert_eq!(touched.status.code(), Some(0), "{touched:?}");
    assert_eq!(
        resident(&json(&["residency", "--json", path])),
        64,
        "it was touched"
    );
}

#[test]
fn skipped_files_are_named_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    common::make_fifo(&fifo);
    let big = dir.path().join("big");
    std::fs::write(&big, vec![0u8; 200_000]).unwrap();
    let output = mmapkit(&[
        "residency",
        "--touch",
        "-m",
        "100K",
        fifo.to_str().unwrap(),
        "/dev/null",
        big.to_str().unwrap(),
    ]);
    let warnings = String::from_utf8_lossy(&output.stderr);
    for (path, reason) in [
        (fifo.to_str().unwrap(), "FIFO"),
        ("/dev/null", "device"),
        (
            big.to_str().unwrap(),
            "more bytes to act on than --max-size",
        ),
    ] {
        assert!(
            warnings
                .lines()
                .any(|line| line.contains(&format!("skipped {path}")) && line.contains(reason)),
            "{path}: {warnings}"
        );
    }
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("Skipped: 3 ("), "{summary}");
    assert!(summary.contains("listed on stderr"), "{summary}");
    // Without -m nothing is too large to touch, as with vmtouch.
    let touched = json(&["residency", "--json", "--touch", big.to_str().unwrap()]);
    assert_eq!(touched["summary"]["skipped"], 0, "{touched}");
}

#[test]
fn every_range_form_of_the_help_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, vec![1u8; 64 << 10]).unwrap();
    let path = path.to_str().unwrap();
    for (form, range) in [
        ("-8K", [0, 8192]),
        ("8K-", [8192, 65536]),
        ("4K-12K", [4096, 12288]),
        ("16K", [0, 16384]),
    ] {
        let report = json(&["residency", "--json", "-p", form, path]);
        assert_eq!(
            report["files"][0]["range"],
            serde_json::json!(range),
            "{form}"
        );
    }
    let percent = mmapkit(&["residency", "-p", "50%", path]);
    assert_eq!(percent.status.code(), Some(2));
    let message = String::from_utf8_lossy(&percent.stderr);
    assert!(message.contains("not a percentage"), "{message}");
    assert!(
        !message.contains("or %"),
        "the units offered must be accepted: {message}"
    );
}

#[test]
fn odd_bytes_in_names_are_shown_escaped() {
    let mut raw = format!("mmapkit-cli-ops-{}-", std::process::id()).into_bytes();
    raw.extend_from_slice(b"\xe9");
    let path = std::path::Path::new("/dev/shm").join(std::ffi::OsStr::from_bytes(&raw));
    std::fs::write(&path, b"odd").unwrap();
    let listing = String::from_utf8(mmapkit(&["shm", "ls"]).stdout).unwrap();
    let shown = format!("mmapkit-cli-ops-{}-\\xe9", std::process::id());
    assert!(listing.contains(&shown), "{listing}");
    assert!(mmapkit(&["shm", "rm", &shown]).status.success());
    assert!(!path.exists());
}

/// A stale mmapkit segment called `name`: a real segment's bytes, its creator rewritten as a
/// child process that has exited and been reaped.
fn stale_segment(name: &str) {
    let template = format!("{name}-template");
    drop(
        mmapkit::SegmentOptions::new("cli-test", 4096)
            .unwrap()
            .create(&template)
            .unwrap(),
    );
    let mut bytes = std::fs::read(format!("/dev/shm/{template}")).unwrap();
    std::fs::remove_file(format!("/dev/shm/{template}")).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    bytes[40..44].copy_from_slice(&dead.to_ne_bytes());
    std::fs::write(format!("/dev/shm/{name}"), &bytes).unwrap();
}

#[test]
fn shm_ls_and_clean_take_names_globs_and_prefixes() {
    let base = format!("mmapkit-cli-filter-{}", std::process::id());
    let names = [
        format!("{base}-app-1"),
        format!("{base}-app-2"),
        format!("{base}-other"),
    ];
    for name in &names {
        stale_segment(name);
    }
    let listed = |args: &[&str]| -> Vec<String> {
        let rows = json(&[&["shm", "ls", "--json"][..], args].concat());
        let mut names: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let apps = format!("{base}-app-*");
    assert_eq!(listed(&[&apps]), names[..2]);
    assert_eq!(listed(&[&names[2]]), names[2..]);
    assert_eq!(listed(&["--prefix", &base]), names);
    assert_eq!(listed(&[&apps, &names[2]]), names);
    let text = String::from_utf8(mmapkit(&["shm", "ls", &names[2]]).stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "heading and one row: {text}");

    let dry = json(&["shm", "clean", "--dry-run", "--json", &apps]);
    assert_eq!(dry.as_array().unwrap().len(), 2, "{dry}");
    assert!(
        names
            .iter()
            .all(|name| std::path::Path::new("/dev/shm").join(name).exists())
    );
    let removed = json(&["shm", "clean", "--json", "--prefix", &format!("{base}-app")]);
    assert_eq!(removed.as_array().unwrap().len(), 2, "{removed}");
    assert!(!std::path::Path::new("/dev/shm").join(&names[0]).exists());
    assert!(std::path::Path::new("/dev/shm").join(&names[2]).exists());
    assert!(mmapkit(&["shm", "rm", &names[2]]).status.success());
    assert_eq!(mmapkit(&["shm", "ls", "[unclosed"]).status.code(), Some(2));
}
