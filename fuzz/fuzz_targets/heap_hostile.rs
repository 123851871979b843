//! A heap and its containers whose bytes a hostile peer rewrites between operations: every
//! operation must end in a value or an error, never a crash or an access outside the heap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmapkit::alloc::{Heap, RelPtr, ShmMap, ShmVec};
use mmapkit::SegmentOptions;

fuzz_target!(|data: &[u8]| {
    let segment = SegmentOptions::new("fuzz/heap", 16 * 1024).unwrap().create_memfd("heap").unwrap();
    let Ok(heap) = Heap::init(&segment, 0, 16 * 1024) else { return };
    let mut blocks: Vec<RelPtr<u8>> = Vec::new();
    let Ok(mut vector) = ShmVec::<u32>::new(&heap) else { return };
    let Ok(mut map) = ShmMap::<u16, u32>::new(&heap) else { return };
    for op in data.chunks(5) {
        let arg = |index: usize| op.get(index).copied().unwrap_or(0);
        let small = u16::from_le_bytes([arg(1), arg(2)]);
        match arg(0) % 9 {
            0 => {
                if let Ok(block) = heap.alloc(usize::from(small % 2048)) {
                    blocks.push(block);
                }
            }
            1 if !blocks.is_empty() => {
                let block = blocks.swap_remove(usize::from(small) % blocks.len());
                let _ = heap.free(block);
            }
            2 => drop(heap.check()),
            3 => drop(vector.push(&u32::from(small))),
            4 => drop(vector.to_vec()),
            5 => drop(map.insert(&small, &u32::from(arg(3)))),
            6 => drop(map.get(&small)),
            7 => drop(map.remove(&small)),
            _ => {
                let offset = usize::from(small) % segment.payload_len();
                let _ = segment.write_at(offset, &[arg(3), arg(4), arg(1), arg(2)]);
            }
        }
    }
});
