//! A B+-tree on disk, built and queried through the pager's explicit API with a budget far
//! below its size: the buffer manager a database would put over mmap's interface.
//!
//! The tree is bulk-loaded from sorted keys: leaves first (each a page of sorted
//! `(key, value)` pairs), then inner levels bottom-up (each entry the first key under a child
//! and the child's page number), every page taken with `allocate_page` and written under its
//! exclusive pin. The root's page number goes in page 0. Lookups descend from the root with
//! `read_optimistic` (a binary search inside each page, no pins); a range scan pins the
//! leaves it walks. The region is dropped (written back) and opened again read-only before
//! the queries, so the answers come from the file. Every answer is checked against a plain
//! in-memory build of the same data.
//!
//! `cargo run --release --example btree [KEYS]` (default 2,000,000 keys: a 33 MiB file, a
//! 1 MiB budget).

use std::collections::BTreeMap;

use mmapkit::pager::{FileStore, OptimisticPage, PagedRegion, Pager};

const PAGE: usize = 4096;
/// Page header: u32 kind (0 leaf, 1 inner), u32 entry count.
const HEADER: usize = 8;
const ENTRY: usize = 16;
const FANOUT: usize = (PAGE - HEADER) / ENTRY;

type Failure = Box<dyn std::error::Error>;

/// The data: a key every 3, values derived from keys.
fn value_of(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
}

fn keys(count: usize) -> impl Iterator<Item = u64> {
    (0..count as u64).map(|i| i * 3 + 1)
}

