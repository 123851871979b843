//! The pager's explicit access: pins, optimistic reads and allocation beside the fault path,
//! against models, racing writers and evictions, under pinned budgets and failing stores.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use common::pattern;
use mmapkit::ErrorKind;
use mmapkit::pager::{MemoryStore, Pager, Store, WriteTracking};

const PAGE: usize = 4096;

/// A store whose reads fail while `down` is set.
struct Outage {
    inner: MemoryStore,
    down: AtomicBool,
    reads: AtomicU64,
}

impl Store for Outage {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(io::Error::other(format!("outage at {offset}")));
        }
        self.inner.read_at(offset, buf)
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }

    fn describe(&self) -> String {
        "an outage".into()
    }
}

#[test]
fn explicit_and_faulted_pages_are_the_same_pages() {
    let data = pattern(64 * PAGE);
    let store = Arc::new(MemoryStore::new(data.clone()));
    let region = Pager::from_arc(store).readahead(0).build().unwrap();
    // Filled explicitly: no fault, one store read; a raw access then reads it without one.
    let pinned = region.pin_shared(3).unwrap();
    assert_eq!(&pinned[..], &data[3 * PAGE..4 * PAGE]);
    drop(pinned);
    let stats = region.stats();
    assert_eq!(
        (stats.faults, stats.explicit_fills, stats.pages_filled),
        (0, 1, 1)
    );
    let mut buf = [0u8; 16];
    region.read_at(3 * PAGE + 100, &mut buf).unwrap();
    assert_eq!(buf, data[3 * PAGE + 100..3 * PAGE + 116]);
    assert_eq!(
        region.stats().pages_filled,
        1,
        "the fault found the page in memory"
    );
    // Filled by a fault: the explicit read does not go to the store again.
    region.read_at(9 * PAGE, &mut buf).unwrap();
    let word = region
        .read_optimistic(9, |page| page.read::<[u8; 16]>(0))
        .unwrap();
    assert_eq!(word, Some(buf));
    assert_eq!(region.stats().pages_filled, 2);
    assert_eq!(region.stats().explicit_fills, 1);
}

#[test]
fn exclusive_writes_reach_the_store_and_raw_readers() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let store = Arc::new(MemoryStore::new(pattern(16 * PAGE)));
        let region = Pager::from_arc(store.clone())
            .write_tracking(tracking)
            .build()
            .unwrap();
        let mut page = region.pin_exclusive(5).unwrap();
        page[10..15].copy_from_slice(b"hello");
        assert_eq!(
            region.flush().unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "a flush would wait for this thread's own pin"
        );
        drop(page);
        assert_eq!(region.stats().dirty_bytes, PAGE as u64);
        let mut raw = [0u8; 5];
        region.read_at(5 * PAGE + 10, &mut raw).unwrap();
        assert_eq!(&raw, b"hello");
        region.flush().unwrap();
        assert_eq!(&store.snapshot()[5 * PAGE + 10..5 * PAGE + 15], b"hello");
        // A guard only read is not a write.
        let page = region.pin_exclusive(6).unwrap();
        assert_eq!(page[0], pattern(7 * PAGE)[6 * PAGE]);
        drop(page);
        assert_eq!(region.stats().dirty_bytes, 0, "{tracking:?}");
    }
}

