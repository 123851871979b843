//! /proc/PID/maps and /proc/PID/smaps as typed records.
//!
//! The kernel writes one line per mapping — `start-end perms offset major:minor inode path` —
//! and, in smaps, a block of `Key: value kB` lines and a `VmFlags:` line after each. The
//! parser works on bytes: paths are whatever the kernel printed (not necessarily UTF-8; a
//! newline in a file name appears as `\012`), and a line that does not have the shape above is
//! an error naming the line, never a panic. Fuzzed (`fuzz/fuzz_targets/proc_maps.rs`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{Error, ErrorKind, Result};

/// What a mapping maps, from the path column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingKind {
    /// A file that still exists (or at least had this path when it was mapped).
    File(PathBuf),
    /// A file removed since it was mapped (the kernel appends " (deleted)"); memfds and System
    /// V shared memory also show as deleted files.
    DeletedFile(PathBuf),
    /// Anonymous memory (no path).
    Anonymous,
    /// The process heap (`[heap]`).
    Heap,
    /// A stack (`[stack]`, or `[stack:TID]` on old kernels).
    Stack,
    /// The vDSO (`[vdso]`).
    Vdso,
    /// Another kernel-named area: `[vvar]`, `[vsyscall]`, `[anon:NAME]`, `[uprobes]`…
    Named(String),
}

impl MappingKind {
    /// A short label: the file's base name, or the bracketed name.
    pub fn label(&self) -> String {
        let base = |path: &PathBuf| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            )
        };
        match self {
            MappingKind::File(path) => base(path),
            MappingKind::DeletedFile(path) => format!("{} (deleted)", base(path)),
            MappingKind::Anonymous => String::from("[ anon ]"),
            MappingKind::Heap => String::from("[ heap ]"),
            MappingKind::Stack => String::from("[ stack ]"),
            MappingKind::Vdso => String::from("[ vdso ]"),
            MappingKind::Named(name) => format!("[ {name} ]"),
        }
    }

    /// The whole path for files (with " (deleted)" for deleted ones), else the label.
    pub fn description(&self) -> String {
        match self {
            MappingKind::File(path) => path.display().to_string(),
            MappingKind::DeletedFile(path) => format!("{} (deleted)", path.display()),
            _ => self.label(),
        }
    }

    /// The file's path, for file mappings.
    pub fn path(&self) -> Option<&PathBuf> {
        match self {
            MappingKind::File(path) | MappingKind::DeletedFile(path) => Some(path),
            _ => None,
        }
    }
}

/// The permissions column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// `r`
    pub read: bool,
    /// `w`
    pub write: bool,
    /// `x`
    pub execute: bool,
    /// MAP_SHARED (`s`) as opposed to MAP_PRIVATE (`p`).
    pub shared: bool,
}

impl std::fmt::Display for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |set: bool, letter: char| if set { letter } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            flag(self.read, 'r'),
            flag(self.write, 'w'),
            flag(self.execute, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// Address after the last byte.
    pub end: u64,
    /// The permissions column.
    pub permissions: Permissions,
    /// Offset into the file (or the page offset of anonymous memory).
    pub offset: u64,
    /// Major number of the device holding the file (0 for anonymous memory).
    pub device_major: u32,
    /// Minor number of that device.
    pub device_minor: u32,
    /// The file's inode number (0 for anonymous memory).
    pub inode: u64,
    /// What is mapped, from the path column.
    pub kind: MappingKind,
}

