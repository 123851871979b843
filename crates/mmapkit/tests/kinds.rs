//! Every kind of mapping, checked against what the kernel reports in /proc/self/maps, and the
//! borrowing rules that follow from each kind's reach.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use common::{file_with, maps_line, pattern, vm_flags};
use mmapkit::{Backing, ErrorKind, MapOptions, Protection, Reach, Sharing};
use rustix::fs::{MemfdFlags, SealFlags};

#[test]
fn shared_read_only_file_mapping() {
    let file = file_with(&pattern(3 * 4096));
    let map = MapOptions::new().map_path(file.path()).unwrap();
    let line = maps_line(map.as_ptr());
    assert_eq!(line.perms, "r--s");
    assert_eq!(line.offset, 0);
    assert_eq!(
        line.path,
        file.path().canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(map.len(), 3 * 4096);
    assert_eq!(map.reach(), Reach::Truncatable);
    assert_eq!(map.sharing(), Sharing::Shared);
    assert_eq!(map.backing(), Backing::File);
}

#[test]
fn shared_writable_file_mapping_writes_reach_the_file() {
    let file = file_with(&pattern(8192));
    let map = MapOptions::new().write(true).map_path(file.path()).unwrap();
    assert_eq!(maps_line(map.as_ptr()).perms, "rw-s");
    map.write_at(100, b"through the map").unwrap();
    // No msync needed for visibility: the page cache is shared with read(2).
    assert_eq!(
        &fs::read(file.path()).unwrap()[100..115],
        b"through the map"
    );
}

#[test]
fn view_starts_exactly_at_an_unaligned_offset() {
    let contents = pattern(5 * 4096);
    let file = file_with(&contents);
    let map = MapOptions::new()
        .offset(5000)
        .len(3000)
        .map_file(file.as_file())
        .unwrap();
    let line = maps_line(map.as_ptr());
    assert_eq!(
        line.offset, 4096,
        "the kernel maps from the page holding offset 5000"
    );
    assert_eq!(map.as_ptr() as usize % 4096, 5000 - 4096);
    let mut bytes = vec![0; 3000];
    map.read_at(0, &mut bytes).unwrap();
    assert_eq!(bytes, contents[5000..8000]);
    assert_eq!(map.file_offset(), 5000);
}

#[test]
fn whole_file_from_an_offset_by_default() {
    let contents = pattern(10_000);
    let file = file_with(&contents);
    let map = MapOptions::new()
        .offset(9_000)
        .map_file(file.as_file())
        .unwrap();
    assert_eq!(map.len(), 1_000);
    let mut tail = vec![0; 1_000];
    map.read_at(0, &mut tail).unwrap();
    assert_eq!(tail, contents[9_000..]);
}

#[test]
fn private_file_mapping_is_copy_on_write() {
    let contents = pattern(8192);
    let file = file_with(&contents);
    let read_only = File::open(file.path()).unwrap();
    let private = MapOptions::new()
        .write(true)
        .private()
        .map_file(&read_only)
        .unwrap();
    let shared = MapOptions::new().map_file(&read_only).unwrap();
    assert_eq!(maps_line(private.as_ptr()).perms, "rw-p");
    private.write_at(0, b"private scribble").unwrap();

    let mut seen = [0u8; 16];
    shared.read_at(0, &mut seen).unwrap();
    assert_eq!(
        seen,
        contents[..16],
        "another mapping of the file must not see the write"
    );
    private.flush().unwrap();
    assert_eq!(
        fs::read(file.path()).unwrap(),
        contents,
        "the file must not see it either"
    );
    private.read_at(0, &mut seen).unwrap();
    assert_eq!(&seen, b"private scribble");
}

#[test]
fn private_anonymous_mapping_is_exclusive() {
    let mut map = MapOptions::new().len(10_000).map_anonymous().unwrap();
    let line = maps_line(map.as_ptr());
    assert_eq!(line.perms, "rw-p");
    assert_eq!(line.path, "");
    assert!(line.start <= map.as_ptr() as usize && map.as_ptr() as usize + 12_288 <= line.end);
    assert_eq!(
        map.residency(..).unwrap().pages(),
        3,
        "rounded up to whole pages"
    );
    assert_eq!(map.reach(), Reach::Exclusive);
    let slice = map.as_mut_slice().unwrap();
    assert!(slice.iter().all(|&byte| byte == 0));
    slice[9_999] = 7;
    assert_eq!(
        map.view::<u8>(9_999).unwrap_err().kind(),
        ErrorKind::NotExclusive
    );
    map.protect(.., Protection::READ).unwrap();
    assert_eq!(
        map.as_slice().unwrap()[9_999],
        7,
        "read-only exclusive memory can be shared"
    );
    assert_eq!(*map.view::<u8>(9_999).unwrap(), 7);
}

#[test]
fn shared_anonymous_mapping_offers_atomics_not_slices() {
    let mut map = MapOptions::new()
        .len(4096)
        .shared()
        .map_anonymous()
        .unwrap();
    let line = maps_line(map.as_ptr());
    assert_eq!(line.perms, "rw-s");
    assert_eq!(line.path, "/dev/zero (deleted)");
    assert_eq!(map.reach(), Reach::Shared);
    assert_eq!(
        map.as_mut_slice().unwrap_err().kind(),
        ErrorKind::NotExclusive
    );
    let counter: &AtomicU64 = map.atomic(8).unwrap();
    counter.store(41, Ordering::SeqCst);
    counter.fetch_add(1, Ordering::SeqCst);
    assert_eq!(map.read_pod::<u64>(8).unwrap(), 42);
    assert_eq!(
        map.atomic::<AtomicU64>(4).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn dev_zero_mappings_behave_like_anonymous_memory() {
    let zero = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    let shared = MapOptions::new()
        .len(4096)
        .write(true)
        .map_file(&zero)
        .unwrap();
    assert_eq!(shared.backing(), Backing::DevZero);
    assert_eq!(shared.reach(), Reach::Shared);
    let line = maps_line(shared.as_ptr());
    assert_eq!(
        (line.perms.as_str(), line.path.as_str()),
        ("rw-s", "/dev/zero (deleted)")
    );

    let mut private = MapOptions::new()
        .len(4096)
        .write(true)
        .private()
        .map_file(&zero)
        .unwrap();
    assert_eq!(private.reach(), Reach::Exclusive);
    assert_eq!(maps_line(private.as_ptr()).perms, "rw-p");
    assert!(
        private
            .as_mut_slice()
            .unwrap()
            .iter()
            .all(|&byte| byte == 0)
    );
}

#[test]
fn memfd_reach_follows_its_seals() {
    let memfd = rustix::fs::memfd_create("kinds", MemfdFlags::ALLOW_SEALING).unwrap();
    let file = File::from(memfd);
    file.set_len(8192).unwrap();
    let unsealed = MapOptions::new().write(true).map_file(&file).unwrap();
    assert_eq!(unsealed.reach(), Reach::Truncatable);
    assert!(
        maps_line(unsealed.as_ptr())
            .path
            .starts_with("/memfd:kinds")
    );
    unsealed.write_at(0, b"sealed soon").unwrap();

    rustix::fs::fcntl_add_seals(file.as_fd(), SealFlags::SHRINK | SealFlags::GROW).unwrap();
    let shared = MapOptions::new().write(true).map_file(&file).unwrap();
    assert_eq!(shared.reach(), Reach::Shared);
    let word: &AtomicU32 = shared.atomic(4096).unwrap();
    word.store(0xfeed, Ordering::Relaxed);
    drop(unsealed);
    drop(shared);

    rustix::fs::fcntl_add_seals(file.as_fd(), SealFlags::WRITE).unwrap();
    let mut private = MapOptions::new()
        .write(true)
        .private()
        .map_file(&file)
        .unwrap();
    assert_eq!(private.reach(), Reach::Exclusive);
    assert_eq!(&private.as_mut_slice().unwrap()[..11], b"sealed soon");
    private.as_mut_slice().unwrap()[0] = b'S';
    let reader = MapOptions::new().map_file(&file).unwrap();
    assert_eq!(
        reader.reach(),
        Reach::Exclusive,
        "nobody can change a write-sealed memfd"
    );
    assert_eq!(&reader.as_slice().unwrap()[..11], b"sealed soon");
    assert_eq!(*reader.view::<u32>(4096).unwrap(), 0xfeed);
    let write_sealed = MapOptions::new().write(true).map_file(&file).unwrap_err();
    assert_eq!(write_sealed.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn executable_mapping_is_allowed_but_write_exec_needs_unsafe() {
    let file = file_with(&pattern(4096));
    let exec = MapOptions::new().exec(true).map_path(file.path()).unwrap();
    assert_eq!(maps_line(exec.as_ptr()).perms, "r-xs");

    let refused = MapOptions::new()
        .len(4096)
        .exec(true)
        .map_anonymous()
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidInput);
    assert!(refused.to_string().contains("W^X"), "{refused}");

    let mut options = MapOptions::new();
    options.len(4096).exec(true);
    // SAFETY: nothing writes into this mapping.
    let rwx = unsafe { options.allow_write_exec() }
        .map_anonymous()
        .unwrap();
    assert_eq!(maps_line(rwx.as_ptr()).perms, "rwxp");

    let mut plain = MapOptions::new().len(4096).map_anonymous().unwrap();
    let error = plain.protect(.., Protection::all()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    // SAFETY: nothing untrusted writes into this mapping.
    unsafe { plain.protect_write_exec(.., Protection::all()) }.unwrap();
    assert_eq!(maps_line(plain.as_ptr()).perms, "rwxp");
}

#[test]
fn options_reach_the_kernel() {
    let populated = MapOptions::new()
        .len(64 * 1024)
        .populate(true)
        .map_anonymous()
        .unwrap();
    let residency = populated.residency(..).unwrap();
    assert_eq!(
        residency.resident_pages(),
        residency.pages(),
        "MAP_POPULATE faults all in"
    );

    let no_reserve = MapOptions::new()
        .len(4096)
        .no_reserve(true)
        .map_anonymous()
        .unwrap();
    assert!(vm_flags(no_reserve.as_ptr()).contains(&"nr".to_owned()));

    let locked = MapOptions::new()
        .len(8192)
        .locked(true)
        .map_anonymous()
        .unwrap();
    assert!(vm_flags(locked.as_ptr()).contains(&"lo".to_owned()));

    let huge_advice = MapOptions::new()
        .len(4 << 20)
        .transparent_huge_pages(true)
        .map_anonymous()
        .unwrap();
    assert!(vm_flags(huge_advice.as_ptr()).contains(&"hg".to_owned()));

    let stack = MapOptions::new()
        .len(64 * 1024)
        .stack(true)
        .map_anonymous()
        .unwrap();
    assert_eq!(maps_line(stack.as_ptr()).perms, "rw-p");
}

#[test]
fn fixed_address_never_clobbers() {
    let probe = MapOptions::new().len(3 * 4096).map_anonymous().unwrap();
    let address = probe.as_ptr() as usize;
    let taken = MapOptions::new()
        .len(4096)
        .fixed_address(address + 4096)
        .map_anonymous();
    assert_eq!(taken.unwrap_err().kind(), ErrorKind::AlreadyExists);
    drop(probe);

    let placed = MapOptions::new()
        .len(4096)
        .fixed_address(address + 4096)
        .map_anonymous()
        .unwrap();
    assert_eq!(placed.as_ptr() as usize, address + 4096);
    let unaligned = MapOptions::new()
        .len(4096)
        .fixed_address(address + 1)
        .map_anonymous();
    assert_eq!(unaligned.unwrap_err().kind(), ErrorKind::InvalidInput);

    let hinted = MapOptions::new()
        .len(4096)
        .address_hint(address + 4096)
        .map_anonymous()
        .unwrap();
    assert_ne!(
        hinted.as_ptr() as usize,
        address + 4096,
        "a taken hint is moved elsewhere"
    );
}

#[test]
fn huge_pages_without_a_reservation_name_the_knob() {
    let reserved = huge_pages_reserved();
    let result = MapOptions::new()
        .len(2 << 20)
        .huge_pages(mmapkit::HugePageSize::Default)
        .map_anonymous();
    if reserved == 0 {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::OutOfMemory);
        assert!(
            error.to_string().contains("/proc/sys/vm/nr_hugepages"),
            "{error}"
        );
    } else {
        let map = result.unwrap();
        assert_eq!(map.page_size(), 2 << 20);
        assert!(vm_flags(map.as_ptr()).contains(&"ht".to_owned()));
    }
}

#[test]
fn zero_length_files_and_windows_map_as_empty() {
    let empty = file_with(b"");
    let map = MapOptions::new().map_path(empty.path()).unwrap();
    assert!(map.is_empty());
    map.read_at(0, &mut []).unwrap();
    map.flush().unwrap();
    assert_eq!(map.residency(..).unwrap().pages(), 0);
    assert_eq!(map.find(b"", ..).unwrap(), Some(0));
    assert_eq!(
        map.read_at(0, &mut [0]).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );

    let file = file_with(&pattern(100));
    let at_end = MapOptions::new()
        .offset(100)
        .map_file(file.as_file())
        .unwrap();
    assert!(at_end.is_empty());
    let explicit = MapOptions::new().len(0).map_file(file.as_file()).unwrap();
    assert!(explicit.is_empty());
    let mut explicit = explicit;
    let error = explicit.remap(10, mmapkit::RemapMode::MayMove).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
}

fn huge_pages_reserved() -> u64 {
    fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn unreserved_huge_pages_are_reached_through_the_guard() {
    let map = MapOptions::new()
        .len(2 << 20)
        .huge_pages(mmapkit::HugePageSize::MIB_2)
        .no_reserve(true)
        .map_anonymous()
        .unwrap();
    assert_eq!(map.page_size(), 2 << 20);
    assert_eq!(
        map.reach(),
        Reach::Truncatable,
        "a fault may find no huge page: SIGBUS"
    );
    let residency = map.residency(..).unwrap();
    assert_eq!((residency.pages(), residency.resident_pages()), (1, 0));
    if huge_pages_reserved() == 0 {
        let error = map.write_at(0, b"no page to hold this").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Truncated, "{error}");
    }
}

#[test]
fn hugetlbfs_memfd_is_mapped_in_huge_pages() {
    let Ok(memfd) = rustix::fs::memfd_create("huge", MemfdFlags::HUGETLB) else {
        return; // a kernel without hugetlbfs has nothing to test here
    };
    let file = File::from(memfd);
    file.set_len(4 << 20).unwrap();
    let map = MapOptions::new()
        .write(true)
        .no_reserve(true)
        .map_file(&file)
        .unwrap();
    assert_eq!(
        map.page_size(),
        2 << 20,
        "the page size comes from the file system"
    );
    assert_eq!(map.reach(), Reach::Truncatable);
    assert_eq!(map.residency(..).unwrap().pages(), 2);
    assert!(vm_flags(map.as_ptr()).contains(&"ht".to_owned()));
    drop(map); // unmapped in whole huge pages; a wrong length would leak or fail

    let plain = file_with(&pattern(4096));
    let error = MapOptions::new()
        .huge_pages(mmapkit::HugePageSize::Default)
        .map_file(plain.as_file())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
}

#[test]
fn dev_zero_ignores_the_offset() {
    let zero = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    let map = MapOptions::new()
        .offset(4096)
        .len(8192)
        .write(true)
        .map_file(&zero)
        .unwrap();
    assert_eq!(map.reach(), Reach::Shared);
    map.write_at(8000, b"past the first page").unwrap();
    let word: &AtomicU64 = map.atomic(4096).unwrap();
    word.store(7, Ordering::Relaxed);
    assert_eq!(map.read_pod::<u64>(4096).unwrap(), 7);
}