/// Writes one page of entries; returns its page number.
fn write_page(region: &PagedRegion, inner: bool, entries: &[(u64, u64)]) -> Result<usize, Failure> {
    let mut page = region.allocate_page()?;
    page[..4].copy_from_slice(&u32::from(inner).to_le_bytes());
    page[4..8].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (slot, (key, value)) in entries.iter().enumerate() {
        let at = HEADER + slot * ENTRY;
        page[at..at + 8].copy_from_slice(&key.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
    }
    Ok(page.page())
}

/// Bulk-loads the sorted pairs; returns the root's page number.
fn build(region: &PagedRegion, pairs: impl Iterator<Item = (u64, u64)>) -> Result<usize, Failure> {
    // Page 0 holds the root's number, written last.
    let meta = region.allocate_page()?.page();
    let mut level = Vec::new();
    let mut leaf = Vec::with_capacity(FANOUT);
    for pair in pairs {
        leaf.push(pair);
        if leaf.len() == FANOUT {
            level.push((leaf[0].0, write_page(region, false, &leaf)? as u64));
            leaf.clear();
        }
    }
    if !leaf.is_empty() || level.is_empty() {
        let first = leaf.first().map_or(0, |pair| pair.0);
        level.push((first, write_page(region, false, &leaf)? as u64));
    }
    while level.len() > 1 {
        let mut parents = Vec::new();
        for children in level.chunks(FANOUT) {
            parents.push((children[0].0, write_page(region, true, children)? as u64));
        }
        level = parents;
    }
    let root = level[0].1 as usize;
    region.pin_exclusive(meta)?[..8].copy_from_slice(&(root as u64).to_le_bytes());
    Ok(root)
}

/// The slot of the last entry whose key is at most `key` (None if all are greater), and
/// whether it is an exact match; `None` too for a page that does not parse (torn: the
/// optimistic read then runs again).
fn search(view: &OptimisticPage<'_>, key: u64) -> Option<(bool, usize, u64, u64)> {
    let inner = view.read::<u32>(0)? == 1;
    let count = view.read::<u32>(4)? as usize;
    if count > FANOUT {
        return None;
    }
    let key_at = |slot: usize| view.read::<u64>(HEADER + slot * ENTRY).map(u64::from_le);
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = (low + high) / 2;
        if key_at(middle)? <= key {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let slot = low.checked_sub(1)?;
    let found = key_at(slot)?;
    let payload = u64::from_le(view.read::<u64>(HEADER + slot * ENTRY + 8)?);
    Some((inner, slot, found, payload))
}

/// The value of `key`, descending from the root with optimistic reads.
fn lookup(region: &PagedRegion, root: usize, key: u64) -> Result<Option<u64>, Failure> {
    let mut page = root;
    loop {
        match region.read_optimistic(page, |view| search(view, key))? {
            Some((true, _, _, child)) => page = child as usize,
            Some((false, _, found, value)) => return Ok((found == key).then_some(value)),
            None => return Ok(None),
        }
    }
}

/// The sum of the values of keys in `from..to`, walking leaves under shared pins.
fn range_sum(region: &PagedRegion, root: usize, from: u64, to: u64) -> Result<u64, Failure> {
    let mut leaf = root;
    while let Some((true, _, _, child)) = region.read_optimistic(leaf, |view| search(view, from))? {
        leaf = child as usize;
    }
    let mut sum = 0u64;
    loop {
        let page = region.pin_shared(leaf)?;
        let count = u32::from_le_bytes(page[4..8].try_into()?) as usize;
        for slot in 0..count {
            let at = HEADER + slot * ENTRY;
            let key = u64::from_le_bytes(page[at..at + 8].try_into()?);
            if key >= to {
                return Ok(sum);
            }
            if key >= from {
                sum = sum.wrapping_add(u64::from_le_bytes(page[at + 8..at + 16].try_into()?));
            }
        }
        // Leaves were written in order, one after another.
        leaf += 1;
        if leaf >= region.allocated_pages() {
            return Ok(sum);
        }
        drop(page);
        let kind = region.read_optimistic(leaf, |view| view.read::<u32>(0))?;
        if kind != Some(0) {
            return Ok(sum);
        }
    }
}

/// Builds the tree of `count` keys with `budget` bytes resident at most, queries it, and
/// checks every answer against an in-memory map. Returns the checksum of the answers.
fn run(count: usize, budget: usize) -> Result<u64, Failure> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("index.btree");
    let leaves = count.div_ceil(FANOUT);
    let pages = 1 + leaves + leaves.div_ceil(FANOUT - 1) * 2 + 2;
    std::fs::File::create(&path)?.set_len((pages * PAGE) as u64)?;
    let model: BTreeMap<u64, u64> = keys(count).map(|key| (key, value_of(key))).collect();

    let region = Pager::new(FileStore::open(&path, true)?)
        .budget(budget)
        .allocated(0)
        .build()?;
    let root = build(&region, keys(count).map(|key| (key, value_of(key))))?;
    let built = region.close()?;
    println!(
        "built {count} keys in {} pages ({} KiB file, budget {} KiB): {} evictions, {} KiB written",
        pages,
        pages * PAGE / 1024,
        budget / 1024,
        built.evictions,
        built.bytes_written / 1024
    );

    let region = Pager::new(FileStore::open(&path, false)?)
        .budget(budget)
        .build()?;
    assert_eq!(
        region.read_optimistic(0, |view| view.read::<u64>(0))?,
        Some(root as u64)
    );
    let mut checksum = 0u64;
    let mut state = 0x1234_5678_u64;
    let queries = 200_000.min(count * 2);
    for _ in 0..queries {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = state % (count as u64 * 3 + 3);
        let found = lookup(&region, root, key)?;
        assert_eq!(found, model.get(&key).copied(), "key {key}");
        checksum = checksum.wrapping_add(found.unwrap_or(0)).rotate_left(1);
    }
    let (from, to) = (count as u64, count as u64 * 2);
    let sum = range_sum(&region, root, from, to)?;
    let expected = model
        .range(from..to)
        .fold(0u64, |sum, (_, v)| sum.wrapping_add(*v));
    assert_eq!(sum, expected, "range {from}..{to}");
    let stats = region.stats();
    println!(
        "{queries} lookups and a range scan agree with the in-memory build (checksum {checksum:#x}); \
         {} pages read explicitly, {} faults, peak resident {} KiB",
        stats.explicit_fills,
        stats.faults,
        stats.peak_resident_bytes / 1024
    );
    assert_eq!(stats.faults, 0, "the explicit API never faults");
    assert!(stats.peak_resident_bytes <= budget as u64);
    Ok(checksum ^ sum)
}

fn main() -> Result<(), Failure> {
    let count = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 2_000_000,
    };
    run(count, 1 << 20)?;
    Ok(())
}

#[test]
fn the_tree_agrees_with_an_in_memory_build() {
    // 200,000 keys: 785 leaves, 3.1 MiB of pages through a 256 KiB budget.
    run(200_000, 256 << 10).unwrap();
    run(1, 8 * PAGE).unwrap();
}