#[test]
fn optimistic_reads_check_every_bound() {
    let region = Pager::new(MemoryStore::new(pattern(3 * PAGE + 100)))
        .build()
        .unwrap();
    let (last, beyond, unaligned) = region
        .read_optimistic(3, |page| {
            (
                page.len(),
                page.read::<u64>(96),
                page.read::<u32>(1).is_some(),
            )
        })
        .unwrap();
    assert_eq!((last, beyond, unaligned), (100, None, true));
    assert!(
        region
            .read_optimistic(0, |page| page.read::<u64>(usize::MAX - 3))
            .unwrap()
            .is_none()
    );
    assert!(
        !region
            .read_optimistic(0, |page| page.read_into(PAGE - 1, &mut [0; 2]))
            .unwrap()
    );
    for error in [
        region.pin_shared(4).unwrap_err(),
        region.read_optimistic(usize::MAX, |_| ()).unwrap_err(),
    ] {
        assert_eq!(error.kind(), ErrorKind::OutOfBounds);
    }
    let read_only = Pager::new(MemoryStore::new(pattern(PAGE)))
        .read_only(true)
        .build()
        .unwrap();
    assert_eq!(
        read_only.pin_exclusive(0).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
}

/// Every word of a page holds the same nonzero value, written under an exclusive pin (with a
/// pause half-way, to widen the window); readers racing the writers and an evicting thread
/// must never accept a page with two values, nor an evicted page's zeros.
#[test]
fn optimistic_readers_never_accept_a_torn_page() {
    let pages = 32;
    let initial: Vec<u8> = (0..pages * PAGE / 8)
        .flat_map(|word| (word as u64 / (PAGE as u64 / 8) + 1).to_ne_bytes())
        .collect();
    let store = Arc::new(MemoryStore::new(initial));
    let region = Pager::from_arc(store.clone())
        .budget(8 * PAGE)
        .readahead(0)
        .build()
        .unwrap();
    // Writers and the evictor run while readers do; a reader that ends, even by a failed
    // assertion, counts itself out, so that a failure never hangs the test.
    let readers_left = AtomicU64::new(2);
    struct CountOut<'a>(&'a AtomicU64);
    impl Drop for CountOut<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    std::thread::scope(|scope| {
        for writer in 0..2u64 {
            let region = &region;
            let readers_left = &readers_left;
            scope.spawn(move || {
                let mut value = writer << 32;
                while readers_left.load(Ordering::Relaxed) > 0 {
                    value += 1;
                    let page = (value as usize * 7 + writer as usize) % pages;
                    let mut guard = region.pin_exclusive(page).unwrap();
                    let (front, back) = guard.split_at_mut(PAGE / 2);
                    for word in front.chunks_exact_mut(8) {
                        word.copy_from_slice(&value.to_ne_bytes());
                    }
                    std::thread::yield_now();
                    for word in back.chunks_exact_mut(8) {
                        word.copy_from_slice(&value.to_ne_bytes());
                    }
                }
            });
        }
        scope.spawn(|| {
            while readers_left.load(Ordering::Relaxed) > 0 {
                region.evict(..).unwrap();
                std::thread::yield_now();
            }
        });
        for reader in 0..2usize {
            let region = &region;
            let readers_left = &readers_left;
            scope.spawn(move || {
                let _count_out = CountOut(readers_left);
                for round in 0..20_000usize {
                    let page = (round * 13 + reader) % pages;
                    let (first, middle, last) = region
                        .read_optimistic(page, |page| {
                            let first = page.read::<u64>(0);
                            // A slow reader: writers and the evictor get their chance.
                            std::thread::yield_now();
                            (
                                first,
                                page.read::<u64>(PAGE / 2 + 8),
                                page.read::<u64>(PAGE - 8),
                            )
                        })
                        .unwrap();
                    assert!(
                        first == middle && middle == last && first != Some(0),
                        "page {page} torn: {first:?} {middle:?} {last:?}"
                    );
                }
            });
        }
    });
    assert!(region.stats().evictions > 0, "evictions raced the readers");
    region.flush().unwrap();
    // What reached the store is whole pages too.
    for page in store.snapshot().chunks_exact(PAGE) {
        assert!(page.chunks_exact(8).all(|word| word == &page[..8]));
    }
}

#[test]
fn pinned_pages_are_never_evicted_and_a_budget_of_pins_is_an_error() {
    let data = pattern(32 * PAGE);
    let region = Pager::new(MemoryStore::new(data.clone()))
        .budget(4 * PAGE)
        .readahead(0)
        .build()
        .unwrap();
    let pins: Vec<_> = (0..4)
        .map(|page| region.pin_shared(page).unwrap())
        .collect();
    assert_eq!(region.evict(..).unwrap(), 0, "pinned pages stay");
    let error = region.pin_shared(10).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfMemory, "{error}");
    assert!(error.to_string().contains("pinned"), "{error}");
    // A raw access still gets its page (over the budget rather than hang).
    let mut buf = [0u8; 4];
    region.read_at(20 * PAGE, &mut buf).unwrap();
    assert_eq!(buf, data[20 * PAGE..20 * PAGE + 4]);
    for (page, pin) in pins.iter().enumerate() {
        assert!(region.is_resident(page * PAGE));
        assert_eq!(&pin[..], &data[page * PAGE..(page + 1) * PAGE]);
    }
    drop(pins);
    assert_eq!(
        &region.pin_shared(10).unwrap()[..4],
        &data[10 * PAGE..10 * PAGE + 4]
    );
}

#[test]
fn a_failing_store_is_an_error_value_and_the_page_is_tried_again() {
    let store = Arc::new(Outage {
        inner: MemoryStore::new(pattern(8 * PAGE)),
        down: AtomicBool::new(true),
        reads: AtomicU64::new(0),
    });
    let region = Pager::from_arc(store.clone()).readahead(0).build().unwrap();
    for _ in 0..3 {
        let error = region.pin_shared(2).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Store, "{error}");
        assert!(error.to_string().contains("outage"), "{error}");
        assert_eq!(error.offset(), Some(2 * PAGE as u64));
        let error = region
            .read_optimistic(2, |page| page.read::<u8>(0))
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Store);
        assert_eq!(
            region.pin_exclusive(2).unwrap_err().kind(),
            ErrorKind::Store
        );
    }
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        9,
        "asked again every time"
    );
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        region.pin_shared(2).unwrap()[0],
        pattern(3 * PAGE)[2 * PAGE]
    );
    let mut buf = [0u8; 1];
    region.read_at(2 * PAGE, &mut buf).unwrap();
}

