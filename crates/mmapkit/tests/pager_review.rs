//! The pager's explicit API against what a second outside review found: a flush that held
//! pages while waiting for a pin (a deadlock with lock coupling), `close` with forgotten
//! guards, a write made during another thread's flush (asynchronous tracking), a pin record
//! leaked by an optimistic read, guards dropped during thread-local teardown, and counters.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use mmapkit::ErrorKind;
use mmapkit::pager::{MemoryStore, Pager, Store, WriteTracking};

const PAGE: usize = 4096;

/// Runs `body` on a thread and fails the test if it has not finished within a minute.
fn within_a_minute(what: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: still waiting after a minute"));
}

#[test]
fn a_flush_waiting_for_a_pin_holds_no_page_its_holder_needs_next() {
    for access in ["pin_exclusive", "write_at", "read_at"] {
        within_a_minute(access, move || {
            let store = Arc::new(MemoryStore::zeroed(16 * PAGE));
            let region = Pager::from_arc(store.clone())
                .write_tracking(WriteTracking::Faults)
                .build()
                .unwrap();
            region.write_at(PAGE + 8, b"page one").unwrap();
            region.write_at(5 * PAGE + 8, b"page five").unwrap();
            std::thread::scope(|scope| {
                let mut five = region.pin_exclusive(5).unwrap();
                five[0] = 0x55;
                let flusher = scope.spawn(|| region.flush());
                // The flush reaches page 5 and waits for its pin.
                std::thread::sleep(Duration::from_millis(100));
                // Lock coupling: the holder of page 5 takes page 1 before letting 5 go.
                match access {
                    "pin_exclusive" => region.pin_exclusive(1).unwrap()[0] = 0x11,
                    "write_at" => region.write_at(PAGE, &[0x11]).unwrap(),
                    _ => region.read_at(PAGE + 8, &mut [0; 8]).unwrap(),
                }
                drop(five);
                flusher.join().unwrap().unwrap();
            });
            let bytes = store.snapshot();
            assert_eq!(bytes[5 * PAGE], 0x55, "{access}");
            assert_eq!(&bytes[PAGE + 8..PAGE + 16], b"page one", "{access}");
        });
    }
}

#[test]
fn close_writes_back_what_forgotten_exclusive_guards_wrote() {
    for case in [
        "this thread",
        "another thread, dirty page",
        "another thread",
    ] {
        within_a_minute(case, move || {
            let store = Arc::new(MemoryStore::zeroed(16 * PAGE));
            let region = Pager::from_arc(store.clone())
                .write_tracking(WriteTracking::Faults)
                .build()
                .unwrap();
            region.write_at(2 * PAGE, b"unrelated").unwrap();
            let forget = || {
                let mut guard = region.pin_exclusive(7).unwrap();
                guard[..9].copy_from_slice(b"forgotten");
                std::mem::forget(guard);
            };
            match case {
                "this thread" => forget(),
                "another thread, dirty page" => std::thread::scope(|scope| {
                    scope.spawn(|| {
                        region.write_at(7 * PAGE, b"x").unwrap();
                        forget();
                    });
                }),
                _ => std::thread::scope(|scope| {
                    scope.spawn(forget);
                }),
            }
            region.close().unwrap();
            let bytes = store.snapshot();
            assert_eq!(&bytes[2 * PAGE..2 * PAGE + 9], b"unrelated", "{case}");
            assert_eq!(&bytes[7 * PAGE..7 * PAGE + 9], b"forgotten", "{case}");
        });
    }
}

/// A store whose writes take a while, so that a flush can be caught inside one.
struct SlowWrites(Mutex<Vec<u8>>);

impl Store for SlowWrites {
    fn len(&self) -> u64 {
        (8 * PAGE) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.0.lock().unwrap();
        buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn is_writable(&self) -> bool {
        true
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::thread::sleep(Duration::from_millis(200));
        self.0.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn a_write_made_while_another_flush_writes_the_page_back_is_in_the_next_flush() {
    for tracking in [WriteTracking::Async, WriteTracking::Faults] {
        let store = Arc::new(SlowWrites(Mutex::new(vec![0; 8 * PAGE])));
        let region = Pager::from_arc(store.clone())
            .write_tracking(tracking)
            .build()
            .unwrap();
        region.read_at(3 * PAGE, &mut [0; 8]).unwrap();
        let word = region.as_mut_ptr().wrapping_add(3 * PAGE).cast::<u64>();
        // SAFETY: the word lies in the region, which maps it for as long as `region` lives;
        // raw writes are how programs use the view.
        unsafe { word.write_volatile(1) };
        std::thread::scope(|scope| {
            scope.spawn(|| region.flush().unwrap());
            // The first flush is inside the store's write of page 3.
            std::thread::sleep(Duration::from_millis(80));
            // SAFETY: as above.
            unsafe { word.write_volatile(2) };
            region.flush().unwrap();
            let stored = store.0.lock().unwrap()[3 * PAGE];
            assert_eq!(
                stored, 2,
                "{tracking:?}: the second flush returned without the write"
            );
        });
    }
}

/// A store that fails every other read of page 2.
struct Flaky(AtomicU64);

impl Store for Flaky {
    fn len(&self) -> u64 {
        (8 * PAGE) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset as usize == 2 * PAGE && self.0.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            return Err(io::Error::other("flaky read"));
        }
        buf.fill(7);
        Ok(())
    }
    fn is_writable(&self) -> bool {
        true
    }
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn optimistic_reads_of_failed_pages_leave_no_pin_behind() {
    let region = Pager::new(Flaky(AtomicU64::new(0)))
        .readahead(0)
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let holding = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = region.read_at(2 * PAGE, &mut [0; 8]);
                let _ = region.evict(2 * PAGE..3 * PAGE);
            }
        });
        let reader = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let _ = region.read_optimistic(2, |view| view.read::<u8>(0));
            }
            stop.store(true, Ordering::SeqCst);
            holding.wait();
            // Another thread holds a shared pin: this one holds none, so it waits.
            region.pin_exclusive(2).map(drop)
        });
        loop {
            match region.pin_shared(2) {
                Ok(shared) => {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    holding.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    drop(shared);
                    break;
                }
                Err(error) => assert_eq!(error.kind(), ErrorKind::Store),
            }
        }
        reader.join().unwrap().unwrap();
    });
    let stats = region.stats();
    assert!(stats.explicit_fills <= stats.pages_filled, "{stats:?}");
}

thread_local! {
    static KEPT: std::cell::RefCell<Option<mmapkit::pager::SharedPage<'static>>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn a_guard_dropped_while_its_thread_ends_does_not_abort() {
    let region: &'static _ = Box::leak(Box::new(
        Pager::new(MemoryStore::zeroed(4 * PAGE)).build().unwrap(),
    ));
    std::thread::spawn(move || {
        // Touched first, so that its destructor runs last, after the pager's own
        // thread-local record of pins is gone.
        KEPT.with(|kept| assert!(kept.borrow().is_none()));
        let guard = region.pin_shared(1).unwrap();
        KEPT.with(|kept| *kept.borrow_mut() = Some(guard));
    })
    .join()
    .unwrap();
    // The pin went with the thread: an exclusive pin is free to take.
    drop(region.pin_exclusive(1).unwrap());
}
