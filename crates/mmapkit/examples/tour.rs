//! The README's library tour, runnable: `cargo run -p mmapkit --example tour`.

use std::sync::atomic::{AtomicU64, Ordering};

use mmapkit::{ErrorKind, GrowableMap, MapOptions, Protection};

fn main() -> mmapkit::Result<()> {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("data.bin");
    std::fs::write(&path, vec![b'.'; 10_000]).expect("write the example file");

    // A shared, writable window that starts at an unaligned offset.
    let map = MapOptions::new()
        .write(true)
        .offset(5000)
        .len(100)
        .map_path(&path)?;
    map.write_at(0, b"hello")?;
    map.flush()?;
    let bytes = std::fs::read(&path).expect("read");
    println!(
        "file[5000..5005] = {:?}",
        String::from_utf8_lossy(&bytes[5000..5005])
    );

    // Someone truncates the file: an error, not a SIGBUS.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    let error = map.read_at(0, &mut [0; 5]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated);
    println!("after truncation: {error}");

    // Private anonymous memory is exclusive: safe slices.
    let mut scratch = MapOptions::new().len(1 << 20).map_anonymous()?;
    scratch.as_mut_slice()?.fill(7);
    scratch.protect(.., Protection::READ)?;
    println!(
        "scratch sum = {}",
        scratch
            .as_slice()?
            .iter()
            .map(|&b| u64::from(b))
            .sum::<u64>()
    );

    // Shared memory that a forked child would see: atomics, not slices.
    let shared = MapOptions::new().len(4096).shared().map_anonymous()?;
    let counter: &AtomicU64 = shared.atomic(0)?;
    counter.fetch_add(1, Ordering::SeqCst);
    println!("shared slice? {}", shared.as_slice().unwrap_err());

    // An append-only log that grows file and mapping together.
    let mut log = GrowableMap::create(directory.path().join("log"))?;
    for line in ["first\n", "second\n"] {
        log.append(line.as_bytes())?;
    }
    log.flush()?;
    println!("log holds {} bytes", log.len());
    Ok(())
}
