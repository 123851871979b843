//! The fault guard: a truncated file gives `Truncated`, never a SIGBUS, through every copying
//! accessor; and the copies themselves are exact.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{file_with, pattern};
use mmapkit::{ErrorKind, MapOptions};

#[test]
fn read_after_truncation_is_an_error_not_a_crash() {
    let contents = pattern(4 * 4096);
    let file = file_with(&contents);
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    file.as_file().set_len(4096 + 100).unwrap();

    let mut buf = vec![0u8; 3 * 4096];
    let error = map.read_at(1000, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated);
    assert_eq!(
        error.offset(),
        Some(2 * 4096),
        "the copy stops at the first missing page"
    );
    // The last page the file still touches reads as the file up to its end, then zeros.
    let mut expected = contents[1000..4096 + 100].to_vec();
    expected.resize(2 * 4096 - 1000, 0);
    assert!(
        buf[..2 * 4096 - 1000] == expected,
        "bytes before the missing page arrived"
    );

    let mut head = vec![0u8; 4096];
    map.read_at(0, &mut head).unwrap();
    assert!(
        head == contents[..4096],
        "pages the file still covers read normally"
    );
}

#[test]
fn write_after_truncation_is_an_error_not_a_crash() {
    let file = file_with(&pattern(4 * 4096));
    let map = MapOptions::new().write(true).map_path(file.path()).unwrap();
    file.as_file().set_len(0).unwrap();
    let error = map.write_at(5000, b"into the void").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated);
    assert_eq!(error.offset(), Some(5000));
    assert_eq!(
        map.write_pod(0, &1u64).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    assert_eq!(
        map.read_pod::<u64>(0).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    assert_eq!(map.find(b"x", ..).unwrap_err().kind(), ErrorKind::Truncated);
}

#[test]
fn copies_stop_at_the_exact_missing_byte_at_any_alignment() {
    // Copies run in 64-byte blocks and finish byte by byte: a block that reaches a missing page
    // must still report exactly where the page begins, for reads and for writes, whatever the
    // alignment of the start and of the length.
    for start in [0usize, 1, 40, 63, 64, 4000] {
        for len in [64usize, 65, 4096, 8192, 8193, 3 * 4096, 3 * 4096 - 40 + 1] {
            let contents = pattern(4 * 4096);
            let file = file_with(&contents);
            let map = MapOptions::new().write(true).map_path(file.path()).unwrap();
            file.as_file().set_len(4096 + 100).unwrap();
            let end = start + len;
            let mut buf = vec![0u8; len];
            let read = map.read_at(start, &mut buf);
            let written = map.write_at(start, &vec![0xAB; len]);
            if end <= 2 * 4096 {
                read.unwrap();
                written.unwrap();
                continue;
            }
            for (what, result) in [("read", read), ("write", written)] {
                let error = result.unwrap_err();
                assert_eq!(error.kind(), ErrorKind::Truncated, "{what} {start}+{len}");
                assert_eq!(error.offset(), Some(2 * 4096), "{what} {start}+{len}");
            }
            let mut expected = contents[start..4096 + 100].to_vec();
            expected.resize(2 * 4096 - start, 0);
            assert!(buf[..2 * 4096 - start] == expected, "read {start}+{len}");
        }
    }
}

#[test]
fn regrown_file_reads_again() {
    let file = file_with(&pattern(2 * 4096));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    file.as_file().set_len(0).unwrap();
    assert_eq!(
        map.read_pod::<u8>(4096).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    file.as_file().set_len(2 * 4096).unwrap();
    assert_eq!(
        map.read_pod::<u64>(4096).unwrap(),
        0,
        "a regrown file reads as zeros"
    );
}

#[test]
fn truncation_storm() {
    const SIZE: usize = 64 * 4096;
    let file = file_with(&pattern(SIZE));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let truncator = {
        let file = file.as_file().try_clone().unwrap();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut cycles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                file.set_len((cycles % 7) * 4096).unwrap();
                file.set_len(SIZE as u64).unwrap();
                cycles += 1;
            }
            cycles
        })
    };
    // At least 10,000 reads, and on until one of them has met a truncation, so that the test
    // cannot pass without exercising the guard.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ok, mut truncated) = (0u64, 0u64);
    let mut buf = vec![0u8; 8192];
    let mut read = 0;
    while read < 10_000 || truncated == 0 {
        assert!(
            Instant::now() < deadline,
            "no read met a truncation in 30 s"
        );
        let offset = (read * 4099) % (SIZE - buf.len());
        match map.read_at(offset, &mut buf) {
            Ok(()) => ok += 1,
            Err(error) if error.kind() == ErrorKind::Truncated => truncated += 1,
            Err(error) => panic!("unexpected error: {error}"),
        }
        read += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = truncator.join().unwrap();
    eprintln!("{ok} reads succeeded, {truncated} hit a truncation, {cycles} truncation cycles");
}

