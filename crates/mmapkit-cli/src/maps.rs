//! `mmapkit maps PID...`: a process's mappings with pmap's options and layouts (see
//! [`crate::pmap`]) — the default listing, `-x`, `-d`, `-X`, `-XX`, `-q`, `-p`, `-A` — plus
//! `--json` with every figure.

use clap::{ArgAction, Args};
use mmapkit::inspect::{self, MapsEntry, Pid, SmapsEntry, SmapsFields};

use crate::pmap::{self, Style};

#[derive(Debug, Args)]
pub struct MapsArgs {
    /// Process ids (`self` for this command itself). A thread id shows its process.
    #[arg(required = true, value_parser = parse_pid)]
    pids: Vec<Pid>,
    /// Extended: resident (RSS) and dirty sizes per mapping.
    #[arg(short = 'x', long, conflicts_with_all = ["smaps", "device"])]
    extended: bool,
    /// The smaps figures pmap -X shows; twice (-XX) every line the kernel provides.
    #[arg(short = 'X', long = "smaps", action = ArgAction::Count, conflicts_with = "device")]
    smaps: u8,
    /// Offsets and devices, with the mapped, writeable/private and shared totals.
    #[arg(short = 'd', long)]
    device: bool,
    /// No column headings and no totals.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The whole path of each mapped file, not only its name.
    #[arg(short = 'p', long = "show-path")]
    show_path: bool,
    /// Only the mappings that meet the addresses LOW,HIGH or LOW (hexadecimal, `0x` optional; one
    /// address alone: the mapping that holds it; an empty side is open).
    #[arg(short = 'A', long, value_name = "LOW[,HIGH]", value_parser = parse_range)]
    range: Option<AddressRange>,
    /// One JSON array, an object per process, with every figure.
    #[arg(long, conflicts_with_all = ["extended", "smaps", "device", "quiet"])]
    json: bool,
}

/// The addresses of `-A`, both included: a mapping is shown if it holds any of them.
#[derive(Debug, Clone, Copy)]
pub struct AddressRange {
    low: u64,
    high: u64,
}

impl AddressRange {
    fn meets(&self, entry: &MapsEntry) -> bool {
        entry.start <= self.high && entry.end > self.low
    }
}

fn parse_range(text: &str) -> Result<AddressRange, String> {
    let address = |side: &str, open: u64| -> Result<u64, String> {
        let digits = side.trim();
        if digits.is_empty() {
            return Ok(open);
        }
        let digits = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
            .unwrap_or(digits);
        u64::from_str_radix(digits, 16)
            .map_err(|_| format!("{side:?} is not a hexadecimal address"))
    };
    let range = match text.split_once(',') {
        Some((low, high)) => AddressRange {
            low: address(low, 0)?,
            high: address(high, u64::MAX)?,
        },
        None if text.trim().is_empty() => return Err("an address is needed".into()),
        None => {
            let only = address(text, 0)?;
            AddressRange {
                low: only,
                high: only,
            }
        }
    };
    if range.low > range.high {
        return Err(format!(
            "the low address {:#x} is above the high one {:#x}",
            range.low, range.high
        ));
    }
    Ok(range)
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

/// What one process's listing needs: the smaps figures, or the maps lines alone.
enum Report {
    Maps(Vec<MapsEntry>),
    Smaps(Vec<SmapsEntry>),
}

impl MapsArgs {
    fn needs_smaps(&self) -> bool {
        self.json || self.extended || self.smaps > 0
    }

    fn style(&self) -> Style {
        Style {
            quiet: self.quiet,
            full_paths: self.show_path,
        }
    }

    fn shown(&self, entry: &MapsEntry) -> bool {
        self.range.is_none_or(|range| range.meets(entry))
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
        let number = match pid {
            Pid::Id(id) => inspect::process_of(pid).unwrap_or(id),
            Pid::Current => std::process::id(),
        };
        let result = if args.needs_smaps() {
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
                    json.push(serde_json::json!({"pid": number, "error": error.to_string()}));
                }
                continue;
            }
        };
        let style = args.style();
        match report {
            Report::Smaps(entries) => {
                let entries: Vec<&SmapsEntry> = entries
                    .iter()
                    .filter(|entry| args.shown(&entry.map))
                    .collect();
                if args.json {
                    json.push(json_process(number, &arguments, &command, &entries));
                } else if args.smaps > 0 {
                    let all = args.smaps > 1;
                    out!("{}", pmap::smaps(number, &command, &entries, all, style));
                } else {
                    out!("{}", pmap::extended(number, &command, &entries, style));
                }
            }
            Report::Maps(entries) => {
                let entries: Vec<&MapsEntry> =
                    entries.iter().filter(|entry| args.shown(entry)).collect();
                if args.device {
                    out!("{}", pmap::device(number, &command, &entries, style));
                } else {
                    out!("{}", pmap::listing(number, &command, &entries, style));
                }
            }
        }
    }
    if args.json {
        outln!("{}", serde_json::Value::Array(json));
    }
    all_read
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
    entries: &[&SmapsEntry],
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
    let (size, fields) = pmap::totals(entries);
    let mut total = json_fields(&fields);
    if let Some(object) = total.as_object_mut() {
        object.insert("size".into(), size.into());
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
