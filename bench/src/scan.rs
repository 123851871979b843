//! `scan`: sum the u64 words of a page-cache-hot file — through an mmapkit mapping (the
//! `unsafe` slice, and the safe chunked copies of `Mapping::for_each_chunk`), a memmap2
//! mapping, read(2) into a 1 MiB buffer, and a Vec already in memory (the limit for a scan).
//! Map and unmap are inside the timing: a scan of a file is all three. `scan-safe` compares
//! the safe path with memmap2's slice; `scan-chunks` measures the safe path's chunk sizes.
//!
//! The JSON lines `scan` and `scan-vs-memory` are measured with the page cache in large folios,
//! the state ordinary reads leave on ext4 with this kernel (and the state of the figures in
//! ANCHORS.md); `scan-small-folios` and `scan-vs-memory-small-folios` repeat them with 4 KiB
//! folios, where every mapping pays the kernel's per-page cost.

use std::hint::black_box;
use std::io::Read;

use mmapkit::MapOptions;
use mmapkit::fault::DEFAULT_CHUNK;

use crate::files::{self, BenchFile, CacheState};
use crate::harness::{self, Contender, Unit};

pub fn run(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    let gigabytes = file.size as f64 / 1e9;
    let in_memory = std::fs::read(&file.path).map_err(|e| mmapkit::Error::io("read", &e))?;
    let expected = harness::sum_words(&in_memory);
    for state in [CacheState::LargeFolios, CacheState::SmallFolios] {
        files::warm(file, state)?;
        let check = |sum: u64| assert_eq!(sum, expected, "a contender summed the wrong bytes");
        let mut contenders = [
            Contender::new("mmapkit Mapping", || {
                gigabytes
                    / harness::seconds(|| {
                        let map = MapOptions::new().map_file(&file.file).expect("map");
                        // SAFETY: the benchmark owns the file; nothing writes or truncates it
                        // while the scan runs.
                        check(harness::sum_words(unsafe { map.as_slice_unchecked() }));
                    })
            }),
            Contender::new("mmapkit for_each_chunk (safe)", || {
                gigabytes / harness::seconds(|| check(safe_sum(file, DEFAULT_CHUNK)))
            }),
            Contender::new("memmap2 Mmap", || {
                gigabytes
                    / harness::seconds(|| {
                        // SAFETY: as above.
                        let map = unsafe { memmap2::Mmap::map(&file.file) }.expect("map");
                        check(harness::sum_words(&map));
                    })
            }),
            Contender::new("read() into a 1 MiB buffer", || {
                let mut buffer = vec![0u8; 1 << 20];
                gigabytes
                    / harness::seconds(|| {
                        let mut reader = std::fs::File::open(&file.path).expect("open");
                        let mut sum = 0u64;
                        loop {
                            let len = reader.read(&mut buffer).expect("read");
                            if len == 0 {
                                break;
                            }
                            sum = sum.wrapping_add(harness::sum_words(&buffer[..len]));
                        }
                        check(sum);
                    })
            }),
            Contender::new("Vec in memory", || {
                gigabytes / harness::seconds(|| check(harness::sum_words(black_box(&in_memory))))
            }),
        ];
        let samples = harness::alternate(rounds, &mut contenders);
        let title = format!(
            "scan: sum u64 words of {} MiB, page cache in {} ({} MiB in 2 MiB folios)",
            file.size >> 20,
            state.name(),
            files::file_huge_pages_mib()
        );
        harness::print_table(&title, Unit::GigabytesPerSecond, &samples);
        let suffix = match state {
            CacheState::LargeFolios => "",
            CacheState::SmallFolios => "-small-folios",
        };
        let unit = Unit::GigabytesPerSecond;
        harness::print_json(&format!("scan{suffix}"), &samples[0], &samples[2], unit);
        harness::print_json(
            &format!("scan-safe{suffix}"),
            &samples[1],
            &samples[2],
            unit,
        );
        harness::print_json(
            &format!("scan-vs-memory{suffix}"),
            &samples[0],
            &samples[4],
            unit,
        );
    }
    Ok(())
}

/// The sum of the file's words through the safe chunked copies, `chunk` bytes at a time.
fn safe_sum(file: &BenchFile, chunk: usize) -> u64 {
    let map = MapOptions::new().map_file(&file.file).expect("map");
    let mut chunks = map.chunks(.., chunk).expect("chunks");
    let mut sum = 0u64;
    while let Some(chunk) = chunks.next_chunk() {
        sum = sum.wrapping_add(harness::sum_words(chunk.expect("chunk").bytes));
    }
    sum
}

/// `scan-chunks`: the safe scan at several chunk sizes against memmap2's slice, page cache in
/// large folios.
pub fn chunk_sizes(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    let gigabytes = file.size as f64 / 1e9;
    files::warm(file, CacheState::LargeFolios)?;
    let sizes = [
        4usize << 10,
        16 << 10,
        64 << 10,
        128 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
    ];
    let names = [
        "chunks of 4 KiB",
        "chunks of 16 KiB",
        "chunks of 64 KiB",
        "chunks of 128 KiB",
        "chunks of 256 KiB",
        "chunks of 1 MiB",
        "chunks of 4 MiB",
    ];
    let mut contenders: Vec<Contender<'_>> = sizes
        .iter()
        .zip(names)
        .map(|(&size, name)| {
            Contender::new(name, move || {
                gigabytes
                    / harness::seconds(|| {
                        black_box(safe_sum(file, size));
                    })
            })
        })
        .collect();
    contenders.push(Contender::new("128 KiB, SigbusUnblocked", || {
        // SAFETY: the benchmark never blocks SIGBUS.
        let _promise = unsafe { mmapkit::fault::SigbusUnblocked::promise() };
        gigabytes
            / harness::seconds(|| {
                black_box(safe_sum(file, 128 << 10));
            })
    }));
    contenders.push(Contender::new("memmap2 Mmap", || {
        gigabytes
            / harness::seconds(|| {
                // SAFETY: the benchmark owns the file; nothing writes or truncates it.
                let map = unsafe { memmap2::Mmap::map(&file.file) }.expect("map");
                black_box(harness::sum_words(&map));
            })
    }));
    let samples = harness::alternate(rounds, &mut contenders);
    let title = format!(
        "scan-chunks: the safe scan of {} MiB by chunk size",
        file.size >> 20
    );
    harness::print_table(&title, Unit::GigabytesPerSecond, &samples);
    let anchor = samples.last().expect("memmap2 ran");
    for (size, sample) in sizes.iter().zip(&samples) {
        let bench = format!("scan-chunks-{}k", size >> 10);
        harness::print_json(&bench, sample, anchor, Unit::GigabytesPerSecond);
    }
    let promised = &samples[sizes.len()];
    harness::print_json(
        "scan-chunks-promised-128k",
        promised,
        anchor,
        Unit::GigabytesPerSecond,
    );
    Ok(())
}
