//! A read-only store over a seekable zstd archive: independently compressed frames followed
//! by a seek table, as the zstd project's seekable format specifies
//! (contrib/seekable_format), so archives written by other tools that follow it work too.
//!
//! A page read finds the frames it overlaps by binary search over the table, decompresses
//! them (keeping the last few decompressed frames, since consecutive pages usually share one)
//! and copies the bytes out. Frames whose table entry carries a checksum are verified (the
//! low 32 bits of XXH64). Everything in the table is validated before use: sizes must add up
//! to the file, frames are at most 1 GiB decompressed (the format's own limit), and a frame
//! that decompresses to another size than its entry says is an error, never a short page.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Store;

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const FOOTER: usize = 9;
const CHECKSUM_FLAG: u8 = 0x80;
const RESERVED_BITS: u8 = 0x7c;
/// The format's limits: frames per archive and bytes per decompressed frame.
const MAX_FRAMES: u32 = 0x0800_0000;
const MAX_FRAME_BYTES: u32 = 0x4000_0000;
/// Decompressed frames kept for the next reads: at most this many, and this many bytes —
/// except the frame read last, which is always kept (a page read from a frame larger than
/// the cache would otherwise decompress the whole frame each time). This memory is the
/// store's own, outside the pager's budget.
const CACHED_FRAMES: usize = 8;
const CACHED_BYTES: usize = 32 << 20;

/// One frame of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    compressed_offset: u64,
    compressed_size: u32,
    offset: u64,
    size: u32,
    checksum: Option<u32>,
}

/// The seek table of an archive, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekTable {
    frames: Vec<Frame>,
    len: u64,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

