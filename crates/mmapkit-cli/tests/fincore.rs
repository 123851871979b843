//! `mmapkit fincore` and the table of `mmapkit residency` beside util-linux fincore on the same
//! files: the same text for every flag fincore has here (-b, -n, -r, -o, +LIST, -J), and for
//! what this fincore (2.38) lacks — the cachestat columns, -c, -R — the figures the library
//! measured.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{json, mmapkit, partly_cached};

/// Files whose residency is known, with names that need encoding.
fn files(dir: &Path) -> Vec<PathBuf> {
    let names: [&[u8]; 8] = [
        b"cached",
        b"half",
        b"with space",
        b"back\\xslash",
        b"new\nline",
        b"esc\x1b[31m",
        "caf\u{e9}".as_bytes(),
        b"not-utf8-\xff",
    ];
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|name| dir.join(OsStr::from_bytes(name)))
        .collect();
    partly_cached(&paths[0], 300, 0..300);
    partly_cached(&paths[1], 64, (0..64).step_by(2));
    for path in &paths[2..] {
        partly_cached(path, 1, 0..1);
    }
    std::fs::write(dir.join("empty"), b"").unwrap();
    let mut all = paths;
    all.push(dir.join("empty"));
    all
}

/// Runs util-linux fincore (`program` "fincore") or an mmapkit command ("ours" for
/// `mmapkit fincore`, "residency") on `files`; it must succeed.
fn run(program: &str, args: &[&str], files: &[PathBuf]) -> String {
    let mut command = match program {
        "fincore" => Command::new("fincore"),
        ours => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_mmapkit"));
            command.arg(if ours == "ours" { "fincore" } else { ours });
            command
        }
    };
    let output = command.args(args).args(files).output().unwrap_or_else(|_| {
        panic!("fincore is needed for the agreement tests (scripts/test installs util-linux)")
    });
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_table_is_fincores_for_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    for flags in [
        &[][..],
        &["-b"],
        &["-n"],
        &["-r"],
        &["-b", "-n", "-r"],
        &["-o", "FILE,RES"],
        &["-o", "res,pages,size,file"],
        &["-o", "+PAGES"],
        &["-r", "-o", "RES,FILE"],
        &["-b", "-o", "SIZE,PAGES"],
    ] {
        let fincore = run("fincore", flags, &files);
        assert_eq!(run("ours", flags, &files), fincore, "fincore {flags:?}");
    }
}

#[test]
fn residency_prints_the_same_table_then_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    for flags in [&["-b", "-n", "-r"][..], &["-o", "FILE,RES", "-n"], &["-r"]] {
        let fincore = run("fincore", flags, &files);
        let mut ours: Vec<&str> = flags.to_vec();
        if let Some(bytes) = ours.iter_mut().find(|flag| **flag == "-b") {
            *bytes = "--bytes";
        }
        assert_eq!(run("residency", &ours, &files), fincore, "{ours:?}");
    }
    let text = run("residency", &[], &files);
    let (table, summary) = text.split_once("\n\n").unwrap();
    assert_eq!(format!("{table}\n"), run("fincore", &[], &files));
    // 338 pages were cached; the machine may have evicted some since (DAMON pages out here),
    // so the figure is fincore's own, read right after.
    let resident: u64 = run("fincore", &["-n", "-o", "PAGES"], &files)
        .lines()
        .map(|pages| pages.trim().parse::<u64>().unwrap())
        .sum();
    assert!(resident > 300, "{resident}");
    assert!(
        summary.contains(&format!("Resident Pages: {resident}/370")),
        "{summary}"
    );
}

#[test]
fn json_is_fincores_json() {
    let dir = tempfile::tempdir().unwrap();
    // fincore writes names that are not UTF-8 into its JSON as they are (invalid JSON).
    let files: Vec<PathBuf> = files(dir.path())
        .into_iter()
        .filter(|path| path.to_str().is_some())
        .collect();
    for flags in [&["-J"][..], &["-J", "-b"], &["-J", "-o", "FILE,PAGES"]] {
        let fincore = run("fincore", flags, &files);
        assert_eq!(run("ours", flags, &files), fincore, "{flags:?}");
        serde_json::from_str::<serde_json::Value>(&fincore).unwrap();
    }
    // No rows: fincore prints nothing, or an empty JSON list in its layout.
    let directory = [dir.path().to_path_buf()];
    for flags in [&[][..], &["-J"], &["-r", "-b"]] {
        assert_eq!(
            run("ours", flags, &directory),
            run("fincore", flags, &directory),
            "{flags:?}"
        );
    }
}

#[test]
fn cachestat_columns_totals_and_recursion_hold_the_measured_figures() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    // Dirty pages: written, not yet synced.
    let dirty = dir.path().join("dirty");
    std::fs::write(&dirty, vec![1u8; 5 * 4096]).unwrap();
    let dirty = dirty.to_str().unwrap();
    let measured = json(&["residency", "--json", dirty]);
    let dirty_pages = measured["files"][0]["dirty_pages"].as_u64().unwrap();
    let table = String::from_utf8(
        mmapkit(&[
            "fincore",
            "-b",
            "-n",
            "-o",
            "DIRTY_PAGES,DIRTY,EVICTED_PAGES,FILE",
            dirty,
        ])
        .stdout,
    )
    .unwrap();
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cells[0], dirty_pages.to_string(), "{table}");
    assert_eq!(cells[1], (dirty_pages * 4096).to_string(), "{table}");
    assert_eq!(cells[3], dirty);

    let all = run("ours", &["--output-all", "-r", "-n", "-b"], &files[..1]);
    assert_eq!(all.split(' ').count(), 12, "{all}");

    let totals = run(
        "ours",
        &["-c", "-b", "-r", "-n", "-o", "PAGES,SIZE,FILE"],
        &files,
    );
    let rows: Vec<Vec<&str>> = totals
        .lines()
        .map(|line| line.split(' ').collect())
        .collect();
    let sum = |column: usize| -> u64 {
        rows[..rows.len() - 1]
            .iter()
            .map(|row| row[column].parse::<u64>().unwrap())
            .sum()
    };
    let total = rows.last().unwrap();
    assert_eq!(total[2], "TOTAL");
    assert_eq!(total[0], sum(0).to_string());
    assert_eq!(total[1], sum(1).to_string());

    // Without -R a directory is passed over, as fincore does; with it, its files are listed
    // (in name order) with the figures fincore gives each.
    let directory = dir.path().to_str().unwrap();
    assert_eq!(run("ours", &["-n"], &[PathBuf::from(directory)]), "");
    let mut sorted = files.clone();
    sorted.push(PathBuf::from(dirty));
    sorted.sort();
    let walked = run(
        "ours",
        &["-R", "-b", "-n", "-r"],
        &[PathBuf::from(directory)],
    );
    assert_eq!(walked, run("fincore", &["-b", "-n", "-r"], &sorted));
}

#[test]
fn bad_columns_are_usage_errors() {
    for bad in ["", "RES,,FILE", "NOPE", "+"] {
        let output = mmapkit(&["fincore", "-o", bad, "/dev/null"]);
        assert_eq!(output.status.code(), Some(2), "-o {bad:?}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("column"),
            "{output:?}"
        );
    }
}
