//! The pager as a buffer manager: explicit page access against kernel mmap, a `Vec` and the
//! device itself.
//!
//! * `pager-hot-lookup`: random 8-byte lookups in resident pages through `read_optimistic`,
//!   against the same lookups in a `Vec` holding the same bytes (vmcache's claim: under 8 %
//!   over plain memory), twice: independent lookups (as many misses in flight as the core
//!   can hold, so every instruction around them counts), and chained ones, where each
//!   lookup's place depends on the value read before, as in a tree descent.
//! * `pager-random-explicit`: `pager-random`'s reads (4 KiB at random offsets of the
//!   page-cache-hot file, a fresh region each round) through the explicit API, which reads
//!   a miss in the calling thread, against kernel mmap.
//! * `pager-oom-random`: the CIDR 2022 experiment (Crotty, Leis, Pavlo) scaled to this
//!   machine: a file four times a memory cgroup's limit, cold cache, two threads of random
//!   4 KiB reads. Contenders in child processes inside the cgroup: the explicit API over an
//!   O_DIRECT file store (no second copy in the page cache, as vmcache), the faulting pager,
//!   kernel mmap with MADV_RANDOM, and pread with O_DIRECT (the device's limit). Reads per
//!   second and CPU time per read (user + system, from getrusage) are printed.

use std::cell::RefCell;
use std::hint::black_box;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use mmapkit::pager::{FileStore, Pager};

use crate::cgroup::MemoryCgroup;
use crate::files::{self, BenchFile, CacheState};
use crate::harness::{self, Contender, Unit};

/// Lookups per round of `pager-hot-lookup`.
const LOOKUPS: usize = 5_000_000;
/// Reads per round of `pager-oom-random`, over both threads.
const OOM_READS: usize = 400_000;
/// Threads of `pager-oom-random`.
const OOM_THREADS: usize = 2;

/// A xorshift generator: the same cheap sequence for every contender.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn region_over(file: &BenchFile) -> mmapkit::Result<mmapkit::pager::PagedRegion> {
    let file = file
        .file
        .try_clone()
        .map_err(|e| mmapkit::Error::io("dup", &e))?;
    Pager::new(FileStore::from_file(file, false)?).build()
}

pub fn hot_lookup(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    files::warm(file, CacheState::LargeFolios)?;
    let region = region_over(file)?;
    region.populate(..)?;
    let mut copy = vec![0u8; file.size];
    region.read_at(0, &mut copy)?;
    lookup_table::<false>(file, &region, &copy, rounds);
    lookup_table::<true>(file, &region, &copy, rounds);
    Ok(())
}

/// The next lookup's random bits. A constant, not a run-time flag, decides whether they
/// depend on the value read before: with a flag the compiler may select with a conditional
/// move, which chains the "independent" lookups too.
fn next_pick<const CHAINED: bool>(random: &mut Random, last: u64) -> usize {
    let pick = random.next();
    (if CHAINED { pick ^ last } else { pick }) as usize
}