impl MapsEntry {
    /// Bytes of address space (0 for an entry whose end is before its start).
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// The memory figures of one smaps block, in bytes (the kernel reports kB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmapsFields {
    /// Resident set: bytes of the mapping in memory (`Rss`).
    pub rss: u64,
    /// Proportional set: resident bytes divided among the processes sharing them (`Pss`).
    pub pss: u64,
    /// Resident, clean, shared with other processes (`Shared_Clean`).
    pub shared_clean: u64,
    /// Resident, dirty, shared (`Shared_Dirty`).
    pub shared_dirty: u64,
    /// Resident, clean, this process's alone (`Private_Clean`).
    pub private_clean: u64,
    /// Resident, dirty, this process's alone (`Private_Dirty`).
    pub private_dirty: u64,
    /// Recently accessed (`Referenced`).
    pub referenced: u64,
    /// Anonymous memory, including copy-on-write copies of file pages (`Anonymous`).
    pub anonymous: u64,
    /// In transparent huge pages (`AnonHugePages`).
    pub anon_huge_pages: u64,
    /// Swapped out (`Swap`).
    pub swap: u64,
    /// Proportional share of the swap (`SwapPss`).
    pub swap_pss: u64,
    /// Locked in memory (`Locked`).
    pub locked: u64,
    /// The page size the kernel uses for the mapping (`KernelPageSize`).
    pub kernel_page_size: u64,
    /// The VmFlags line: two-letter codes separated by spaces (`rd wr mr mw me ac …`).
    pub vm_flags: String,
    /// Every other `Key: value` line, as printed (kB figures converted to bytes).
    pub other: Vec<(Arc<str>, u64)>,
}

impl SmapsFields {
    /// The figure the kernel names `name` (`Rss`, `Pss_Dirty`, `THPeligible`…): bytes for the
    /// `kB` lines, the number itself for the others; `None` if this mapping has no such line.
    /// `Size` is the mapping's own ([`MapsEntry::size`]), `VmFlags` is text ([`vm_flags`]).
    ///
    /// [`vm_flags`]: SmapsFields::vm_flags
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "Rss" => self.rss,
            "Pss" => self.pss,
            "Shared_Clean" => self.shared_clean,
            "Shared_Dirty" => self.shared_dirty,
            "Private_Clean" => self.private_clean,
            "Private_Dirty" => self.private_dirty,
            "Referenced" => self.referenced,
            "Anonymous" => self.anonymous,
            "AnonHugePages" => self.anon_huge_pages,
            "Swap" => self.swap,
            "SwapPss" => self.swap_pss,
            "Locked" => self.locked,
            "KernelPageSize" => self.kernel_page_size,
            _ => {
                return self
                    .other
                    .iter()
                    .find(|(field, _)| &**field == name)
                    .map(|(_, value)| *value);
            }
        })
    }

    /// Dirty bytes, shared and private (pmap's "Dirty").
    pub fn dirty(&self) -> u64 {
        self.shared_dirty.saturating_add(self.private_dirty)
    }

    /// The VmFlags codes, one by one.
    pub fn vm_flags(&self) -> impl Iterator<Item = &str> {
        self.vm_flags.split_ascii_whitespace()
    }
}

/// Adds the byte figures (not the page size, flags or other fields): totals over mappings.
/// Sums saturate: the figures come from text another process's kernel entry printed.
impl std::ops::AddAssign<&SmapsFields> for SmapsFields {
    fn add_assign(&mut self, other: &SmapsFields) {
        self.rss = self.rss.saturating_add(other.rss);
        self.pss = self.pss.saturating_add(other.pss);
        self.shared_clean = self.shared_clean.saturating_add(other.shared_clean);
        self.shared_dirty = self.shared_dirty.saturating_add(other.shared_dirty);
        self.private_clean = self.private_clean.saturating_add(other.private_clean);
        self.private_dirty = self.private_dirty.saturating_add(other.private_dirty);
        self.referenced = self.referenced.saturating_add(other.referenced);
        self.anonymous = self.anonymous.saturating_add(other.anonymous);
        self.anon_huge_pages = self.anon_huge_pages.saturating_add(other.anon_huge_pages);
        self.swap = self.swap.saturating_add(other.swap);
        self.swap_pss = self.swap_pss.saturating_add(other.swap_pss);
        self.locked = self.locked.saturating_add(other.locked);
    }
}

/// One block of /proc/PID/smaps: the maps line and its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsEntry {
    /// The maps line.
    pub map: MapsEntry,
    /// Its figures.
    pub fields: SmapsFields,
}

fn malformed(number: usize, line: &[u8], why: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "parse maps",
        format!(
            "line {number} ({:?}): {why}",
            String::from_utf8_lossy(&line[..line.len().min(120)])
        ),
    )
}

