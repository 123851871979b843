//! `mmapkit residency PATH...`: how much of some files is in the page cache — fincore's
//! columns per file and vmtouch's summary — with touch, evict and lock, over whole trees.

use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmapkit::inspect::walk::{Entry, WalkOptions, walk};
use mmapkit::inspect::{self, FileResidency, LockedRange, ResidencyOptions};

use crate::hold;
use crate::report::{Failure, FileRow, Report};
use crate::units::{memory_available, parse_bytes};

#[derive(Debug, Args)]
pub struct ResidencyArgs {
    /// Files and directories (walked recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Only this byte range of each file: START-END, START-, -END or LEN (K, M, G, T units).
    #[arg(short = 'p', long, value_parser = parse_range, allow_hyphen_values = true)]
    pub range: Option<Range<u64>>,
    /// Follow symbolic links inside directories (the paths given are always followed).
    #[arg(short = 'L', long)]
    pub follow_symlinks: bool,
    /// Stay on the file system of each path given.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Count a file every time it is met: each hard link, each symbolic link to it, each
    /// path naming it (by default a file is counted once).
    #[arg(short = 'H', long)]
    pub count_hardlinks: bool,
    /// Leave out files and directories whose name matches this glob (repeatable).
    #[arg(short = 'e', long, value_name = "GLOB", value_parser = parse_glob)]
    pub exclude: Vec<glob::Pattern>,
    /// Only files whose name matches this glob (repeatable).
    #[arg(short = 'i', long, value_name = "GLOB", value_parser = parse_glob)]
    pub include: Vec<glob::Pattern>,
    /// Read the files into the page cache first (WILLNEED, then a read of every page).
    #[arg(long, conflicts_with_all = ["evict", "lock"])]
    pub touch: bool,
    /// Drop the files from the page cache first (POSIX_FADV_DONTNEED).
    #[arg(long, conflicts_with = "lock")]
    pub evict: bool,
    /// Load the files and lock them in memory (mlock), then hold them until interrupted.
    #[arg(long)]
    pub lock: bool,
    /// With --lock: hold the lock in a background process and return at once.
    #[arg(long, requires = "lock")]
    pub daemon: bool,
    /// Touch or lock only files with up to this many bytes in the range (the others are
    /// skipped, each with a warning), as vmtouch's -m. No limit unless given, as vmtouch
    /// does; locking never takes more than half the memory available anyway.
    #[arg(short = 'm', long, value_parser = parse_bytes)]
    pub max_size: Option<u64>,
    /// Print only the summary, not a row per file.
    #[arg(short = 's', long)]
    pub summary: bool,
    /// Show each file's pages as a bar (O all resident, o some, space none).
    #[arg(long)]
    pub pages: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Never draw a progress bar (drawn only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|error| format!("{text:?}: {error}"))
}

/// START-END, START-, -END or LEN, each a size with an optional unit.
fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let size = parse_bytes;
    let range = match text.split_once('-') {
        None => 0..size(text)?,
        Some((start, "")) => size(start)?..u64::MAX,
        Some(("", end)) => 0..size(end)?,
        Some((start, end)) => size(start)?..size(end)?,
    };
    if range.start > range.end {
        return Err(format!("{text:?}: the range ends before it starts"));
    }
    Ok(range)
}

/// Runs the command; returns whether everything worked.
pub fn run(args: &ResidencyArgs) -> bool {
    if args.lock && args.daemon {
        return hold::in_background(|| {
            let (mut report, locks) = collect(args);
            if !locks.is_empty() {
                report.holder = Some(std::process::id());
            }
            let errors: Vec<String> = report
                .warnings()
                .chain(report.errors().map(str::to_owned))
                .collect();
            (report.worked(), report.render(args), errors, locks)
        });
    }
    let (report, locks) = collect(args);
    let holding = args.lock && !locks.is_empty();
    if holding {
        hold::block_termination_signals();
    }
    out!("{}", report.render(args));
    for warning in report.warnings() {
        errln!("mmapkit: {warning}");
    }
    for error in report.errors() {
        errln!("mmapkit: {error}");
    }
    if holding {
        hold::until_interrupted(locks);
    }
    report.worked()
}

/// Walks the paths, acts on each file, measures it; returns the report and the locks held.
fn collect(args: &ResidencyArgs) -> (Report, Vec<LockedRange>) {
    let started = Instant::now();
    let progress = progress_bar(args);
    let options = WalkOptions {
        follow_symlinks: args.follow_symlinks,
        one_file_system: args.one_file_system,
        count_hardlinks: args.count_hardlinks,
    };
    let measure = ResidencyOptions {
        range: args.range.clone(),
        page_map: args.pages,
    };
    let mut report = Report::default();
    // The limits are read only when locking.
    let mut limits = args.lock.then(LockLimits::new);
    walk(
        &args.paths,
        &options,
        |path, is_directory| keep(args, path, is_directory),
        |entry| match entry {
            Entry::File {
                path,
                file,
                metadata,
            } => {
                let acting = args.touch || args.lock;
                let too_large = args
                    .max_size
                    .is_some_and(|max| bytes_in_range(metadata.len(), &args.range) > max);
                if acting && too_large {
                    report
                        .skipped
                        .push((path.to_path_buf(), "more bytes to act on than --max-size"));
                    return;
                }
                match act_and_measure(args, &file, &measure, limits.as_mut()) {
                    Ok(Outcome::Measured(residency)) => {
                        report.files.push(FileRow::new(path, residency, args.json));
                    }
                    Ok(Outcome::NotMeasured(error)) => {
                        report.unmeasured.push(Failure::new(path, error));
                    }
                    Err(error) => report.failed.push(Failure::new(path, error)),
                }
                progress.set_message(format!("{} files", report.files.len()));
                progress.tick();
            }
            Entry::Directory { .. } => report.directories += 1,
            Entry::Skipped { path, reason } => report.skipped.push((path.to_path_buf(), reason)),
            Entry::Failed { path, error } => report.failed.push(Failure::new(path, error)),
        },
    );
    progress.finish_and_clear();
    report.elapsed = started.elapsed();
    (
        report,
        limits.map(|limits| limits.locks).unwrap_or_default(),
    )
}

