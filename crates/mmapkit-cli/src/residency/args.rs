//! The options of `mmapkit residency`: vmtouch's letters for what vmtouch does (`-t`, `-e`,
//! `-l`, `-d`, `-m`, `-p`, `-f`, `-F`, `-i`, `-I`, `-b`, `-0`, `-w`, `-P`, `-v`, `-q`) and
//! fincore's for the table (`-o`, `-n`, `-r`, `-c`; `-b` being vmtouch's here, sizes in bytes
//! are `--bytes`, and `mmapkit fincore` takes fincore's own letters).

use std::ffi::OsString;
use std::io::Read;
use std::ops::Range;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use clap::Args;

use super::fincore::{Column, Columns, Layout, columns_help, parse_columns};
use crate::units::parse_bytes;

#[derive(Debug, Args)]
#[command(after_help = columns_help())]
pub struct ResidencyArgs {
    /// Files and directories (walked recursively).
    #[arg(required_unless_present = "batch")]
    pub paths: Vec<PathBuf>,
    /// Only this byte range of each file: START-END, START-, -END or LEN (K, M, G, T units).
    #[arg(short = 'p', long, value_parser = parse_range, allow_hyphen_values = true)]
    pub range: Option<Range<u64>>,
    /// Follow symbolic links inside directories (the paths given are always followed).
    #[arg(short = 'f', long)]
    pub follow_symlinks: bool,
    /// Stay on the file system of each path given.
    #[arg(short = 'F', long, short_alias = 'x')]
    pub one_file_system: bool,
    /// Count a file every time it is met: each hard link, each symbolic link to it, each
    /// path naming it (by default a file is counted once).
    #[arg(short = 'H', long)]
    pub count_hardlinks: bool,
    /// Leave out files and directories whose name matches this glob (repeatable).
    #[arg(short = 'i', long = "ignore", visible_alias = "exclude", value_name = "GLOB",
          value_parser = parse_glob)]
    pub exclude: Vec<glob::Pattern>,
    /// Only files whose name matches this glob (repeatable).
    #[arg(short = 'I', long, value_name = "GLOB", value_parser = parse_glob)]
    pub include: Vec<glob::Pattern>,
    /// Read the paths from this file as well, one per line (`-` for standard input).
    #[arg(short = 'b', long, value_name = "LIST")]
    pub batch: Option<PathBuf>,
    /// The list of -b is separated by NUL bytes, not newlines (as `find -print0` writes).
    #[arg(short = '0', long, requires = "batch")]
    pub null: bool,
    /// Read the files into the page cache first (WILLNEED, then a read of every page).
    #[arg(short = 't', long, conflicts_with_all = ["evict", "lock"])]
    pub touch: bool,
    /// Drop the files from the page cache first (POSIX_FADV_DONTNEED).
    #[arg(short = 'e', long, conflicts_with = "lock")]
    pub evict: bool,
    /// Load the files and lock them in memory (mlock), then hold them until interrupted
    /// (-L is the same).
    #[arg(short = 'l', long, short_alias = 'L')]
    pub lock: bool,
    /// With --lock: hold the lock in a background process and return once every page is
    /// locked.
    #[arg(short = 'd', long, requires = "lock")]
    pub daemon: bool,
    /// Accepted for vmtouch's sake: --daemon always waits until every page is locked.
    #[arg(short = 'w', long, requires = "daemon")]
    pub wait: bool,
    /// With --lock: write the pid of the process holding the locks to this file; it is
    /// removed when the locks are released.
    #[arg(short = 'P', long, value_name = "FILE", requires = "lock")]
    pub pidfile: Option<PathBuf>,
    /// Touch or lock only files with up to this many bytes in the range (the others are
    /// skipped, each with a warning), as vmtouch's -m. No limit unless given, as vmtouch
    /// does; locking never takes more than half the memory available anyway.
    #[arg(short = 'm', long, value_parser = parse_bytes)]
    pub max_size: Option<u64>,
    /// Print only the summary, not a row per file.
    #[arg(short = 's', long)]
    pub summary: bool,
    /// Show each file's pages as a bar (O all resident, o some, space none).
    #[arg(short = 'v', long, visible_alias = "verbose", conflicts_with = "raw")]
    pub pages: bool,
    /// Nothing on standard output and no warnings; errors still reach standard error.
    #[arg(short = 'q', long, conflicts_with_all = ["pages", "json", "summary"])]
    pub quiet: bool,
    /// The table's columns, as fincore's -o (`+LIST` adds to RES,PAGES,SIZE,FILE): PAGES,
    /// SIZE, FILE, RES, DIRTY_PAGES, DIRTY, WRITEBACK_PAGES, WRITEBACK, EVICTED_PAGES,
    /// EVICTED, RECENTLY_EVICTED_PAGES, RECENTLY_EVICTED.
    #[arg(short = 'o', long, value_name = "LIST", value_parser = parse_columns)]
    pub output: Option<Columns>,
    /// Every column of the table.
    #[arg(long, conflicts_with = "output")]
    pub output_all: bool,
    /// Sizes in the table in bytes.
    #[arg(long)]
    pub bytes: bool,
    /// The table without its heading line, and no summary.
    #[arg(short = 'n', long)]
    pub noheadings: bool,
    /// The table in raw form (cells separated by one space, names encoded), and no summary.
    #[arg(short = 'r', long)]
    pub raw: bool,
    /// A TOTAL row at the end of the table.
    #[arg(short = 'c', long)]
    pub total: bool,
    /// Print the report as one JSON object.
    #[arg(long, conflicts_with_all = ["raw", "noheadings"])]
    pub json: bool,
    /// Never draw a progress bar (drawn only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Set by `mmapkit fincore`: the table alone (or fincore's JSON), as fincore prints it.
    #[arg(skip)]
    pub fincore: bool,
    /// Set by `mmapkit fincore -C`: counts from mincore are refused.
    #[arg(skip)]
    pub cachestat_only: bool,
}

