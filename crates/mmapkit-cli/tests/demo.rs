//! `mmapkit demo`, run as a real process.

mod common;
use common::mmapkit;

fn pid_and_text(line: &str) -> (u32, &str) {
    let rest = line
        .strip_prefix("PID ")
        .unwrap_or_else(|| panic!("not a PID line: {line:?}"));
    let (pid, text) = rest.split_once(":\t").unwrap();
    (pid.parse().unwrap(), text)
}

#[test]
fn shared_demo_prints_the_seed_programs_four_lines() {
    let output = mmapkit(&["demo", "--time-scale", "0"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<(u32, &str)> = stdout.lines().map(pid_and_text).collect();
    let string_1 = "anonymous string 1, zero-backed string 1";
    let string_2 = "anonymous string 2, zero-backed string 2";
    assert_eq!(lines.len(), 4, "{stdout}");
    let (parent, child) = (lines[0].0, lines[1].0);
    assert_ne!(parent, child, "the second line comes from the forked child");
    assert_eq!(
        lines,
        [
            (parent, string_1),
            (child, string_1),
            (parent, string_2),
            (child, string_2)
        ],
        "the child sees the parent's later write"
    );
}

#[test]
fn private_demo_shows_copy_on_write() {
    let output = mmapkit(&["demo", "private", "--time-scale", "0"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<(u32, &str)> = stdout
        .lines()
        .filter(|l| l.starts_with("PID"))
        .map(pid_and_text)
        .collect();
    let texts: Vec<&str> = lines.iter().map(|&(_, text)| text).collect();
    assert_eq!(
        texts,
        [
            "private string 1",
            "private string 1",
            "private string 2",
            "private string 1"
        ]
    );
    assert!(
        stdout.contains("the mapping reads: \"private edit\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("the file reads:    \"file contents\""),
        "{stdout}"
    );
}

#[test]
fn all_demos_run_and_truncation_is_an_error() {
    let output = mmapkit(&["demo", "--all", "--time-scale", "0"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    for heading in [
        "== shared ==",
        "== private ==",
        "== msync ==",
        "== truncate ==",
    ] {
        assert!(stdout.contains(heading), "{stdout}");
    }
    assert!(
        stdout.contains("read(2) returns \"hello from the mapping\""),
        "{stdout}"
    );
    assert!(stdout.contains("returned Truncated"), "{stdout}");
}

#[test]
fn exit_codes_tell_usage_errors_from_failures() {
    assert!(mmapkit(&["demo", "--help"]).status.success());
    assert!(mmapkit(&["--help"]).status.success());
    assert_eq!(mmapkit(&["no-such-command"]).status.code(), Some(2));
    for scale in ["-1", "nan", "inf", "1e300"] {
        let refused = mmapkit(&["demo", &format!("--time-scale={scale}")]);
        assert_eq!(refused.status.code(), Some(2), "{scale}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--time-scale"));
    }
}
