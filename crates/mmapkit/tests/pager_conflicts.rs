//! Where the safe accessors meet pins, optimistic reads and write-back: what an outside
//! review of the explicit API broke, each kept broken no more.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use mmapkit::ErrorKind;
use mmapkit::pager::{MemoryStore, Pager, Store, WriteTracking};

const PAGE: usize = 4096;

fn region(pages: usize, tracking: WriteTracking) -> mmapkit::pager::PagedRegion {
    Pager::new(MemoryStore::new(vec![7; pages * PAGE]))
        .write_tracking(tracking)
        .build()
        .unwrap()
}

#[test]
fn write_at_waits_for_another_threads_shared_pin_and_refuses_its_own() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let region = region(4, tracking);
        let guard = region.pin_shared(0).unwrap();
        let refused = region.write_at(0, &[99]).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::WouldBlock, "{refused}");
        let written = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                region.write_at(0, &[99]).unwrap();
                written.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !written.load(Ordering::SeqCst),
                "the write waits for the pin"
            );
            assert_eq!(
                guard[0], 7,
                "{tracking:?}: bytes under a live pin never change"
            );
            drop(guard);
        });
        assert_eq!(region.read_pod::<u8>(0).unwrap(), 99);
    }
}

#[test]
fn a_thread_that_would_wait_for_its_own_pin_gets_would_block() {
    let region = region(4, WriteTracking::Auto);
    let exclusive = region.pin_exclusive(1).unwrap();
    for error in [
        region.pin_exclusive(1).err().unwrap(),
        region.pin_shared(1).err().unwrap(),
        region
            .read_optimistic(1, |view| view.read::<u8>(0))
            .unwrap_err(),
        region.read_at(PAGE, &mut [0; 4]).unwrap_err(),
        region.write_at(PAGE + 1, &[1]).unwrap_err(),
        region.flush().unwrap_err(),
    ] {
        assert_eq!(error.kind(), ErrorKind::WouldBlock, "{error}");
    }
    // Another region's flush, and other pages, are not this pin's business.
    let other = self::region(2, WriteTracking::Auto);
    other.write_at(0, &[5]).unwrap();
    other.flush().unwrap();
    assert_eq!(region.read_pod::<u8>(0).unwrap(), 7);
    drop(exclusive);
    let shared = region.pin_shared(2).unwrap();
    assert_eq!(
        region.pin_exclusive(2).err().unwrap().kind(),
        ErrorKind::WouldBlock
    );
    let again = region.pin_shared(2).unwrap();
    assert_eq!((shared[0], again[0]), (7, 7), "shared pins stack");
}

#[test]
fn a_page_with_every_shared_pin_it_can_count_refuses_one_more() {
    let region = region(1, WriteTracking::Auto);
    let guards: Vec<_> = (0..65_535).map(|_| region.pin_shared(0).unwrap()).collect();
    let error = region.pin_shared(0).err().unwrap();
    assert_eq!(error.kind(), ErrorKind::WouldBlock, "{error}");
    drop(guards);
    assert!(region.pin_exclusive(0).is_ok());
}

#[test]
fn optimistic_readers_never_validate_half_a_write_at() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let region = region(2, tracking);
        let stop = AtomicBool::new(false);
        let validated = AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut value = 0u8;
                while !stop.load(Ordering::SeqCst) {
                    value = value.wrapping_add(1);
                    region.write_at(0, &[value; PAGE]).unwrap();
                }
            });
            scope.spawn(|| {
                let mut page = vec![0u8; PAGE];
                for _ in 0..20_000 {
                    region
                        .read_optimistic(0, |view| view.read_into(0, &mut page))
                        .unwrap();
                    assert!(
                        page.iter().all(|&b| b == page[0]),
                        "{tracking:?}: a torn page passed validation"
                    );
                    let mut copy = [0u8; PAGE];
                    region.read_at(0, &mut copy).unwrap();
                    assert!(
                        copy.iter().all(|&b| b == copy[0]),
                        "read_at copied a torn page"
                    );
                    validated.fetch_add(1, Ordering::SeqCst);
                }
                stop.store(true, Ordering::SeqCst);
            });
        });
        assert_eq!(validated.load(Ordering::SeqCst), 20_000);
    }
}

/// Counts the write-backs whose bytes changed while the store held them.
struct Watcher {
    inner: MemoryStore,
    writes: AtomicU64,
    changed: AtomicU64,
}

impl Store for Watcher {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let before = data.to_vec();
        std::thread::sleep(Duration::from_millis(1));
        self.writes.fetch_add(1, Ordering::SeqCst);
        if before != data {
            self.changed.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write_at(offset, data)
    }
}

