//! `inspect` against what the process itself did: mappings it made appear with the right
//! fields, smaps figures follow touches and locks, and residency survives files that change
//! under it.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

use mmapkit::inspect::{self, MappingKind, Pid, ResidencyOptions};
use mmapkit::{ErrorKind, MapOptions};

fn entry_at(address: *const u8) -> inspect::SmapsEntry {
    let address = address as u64;
    inspect::smaps(Pid::Current)
        .unwrap()
        .into_iter()
        .find(|entry| entry.map.start <= address && address < entry.map.end)
        .expect("the mapping is listed")
}

#[test]
fn our_own_mappings_are_listed_with_their_fields() {
    let mut anonymous = MapOptions::new()
        .len(3 * 4096)
        .write(true)
        .map_anonymous()
        .unwrap();
    anonymous.as_mut_slice().unwrap().fill(1);
    let entry = entry_at(anonymous.as_ptr());
    assert_eq!(entry.map.kind, MappingKind::Anonymous);
    assert_eq!(entry.map.permissions.to_string(), "rw-p");
    assert!(entry.fields.rss >= 3 * 4096 && entry.fields.private_dirty >= 3 * 4096);
    anonymous.lock(..).unwrap();
    assert!(entry_at(anonymous.as_ptr()).fields.locked >= 3 * 4096);

    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(16 * 4096).unwrap();
    let mapped = MapOptions::new()
        .offset(8192)
        .len(4096)
        .shared()
        .map_path(file.path())
        .unwrap();
    let entry = entry_at(mapped.as_ptr());
    assert_eq!(entry.map.kind, MappingKind::File(file.path().to_path_buf()));
    assert_eq!(entry.map.offset, 8192);
    assert_eq!(entry.map.inode, file.as_file().metadata().unwrap().ino());
    assert_eq!(entry.map.permissions.to_string(), "r--s");
    let path = file.path().to_path_buf();
    drop(file);
    assert_eq!(
        entry_at(mapped.as_ptr()).map.kind,
        MappingKind::DeletedFile(path)
    );

    // A live file whose name has a newline (which /proc escapes) and ends in " (deleted)".
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("two\nlines (deleted)");
    std::fs::write(&odd, [9u8; 4096]).unwrap();
    let odd_mapping = MapOptions::new().map_path(&odd).unwrap();
    let odd_kind = |maps: Vec<inspect::MapsEntry>| {
        let address = odd_mapping.as_ptr() as u64;
        maps.into_iter()
            .find(|entry| entry.start == address)
            .expect("the mapping is listed")
            .kind
    };
    assert_eq!(
        odd_kind(inspect::maps(Pid::Current).unwrap()),
        MappingKind::File(odd.clone())
    );
    std::fs::remove_file(&odd).unwrap();
    assert_eq!(
        odd_kind(inspect::maps(Pid::Current).unwrap()),
        MappingKind::DeletedFile(odd)
    );

    let maps = inspect::maps(Pid::Current).unwrap();
    assert!(
        maps.iter()
            .any(|entry| entry.kind == MappingKind::Heap || entry.kind == MappingKind::Stack)
    );
    let own = inspect::maps(Pid::Id(std::process::id())).unwrap();
    assert!(own.len() >= 10);
    assert!(
        inspect::command_line(Pid::Current)
            .unwrap()
            .contains("inspect")
    );
    let missing = inspect::smaps(Pid::Id(u32::MAX - 1)).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[test]
fn residency_survives_a_file_that_grows_and_shrinks_under_it() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let resizer = scope.spawn(|| {
            let mut grow = true;
            while !stop.load(Ordering::Relaxed) {
                let len = if grow { 8 << 20 } else { 4096 };
                file.as_file().set_len(len).unwrap();
                grow = !grow;
            }
        });
        let options = ResidencyOptions {
            range: None,
            page_map: true,
        };
        for _ in 0..300 {
            let report = inspect::residency(file.path(), &options).unwrap();
            let map = report.page_map.unwrap();
            assert_eq!(map.len() as u64, report.pages);
            assert!(report.cached <= report.pages);
        }
        stop.store(true, Ordering::Relaxed);
        resizer.join().unwrap();
    });
}

#[test]
fn a_walk_over_a_changing_tree_reports_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let path = dir.path().join(format!("f{}", round % 50));
                if round.is_multiple_of(2) {
                    let _ = std::fs::write(&path, vec![0u8; 10_000]);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
                round = round.wrapping_add(7);
            }
        });
        for _ in 0..100 {
            let mut files = 0;
            inspect::walk::walk(
                &[dir.path()],
                &Default::default(),
                |_, _| true,
                |entry| {
                    if let inspect::walk::Entry::File { file, .. } = entry {
                        files += 1;
                        let measured = inspect::residency_of(&file, &ResidencyOptions::default());
                        assert!(measured.is_ok(), "{measured:?}");
                    }
                },
            );
            assert!(files <= 50);
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn an_exited_process_not_yet_reaped_has_no_mappings_and_says_so() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&stat).unwrap().contains(") Z ") {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        inspect::command_line(Pid::Id(pid)).unwrap(),
        "[true] <defunct>"
    );
    assert!(inspect::maps(Pid::Id(pid)).unwrap().is_empty());
    child.wait().unwrap();
}
