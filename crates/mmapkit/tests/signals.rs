//! The fault guard among other SIGBUS handlers: a SIGBUS that is not the guard's must reach
//! whoever would have received it without mmapkit, and the guard must keep working after.
//!
//! Each scenario needs a process in which the guard has not been installed yet, so that the
//! handler set up before it is the one under test. `main` therefore runs every scenario in a
//! fresh copy of this binary (exec'd with `MMAPKIT_SIGNAL_SCENARIO` naming it) and checks how
//! that process ended. Runs without the libtest harness (`harness = false`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::processes::Ended;
use common::{file_with, pattern};
use mmapkit::{ErrorKind, MapOptions, Mapping};

const SCENARIO: &str = "MMAPKIT_SIGNAL_SCENARIO";

const APPLICATION_HANDLER_EXIT: i32 = 42;

type Scenario = (&'static str, fn() -> i32, Ended);

fn scenarios() -> [Scenario; 5] {
    [
        (
            "foreign_fault_kills",
            foreign_fault_kills,
            Ended::Signalled(libc::SIGBUS),
        ),
        (
            "foreign_fault_reaches_the_application_handler",
            foreign_fault_reaches_the_application_handler,
            Ended::Exited(APPLICATION_HANDLER_EXIT),
        ),
        (
            "kill_with_the_default_action_kills",
            kill_with_the_default_action_kills,
            Ended::Signalled(libc::SIGBUS),
        ),
        (
            "kill_reaches_the_application_and_the_guard_stays",
            kill_reaches_the_application_and_the_guard_stays,
            Ended::Exited(0),
        ),
        (
            "kill_while_ignored_is_ignored",
            kill_while_ignored_is_ignored,
            Ended::Exited(0),
        ),
    ]
}

fn main() {
    if let Ok(name) = std::env::var(SCENARIO) {
        let (_, scenario, _) = scenarios()
            .into_iter()
            .find(|(candidate, _, _)| *candidate == name)
            .expect("unknown scenario");
        std::process::exit(scenario());
    }
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let mut ran = 0;
    for (name, _, expected) in scenarios() {
        if filter
            .as_ref()
            .is_some_and(|filter| !name.contains(filter.as_str()))
        {
            continue;
        }
        let status = Command::new(std::env::current_exe().unwrap())
            .env(SCENARIO, name)
            .status()
            .unwrap();
        let ended = match status.signal() {
            Some(signal) => Ended::Signalled(signal),
            None => Ended::Exited(status.code().unwrap()),
        };
        assert_eq!(ended, expected, "scenario {name}");
        println!("test {name} ... ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed");
}

/// A mapping of a file that was then truncated to nothing, and the file (kept alive).
fn truncated_mapping() -> (Mapping, tempfile::NamedTempFile) {
    let file = file_with(&pattern(2 * 4096));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    file.as_file().set_len(0).unwrap();
    (map, file)
}

fn guard_reports_truncation(map: &Mapping) -> bool {
    map.read_pod::<u8>(4096).map_err(|error| error.kind()) == Err(ErrorKind::Truncated)
}

/// Reads a truncated page outside the guard: a fault the guard must pass on.
fn unguarded_read(map: &Mapping) -> i32 {
    // SAFETY: deliberately reads a truncated page outside the guard; the scenario expects the
    // process to end here, by the signal or by the application's handler.
    i32::from(unsafe { map.as_ptr().add(4096).read_volatile() })
}

fn install(handler: usize, flags: i32) {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = flags;
    // SAFETY: the handlers installed here only call _exit or store to an atomic.
    let installed = unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) };
    assert_eq!(installed, 0);
}

fn raise_sigbus() {
    // SAFETY: sends SIGBUS to this process, as kill(2) from outside would.
    unsafe { libc::raise(libc::SIGBUS) };
}

extern "C" fn exiting_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(APPLICATION_HANDLER_EXIT) };
}

static APPLICATION_SAW_SIGBUS: AtomicBool = AtomicBool::new(false);

extern "C" fn recording_handler(_: i32) {
    APPLICATION_SAW_SIGBUS.store(true, Ordering::SeqCst);
}

/// Rust's own handler is the previous one: it passes the fault to the default action.
fn foreign_fault_kills() -> i32 {
    let (map, _file) = truncated_mapping();
    if !guard_reports_truncation(&map) {
        return 2;
    }
    unguarded_read(&map)
}

fn foreign_fault_reaches_the_application_handler() -> i32 {
    install(exiting_handler as *const () as usize, libc::SA_SIGINFO);
    let (map, _file) = truncated_mapping();
    if !guard_reports_truncation(&map) {
        return 2;
    }
    unguarded_read(&map)
}

fn kill_with_the_default_action_kills() -> i32 {
    install(libc::SIG_DFL, 0);
    let (map, _file) = truncated_mapping();
    if !guard_reports_truncation(&map) {
        return 2;
    }
    raise_sigbus();
    3
}

fn kill_reaches_the_application_and_the_guard_stays() -> i32 {
    install(recording_handler as *const () as usize, 0);
    let (map, _file) = truncated_mapping();
    if !guard_reports_truncation(&map) {
        return 2;
    }
    raise_sigbus();
    if !APPLICATION_SAW_SIGBUS.load(Ordering::SeqCst) {
        return 3;
    }
    if guard_reports_truncation(&map) { 0 } else { 4 }
}

fn kill_while_ignored_is_ignored() -> i32 {
    install(libc::SIG_IGN, 0);
    let (map, _file) = truncated_mapping();
    if !guard_reports_truncation(&map) {
        return 2;
    }
    raise_sigbus();
    if guard_reports_truncation(&map) { 0 } else { 4 }
}
