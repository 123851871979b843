//! The text formats of `mmapkit maps`, laid out as procps pmap 4 lays them out, so that what
//! operators read (and scripts parse) is the same: the default listing, `-x` (resident and
//! dirty), `-d` (offsets, devices and the mapped/private/shared summary), `-X` (the smaps
//! figures pmap shows) and `-XX` (every smaps line), each with `-q` leaving out the column
//! headings and the totals. `tests/pmap.rs` holds them against the real pmap.
//!
//! Three differences are deliberate: control characters in a command line are escaped
//! (`\n`, `\u{1b}`), where pmap prints `?` or a space and loses what they were; the totals of
//! `-x -A` are the sums of the rows shown, where pmap adds the figures of the first mapping
//! past the range; and `-A` selects the rows of `-X` and `-XX` too, which pmap ignores (a
//! selection without rows shows the header alone, as pmap does for a process without
//! mappings).

use mmapkit::inspect::{MappingKind, MapsEntry, SmapsEntry, SmapsFields};

use crate::units::{printable, shown_name};

/// How a listing is printed.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// No column headings, no totals (`-q`).
    pub quiet: bool,
    /// The whole path of mapped files, not only their name (`-p`).
    pub full_paths: bool,
}

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

/// pmap's mode column: `rwx` as maps has it, then `s` for shared or `-`, and a `-`.
fn mode(entry: &MapsEntry) -> String {
    let permissions = entry.permissions.to_string();
    let shared = if entry.permissions.shared { 's' } else { '-' };
    format!("{}{shared}-", &permissions[..3])
}

/// The mapping column of the listings other than `-X`: the file's name (or path), else
/// pmap's `[ stack ]` or `[ anon ]` (pmap names no other kind: the heap, vdso and named
/// regions are `[ anon ]` there, and so here; `-X` and `--json` tell them apart).
fn mapping(entry: &MapsEntry, style: Style) -> String {
    let shown = match (&entry.kind, style.full_paths) {
        (kind, true) if kind.path().is_some() => kind.description(),
        (kind, false) if kind.path().is_some() => kind.label(),
        (MappingKind::Stack, _) => String::from("  [ stack ]"),
        _ => String::from("  [ anon ]"),
    };
    printable(&shown).into_owned()
}

/// `PID:   command`, the command escaped so that it can be read back: a backslash doubled,
/// control characters as `\n` or `\u{1b}`.
fn header(pid: u32, command: &str) -> String {
    format!("{pid}:   {}\n", shown_name(std::ffi::OsStr::new(command)))
}

/// The default listing: address, size, mode, mapping.
pub fn listing(pid: u32, command: &str, entries: &[&MapsEntry], style: Style) -> String {
    let mut out = header(pid, command);
    for entry in entries {
        out += &format!(
            "{:016x} {:>6}K {} {}\n",
            entry.start,
            kib(entry.size()),
            mode(entry),
            mapping(entry, style)
        );
    }
    if !style.quiet {
        let total: u64 = entries.iter().map(|entry| entry.size()).sum();
        out += &format!(" total {:>16}K\n", kib(total));
    }
    out
}

/// `-x`: size, resident and dirty kB.
pub fn extended(pid: u32, command: &str, entries: &[&SmapsEntry], style: Style) -> String {
    let mut out = header(pid, command);
    if !style.quiet {
        out += "Address           Kbytes     RSS   Dirty Mode  Mapping\n";
    }
    for entry in entries {
        out += &format!(
            "{:016x} {:>7} {:>7} {:>7} {} {}\n",
            entry.map.start,
            kib(entry.map.size()),
            kib(entry.fields.rss),
            kib(entry.fields.dirty()),
            mode(&entry.map),
            mapping(&entry.map, style)
        );
    }
    if !style.quiet {
        let (size, fields) = totals(entries);
        out += "---------------- ------- ------- ------- \n";
        out += &format!(
            "total kB         {:>7} {:>7} {:>7}\n",
            kib(size),
            kib(fields.rss),
            kib(fields.dirty())
        );
    }
    out
}

