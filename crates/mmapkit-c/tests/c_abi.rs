//! The C ABI from C: the examples compiled with the system `cc` against libmmapkit and run,
//! a garbage-argument program under AddressSanitizer, the exported symbols, and Python's
//! ctypes as a consumer that is not C.
//!
//! The libraries come from `cargo build -p mmapkit-c`, which the tests run first: cargo
//! builds a cdylib or staticlib for `cargo build`, not for the tests of its own crate, and a
//! library left from an earlier build would be tested instead of the code at hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// target/debug (or CARGO_TARGET_DIR's), where `cargo build -p mmapkit-c` leaves the
/// libraries.
fn library(name: &str) -> PathBuf {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "mmapkit-c"])
            .current_dir(root())
            .status()
            .expect("cargo starts");
        assert!(built.success(), "cargo build -p mmapkit-c failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing after `cargo build -p mmapkit-c`",
        path.display()
    );
    path
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Compiles `source` against the static library (with `extra` flags) into `dir`.
fn compile(source: &Path, dir: &Path, extra: &[&str]) -> PathBuf {
    let binary = dir.join(source.file_stem().unwrap());
    run(Command::new("cc")
        .args(extra)
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg(library("libmmapkit.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&binary));
    binary
}

#[test]
fn the_seed_program_prints_its_four_lines() {
    let dir = tempfile::tempdir().unwrap();
    let seed = compile(&root().join("examples/c/seed.c"), dir.path(), &[]);
    let output = run(&mut Command::new(seed));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let body = |line: &str| line.split_once(":\t").unwrap().1.to_owned();
    let pid = |line: &str| line.split_once(":\t").unwrap().0.to_owned();
    assert_eq!(body(lines[0]), "anonymous string 1, zero-backed string 1");
    assert_eq!(body(lines[1]), "anonymous string 1, zero-backed string 1");
    assert_eq!(body(lines[2]), "anonymous string 2, zero-backed string 2");
    // The child, after the parent's second write, sees it through both shared mappings.
    assert_eq!(body(lines[3]), "anonymous string 2, zero-backed string 2");
    assert_eq!(pid(lines[0]), pid(lines[2]));
    assert_eq!(pid(lines[1]), pid(lines[3]));
    assert_ne!(pid(lines[0]), pid(lines[1]));
}

#[test]
fn a_truncated_file_is_an_error_code_not_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(&root().join("examples/c/truncate.c"), dir.path(), &[]);
    let output = run(Command::new(program).arg(dir.path().join("data")));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("read_at(4096) after truncation: MMAPKIT_ETRUNCATED\n"),
        "{text}"
    );
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn a_killed_sender_is_disconnected_for_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(&root().join("examples/c/channel.c"), dir.path(), &[]);
    let name = format!("mmapkit-c-channel-{}", std::process::id());
    let output = run(Command::new(program).arg(&name));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "received: one\nreceived: two\nreceived: three\n\
         after kill -9 of the sender: MMAPKIT_EDISCONNECTED\n"
    );
    assert!(!Path::new("/dev/shm").join(&name).exists());
}

/// How a C test program runs: under AddressSanitizer, or plain for what forks (GCC 12's ASan
/// allocator is not fork-safe; see lifecycle.c).
enum Build {
    Asan,
    Plain,
}

/// Compiles tests/`file` as `build` says, runs it with `args`, and checks it counted no
/// failure.
fn run_c_test(file: &str, build: Build, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(file);
    let output = match build {
        Build::Asan => {
            let program = compile(&source, dir.path(), &["-fsanitize=address", "-g"]);
            run(Command::new(program)
                .args(args)
                .env("ASAN_OPTIONS", "detect_leaks=0"))
        }
        Build::Plain => run(Command::new(compile(&source, dir.path(), &["-g"])).args(args)),
    };
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.ends_with("0 failures\n"), "{text}");
}

#[test]
fn garbage_handles_and_absurd_lengths_are_errors_under_asan() {
    run_c_test("garbage.c", Build::Asan, &[]);
}

#[test]
fn handles_and_threads_under_asan() {
    run_c_test("lifecycle.c", Build::Asan, &[]);
}

#[test]
fn fork_handlers_of_other_libraries_may_call_in() {
    // Hung forks are timed out by the program itself.
    run_c_test("lifecycle.c", Build::Plain, &["others-atfork"]);
}

#[test]
fn a_first_call_with_a_cancellation_pending_returns() {
    run_c_test("lifecycle.c", Build::Plain, &["first-call-cancelled"]);
}

#[test]
fn a_fork_amid_calls_in_other_threads_never_hangs_the_child() {
    run_c_test("lifecycle.c", Build::Plain, &["fork"]);
}

#[test]
fn the_header_compiles_as_strict_c99() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("strict.c");
    // After the system headers a C program includes too: the header declares nothing of
    // theirs again (-Wredundant-decls; a redeclaration is reported where it is made).
    std::fs::write(
        &source,
        "#define _GNU_SOURCE\n#include <pthread.h>\n#include <signal.h>\n#include <stdio.h>\n\
         #include <stdlib.h>\n#include <string.h>\n#include <sys/mman.h>\n#include <unistd.h>\n\
         #include \"mmapkit.h\"\nint main(void) { return MMAPKIT_OK; }\n",
    )
    .unwrap();
    run(Command::new("cc")
        .args([
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Wredundant-decls",
            "-Werror",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&source)
        .arg("-fsyntax-only"));
}

#[test]
fn only_mmapkit_symbols_are_exported() {
    let output = run(Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(library("libmmapkit.so")));
    let symbols: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(
        symbols.iter().any(|name| name == "mmapkit_map_path"),
        "{symbols:?}"
    );
    let foreign: Vec<&String> = symbols
        .iter()
        .filter(|name| !name.starts_with("mmapkit_"))
        .collect();
    assert!(foreign.is_empty(), "exported beyond mmapkit_*: {foreign:?}");
}

#[test]
fn python_ctypes_maps_a_file_through_the_c_abi() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greeting");
    std::fs::write(&file, b"hello from a file, read through libmmapkit").unwrap();
    let script = r#"
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.mmapkit_last_error_message.restype = ctypes.c_char_p
lib.mmapkit_status_name.restype = ctypes.c_char_p
handle = ctypes.c_void_p()
status = lib.mmapkit_map_path(sys.argv[2].encode(), 0, ctypes.c_uint64(0), ctypes.c_size_t(0), ctypes.byref(handle))
assert status == 0, lib.mmapkit_last_error_message()
length = ctypes.c_size_t()
assert lib.mmapkit_mapping_len(handle, ctypes.byref(length)) == 0
buf = ctypes.create_string_buffer(length.value)
assert lib.mmapkit_mapping_read_at(handle, ctypes.c_size_t(0), buf, length) == 0
print(buf.raw.decode())
status = lib.mmapkit_mapping_read_at(handle, ctypes.c_size_t(length.value), buf, ctypes.c_size_t(1))
print(lib.mmapkit_status_name(status).decode())
assert lib.mmapkit_mapping_unmap(handle) == 0
status = lib.mmapkit_mapping_len(handle, ctypes.byref(length))
print(lib.mmapkit_status_name(status).decode())
"#;
    let output = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(library("libmmapkit.so"))
        .arg(&file));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "hello from a file, read through libmmapkit\nMMAPKIT_EOUTOFBOUNDS\nMMAPKIT_EINVAL\n"
    );
}
