//! `mmapkit maps PID...`: a process's mappings, as pmap shows them — the default listing,
//! `-x` with resident and dirty sizes, `-X` with the smaps figures — plus `--json`.

use clap::Args;
use mmapkit::inspect::{self, MapsEntry, Pid, SmapsEntry, SmapsFields};

use crate::units::printable;

#[derive(Debug, Args)]
pub struct MapsArgs {
    /// Process ids (`self` for this command itself).
    #[arg(required = true, value_parser = parse_pid)]
    pids: Vec<Pid>,
    /// Extended: resident (RSS) and dirty sizes per mapping.
    #[arg(short = 'x', long, conflicts_with = "smaps")]
    extended: bool,
    /// The smaps figures per mapping: Pss, shared/private clean/dirty, swap, huge pages,
    /// locked, VmFlags.
    #[arg(short = 'X', long = "smaps")]
    smaps: bool,
    /// One JSON array, an object per process, with every figure.
    #[arg(long)]
    json: bool,
}

fn parse_pid(text: &str) -> Result<Pid, String> {
    if text == "self" {
        return Ok(Pid::Current);
    }
    match text.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(Pid::Id(pid)),
        _ => Err(format!("{text:?} is not a process id")),
    }
}

/// Prints every process; returns false if any could not be read (each error is on stderr).
pub fn run(args: &MapsArgs) -> bool {
    let mut all_read = true;
    let mut json = Vec::new();
    for &pid in &args.pids {
        // Read before the mappings: a process that exits in between then has no mappings
        // (an error), rather than its mappings under the bare name an exiting process shows.
        let command = inspect::command_line(pid).unwrap_or_default();
        let arguments = inspect::arguments(pid).unwrap_or_default();
        let result = if args.json || args.extended || args.smaps {
            inspect::smaps(pid).map(Report::Smaps)
        } else {
            inspect::maps(pid).map(Report::Maps)
        };
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                errln!("mmapkit: {error}");
                all_read = false;
                if args.json {
                    let pid = match pid {
                        Pid::Id(pid) => pid,
                        Pid::Current => std::process::id(),
                    };
                    json.push(serde_json::json!({"pid": pid, "error": error.to_string()}));
                }
                continue;
            }
        };
        let number = match pid {
            Pid::Id(pid) => pid,
            Pid::Current => std::process::id(),
        };
        match (&report, args.json) {
            (Report::Smaps(entries), true) => {
                json.push(json_process(number, &arguments, &command, entries));
            }
            (Report::Maps(entries), _) => out!("{}", listing(number, &command, entries)),
            (Report::Smaps(entries), false) if args.smaps => {
                out!("{}", smaps_listing(number, &command, entries));
            }
            (Report::Smaps(entries), false) => out!("{}", extended(number, &command, entries)),
        }
    }
    if args.json {
        outln!("{}", serde_json::Value::Array(json));
    }
    all_read
}

enum Report {
    Maps(Vec<MapsEntry>),
    Smaps(Vec<SmapsEntry>),
}

/// pmap's mode column: r, w, x, `s` for shared (`-` for private), and a trailing dash.
fn mode(entry: &MapsEntry) -> String {
    let permissions = entry.permissions.to_string();
    let shared = if entry.permissions.shared { 's' } else { '-' };
    format!("{}{shared}-", &permissions[..3])
}

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

fn listing(pid: u32, command: &str, entries: &[MapsEntry]) -> String {
    let mut out = format!("{pid}:   {}\n", printable(command));
    for entry in entries {
        out += &format!(
            "{:016x} {:>7}K {} {}\n",
            entry.start,
            kib(entry.size()),
            mode(entry),
            printable(&entry.kind.label())
        );
    }
    let total: u64 = entries.iter().map(MapsEntry::size).sum();
    out += &format!(" total {:>16}K\n", kib(total));
    out
}

fn extended(pid: u32, command: &str, entries: &[SmapsEntry]) -> String {
    let mut out = format!("{pid}:   {}\n", printable(command));
    out += "Address           Kbytes     RSS   Dirty Mode  Mapping\n";
    for entry in entries {
        out += &format!(
            "{:016x} {:>7} {:>7} {:>7} {} {}\n",
            entry.map.start,
            kib(entry.map.size()),
            kib(entry.fields.rss),
            kib(entry.fields.dirty()),
            mode(&entry.map),
            printable(&entry.map.kind.label())
        );
    }
    let totals = Totals::of(entries);
    out += "---------------- ------- ------- -------\n";
    out += &format!(
        "total kB         {:>7} {:>7} {:>7}\n",
        kib(totals.size),
        kib(totals.fields.rss),
        kib(totals.fields.dirty())
    );
    out
}