#[test]
fn cursor_reads_writes_and_seeks() {
    let file = file_with(&pattern(10_000));
    let map = MapOptions::new().write(true).map_path(file.path()).unwrap();
    let mut cursor = map.cursor();
    cursor.seek(SeekFrom::Start(9_990)).unwrap();
    let mut tail = Vec::new();
    cursor.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, pattern(10_000)[9_990..]);

    cursor.seek(SeekFrom::End(-4)).unwrap();
    let error = cursor.write_all(b"overflow").unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::WriteZero);
    cursor.seek(SeekFrom::Current(-4)).unwrap();
    cursor.write_all(b"END!").unwrap();
    cursor.flush().unwrap();
    map.flush().unwrap();
    assert_eq!(&std::fs::read(file.path()).unwrap()[9_996..], b"END!");
    assert!(cursor.seek(SeekFrom::Current(-20_000)).is_err());

    file.as_file().set_len(0).unwrap();
    cursor.seek(SeekFrom::Start(0)).unwrap();
    let error = cursor.read(&mut [0; 10]).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    let inner = error
        .into_inner()
        .unwrap()
        .downcast::<mmapkit::Error>()
        .unwrap();
    assert_eq!(inner.kind(), ErrorKind::Truncated);
}

#[test]
fn find_and_rfind_match_across_search_windows() {
    let mut contents = vec![b'.'; 1 << 20];
    let needle = b"needle-in-a-mapping";
    for at in [0, 256 * 1024 - 7, 700_000, (1 << 20) - needle.len()] {
        contents[at..at + needle.len()].copy_from_slice(needle);
    }
    let file = file_with(&contents);
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    assert_eq!(map.find(needle, ..).unwrap(), Some(0));
    assert_eq!(map.find(needle, 1..).unwrap(), Some(256 * 1024 - 7));
    assert_eq!(map.find(needle, 256 * 1024..).unwrap(), Some(700_000));
    assert_eq!(
        map.rfind(needle, ..).unwrap(),
        Some((1 << 20) - needle.len())
    );
    assert_eq!(map.rfind(needle, ..700_010).unwrap(), Some(256 * 1024 - 7));
    assert_eq!(map.find(b"absent", ..).unwrap(), None);
    assert_eq!(map.rfind(b"", 10..20).unwrap(), Some(20));

    let mut private = MapOptions::new()
        .len(contents.len())
        .map_anonymous()
        .unwrap();
    private.as_mut_slice().unwrap().copy_from_slice(&contents);
    private.protect(.., mmapkit::Protection::READ).unwrap();
    assert_eq!(private.find(needle, 1..).unwrap(), Some(256 * 1024 - 7));
    assert_eq!(
        private.rfind(needle, ..).unwrap(),
        Some((1 << 20) - needle.len())
    );
}

#[test]
fn protection_is_checked_before_copying() {
    let mut map = MapOptions::new().len(3 * 4096).map_anonymous().unwrap();
    map.protect(4096..8192, mmapkit::Protection::READ).unwrap();
    let error = map.write_at(4000, &[1; 200]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    map.write_at(0, &[1; 4096]).unwrap();
    map.protect(4096..8192, mmapkit::Protection::empty())
        .unwrap();
    assert_eq!(
        map.read_pod::<u8>(5000).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(map.read_pod::<u8>(4095).unwrap(), 1);
}
