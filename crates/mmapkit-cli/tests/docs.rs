//! Shell completions and manual pages, as a shell and man read them: bash completes our
//! commands and options from the script, and every command has a page that names its options.

use std::process::Command;

mod common;
use common::mmapkit;

/// What bash offers after `words` (the last one being completed), with our script loaded.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = String::from_utf8(mmapkit(&["completions", "bash"]).stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mmapkit.bash");
    std::fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|word| format!("'{word}'")).collect();
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _mmapkit mmapkit '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let output = Command::new("bash")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_options() {
    let commands = bash_completes(&["mmapkit", ""]);
    for command in [
        "residency",
        "fincore",
        "maps",
        "shm",
        "page",
        "completions",
        "man",
    ] {
        assert!(
            commands.iter().any(|c| c == command),
            "{command}: {commands:?}"
        );
    }
    let options = bash_completes(&["mmapkit", "residency", "--pi"]);
    assert_eq!(options, ["--pidfile"]);
    let options = bash_completes(&["mmapkit", "maps", "--sh"]);
    assert_eq!(options, ["--show-path"]);
    assert_eq!(mmapkit(&["completions", "tcsh"]).status.code(), Some(2));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = mmapkit(&["completions", shell]);
        assert!(
            script.status.success() && !script.stdout.is_empty(),
            "{shell}"
        );
    }
}

#[test]
fn every_command_has_a_page_naming_its_options() {
    let page = String::from_utf8(mmapkit(&["man"]).stdout).unwrap();
    assert!(
        page.starts_with(".ie") && page.contains(".TH mmapkit 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let written = mmapkit(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(written.status.success(), "{written:?}");
    for (command, option) in [
        ("residency", "pidfile"),
        ("fincore", "noheadings"),
        ("maps", "range"),
        ("shm-clean", "prefix"),
        ("page", "budget"),
    ] {
        let page = std::fs::read_to_string(dir.path().join(format!("mmapkit-{command}.1")))
            .unwrap_or_else(|error| panic!("mmapkit-{command}.1: {error}"));
        assert!(
            page.contains(&format!("\\-\\-{option}")),
            "{command}: {page}"
        );
    }
    // A symbolic link planted in the directory is not written through.
    let target = dir.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::fs::remove_file(dir.path().join("mmapkit.1")).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("mmapkit.1")).unwrap();
    let planted = mmapkit(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(planted.status.code(), Some(1), "{planted:?}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");

    let refused = mmapkit(&["man", "--dir", "/proc/version/x"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
}
