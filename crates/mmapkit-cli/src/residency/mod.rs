//! `mmapkit residency PATH...`: how much of some files is in the page cache — fincore's
//! columns per file and vmtouch's summary — with touch, evict and lock, over whole trees.

use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmapkit::inspect::walk::{Entry, WalkOptions, walk};
use mmapkit::inspect::{self, FileResidency, LockedRange, Method, ResidencyOptions};

mod args;
mod fincore;
mod hold;
mod report;

pub use args::{FincoreArgs, ResidencyArgs};
use hold::Pidfile;
use report::{Failure, FileRow, Report};

use crate::units::memory_available;

/// Runs the command; returns whether everything worked.
pub fn run(args: &ResidencyArgs) -> bool {
    // Everything that can be refused is, before anything is done.
    let prepared = args.all_paths().and_then(|paths| {
        let pidfile = args.pidfile.as_deref().map(Pidfile::create).transpose()?;
        Ok((paths, pidfile))
    });
    let (paths, pidfile) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            errln!("mmapkit: {error}");
            return false;
        }
    };
    if args.lock && args.daemon {
        return hold::in_background(pidfile, args.quiet, || {
            let (mut report, locks) = collect(args, &paths);
            if !locks.is_empty() {
                report.holder = Some(std::process::id());
            }
            let errors: Vec<String> = report
                .warnings()
                .filter(|_| !args.quiet)
                .chain(report.errors().map(str::to_owned))
                .collect();
            (report.worked(), report.render(args), errors, locks)
        });
    }
    let (mut report, mut locks) = collect(args, &paths);
    if args.lock && !locks.is_empty() {
        // Before the pid is out: whoever reads it may signal at once, and the signal must
        // wait for the release (and the pidfile's removal) rather than end the process.
        hold::block_termination_signals();
    }
    let mut pidfile = pidfile;
    if let (Some(file), false) = (pidfile.as_mut(), locks.is_empty()) {
        // A holder nobody can find by its pid holds nothing.
        if let Err(error) = file.write_pid() {
            locks.clear();
            report
                .failed
                .push(report::Failure::new(Path::new(""), error));
        }
    }
    let holding = args.lock && !locks.is_empty();
    out!("{}", report.render(args));
    if !args.quiet {
        for warning in report.warnings() {
            errln!("mmapkit: {warning}");
        }
    }
    for error in report.errors() {
        errln!("mmapkit: {error}");
    }
    if holding {
        hold::until_interrupted(locks, pidfile);
    } else if let Some(pidfile) = pidfile {
        pidfile.remove();
    }
    report.worked()
}

/// Walks the paths, acts on each file, measures it; returns the report and the locks held.
fn collect(args: &ResidencyArgs, paths: &[PathBuf]) -> (Report, Vec<LockedRange>) {
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
        paths,
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
        Ok(residency) if args.cachestat_only && residency.method != Method::Cachestat => {
            Err(mmapkit::Error::new(
                mmapkit::ErrorKind::Unsupported,
                "cachestat",
                "this kernel has no cachestat(2) (Linux 6.5 and later); without -C the \
                 pages are counted with mincore",
            ))
        }
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