impl SeekTable {
    /// Reads and validates the seek table of an archive of `file_len` bytes through
    /// `read_at` (which fills its buffer from the given offset).
    pub fn read(
        file_len: u64,
        read_at: impl Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<SeekTable> {
        if file_len < (FOOTER + 8) as u64 {
            return Err(invalid("too short for a seekable zstd archive"));
        }
        let mut footer = [0u8; FOOTER];
        read_at(file_len - FOOTER as u64, &mut footer)?;
        if u32_at(&footer, 5) != SEEKABLE_MAGIC {
            return Err(invalid(
                "not a seekable zstd archive: no seek table at the end (write one with \
                 SeekableWriter, or a tool for zstd's seekable format)",
            ));
        }
        let frames = u32_at(&footer, 0);
        let descriptor = footer[4];
        if descriptor & RESERVED_BITS != 0 {
            return Err(invalid(
                "the seek table uses a newer format (reserved bits set)",
            ));
        }
        if frames > MAX_FRAMES {
            return Err(invalid(format!("the seek table claims {frames} frames")));
        }
        let entry = if descriptor & CHECKSUM_FLAG != 0 {
            12
        } else {
            8
        };
        let table_bytes = u64::from(frames) * entry + FOOTER as u64;
        let frame_bytes = table_bytes + 8;
        if frame_bytes > file_len {
            return Err(invalid("the seek table is larger than the archive"));
        }
        let mut table = vec![0u8; frame_bytes as usize];
        read_at(file_len - frame_bytes, &mut table)?;
        if u32_at(&table, 0) != SKIPPABLE_MAGIC || u64::from(u32_at(&table, 4)) != table_bytes {
            return Err(invalid("the seek table's frame header is wrong"));
        }
        let data_len = file_len - frame_bytes;
        let mut parsed = Vec::with_capacity(frames as usize);
        let (mut compressed_offset, mut offset) = (0u64, 0u64);
        for raw in table[8..table.len() - FOOTER].chunks_exact(entry as usize) {
            let compressed_size = u32_at(raw, 0);
            let size = u32_at(raw, 4);
            if size > MAX_FRAME_BYTES {
                return Err(invalid(format!(
                    "a frame of {size} bytes exceeds the format's 1 GiB"
                )));
            }
            if size > 0 && compressed_size == 0 {
                return Err(invalid("a frame claims data but has no compressed bytes"));
            }
            parsed.push(Frame {
                compressed_offset,
                compressed_size,
                offset,
                size,
                checksum: (entry == 12).then(|| u32_at(raw, 8)),
            });
            compressed_offset += u64::from(compressed_size);
            offset += u64::from(size);
        }
        if compressed_offset != data_len {
            return Err(invalid(format!(
                "the seek table's frames cover {compressed_offset} bytes, the archive has \
                 {data_len} before the table"
            )));
        }
        parsed.retain(|frame| frame.size > 0);
        Ok(SeekTable {
            frames: parsed,
            len: offset,
        })
    }

    /// The decompressed length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the archive holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frames holding `offset..offset + len`, in order.
    fn covering(&self, offset: u64, len: usize) -> &[Frame] {
        let end = offset + len as u64;
        let first = self
            .frames
            .partition_point(|frame| frame.offset + u64::from(frame.size) <= offset);
        let last = self.frames.partition_point(|frame| frame.offset < end);
        &self.frames[first..last.max(first)]
    }
}

/// A seekable zstd archive as a read-only [`Store`].
#[derive(Debug)]
pub struct CompressedStore {
    file: File,
    path: Option<PathBuf>,
    table: SeekTable,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl CompressedStore {
    /// Opens the archive at `path`.
    pub fn open(path: impl AsRef<Path>) -> crate::Result<CompressedStore> {
        let path = path.as_ref();
        let mut store = CompressedStore::from_file(super::open_regular_file(path, false)?)
            .map_err(|error| error.with_path(path))?;
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    /// Uses an open archive; `Corrupt` when it is not a valid seekable zstd archive.
    pub fn from_file(file: File) -> crate::Result<CompressedStore> {
        let opened = |error: io::Error| crate::Error::io("open archive", &error);
        let len = file.metadata().map_err(opened)?.len();
        let table =
            SeekTable::read(len, |offset, buf| file.read_exact_at(buf, offset)).map_err(opened)?;
        Ok(CompressedStore {
            file,
            path: None,
            table,
            cache: Mutex::new(VecDeque::with_capacity(CACHED_FRAMES)),
        })
    }

    /// Whether `file` ends with a seekable zstd seek table.
    pub fn is_seekable_archive(file: &File) -> bool {
        let Ok(len) = file.metadata().map(|meta| meta.len()) else {
            return false;
        };
        let mut footer = [0u8; FOOTER];
        len >= FOOTER as u64
            && file.read_exact_at(&mut footer, len - FOOTER as u64).is_ok()
            && u32_at(&footer, 5) == SEEKABLE_MAGIC
    }

    fn frame(&self, frame: &Frame) -> io::Result<Arc<Vec<u8>>> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, bytes)) = cache.iter().find(|(offset, _)| *offset == frame.offset) {
                return Ok(Arc::clone(bytes));
            }
        }
        let mut compressed = vec![0u8; frame.compressed_size as usize];
        self.file
            .read_exact_at(&mut compressed, frame.compressed_offset)?;
        let bytes = zstd::bulk::decompress(&compressed, frame.size as usize)
            .map_err(|error| invalid(format!("frame at {}: {error}", frame.offset)))?;
        if bytes.len() != frame.size as usize {
            return Err(invalid(format!(
                "the frame at {} decompressed to {} bytes, its table entry says {}",
                frame.offset,
                bytes.len(),
                frame.size
            )));
        }
        if let Some(expected) = frame.checksum
            && xxhash_rust::xxh64::xxh64(&bytes, 0) as u32 != expected
        {
            return Err(invalid(format!(
                "the frame at {} fails its checksum",
                frame.offset
            )));
        }
        let bytes = Arc::new(bytes);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.push_back((frame.offset, Arc::clone(&bytes)));
        let mut cached_bytes: usize = cache.iter().map(|(_, frame)| frame.len()).sum();
        while cache.len() > 1 && (cache.len() > CACHED_FRAMES || cached_bytes > CACHED_BYTES) {
            if let Some((_, evicted)) = cache.pop_front() {
                cached_bytes -= evicted.len();
            }
        }
        Ok(bytes)
    }
}

