//! `mmapkit page`: read a file through the user-space pager with a memory budget, and report
//! what the pager did — faults, read-ahead, evictions, fault latency.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;

use mmapkit::pager::{
    CompressedStore, FileStore, HttpStore, PagedRegion, Pager, Stats, Store, store,
};

use crate::units::{Size, human, memory_available, parse_bytes, parse_size, printable};

/// Bytes per guarded read of a scan.
const CHUNK: usize = 1 << 20;
/// Bytes per random read.
const RANDOM_READ: usize = 4096;

#[derive(Debug, Args)]
pub struct PageArgs {
    /// What to read through the pager: a file, a seekable zstd archive (read as the data it
    /// holds), or an http:// URL (read with range requests).
    file: std::path::PathBuf,
    /// Most memory the pager may hold: bytes, with K/M/G/T, or a percentage of the file
    /// (default: the whole file, or half the memory available if that is less: pages the
    /// pager holds are its own memory, which the kernel cannot drop as it drops page cache).
    #[arg(long, value_parser = parse_nonzero_size)]
    budget: Option<Size>,
    /// The pager's page size (a multiple of the system page; default: the system page).
    #[arg(long, value_parser = parse_page_size)]
    page_size: Option<u64>,
    /// Most bytes read ahead of a sequential scan (0 turns read-ahead off).
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    readahead: Size,
    /// After reading a page from a file, drop the file's page-cache copy of it: the pager
    /// holds it already, so a budget is not spent twice.
    #[arg(long)]
    drop_behind: bool,
    /// Handler threads, 1 to 64 (default: one per CPU, at most 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    handlers: Option<u16>,
    /// Instead of scanning, make this many random 4 KiB reads.
    #[arg(long, value_name = "COUNT")]
    random: Option<usize>,
    /// Read through the pager's explicit API, as a buffer manager does (optimistic reads; a
    /// missing page is read from the store by the reading thread itself, without a fault),
    /// instead of faulting the pages in.
    #[arg(long)]
    explicit: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

/// The store for `source`: HTTP for a URL, the archive's contents for a seekable zstd
/// archive, else the file itself.
fn parse_nonzero_size(text: &str) -> Result<Size, String> {
    match parse_size(text)? {
        Size::Bytes(0) => Err(format!("{text:?}: must be more than 0")),
        Size::Percent(percent) if percent <= 0.0 => Err(format!("{text:?}: must be more than 0")),
        size => Ok(size),
    }
}

fn parse_page_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    let system_page = mmapkit::sys::page_size() as u64;
    if bytes == 0 || !bytes.is_multiple_of(system_page) || bytes > 1 << 30 {
        return Err(format!(
            "{text:?}: must be a multiple of the system page ({system_page} bytes), at most 1G"
        ));
    }
    Ok(bytes)
}

fn open_store(
    source: &std::path::Path,
    drop_behind: bool,
) -> mmapkit::Result<(Arc<dyn Store>, &'static str)> {
    // Anything that looks like a URL goes to the HTTP store, which names the schemes it
    // supports, rather than being looked up as a file name.
    if let Some(url) = source.to_str().filter(|text| text.contains("://")) {
        return Ok((Arc::new(HttpStore::open(url)?), "http"));
    }
    let file = store::open_regular_file(source, false)?;
    if CompressedStore::is_seekable_archive(&file) {
        let archive = CompressedStore::from_file(file).map_err(|error| error.with_path(source))?;
        return Ok((Arc::new(archive), "seekable zstd"));
    }
    let mut store = FileStore::from_file(file, false).map_err(|error| error.with_path(source))?;
    if store.is_empty() {
        let why = if source.starts_with("/proc") || source.starts_with("/sys") {
            "files in /proc and /sys report a size of 0 whatever they hold, and the pager \
             needs the length up front"
        } else {
            "there is nothing to page"
        };
        return Err(mmapkit::Error::new(
            mmapkit::ErrorKind::InvalidInput,
            "page",
            format!("the file is empty: {why}"),
        )
        .with_path(source));
    }
    store.drop_behind(drop_behind);
    Ok((Arc::new(store), "file"))
}

/// Why `page` stopped: a usage error (exit 2) or an operation that failed (exit 1).
pub enum Failure {
    Usage(String),
    Failed(mmapkit::Error),
}

