//! Protect, advise, flush, lock, residency, remap and seal, each checked against what the
//! kernel or the file says afterwards.

mod common;

use std::fs;
use std::io::Read;

use common::{file_with, maps_line, pattern, smaps_kb, vm_flags};
use mmapkit::UncheckedAdvice;
use mmapkit::{Advice, ErrorKind, Flush, GrowableMap, MapOptions, Protection, Reach, RemapMode};

#[test]
fn protect_splits_the_mapping_as_the_kernel_reports() {
    let mut map = MapOptions::new().len(4 * 4096).map_anonymous().unwrap();
    map.protect(4096..4097, Protection::READ).unwrap();
    let base = map.as_ptr();
    assert_eq!(maps_line(base).perms, "rw-p");
    // SAFETY: only the address is computed, inside the mapping.
    let second = unsafe { base.add(4096) };
    let line = maps_line(second);
    assert_eq!((line.perms.as_str(), line.end - line.start), ("r--p", 4096));
    assert_eq!(
        map.protection(),
        None,
        "mixed protections have no single value"
    );
    map.protect(.., Protection::READ_WRITE).unwrap();
    assert_eq!(map.protection(), Some(Protection::READ_WRITE));
}

#[test]
fn residency_follows_touch_and_destructive_advice() {
    let map = MapOptions::new().len(16 * 4096).map_anonymous().unwrap();
    assert_eq!(
        map.residency(..).unwrap().resident_pages(),
        0,
        "nothing touched yet"
    );
    for page in [0, 5, 15] {
        map.write_at(page * 4096 + 10, &[0xAB]).unwrap();
    }
    let residency = map.residency(..).unwrap();
    let resident: Vec<bool> = residency.iter().collect();
    assert_eq!(residency.resident_pages(), 3);
    assert!(resident[0] && resident[5] && resident[15] && !resident[1]);

    // SAFETY: no reference into the mapping exists; its contents may be discarded.
    unsafe { map.advise_unchecked(.., UncheckedAdvice::DontNeed) }.unwrap();
    assert_eq!(
        map.residency(..).unwrap().resident_pages(),
        0,
        "the pages are gone"
    );
    assert_eq!(
        map.read_pod::<u8>(5 * 4096 + 10).unwrap(),
        0,
        "and read as zeros"
    );

    map.advise(0..4096, Advice::PopulateWrite).unwrap();
    assert!(map.residency(0..1).unwrap().is_resident(0));
}

#[test]
fn residency_of_a_sub_range_counts_the_pages_it_touches() {
    let map = MapOptions::new()
        .len(8 * 4096)
        .populate(true)
        .map_anonymous()
        .unwrap();
    let residency = map.residency(4095..4097).unwrap();
    assert_eq!((residency.pages(), residency.resident_pages()), (2, 2));
    assert_eq!(residency.page_size(), 4096);
}

#[test]
fn flush_makes_writes_reach_the_file() {
    let file = file_with(&pattern(3 * 4096));
    let map = MapOptions::new()
        .write(true)
        .offset(4096 + 17)
        .len(100)
        .map_path(file.path())
        .unwrap();
    map.write_at(0, b"flushed bytes").unwrap();
    map.flush().unwrap();
    map.flush_async().unwrap();
    map.flush_range(0..13, Flush::SyncInvalidate).unwrap();
    let mut fresh = Vec::new();
    fs::File::open(file.path())
        .unwrap()
        .read_to_end(&mut fresh)
        .unwrap();
    assert_eq!(&fresh[4096 + 17..4096 + 30], b"flushed bytes");
    assert_eq!(
        fresh[..4096],
        pattern(3 * 4096)[..4096],
        "nothing else changed"
    );
}

#[test]
fn advice_applies_and_is_reported_by_the_kernel() {
    let map = MapOptions::new().len(4 << 20).map_anonymous().unwrap();
    map.advise(.., Advice::HugePage).unwrap();
    assert!(vm_flags(map.as_ptr()).contains(&"hg".to_owned()));
    map.advise(.., Advice::DontDump).unwrap();
    assert!(vm_flags(map.as_ptr()).contains(&"dd".to_owned()));
    map.advise(.., Advice::Random).unwrap();
    assert!(vm_flags(map.as_ptr()).contains(&"rr".to_owned()));
    map.advise(.., Advice::WipeOnFork).unwrap();
    assert!(vm_flags(map.as_ptr()).contains(&"wf".to_owned()));

    let file = file_with(&pattern(4096));
    let file_map = MapOptions::new().map_file(file.as_file()).unwrap();
    let error = file_map.advise(.., Advice::WipeOnFork).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
}

