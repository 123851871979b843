//! The pager in a few lines: a 64 MiB file paged through an 8 MiB budget, a write made
//! durable with `flush`, and a store failure arriving as an error value instead of SIGBUS.
//!
//! Run with `cargo run -p mmapkit --example pager` (as root, or wherever userfaultfd is
//! allowed; see the `pager` module docs).

use std::io;

use mmapkit::pager::{FileStore, MemoryStore, Pager, Store};

const MIB: usize = 1 << 20;

/// A store whose device has gone away.
struct Unplugged(MemoryStore);

impl Store for Unplugged {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&self, offset: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "device unplugged (reading {offset})"
        )))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("table.dat");
    let data: Vec<u8> = (0..64 * MIB).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&path, &data)?;

    // A 64 MiB file, at most 8 MiB of it in memory at once.
    let region = Pager::new(FileStore::open(&path, true)?)
        .budget(8 * MIB)
        .build()?;
    let mut sum = 0u64;
    let mut page = [0u8; 4096];
    for offset in (0..region.len()).step_by(4096) {
        region.read_at(offset, &mut page)?; // faults the page in, evicting as needed
        sum += u64::from(page[0]);
    }
    region.write_at(10 * MIB, b"written through the pager")?;
    region.flush()?; // write-back + fsync: the pager's msync
    let on_disk = std::fs::read(&path)?;
    println!("scanned 64 MiB, sum of first bytes = {sum}");
    println!(
        "file at 10 MiB: {:?}",
        String::from_utf8_lossy(&on_disk[10 * MIB..10 * MIB + 25])
    );
    println!("{}", region.stats());

    // A store that fails: the access gets an error value, not a SIGBUS.
    let broken = Pager::new(Unplugged(MemoryStore::zeroed(MIB))).build()?;
    let error = broken.read_at(4096, &mut page).unwrap_err();
    println!("\nfailing store: {:?}: {error}", error.kind());
    Ok(())
}