/// One `pager-hot-lookup` table: `read_optimistic` against the `Vec`, lookups chained or not.
fn lookup_table<const CHAINED: bool>(
    file: &BenchFile,
    region: &mmapkit::pager::PagedRegion,
    copy: &[u8],
    rounds: usize,
) {
    let pages = region.page_count();
    let page_size = region.page_size();
    let words_per_page = page_size / 8;
    let mut contenders = [
        Contender::new("read_optimistic, resident pages", || {
            let mut random = Random(0x2545_f491_4f6c_dd1d);
            let (mut sum, mut last) = (0u64, 0u64);
            let seconds = harness::seconds(|| {
                for _ in 0..LOOKUPS {
                    let pick = next_pick::<CHAINED>(&mut random, last);
                    let page = pick % pages;
                    let at = (pick >> 32) % words_per_page * 8;
                    last = region
                        .read_optimistic(page, |view| view.read::<u64>(at))
                        .expect("resident")
                        .unwrap_or(0);
                    sum = sum.wrapping_add(last);
                }
            });
            black_box(sum);
            LOOKUPS as f64 / 1e6 / seconds
        }),
        Contender::new("Vec<u8> of the same bytes", || {
            let mut random = Random(0x2545_f491_4f6c_dd1d);
            let (mut sum, mut last) = (0u64, 0u64);
            let seconds = harness::seconds(|| {
                for _ in 0..LOOKUPS {
                    let pick = next_pick::<CHAINED>(&mut random, last);
                    let page = pick % pages;
                    let at = page * page_size + (pick >> 32) % words_per_page * 8;
                    last = u64::from_ne_bytes(copy[at..at + 8].try_into().unwrap_or([0; 8]));
                    sum = sum.wrapping_add(last);
                }
            });
            black_box(sum);
            LOOKUPS as f64 / 1e6 / seconds
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    let (kind, bench) = if CHAINED {
        (
            "chained (each lookup's place depends on the value before, as in a tree descent)",
            "pager-hot-lookup-chained",
        )
    } else {
        ("independent", "pager-hot-lookup")
    };
    let title = format!(
        "{bench}: {LOOKUPS} random 8-byte lookups, {kind}, in {} MiB of resident pages",
        file.size >> 20
    );
    harness::print_table(&title, Unit::MillionsPerSecond, &samples);
    harness::print_json(bench, &samples[0], &samples[1], Unit::MillionsPerSecond);
}

pub fn random_explicit(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    files::warm(file, CacheState::LargeFolios)?;
    let offsets = crate::pager::random_offsets(file.size);
    let thousands = offsets.len() as f64 / 1e3;
    let mut contenders = [
        Contender::new("pager, explicit (reads/s)", || {
            let region = region_over(file).expect("build");
            let page_size = region.page_size();
            let mut buf = [0u8; 4096];
            thousands
                / harness::seconds(|| {
                    for &offset in &offsets {
                        let copied = region
                            .read_optimistic(offset / page_size, |view| {
                                view.read_into(offset % page_size, &mut buf)
                            })
                            .expect("read");
                        black_box((copied, &buf));
                    }
                })
        }),
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
        Contender::new("pager, faults (reads/s)", || {
            let region = region_over(file).expect("build");
            let mut buf = [0u8; 4096];
            thousands
                / harness::seconds(|| {
                    for &offset in &offsets {
                        region.read_at(offset, &mut buf).expect("read");
                        black_box(&buf);
                    }
                })
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    let title = format!(
        "pager-random-explicit: {} random 4 KiB reads of a fresh region / mapping of {} MiB, \
         page cache hot",
        offsets.len(),
        file.size >> 20
    );
    harness::print_table(&title, Unit::ThousandsPerSecond, &samples);
    harness::print_json(
        "pager-random-explicit",
        &samples[0],
        &samples[1],
        Unit::ThousandsPerSecond,
    );
    Ok(())
}

/// `pager-oom-random`: every contender is a child process in one memory cgroup.
pub fn oom_random(dir: &std::path::Path, rounds: usize) -> mmapkit::Result<()> {
    let limit = 512 << 20;
    let file = files::prepare(dir, "oom.bin", 4 * limit)
        .map_err(|e| mmapkit::Error::io("prepare the 2 GiB file", &e))?;
    let Some(cgroup) = MemoryCgroup::create("mmapkit-bench-oom", limit) else {
        println!("\npager-oom-random: no writable memory cgroup here; skipped");
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| mmapkit::Error::io("current_exe", &e))?;
    let cpu: RefCell<Vec<(&'static str, Vec<f64>)>> = RefCell::new(Vec::new());
    let run_child = |label: &'static str, mode: &str| -> f64 {
        files::evict(&file).expect("evict the file");
        let output = Command::new(&exe)
            .args(["pager-oom-child", mode])
            .arg(&file.path)
            .arg(cgroup.procs_path())
            .output()
            .expect("run the child");
        assert!(output.status.success(), "child {mode} failed: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0));
        let (rate, cpu_us) = (fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0));
        let mut cpu = cpu.borrow_mut();
        match cpu.iter_mut().find(|(name, _)| *name == label) {
            Some((_, values)) => values.push(cpu_us),
            None => cpu.push((label, vec![cpu_us])),
        }
        rate
    };
    let mut contenders = [
        Contender::new("pager, explicit, O_DIRECT store", || {
            run_child("pager, explicit, O_DIRECT store", "explicit")
        }),
        Contender::new("kernel mmap, MADV_RANDOM", || {
            run_child("kernel mmap, MADV_RANDOM", "mmap")
        }),
        Contender::new("pread, O_DIRECT (the device)", || {
            run_child("pread, O_DIRECT (the device)", "direct")
        }),
        Contender::new("pager, faults, O_DIRECT store", || {
            run_child("pager, faults, O_DIRECT store", "faults")
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    drop(contenders);
    let title = format!(
        "pager-oom-random: {OOM_READS} random 4 KiB reads, {OOM_THREADS} threads, file {} MiB, \
         memory limit {} MiB ({}), cold cache",
        file.size >> 20,
        limit >> 20,
        cgroup.kind()
    );
    harness::print_table(&title, Unit::ThousandsPerSecond, &samples);
    println!("  CPU time per read (user + system), median:");
    for (label, mut values) in cpu.into_inner() {
        values.sort_by(f64::total_cmp);
        println!("    {label:<36} {:>8.2} us", values[values.len() / 2]);
    }
    harness::print_json(
        "pager-oom-random",
        &samples[0],
        &samples[1],
        Unit::ThousandsPerSecond,
    );
    harness::print_json(
        "pager-oom-random-vs-device",
        &samples[0],
        &samples[2],
        Unit::ThousandsPerSecond,
    );
    Ok(())
}

/// The child of `pager-oom-random`: joins the cgroup, reads, prints reads/s and CPU µs per
/// read.
pub fn oom_child(mode: &str, path: &str, procs: &str) -> mmapkit::Result<()> {
    std::fs::write(procs, std::process::id().to_string())
        .map_err(|e| mmapkit::Error::io("join the cgroup", &e).with_path(procs))?;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| mmapkit::Error::io("open O_DIRECT", &e))?;
    let size = direct
        .metadata()
        .map_err(|e| mmapkit::Error::io("stat", &e))?
        .len() as usize;
    let pages = size / 4096;
    let per_thread = OOM_READS / OOM_THREADS;
    let budget = (512 << 20) - (64 << 20);
    let read_all = |read_page: &(dyn Fn(usize, &mut [u8]) + Sync)| {
        harness::seconds(|| {
            std::thread::scope(|scope| {
                for thread in 0..OOM_THREADS {
                    scope.spawn(move || {
                        let mut buffer = mmapkit::map::MapOptions::new()
                            .len(4096)
                            .write(true)
                            .map_anonymous()
                            .expect("buffer");
                        let buf = buffer.as_mut_slice().expect("private anonymous");
                        let mut random = Random(0x9e37_79b9 + thread as u64 * 7919);
                        for _ in 0..per_thread {
                            read_page(random.next() as usize % pages, buf);
                            black_box(&buf);
                        }
                    });
                }
            });
        })
    };
    let seconds = match mode {
        "explicit" | "faults" => {
            let mut pager = Pager::new(FileStore::from_file(direct, false)?);
            pager.budget(budget).readahead(0);
            let region = pager.build()?;
            if mode == "explicit" {
                read_all(&|page, buf| {
                    region
                        .read_optimistic(page, |view| view.read_into(0, buf))
                        .expect("read");
                })
            } else {
                read_all(&|page, buf| region.read_at(page * 4096, buf).expect("read"))
            }
        }
        "mmap" => {
            let file = std::fs::File::open(path).map_err(|e| mmapkit::Error::io("open", &e))?;
            // SAFETY: the benchmark owns the file; nothing writes or truncates it meanwhile.
            let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
            map.advise(memmap2::Advice::Random).expect("madvise");
            read_all(&|page, buf| buf.copy_from_slice(&map[page * 4096..(page + 1) * 4096]))
        }
        _ => read_all(&|page, buf| {
            use std::os::unix::fs::FileExt;
            direct
                .read_exact_at(buf, (page * 4096) as u64)
                .expect("pread");
        }),
    };
    // SAFETY: getrusage fills the structure it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu_seconds = cpu(usage.ru_utime) + cpu(usage.ru_stime);
    println!(
        "{} {}",
        OOM_READS as f64 / 1e3 / seconds,
        cpu_seconds / OOM_READS as f64 * 1e6
    );
    Ok(())
}
