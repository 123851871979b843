//! Test helpers: what the kernel says about our mappings, read from /proc/self.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fs;

pub mod processes;

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

/// The /proc/self/maps line of the area that contains `address`.
pub fn maps_line(address: *const u8) -> MapsLine {
    let address = address as usize;
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&address) {
            let perms = fields.next().unwrap().to_owned();
            let offset = u64::from_str_radix(fields.next().unwrap(), 16).unwrap();
            let _device = fields.next();
            let _inode = fields.next();
            let path = fields.collect::<Vec<_>>().join(" ");
            return MapsLine {
                start,
                end,
                perms,
                offset,
                path,
            };
        }
    }
    panic!("no mapping contains {address:#x}");
}

/// The smaps block of the area that contains `address`.
pub fn smaps_block(address: *const u8) -> String {
    let address = address as usize;
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            if let Some(block) = current.take() {
                return block;
            }
            if (start..end).contains(&address) {
                current = Some(String::new());
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    current.unwrap_or_else(|| panic!("no smaps block contains {address:#x}"))
}

/// A `Field:   N kB` value of the smaps block containing `address`, in kB.
pub fn smaps_kb(address: *const u8, field: &str) -> u64 {
    let block = smaps_block(address);
    let line = block
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in smaps"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The two-letter VmFlags of the area containing `address`.
pub fn vm_flags(address: *const u8) -> Vec<String> {
    let block = smaps_block(address);
    let line = block
        .lines()
        .find(|line| line.starts_with("VmFlags:"))
        .unwrap();
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// A temporary file holding `contents`.
pub fn file_with(contents: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents).unwrap();
    file.flush().unwrap();
    file
}

/// `len` bytes of a recognisable pattern: byte i is (i * 7 + i / 4096) mod 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 4096) % 251) as u8).collect()
}

/// A unique segment name for this test process, unlinked when dropped.
pub struct SegmentName(pub String);

impl SegmentName {
    pub fn new(what: &str) -> SegmentName {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        SegmentName(format!("mmapkit-test-{}-{what}-{n}", std::process::id()))
    }
}

impl Drop for SegmentName {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

impl std::ops::Deref for SegmentName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Runs `work` on its own thread and returns its result, failing the test if it has not
/// finished within `limit` (a call that blocks for ever is left behind on its thread, which
/// the test process ends with it).
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}: it blocks"))
}

/// Makes a FIFO at `path`.
pub fn make_fifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        0o666.into(),
        0,
    )
    .unwrap();
}
