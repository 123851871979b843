//! Segments in one process: every kind, the header's validation, names, waiting for the
//! creator, truncation by a peer, a full /dev/shm, read-only handles and stale cleanup.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{SegmentName, make_fifo, maps_line, within};
use mmapkit::shm::{self, Location, ProcessIdentity, stale};
use mmapkit::{ErrorKind, Reach, SegmentOptions};

fn options(payload: usize) -> SegmentOptions {
    SegmentOptions::new("test/blob", payload).unwrap()
}

#[test]
fn named_segment_is_shared_between_handles_and_persists() {
    let name = SegmentName::new("named");
    let created = options(10_000).create(&name).unwrap();
    assert_eq!(created.location(), &Location::Named(name.0.clone()));
    assert_eq!(
        created.payload_len(),
        12_288 - 128,
        "the object is rounded up to pages"
    );
    assert_eq!(created.header().type_tag.as_str(), "test/blob");
    assert_eq!(created.header().creator, ProcessIdentity::current());
    let meta = fs::metadata(format!("/dev/shm/{}", &*name)).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "owner-only by default"
    );
    assert_eq!(meta.len(), 12_288);

    created.write_at(100, b"through the first handle").unwrap();
    let opened = options(10_000).open(&name).unwrap();
    let mut seen = [0u8; 24];
    opened.read_at(100, &mut seen).unwrap();
    assert_eq!(&seen, b"through the first handle");
    assert_eq!(opened.header().segment_id, created.header().segment_id);
    assert!(maps_line(opened.mapping().as_ptr()).path.ends_with(&*name));

    drop(created);
    drop(opened);
    let again = options(0).open(&name).unwrap();
    again.read_at(100, &mut seen).unwrap();
    assert_eq!(
        &seen, b"through the first handle",
        "persists until unlinked, like SysV shm"
    );
    shm::unlink(&name).unwrap();
    assert_eq!(
        options(0).open(&name).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn create_is_exclusive_and_open_or_create_is_not() {
    let name = SegmentName::new("exclusive");
    let _first = options(64).create(&name).unwrap();
    let error = options(64).create(&name).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AlreadyExists);
    assert!(error.to_string().contains(&*name), "{error}");
    options(64).open_or_create(&name).unwrap();
}

#[test]
fn concurrent_open_or_create_initialises_once() {
    let name = SegmentName::new("race");
    let inits = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let segment = options(4096)
                    .open_or_create_with(&name, |segment| {
                        inits.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        segment.write_at(0, b"initialised")
                    })
                    .unwrap();
                let mut seen = [0u8; 11];
                segment.read_at(0, &mut seen).unwrap();
                assert_eq!(&seen, b"initialised", "openers wait for the creator");
            });
        }
    });
    assert_eq!(inits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_initialisation_leaves_nothing_behind() {
    let name = SegmentName::new("failed-init");
    let error = options(64)
        .create_with(&name, |_| {
            Err(mmapkit::Error::new(ErrorKind::InvalidInput, "init", "no"))
        })
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(!fs::exists(format!("/dev/shm/{}", &*name)).unwrap());
}

#[test]
fn opening_checks_type_and_size() {
    let name = SegmentName::new("typed");
    let _segment = options(4096).create(&name).unwrap();
    let wrong_type = SegmentOptions::new("other/type", 4096)
        .unwrap()
        .open(&name)
        .unwrap_err();
    assert_eq!(wrong_type.kind(), ErrorKind::Incompatible);
    assert!(wrong_type.to_string().contains("test/blob"), "{wrong_type}");
    let wrong_size = options(1 << 20).open(&name).unwrap_err();
    assert_eq!(wrong_size.kind(), ErrorKind::Incompatible);
}

#[test]
fn garbage_and_truncated_headers_are_rejected() {
    let name = SegmentName::new("garbage");
    fs::write(format!("/dev/shm/{}", &*name), vec![0xA5; 4096]).unwrap();
    let error = options(0).open(&name).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt);
    assert!(
        error.to_string().contains("not an mmapkit segment"),
        "{error}"
    );

    let small = SegmentName::new("small");
    fs::write(format!("/dev/shm/{}", &*small), b"tiny").unwrap();
    let started = Instant::now();
    let error = options(0)
        .wait(Duration::from_millis(50))
        .open(&small)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "gives up after the wait"
    );
}

