//! Stores that misbehave while staying safe Rust: a length that changes after the region is
//! built, and panics in every call. The region must stay inside its own memory and turn each
//! misbehaviour into error values.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmapkit::ErrorKind;
use mmapkit::pager::{MemoryStore, OnStoreError, Pager, Store};

const KIB: usize = 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A store that reports `first_len` the first time it is asked and `later_len` ever after.
struct ChangingLength {
    inner: MemoryStore,
    first_len: u64,
    later_len: u64,
    asked: AtomicU64,
}

impl ChangingLength {
    fn new(bytes: usize, first_len: u64, later_len: u64) -> ChangingLength {
        ChangingLength {
            inner: MemoryStore::new(pattern(bytes)),
            first_len,
            later_len,
            asked: AtomicU64::new(0),
        }
    }
}

impl Store for ChangingLength {
    fn len(&self) -> u64 {
        if self.asked.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_len
        } else {
            self.later_len
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }
}

#[test]
fn a_store_that_shrinks_after_build_keeps_the_region_inside_its_memory() {
    let store = ChangingLength::new(1 << 20, 1 << 20, 4 * KIB as u64);
    let region = Pager::new(store).page_size(4 * KIB).build().unwrap();
    assert_eq!(region.len(), 1 << 20, "the length given at build");
    // The whole region is one mapping of ours: nothing of it lies in someone else's memory.
    let first = common::maps_line(region.as_ptr());
    let last = common::maps_line(region.as_ptr().wrapping_add(region.len() - 1));
    assert_eq!(first, last, "the region is one mapping");
    region.write_at(512 * KIB, b"inside the region").unwrap();
    region.write_at((1 << 20) - 4, b"end!").unwrap();
    let mut back = vec![0u8; 1 << 20];
    region.read_at(0, &mut back).unwrap();
    let mut expected = pattern(1 << 20);
    expected[512 * KIB..512 * KIB + 17].copy_from_slice(b"inside the region");
    expected[(1 << 20) - 4..].copy_from_slice(b"end!");
    assert!(
        back == expected,
        "the region reads what the store and the writes hold"
    );
    let error = region.write_at(1 << 20, b"x").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfBounds);
    region.flush().unwrap();
}

#[test]
fn a_store_that_grows_after_build_is_held_to_its_first_length() {
    let store = ChangingLength::new(64 * KIB, 8 * KIB as u64, 1 << 30);
    let region = Pager::new(store).page_size(4 * KIB).build().unwrap();
    assert_eq!(region.len(), 8 * KIB);
    let mut byte = [0u8; 1];
    let error = region.read_at(8 * KIB, &mut byte).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutOfBounds);
    let mut all = vec![0u8; 8 * KIB];
    region.read_at(0, &mut all).unwrap();
    assert_eq!(all, pattern(8 * KIB));
}

/// A store whose calls panic while a switch is on.
struct Panicking {
    inner: MemoryStore,
    /// Reads covering this byte panic (`u64::MAX`: none).
    panicking_byte: AtomicU64,
    panic_on_write: AtomicBool,
    panic_on_flush: AtomicBool,
    /// What a panicking call panics with: a `String` or a `&'static str` payload.
    owned_message: AtomicBool,
    /// Every read asked for, as (offset, length).
    log: Mutex<Vec<(u64, usize)>>,
}

impl Panicking {
    fn new(len: usize) -> Arc<Panicking> {
        Arc::new(Panicking {
            inner: MemoryStore::new(pattern(len)),
            panicking_byte: AtomicU64::new(u64::MAX),
            panic_on_write: AtomicBool::new(false),
            panic_on_flush: AtomicBool::new(false),
            owned_message: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        })
    }

    fn panic(&self, what: &str) -> ! {
        if self.owned_message.load(Ordering::SeqCst) {
            panic!("{what} went wrong (formatted)");
        }
        panic!("static store panic");
    }
}

