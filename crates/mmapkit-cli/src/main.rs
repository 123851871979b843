//! `mmapkit`: the command-line face of the library. Each subcommand is one library call plus
//! formatting.
//!
//! Exit codes: 0 when everything worked, 1 when an operation failed (the message on stderr
//! says which and why), 2 for a usage error.

/// `print!` that survives a closed reader (see `out`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}

/// `println!` that survives a closed reader (see `out`).
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that survives a closed stderr (see `out`).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::write_error(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod demo;
mod docs;
mod maps;
mod out;
mod page;
mod pmap;
mod residency;
mod shm;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Memory-mapped I/O and shared memory, without the crashes.
#[derive(Debug, Parser)]
#[command(name = "mmapkit", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show how mappings behave across fork, copy-on-write, msync and truncation.
    Demo(demo::DemoArgs),
    /// Read a file through the user-space pager with a memory budget and report what it did.
    Page(page::PageArgs),
    /// List a process's mappings with pmap's options (-x, -d, -X, -XX, -q, -p, -A) or as JSON.
    Maps(maps::MapsArgs),
    /// Report how much of files and trees is in the page cache; touch, evict or lock them
    /// (vmtouch's options, fincore's table).
    Residency(residency::ResidencyArgs),
    /// fincore's options and output exactly, for scripts written for fincore.
    Fincore(residency::FincoreArgs),
    /// Print the completion script for a shell.
    Completions(docs::CompletionsArgs),
    /// Print the manual page (or write one per command with --dir).
    Man(docs::ManArgs),
    /// List named shared-memory segments, remove them, or clean up the stale ones.
    Shm(shm::ShmArgs),
}

/// Success if everything worked, else failure (the errors were printed already). Output that
/// could not be written is a failure too.
fn exit_code(all_worked: bool) -> ExitCode {
    if all_worked && !out::failed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Completions(args) => docs::completions(&args).map_err(Into::into),
        Command::Man(args) => docs::man(&args).map_err(Into::into),
        Command::Page(args) => match page::run(&args) {
            Ok(()) => Ok(()),
            Err(page::Failure::Usage(message)) => {
                errln!("mmapkit page: {message}");
                return ExitCode::from(2);
            }
            Err(page::Failure::Failed(error)) => Err(error.into()),
        },
        // Reports on several things print each error as it comes and fail at the end.
        Command::Maps(args) => return exit_code(maps::run(&args)),
        Command::Residency(args) => return exit_code(residency::run(&args)),
        Command::Fincore(args) => return exit_code(residency::run(&args.to_residency())),
        Command::Shm(args) => return exit_code(shm::run(&args)),
    };
    if let Err(error) = &result {
        errln!("mmapkit: {error}");
    }
    exit_code(result.is_ok())
}
