//! The residency report: a fincore-like row per file, a vmtouch-like summary, or JSON.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mmapkit::inspect::walk::ALREADY_COUNTED;
use mmapkit::inspect::{FileResidency, Method};

use super::ResidencyArgs;
use super::fincore;
use crate::units::human;

/// Width of a page bar.
const BAR: usize = 60;

/// A file that was measured.
pub struct FileRow {
    pub path: PathBuf,
    pub residency: FileResidency,
    /// The page map in the compact form printed, when one was asked for.
    pub pages: Option<PageView>,
}

/// A page map as printed: a bar and the runs of cached pages. The bitmap itself is not kept:
/// a tree of large sparse files would hold all of theirs until the end.
pub struct PageView {
    bar: String,
    resident_runs: Vec<[u64; 2]>,
}

impl FileRow {
    /// The row for `path`; its page map, if any, becomes a bar, and runs if `keep_runs`
    /// (only JSON prints them: a fragmented file has many).
    pub fn new(path: &Path, mut residency: FileResidency, keep_runs: bool) -> FileRow {
        let pages = residency.page_map.take().map(|map| {
            let runs: Vec<Range<u64>> = map.resident_runs().collect();
            PageView {
                bar: bar(map.len(), &runs),
                resident_runs: if keep_runs {
                    runs.iter().map(|run| [run.start, run.end]).collect()
                } else {
                    Vec::new()
                },
            }
        });
        FileRow {
            path: path.to_path_buf(),
            residency,
            pages,
        }
    }
}

/// An entry that could not be measured.
pub struct Failure {
    pub path: PathBuf,
    pub message: String,
}

impl Failure {
    /// A failure of `path`; the message names the path if the error does not already.
    pub fn new(path: &Path, error: mmapkit::Error) -> Failure {
        let error = match error.path() {
            Some(_) => error,
            None => error.with_path(path),
        };
        Failure {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    }
}

/// Everything a residency run found.
#[derive(Default)]
pub struct Report {
    pub files: Vec<FileRow>,
    pub directories: u64,
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// Files acted on whose residency may not be read.
    pub unmeasured: Vec<Failure>,
    pub failed: Vec<Failure>,
    pub elapsed: Duration,
    /// The background process holding the locks, if one does.
    pub holder: Option<u32>,
}

/// Sums over the files.
#[derive(Default)]
struct Totals {
    pages: u64,
    cached: u64,
    bytes: u64,
    /// Whole pages, as `cached_bytes` counts them.
    page_bytes: u64,
    cached_bytes: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

impl Report {
    fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for row in &self.files {
            let r = &row.residency;
            totals.pages += r.pages;
            totals.cached += r.cached;
            totals.bytes += r.range.end - r.range.start;
            totals.page_bytes += r.pages * r.page_size;
            totals.cached_bytes += r.cached_bytes();
            totals.dirty += r.dirty.unwrap_or(0);
            totals.writeback += r.writeback.unwrap_or(0);
            totals.evicted += r.evicted.unwrap_or(0);
            totals.recently_evicted += r.recently_evicted.unwrap_or(0);
        }
        totals
    }

    /// The report as printed on stdout: text or JSON (nothing with --quiet).
    pub fn render(&self, args: &ResidencyArgs) -> String {
        if args.quiet {
            String::new()
        } else if args.json && args.fincore {
            fincore::json(&self.table_rows(args), &args.layout())
        } else if args.json {
            format!("{}\n", self.json(args))
        } else {
            self.text(args)
        }
    }

    /// The rows of the table: a row per file, and the TOTAL with --total.
    fn table_rows(&self, args: &ResidencyArgs) -> Vec<fincore::Row> {
        let mut rows: Vec<fincore::Row> = self
            .files
            .iter()
            .map(|row| fincore::Row::new(&row.path, &row.residency))
            .collect();
        if args.total {
            rows.push(fincore::Row::total(&rows));
        }
        rows
    }

    /// The failures, one message each, for stderr.
    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.failed.iter().map(|failure| failure.message.as_str())
    }

