//! `mmapkit maps`, `residency` and `shm` end to end: what they report about real processes
//! and files, agreement with pmap, vmtouch and fincore on the same inputs (the tools must be
//! installed; `.ci/run` installs them), and bad input.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

mod common;
use common::{as_nobody, json, mmapkit, partly_cached, tool};

#[test]
fn residency_agrees_with_vmtouch_and_fincore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    partly_cached(
        &path,
        1000,
        (0..1000).filter(|page| page % 3 == 0 || *page > 900),
    );
    let path = path.to_str().unwrap();
    let ours = json(&["residency", "--json", path]);
    let resident = ours["summary"]["resident_pages"].as_u64().unwrap();
    assert_eq!(
        resident, 400,
        "0, 3, …, 999 (334 pages) and 901..=999 (99, 33 counted already)"
    );

    // vmtouch: "Resident Pages: 400/1000  1M/3M  40%"
    let vmtouch = tool("vmtouch", &[path]);
    let line = vmtouch
        .lines()
        .find(|l| l.contains("Resident Pages"))
        .unwrap();
    let counts = line.split_whitespace().nth(2).unwrap();
    assert_eq!(counts, format!("{resident}/1000"), "{vmtouch}");

    // fincore: PAGES column in raw bytes mode.
    let fincore = tool(
        "fincore",
        &["--raw", "--noheadings", "--output", "PAGES", path],
    );
    assert_eq!(fincore.trim(), resident.to_string());

    // A page range: pages 900..1000.
    let ranged = json(&["residency", "--json", "-p", "3600K-4000K", path]);
    assert_eq!(
        ranged["summary"]["resident_pages"], 100,
        "900 and 901..=999"
    );
    let vmtouch = tool("vmtouch", &["-p", "3600k-4000k", path]);
    assert!(
        vmtouch.contains(&format!("{}/100", ranged["summary"]["resident_pages"])),
        "{vmtouch}"
    );
}

#[test]
fn a_tree_agrees_with_vmtouch_and_counts_hard_links_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    for (index, name) in ["one", "a/two", "a/b/three", "a/b/four"].iter().enumerate() {
        partly_cached(
            &root.join(name),
            50,
            (0..50).filter(|p| p % (index as u64 + 2) == 0),
        );
    }
    std::fs::hard_link(root.join("one"), root.join("a/one-again")).unwrap();
    let root = root.to_str().unwrap();
    let ours = json(&["residency", "--json", root]);
    assert_eq!(ours["summary"]["files"], 4);
    assert_eq!(ours["summary"]["directories"], 3);
    let vmtouch = tool("vmtouch", &[root]);
    let files = vmtouch.lines().find(|l| l.contains("Files:")).unwrap();
    assert!(files.ends_with(" 4"), "{vmtouch}");
    let line = vmtouch
        .lines()
        .find(|l| l.contains("Resident Pages"))
        .unwrap();
    let expected = format!(
        "{}/{}",
        ours["summary"]["resident_pages"], ours["summary"]["pages"]
    );
    assert_eq!(
        line.split_whitespace().nth(2).unwrap(),
        expected,
        "{vmtouch}"
    );
    let counted = json(&["residency", "--json", "--count-hardlinks", root]);
    assert_eq!(counted["summary"]["files"], 5);
    let only = json(&[
        "residency",
        "--json",
        "--include",
        "t*",
        "--exclude",
        "b",
        root,
    ]);
    let paths: Vec<&str> = only["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 1);
    assert!(paths[0].ends_with("a/two"));
}

#[test]
fn maps_totals_agree_with_pmap() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = sleeper.id().to_string();
    let pmap = tool("pmap", &["-x", &pid]);
    let ours = json(&["maps", "--json", &pid]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let total = pmap.lines().find(|l| l.starts_with("total kB")).unwrap();
    let numbers: Vec<u64> = total
        .split_whitespace()
        .skip(2)
        .map(|n| n.parse().unwrap())
        .collect();
    let totals = &ours[0]["totals"];
    let kib = |key: &str| totals[key].as_u64().unwrap() / 1024;
    assert_eq!(numbers, [kib("size"), kib("rss"), kib("dirty")], "{pmap}");
    let mapped = pmap
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|address| address.len() == 16 && address.chars().all(|c| c.is_ascii_hexdigit()))
        .count();
    assert_eq!(ours[0]["mappings"].as_array().unwrap().len(), mapped);
    let kinds: Vec<&str> = ours[0]["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"file") && kinds.contains(&"stack") && kinds.contains(&"vdso"),
        "{kinds:?}"
    );

    let text = String::from_utf8(mmapkit(&["maps", "-x", "self"]).stdout).unwrap();
    assert!(
        text.contains("[ stack ]") && text.contains("total kB"),
        "{text}"
    );
    let text = String::from_utf8(mmapkit(&["maps", "-XX", "self"]).stdout).unwrap();
    assert!(
        text.contains("Private_Dirty") && text.contains(" rd "),
        "{text}"
    );
}

