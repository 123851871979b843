//! The heap and its containers: allocation and merging, a randomized model check, corruption
//! as errors, and structures read through a second mapping at another address.

mod common;

use std::collections::BTreeMap;

use common::SegmentName;
use mmapkit::alloc::{Heap, MapHeader, RelPtr, ShmMap, ShmString, ShmVec, StringHeader, VecHeader};
use mmapkit::{ErrorKind, Segment, SegmentOptions};
use proptest::prelude::*;

fn segment(payload: usize) -> Segment {
    SegmentOptions::new("test/heap", payload)
        .unwrap()
        .create_memfd("heap")
        .unwrap()
}

#[test]
fn freed_neighbours_merge_and_space_is_reused() {
    let segment = segment(64 * 1024);
    let heap = Heap::init(&segment, 0, segment.payload_len()).unwrap();
    let empty = heap.check().unwrap();
    assert_eq!((empty.allocated_blocks, empty.free_blocks), (0, 1));
    let [a, b, c] = [100, 200, 300].map(|size| heap.alloc(size).unwrap());
    assert_eq!(a.offset() % 16, 0, "payloads are 16-byte aligned");
    assert_eq!(heap.check().unwrap().allocated_blocks, 3);
    heap.free(b).unwrap();
    assert_eq!(
        heap.free(b).unwrap_err().kind(),
        ErrorKind::InvalidInput,
        "double free"
    );
    heap.free(a).unwrap();
    let stats = heap.check().unwrap();
    assert_eq!(
        (stats.allocated_blocks, stats.free_blocks),
        (1, 2),
        "a and b merged"
    );
    let again = heap.alloc(250).unwrap();
    assert_eq!(
        again, a,
        "the merged block is reused first-fit at the start"
    );
    heap.free(again).unwrap();
    heap.free(c).unwrap();
    assert_eq!(
        heap.check().unwrap(),
        empty,
        "everything merged back into one block"
    );
    // Freed and merged away, `c` no longer starts a block: its "header" is free space.
    assert_eq!(heap.free(c).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(
        heap.alloc(1 << 20).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn running_out_is_out_of_memory() {
    let segment = segment(4096);
    let heap = Heap::init(&segment, 0, 4096).unwrap();
    let mut blocks = Vec::new();
    loop {
        match heap.alloc(200) {
            Ok(block) => blocks.push(block),
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::OutOfMemory);
                break;
            }
        }
    }
    assert!(blocks.len() >= 10);
    for block in blocks {
        heap.free(block).unwrap();
    }
    assert_eq!(heap.check().unwrap().free_blocks, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn random_allocations_keep_their_contents_and_the_heap_consistent(
        operations in prop::collection::vec((any::<bool>(), 1usize..600, any::<u8>()), 1..200)
    ) {
        let segment = segment(128 * 1024);
        let heap = Heap::init(&segment, 64, 120 * 1024).unwrap();
        let mut live: BTreeMap<u64, (RelPtr<u8>, usize, u8)> = BTreeMap::new();
        for (index, (allocate, size, fill)) in operations.into_iter().enumerate() {
            if allocate || live.is_empty() {
                let Ok(block) = heap.alloc(size) else { continue };
                heap.write_bytes(block, 0, &vec![fill; size]).unwrap();
                live.insert(index as u64, (block, size, fill));
            } else {
                let key = *live.keys().nth(index % live.len()).unwrap();
                let (block, _, _) = live.remove(&key).unwrap();
                heap.free(block).unwrap();
            }
        }
        for (block, size, fill) in live.values() {
            let mut bytes = vec![0; *size];
            heap.read_bytes(*block, 0, &mut bytes).unwrap();
            prop_assert!(bytes.iter().all(|byte| byte == fill), "a block's contents changed");
        }
        let stats = heap.check().unwrap();
        prop_assert_eq!(stats.allocated_blocks, live.len() as u64);
    }
}

#[test]
fn damaged_metadata_is_an_error() {
    let segment = segment(16 * 1024);
    let heap = Heap::init(&segment, 0, 16 * 1024).unwrap();
    let block = heap.alloc(64).unwrap();
    let neighbour = heap.alloc(64).unwrap();
    // A peer scribbles over the block's header.
    segment
        .write_pod(block.offset() as usize - 16, &0xdead_beef_u64)
        .unwrap();
    assert_eq!(heap.free(block).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(heap.check().unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(
        heap.free(RelPtr::<u8>::from_offset(1 << 40))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let _ = neighbour;
}

#[test]
fn a_dead_lock_holder_and_a_broken_chain_give_corrupt_not_a_hang() {
    let segment = segment(16 * 1024);
    let heap = Heap::init(&segment, 0, 16 * 1024).unwrap();
    // The lock's holder is a thread that does not exist, so the next locker repairs the heap;
    // the first block's header claims a size that wraps around the address space.
    segment
        .atomic::<std::sync::atomic::AtomicU32>(64 + 4)
        .unwrap()
        .store(0x3fff_fff0, std::sync::atomic::Ordering::SeqCst);
    segment
        .atomic::<std::sync::atomic::AtomicU64>(384)
        .unwrap()
        .store(u64::MAX - 47, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(heap.alloc(16).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn containers_round_trip() {
    let segment = segment(64 * 1024);
    let heap = Heap::init(&segment, 0, segment.payload_len()).unwrap();
    let mut numbers = ShmVec::<u64>::new(&heap).unwrap();
    for value in 0..1000 {
        numbers.push(&(value * 3)).unwrap();
    }
    assert_eq!(numbers.len().unwrap(), 1000);
    assert_eq!(numbers.get(999).unwrap(), Some(2997));
    assert_eq!(numbers.get(1000).unwrap(), None);
    numbers.set(0, &42).unwrap();
    assert_eq!(numbers.pop().unwrap(), Some(2997));
    assert_eq!(numbers.to_vec().unwrap()[..3], [42, 3, 6]);

    let mut text = ShmString::new(&heap, "shared ").unwrap();
    text.push_str("memory ✓").unwrap();
    assert_eq!(text.to_string().unwrap(), "shared memory ✓");

    let mut map = ShmMap::<u32, [u8; 8]>::new(&heap).unwrap();
    for key in 0..500u32 {
        assert_eq!(map.insert(&key, &[key as u8; 8]).unwrap(), None);
    }
    assert_eq!(map.insert(&7, &[0; 8]).unwrap(), Some([7; 8]));
    for key in (0..500u32).step_by(2) {
        assert!(map.remove(&key).unwrap().is_some());
    }
    assert_eq!(map.len().unwrap(), 250);
    assert_eq!(map.get(&7).unwrap(), Some([0; 8]));
    assert_eq!(map.get(&8).unwrap(), None);
    assert_eq!(map.entries().unwrap().len(), 250);
    numbers.free().unwrap();
    text.free().unwrap();
    map.free().unwrap();
    assert_eq!(
        heap.check().unwrap().allocated_blocks,
        0,
        "containers free everything"
    );
}

/// The root object of the shared structure in the next test.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Directory {
    names: RelPtr<MapHeader>,
    numbers: RelPtr<VecHeader>,
}

#[test]
fn a_structure_built_in_one_mapping_is_read_through_another_address() {
    let name = SegmentName::new("heap");
    let options = SegmentOptions::new("test/heap", 64 * 1024).unwrap();
    let builder = options.create(&name).unwrap();
    {
        let heap = Heap::init(&builder, 0, builder.payload_len()).unwrap();
        let mut names = ShmMap::<[u8; 16], RelPtr<StringHeader>>::new(&heap).unwrap();
        for (key, text) in [("first", "one"), ("second", "two two")] {
            let mut padded = [0u8; 16];
            padded[..key.len()].copy_from_slice(key.as_bytes());
            let string = ShmString::new(&heap, text).unwrap();
            names.insert(&padded, &string.pointer()).unwrap();
        }
        let mut numbers = ShmVec::<u64>::new(&heap).unwrap();
        numbers.extend_from_slice(&[1, 1, 2, 3, 5, 8]).unwrap();
        let directory = Directory {
            names: names.pointer(),
            numbers: numbers.pointer(),
        };
        heap.set_root(heap.alloc_value(&directory).unwrap())
            .unwrap();
    }

    let reader = options.open(&name).unwrap();
    assert_ne!(
        reader.mapping().as_ptr(),
        builder.mapping().as_ptr(),
        "mapped at another address"
    );
    let heap = Heap::open(&reader, 0).unwrap();
    let directory: Directory = heap.read_value(heap.root().unwrap()).unwrap();
    let names = ShmMap::<[u8; 16], RelPtr<StringHeader>>::open(&heap, directory.names).unwrap();
    let mut key = [0u8; 16];
    key[..6].copy_from_slice(b"second");
    let second = names.get(&key).unwrap().unwrap();
    assert_eq!(
        ShmString::open(&heap, second).unwrap().to_string().unwrap(),
        "two two"
    );
    let numbers = ShmVec::<u64>::open(&heap, directory.numbers).unwrap();
    assert_eq!(numbers.to_vec().unwrap(), [1, 1, 2, 3, 5, 8]);
    heap.check().unwrap();
}

#[test]
fn corrupt_container_headers_are_errors() {
    let segment = segment(16 * 1024);
    let heap = Heap::init(&segment, 0, segment.payload_len()).unwrap();
    let numbers = ShmVec::<u64>::new(&heap).unwrap();
    let pointer = numbers.pointer();
    // length beyond capacity, and a data pointer outside the heap
    heap.write_bytes(
        pointer,
        0,
        &[
            u64::MAX.to_ne_bytes(),
            4u64.to_ne_bytes(),
            (1u64 << 40).to_ne_bytes(),
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(
        ShmVec::<u64>::open(&heap, pointer).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let map = ShmMap::<u64, u64>::new(&heap).unwrap();
    heap.write_bytes(map.pointer(), 16, &3u64.to_ne_bytes())
        .unwrap(); // capacity 3: not a power of two
    assert_eq!(map.get(&1).unwrap_err().kind(), ErrorKind::Corrupt);
    // Found by fuzzing: a deleted bucket the header does not count.
    let mut counted = ShmMap::<u64, u64>::new(&heap).unwrap();
    counted.insert(&5, &50).unwrap();
    counted.remove(&5).unwrap();
    heap.write_bytes(counted.pointer(), 8, &0u64.to_ne_bytes())
        .unwrap(); // deleted := 0
    assert_eq!(
        counted.insert(&5, &51).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let text = ShmString::new(&heap, "ok").unwrap();
    let header: [u64; 3] = heap.read_value(text.pointer().cast()).unwrap();
    heap.write_bytes(RelPtr::<u8>::from_offset(header[2]), 0, &[0xff, 0xfe])
        .unwrap();
    assert_eq!(
        text.to_string().unwrap_err().kind(),
        ErrorKind::Corrupt,
        "not UTF-8"
    );
}
