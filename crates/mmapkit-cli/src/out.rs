//! Standard output that a reader going away does not turn into a panic.
//!
//! Rust ignores SIGPIPE, so `println!` panics when stdout's reader has gone
//! (`mmapkit residency / | head`). Restoring SIGPIPE would also kill the command whenever an
//! HTTP server closes a connection the pager's store is writing to, so it stays ignored and
//! the command ends quietly here instead, as `head`'s writers expect.

use std::io::Write;

/// Writes `args` to stdout and flushes. A closed reader ends the process with status 0
/// (nobody is reading any more); any other error is reported and ends it with status 1.
pub fn write(args: std::fmt::Arguments<'_>) {
    match try_write(args) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("mmapkit: writing to standard output: {error}");
            std::process::exit(1);
        }
    }
}

/// Writes a report that comes before the real work (holding locks): no write error stops
/// that work, a closed reader is not even mentioned.
pub fn write_before_holding(args: std::fmt::Arguments<'_>) {
    if let Err(error) = try_write(args)
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("mmapkit: writing to standard output: {error}");
    }
}

fn try_write(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).and_then(|()| stdout.flush())
}