#[test]
fn bad_processes_get_clear_errors_and_exit_codes() {
    let missing = mmapkit(&["maps", "4000000"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no process with PID 4000000"));
    // Another user's smaps: permission denied, with what to do.
    let me = std::process::id().to_string();
    let denied = as_nobody(&["maps", "-x", &me]);
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    let message = String::from_utf8_lossy(&denied.stderr);
    assert!(
        message.contains("permission denied") && message.contains("ptrace"),
        "{message}"
    );
    // One good PID among bad ones: it is still listed, the exit code still says failure.
    let in_json = mmapkit(&["maps", "--json", "4000000", "self"]);
    let listed: serde_json::Value = serde_json::from_slice(&in_json.stdout).unwrap();
    assert_eq!(listed[0]["pid"], 4000000);
    assert!(listed[0]["error"].as_str().unwrap().contains("no process"));
    assert!(listed[1]["mappings"].as_array().unwrap().len() > 5);
    assert!(listed[1]["mappings"][0]["other"]["Size"].as_u64().unwrap() > 0);
    let mixed = mmapkit(&["maps", "4000000", "self"]);
    assert_eq!(mixed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&mixed.stdout).contains("total"));
    assert_eq!(mmapkit(&["maps", "zero"]).status.code(), Some(2));
}

#[test]
fn awkward_files_in_a_tree_are_reported_and_the_walk_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("readable"), vec![1u8; 10_000]).unwrap();
    std::fs::write(root.join("secret"), b"root only").unwrap();
    let name = OsStr::from_bytes(b"caf\xe9");
    std::fs::write(root.join(name), b"not utf-8 name").unwrap();
    // A FIFO with no writer would block an open(2) for reading: it must be skipped.
    common::make_fifo(&root.join("fifo"));
    let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    let sparse = std::fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(100 << 30).unwrap();
    let chown = |path: &Path| std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    for entry in ["readable", "sparse", "fifo", "socket"] {
        chown(&root.join(entry));
    }
    chown(&root.join(name));
    chown(root);
    std::fs::set_permissions(
        root.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let root_text = root.to_str().unwrap();

    let output = as_nobody(&["residency", "--json", root_text]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "secret is unreadable: {output:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["summary"]["files"], 3, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["path"].as_str().unwrap().ends_with("secret"));
    let reasons: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["FIFO", "socket"]);
    let paths: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("caf\u{fffd}")),
        "{paths:?}"
    );
    let escaped: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path_escaped"].as_str())
        .collect();
    assert_eq!(escaped.len(), 1);
    assert!(escaped[0].ends_with("caf\\xe9"), "{escaped:?}");
    let sparse = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("sparse"))
        .unwrap();
    assert_eq!(
        (sparse["pages"].as_u64(), sparse["resident_pages"].as_u64()),
        (Some(100 << 18), Some(0))
    );

    // The page map of a 100 GiB sparse file is read in windows, never mapped at once.
    let started = std::time::Instant::now();
    let pages = mmapkit(&[
        "residency",
        "--pages",
        "-s",
        root.join("sparse").to_str().unwrap(),
    ]);
    assert!(pages.status.success(), "{pages:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_stays_out_of_mounts_below() {
    let dir = tempfile::tempdir().unwrap();
    let below = dir.path().join("below");
    std::fs::create_dir(&below).unwrap();
    std::fs::write(dir.path().join("here"), b"on the first file system").unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(&below)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root, as CI runs");
    let _mount = Mount(below.clone());
    std::fs::write(below.join("there"), b"on a tmpfs").unwrap();
    let root = dir.path().to_str().unwrap();
    let all = json(&["residency", "--json", root]);
    assert_eq!(all["summary"]["files"], 2);
    let one = json(&["residency", "--json", "--one-file-system", root]);
    assert_eq!(one["summary"]["files"], 1);
    assert_eq!(one["skipped"][0]["reason"], "on another file system");
}