#[test]
fn the_store_is_never_handed_bytes_that_change_under_it() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let store = Arc::new(Watcher {
            inner: MemoryStore::new(vec![0; 4 * PAGE]),
            writes: AtomicU64::new(0),
            changed: AtomicU64::new(0),
        });
        let region = Pager::from_arc(store.clone())
            .write_tracking(tracking)
            .build()
            .unwrap();
        let stop = AtomicBool::new(false);
        let writing = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut value = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    value += 1;
                    // SAFETY: the bytes lie in the writable region and no reference covers
                    // them: raw writes, as a program using the view would make.
                    unsafe { region.as_mut_ptr().cast::<u64>().write_volatile(value) };
                    if value == 1 {
                        writing.wait();
                    }
                }
            });
            writing.wait();
            for _ in 0..60 {
                region.flush().unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        });
        assert!(store.writes.load(Ordering::SeqCst) > 0);
        assert_eq!(store.changed.load(Ordering::SeqCst), 0, "{tracking:?}");
    }
}

#[test]
fn flushes_racing_evictions_lose_no_write() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let store = Arc::new(MemoryStore::new(vec![0; PAGE]));
        let region = Pager::from_arc(store.clone())
            .write_tracking(tracking)
            .build()
            .unwrap();
        let stop = AtomicBool::new(false);
        let start = Barrier::new(3);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                start.wait();
                while !stop.load(Ordering::SeqCst) {
                    region.evict(..).unwrap();
                }
            });
            scope.spawn(|| {
                start.wait();
                while !stop.load(Ordering::SeqCst) {
                    region.flush().unwrap();
                }
            });
            start.wait();
            for value in 1..=40_000u64 {
                let seen = region.read_pod::<u64>(0).unwrap();
                assert_eq!(seen, value - 1, "{tracking:?}: a write was lost");
                if value % 8 == 0 {
                    region.write_pod(0, &value).unwrap();
                } else {
                    // SAFETY: the word lies in the writable region and no reference covers
                    // it; the view's first-write tracking must see this write.
                    unsafe { region.as_mut_ptr().cast::<u64>().write_volatile(value) };
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
        region.flush().unwrap();
        assert_eq!(store.snapshot()[..8], 40_000u64.to_ne_bytes());
    }
}

#[test]
fn a_forgotten_exclusive_pin_does_not_keep_the_region_from_dropping() {
    let store = Arc::new(MemoryStore::new(vec![0; 2 * PAGE]));
    let region = Pager::from_arc(store.clone()).build().unwrap();
    let mut guard = region.pin_exclusive(1).unwrap();
    guard[0] = 42;
    std::mem::forget(guard);
    drop(region);
    assert_eq!(
        store.snapshot()[PAGE],
        42,
        "the forgotten writer's bytes were written back"
    );
}

#[test]
fn a_failed_allocation_hands_its_page_to_the_next_one() {
    let store = MemoryStore::new(vec![1; 4 * PAGE]);
    let region = Pager::new(store)
        .budget(2 * PAGE)
        .allocated(0)
        .build()
        .unwrap();
    let first = region.allocate_page().unwrap();
    let second = region.allocate_page().unwrap();
    assert_eq!((first.page(), second.page()), (0, 1));
    let full = region.allocate_page().err().unwrap();
    assert_eq!(full.kind(), ErrorKind::OutOfMemory, "{full}");
    assert_eq!(region.allocated_pages(), 2);
    drop((first, second));
    let third = region.allocate_page().unwrap();
    assert_eq!(third.page(), 2, "page 2 was not lost to the failure");
    assert!(third.iter().all(|&b| b == 0));
}

#[test]
fn a_raw_write_right_after_its_fault_is_in_the_next_flush() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let store = Arc::new(MemoryStore::new(vec![0; 64 * PAGE]));
        let region = Pager::from_arc(store.clone())
            .write_tracking(tracking)
            .build()
            .unwrap();
        for round in 0..2_000usize {
            let page = round % 64;
            let value = (round % 251) as u8 + 1;
            // Filled by the explicit path: in memory, but not mapped in the view.
            region.write_at(page * PAGE + 1, &[value]).unwrap();
            region.flush().unwrap();
            // SAFETY: the byte lies in the writable region and no reference covers it; the
            // write faults the page into the view, and the flush after it must see it.
            unsafe { region.as_mut_ptr().add(page * PAGE).write_volatile(value) };
            region.flush().unwrap();
            let bytes = store.snapshot();
            assert_eq!(
                bytes[page * PAGE..page * PAGE + 2],
                [value, value],
                "{tracking:?}: round {round}"
            );
            region.evict(page * PAGE..(page + 1) * PAGE).unwrap();
        }
    }
}
