//! Bad input gets a typed error with a message that names the mistake, and never a panic.

mod common;

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU32;

use common::{file_with, make_fifo, pattern, within};
use mmapkit::{Advice, ErrorKind, Flush, MapOptions, Protection, UncheckedAdvice};

#[test]
fn zero_length_anonymous_mapping() {
    let error = MapOptions::new().len(0).map_anonymous().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("non-zero length"), "{error}");
    let error = MapOptions::new().map_anonymous().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
}

#[test]
fn device_mapping_without_length() {
    let zero = File::open("/dev/zero").unwrap();
    let error = MapOptions::new().map_file(&zero).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(error.path(), Some(std::path::Path::new("/dev/zero")));
}

#[test]
fn device_without_mmap_support() {
    let null = File::open("/dev/null").unwrap();
    let error = MapOptions::new().len(4096).map_file(&null).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
    assert!(
        error
            .to_string()
            .contains("this device does not support mmap"),
        "{error}"
    );
}

#[test]
fn offset_past_the_end_of_the_file() {
    let file = file_with(&pattern(100));
    let error = MapOptions::new()
        .offset(101)
        .map_file(file.as_file())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfBounds);
    assert_eq!(error.offset(), Some(101));
    assert!(
        error
            .to_string()
            .contains("past the end of the file (size 100)"),
        "{error}"
    );
    let error = MapOptions::new()
        .offset(4096)
        .len(10)
        .map_file(file.as_file())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfBounds);
}

#[test]
fn offset_plus_len_overflows() {
    let file = file_with(&pattern(100));
    let error = MapOptions::new()
        .offset(u64::MAX - 10)
        .len(100)
        .map_file(file.as_file());
    // Past the end is reported first; with a file that large it would be the overflow.
    assert!(matches!(
        error.unwrap_err().kind(),
        ErrorKind::OutOfBounds | ErrorKind::InvalidInput
    ));
    let zero = File::open("/dev/zero").unwrap();
    let error = MapOptions::new()
        .offset(u64::MAX - 10)
        .len(100)
        .map_file(&zero)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("overflows"), "{error}");
}

#[test]
fn length_above_isize_max() {
    let error = MapOptions::new()
        .len(isize::MAX as usize + 1)
        .map_anonymous()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("the most a mapping can address"),
        "{error}"
    );
}

#[test]
fn writable_shared_map_of_a_read_only_descriptor() {
    let file = file_with(&pattern(4096));
    let read_only = File::open(file.path()).unwrap();
    let error = MapOptions::new()
        .write(true)
        .map_file(&read_only)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    assert!(error.to_string().contains("open read-only"), "{error}");
    assert!(
        error.path().is_some(),
        "the path is found from the descriptor"
    );
}

#[test]
fn directory() {
    let directory = tempfile::tempdir().unwrap();
    let error = MapOptions::new().map_path(directory.path()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("is a directory"), "{error}");
}

#[test]
fn invalid_descriptor() {
    // SAFETY: a descriptor number far above anything this test process opens; mapping it only
    // makes fstat fail with EBADF.
    let closed = unsafe { BorrowedFd::borrow_raw(1_000_000) };
    let error = MapOptions::new().len(4096).map_fd(closed).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    assert!(
        error.to_string().contains("not an open file descriptor"),
        "{error}"
    );
}

#[test]
fn missing_path() {
    let error = MapOptions::new()
        .map_path("/nonexistent/mmapkit")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert!(
        error.to_string().starts_with("open /nonexistent/mmapkit"),
        "{error}"
    );
}

#[test]
fn fifo_is_refused_without_blocking() {
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        0o600.into(),
        0,
    )
    .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let error = MapOptions::new().len(4096).map_file(&file).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unsupported);
}

#[test]
fn map_path_of_a_fifo_is_refused_without_blocking() {
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("fifo");
    make_fifo(&fifo);
    let limit = std::time::Duration::from_secs(10);
    for (what, options) in [
        ("read-only", MapOptions::new().len(4096).clone()),
        (
            "private",
            MapOptions::new().len(4096).private().write(true).clone(),
        ),
        (
            "shared writable",
            MapOptions::new().len(4096).write(true).clone(),
        ),
    ] {
        let path = fifo.clone();
        let error = within(limit, what, move || options.map_path(&path).map(drop)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{what}: {error}");
        assert_eq!(error.path(), Some(fifo.as_path()), "{what}");
    }
}

#[test]
fn every_operation_refuses_a_range_outside_the_mapping() {
    let mut map = MapOptions::new().len(8192).map_anonymous().unwrap();
    let out = 8000..9000;
    let kinds = [
        map.advise(out.clone(), Advice::WillNeed)
            .unwrap_err()
            .kind(),
        // SAFETY: the call fails before any advice is given.
        unsafe { map.advise_unchecked(out.clone(), UncheckedAdvice::DontNeed) }
            .unwrap_err()
            .kind(),
        map.flush_range(out.clone(), Flush::Sync)
            .unwrap_err()
            .kind(),
        map.lock(out.clone()).unwrap_err().kind(),
        map.lock_on_fault(out.clone()).unwrap_err().kind(),
        map.unlock(out.clone()).unwrap_err().kind(),
        map.residency(out.clone()).unwrap_err().kind(),
        map.read_at(8000, &mut [0; 1000]).unwrap_err().kind(),
        map.write_at(8000, &[0; 1000]).unwrap_err().kind(),
        map.read_at(usize::MAX, &mut [0; 2]).unwrap_err().kind(),
        map.read_pod::<u64>(8190).unwrap_err().kind(),
        map.write_pod(8190, &0u64).unwrap_err().kind(),
        map.find(b"x", out.clone()).unwrap_err().kind(),
        map.rfind(b"x", out.clone()).unwrap_err().kind(),
        map.view::<u64>(8190).unwrap_err().kind(),
        map.view_slice::<u8>(0, 8193).unwrap_err().kind(),
        map.view_slice::<u64>(0, usize::MAX).unwrap_err().kind(),
        map.view_mut::<u64>(8190).unwrap_err().kind(),
        map.view_slice_mut::<u8>(8000, 1000).unwrap_err().kind(),
        map.atomic::<AtomicU32>(8190).unwrap_err().kind(),
        map.protect(out.clone(), Protection::READ)
            .unwrap_err()
            .kind(),
    ];
    assert!(
        kinds.iter().all(|&kind| kind == ErrorKind::OutOfBounds),
        "{kinds:?}"
    );
    let error = map.protect(out, Protection::READ).unwrap_err();
    assert_eq!((error.offset(), error.length()), (Some(8000), Some(1000)));
    assert!(error.to_string().contains("8192 bytes long"), "{error}");
}

#[test]
fn misaligned_typed_views_are_refused() {
    let mut map = MapOptions::new().len(4096).map_anonymous().unwrap();
    assert_eq!(
        map.view_mut::<u64>(3).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    *map.view_mut::<u64>(8).unwrap() = 0x1122_3344_5566_7788;
    assert_eq!(map.read_pod::<u64>(8).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(
        map.read_pod::<u32>(9).unwrap(),
        0x4455_6677,
        "copies need no alignment"
    );
}