#[test]
fn shm_lists_removes_and_cleans_segments() {
    let name = format!("mmapkit-cli-test-{}", std::process::id());
    let created = mmapkit::SegmentOptions::new("cli-test", 4096)
        .unwrap()
        .create(&name)
        .unwrap();
    let listed = json(&["shm", "ls", "--json"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["mmapkit"], true);
    assert_eq!(row["type"], "cli-test");
    assert_eq!(row["creator_pid"], std::process::id());
    assert_eq!(row["creator_alive"], true);
    assert_eq!(row["mode"], "0600");
    assert_eq!(row["stale"], false);
    let text = String::from_utf8(mmapkit(&["shm", "ls"]).stdout).unwrap();
    assert!(text.contains(&name) && text.contains("(alive)"), "{text}");
    drop(created);
    assert!(mmapkit(&["shm", "rm", &name]).status.success());
    assert_eq!(mmapkit(&["shm", "rm", &name]).status.code(), Some(1));
    let dry = json(&["shm", "clean", "--dry-run", "--json"]);
    assert!(dry.as_array().unwrap().iter().all(|n| n != name.as_str()));

    // A name that is not UTF-8 is listed (escaped) and can be removed.
    let mut raw = format!("mmapkit-cli-test-{}-", std::process::id()).into_bytes();
    raw.push(0xff);
    let raw = OsStr::from_bytes(&raw);
    let path = Path::new("/dev/shm").join(raw);
    std::fs::write(&path, b"foreign").unwrap();
    let listed = json(&["shm", "ls", "--json"]);
    let escaped = format!("mmapkit-cli-test-{}-\\xff", std::process::id());
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["name_escaped"] == escaped.as_str()),
        "{listed}"
    );
    let removed = Command::new(env!("CARGO_BIN_EXE_mmapkit"))
        .args([OsStr::new("shm"), OsStr::new("rm"), raw])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
    assert!(!path.exists());
}

#[test]
fn a_file_is_counted_once_however_it_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // 100,000 bytes: 25 pages, the last one partly used.
    std::fs::write(tree.join("big"), vec![1u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("big", tree.join("link1")).unwrap();
    std::os::unix::fs::symlink("big", tree.join("link2")).unwrap();
    let (tree, big) = (tree.to_str().unwrap(), tree.join("big"));
    let big = big.to_str().unwrap();
    for args in [
        &["residency", "--json", "-f", tree][..],
        &["residency", "--json", big, big, tree],
    ] {
        let report = json(args);
        assert_eq!(report["summary"]["files"], 1, "{args:?}: {report}");
        assert_eq!(report["summary"]["pages"], 25);
        assert_eq!(report["summary"]["page_bytes"], 25 * 4096);
    }
    // The summary's total counts whole pages, as its resident figure does (and vmtouch).
    let text = String::from_utf8(mmapkit(&["residency", "-s", "--touch", big]).stdout).unwrap();
    assert!(text.contains("25/25  100.0 KiB/100.0 KiB"), "{text}");
    // A percentage says nothing about how much may be touched or locked.
    assert_eq!(
        mmapkit(&["residency", "--touch", "-m", "50%", big])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn control_characters_in_names_do_not_break_rows() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("two\nlines");
    std::fs::write(&odd, b"x").unwrap();
    let text = String::from_utf8(mmapkit(&["residency", odd.to_str().unwrap()]).stdout).unwrap();
    let rows: Vec<&str> = text.lines().take_while(|line| !line.is_empty()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[1].ends_with("two\\x0alines"), "{text}");
}

#[test]
fn page_maps_show_the_runs_of_cached_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    partly_cached(&path, 8, [0, 1, 5].into_iter());
    let path = path.to_str().unwrap();
    let report = json(&["residency", "--json", "--pages", path]);
    assert_eq!(
        report["files"][0]["resident_page_runs"],
        serde_json::json!([[0, 2], [5, 6]])
    );
    let text = String::from_utf8(mmapkit(&["residency", "--pages", path]).stdout).unwrap();
    assert!(text.contains("[OO   O  ] 3/8"), "{text}");
}