/// `-d`: size, mode, offset, device, and what is mapped, private-writable and shared.
pub fn device(pid: u32, command: &str, entries: &[&MapsEntry], style: Style) -> String {
    let mut out = header(pid, command);
    if !style.quiet {
        out += "Address           Kbytes Mode  Offset           Device    Mapping\n";
    }
    let (mut mapped, mut private_writable, mut shared) = (0, 0, 0);
    for entry in entries {
        let size = entry.size();
        mapped += size;
        if entry.permissions.shared {
            shared += size;
        } else if entry.permissions.write {
            private_writable += size;
        }
        out += &format!(
            "{:016x} {:>7} {} {:016x} {:03x}:{:05x} {}\n",
            entry.start,
            kib(size),
            mode(entry),
            entry.offset,
            entry.device_major,
            entry.device_minor,
            mapping(entry, style)
        );
    }
    if !style.quiet {
        out += &format!(
            "mapped: {}K    writeable/private: {}K    shared: {}K\n",
            kib(mapped),
            kib(private_writable),
            kib(shared)
        );
    }
    out
}

/// The smaps lines in the kernel's order; those marked `true` are shown by `-X` as well as
/// `-XX` (pmap keeps the page sizes, the shared/private split, AnonHugePages and VmFlags for
/// `-XX`). Lines this kernel prints that are not listed follow, with `-XX`.
const SMAPS_LINES: [(&str, bool); 24] = [
    ("Size", true),
    ("KernelPageSize", false),
    ("MMUPageSize", false),
    ("Rss", true),
    ("Pss", true),
    ("Pss_Dirty", true),
    ("Shared_Clean", false),
    ("Shared_Dirty", false),
    ("Private_Clean", false),
    ("Private_Dirty", false),
    ("Referenced", true),
    ("Anonymous", true),
    ("KSM", true),
    ("LazyFree", true),
    ("AnonHugePages", false),
    ("ShmemPmdMapped", true),
    ("FilePmdMapped", true),
    ("Shared_Hugetlb", true),
    ("Private_Hugetlb", true),
    ("Swap", true),
    ("SwapPss", true),
    ("Locked", true),
    ("THPeligible", true),
    // Only where the CPU and kernel have memory protection keys.
    ("ProtectionKey", true),
];

/// Lines that are counts or flags, not kB.
const UNITLESS: [&str; 2] = ["THPeligible", "ProtectionKey"];

/// One numeric column of `-X`/`-XX`.
struct Column {
    name: String,
    values: Vec<u64>,
    total: u64,
}

impl Column {
    fn width(&self, quiet: bool) -> usize {
        let widest = self
            .values
            .iter()
            .chain((!quiet).then_some(&self.total))
            .map(|value| value.to_string().len())
            .max()
            .unwrap_or(1);
        if quiet {
            widest
        } else {
            widest.max(self.name.len())
        }
    }
}

/// The figure of `name` for one mapping, as pmap prints it: kB, or the number itself.
fn figure(entry: &SmapsEntry, name: &str) -> Option<u64> {
    let value = match name {
        "Size" => Some(entry.map.size()),
        _ => entry.fields.get(name),
    }?;
    Some(if UNITLESS.contains(&name) {
        value
    } else {
        kib(value)
    })
}

