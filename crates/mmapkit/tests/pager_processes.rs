//! The pager where a process boundary is the observable: a raw access to a page the store
//! failed to read dies of SIGBUS (as with the kernel's mmap) while guarded accessors get
//! values; a forked child does not inherit the region; an unprivileged process still gets a
//! working pager. Runs without the libtest harness, so that fork happens on one thread.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::processes::{self, Ended};
use mmapkit::pager::{MemoryStore, OnStoreError, Pager, Store};
use mmapkit::sys::uffd::Access;

/// A memory store whose reads fail once `broken` is set.
#[derive(Debug)]
struct BreakableStore {
    inner: MemoryStore,
    broken: AtomicBool,
}

impl Store for BreakableStore {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::other("the device is gone"));
        }
        self.inner.read_at(offset, buf)
    }
}

fn breakable(len: usize) -> Arc<BreakableStore> {
    Arc::new(BreakableStore {
        inner: MemoryStore::new(vec![7; len]),
        broken: AtomicBool::new(false),
    })
}

/// In a child: a region over a store that fails, then a raw read of a missing page.
fn raw_read_of_a_failed_page(behaviour: OnStoreError) -> Ended {
    processes::wait(processes::fork(move || {
        let store = breakable(1 << 20);
        let region = Pager::from_arc(store.clone())
            .on_store_error(behaviour)
            .build()
            .unwrap();
        store.broken.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 8];
        // The guarded accessor gets the error as a value (or zeros, if asked for)...
        match region.read_at(4096, &mut buf) {
            Ok(()) => assert_eq!((behaviour, buf), (OnStoreError::Zero, [0; 8])),
            Err(error) => assert_eq!(error.kind(), mmapkit::ErrorKind::Store),
        }
        // ...a raw access cannot, and dies as it would on a kernel mmap I/O error.
        // SAFETY: the address lies inside the region; reading it is the point of the test.
        let byte = unsafe { std::ptr::read_volatile(region.as_ptr().add(500_000)) };
        i32::from(byte)
    }))
}

fn raw_access_to_a_failed_page_raises_sigbus() {
    for behaviour in [OnStoreError::Report, OnStoreError::Signal] {
        assert_eq!(
            raw_read_of_a_failed_page(behaviour),
            Ended::Signalled(libc::SIGBUS),
            "{behaviour:?}"
        );
    }
    // With Zero, the same raw read sees zeros and the child lives.
    assert_eq!(
        raw_read_of_a_failed_page(OnStoreError::Zero),
        Ended::Exited(0)
    );
}

fn a_forked_child_does_not_inherit_the_region() {
    let store = Arc::new(MemoryStore::new(vec![9; 1 << 20]));
    let region = Pager::from_arc(store).build().unwrap();
    let mut buf = [0u8; 1];
    region.read_at(0, &mut buf).unwrap();
    let address = region.as_ptr() as usize;
    let ended = processes::wait(processes::fork(move || {
        // SAFETY: deliberately reads where the parent's region is; in the child nothing is
        // mapped there (MADV_DONTFORK), so this faults. The child takes no lock.
        i32::from(unsafe { std::ptr::read_volatile(address as *const u8) })
    }));
    assert_eq!(ended, Ended::Signalled(libc::SIGSEGV));
    region.read_at(1 << 19, &mut buf).unwrap();
    assert_eq!(buf, [9]);
}

fn an_unprivileged_process_gets_a_working_pager() {
    let ended = processes::wait(processes::fork(|| {
        // SAFETY: plain system calls dropping root in this single-threaded child.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
        }
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let region = Pager::new(MemoryStore::new(data.clone())).build().unwrap();
        let mut buf = vec![0u8; 100_000];
        region.read_at(300_000, &mut buf).unwrap();
        assert_eq!(buf, data[300_000..400_000]);
        let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd");
        if sysctl.is_ok_and(|value| value.trim() == "0") {
            assert_ne!(
                region.access(),
                Access::Full,
                "the sysctl forbids full access"
            );
        }
        if region.access() == Access::UserModeOnly {
            // A system call writing into a missing page fails instead of faulting it in.
            let zero = std::fs::File::open("/dev/zero").unwrap();
            // SAFETY: reads 4 KiB into the region, which is mapped writable for that long.
            let read = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&zero),
                    region.as_mut_ptr().add(900_000).cast(),
                    4096,
                )
            };
            assert_eq!(read, -1);
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EFAULT)
            );
        }
        0
    }));
    assert_eq!(ended, Ended::Exited(0));
}

fn main() {
    processes::run(&[
        (
            "raw_access_to_a_failed_page_raises_sigbus",
            raw_access_to_a_failed_page_raises_sigbus,
        ),
        (
            "an_unprivileged_process_gets_a_working_pager",
            an_unprivileged_process_gets_a_working_pager,
        ),
        (
            "a_forked_child_does_not_inherit_the_region",
            a_forked_child_does_not_inherit_the_region,
        ),
    ]);
}
