//! The pager against kernel mmap (memmap2), over the benchmark's data file.
//!
//! * `pager-seq`: sum the words of the page-cache-hot file through a fresh region (build,
//!   scan, drop inside the timing) against a fresh memmap2 mapping (map, scan, unmap), with
//!   the page cache in large folios and again in 4 KiB folios (see `files`). A
//!   last row fills a region with `populate()` in one thread and no faults: the ceiling of
//!   UFFDIO_COPY, which every user-space pager pays and kernel mmap of cached pages does not.
//! * `pager-random`: random 4 KiB reads through a fresh region, against the same reads
//!   through a fresh memmap2 mapping; ours reports faults served per second.
//! * `pager-budget`: the scan with a budget of a quarter of the file, against kernel mmap
//!   under the same memory limit: both run in child processes inside one memory cgroup
//!   (v2 `memory.max` or v1 `memory.limit_in_bytes`), from a cold page cache, so that the
//!   kernel's page cache is charged to the limit too. A third row adds the file store's
//!   drop-behind, which keeps the page cache from holding a second copy of the pager's pages.

use std::cell::Cell;
use std::hint::black_box;
use std::process::Command;

use mmapkit::pager::{FileStore, Pager, Stats};

use crate::cgroup::MemoryCgroup;
use crate::files::{self, BenchFile, CacheState};
use crate::harness::{self, Contender, Unit};

/// Random reads per round of `pager-random`.
const RANDOM_READS: usize = 20_000;

fn pager(file: &BenchFile, page_size: usize) -> Pager {
    let file = file.file.try_clone().expect("dup the data file");
    let mut pager = Pager::new(FileStore::from_file(file, false).expect("file store"));
    pager.page_size(page_size);
    pager
}

/// Scans a fresh region built by `pager`; returns the sum and the region's statistics.
fn scan_region(pager: &Pager) -> (u64, Stats) {
    let region = pager.build().expect("build the region");
    // SAFETY: the benchmark owns the file; nothing writes the region or the file while the
    // slice lives, and a file store's reads do not fail here.
    let sum = harness::sum_words(unsafe { region.as_slice() });
    let stats = region.stats();
    (sum, stats)
}

fn scan_mmap(file: &BenchFile) -> u64 {
    // SAFETY: the benchmark owns the file; nothing writes or truncates it meanwhile.
    let map = unsafe { memmap2::Mmap::map(&file.file) }.expect("map");
    harness::sum_words(&map)
}

pub fn sequential(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    for state in [CacheState::LargeFolios, CacheState::SmallFolios] {
        sequential_in(file, rounds, state)?;
    }
    Ok(())
}

fn sequential_in(file: &BenchFile, rounds: usize, state: CacheState) -> mmapkit::Result<()> {
    files::warm(file, state)?;
    let gigabytes = file.size as f64 / 1e9;
    let expected = scan_mmap(file);
    let check = |sum: u64| assert_eq!(sum, expected, "a contender summed the wrong bytes");
    let mut last = None;
    let default = pager(file, mmapkit::sys::page_size());
    let large = pager(file, 512 << 10);
    let medium = pager(file, 64 << 10);
    let mut contenders = [
        Contender::new("pager, 4 KiB pages (default)", || {
            gigabytes
                / harness::seconds(|| {
                    let (sum, stats) = scan_region(&default);
                    check(sum);
                    last = Some(stats);
                })
        }),
        Contender::new("kernel mmap (memmap2)", || {
            gigabytes / harness::seconds(|| check(scan_mmap(file)))
        }),
        Contender::new("pager, 64 KiB pages", || {
            gigabytes / harness::seconds(|| check(scan_region(&medium).0))
        }),
        Contender::new("pager, 512 KiB pages", || {
            gigabytes / harness::seconds(|| check(scan_region(&large).0))
        }),
        Contender::new("fill ceiling: populate(), 1 thread", || {
            gigabytes
                / harness::seconds(|| {
                    let region = default.build().expect("build");
                    region.populate(..).expect("populate");
                })
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    drop(contenders);
    let title = format!(
        "pager-seq: sum u64 words of {} MiB, page cache hot in {}; build/map, scan, drop/unmap",
        file.size >> 20,
        state.name()
    );
    harness::print_table(&title, Unit::GigabytesPerSecond, &samples);
    if let Some(stats) = last {
        print_stats("pager, 4 KiB pages, last round", &stats);
    }
    let bench = match state {
        CacheState::LargeFolios => "pager-seq",
        CacheState::SmallFolios => "pager-seq-small-folios",
    };
    harness::print_json(bench, &samples[0], &samples[1], Unit::GigabytesPerSecond);
    Ok(())
}

/// The offsets of the random reads: 4 KiB-aligned, spread over the file.
pub fn random_offsets(size: usize) -> Vec<usize> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..RANDOM_READS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state as usize % (size / 4096)) * 4096
        })
        .collect()
}