/// The columns `-X` (`all` false) or `-XX` (`all` true) shows for these mappings: the lines
/// the kernel printed, in its order.
fn columns(entries: &[&SmapsEntry], all: bool) -> Vec<Column> {
    let present = |name: &str| entries.iter().any(|entry| figure(entry, name).is_some());
    let mut names: Vec<String> = SMAPS_LINES
        .iter()
        .filter(|(name, in_x)| (all || *in_x) && present(name))
        .map(|(name, _)| (*name).to_owned())
        .collect();
    if all {
        for entry in entries {
            for (name, _) in &entry.fields.other {
                let listed = SMAPS_LINES.iter().any(|(known, _)| known == &&**name);
                if !listed && !names.iter().any(|have| have == &**name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values: Vec<u64> = entries
                .iter()
                .map(|entry| figure(entry, &name).unwrap_or(0))
                .collect();
            let total = values
                .iter()
                .fold(0u64, |sum, value| sum.saturating_add(*value));
            Column {
                name,
                values,
                total,
            }
        })
        .collect()
}

/// `-X` and `-XX`: address, permissions, offset, device, inode, then the smaps figures (and
/// VmFlags with `-XX`) and the mapping as smaps names it.
pub fn smaps(pid: u32, command: &str, entries: &[&SmapsEntry], all: bool, style: Style) -> String {
    let mut out = header(pid, command);
    // A process without mappings (a kernel thread, a zombie): the header alone, as pmap.
    if entries.is_empty() {
        return out;
    }
    let columns = columns(entries, all);
    let quiet = style.quiet;
    let inode_width = entries
        .iter()
        .map(|entry| entry.map.inode.to_string().len())
        .max()
        .unwrap_or(1)
        .max(if quiet { 1 } else { 5 });
    let (offset_width, device_width) = if quiet { (8, 5) } else { (8, 6) };
    let flags_width = entries
        .iter()
        .map(|entry| entry.fields.vm_flags.len())
        .max()
        .unwrap_or(0)
        .max(if quiet { 0 } else { 7 });
    let widths: Vec<usize> = columns.iter().map(|column| column.width(quiet)).collect();
    if !quiet {
        out += &format!(
            "{:>16} Perm {:>offset_width$} {:>device_width$} {:>inode_width$}",
            "Address", "Offset", "Device", "Inode"
        );
        for (column, width) in columns.iter().zip(&widths) {
            out += &format!(" {:>width$}", column.name);
        }
        if all {
            out += &format!(" {:>flags_width$}", "VmFlags");
        }
        out += " Mapping\n";
    }
    for (row, entry) in entries.iter().enumerate() {
        let map = &entry.map;
        let device = format!("{:02x}:{:02x}", map.device_major, map.device_minor);
        out += &format!(
            "{:>16x} {} {:0>8x} {:>device_width$} {:>inode_width$}",
            map.start, map.permissions, map.offset, device, map.inode
        );
        for (column, width) in columns.iter().zip(&widths) {
            out += &format!(" {:>width$}", column.values[row]);
        }
        if all {
            out += &format!(" {:>flags_width$}", entry.fields.vm_flags);
        }
        let name = match (map.kind.path(), style.full_paths) {
            (Some(_), true) => map.kind.description(),
            (Some(_), false) => map.kind.label(),
            (None, _) => match &map.kind {
                MappingKind::Anonymous => String::new(),
                kind => kind.label().replace("[ ", "[").replace(" ]", "]"),
            },
        };
        out += &format!(" {}\n", printable(&name));
    }
    if !quiet {
        let lead = 16 + 1 + 4 + 1 + offset_width + 1 + device_width + 1 + inode_width;
        out += &" ".repeat(lead);
        for width in &widths {
            out += &format!(" {}", "=".repeat(*width));
        }
        out += " \n";
        out += &" ".repeat(lead);
        for (column, width) in columns.iter().zip(&widths) {
            out += &format!(" {:>width$}", column.total);
        }
        out += " KB \n";
    }
    out
}

/// Sums over a process's mappings: their size, and their figures.
pub fn totals(entries: &[&SmapsEntry]) -> (u64, SmapsFields) {
    let mut fields = SmapsFields::default();
    let mut size = 0;
    for entry in entries {
        size += entry.map.size();
        fields += &entry.fields;
    }
    (size, fields)
}