impl Store for Panicking {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.log.lock().unwrap().push((offset, buf.len()));
        let byte = self.panicking_byte.load(Ordering::SeqCst);
        if (offset..offset + buf.len() as u64).contains(&byte) {
            self.panic("read");
        }
        self.inner.read_at(offset, buf)
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.panic_on_write.load(Ordering::SeqCst) {
            self.panic("write");
        }
        self.inner.write_at(offset, data)
    }

    fn flush(&self) -> io::Result<()> {
        if self.panic_on_flush.load(Ordering::SeqCst) {
            self.panic("flush");
        }
        Ok(())
    }
}

#[test]
fn a_store_that_panics_in_read_at_fails_that_page_only() {
    for behaviour in [
        OnStoreError::Report,
        OnStoreError::Signal,
        OnStoreError::Zero,
    ] {
        let store = Panicking::new(256 * KIB);
        let region = Pager::from_arc(store.clone())
            .page_size(4 * KIB)
            .readahead(0)
            .on_store_error(behaviour)
            .build()
            .unwrap();
        store
            .panicking_byte
            .store(8 * KIB as u64 + 5, Ordering::SeqCst);
        let mut buf = [0u8; 16];
        match behaviour {
            OnStoreError::Zero => {
                region.read_at(8 * KIB, &mut buf).unwrap();
                assert_eq!(buf, [0; 16], "a page whose store panicked reads as zeros");
                let error = region.take_zero_fill_error().unwrap();
                assert!(error.to_string().contains("the store panicked"), "{error}");
            }
            _ => {
                let error = region.read_at(8 * KIB, &mut buf).unwrap_err();
                assert_eq!(error.kind(), ErrorKind::Store, "{behaviour:?}");
                assert!(
                    error
                        .to_string()
                        .contains("the store panicked: static store panic"),
                    "{error}"
                );
            }
        }
        // The other pages, and the handler threads, are fine.
        region.read_at(64 * KIB, &mut buf).unwrap();
        assert_eq!(buf[..], pattern(256 * KIB)[64 * KIB..64 * KIB + 16]);
        assert!(region.stats().store_errors >= 1);
        // Once the store behaves, the page reads again.
        store.panicking_byte.store(u64::MAX, Ordering::SeqCst);
        if behaviour == OnStoreError::Signal {
            region.retry_failed(..).unwrap();
        }
        if behaviour != OnStoreError::Zero {
            region.read_at(8 * KIB, &mut buf).unwrap();
            assert_eq!(buf[..], pattern(256 * KIB)[8 * KIB..8 * KIB + 16]);
        }
    }
}

#[test]
fn a_store_that_panics_while_reading_ahead_leaves_the_demand_page_readable() {
    let store = Panicking::new(1 << 20);
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .build()
        .unwrap();
    store
        .panicking_byte
        .store(256 * KIB as u64, Ordering::SeqCst);
    let mut page = vec![0u8; 4 * KIB];
    for offset in (0..128 * KIB).step_by(4 * KIB) {
        region.read_at(offset, &mut page).unwrap();
    }
    region.prefetch(0..1 << 20).unwrap();
    // Wait until a fill ahead of demand has asked for the panicking byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    let asked = |log: &[(u64, usize)]| {
        log.iter()
            .any(|&(offset, len)| (offset..offset + len as u64).contains(&(256 * KIB as u64)))
    };
    while !asked(&store.log.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "nothing read ahead the panicking page"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    store.panicking_byte.store(u64::MAX, Ordering::SeqCst);
    region.read_at(256 * KIB, &mut page).unwrap();
    assert_eq!(page, pattern(1 << 20)[256 * KIB..260 * KIB]);
}

