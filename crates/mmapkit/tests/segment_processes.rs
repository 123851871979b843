//! Segments across processes: inherited by fork, passed across exec, sent to an unrelated
//! process over a Unix socket (read-write and read-only), and refused to another user.
//!
//! Runs without the libtest harness (fork in a threaded harness is hazardous). Children that
//! must be *unrelated* or *exec'd* are fresh copies of this binary started with
//! `MMAPKIT_SEGMENT_SCENARIO` naming their part.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use common::SegmentName;
use common::processes::{self, Ended, fork, wait};
use mmapkit::{ErrorKind, Segment, SegmentOptions};

const SCENARIO: &str = "MMAPKIT_SEGMENT_SCENARIO";
const SEGMENT_FD: &str = "MMAPKIT_TEST_SEGMENT_FD";
const SOCKET: &str = "MMAPKIT_TEST_SOCKET";

fn options() -> SegmentOptions {
    SegmentOptions::new("test/passing", 4096).unwrap()
}

fn main() {
    if let Ok(scenario) = std::env::var(SCENARIO) {
        let code = match scenario.as_str() {
            "exec-child" => exec_child(),
            "socket-child" => socket_child(),
            other => panic!("unknown scenario {other}"),
        };
        std::process::exit(code);
    }
    let cases: &[(&str, fn())] = &[
        (
            "fork_child_writes_and_parent_sees",
            fork_child_writes_and_parent_sees,
        ),
        (
            "exec_child_opens_inherited_descriptor",
            exec_child_opens_inherited_descriptor,
        ),
        (
            "unrelated_process_over_unix_socket",
            unrelated_process_over_unix_socket,
        ),
        ("another_user_is_refused", another_user_is_refused),
    ];
    processes::run(cases);
}

fn fork_child_writes_and_parent_sees() {
    let name = SegmentName::new("fork");
    let segment = options().create(&name).unwrap();
    let counter: &AtomicU64 = segment.atomic(0).unwrap();
    let child = fork(|| {
        segment.write_at(8, b"written by the child").unwrap();
        counter.fetch_add(1, Ordering::SeqCst);
        0
    });
    assert_eq!(wait(child), Ended::Exited(0));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    assert_eq!(
        &segment.read_pod::<[u8; 20]>(8).unwrap(),
        b"written by the child"
    );
}

fn exec_child_opens_inherited_descriptor() {
    let segment = options().create_memfd("exec").unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(SCENARIO, "exec-child");
    segment.pass_to(&mut command, SEGMENT_FD).unwrap();
    let status = command.status().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        &segment.read_pod::<[u8; 15]>(0).unwrap(),
        b"hello from exec"
    );
}

fn exec_child() -> i32 {
    let segment = options().from_inherited(SEGMENT_FD).unwrap();
    segment.write_at(0, b"hello from exec").unwrap();
    let again = options().from_inherited(SEGMENT_FD).unwrap_err();
    i32::from(again.kind() != ErrorKind::NotFound)
}

fn unrelated_process_over_unix_socket() {
    let directory = tempfile::tempdir().unwrap();
    let socket_path = directory.path().join("socket");
    let listener = UnixListener::bind(&socket_path).unwrap();
    let segment = options().create_memfd("socket").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, "socket-child")
        .env(SOCKET, &socket_path)
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    use std::os::fd::AsFd;
    segment.send(&stream, &[eventfd.as_fd()]).unwrap();
    segment.send_read_only(&stream, &[]).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        &segment.read_pod::<[u8; 18]>(0).unwrap(),
        b"from a stranger rw"
    );
    let mut count = [0u8; 8];
    rustix::io::read(&eventfd, &mut count).unwrap();
    assert_eq!(u64::from_ne_bytes(count), 1, "the extra descriptor arrived");
}

fn socket_child() -> i32 {
    let stream = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    let (writable, extra) = options().receive(&stream).unwrap();
    writable.write_at(0, b"from a stranger rw").unwrap();
    rustix::io::write(&extra[0], &1u64.to_ne_bytes()).unwrap();
    let (read_only, _) = options().receive(&stream).unwrap();
    let refused = read_only.write_at(0, b"xx").unwrap_err().kind() == ErrorKind::PermissionDenied;
    let reads = read_only.read_pod::<[u8; 18]>(0).unwrap() == *b"from a stranger rw";
    // Not even the kernel lets this mapping become writable.
    let descriptor_read_only = mmapkit::MapOptions::new()
        .write(true)
        .len(4096)
        .map_fd(read_only.fd())
        .is_err();
    i32::from(!(refused && reads && descriptor_read_only))
}

fn another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let name = SegmentName::new("owner-only");
    let _segment: Segment = options().create(&name).unwrap();
    let child = fork(|| {
        // SAFETY: drops privileges in the child only; nobody (65534) exists on every Linux.
        if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
            return 2;
        }
        let error = options().open(&name).unwrap_err();
        i32::from(error.kind() != ErrorKind::PermissionDenied)
    });
    assert_eq!(wait(child), Ended::Exited(0));
}
