//! Multi-process behaviour, with real processes made by fork(2).
//!
//! fork inside libtest's thread pool is hazardous (a child inherits locks other threads held),
//! so this target runs without the harness (`harness = false`): `main` runs each case in turn
//! on the one thread. Parent and child synchronise over pipes, never with sleeps. Pass a word
//! to run only the cases whose name contains it.

mod common;

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

use common::processes::{self, Ended, fork, wait};
use common::{file_with, pattern};
use mmapkit::{MapOptions, Protection};

fn main() {
    let cases: &[(&str, fn())] = &[
        (
            "shared_anonymous_and_dev_zero_show_later_writes",
            shared_anonymous_and_dev_zero_show_later_writes,
        ),
        (
            "private_anonymous_writes_stay_in_their_process",
            private_anonymous_writes_stay_in_their_process,
        ),
        (
            "private_file_write_reaches_neither_file_nor_other_process",
            private_file_write_reaches_neither_file_nor_other_process,
        ),
        (
            "atomics_in_shared_memory_count_across_processes",
            atomics_in_shared_memory_count_across_processes,
        ),
        (
            "write_to_read_only_page_kills_child_with_sigsegv",
            write_to_read_only_page_kills_child_with_sigsegv,
        ),
    ];
    processes::run(cases);
}

/// A one-byte-message pipe between parent and child.
struct Signal {
    read: i32,
    write: i32,
}

impl Signal {
    fn new() -> Signal {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        Signal {
            read: fds[0],
            write: fds[1],
        }
    }

    fn send(&self) {
        // SAFETY: writes one byte from a valid buffer to our own pipe.
        let written = unsafe { libc::write(self.write, [1u8].as_ptr().cast(), 1) };
        assert_eq!(written, 1);
    }

    fn wait(&self) {
        let mut byte = [0u8];
        // SAFETY: reads one byte into a valid buffer from our own pipe.
        let read = unsafe { libc::read(self.read, byte.as_mut_ptr().cast(), 1) };
        assert_eq!(read, 1);
    }
}

fn read_string(map: &mmapkit::Mapping) -> String {
    let mut bytes = vec![0u8; 32];
    map.read_at(0, &mut bytes).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn write_string(map: &mmapkit::Mapping, text: &str) {
    map.write_at(0, text.as_bytes()).unwrap();
    map.write_at(text.len(), &[0]).unwrap();
}

/// The seed's program as a test: the child sees what the parent writes after the fork, in
/// both shared anonymous memory and a shared mapping of /dev/zero.
fn shared_anonymous_and_dev_zero_show_later_writes() {
    let anonymous = MapOptions::new()
        .len(4096)
        .shared()
        .map_anonymous()
        .unwrap();
    let zero_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    let zero = MapOptions::new()
        .len(4096)
        .write(true)
        .map_file(&zero_file)
        .unwrap();
    write_string(&anonymous, "anonymous string 1");
    write_string(&zero, "zero-backed string 1");
    let (ready, written) = (Signal::new(), Signal::new());
    let child = fork(|| {
        let before = (read_string(&anonymous), read_string(&zero));
        ready.send();
        written.wait();
        let after = (read_string(&anonymous), read_string(&zero));
        let expected_before = ("anonymous string 1".into(), "zero-backed string 1".into());
        let expected_after = ("anonymous string 2".into(), "zero-backed string 2".into());
        i32::from(before != expected_before || after != expected_after)
    });
    ready.wait();
    write_string(&anonymous, "anonymous string 2");
    write_string(&zero, "zero-backed string 2");
    written.send();
    assert_eq!(wait(child), Ended::Exited(0));
}

fn private_anonymous_writes_stay_in_their_process() {
    let private = MapOptions::new().len(4096).map_anonymous().unwrap();
    write_string(&private, "before fork");
    let (ready, written, child_wrote) = (Signal::new(), Signal::new(), Signal::new());
    let child = fork(|| {
        ready.send();
        written.wait();
        let unchanged = read_string(&private) == "before fork";
        write_string(&private, "child's copy");
        child_wrote.send();
        i32::from(!unchanged)
    });
    ready.wait();
    write_string(&private, "parent's copy");
    written.send();
    child_wrote.wait();
    assert_eq!(
        wait(child),
        Ended::Exited(0),
        "the child saw the parent's private write"
    );
    assert_eq!(read_string(&private), "parent's copy");
}

fn private_file_write_reaches_neither_file_nor_other_process() {
    let contents = pattern(8192);
    let file = file_with(&contents);
    let path = file.path().to_owned();
    let (ready, written) = (Signal::new(), Signal::new());
    let child = fork(|| {
        let shared = MapOptions::new().map_path(&path).unwrap();
        ready.send();
        written.wait();
        let mut seen = vec![0u8; 8192];
        shared.read_at(0, &mut seen).unwrap();
        i32::from(seen != pattern(8192))
    });
    let private = MapOptions::new()
        .write(true)
        .private()
        .map_path(&path)
        .unwrap();
    ready.wait();
    private.write_at(0, &[0xEE; 8192]).unwrap();
    private.flush().unwrap();
    written.send();
    assert_eq!(
        wait(child),
        Ended::Exited(0),
        "the other process saw the private write"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        contents,
        "the file saw the private write"
    );
}

fn atomics_in_shared_memory_count_across_processes() {
    let map = MapOptions::new()
        .len(4096)
        .shared()
        .map_anonymous()
        .unwrap();
    let counter: &AtomicU64 = map.atomic(0).unwrap();
    let child = fork(|| {
        for _ in 0..100_000 {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        0
    });
    for _ in 0..100_000 {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(wait(child), Ended::Exited(0));
    assert_eq!(counter.load(Ordering::SeqCst), 200_000);
}

fn write_to_read_only_page_kills_child_with_sigsegv() {
    let mut map = MapOptions::new().len(2 * 4096).map_anonymous().unwrap();
    map.protect(4096.., Protection::READ).unwrap();
    let target = map.as_mut_ptr().wrapping_add(4096);
    let child = fork(|| {
        // SAFETY: deliberately writes to a read-only page to show the kernel's protection;
        // the child is expected to die of SIGSEGV here.
        unsafe { target.write_volatile(1) };
        0
    });
    assert_eq!(wait(child), Ended::Signalled(libc::SIGSEGV));
    assert_eq!(
        map.read_pod::<u8>(4096).unwrap(),
        0,
        "the parent lives on, memory unchanged"
    );
}