#[test]
fn names_are_validated() {
    for bad in ["", "a/b", "nul\0", ".", "..", &"x".repeat(251)] {
        let error = options(64).create(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    let error = options(64).open("a/b").unwrap_err();
    assert!(error.to_string().contains("contains '/'"), "{error}");
    let longest = SegmentName(format!("{}-{}", std::process::id(), "x".repeat(240)));
    options(64).create(&longest).unwrap();
}

#[test]
fn memfd_segments_are_sealed_and_offer_atomics() {
    let segment = options(4096).create_memfd("atomics").unwrap();
    assert_eq!(segment.location(), &Location::Memfd);
    let seals = rustix::fs::fcntl_get_seals(segment.as_fd()).unwrap();
    use rustix::fs::SealFlags;
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW));
    assert_eq!(
        segment.mapping().reach(),
        Reach::Shared,
        "nobody can make it SIGBUS"
    );
    let counter: &AtomicU64 = segment.atomic(64).unwrap();
    counter.fetch_add(5, Ordering::SeqCst);
    assert_eq!(segment.read_pod::<u64>(64).unwrap(), 5);
    assert_eq!(
        segment.atomic::<AtomicU64>(4).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let past = segment.payload_len();
    assert_eq!(
        segment.atomic::<AtomicU64>(past).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
}

#[test]
fn a_memfd_sealed_against_future_writes_reaches_others_read_only() {
    let segment = options(4096).create_memfd("frozen").unwrap();
    segment.write_at(0, b"published").unwrap();
    segment.seal_future_writes().unwrap();
    segment.write_at(0, b"P").unwrap(); // the creator's mapping keeps writing
    let duplicate = rustix::io::fcntl_dupfd_cloexec(segment.as_fd(), 0).unwrap();
    let reader = options(4096).from_fd(duplicate).unwrap();
    assert!(
        !reader.is_writable(),
        "a read-write descriptor still maps read-only"
    );
    assert_eq!(&reader.read_pod::<[u8; 9]>(0).unwrap(), b"Published");
    assert_eq!(
        reader.write_at(0, b"x").unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let named = SegmentName::new("not-memfd");
    let error = options(64)
        .create(&named)
        .unwrap()
        .seal_future_writes()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
}

#[test]
fn file_segments_live_at_a_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("segment");
    let created = options(4096)
        .create_file_with(&path, |segment| segment.write_at(0, b"file"))
        .unwrap();
    assert_eq!(created.location(), &Location::File(path.clone()));
    let opened = options(4096).open_file(&path).unwrap();
    assert_eq!(opened.read_pod::<[u8; 4]>(0).unwrap(), *b"file");
}

#[test]
fn a_peer_truncating_a_named_segment_gives_errors_not_sigbus() {
    let name = SegmentName::new("truncated");
    let segment = options(3 * 4096).create(&name).unwrap();
    let counter: &AtomicU64 = segment.atomic(8192).unwrap();
    counter.store(7, Ordering::SeqCst);
    fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{}", &*name))
        .unwrap()
        .set_len(0)
        .unwrap();
    // The atomic's page vanished: the shield replaces it, the load sees zero, no SIGBUS.
    assert_eq!(counter.load(Ordering::SeqCst), 0);
    assert_eq!(segment.check().unwrap_err().kind(), ErrorKind::Truncated);
    assert_eq!(
        segment.read_pod::<u64>(0).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    assert_eq!(
        segment.write_at(0, b"x").unwrap_err().kind(),
        ErrorKind::Truncated
    );
}

#[test]
fn a_full_dev_shm_is_a_typed_error_at_creation() {
    let name = SegmentName::new("huge");
    let free = rustix::fs::statvfs("/dev/shm").unwrap();
    let too_much = (free.f_bavail * free.f_frsize) as usize + (1 << 30);
    let error = options(too_much).create(&name).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NoSpace, "{error}");
    assert!(
        error.to_string().contains("memfd"),
        "the hint points to memfd: {error}"
    );
    assert!(
        !fs::exists(format!("/dev/shm/{}", &*name)).unwrap(),
        "nothing is left behind"
    );
}

#[test]
fn read_only_handles_cannot_write() {
    let name = SegmentName::new("read-only");
    let writer = options(4096)
        .create_with(&name, |segment| segment.write_at(0, b"ro"))
        .unwrap();
    let reader = options(4096).open_read_only(&name).unwrap();
    assert!(!reader.is_writable());
    assert_eq!(reader.read_pod::<[u8; 2]>(0).unwrap(), *b"ro");
    assert_eq!(
        reader.write_at(0, b"no").unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let atomic = reader.atomic::<AtomicU64>(8).unwrap_err();
    assert_eq!(atomic.kind(), ErrorKind::PermissionDenied);
    assert!(
        maps_line(reader.mapping().as_ptr())
            .perms
            .starts_with("r--s")
    );

    let duplicate = writer.read_only_fd().unwrap();
    let received = options(4096)
        .from_fd(duplicate.try_clone_to_owned().unwrap())
        .unwrap();
    assert!(!received.is_writable());
}

#[test]
fn stale_segments_are_found_and_only_they_are_removed() {
    let dead = SegmentName::new("stale");
    let alive = SegmentName::new("alive");
    let foreign = SegmentName::new("foreign");
    let _alive_segment = options(4096).create(&alive).unwrap();
    fs::write(format!("/dev/shm/{}", &*foreign), vec![0u8; 4096]).unwrap();
    // A segment whose creator exited without unlinking it: a real segment's bytes, with the
    // creator rewritten as a child process that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let template = SegmentName::new("template");
    drop(options(4096).create(&template).unwrap());
    let mut bytes = fs::read(format!("/dev/shm/{}", &*template)).unwrap();
    bytes[40..44].copy_from_slice(&dead_pid.to_ne_bytes());
    fs::write(format!("/dev/shm/{}", &*dead), &bytes).unwrap();
    // Also dead-creator, but mapped here (and not held open) under a name that /proc/PID/maps
    // escapes and that looks like a deleted file there: still in use, so not stale.
    let odd = SegmentName(format!(
        "mmapkit-test-{}-odd\nname (deleted)",
        std::process::id()
    ));
    let odd_path = format!("/dev/shm/{}", &*odd);
    fs::write(&odd_path, &bytes).unwrap();
    let _odd_mapping = mmapkit::MapOptions::new().map_path(&odd_path).unwrap();

    let infos = stale::list().unwrap();
    let find = |name: &str| infos.iter().find(|info| info.name == name).unwrap().clone();
    let dead_info = find(&dead);
    assert_eq!(dead_info.creator_alive, Some(false));
    assert!(dead_info.users.is_empty());
    assert!(dead_info.is_stale());
    let alive_info = find(&alive);
    assert_eq!(alive_info.creator_alive, Some(true));
    assert_eq!(
        alive_info.users,
        vec![std::process::id()],
        "this process maps it"
    );
    assert!(!alive_info.is_stale());
    let odd_info = find(&odd);
    assert_eq!(odd_info.creator_alive, Some(false));
    assert_eq!(
        odd_info.users,
        vec![std::process::id()],
        "this process maps it"
    );
    assert!(!odd_info.is_stale());
    let foreign_info = find(&foreign);
    assert_eq!(foreign_info.header, None);
    assert!(!foreign_info.is_stale());

    let removed = stale::cleanup().unwrap().removed;
    assert!(removed.contains(&dead.0));
    assert!(!removed.contains(&alive.0) && !removed.contains(&foreign.0));
    assert!(!removed.contains(&odd.0) && fs::exists(&odd_path).unwrap());
    assert!(!fs::exists(format!("/dev/shm/{}", &*dead)).unwrap());
    assert!(fs::exists(format!("/dev/shm/{}", &*foreign)).unwrap());
}

#[test]
fn every_listed_name_can_be_removed_and_non_names_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    // 255 bytes: longer than segment names may be, but a file name /dev/shm can hold.
    let prefix = format!("mmapkit-test-{}-long-", std::process::id());
    let long = format!("{prefix}{}", "x".repeat(255 - prefix.len()));
    let path = format!("/dev/shm/{long}");
    fs::write(&path, b"foreign").unwrap();
    assert!(
        stale::list()
            .unwrap()
            .iter()
            .any(|info| info.name == long && info.file_name == *long)
    );
    stale::remove(std::ffi::OsStr::new(&long)).unwrap();
    assert!(!fs::exists(&path).unwrap());
    for bad in [&b""[..], b".", b"..", b"../etc/passwd", b"a/b"] {
        let error = stale::remove(std::ffi::OsStr::from_bytes(bad)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[test]
fn a_fifo_under_a_segment_name_or_path_is_refused_without_blocking() {
    let name = SegmentName::new("fifo");
    make_fifo(std::path::Path::new(&format!("/dev/shm/{}", &*name)));
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("fifo");
    make_fifo(&fifo);
    let limit = Duration::from_secs(10);
    let owned = name.0.clone();
    let read_only = within(limit, "open_read_only of a FIFO", move || {
        options(0).open_read_only(&owned).map(drop)
    });
    let owned = name.0.clone();
    let read_write = within(limit, "open of a FIFO", move || {
        options(0).open(&owned).map(drop)
    });
    let owned = name.0.clone();
    let either = within(limit, "open_or_create of a FIFO", move || {
        options(4096).open_or_create(&owned).map(drop)
    });
    let file = within(limit, "open_file of a FIFO", move || {
        options(0).open_file(&fifo).map(drop)
    });
    for (what, result) in [
        ("open_read_only", read_only),
        ("open", read_write),
        ("open_or_create", either),
        ("open_file", file),
    ] {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{what}: {error}");
        assert!(error.to_string().contains("a FIFO"), "{what}: {error}");
    }
}

#[test]
fn a_received_descriptor_that_is_not_a_segment_is_refused_at_once() {
    let (reader, _writer) = rustix::pipe::pipe().unwrap();
    let started = Instant::now();
    let error = options(0).from_fd(reader).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert!(error.to_string().contains("a FIFO"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused without waiting for the creator"
    );
}
