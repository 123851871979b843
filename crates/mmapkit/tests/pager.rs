//! The pager with real userfaultfd faults: contents against a model, dirty tracking and
//! write-back, the budget, read-ahead and prefetch, concurrent faults, failing stores, drop.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mmapkit::ErrorKind;
use mmapkit::pager::{FileStore, MemoryStore, OnStoreError, Pager, Store, WriteTracking};
use proptest::prelude::*;

const KIB: usize = 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A memory store that fails or stalls on demand.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    read_delay_ms: AtomicU64,
    reads: AtomicU64,
    /// Reads that cover this byte fail (`u64::MAX`: none).
    bad_byte: AtomicU64,
}

impl FlakyStore {
    fn new(bytes: Vec<u8>) -> Arc<FlakyStore> {
        Arc::new(FlakyStore {
            inner: MemoryStore::new(bytes),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            read_delay_ms: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            bad_byte: AtomicU64::new(u64::MAX),
        })
    }
}

impl Store for FlakyStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(
            self.read_delay_ms.load(Ordering::SeqCst),
        ));
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(io::Error::other(format!("disk on fire at {offset}")));
        }
        let bad = self.bad_byte.load(Ordering::SeqCst);
        if (offset..offset + buf.len() as u64).contains(&bad) {
            return Err(io::Error::other(format!("bad sector at {bad}")));
        }
        self.inner.read_at(offset, buf)
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space"));
        }
        self.inner.write_at(offset, data)
    }
}

#[test]
fn reads_come_from_the_store_and_writes_reach_it_on_flush() {
    for tracking in [WriteTracking::Faults, WriteTracking::Async] {
        reads_and_writes_reach_the_store(tracking);
    }
}

/// Both ways of finding first writes: a fault each (the fallback, forced here), and the
/// kernel's asynchronous protection with PAGEMAP_SCAN at flush.
fn reads_and_writes_reach_the_store(tracking: WriteTracking) {
    let store = Arc::new(MemoryStore::new(pattern(KIB * KIB)));
    let region = Pager::from_arc(store.clone())
        .page_size(16 * KIB)
        .write_tracking(tracking)
        .build()
        .unwrap();
    assert_eq!(region.len(), KIB * KIB);
    let mut buf = vec![0u8; 100];
    region.read_at(70_000, &mut buf).unwrap();
    assert_eq!(buf, pattern(KIB * KIB)[70_000..70_100]);
    assert!(region.is_resident(70_000) && !region.is_resident(0));

    region.write_at(5, b"hello").unwrap();
    assert_eq!(
        &store.snapshot()[5..10],
        &pattern(10)[5..10],
        "not before flush"
    );
    assert_eq!(region.stats().dirty_bytes, 16 * KIB as u64);
    region.flush().unwrap();
    assert_eq!(&store.snapshot()[5..10], b"hello");
    let stats = region.stats();
    assert_eq!(
        (
            stats.faults,
            stats.explicit_fills,
            stats.dirty_bytes,
            stats.writebacks
        ),
        (1, 1, 0, 1),
        "the read faulted its page in, the write filled its own under an exclusive pin"
    );

    // Clean again and write-protected: the next write through the view is seen once more
    // (by its fault, or by the flush's scan).
    // SAFETY: the byte lies in the writable region, and no reference covers it.
    unsafe { region.as_mut_ptr().add(6).write_volatile(b'E') };
    let seen_at_once = u64::from(tracking == WriteTracking::Faults);
    assert_eq!(region.stats().write_faults, seen_at_once, "{tracking:?}");
    region.flush().unwrap();
    assert_eq!(&store.snapshot()[5..10], b"hEllo", "{tracking:?}");
    assert_eq!(region.stats().write_faults, 1, "{tracking:?}");
    // A page that was only read is not written back.
    region.read_at(200_000, &mut [0; 8]).unwrap();
    region.flush().unwrap();
    assert_eq!(region.stats().writebacks, 2, "{tracking:?}");
}