fn hex(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Splits off the next space-separated field, skipping leading spaces.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start = rest.iter().position(|&b| b != b' ')?;
    let tail = &rest[start..];
    let end = tail.iter().position(|&b| b == b' ').unwrap_or(tail.len());
    *rest = &tail[end..];
    Some(&tail[..end])
}

/// Parses one maps line (without its newline).
pub(crate) fn parse_maps_line(number: usize, line: &[u8]) -> Result<MapsEntry> {
    let bad = |why| malformed(number, line, why);
    let mut rest = line;
    let range = next_field(&mut rest).ok_or_else(|| bad("empty line"))?;
    let dash = range
        .iter()
        .position(|&b| b == b'-')
        .ok_or_else(|| bad("no address range"))?;
    let (start, end) = (hex(&range[..dash]), hex(&range[dash + 1..]));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(bad("bad address range"));
    };
    if end < start {
        return Err(bad("the range ends before it starts"));
    }
    let perms = next_field(&mut rest).ok_or_else(|| bad("no permissions"))?;
    if perms.len() != 4 {
        return Err(bad("bad permissions"));
    }
    let permissions = Permissions {
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        execute: perms[2] == b'x',
        shared: perms[3] == b's',
    };
    let offset = next_field(&mut rest)
        .and_then(hex)
        .ok_or_else(|| bad("bad offset"))?;
    let device = next_field(&mut rest).ok_or_else(|| bad("no device"))?;
    let colon = device
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| bad("bad device"))?;
    let major = hex(&device[..colon]).and_then(|v| u32::try_from(v).ok());
    let minor = hex(&device[colon + 1..]).and_then(|v| u32::try_from(v).ok());
    let (Some(device_major), Some(device_minor)) = (major, minor) else {
        return Err(bad("bad device"));
    };
    let inode = next_field(&mut rest)
        .and_then(decimal)
        .ok_or_else(|| bad("bad inode"))?;
    let path = rest.trim_ascii_start();
    Ok(MapsEntry {
        start,
        end,
        permissions,
        offset,
        device_major,
        device_minor,
        inode,
        kind: kind_of(path),
    })
}

fn kind_of(path: &[u8]) -> MappingKind {
    if path.is_empty() {
        return MappingKind::Anonymous;
    }
    if path.first() == Some(&b'[') && path.last() == Some(&b']') {
        let name = String::from_utf8_lossy(&path[1..path.len() - 1]).into_owned();
        return match name.as_str() {
            "heap" => MappingKind::Heap,
            "vdso" => MappingKind::Vdso,
            name if name == "stack" || name.starts_with("stack:") => MappingKind::Stack,
            _ => MappingKind::Named(name),
        };
    }
    let to_path = |bytes: &[u8]| PathBuf::from(OsStr::from_bytes(&unescape_newlines(bytes)));
    match path.strip_suffix(b" (deleted)") {
        Some(deleted) => MappingKind::DeletedFile(to_path(deleted)),
        None => MappingKind::File(to_path(path)),
    }
}

/// The kernel writes a newline in a mapped path as `\012` (and nothing else escaped, so a
/// name that holds those four characters itself cannot be told apart).
fn unescape_newlines(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const ESCAPED: &[u8] = b"\\012";
    if memchr::memmem::find(path, ESCAPED).is_none() {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut plain = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = memchr::memmem::find(rest, ESCAPED) {
        plain.extend_from_slice(&rest[..at]);
        plain.push(b'\n');
        rest = &rest[at + ESCAPED.len()..];
    }
    plain.extend_from_slice(rest);
    std::borrow::Cow::Owned(plain)
}

/// Parses the text of /proc/PID/maps.
pub fn parse_maps(text: &[u8]) -> Result<Vec<MapsEntry>> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| parse_maps_line(index + 1, line))
        .collect()
}

/// Parses the text of /proc/PID/smaps.
pub fn parse_smaps(text: &[u8]) -> Result<Vec<SmapsEntry>> {
    let mut parser = SmapsParser::default();
    for line in text.split(|&b| b == b'\n') {
        parser.line(line)?;
    }
    Ok(parser.entries)
}

