//! A segment whose bytes another process wrote: opening it must validate or refuse, never
//! crash, whatever the bytes and the object's size.
#![no_main]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mmapkit::SegmentOptions;

fuzz_target!(|data: &[u8]| {
    let fd: OwnedFd = mmapkit::sys::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(data).unwrap();
    let mut options = SegmentOptions::new("fuzz/any", 0).unwrap();
    options.wait(Duration::ZERO);
    if let Ok(segment) = options.from_fd(file.into()) {
        let mut buf = [0u8; 64];
        let _ = segment.read_at(0, &mut buf);
        let _ = segment.check();
    }
});