#[test]
fn allocated_pages_are_zeros_written_back_and_bounded() {
    let store = Arc::new(MemoryStore::new(pattern(4 * PAGE)));
    let region = Pager::from_arc(store.clone())
        .allocated(PAGE as u64 + 1)
        .build()
        .unwrap();
    assert_eq!(region.allocated_pages(), 2);
    let reads = region.stats().bytes_read;
    let mut page = region.allocate_page().unwrap();
    assert_eq!(page.page(), 2);
    assert!(page.iter().all(|&byte| byte == 0), "a new page is zeros");
    page[..4].copy_from_slice(b"new!");
    drop(page);
    assert_eq!(region.stats().bytes_read, reads, "the store was not read");
    assert_eq!(region.allocate_page().unwrap().page(), 3);
    assert_eq!(
        region.allocate_page().unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    region.flush().unwrap();
    let bytes = store.snapshot();
    assert_eq!(&bytes[2 * PAGE..2 * PAGE + 4], b"new!");
    assert!(bytes[3 * PAGE..].iter().all(|&byte| byte == 0));
    assert_eq!(
        bytes[..2 * PAGE],
        pattern(2 * PAGE)[..],
        "pages in use untouched"
    );
}

/// Several threads mix explicit reads and writes with raw-pointer faults (guarded copies)
/// over a region 16 times its budget; each thread owns its own pages, so a model per
/// thread predicts every byte; the store matches after flush and after drop.
#[test]
fn explicit_and_faulting_threads_agree_with_a_model() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        let pages = 128;
        let threads = 4;
        let store = Arc::new(MemoryStore::new(pattern(pages * PAGE)));
        let region = Pager::from_arc(store.clone())
            .budget(8 * PAGE)
            .write_tracking(tracking)
            .build()
            .unwrap();
        let barrier = Barrier::new(threads);
        let models: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|thread| {
                    let region = &region;
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut model = pattern(pages * PAGE);
                        let mut seed = thread as u64 + 1;
                        barrier.wait();
                        for _ in 0..1500 {
                            seed = seed
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let page =
                                ((seed >> 33) as usize % (pages / threads)) * threads + thread;
                            let at = (seed >> 20) as usize % (PAGE - 8);
                            let value = (seed >> 8) as u8;
                            let base = page * PAGE;
                            match seed % 5 {
                                0 => {
                                    let mut guard = region.pin_exclusive(page).unwrap();
                                    guard[at..at + 8].fill(value);
                                    model[base + at..base + at + 8].fill(value);
                                }
                                1 => {
                                    region.write_at(base + at, &[value; 8]).unwrap();
                                    model[base + at..base + at + 8].fill(value);
                                }
                                2 => {
                                    let seen = region
                                        .read_optimistic(page, |view| view.read::<[u8; 8]>(at))
                                        .unwrap()
                                        .unwrap();
                                    assert_eq!(seen[..], model[base + at..base + at + 8]);
                                }
                                3 => {
                                    let guard = region.pin_shared(page).unwrap();
                                    assert_eq!(guard[..], model[base..base + PAGE]);
                                }
                                _ => {
                                    let mut buf = [0u8; 8];
                                    region.read_at(base + at, &mut buf).unwrap();
                                    assert_eq!(buf[..], model[base + at..base + at + 8]);
                                }
                            }
                        }
                        model
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut expected = pattern(pages * PAGE);
        for page in 0..pages {
            let range = page * PAGE..(page + 1) * PAGE;
            expected[range.clone()].copy_from_slice(&models[page % threads][range]);
        }
        assert!(region.stats().peak_resident_bytes <= 12 * PAGE as u64);
        region.flush().unwrap();
        assert!(
            store.snapshot() == expected,
            "{tracking:?}: the store after flush"
        );
        let mut guard = region.pin_exclusive(1).unwrap();
        guard[0] = 0xAB;
        expected[PAGE] = 0xAB;
        drop(guard);
        drop(region);
        assert!(
            store.snapshot() == expected,
            "{tracking:?}: the store after drop"
        );
    }
}

#[test]
fn the_evictor_keeps_room_in_the_background() {
    let data = pattern(2048 * PAGE);
    let region = Pager::new(MemoryStore::new(data.clone()))
        .budget(512 * PAGE)
        .readahead(0)
        .build()
        .unwrap();
    for page in 0..2048 {
        let pinned = region.pin_shared(page).unwrap();
        assert_eq!(pinned[7], data[page * PAGE + 7]);
        drop(pinned);
        if page % 64 == 0 {
            // Room for the evictor to run on a machine with few CPUs.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let stats = region.stats();
    assert!(stats.evictions >= 2048 - 512, "{stats}");
    assert!(
        stats.background_evictions > stats.evictions / 2,
        "most evictions ran in the background: {stats}"
    );
    assert!(stats.peak_resident_bytes <= 512 * PAGE as u64, "{stats}");
}