impl From<mmapkit::Error> for Failure {
    fn from(error: mmapkit::Error) -> Failure {
        Failure::Failed(error)
    }
}

pub fn run(args: &PageArgs) -> Result<(), Failure> {
    let (store, kind) = open_store(&args.file, args.drop_behind)?;
    let size = store.len();
    let mut pager = Pager::from_arc(store);
    let budget = match args.budget {
        Some(budget) => Some(budget.of(size) as usize),
        None => memory_available()
            .map(|available| available / 2)
            .filter(|&half| half < size)
            .map(|half| half as usize),
    };
    let page_size = args
        .page_size
        .map_or_else(mmapkit::sys::page_size, |bytes| bytes as usize);
    // Known only once the file's size is: a budget must hold two pages, unless it holds the
    // whole file.
    if let Some(budget) = budget
        && budget < 2 * page_size
        && (budget as u64) < size
    {
        return Err(Failure::Usage(format!(
            "--budget: {} holds fewer than two pages of {}",
            human(budget as u64),
            human(page_size as u64)
        )));
    }
    pager
        .page_size(page_size)
        .readahead(args.readahead.of(size) as usize);
    if let Some(budget) = budget {
        pager.budget(budget);
    }
    if let Some(handlers) = args.handlers {
        pager.handler_threads(usize::from(handlers));
    }
    let region = pager
        .build()
        .map_err(|error| Failure::Failed(error.with_path(&args.file)))?;
    let progress = progress_bar(args, region.len() as u64);
    let started = Instant::now();
    let work = match args.random {
        Some(count) => random_reads(&region, count, args.explicit, &progress),
        None => scan(&region, args.explicit, &progress),
    }
    .map_err(|error| Failure::Failed(error.with_path(&args.file)))?;
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let stats = region.stats();
    let report = Report {
        path: args.file.display().to_string(),
        kind,
        size,
        budget: budget.map(|budget| budget as u64),
        page_size: region.page_size(),
        handlers: region.handler_threads(),
        explicit: args.explicit,
        work,
        elapsed,
        stats,
    };
    if args.json {
        outln!("{}", report.json());
    } else {
        out!("{}", report.text());
    }
    Ok(())
}

fn progress_bar(args: &PageArgs, len: u64) -> ProgressBar {
    if args.no_progress || args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// What was done: a scan with its checksum, or random reads.
enum Work {
    Scan { checksum: u64 },
    Random { reads: usize },
}

/// Copies `buf.len()` bytes at `offset`: a guarded copy that faults pages in, or, `explicit`,
/// page by page through optimistic reads.
fn read(
    region: &PagedRegion,
    offset: usize,
    buf: &mut [u8],
    explicit: bool,
) -> mmapkit::Result<()> {
    if !explicit {
        return region.read_at(offset, buf);
    }
    let page_size = region.page_size();
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done;
        let len = (page_size - at % page_size).min(buf.len() - done);
        let target = &mut buf[done..done + len];
        region.read_optimistic(at / page_size, |page| {
            page.read_into(at % page_size, target)
        })?;
        done += len;
    }
    Ok(())
}

fn scan(region: &PagedRegion, explicit: bool, progress: &ProgressBar) -> mmapkit::Result<Work> {
    let mut chunk = vec![0u8; CHUNK];
    let mut checksum = 0u64;
    let mut offset = 0;
    while offset < region.len() {
        let len = CHUNK.min(region.len() - offset);
        read(region, offset, &mut chunk[..len], explicit)?;
        checksum = checksum.wrapping_add(sum_of_words(&chunk[..len]));
        offset += len;
        progress.set_position(offset as u64);
        progress.set_message(format!("resident {}", human(region.stats().resident_bytes)));
    }
    Ok(Work::Scan { checksum })
}

/// The wrapping sum of the little-endian u64 words of `bytes`, the last one zero-padded.
fn sum_of_words(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let mut padded = [0u8; 8];
    padded[..tail.len()].copy_from_slice(tail);
    words
        .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
        .fold(u64::from_le_bytes(padded), u64::wrapping_add)
}

