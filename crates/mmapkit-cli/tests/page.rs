//! `mmapkit page`: the scan's checksum matches the file, the budget holds, the report is
//! machine-readable, and bad input gets the right exit code.

use std::io::Write;

mod common;
use common::{json, mmapkit};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

/// The checksum `mmapkit page` prints: the wrapping sum of little-endian u64 words, the last
/// one zero-padded.
fn sum_of_words(bytes: &[u8]) -> String {
    let sum = bytes
        .chunks(8)
        .map(|word| {
            let mut padded = [0u8; 8];
            padded[..word.len()].copy_from_slice(word);
            u64::from_le_bytes(padded)
        })
        .fold(0u64, u64::wrapping_add);
    format!("{sum:#018x}")
}

#[test]
fn a_scan_under_a_budget_sums_the_file_and_stays_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let bytes = data(8 * 1024 * 1024 + 5);
    std::fs::write(&path, &bytes).unwrap();
    let path = path.to_str().unwrap();
    let report = json(&[
        "page",
        path,
        "--budget",
        "25%",
        "--page-size",
        "16K",
        "--json",
    ]);
    assert_eq!(report["store"], "file");
    assert_eq!(report["mode"], "scan");
    assert_eq!(report["checksum"], sum_of_words(&bytes));
    // Every byte was read from the file at least once (a page evicted before its turn is
    // read again).
    assert!(report["bytes_read"].as_u64().unwrap() >= bytes.len() as u64);
    let budget = report["budget"].as_u64().unwrap();
    assert_eq!(budget, bytes.len() as u64 / 4);
    // One frame per handler thread may be in flight over the budget.
    let peak = report["peak_resident_bytes"].as_u64().unwrap();
    assert!(
        peak <= budget + 4 * 16 * 1024,
        "peak {peak} over budget {budget}"
    );
    assert!(report["evictions"].as_u64().unwrap() > 0);

    let text = mmapkit(&["page", path, "--budget", "1M", "--random", "500"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("500 random 4 KiB reads"), "{text}");
    assert!(text.contains("fault latency"), "{text}");
}

#[test]
fn a_seekable_zstd_archive_is_read_as_the_data_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.zst");
    let bytes = data(3 * 1024 * 1024);
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = mmapkit::pager::SeekableWriter::new(file, 256 * 1024, 3).unwrap();
    writer.write_all(&bytes).unwrap();
    writer.finish().unwrap();
    let report = json(&["page", path.to_str().unwrap(), "--json"]);
    assert_eq!(report["store"], "seekable zstd");
    assert_eq!(report["size"], bytes.len() as u64);
    assert_eq!(report["checksum"], sum_of_words(&bytes));
}

#[test]
fn bad_input_fails_with_a_message_and_the_right_exit_code() {
    let missing = mmapkit(&["page", "/nonexistent/file"]);
    assert_eq!(missing.status.code(), Some(1));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(message.contains("no such file"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, data(1 << 20)).unwrap();
    let path = path.to_str().unwrap();
    // Every value that is wrong in itself is a usage error, even one known to be wrong only
    // once the file is open.
    for bad in [
        &["--budget", "1K"][..],
        &["--budget", "1"],
        &["--page-size", "2G"],
        &["--handlers", "0"],
        &["--handlers", "1000"],
    ] {
        let output = mmapkit(&[&["page", path][..], bad].concat());
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {output:?}");
    }
    let tiny = mmapkit(&["page", path, "--budget", "1K"]);
    assert!(String::from_utf8_lossy(&tiny.stderr).contains("fewer than two"));
    // The handlers reported are the handlers that ran.
    let one = mmapkit(&["page", path, "--handlers", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(report["handlers"], 1, "{report}");

    // What cannot be paged says why.
    for (source, reason) in [
        (
            "https://127.0.0.1/data.bin",
            "scheme is not supported: only http://",
        ),
        (
            "ftp://127.0.0.1/data.bin",
            "scheme is not supported: only http://",
        ),
        (
            "/proc/self/status",
            "files in /proc and /sys report a size of 0",
        ),
    ] {
        let output = mmapkit(&["page", source]);
        assert_eq!(output.status.code(), Some(1), "{source}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(reason), "{source}: {message}");
    }

    let odd_page = mmapkit(&["page", path, "--page-size", "6K"]);
    assert_eq!(odd_page.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&odd_page.stderr).contains("multiple of the system page"));
    for zero in [
        &["--page-size", "0"],
        &["--page-size", "37%"],
        &["--budget", "0"],
        &["--budget", "0%"],
    ] {
        assert_eq!(
            mmapkit(&[&["page", path][..], zero].concat()).status.code(),
            Some(2)
        );
    }

    assert_eq!(
        mmapkit(&["page", path, "--budget", "12Q"]).status.code(),
        Some(2)
    );
    assert_eq!(mmapkit(&["page"]).status.code(), Some(2));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let output = mmapkit(&["page", empty.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"));

    // A FIFO with no writer would block a plain open for ever.
    let fifo = dir.path().join("fifo");
    common::make_fifo(&fifo);
    let output = mmapkit(&["page", fifo.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("regular file"));
}

#[test]
fn without_a_budget_a_file_larger_than_memory_gets_half_of_what_is_available() {
    let available = common::memory_available();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(2 * available)
        .unwrap();
    let report = json(&["page", path.to_str().unwrap(), "--random", "10", "--json"]);
    let budget = report["budget"].as_u64().expect("a budget was set");
    // MemAvailable moves a little between the two readings.
    assert!(
        budget > available / 3 && budget < available * 2 / 3,
        "{budget} of {available}"
    );
}

#[test]
fn explicit_access_reads_the_same_bytes_without_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let bytes = data(4 * 1024 * 1024 + 13);
    std::fs::write(&path, &bytes).unwrap();
    let path = path.to_str().unwrap();
    let scan = json(&["page", path, "--budget", "1M", "--explicit", "--json"]);
    assert_eq!(scan["checksum"], sum_of_words(&bytes).as_str(), "{scan}");
    assert_eq!(scan["explicit"], true);
    assert_eq!(scan["faults"], 0, "{scan}");
    assert!(scan["explicit_fills"].as_u64().unwrap() >= 1025, "{scan}");
    assert!(
        scan["peak_resident_bytes"].as_u64().unwrap() <= 1 << 20,
        "{scan}"
    );
    let random = json(&[
        "page",
        path,
        "--budget",
        "1M",
        "--random",
        "3000",
        "--explicit",
        "--json",
    ]);
    assert_eq!(
        (random["mode"].as_str(), random["reads"].as_u64()),
        (Some("random"), Some(3000))
    );
    assert_eq!(random["faults"], 0, "{random}");
    assert!(random["explicit_fills"].as_u64().unwrap() > 0, "{random}");
    let text = mmapkit(&["page", path, "--random", "100", "--explicit"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("explicit access") && text.contains("reads/s"),
        "{text}"
    );
}
