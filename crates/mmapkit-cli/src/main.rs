//! `mmapkit`: the command-line face of the library. Each subcommand is one library call plus
//! formatting.
//!
//! Exit codes: 0 when everything worked, 1 when an operation failed (the message on stderr
//! says which and why), 2 for a usage error.

mod demo;
mod page;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Page(args) => page::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mmapkit: {error}");
            ExitCode::FAILURE
        }
    }
}
