//! The benchmark's data file and the page-cache states it is measured in.
//!
//! "Page-cache hot" is not one state. How the file got into the cache decides the size of its
//! folios, and that decides how a mapping faults: 4 KiB folios are mapped 16 pages per fault
//! (fault-around), 2 MiB folios with one page-table entry each (when the mapping is aligned,
//! which the kernel arranges). Scans are measured in both states, prepared the same way for
//! every contender:
//! * `small folios`: evicted, then read with read(2) under `POSIX_FADV_RANDOM`, which turns
//!   read-ahead off and leaves one 4 KiB folio per page;
//! * `large folios`: evicted, then read with read(2) and normal read-ahead, which on file
//!   systems with large folios (ext4 and XFS on recent kernels) allocates up to 2 MiB folios.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use mmapkit::sys;

/// The data file.
pub struct BenchFile {
    pub path: PathBuf,
    pub file: File,
    pub size: usize,
}

/// Opens `dir/name`, creating it with `size` bytes of deterministic data if it is missing or
/// has another size.
pub fn prepare(dir: &Path, name: &str, size: usize) -> std::io::Result<BenchFile> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let fits = std::fs::metadata(&path).is_ok_and(|meta| meta.len() == size as u64);
    if !fits {
        eprintln!("creating {} ({} MiB)...", path.display(), size >> 20);
        let mut file = File::create(&path)?;
        let mut chunk = vec![0u8; 1 << 20];
        for (index, byte) in chunk.iter_mut().enumerate() {
            *byte = (index * 131 % 251) as u8;
        }
        let mut written = 0;
        while written < size {
            let len = chunk.len().min(size - written);
            file.write_all(&chunk[..len])?;
            written += len;
        }
        file.sync_all()?;
    }
    let file = OpenOptions::new().read(true).open(&path)?;
    Ok(BenchFile { path, file, size })
}

/// How the file is brought into the page cache before a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Evicted, then read without read-ahead: 4 KiB folios.
    SmallFolios,
    /// Evicted, then read with read-ahead: large folios where the file system has them.
    LargeFolios,
}

impl CacheState {
    pub fn name(self) -> &'static str {
        match self {
            CacheState::SmallFolios => "small folios",
            CacheState::LargeFolios => "large folios",
        }
    }
}

fn fadvise(file: &File, advice: sys::FileAdvice) -> mmapkit::Result<()> {
    sys::fadvise(file.as_fd(), 0, 0, advice).map_err(|errno| mmapkit::Error::os("fadvise", errno))
}

/// Evicts the file from the page cache (its pages are clean, so all of them go).
pub fn evict(bench_file: &BenchFile) -> mmapkit::Result<()> {
    fadvise(&bench_file.file, sys::FileAdvice::DontNeed)
}

/// Evicts the file from the page cache and brings it back in `state`.
pub fn warm(bench_file: &BenchFile, state: CacheState) -> mmapkit::Result<()> {
    evict(bench_file)?;
    // A fresh open file description: read-ahead state carries over between reads of one
    // description, and would make the second state inherit the first one's folio sizes.
    let reader = File::open(&bench_file.path).map_err(|e| mmapkit::Error::io("open", &e))?;
    if state == CacheState::SmallFolios {
        fadvise(&reader, sys::FileAdvice::Random)?;
    }
    let mut buffer = vec![0u8; 1 << 20];
    while (&reader)
        .read(&mut buffer)
        .map_err(|e| mmapkit::Error::io("read", &e))?
        > 0
    {}
    Ok(())
}

/// `FileHugePages` from /proc/meminfo, in MiB: how much of the page cache is in 2 MiB folios.
pub fn file_huge_pages_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("FileHugePages:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}