impl ResidencyArgs {
    /// The table's layout.
    pub fn layout(&self) -> Layout {
        let columns = match (&self.output, self.output_all) {
            (_, true) => Column::ALL.to_vec(),
            (Some(columns), false) => columns.0.clone(),
            (None, false) => Column::DEFAULT.to_vec(),
        };
        Layout {
            columns,
            bytes: self.bytes,
            headings: !self.noheadings,
            raw: self.raw,
        }
    }

    /// Whether the summary follows the table: not when only the table was asked for.
    pub fn shows_summary(&self) -> bool {
        !(self.fincore || self.noheadings || self.raw)
    }

    /// The paths given, then those of the -b list.
    pub fn all_paths(&self) -> mmapkit::Result<Vec<PathBuf>> {
        let mut paths = self.paths.clone();
        if let Some(list) = &self.batch {
            paths.extend(read_list(list, if self.null { b'\0' } else { b'\n' })?);
        }
        Ok(paths)
    }
}

/// `mmapkit fincore`: fincore's options and output over the same measurement, for scripts
/// written for fincore (a file named twice is listed twice, directories are passed over
/// unless -R).
#[derive(Debug, Args)]
#[command(after_help = columns_help())]
pub struct FincoreArgs {
    /// Files (directories only with -R).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// fincore's JSON: {"fincore": [{"res": …, "pages": …, "size": …, "file": …}]}.
    #[arg(short = 'J', long)]
    json: bool,
    /// Sizes in bytes.
    #[arg(short = 'b', long)]
    bytes: bool,
    /// A TOTAL row at the end.
    #[arg(short = 'c', long)]
    total: bool,
    /// No heading line.
    #[arg(short = 'n', long)]
    noheadings: bool,
    /// The columns (`+LIST` adds to RES,PAGES,SIZE,FILE).
    #[arg(short = 'o', long, value_name = "LIST", value_parser = parse_columns)]
    output: Option<Columns>,
    /// Every column.
    #[arg(long, conflicts_with = "output")]
    output_all: bool,
    /// Raw output: cells separated by one space, names encoded (-J wins, as in fincore).
    #[arg(short = 'r', long)]
    raw: bool,
    /// Walk the directories given, file by file.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Only cachestat's figures: a file it cannot measure is an error, not a mincore count.
    #[arg(short = 'C', long)]
    cachestat: bool,
}

impl FincoreArgs {
    /// The residency run that prints what fincore prints.
    pub fn to_residency(&self) -> ResidencyArgs {
        let files = self
            .files
            .iter()
            .filter(|path| self.recursive || !path.is_dir())
            .cloned()
            .collect();
        ResidencyArgs {
            paths: files,
            range: None,
            follow_symlinks: false,
            one_file_system: false,
            count_hardlinks: true,
            exclude: Vec::new(),
            include: Vec::new(),
            batch: None,
            null: false,
            touch: false,
            evict: false,
            lock: false,
            daemon: false,
            wait: false,
            pidfile: None,
            max_size: None,
            summary: false,
            pages: false,
            quiet: false,
            output: self.output.clone(),
            output_all: self.output_all,
            bytes: self.bytes,
            noheadings: self.noheadings,
            raw: self.raw,
            total: self.total,
            json: self.json,
            no_progress: true,
            fincore: true,
            cachestat_only: self.cachestat,
        }
    }
}

/// The paths of a list file (or standard input for `-`), separated by `delimiter`; empty
/// entries are passed over.
fn read_list(list: &std::path::Path, delimiter: u8) -> mmapkit::Result<Vec<PathBuf>> {
    let mut bytes = Vec::new();
    let read = if list.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(list).and_then(|mut file| file.read_to_end(&mut bytes))
    };
    read.map_err(|error| mmapkit::Error::io("read the list", &error).with_path(list))?;
    Ok(bytes
        .split(|&byte| byte == delimiter)
        .filter(|entry| !entry.is_empty())
        .map(|entry| PathBuf::from(OsString::from_vec(entry.to_vec())))
        .collect())
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
