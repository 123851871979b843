//! The pager with real userfaultfd faults: contents, dirty tracking, budget, errors.

use mmapkit::pager::{MemoryStore, Pager, Store};
use std::sync::Arc;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn reads_come_from_the_store_and_writes_go_back_on_flush() {
    let store = Arc::new(MemoryStore::new(pattern(1 << 20)));
    let region = Pager::from_arc(store.clone())
        .page_size(16384)
        .build()
        .unwrap();
    let mut buf = vec![0u8; 100];
    region.read_at(70_000, &mut buf).unwrap();
    assert_eq!(buf, pattern(1 << 20)[70_000..70_100]);
    region.write_at(5, b"hello").unwrap();
    assert_eq!(&store.snapshot()[5..10], &pattern(20)[5..10]);
    region.flush().unwrap();
    assert_eq!(&store.snapshot()[5..10], b"hello");
    let stats = region.stats();
    eprintln!("{stats}");
}
