//! `mmapkit shm ls|rm|clean`: named shared-memory segments in /dev/shm — who owns them,
//! whether their creator lives, what mmapkit type they hold — and removing the stale ones.

use clap::{Args, Subcommand};
use mmapkit::shm::stale::{self, SegmentInfo};

use crate::units::{human, printable, shown_name};

#[derive(Debug, Args)]
pub struct ShmArgs {
    #[command(subcommand)]
    command: ShmCommand,
}

#[derive(Debug, Subcommand)]
enum ShmCommand {
    /// List the objects in /dev/shm: size, owner, mode, mmapkit type, creator, users.
    Ls {
        #[command(flatten)]
        filter: Filter,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove named segments (shm_unlink); processes that map them keep their mappings.
    Rm {
        /// Segment names, as they are or as `ls` shows them (escapes included).
        #[arg(required = true)]
        names: Vec<std::ffi::OsString>,
    },
    /// Remove the stale mmapkit segments: valid header, creator dead, nobody maps or opens it.
    Clean {
        #[command(flatten)]
        filter: Filter,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// One JSON array of the names removed (or that would be).
        #[arg(long)]
        json: bool,
    },
}

/// Which segments `ls` and `clean` look at: all, or those a name, glob or prefix selects.
#[derive(Debug, Args)]
struct Filter {
    /// Only these segments: names or globs (`app-*`; quote them from the shell), matched
    /// against the name as it is or as `ls` shows it.
    #[arg(value_name = "NAME", value_parser = parse_glob)]
    names: Vec<glob::Pattern>,
    /// Only the segments whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
}

impl Filter {
    fn selects(&self, segment: &SegmentInfo) -> bool {
        let shown = shown_name(&segment.file_name);
        let named = self.names.is_empty()
            || self
                .names
                .iter()
                .any(|pattern| pattern.matches(&segment.name) || pattern.matches(&shown));
        let prefixed = self.prefix.as_ref().is_none_or(|prefix| {
            segment.name.starts_with(prefix.as_str()) || shown.starts_with(prefix.as_str())
        });
        named && prefixed
    }
}

fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|error| format!("{text:?}: {error}"))
}

/// Runs the command; returns whether everything worked (errors are on stderr).
pub fn run(args: &ShmArgs) -> bool {
    match &args.command {
        ShmCommand::Ls { filter, json } => list(filter, *json),
        ShmCommand::Rm { names } => remove(names),
        ShmCommand::Clean {
            filter,
            dry_run,
            json,
        } => clean(filter, *dry_run, *json),
    }
}

fn list(filter: &Filter, json: bool) -> bool {
    let segments = match stale::list() {
        Ok(segments) => segments
            .into_iter()
            .filter(|segment| filter.selects(segment))
            .collect::<Vec<_>>(),
        Err(error) => {
            errln!("mmapkit: {error}");
            return false;
        }
    };
    if json {
        let rows: Vec<serde_json::Value> = segments.iter().map(json_row).collect();
        outln!("{}", serde_json::Value::Array(rows));
        return true;
    }
    outln!(
        "{:<28} {:>10} {:<10} {:>5} {:<16} {:<18} {:<12} STALE",
        "NAME",
        "SIZE",
        "OWNER",
        "MODE",
        "TYPE",
        "CREATOR",
        "USERS"
    );
    for segment in &segments {
        outln!(
            "{:<28} {:>10} {:<10} {:>5} {:<16} {:<18} {:<12} {}",
            shown_name(&segment.file_name),
            human(segment.size),
            user_name(segment.uid),
            format!("{:04o}", segment.mode),
            segment
                .header
                .map_or_else(|| "-".to_owned(), |header| header.type_tag.to_string()),
            creator(segment),
            users(segment),
            if segment.is_stale() { "yes" } else { "no" }
        );
    }
    true
}

fn creator(segment: &SegmentInfo) -> String {
    match (segment.header, segment.creator_alive) {
        (Some(header), Some(true)) => format!("{} (alive)", header.creator.pid),
        (Some(header), _) => format!("{} (dead)", header.creator.pid),
        _ => String::from("-"),
    }
}

fn users(segment: &SegmentInfo) -> String {
    if segment.users.is_empty() {
        return String::from("-");
    }
    let pids: Vec<String> = segment.users.iter().map(u32::to_string).collect();
    pids.join(",")
}

fn json_row(segment: &SegmentInfo) -> serde_json::Value {
    serde_json::json!({
        "name": segment.name,
        "name_escaped": crate::units::escaped(std::path::Path::new(&segment.file_name)),
        "size": segment.size,
        "uid": segment.uid,
        "owner": user_name(segment.uid),
        "mode": format!("{:04o}", segment.mode),
        "mmapkit": segment.header.is_some(),
        "type": segment.header.map(|header| header.type_tag.to_string()),
        "creator_pid": segment.header.map(|header| header.creator.pid),
        "creator_alive": segment.creator_alive,
        "users": segment.users,
        "stale": segment.is_stale(),
    })
}

fn remove(names: &[std::ffi::OsString]) -> bool {
    let mut all = true;
    let exists = |name: &std::ffi::OsStr| std::path::Path::new("/dev/shm").join(name).exists();
    for name in names {
        // A name as `ls` shows it, escapes and all, names the object it was shown for,
        // unless an object has that very name.
        let target = match crate::units::unescape_name(name) {
            Some(unescaped) if !exists(name) && exists(&unescaped) => unescaped,
            _ => name.clone(),
        };
        match stale::remove(&target) {
            Ok(()) => outln!("removed {}", shown_name(&target)),
            Err(error) => {
                errln!("mmapkit: {error}");
                all = false;
            }
        }
    }
    all
}

fn clean(filter: &Filter, dry_run: bool, json: bool) -> bool {
    let result = if dry_run {
        stale::list().map(|segments| stale::Cleanup {
            removed: segments
                .into_iter()
                .filter(|segment| segment.is_stale() && filter.selects(segment))
                .map(|segment| segment.name)
                .collect(),
            failed: Vec::new(),
        })
    } else {
        stale::cleanup_matching(|segment| filter.selects(segment))
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            errln!("mmapkit: {error}");
            return false;
        }
    };
    for (_, error) in &outcome.failed {
        errln!("mmapkit: {error}");
    }
    if json {
        outln!("{}", serde_json::json!(outcome.removed));
    } else if outcome.removed.is_empty() {
        outln!("no stale segments removed");
    } else {
        let verb = if dry_run { "would remove" } else { "removed" };
        for name in &outcome.removed {
            outln!("{verb} {}", printable(name));
        }
    }
    outcome.failed.is_empty()
}

/// The user name of `uid` from /etc/passwd, or the number.
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
        .unwrap_or_else(|| uid.to_string())
}
