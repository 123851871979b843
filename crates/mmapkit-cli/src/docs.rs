//! `mmapkit completions SHELL` and `mmapkit man`: shell completions and manual pages made
//! from the same clap definitions the parser uses, so they never fall behind the options.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. Install, e.g. for bash:
    /// `mmapkit completions bash > /etc/bash_completion.d/mmapkit`.
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page per command (mmapkit.1, mmapkit-maps.1…) into this directory instead of
    /// printing mmapkit(1) on standard output.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script.
pub fn completions(args: &CompletionsArgs) -> mmapkit::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "mmapkit", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Prints mmapkit(1), or writes every page into a directory.
pub fn man(args: &ManArgs) -> mmapkit::Result<()> {
    let command = Cli::command();
    if let Some(dir) = &args.dir {
        let failed = |error: std::io::Error| {
            mmapkit::Error::io("write the manual pages", &error).with_path(dir)
        };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let mut command = command.disable_help_subcommand(true);
        command.build();
        return write_pages(command, dir);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .map_err(|error| mmapkit::Error::io("render the manual page", &error))?;
    out!("{}", String::from_utf8_lossy(&page));
    Ok(())
}

/// The pages of `command` and its subcommands, each written to a file of its own, never
/// through a symbolic link planted in the directory.
fn write_pages(command: clap::Command, dir: &Path) -> mmapkit::Result<()> {
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(subcommand.clone(), dir)?;
    }
    let man = clap_mangen::Man::new(command);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .map_err(|error| mmapkit::Error::io("render the manual page", &error))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .and_then(|mut file| file.write_all(&page))
        .map_err(|error| mmapkit::Error::io("write the manual page", &error).with_path(&path))
}
