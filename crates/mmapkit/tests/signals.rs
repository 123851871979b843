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
use mmapkit::{ErrorKind, MapOptions, Mapping, SegmentOptions};

const SCENARIO: &str = "MMAPKIT_SIGNAL_SCENARIO";

const APPLICATION_HANDLER_EXIT: i32 = 42;

type Scenario = (&'static str, fn() -> i32, Ended);

fn scenarios() -> [Scenario; 6] {
    [
        (
            "guarded_copies_report_truncation_in_a_thread_that_blocks_every_signal",
            guarded_copies_report_truncation_in_a_thread_that_blocks_every_signal,
            Ended::Exited(0),
        ),
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

/// Blocks every signal in the calling thread, as worker threads of signal-handling designs do.
fn block_every_signal() {
    // SAFETY: an all-zero sigset_t is a valid value to fill in.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid; this changes the calling thread's mask only.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

fn sigbus_is_blocked() -> bool {
    // SAFETY: an all-zero sigset_t is a valid value to fill in.
    let mut current: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: reads the calling thread's mask into a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
        libc::sigismember(&current, libc::SIGBUS) == 1
    }
}

/// A store whose every read fails, so that each page of a region over it is poisoned.
struct FailingStore;

impl mmapkit::pager::Store for FailingStore {
    fn len(&self) -> u64 {
        1 << 20
    }

    fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("no such page"))
    }
}

/// Each guarded accessor, on a truncated file, a truncated named segment and a pager page
/// that failed, from a thread that blocks SIGBUS: errors, and the mask as it was. The kernel
/// kills a process whose blocked thread faults, so failing means dying of SIGBUS.
fn guarded_copies_report_truncation_in_a_thread_that_blocks_every_signal() -> i32 {
    use std::io::Read;
    let checks = std::thread::spawn(|| {
        block_every_signal();
        let (map, _file) = truncated_mapping();
        let mut buf = [0u8; 4096];
        let mut cursor = map.cursor();
        let kinds = [
            map.read_at(4096, &mut buf).map_err(|e| e.kind()),
            map.read_pod::<u64>(0).map(drop).map_err(|e| e.kind()),
            cursor.read(&mut buf).map(drop).map_err(|e| {
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<mmapkit::Error>())
                    .map_or(ErrorKind::Io, |error| error.kind())
            }),
            map.find(b"needle", ..).map(drop).map_err(|e| e.kind()),
        ];
        if kinds.iter().any(|kind| *kind != Err(ErrorKind::Truncated)) {
            eprintln!("file mapping: {kinds:?}");
            return 10;
        }
        let name = format!("mmapkit-test-{}-blocked", std::process::id());
        let segment = SegmentOptions::new("test/blocked", 16384)
            .unwrap()
            .create(&name)
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/dev/shm/{name}"))
            .unwrap()
            .set_len(0)
            .unwrap();
        let _ = mmapkit::shm::unlink(&name);
        let read = segment.read_at(8192, &mut buf).map_err(|e| e.kind());
        let write = segment.write_at(8192, b"x").map_err(|e| e.kind());
        if read != Err(ErrorKind::Truncated) || write != Err(ErrorKind::Truncated) {
            eprintln!("named segment: {read:?} {write:?}");
            return 11;
        }
        if let Ok(region) = mmapkit::pager::Pager::new(FailingStore)
            .page_size(4096)
            .build()
        {
            let kind = region.read_at(8192, &mut buf).map_err(|e| e.kind());
            if kind != Err(ErrorKind::Store) {
                eprintln!("pager: {kind:?}");
                return 12;
            }
        }
        if !sigbus_is_blocked() {
            eprintln!("the thread's mask was not restored");
            return 13;
        }
        // With the promise taken, SIGBUS is unblocked until the last promise goes.
        // SAFETY: this thread blocks nothing while the promises live.
        let first = unsafe { mmapkit::fault::SigbusUnblocked::promise() };
        // SAFETY: as above.
        let second = unsafe { mmapkit::fault::SigbusUnblocked::promise() };
        if sigbus_is_blocked()
            || map.read_at(4096, &mut buf).map_err(|e| e.kind()) != Err(ErrorKind::Truncated)
        {
            return 14;
        }
        drop(first);
        if sigbus_is_blocked()
            || map.read_pod::<u8>(4096).map_err(|e| e.kind()) != Err(ErrorKind::Truncated)
        {
            eprintln!("dropping one of two promises blocked SIGBUS");
            return 15;
        }
        drop(second);
        if !sigbus_is_blocked() {
            eprintln!("the last promise did not block SIGBUS again");
            return 16;
        }
        0
    });
    checks.join().unwrap_or(101)
}