pub fn random(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    files::warm(file, CacheState::LargeFolios)?;
    let offsets = random_offsets(file.size);
    let thousands = RANDOM_READS as f64 / 1e3;
    let faults = [Cell::new(0u64), Cell::new(0u64)];
    let mut contenders = Vec::new();
    for (served, page_size, label) in [
        (&faults[0], 4096, "pager, 4 KiB pages (faults/s)"),
        (&faults[1], 64 << 10, "pager, 64 KiB pages (faults/s)"),
    ] {
        let builder = pager(file, page_size);
        let offsets = &offsets;
        contenders.push(Contender::new(label, move || {
            let region = builder.build().expect("build");
            let mut buf = [0u8; 4096];
            let seconds = harness::seconds(|| {
                for &offset in offsets {
                    region.read_at(offset, &mut buf).expect("read");
                    black_box(&buf);
                }
            });
            served.set(region.stats().faults);
            served.get() as f64 / 1e3 / seconds
        }));
    }
    contenders.insert(
        1,
        Contender::new("kernel mmap (memmap2, reads/s)", || {
            // SAFETY: the benchmark owns the file; nothing writes or truncates it meanwhile.
            let map = unsafe { memmap2::Mmap::map(&file.file) }.expect("map");
            let mut buf = [0u8; 4096];
            thousands
                / harness::seconds(|| {
                    for &offset in &offsets {
                        buf.copy_from_slice(&map[offset..offset + 4096]);
                        black_box(&buf);
                    }
                })
        }),
    );
    let samples = harness::alternate(rounds, &mut contenders);
    drop(contenders);
    let title = format!(
        "pager-random: {RANDOM_READS} random 4 KiB reads of a fresh region / mapping of {} MiB",
        file.size >> 20
    );
    harness::print_table(&title, Unit::ThousandsPerSecond, &samples);
    println!(
        "  faults served in the last round: {} with 4 KiB pages, {} with 64 KiB pages",
        faults[0].get(),
        faults[1].get()
    );
    harness::print_json(
        "pager-random",
        &samples[0],
        &samples[1],
        Unit::ThousandsPerSecond,
    );
    Ok(())
}

/// `pager-budget`: both scans run as child processes in a memory cgroup.
pub fn budget(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    let budget = file.size / 4;
    let limit = budget + (64 << 20);
    let Some(cgroup) = MemoryCgroup::create("mmapkit-bench-pager", limit) else {
        println!(
            "\npager-budget: no writable memory cgroup here (cgroup v2 memory.max or v1 \
             memory.limit_in_bytes); skipped"
        );
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| mmapkit::Error::io("current_exe", &e))?;
    let run_child = |mode: &str| -> f64 {
        files::evict(file).expect("evict the data file");
        let output = Command::new(&exe)
            .arg("pager-budget-child")
            .arg(mode)
            .arg(&file.path)
            .arg(budget.to_string())
            .arg(cgroup.procs_path())
            .output()
            .expect("run the child");
        assert!(output.status.success(), "child {mode} failed: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().expect("the child prints GB/s")
    };
    let mut contenders = [
        Contender::new("pager, budget 25%", || run_child("pager")),
        Contender::new("kernel mmap (memmap2)", || run_child("mmap")),
        Contender::new("pager, budget 25%, drop-behind", || {
            run_child("pager-drop-behind")
        }),
    ];
    let samples = harness::alternate(rounds.min(3), &mut contenders);
    let title = format!(
        "pager-budget: scan of {} MiB from a cold cache, memory limit {} MiB ({}), pager \
         budget {} MiB",
        file.size >> 20,
        limit >> 20,
        cgroup.kind(),
        budget >> 20
    );
    harness::print_table(&title, Unit::GigabytesPerSecond, &samples);
    harness::print_json(
        "pager-budget",
        &samples[0],
        &samples[1],
        Unit::GigabytesPerSecond,
    );
    Ok(())
}

/// The child of `pager-budget`: joins the cgroup, scans, prints GB/s.
pub fn budget_child(mode: &str, path: &str, budget: usize, procs: &str) -> mmapkit::Result<()> {
    std::fs::write(procs, std::process::id().to_string())
        .map_err(|e| mmapkit::Error::io("join the cgroup", &e).with_path(procs))?;
    let file = std::fs::File::open(path).map_err(|e| mmapkit::Error::io("open", &e))?;
    let size = file
        .metadata()
        .map_err(|e| mmapkit::Error::io("stat", &e))?
        .len() as usize;
    let gigabytes = size as f64 / 1e9;
    let seconds = match mode {
        "pager" | "pager-drop-behind" => {
            let mut store = FileStore::from_file(file, false).expect("store");
            store.drop_behind(mode == "pager-drop-behind");
            let mut pager = Pager::new(store);
            pager.budget(budget);
            let region = pager.build()?;
            harness::seconds(|| {
                // SAFETY: the benchmark owns the file; nothing writes the region or the
                // file while the slice lives, and a file store's reads do not fail here.
                black_box(harness::sum_words(unsafe { region.as_slice() }));
            })
        }
        _ => {
            // SAFETY: the benchmark owns the file; nothing writes or truncates it meanwhile.
            let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
            harness::seconds(|| {
                black_box(harness::sum_words(&map));
            })
        }
    };
    println!("{}", gigabytes / seconds);
    Ok(())
}

fn print_stats(label: &str, stats: &Stats) {
    println!("  {label}:");
    for line in stats.to_string().lines() {
        println!("    {line}");
    }
}