impl Store for CompressedStore {
    fn len(&self) -> u64 {
        self.table.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.table.len())
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the archive",
            ));
        }
        for frame in self.table.covering(offset, buf.len()) {
            let bytes = self.frame(frame)?;
            let start = offset.max(frame.offset);
            let end = (offset + buf.len() as u64).min(frame.offset + u64::from(frame.size));
            let from = (start - frame.offset) as usize..(end - frame.offset) as usize;
            let to = (start - offset) as usize..(end - offset) as usize;
            buf[to].copy_from_slice(&bytes[from]);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(path) => format!("{} (seekable zstd)", path.display()),
            None => String::from("seekable zstd archive"),
        }
    }
}

/// Writes a seekable zstd archive: everything written is cut into frames of `frame_size`
/// bytes, each compressed on its own, and [`finish`](Self::finish) appends the seek table
/// (with checksums).
#[derive(Debug)]
pub struct SeekableWriter<W: Write> {
    inner: W,
    level: i32,
    frame_size: usize,
    pending: Vec<u8>,
    entries: Vec<(u32, u32, u32)>,
}

impl<W: Write> SeekableWriter<W> {
    /// A writer of frames of `frame_size` bytes (1 byte to 1 GiB; 256 KiB to 1 MiB suits a
    /// pager) at zstd `level`.
    pub fn new(inner: W, frame_size: usize, level: i32) -> crate::Result<SeekableWriter<W>> {
        if frame_size == 0 || frame_size > MAX_FRAME_BYTES as usize {
            return Err(crate::Error::new(
                crate::ErrorKind::InvalidInput,
                "seekable writer",
                format!("a frame holds 1 byte to 1 GiB, not {frame_size}"),
            ));
        }
        Ok(SeekableWriter {
            inner,
            level,
            frame_size,
            pending: Vec::with_capacity(frame_size),
            entries: Vec::new(),
        })
    }

    fn emit_frame(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compressed = zstd::bulk::compress(&self.pending, self.level)?;
        self.inner.write_all(&compressed)?;
        let checksum = xxhash_rust::xxh64::xxh64(&self.pending, 0) as u32;
        let sizes = (
            u32::try_from(compressed.len()),
            u32::try_from(self.pending.len()),
        );
        let (Ok(compressed_size), Ok(size)) = sizes else {
            return Err(invalid(
                "a frame does not fit the seek table's 32-bit sizes",
            ));
        };
        self.entries.push((compressed_size, size, checksum));
        self.pending.clear();
        Ok(())
    }

    /// Compresses what is left, writes the seek table, and returns the inner writer.
    pub fn finish(self) -> crate::Result<W> {
        self.finish_io()
            .map_err(|error| crate::Error::io("finish archive", &error))
    }