#[test]
fn lock_and_unlock_show_in_smaps() {
    let map = MapOptions::new().len(8 * 4096).map_anonymous().unwrap();
    map.lock(..).unwrap();
    assert_eq!(smaps_kb(map.as_ptr(), "Locked"), 32);
    assert_eq!(
        map.residency(..).unwrap().resident_pages(),
        8,
        "lock faults pages in"
    );
    map.unlock(..).unwrap();
    assert_eq!(smaps_kb(map.as_ptr(), "Locked"), 0);

    let on_fault = MapOptions::new().len(8 * 4096).map_anonymous().unwrap();
    on_fault.lock_on_fault(..).unwrap();
    assert_eq!(
        on_fault.residency(..).unwrap().resident_pages(),
        0,
        "nothing faulted yet"
    );
    on_fault.write_at(0, &[1]).unwrap();
    assert_eq!(smaps_kb(on_fault.as_ptr(), "Locked"), 4);
}

#[test]
fn a_lock_that_fails_gets_the_hint_of_its_real_cause() {
    // The file behind the range was truncated: its pages cannot be brought in, which mlock
    // reports as ENOMEM. With CAP_IPC_LOCK (root), the lock limit cannot be the cause.
    let file = file_with(&pattern(16 * 4096));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    file.as_file().set_len(4096).unwrap();
    let error = map.lock(..).unwrap_err();
    let text = error.to_string();
    if rustix::process::geteuid().is_root() {
        assert!(!text.contains("raise RLIMIT_MEMLOCK"), "{text}");
        assert!(text.contains("CAP_IPC_LOCK is held"), "{text}");
    } else {
        assert!(text.contains("RLIMIT_MEMLOCK allows"), "{text}");
    }
    // Through inspect::lock, the truncation is named as such.
    let file = file_with(&pattern(16 * 4096));
    let racing = file.path().to_owned();
    let truncated = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_micros(200));
        fs::OpenOptions::new()
            .write(true)
            .open(racing)
            .unwrap()
            .set_len(0)
            .unwrap();
    });
    let results: Vec<_> = (0..200)
        .map(|_| mmapkit::inspect::lock(file.as_file(), None).map(drop))
        .collect();
    truncated.join().unwrap();
    for error in results.into_iter().filter_map(Result::err) {
        assert_eq!(error.kind(), ErrorKind::Truncated, "{error}");
        assert!(!error.to_string().contains("RLIMIT"), "{error}");
    }
}

#[test]
fn remap_keeps_contents_when_growing_and_shrinking() {
    let mut map = MapOptions::new().len(3 * 4096).map_anonymous().unwrap();
    let contents = pattern(3 * 4096);
    map.as_mut_slice().unwrap().copy_from_slice(&contents);
    // Read-only anonymous memory is never merged with its (writable) neighbours, so the
    // kernel's area is exactly ours and its size can be checked.
    map.protect(.., Protection::READ).unwrap();

    map.remap(300 * 4096, RemapMode::MayMove).unwrap();
    assert_eq!(map.len(), 300 * 4096);
    let grown = map.as_slice().unwrap();
    assert!(
        grown[..contents.len()] == contents[..],
        "contents survive the move"
    );
    assert!(
        grown[contents.len()..].iter().all(|&b| b == 0),
        "new pages are zero"
    );
    let line = maps_line(map.as_ptr());
    assert_eq!(
        (line.perms.as_str(), line.end - line.start),
        ("r--p", 300 * 4096)
    );

    map.remap(4096 + 5, RemapMode::InPlace).unwrap();
    assert_eq!(map.len(), 4096 + 5);
    assert!(map.as_slice().unwrap() == &contents[..4096 + 5]);
    let line = maps_line(map.as_ptr());
    assert_eq!(line.end - line.start, 2 * 4096);
}

#[test]
fn remap_in_place_fails_cleanly_when_blocked() {
    let mut map = MapOptions::new().len(4096).map_anonymous().unwrap();
    let next = map.as_ptr() as usize + 4096;
    let Ok(blocker) = MapOptions::new()
        .len(4096)
        .fixed_address(next)
        .map_anonymous()
    else {
        return; // the next page was taken already, which blocks just as well
    };
    let error = map.remap(2 * 4096, RemapMode::InPlace).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfMemory);
    assert!(error.to_string().contains("MayMove"), "{error}");
    assert_eq!(map.len(), 4096, "a failed remap changes nothing");
    drop(blocker);
}