#[test]
fn dirty_pages_reach_a_file_on_drop() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(3 * 64 * KIB as u64 + 100).unwrap();
    let region = Pager::new(FileStore::open(file.path(), true).unwrap())
        .build()
        .unwrap();
    region.write_at(3 * 64 * KIB + 90, b"tail").unwrap();
    region.write_at(64 * KIB, b"middle").unwrap();
    drop(region);
    let bytes = std::fs::read(file.path()).unwrap();
    assert_eq!(bytes.len(), 3 * 64 * KIB + 100, "the file keeps its length");
    assert_eq!(&bytes[3 * 64 * KIB + 90..3 * 64 * KIB + 94], b"tail");
    assert_eq!(&bytes[64 * KIB..64 * KIB + 6], b"middle");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Random reads and writes over a region 32 times its budget agree with a plain buffer,
    /// and the store holds the buffer after flush.
    #[test]
    fn random_access_under_a_small_budget_matches_a_model(
        ops in prop::collection::vec((any::<bool>(), 0usize..(1 << 20), 1usize..9000, any::<u8>()), 1..150),
        page_size in prop::sample::select(vec![4 * KIB, 12 * KIB, 64 * KIB]),
    ) {
        let size = 1 << 20;
        let store = Arc::new(MemoryStore::new(pattern(size)));
        let region = Pager::from_arc(store.clone())
            .page_size(page_size)
            .budget(8 * page_size)
            .build()
            .unwrap();
        let mut model = pattern(size);
        for (write, offset, len, byte) in ops {
            let len = len.min(size - offset);
            if write {
                let data = vec![byte; len];
                region.write_at(offset, &data).unwrap();
                model[offset..offset + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0; len];
                region.read_at(offset, &mut buf).unwrap();
                prop_assert!(buf == model[offset..offset + len], "read at {} len {}", offset, len);
            }
            prop_assert!(region.stats().resident_bytes <= 10 * page_size as u64);
        }
        region.flush().unwrap();
        prop_assert!(store.snapshot() == model);
        // Writes after the flush reach the store when the region is dropped.
        for (index, offset) in [0, size / 3, size - 9].into_iter().enumerate() {
            region.write_at(offset, &[index as u8 + 1; 9]).unwrap();
            model[offset..offset + 9].fill(index as u8 + 1);
        }
        drop(region);
        prop_assert!(store.snapshot() == model);
    }
}

#[test]
fn a_budget_evicts_and_evicted_pages_are_read_again() {
    let store = Arc::new(MemoryStore::new(pattern(256 * KIB)));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .budget(16 * KIB)
        .readahead(0)
        .build()
        .unwrap();
    for page in 0..64 {
        region.write_pod(page * 4 * KIB, &(page as u32)).unwrap();
    }
    let stats = region.stats();
    assert!(stats.resident_bytes <= 16 * KIB as u64, "{stats}");
    assert!(stats.evictions >= 60, "{stats}");
    assert!(
        stats.writebacks >= 60,
        "dirty victims were written back: {stats}"
    );
    for page in 0..64 {
        assert_eq!(region.read_pod::<u32>(page * 4 * KIB).unwrap(), page as u32);
    }
    // An explicit eviction rereads the store, which someone else changed meanwhile.
    region.flush().unwrap();
    region.read_pod::<u32>(0).unwrap();
    assert_eq!(region.evict(0..4 * KIB).unwrap(), 4 * KIB);
    assert!(!region.is_resident(0));
    store.write_at(0, &77u32.to_ne_bytes()).unwrap();
    assert_eq!(region.read_pod::<u32>(0).unwrap(), 77);
}

#[test]
fn a_sequential_scan_reads_ahead_and_prefetch_fills_in_the_background() {
    let size = 8 << 20;
    let store = Arc::new(MemoryStore::new(pattern(size)));
    let region = Pager::from_arc(store).build().unwrap();
    let mut buf = vec![0u8; 4 * KIB];
    for offset in (0..size / 2).step_by(4 * KIB) {
        region.read_at(offset, &mut buf).unwrap();
    }
    let stats = region.stats();
    assert!(
        stats.pages_prefetched > stats.faults,
        "most pages of a scan come from read-ahead: {stats}"
    );

    region.prefetch(size / 2..).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(size / 2..size)
        .step_by(64 * KIB)
        .all(|o| region.is_resident(o))
    {
        assert!(Instant::now() < deadline, "prefetch did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let faults = region.stats().faults;
    region.read_at(size - 4 * KIB, &mut buf).unwrap();
    assert_eq!(
        region.stats().faults,
        faults,
        "prefetched pages do not fault"
    );
    assert_eq!(buf, pattern(size)[size - 4 * KIB..]);
}

#[test]
fn threads_faulting_the_same_and_different_pages_see_the_same_bytes() {
    let size = 4 << 20;
    let expected = pattern(size);
    let store = Arc::new(MemoryStore::new(expected.clone()));
    for handlers in [1, 3] {
        let region = Pager::from_arc(store.clone())
            .page_size(16 * KIB)
            .handler_threads(handlers)
            .budget(1 << 20)
            .build()
            .unwrap();
        let threads = 6;
        let barrier = Barrier::new(threads);
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let (region, expected, barrier) = (&region, &expected, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut buf = vec![0u8; 3000];
                    let mut x = thread as u64 + 1;
                    for round in 0..400 {
                        // Half the reads hit one hot page everybody wants at once.
                        let offset = if round % 2 == 0 {
                            8 * KIB
                        } else {
                            x = x
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            (x >> 20) as usize % (size - buf.len())
                        };
                        region.read_at(offset, &mut buf).unwrap();
                        assert_eq!(buf, expected[offset..offset + buf.len()]);
                    }
                });
            }
        });
        assert!(region.stats().resident_bytes <= (1 << 20) + 3 * 16 * KIB as u64);
    }
}

