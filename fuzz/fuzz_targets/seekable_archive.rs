//! A seekable zstd archive from anywhere: the seek table and the frames are foreign bytes.
//! Opening must validate or refuse, and reads must return bytes or an error, never panic or
//! read out of bounds — whatever the table claims about sizes, counts and checksums.
#![no_main]

use std::io::Write;
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use mmapkit::pager::{CompressedStore, Store};

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose where to read; the rest is the archive.
    let (choice, archive) = data.split_at(data.len().min(8));
    let mut word = [0u8; 8];
    word[..choice.len()].copy_from_slice(choice);
    let choice = u64::from_le_bytes(word);
    let fd: OwnedFd = mmapkit::sys::memfd_create("fuzz", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(archive).unwrap();
    let Ok(store) = CompressedStore::from_file(file) else {
        return;
    };
    let len = store.len();
    if len == 0 {
        return;
    }
    let offset = choice % len;
    let mut buf = vec![0u8; ((choice >> 40) as usize % 70_000 + 1).min((len - offset) as usize)];
    let _ = store.read_at(offset, &mut buf);
    let _ = store.read_at(len - 1, &mut buf[..1]);
    let _ = store.read_at(len, &mut buf[..1]);
});