    fn finish_io(mut self) -> io::Result<W> {
        self.emit_frame()?;
        let frames = u32::try_from(self.entries.len())
            .ok()
            .filter(|&frames| frames <= MAX_FRAMES)
            .ok_or_else(|| invalid("too many frames for a seek table"))?;
        let table_bytes = u32::try_from(self.entries.len() * 12 + FOOTER)
            .map_err(|_| invalid("the seek table does not fit its 32-bit size"))?;
        let mut table = Vec::with_capacity(table_bytes as usize + 8);
        table.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        table.extend_from_slice(&table_bytes.to_le_bytes());
        for (compressed_size, size, checksum) in &self.entries {
            table.extend_from_slice(&compressed_size.to_le_bytes());
            table.extend_from_slice(&size.to_le_bytes());
            table.extend_from_slice(&checksum.to_le_bytes());
        }
        table.extend_from_slice(&frames.to_le_bytes());
        table.push(CHECKSUM_FLAG);
        table.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        self.inner.write_all(&table)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SeekableWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(self.frame_size - self.pending.len());
        self.pending.extend_from_slice(&data[..take]);
        if self.pending.len() == self.frame_size {
            self.emit_frame()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(data: &[u8], frame_size: usize) -> Vec<u8> {
        let mut writer = SeekableWriter::new(Vec::new(), frame_size, 3).unwrap();
        writer.write_all(data).unwrap();
        writer.finish().unwrap()
    }

    fn table_of(bytes: &[u8]) -> io::Result<SeekTable> {
        SeekTable::read(bytes.len() as u64, |offset, buf| {
            let start = offset as usize;
            buf.copy_from_slice(&bytes[start..start + buf.len()]);
            Ok(())
        })
    }

    #[test]
    fn frames_cover_the_data_and_each_is_a_standard_zstd_frame() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect();
        let bytes = archive(&data, 65_536);
        let table = table_of(&bytes).unwrap();
        assert_eq!(table.len(), data.len() as u64);
        assert_eq!(table.frames.len(), data.len().div_ceil(65_536));
        // The whole archive is also a valid zstd stream: frames plus a skippable frame.
        assert_eq!(zstd::stream::decode_all(&bytes[..]).unwrap(), data);
        let covering = table.covering(65_530, 10);
        assert_eq!(covering.len(), 2);
        assert_eq!(covering[1].offset, 65_536);
    }

    #[test]
    fn damaged_tables_are_refused() {
        let bytes = archive(b"some bytes to compress, twice: some bytes to compress", 16);
        let mut truncated_magic = bytes.clone();
        *truncated_magic.last_mut().unwrap() ^= 1;
        assert!(table_of(&truncated_magic).is_err());
        let mut reserved = bytes.clone();
        let at = reserved.len() - 5;
        reserved[at] |= 0x04;
        assert!(table_of(&reserved).is_err());
        let mut too_many = bytes.clone();
        let at = too_many.len() - 9;
        too_many[at] = 0xff;
        assert!(table_of(&too_many).is_err());
        let mut sizes = bytes.clone();
        let first_entry = sizes.len() - 9 - 12 * 4;
        sizes[first_entry] = sizes[first_entry].wrapping_add(1);
        assert!(
            table_of(&sizes).is_err(),
            "compressed sizes no longer add up"
        );
        assert!(table_of(&bytes[..5]).is_err());
        // A table that claims gigabytes of frames with no compressed bytes behind them.
        let mut claims = Vec::new();
        claims.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        claims.extend_from_slice(&(2 * 8 + 9u32).to_le_bytes());
        for _ in 0..2 {
            claims.extend_from_slice(&0u32.to_le_bytes());
            claims.extend_from_slice(&MAX_FRAME_BYTES.to_le_bytes());
        }
        claims.extend_from_slice(&2u32.to_le_bytes());
        claims.push(0);
        claims.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        assert!(table_of(&claims).is_err());
        assert!(table_of(&[]).is_err());
    }

    #[test]
    fn the_frame_cache_stays_within_its_bytes_but_keeps_the_last_frame() {
        let cached = |store: &CompressedStore| -> Vec<usize> {
            let cache = store.cache.lock().unwrap();
            cache.iter().map(|(_, frame)| frame.len()).collect()
        };
        let frame = 12 << 20;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&archive(&vec![0u8; 4 * frame], frame))
            .unwrap();
        let store = CompressedStore::from_file(file).unwrap();
        let mut byte = [0u8; 1];
        for index in 0..4 {
            store.read_at((index * frame) as u64, &mut byte).unwrap();
        }
        assert_eq!(cached(&store), vec![frame, frame], "32 MiB hold two");

        let big = 40 << 20;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&archive(&vec![0u8; 2 * big], big)).unwrap();
        let store = CompressedStore::from_file(file).unwrap();
        for index in 0..2 {
            store.read_at((index * big) as u64, &mut byte).unwrap();
        }
        assert_eq!(cached(&store), vec![big], "only the frame read last");
    }
}