#[test]
fn a_failing_store_reports_an_error_value_and_the_page_is_retried() {
    let store = FlakyStore::new(pattern(256 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .build()
        .unwrap();
    store.fail_reads.store(true, Ordering::SeqCst);
    let mut buf = [0u8; 16];
    let error = region.read_at(8 * KIB + 3, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert_eq!(error.offset(), Some(8 * KIB as u64 + 3));
    assert!(error.to_string().contains("disk on fire"), "{error}");
    let error = region.write_at(100, b"x").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(region.stats().store_errors >= 2);

    store.fail_reads.store(false, Ordering::SeqCst);
    region.read_at(8 * KIB + 3, &mut buf).unwrap();
    assert_eq!(buf[..], pattern(256 * KIB)[8 * KIB + 3..8 * KIB + 19]);
}

#[test]
fn readers_racing_on_a_failing_page_all_get_the_store_error_and_it_recovers() {
    let store = FlakyStore::new(pattern(256 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .readahead(0)
        .build()
        .unwrap();
    store.fail_reads.store(true, Ordering::SeqCst);
    let barrier = Barrier::new(6);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                barrier.wait();
                let mut buf = [0u8; 8];
                for _ in 0..100 {
                    let error = region.read_at(40 * KIB + 8, &mut buf).unwrap_err();
                    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
                }
            });
        }
    });
    store.fail_reads.store(false, Ordering::SeqCst);
    let mut buf = [0u8; 8];
    if let Err(e) = region.read_at(40 * KIB + 8, &mut buf) {
        panic!("{e} {:?}", e.kind());
    }
    assert_eq!(buf[..], pattern(256 * KIB)[40 * KIB + 8..40 * KIB + 16]);
}

#[test]
fn a_bad_page_read_ahead_does_not_fail_the_page_asked_for() {
    let data = pattern(256 * KIB);
    let store = FlakyStore::new(data.clone());
    store
        .bad_byte
        .store(3 * 16 * KIB as u64 + 5, Ordering::SeqCst);
    let region = Pager::from_arc(store.clone())
        .page_size(16 * KIB)
        .build()
        .unwrap();
    let mut buf = vec![0u8; 16 * KIB];
    for page in 0..3 {
        region.read_at(page * 16 * KIB, &mut buf).unwrap();
        assert!(
            buf == data[page * 16 * KIB..(page + 1) * 16 * KIB],
            "page {page}"
        );
    }
    let error = region.read_at(3 * 16 * KIB, &mut buf).unwrap_err();
    assert!(error.to_string().contains("bad sector"), "{error}");
}