/// Parses /proc/PID/smaps as it is read, a line at a time: a process with 10,000 mappings
/// has 8 MB of smaps, which need not be held at once.
pub(crate) fn read_smaps(reader: impl std::io::Read) -> std::io::Result<Result<Vec<SmapsEntry>>> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(64 << 10, reader);
    let mut parser = SmapsParser::default();
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(Ok(parser.entries));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Err(error) = parser.line(text) {
            return Ok(Err(error));
        }
    }
}

/// The state of an smaps parse: the entries so far, the line count, and the field names
/// seen (shared, so that 10,000 mappings do not allocate 10,000 copies of each).
#[derive(Default)]
struct SmapsParser {
    entries: Vec<SmapsEntry>,
    number: usize,
    names: HashMap<Vec<u8>, Arc<str>>,
}

impl SmapsParser {
    fn line(&mut self, line: &[u8]) -> Result<()> {
        self.number += 1;
        if line.is_empty() {
            return Ok(());
        }
        let number = self.number;
        let key_end = line.iter().position(|&b| b == b':');
        let is_field = key_end.is_some_and(|end| {
            end > 0
                && line[..end]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
        }) && line[0].is_ascii_uppercase();
        if !is_field {
            self.entries.push(SmapsEntry {
                map: parse_maps_line(number, line)?,
                fields: SmapsFields::default(),
            });
            return Ok(());
        }
        let Some(entry) = self.entries.last_mut() else {
            return Err(malformed(number, line, "a field before any mapping"));
        };
        let end = key_end.unwrap_or(0);
        let key = &line[..end];
        let mut value = &line[end + 1..];
        if key == b"VmFlags" {
            entry.fields.vm_flags = String::from_utf8_lossy(value.trim_ascii()).into_owned();
            return Ok(());
        }
        let number_field = next_field(&mut value).and_then(decimal);
        let unit = next_field(&mut value);
        let Some(amount) = number_field else {
            return Err(malformed(number, line, "a field without a number"));
        };
        let bytes = match unit {
            Some(b"kB") => amount.saturating_mul(1024),
            None => amount,
            Some(_) => return Err(malformed(number, line, "an unknown unit")),
        };
        if !set_field(&mut entry.fields, key, bytes) {
            let name = self
                .names
                .entry(key.to_vec())
                .or_insert_with(|| Arc::from(String::from_utf8_lossy(key)));
            entry.fields.other.push((Arc::clone(name), bytes));
        }
        Ok(())
    }
}