fn random_reads(
    region: &PagedRegion,
    count: usize,
    explicit: bool,
    progress: &ProgressBar,
) -> mmapkit::Result<Work> {
    progress.set_length(count as u64);
    let slots = (region.len() / RANDOM_READ).max(1);
    let mut buf = [0u8; RANDOM_READ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for done in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state as usize % slots) * RANDOM_READ;
        let len = RANDOM_READ.min(region.len() - offset);
        read(region, offset, &mut buf[..len], explicit)?;
        if done % 1024 == 0 {
            progress.set_position(done as u64);
        }
    }
    Ok(Work::Random { reads: count })
}

struct Report {
    path: String,
    kind: &'static str,
    size: u64,
    budget: Option<u64>,
    page_size: usize,
    handlers: usize,
    explicit: bool,
    work: Work,
    elapsed: Duration,
    stats: Stats,
}

impl Report {
    fn text(&self) -> String {
        let stats = &self.stats;
        let seconds = self.elapsed.as_secs_f64();
        let budget = self.budget.map_or_else(
            || String::from("no budget"),
            |b| format!("a budget of {}", human(b)),
        );
        let access = if self.explicit {
            "explicit access"
        } else {
            "faults"
        };
        let mut out = format!(
            "paged {} ({}, {}) with {}, {} pages, {access}, handler threads: {}\n",
            printable(&self.path),
            self.kind,
            human(self.size),
            budget,
            human(self.page_size as u64),
            self.handlers
        );
        out += &match self.work {
            Work::Scan { checksum } => format!(
                "scanned in {seconds:.3} s ({:.2} GB/s); sum of u64 words {checksum:#018x}\n",
                self.size as f64 / seconds / 1e9
            ),
            Work::Random { reads } => format!(
                "{reads} random 4 KiB reads in {seconds:.3} s ({:.0} reads/s, {:.0} faults/s)\n",
                reads as f64 / seconds,
                stats.faults as f64 / seconds
            ),
        };
        let rows = [
            (
                "faults",
                format!("{} (first writes {})", stats.faults, stats.write_faults),
            ),
            (
                "pages filled",
                format!(
                    "{} (ahead of demand {}, for explicit reads {})",
                    stats.pages_filled, stats.pages_prefetched, stats.explicit_fills
                ),
            ),
            ("read from store", human(stats.bytes_read)),
            (
                "evictions",
                format!(
                    "{} (in the background {})",
                    stats.evictions, stats.background_evictions
                ),
            ),
            (
                "write-backs",
                format!("{} ({})", stats.writebacks, human(stats.bytes_written)),
            ),
            ("store errors", stats.store_errors.to_string()),
            (
                "resident",
                format!(
                    "{} now, {} at most",
                    human(stats.resident_bytes),
                    human(stats.peak_resident_bytes)
                ),
            ),
            ("fault latency", stats.fault_latency.to_string()),
        ];
        for (label, value) in rows {
            out += &format!("  {label:<16} {value}\n");
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let stats = &self.stats;
        let latency = &stats.fault_latency;
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let (mode, checksum, reads) = match self.work {
            Work::Scan { checksum } => ("scan", Some(format!("{checksum:#018x}")), None),
            Work::Random { reads } => ("random", None, Some(reads)),
        };
        serde_json::json!({
            "file": self.path,
            "store": self.kind,
            "size": self.size,
            "budget": self.budget,
            "page_size": self.page_size,
            "handlers": self.handlers,
            "mode": mode,
            "explicit": self.explicit,
            "reads": reads,
            "checksum": checksum,
            "seconds": self.elapsed.as_secs_f64(),
            "faults": stats.faults,
            "write_faults": stats.write_faults,
            "pages_filled": stats.pages_filled,
            "pages_prefetched": stats.pages_prefetched,
            "explicit_fills": stats.explicit_fills,
            "bytes_read": stats.bytes_read,
            "evictions": stats.evictions,
            "background_evictions": stats.background_evictions,
            "writebacks": stats.writebacks,
            "bytes_written": stats.bytes_written,
            "store_errors": stats.store_errors,
            "resident_bytes": stats.resident_bytes,
            "peak_resident_bytes": stats.peak_resident_bytes,
            "fault_latency_us": {
                "count": latency.count(),
                "mean": micros(latency.mean()),
                "p50_below": micros(latency.quantile(0.5)),
                "p99_below": micros(latency.quantile(0.99)),
                "max_below": micros(latency.quantile(1.0)),
            },
        })
    }
}