#[test]
fn a_store_that_refuses_write_backs_keeps_dirty_pages_and_still_evicts_clean_ones() {
    let store = FlakyStore::new(pattern(512 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .budget(32 * KIB)
        .readahead(0)
        .build()
        .unwrap();
    store.fail_writes.store(true, Ordering::SeqCst);
    for page in 0..4 {
        region.write_at(page * 4 * KIB, b"kept").unwrap();
    }
    let mut buf = [0u8; 4];
    for page in 4..128 {
        region.read_at(page * 4 * KIB, &mut buf).unwrap();
    }
    let stats = region.stats();
    assert!(
        stats.resident_bytes <= 32 * KIB as u64 + 2 * 4 * KIB as u64,
        "{stats}"
    );
    assert_eq!(stats.dirty_bytes, 4 * 4 * KIB as u64, "{stats}");
    assert!(region.flush().is_err());
    store.fail_writes.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    for page in 0..4 {
        assert_eq!(
            &store.inner.snapshot()[page * 4 * KIB..page * 4 * KIB + 4],
            b"kept"
        );
    }
}

#[test]
fn with_signal_a_failed_page_stays_failed_until_retried() {
    let store = FlakyStore::new(pattern(64 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .on_store_error(OnStoreError::Signal)
        .build()
        .unwrap();
    store.fail_reads.store(true, Ordering::SeqCst);
    let mut buf = [0u8; 8];
    assert_eq!(
        region.read_at(0, &mut buf).unwrap_err().kind(),
        ErrorKind::Store
    );
    store.fail_reads.store(false, Ordering::SeqCst);
    let reads = store.reads.load(Ordering::SeqCst);
    assert_eq!(
        region.read_at(0, &mut buf).unwrap_err().kind(),
        ErrorKind::Store
    );
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        reads,
        "no new store read"
    );
    region.retry_failed(..).unwrap();
    region.read_at(0, &mut buf).unwrap();
    assert_eq!(buf[..], pattern(8)[..]);
}

#[test]
fn with_zero_a_failed_page_reads_as_zeros_and_the_error_is_kept() {
    let store = FlakyStore::new(pattern(64 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .on_store_error(OnStoreError::Zero)
        .build()
        .unwrap();
    store.fail_reads.store(true, Ordering::SeqCst);
    let mut buf = [1u8; 8];
    region.read_at(4 * KIB, &mut buf).unwrap();
    assert_eq!(buf, [0; 8]);
    let error = region.take_zero_fill_error().unwrap();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(region.take_zero_fill_error().is_none());
    assert_eq!(region.stats().store_errors, 1);
}

#[test]
fn a_failed_write_back_keeps_the_page_dirty_and_flush_reports_it() {
    let store = FlakyStore::new(pattern(64 * KIB));
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .budget(8 * KIB)
        .readahead(0)
        .build()
        .unwrap();
    store.fail_writes.store(true, Ordering::SeqCst);
    for page in 0..4 {
        region.write_at(page * 4 * KIB, b"new").unwrap();
    }
    let error = region.flush().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(region.stats().dirty_bytes > 0, "nothing was lost");
    store.fail_writes.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    let bytes = store.inner.snapshot();
    for page in 0..4 {
        assert_eq!(
            &bytes[page * 4 * KIB..page * 4 * KIB + 3],
            b"new",
            "page {page}"
        );
    }
    assert_eq!(region.stats().dirty_bytes, 0);
}

#[test]
fn a_region_dropped_while_fills_are_in_flight_returns_promptly() {
    let store = FlakyStore::new(pattern(4 << 20));
    store.read_delay_ms.store(20, Ordering::SeqCst);
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .build()
        .unwrap();
    region.prefetch(..).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let started = Instant::now();
    drop(region);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop waited {:?} for queued work",
        started.elapsed()
    );
}

#[test]
fn a_slow_store_delays_but_never_hangs_a_reader_while_others_drop_regions() {
    let store = FlakyStore::new(pattern(256 * KIB));
    store.read_delay_ms.store(5, Ordering::SeqCst);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let store = store.clone();
            scope.spawn(move || {
                for _ in 0..5 {
                    let region = Pager::from_arc(store.clone())
                        .page_size(4 * KIB)
                        .build()
                        .unwrap();
                    let mut buf = [0u8; 64];
                    region.read_at(100 * KIB, &mut buf).unwrap();
                    region.prefetch(..).unwrap();
                }
            });
        }
    });
}

#[test]
fn read_only_regions_refuse_writes() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pattern(10_000)).unwrap();
    let region = Pager::new(FileStore::open(file.path(), false).unwrap())
        .build()
        .unwrap();
    assert!(!region.is_writable());
    let error = region.write_at(0, b"x").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    let mut buf = vec![0; 10_000];
    region.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(10_000));
}

#[test]
fn bad_configurations_and_ranges_are_typed_errors() {
    let store = || Arc::new(MemoryStore::new(pattern(100_000)));
    let kind = |pager: &Pager| pager.build().unwrap_err().kind();
    assert_eq!(
        kind(Pager::from_arc(store()).page_size(0)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(Pager::from_arc(store()).page_size(6144)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(Pager::from_arc(store()).page_size(1024)),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(Pager::from_arc(store()).budget(4096)),
        ErrorKind::InvalidInput
    );
    // Fewer than two pages, but the whole store: nothing ever needs evicting.
    assert!(Pager::from_arc(store()).budget(100_000).build().is_ok());
    assert_eq!(
        kind(&Pager::new(MemoryStore::new(Vec::new()))),
        ErrorKind::InvalidInput
    );

    let region = Pager::from_arc(store()).build().unwrap();
    let mut buf = [0u8; 10];
    for (offset, len) in [(99_995, 10), (usize::MAX, 10), (100_001, 0)] {
        let error = region.read_at(offset, &mut buf[..len]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::OutOfBounds);
    }
    assert_eq!(
        region.prefetch(50..200_000).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    assert_eq!(
        region.evict(200_000..).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    region.read_at(99_990, &mut buf).unwrap();
    assert_eq!(buf[..], pattern(100_000)[99_990..]);
    assert_eq!(
        region.evict(100_000..100_000).unwrap(),
        0,
        "an empty range is no page"
    );
    assert!(region.is_resident(99_999));
}