/// Stores a known field; false for a field kept in `other`.
fn set_field(fields: &mut SmapsFields, key: &[u8], bytes: u64) -> bool {
    let slot = match key {
        b"Rss" => &mut fields.rss,
        b"Pss" => &mut fields.pss,
        b"Shared_Clean" => &mut fields.shared_clean,
        b"Shared_Dirty" => &mut fields.shared_dirty,
        b"Private_Clean" => &mut fields.private_clean,
        b"Private_Dirty" => &mut fields.private_dirty,
        b"Referenced" => &mut fields.referenced,
        b"Anonymous" => &mut fields.anonymous,
        b"AnonHugePages" => &mut fields.anon_huge_pages,
        b"Swap" => &mut fields.swap,
        b"SwapPss" => &mut fields.swap_pss,
        b"Locked" => &mut fields.locked,
        b"KernelPageSize" => &mut fields.kernel_page_size,
        _ => return false,
    };
    *slot = bytes;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
5634c8bb1000-5634c8bb3000 r--p 00000000 fe:00 247282                     /usr/bin/head
Size:                  8 kB
Rss:                   8 kB
Pss:                   4 kB
Shared_Dirty:          0 kB
Private_Dirty:         4 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr mw me
7f00000000-7f00001000 rw-s 00001000 00:01 42 /memfd:ring (deleted)
7f00002000-7f00003000 rw-p 00000000 00:00 0 
7ffd0000-7ffd1000 rw-p 00000000 00:00 0                          [stack]
7ffe0000-7ffe2000 r-xp 00000000 00:00 0                          [vdso]
7fff0000-7fff1000 r--p 00000000 00:00 0                          [anon:my buffer]
8000000-8001000 r--p 00000000 08:01 99 /tmp/with space/and \\012newline
";

    #[test]
    fn every_kind_and_field_is_recognised() {
        let entries = parse_smaps(SAMPLE).unwrap();
        assert_eq!(entries.len(), 7);
        let head = &entries[0];
        assert_eq!(
            (head.map.start, head.map.end),
            (0x5634c8bb1000, 0x5634c8bb3000)
        );
        assert_eq!(head.map.kind, MappingKind::File("/usr/bin/head".into()));
        assert_eq!(
            (head.map.device_major, head.map.device_minor, head.map.inode),
            (0xfe, 0, 247282)
        );
        assert_eq!(head.fields.rss, 8192);
        assert_eq!(head.fields.pss, 4096);
        assert_eq!(head.fields.dirty(), 4096);
        assert_eq!(
            head.fields.vm_flags().collect::<Vec<_>>(),
            ["rd", "mr", "mw", "me"]
        );
        assert!(head.fields.other.contains(&("THPeligible".into(), 0)));
        let streamed = read_smaps(SAMPLE).unwrap().unwrap();
        assert_eq!(streamed, entries);
        assert_eq!(
            entries[1].map.kind,
            MappingKind::DeletedFile("/memfd:ring".into())
        );
        assert!(entries[1].map.permissions.shared);
        assert_eq!(entries[1].map.offset, 0x1000);
        assert_eq!(entries[2].map.kind, MappingKind::Anonymous);
        assert_eq!(entries[3].map.kind, MappingKind::Stack);
        assert_eq!(entries[4].map.kind, MappingKind::Vdso);
        assert_eq!(
            entries[5].map.kind,
            MappingKind::Named("anon:my buffer".into())
        );
        assert_eq!(
            entries[6].map.kind,
            MappingKind::File("/tmp/with space/and \nnewline".into())
        );
        assert_eq!(entries[6].map.permissions.to_string(), "r--p");
        assert_eq!(
            parse_maps(b"1000-2000 r--p 0 00:00 0 [heap]\n").unwrap()[0].kind,
            MappingKind::Heap
        );
    }

    #[test]
    fn malformed_lines_are_errors_that_name_the_line() {
        for bad in [
            &b"zzzz-2000 r--p 0 00:00 0"[..],
            b"2000-1000 r--p 0 00:00 0",
            b"1000-2000 r--p 0 0000 0",
            b"1000-2000 rw 0 00:00 0",
            b"1000-2000 r--p 0 00:00 x",
            b"1000-20000000000000000 r--p 0 00:00 0",
        ] {
            let error = parse_maps(bad).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Corrupt);
            assert!(error.to_string().contains("line 1"), "{error}");
        }
        assert!(parse_smaps(b"Rss: 4 kB\n").is_err());
        assert!(parse_smaps(b"1000-2000 r--p 0 00:00 0\nRss: four kB\n").is_err());
        assert!(parse_smaps(b"1000-2000 r--p 0 00:00 0\nRss: 4 MB\n").is_err());
    }

    #[test]
    fn impossible_figures_saturate_instead_of_overflowing() {
        let text = b"1000-2000 rw-p 0 00:00 0\nShared_Dirty: 18446744073709551615 kB\n\
                     Private_Dirty: 18014398509481984 kB\n";
        let entries = parse_smaps(text).unwrap();
        assert_eq!(entries[0].fields.dirty(), u64::MAX);
        let mut total = entries[0].fields.clone();
        total += &entries[0].fields;
        assert_eq!(total.shared_dirty, u64::MAX);
    }

    #[test]
    fn our_own_maps_parse() {
        let text = std::fs::read("/proc/self/smaps").unwrap();
        let entries = parse_smaps(&text).unwrap();
        assert!(entries.iter().any(|e| e.map.kind == MappingKind::Stack));
        assert!(entries.iter().all(|e| e.fields.kernel_page_size > 0));
    }
}
