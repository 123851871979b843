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
            "foreign-descriptors-child" => foreign_descriptors_child(),
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
        (
            "a_read_only_receiver_of_another_user_cannot_write_any_kind",
            a_read_only_receiver_of_another_user_cannot_write_any_kind,
        ),
        (
            "read_only_duplicates_of_a_segment_others_may_write_are_refused",
            read_only_duplicates_of_a_segment_others_may_write_are_refused,
        ),
        (
            "from_inherited_leaves_descriptors_it_does_not_own_open",
            from_inherited_leaves_descriptors_it_does_not_own_open,
        ),
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

/// Drops to user nobody in a forked child; false if that failed.
fn become_nobody() -> bool {
    // SAFETY: changes the credentials of this (single-threaded, forked) child only.
    unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(65534) == 0
            && libc::setuid(65534) == 0
    }
}

/// Everything a read-only receiver could try to get write access; returns the attempts that
/// worked (none, if the promise holds). Each successful attempt also writes `X` into the
/// payload, so the owner sees the damage.
fn try_to_write(segment: &Segment) -> Vec<&'static str> {
    use std::os::fd::AsRawFd;
    let mut worked = Vec::new();
    let fd = segment.fd();
    let reopened = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if let Ok(writable) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&reopened)
    {
        worked.push("reopen /proc/self/fd read-write");
        if let Ok(map) = mmapkit::MapOptions::new().write(true).map_file(&writable) {
            let _ = map.write_at(mmapkit::shm::header::HEADER_SIZE, b"X");
            worked.push("map the reopened descriptor writable");
        }
    }
    if let Ok(map) = mmapkit::MapOptions::new().write(true).map_fd(fd) {
        let _ = map.write_at(mmapkit::shm::header::HEADER_SIZE, b"X");
        worked.push("map the descriptor writable");
    }
    if let Ok(mut map) = mmapkit::MapOptions::new().map_fd(fd)
        && map.protect(.., mmapkit::Protection::READ_WRITE).is_ok()
    {
        let _ = map.write_at(mmapkit::shm::header::HEADER_SIZE, b"X");
        worked.push("mprotect a read-only map writable");
    }
    if rustix::io::pwrite(fd, b"X", mmapkit::shm::header::HEADER_SIZE as u64).is_ok() {
        worked.push("pwrite");
    }
    if rustix::fs::ftruncate(fd, 0).is_ok() {
        worked.push("ftruncate");
    }
    if segment.write_at(0, b"X").is_ok() {
        worked.push("Segment::write_at");
    }
    worked
}