/// A column of `-X`: its heading and how to read it from the figures.
type Column = (&'static str, fn(&SmapsFields) -> u64);

/// The smaps columns of `-X`.
const SMAPS_COLUMNS: [Column; 10] = [
    ("Rss", |f| f.rss),
    ("Pss", |f| f.pss),
    ("Shared_Clean", |f| f.shared_clean),
    ("Shared_Dirty", |f| f.shared_dirty),
    ("Private_Clean", |f| f.private_clean),
    ("Private_Dirty", |f| f.private_dirty),
    ("Swap", |f| f.swap),
    ("AnonHugePages", |f| f.anon_huge_pages),
    ("Locked", |f| f.locked),
    ("Referenced", |f| f.referenced),
];

fn smaps_listing(pid: u32, command: &str, entries: &[SmapsEntry]) -> String {
    let mut out = format!("{pid}:   {}\n", printable(command));
    out += &format!(
        "{:>16} Perm {:>8} Device {:>9} {:>8}",
        "Address", "Offset", "Inode", "Size"
    );
    for (name, _) in SMAPS_COLUMNS {
        out += &format!(" {name:>w$}", w = name.len().max(6));
    }
    out += " VmFlags Mapping\n";
    for entry in entries {
        let map = &entry.map;
        out += &format!(
            "{:>16x} {} {:08x} {:>3x}:{:02x} {:>9} {:>8}",
            map.start,
            map.permissions,
            map.offset,
            map.device_major,
            map.device_minor,
            map.inode,
            kib(map.size())
        );
        for (name, read) in SMAPS_COLUMNS {
            out += &format!(" {:>w$}", kib(read(&entry.fields)), w = name.len().max(6));
        }
        out += &format!(
            " {} {}\n",
            entry.fields.vm_flags,
            printable(&map.kind.description())
        );
    }
    let totals = Totals::of(entries);
    out += &format!("{:>54} {:>8}", "total kB", kib(totals.size));
    for (name, read) in SMAPS_COLUMNS {
        out += &format!(" {:>w$}", kib(read(&totals.fields)), w = name.len().max(6));
    }
    out += "\n";
    out
}

/// Sums over a process's mappings.
struct Totals {
    size: u64,
    fields: SmapsFields,
}

impl Totals {
    fn of(entries: &[SmapsEntry]) -> Totals {
        let mut fields = SmapsFields::default();
        let mut size = 0;
        for entry in entries {
            size += entry.map.size();
            fields += &entry.fields;
        }
        Totals { size, fields }
    }
}

fn json_fields(fields: &SmapsFields) -> serde_json::Value {
    serde_json::json!({
        "rss": fields.rss,
        "pss": fields.pss,
        "shared_clean": fields.shared_clean,
        "shared_dirty": fields.shared_dirty,
        "private_clean": fields.private_clean,
        "private_dirty": fields.private_dirty,
        "dirty": fields.dirty(),
        "referenced": fields.referenced,
        "anonymous": fields.anonymous,
        "anon_huge_pages": fields.anon_huge_pages,
        "swap": fields.swap,
        "swap_pss": fields.swap_pss,
        "locked": fields.locked,
    })
}

/// One process as JSON: `command` is its arguments (empty for a kernel thread), `display` the
/// header pmap would print.
fn json_process(
    pid: u32,
    arguments: &[String],
    display: &str,
    entries: &[SmapsEntry],
) -> serde_json::Value {
    let mappings: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let map = &entry.map;
            let mut object = json_fields(&entry.fields);
            let extra = serde_json::json!({
                "start": format!("{:#x}", map.start),
                "end": format!("{:#x}", map.end),
                "size": map.size(),
                "permissions": map.permissions.to_string(),
                "offset": map.offset,
                "device": format!("{:02x}:{:02x}", map.device_major, map.device_minor),
                "inode": map.inode,
                "kind": kind_name(&map.kind),
                "path": map.kind.path().map(|path| path.to_string_lossy().into_owned()),
                "path_escaped": map.kind.path().and_then(|path| crate::units::escaped(path)),
                "label": map.kind.label(),
                "kernel_page_size": entry.fields.kernel_page_size,
                "vm_flags": entry.fields.vm_flags().collect::<Vec<_>>(),
                "other": entry.fields.other.iter()
                    .map(|(name, value)| (name.to_string(), serde_json::Value::from(*value)))
                    .collect::<serde_json::Map<_, _>>(),
            });
            if let (Some(object), serde_json::Value::Object(extra)) =
                (object.as_object_mut(), extra)
            {
                object.extend(extra);
            }
            object
        })
        .collect();
    let totals = Totals::of(entries);
    let mut total = json_fields(&totals.fields);
    if let Some(object) = total.as_object_mut() {
        object.insert("size".into(), totals.size.into());
        object.insert("mappings".into(), entries.len().into());
    }
    serde_json::json!({
        "pid": pid,
        "command": arguments,
        "display": display,
        "mappings": mappings,
        "totals": total,
    })
}

fn kind_name(kind: &inspect::MappingKind) -> &'static str {
    use inspect::MappingKind;
    match kind {
        MappingKind::File(_) => "file",
        MappingKind::DeletedFile(_) => "deleted file",
        MappingKind::Anonymous => "anonymous",
        MappingKind::Heap => "heap",
        MappingKind::Stack => "stack",
        MappingKind::Vdso => "vdso",
        MappingKind::Named(_) => "named",
    }
}