#[test]
fn a_store_that_panics_in_write_at_or_flush_fails_the_flush_and_loses_nothing() {
    let store = Panicking::new(64 * KIB);
    store.owned_message.store(true, Ordering::SeqCst);
    let region = Pager::from_arc(store.clone())
        .page_size(4 * KIB)
        .budget(8 * KIB)
        .readahead(0)
        .build()
        .unwrap();
    store.panic_on_write.store(true, Ordering::SeqCst);
    // Eviction writes back on the handler threads: those panics are caught too.
    for page in 0..8 {
        region.write_at(page * 4 * KIB, b"new").unwrap();
    }
    let error = region.flush().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(
        error
            .to_string()
            .contains("the store panicked: write went wrong (formatted)"),
        "{error}"
    );
    assert!(region.stats().dirty_bytes > 0, "the dirty pages are kept");
    store.panic_on_write.store(false, Ordering::SeqCst);
    store.panic_on_flush.store(true, Ordering::SeqCst);
    let error = region.flush().unwrap_err();
    assert!(error.to_string().contains("flush went wrong"), "{error}");
    store.panic_on_flush.store(false, Ordering::SeqCst);
    region.flush().unwrap();
    let bytes = store.inner.snapshot();
    for page in 0..8 {
        assert_eq!(
            &bytes[page * 4 * KIB..page * 4 * KIB + 3],
            b"new",
            "page {page}"
        );
    }
}

/// Tells LeakSanitizer (in the AddressSanitizer run) about the leaks below, which are on
/// purpose: a store value whose `Display` panicked is not dropped, and one whose `Drop`
/// panicked cannot free its allocation. Without a sanitizer nothing calls this.
#[unsafe(no_mangle)]
pub extern "C" fn __lsan_default_suppressions() -> *const std::ffi::c_char {
    c"leak:Booby".as_ptr()
}

/// An error value whose `Display` and `Drop` panic, as foreign code may hand back.
#[derive(Debug)]
struct Booby(&'static str);

impl std::fmt::Display for Booby {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.contains("display") {
            panic!("Display of the store's error");
        }
        Ok(())
    }
}

impl std::error::Error for Booby {}

impl Drop for Booby {
    fn drop(&mut self) {
        if self.0.contains("drop") {
            panic!("Drop of the store's value");
        }
    }
}

/// A store whose failures are booby-trapped values: errors that panic when formatted or
/// dropped, or panics whose payload panics when dropped.
struct Trapped(&'static str);

impl Store for Trapped {
    fn len(&self) -> u64 {
        256 * KIB as u64
    }

    fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        if self.0.starts_with("panic") {
            std::panic::panic_any(Booby(self.0));
        }
        Err(io::Error::other(Booby(self.0)))
    }

    fn is_writable(&self) -> bool {
        true
    }

    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(Booby(self.0)))
    }
}

#[test]
fn store_errors_and_payloads_that_panic_when_formatted_or_dropped_stay_error_values() {
    for trap in [
        "error drop",
        "error display",
        "error display drop",
        "panic drop",
    ] {
        for behaviour in [OnStoreError::Report, OnStoreError::Zero] {
            let region = Pager::new(Trapped(trap))
                .page_size(4 * KIB)
                .budget(8 * KIB)
                .on_store_error(behaviour)
                .build()
                .unwrap();
            let mut buf = [0u8; 16];
            // Several pages, so that failures are replaced and read ahead dropped.
            for page in 0..6 {
                let result = region.read_at(page * 4 * KIB, &mut buf);
                match behaviour {
                    OnStoreError::Zero => assert!(result.is_ok(), "{trap}: {result:?}"),
                    _ => assert_eq!(result.unwrap_err().kind(), ErrorKind::Store, "{trap}"),
                }
            }
            if behaviour == OnStoreError::Zero {
                for page in 0..4 {
                    region.write_at(page * 4 * KIB, b"dirty").unwrap();
                }
                let error = region.flush().unwrap_err();
                assert_eq!(error.kind(), ErrorKind::Store, "{trap}");
            }
        }
    }
}
