//! A budgeted scan reads every page of the store once: pages read ahead of the scanner are
//! not evicted before it reaches them (the pager sees faults, not hits, so CLOCK alone cannot
//! tell them from pages already read).

use mmapkit::pager::{FileStore, Pager};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_budgeted_sequential_scan_reads_each_page_once() {
    const LEN: usize = 64 << 20;
    let data = pattern(LEN);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &data).unwrap();
    for (page_size, budget) in [(4096, 8 << 20), (4096, 16 << 20), (64 << 10, 16 << 20)] {
        for _ in 0..3 {
            let region = Pager::new(FileStore::open(file.path(), false).unwrap())
                .page_size(page_size)
                .budget(budget)
                .build()
                .unwrap();
            // Through the guarded copies, 1 MiB at a time, as `mmapkit page` scans: a copy is
            // memcpy-fast even in a debug build, as fast as a real reader.
            let mut chunk = vec![0u8; 1 << 20];
            for offset in (0..LEN).step_by(chunk.len()) {
                region.read_at(offset, &mut chunk).unwrap();
                assert!(chunk == data[offset..offset + chunk.len()], "at {offset}");
            }
            let stats = region.stats();
            assert_eq!(
                stats.bytes_read, LEN as u64,
                "{page_size}-byte pages, budget {budget}: {stats}"
            );
            assert!(stats.peak_resident_bytes <= budget as u64 + page_size as u64);
        }
    }
}
