//! Standard output that a reader going away does not turn into a panic.
//!
//! Rust ignores SIGPIPE, so `println!` panics when stdout's reader has gone
//! (`mmapkit residency / | head`). Restoring SIGPIPE would also kill the command whenever an
//! HTTP server closes a connection the pager's store is writing to, so it stays ignored:
//! once a write fails, later output is dropped and the command carries on to its own end —
//! errors still reach stderr, the exit status still says whether the work succeeded, locks
//! are still held, forked children still finish their part, temporary files are removed.
//! Errors go through [`write_error`], which never panics either (`eprintln!` does when
//! stderr's reader has gone).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout has failed: nothing more is written.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// Set when that failure was not a reader going away (a full disk, say).
static WRITE_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout and flushes, unless an earlier write failed. A closed reader is
/// not an error (nobody wants the rest); any other failure is reported once.
pub fn write(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            WRITE_FAILED.store(true, Ordering::Relaxed);
            errln!("mmapkit: writing to standard output: {error}");
        }
    }
}

/// Whether writing to stdout failed for another reason than its reader going away.
pub fn failed() -> bool {
    WRITE_FAILED.load(Ordering::Relaxed)
}

/// Writes `args` to stderr, with control characters escaped (a file name holding a newline
/// or an escape sequence must not forge lines or reach the terminal), but for a final
/// newline; a failure is ignored (there is nowhere left to report it).
pub fn write_error(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text.as_str(), ""),
    };
    let shown = crate::units::printable(body);
    let _ = std::io::stderr().write_all(format!("{shown}{end}").as_bytes());
}