/// The bytes of a file of `size` bytes that `range` (the whole file if None) covers.
fn bytes_in_range(size: u64, range: &Option<Range<u64>>) -> u64 {
    range.as_ref().map_or(size, |range| {
        range.end.min(size).saturating_sub(range.start)
    })
}

fn keep(args: &ResidencyArgs, path: &Path, is_directory: bool) -> bool {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    if args.exclude.iter().any(|pattern| pattern.matches(&name)) {
        return false;
    }
    is_directory || args.include.is_empty() || args.include.iter().any(|p| p.matches(&name))
}

/// What became of a file that was acted on (or only measured).
enum Outcome {
    Measured(FileResidency),
    /// Touched or evicted, but its residency may not be read (another user's file: the
    /// kernel refuses cachestat, and mincore would lie): the action stands, and is no failure.
    NotMeasured(mmapkit::Error),
}

fn act_and_measure(
    args: &ResidencyArgs,
    file: &std::fs::File,
    measure: &ResidencyOptions,
    limits: Option<&mut LockLimits>,
) -> mmapkit::Result<Outcome> {
    let range = args.range.clone();
    if args.touch {
        inspect::touch(file, range)?;
    } else if args.evict {
        inspect::evict(file, range)?;
    } else if let Some(limits) = limits {
        let locked = limits.lock(file, range)?;
        // A file whose figure cannot be given is reported as failed: it holds no lock either.
        return inspect::residency_of(file, measure)
            .map(Outcome::Measured)
            .inspect_err(|_| limits.release(locked));
    }
    match inspect::residency_of(file, measure) {
        Ok(residency) => Ok(Outcome::Measured(residency)),
        Err(error)
            if (args.touch || args.evict)
                && error.kind() == mmapkit::ErrorKind::PermissionDenied =>
        {
            Ok(Outcome::NotMeasured(error))
        }
        Err(error) => Err(error),
    }
}

/// The locks held, and the two limits no lock may cross: the memory available (locked pages
/// cannot be reclaimed, so locking more than there is ends in the OOM killer) and the
/// kernel's count of mappings per process (each locked file is one).
struct LockLimits {
    locks: Vec<LockedRange>,
    locked_bytes: u64,
    available: u64,
    max_mappings: usize,
}

impl LockLimits {
    fn new() -> LockLimits {
        let available = memory_available().unwrap_or(u64::MAX);
        let max_mappings = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(65530);
        LockLimits {
            locks: Vec::new(),
            locked_bytes: 0,
            available,
            max_mappings,
        }
    }

    /// Locks the range of `file`; returns the bytes locked, or None when the range holds
    /// no byte of the file (an empty file, a range past its end): nothing to hold then.
    fn lock(
        &mut self,
        file: &std::fs::File,
        range: Option<Range<u64>>,
    ) -> mmapkit::Result<Option<u64>> {
        let size = file
            .metadata()
            .map_err(|error| mmapkit::Error::io("stat", &error))?
            .len();
        let wanted = bytes_in_range(size, &range);
        if wanted == 0 {
            return Ok(None);
        }
        let refuse = |message: String| {
            Err(mmapkit::Error::new(
                mmapkit::ErrorKind::OutOfMemory,
                "lock",
                message,
            ))
        };
        if self.locked_bytes.saturating_add(wanted) > self.available / 2 {
            return refuse(format!(
                "locking {wanted} more bytes would take more than half the memory available \
                 ({} MiB)",
                self.available >> 20
            ));
        }
        // Leave room for the mappings the process itself needs.
        if self.locks.len() + 1024 >= self.max_mappings {
            return refuse(format!(
                "too many files locked at once ({}; vm.max_map_count is {})",
                self.locks.len(),
                self.max_mappings
            ));
        }
        self.locks.push(inspect::lock(file, range)?);
        self.locked_bytes += wanted;
        Ok(Some(wanted))
    }

    /// Releases the lock taken last, of `bytes` bytes (if one was taken).
    fn release(&mut self, bytes: Option<u64>) {
        if let Some(bytes) = bytes {
            self.locks.pop();
            self.locked_bytes -= bytes;
        }
    }
}

fn progress_bar(args: &ResidencyArgs) -> ProgressBar {
    if args.no_progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_every_form() {
        assert_eq!(parse_range("4K-8K"), Ok(4096..8192));
        assert_eq!(parse_range("1M-"), Ok((1 << 20)..u64::MAX));
        assert_eq!(parse_range("-64K"), Ok(0..65536));
        assert_eq!(parse_range("10"), Ok(0..10));
        assert!(parse_range("8K-4K").is_err());
        assert!(parse_range("1%-2%").is_err());
        assert!(parse_range("x-y").is_err());
    }
}