#[test]
fn remap_of_a_file_mapping_past_the_end_reads_as_truncated() {
    let file = file_with(&pattern(4096));
    let mut map = MapOptions::new().map_file(file.as_file()).unwrap();
    map.remap(3 * 4096, RemapMode::MayMove).unwrap();
    let error = map.read_pod::<u8>(2 * 4096).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated);
    file.as_file().set_len(3 * 4096).unwrap();
    assert_eq!(
        map.read_pod::<u8>(2 * 4096).unwrap(),
        0,
        "grown file covers it"
    );
}

#[test]
fn growing_shared_anonymous_memory_past_its_object_degrades_reach() {
    let mut map = MapOptions::new()
        .len(4096)
        .shared()
        .map_anonymous()
        .unwrap();
    assert_eq!(map.reach(), Reach::Shared);
    map.remap(2 * 4096, RemapMode::MayMove).unwrap();
    assert_eq!(
        map.reach(),
        Reach::Truncatable,
        "the shmem object did not grow"
    );
    assert_eq!(
        map.read_pod::<u8>(4096).unwrap_err().kind(),
        ErrorKind::Truncated
    );
    map.remap(4096, RemapMode::InPlace).unwrap();
    assert_eq!(map.reach(), Reach::Shared);
}

#[test]
fn remap_refuses_a_length_that_overflows() {
    let file = file_with(&pattern(4096));
    let mut map = MapOptions::new()
        .offset(100)
        .len(5)
        .map_file(file.as_file())
        .unwrap();
    let error = map.remap(usize::MAX - 50, RemapMode::MayMove).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(map.len(), 5, "a refused remap changes nothing");
    assert_eq!(
        map.read_at(0, &mut [0; 6]).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
}

#[test]
fn remap_refuses_mixed_protections() {
    let mut map = MapOptions::new().len(2 * 4096).map_anonymous().unwrap();
    map.protect(0..1, Protection::READ).unwrap();
    let error = map.remap(4 * 4096, RemapMode::MayMove).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
}

#[test]
fn seal_fixes_the_mapping() {
    let mut map = MapOptions::new().len(2 * 4096).map_anonymous().unwrap();
    map.write_at(0, b"sealed").unwrap();
    map.seal().unwrap();
    assert!(map.is_sealed());
    let error = map.protect(.., Protection::READ).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        map.remap(8192 * 2, RemapMode::MayMove).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // The kernel enforces the seal, not just our bookkeeping.
    // SAFETY: the mprotect is expected to fail; if it succeeded it would only drop write access
    // to memory nothing else refers to.
    let raw = unsafe { libc::mprotect(map.as_mut_ptr().cast(), 4096, libc::PROT_READ) };
    assert_eq!(raw, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(map.read_pod::<[u8; 6]>(0).unwrap(), *b"sealed");
}

#[test]
fn growable_map_appends_and_read_sees_them_after_flush() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log");
    let mut log = GrowableMap::create(&path).unwrap();
    let mut expected = Vec::new();
    for record in 0..5_000u32 {
        let line = format!("record {record}\n");
        let offset = log.append(line.as_bytes()).unwrap();
        assert_eq!(offset, expected.len() as u64);
        expected.extend_from_slice(line.as_bytes());
    }
    assert!(fs::metadata(&path).unwrap().len() >= expected.len() as u64);
    log.flush().unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        expected,
        "read(2) sees the log and nothing else"
    );

    let mut back = vec![0; 11];
    log.read_at(7, &mut back).unwrap();
    assert_eq!(back, expected[7..18]);
    assert_eq!(
        log.read_at(log.len() - 1, &mut [0; 2]).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    log.close().unwrap();

    let mut reopened = GrowableMap::open(&path).unwrap();
    assert_eq!(reopened.len(), expected.len() as u64);
    reopened.set_growth_step(0);
    reopened.append(b"tail").unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        expected.len() as u64 + 4,
        "step 0: exact"
    );
    drop(reopened);
    assert!(fs::read(&path).unwrap().ends_with(b"record 4999\ntail"));
}

#[test]
fn growable_map_reports_a_truncation_by_someone_else() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log");
    let mut log = GrowableMap::create(&path).unwrap();
    log.append(&pattern(10_000)).unwrap();
    log.flush().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let error = log.read_at(5000, &mut [0; 10]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated);
}