fn a_read_only_receiver_of_another_user_cannot_write_any_kind() {
    if !rustix::process::geteuid().is_root() {
        println!("(skipped: changing user needs root)");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let name = SegmentName::new("read-only");
    let segments = [
        ("memfd", options().create_memfd("read-only").unwrap()),
        ("named", options().create(&name).unwrap()),
        (
            "file",
            options()
                .create_file_with(directory.path().join("segment"), |_| Ok(()))
                .unwrap(),
        ),
    ];
    for (kind, segment) in &segments {
        segment.write_at(0, b"owner").unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = fork(|| {
            if !become_nobody() {
                return 2;
            }
            let (received, _) = options().receive(&theirs).unwrap();
            let worked = try_to_write(&received);
            if worked.is_empty() {
                0
            } else {
                eprintln!("a read-only receiver could: {worked:?}");
                1
            }
        });
        segment.send_read_only(&ours, &[]).unwrap();
        assert_eq!(wait(child), Ended::Exited(0), "{kind} segment");
        assert_eq!(&segment.read_pod::<[u8; 5]>(0).unwrap(), b"owner", "{kind}");
    }
}

fn read_only_duplicates_of_a_segment_others_may_write_are_refused() {
    let name = SegmentName::new("group-writable");
    let mut open_to_all = options();
    open_to_all.mode(0o666);
    // SAFETY: umask only affects this process's later file creations; the harness runs one
    // case at a time on one thread.
    let previous = unsafe { libc::umask(0) };
    let named = open_to_all.create(&name).unwrap();
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(previous) };
    let error = named.read_only_fd().unwrap_err();
    // A duplicate made while the mode was safe is refused once the mode lets others write.
    let memfd = options().create_memfd("chmod-later").unwrap();
    memfd.read_only_fd().unwrap();
    rustix::fs::fchmod(memfd.fd(), rustix::fs::Mode::from_raw_mode(0o666)).unwrap();
    let later = memfd.read_only_fd().unwrap_err();
    assert_eq!(later.kind(), ErrorKind::PermissionDenied, "{later}");
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    assert!(error.to_string().contains("0666"), "{error}");
    let memfd = open_to_all.create_memfd("open-to-all").unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let error = memfd.send_read_only(&ours, &[]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    // Sealed against writable mappings, nobody can map it writable whatever its mode.
    memfd.seal_future_writes().unwrap();
    memfd.send_read_only(&ours, &[]).unwrap();
    // The default mode keeps working.
    options()
        .create_memfd("default")
        .unwrap()
        .read_only_fd()
        .unwrap();
}

fn from_inherited_leaves_descriptors_it_does_not_own_open() {
    let status = Command::new(std::env::current_exe().unwrap())
        .env(SCENARIO, "foreign-descriptors-child")
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// In a fresh process: point the variable at descriptors the program owns and check that
/// `from_inherited` refuses them and leaves them open and unchanged.
fn foreign_descriptors_child() -> i32 {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"the program's own file").unwrap();
    // A descriptor without close-on-exec that is not a segment: the read end of a pipe.
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
    let not_a_segment = tempfile::tempfile().unwrap();
    not_a_segment.set_len(8192).unwrap();
    rustix::io::fcntl_setfd(&not_a_segment, rustix::io::FdFlags::empty()).unwrap();
    let cases = [
        (0, ErrorKind::InvalidInput),
        (2, ErrorKind::InvalidInput),
        (file.as_raw_fd(), ErrorKind::InvalidInput),
        (reader.as_raw_fd(), ErrorKind::InvalidInput),
        (not_a_segment.as_raw_fd(), ErrorKind::Corrupt),
    ];
    for (fd, expected) in cases {
        // SAFETY: this process is single-threaded here (a fresh exec of the test binary).
        unsafe { std::env::set_var(SEGMENT_FD, fd.to_string()) };
        let error = options().from_inherited(SEGMENT_FD).unwrap_err();
        if error.kind() != expected {
            eprintln!("descriptor {fd}: {error}");
            return 1;
        }
    }
    // Each descriptor is still open, and still the same file: a File opened now gets a new
    // number instead of reusing one of theirs.
    let newcomer = tempfile::tempfile().unwrap();
    let numbers = [
        file.as_raw_fd(),
        reader.as_raw_fd(),
        not_a_segment.as_raw_fd(),
    ];
    if numbers.contains(&newcomer.as_raw_fd()) {
        eprintln!(
            "a refused descriptor was closed: {} reused",
            newcomer.as_raw_fd()
        );
        return 1;
    }
    let mut back = [0u8; 22];
    file.read_exact_at(&mut back, 0).unwrap();
    rustix::io::write(&writer, b"ping").unwrap();
    let mut ping = [0u8; 4];
    rustix::io::read(&reader, &mut ping).unwrap();
    if &back != b"the program's own file"
        || &ping != b"ping"
        || not_a_segment.metadata().unwrap().len() != 8192
    {
        return 1;
    }
    i32::from(!record_locks_survive_a_refused_descriptor())
}

/// The program holds a record lock on a file, and the variable names a second descriptor of
/// it: refusing that descriptor must not close anything (a close would drop the lock).
fn record_locks_survive_a_refused_descriptor() -> bool {
    use std::os::fd::AsRawFd;
    let file = tempfile::tempfile().unwrap();
    file.set_len(8192).unwrap();
    // SAFETY: an all-zero flock is a valid value to fill in; F_SETLK and F_GETLK read and
    // write only it.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_len = 1;
    // SAFETY: as above, on our own descriptor.
    let locked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    assert_eq!(locked, 0);
    // SAFETY: duplicates our own descriptor, without close-on-exec (as an inherited one).
    let second = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 3) };
    assert!(second >= 3);
    // SAFETY: this process is single-threaded here.
    unsafe { std::env::set_var(SEGMENT_FD, second.to_string()) };
    if options().from_inherited(SEGMENT_FD).is_ok() {
        return false;
    }
    let me = std::process::id() as i32;
    let child = fork(|| {
        // SAFETY: as above: a query of the lock on byte 0, from another process.
        let mut probe: libc::flock = unsafe { std::mem::zeroed() };
        probe.l_type = libc::F_WRLCK as libc::c_short;
        probe.l_whence = libc::SEEK_SET as libc::c_short;
        probe.l_len = 1;
        // SAFETY: F_GETLK on the inherited descriptor writes only `probe`.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
        i32::from(probe.l_pid != me)
    });
    wait(child) == Ended::Exited(0)
}