    /// What was passed over or only half done, one warning each, for stderr (as vmtouch warns
    /// of each file it skips).
    pub fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        // A file met again (a hard link, a path named twice) is only counted, as vmtouch
        // passes over it without a word.
        let skipped = self
            .skipped
            .iter()
            .filter(|(_, reason)| *reason != ALREADY_COUNTED)
            .map(|(path, reason)| format!("skipped {}: {reason}", path.to_string_lossy()));
        let unmeasured = self
            .unmeasured
            .iter()
            .map(|failure| format!("acted on, but not measured: {}", failure.message));
        skipped.chain(unmeasured)
    }

    /// Whether nothing failed.
    pub fn worked(&self) -> bool {
        self.failed.is_empty()
    }

    fn text(&self, args: &ResidencyArgs) -> String {
        let mut out = String::new();
        if !args.summary {
            let layout = args.layout();
            let table = fincore::render(&self.table_rows(args), &layout);
            let mut lines = table.lines();
            if layout.headings {
                out.extend(lines.next().map(|heading| format!("{heading}\n")));
            }
            // Row by row, each file's page bar under it (the TOTAL row has none).
            for (index, line) in lines.enumerate() {
                out += line;
                out += "\n";
                if let Some((row, view)) = self
                    .files
                    .get(index)
                    .and_then(|row| Some((row, row.pages.as_ref()?)))
                {
                    let r = &row.residency;
                    out += &format!("  [{}] {}/{}\n", view.bar, r.cached, r.pages);
                }
            }
            if !args.shows_summary() {
                return out;
            }
            out += "\n";
        }
        let totals = self.totals();
        let percent = if totals.pages == 0 {
            String::new()
        } else {
            format!(
                "  {:.3}%",
                totals.cached as f64 * 100.0 / totals.pages as f64
            )
        };
        let label = if args.touch {
            "Touched Pages"
        } else if args.lock {
            "Locked Pages"
        } else {
            "Resident Pages"
        };
        out += &format!(
            "{:>16}: {}\n",
            "Files",
            self.files.len() + self.unmeasured.len()
        );
        out += &format!("{:>16}: {}\n", "Directories", self.directories);
        out += &format!(
            "{label:>16}: {}/{}  {}/{}{percent}\n",
            totals.cached,
            totals.pages,
            human(totals.cached_bytes),
            human(totals.page_bytes)
        );
        if self
            .files
            .iter()
            .all(|row| row.residency.method == Method::Cachestat)
        {
            out += &format!(
                "{:>16}: {} dirty, {} under writeback, {} evicted ({} recently)\n",
                "Pages", totals.dirty, totals.writeback, totals.evicted, totals.recently_evicted
            );
        }
        if !self.unmeasured.is_empty() {
            let action = if args.touch { "touched" } else { "evicted" };
            out += &format!(
                "{:>16}: {} ({action}; their residency may not be read, listed on stderr)\n",
                "Not measured",
                self.unmeasured.len()
            );
        }
        if !self.skipped.is_empty() {
            out += &format!("{:>16}: {}\n", "Skipped", skipped_summary(&self.skipped));
        }
        if !self.failed.is_empty() {
            out += &format!(
                "{:>16}: {} (listed on stderr)\n",
                "Failed",
                self.failed.len()
            );
        }
        out += &format!(
            "{:>16}: {:.5} seconds\n",
            "Elapsed",
            self.elapsed.as_secs_f64()
        );
        out
    }

    fn json(&self, args: &ResidencyArgs) -> serde_json::Value {
        let totals = self.totals();
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|row| {
                let r = &row.residency;
                serde_json::json!({
                    "path": row.path.to_string_lossy(),
                    "path_escaped": crate::units::escaped(&row.path),
                    "size": r.size,
                    "range": [r.range.start, r.range.end],
                    "pages": r.pages,
                    "resident_pages": r.cached,
                    "resident_bytes": r.cached_bytes(),
                    "dirty_pages": r.dirty,
                    "writeback_pages": r.writeback,
                    "evicted_pages": r.evicted,
                    "recently_evicted_pages": r.recently_evicted,
                    "method": match r.method {
                        Method::Cachestat => "cachestat",
                        Method::Mincore => "mincore",
                    },
                    "resident_page_runs": row.pages.as_ref().map(|view| &view.resident_runs),
                })
            })
            .collect();
        let action = if args.touch {
            "touch"
        } else if args.evict {
            "evict"
        } else if args.lock {
            "lock"
        } else {
            "none"
        };
        serde_json::json!({
            "action": action,
            "holder_pid": self.holder,
            "files": files,
            "summary": {
                "files": self.files.len(),
                "directories": self.directories,
                "pages": totals.pages,
                "resident_pages": totals.cached,
                "bytes": totals.bytes,
                "page_bytes": totals.page_bytes,
                "resident_bytes": totals.cached_bytes,
                "dirty_pages": totals.dirty,
                "writeback_pages": totals.writeback,
                "evicted_pages": totals.evicted,
                "recently_evicted_pages": totals.recently_evicted,
                "skipped": self.skipped.len(),
                "not_measured": self.unmeasured.len(),
                "failed": self.failed.len(),
                "seconds": self.elapsed.as_secs_f64(),
            },
            "skipped": self.skipped.iter().map(|(path, reason)| serde_json::json!({
                "path": path.to_string_lossy(),
                "path_escaped": crate::units::escaped(path),
                "reason": reason,
            })).collect::<Vec<_>>(),
            "not_measured": self.unmeasured.iter().map(|failure| serde_json::json!({
                "path": failure.path.to_string_lossy(),
                "path_escaped": crate::units::escaped(&failure.path),
                "error": failure.message,
            })).collect::<Vec<_>>(),
            "failed": self.failed.iter().map(|failure| serde_json::json!({
                "path": failure.path.to_string_lossy(),
                "path_escaped": crate::units::escaped(&failure.path),
                "error": failure.message,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `3 (FIFO: 1, symbolic link (not followed): 2; listed on stderr)`.
fn skipped_summary(skipped: &[(PathBuf, &'static str)]) -> String {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in skipped {
        *reasons.entry(reason).or_default() += 1;
    }
    let parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect();
    let named = if reasons.keys().any(|reason| *reason != ALREADY_COUNTED) {
        "; listed on stderr"
    } else {
        ""
    };
    format!("{} ({}{named})", skipped.len(), parts.join(", "))
}

/// `pages` pages of which `runs` are cached, squeezed into at most [`BAR`] cells: `O` all
/// resident, `o` some, ` ` none.
fn bar(pages: u64, runs: &[Range<u64>]) -> String {
    if pages == 0 {
        return String::new();
    }
    let cells = (BAR as u64).min(pages);
    let mut runs = runs.iter().peekable();
    (0..cells)
        .map(|cell| {
            let (start, end) = (cell * pages / cells, (cell + 1) * pages / cells);
            let mut cached = 0;
            while let Some(run) = runs.peek() {
                cached += run.end.min(end).saturating_sub(run.start.max(start));
                if run.end > end {
                    break;
                }
                runs.next();
            }
            match cached {
                0 => ' ',
                n if n == end - start => 'O',
                _ => 'o',
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_squeeze_pages_into_cells() {
        assert_eq!(bar(0, &[]), "");
        assert_eq!(bar(4, std::slice::from_ref(&(0..2))), "OO  ");
        // 120 pages in 60 cells: page 1 and pages 60.. not cached.
        let squeezed = bar(120, &[0..1, 2..60]);
        assert_eq!(squeezed.len(), 60);
        assert!(squeezed.starts_with("oOO"));
        assert!(squeezed.ends_with("   "));
        // A run spanning cells, and cells wider than one page.
        assert_eq!(
            bar(600, std::slice::from_ref(&(5..595))),
            format!("o{}o", "O".repeat(58))
        );
    }
}
