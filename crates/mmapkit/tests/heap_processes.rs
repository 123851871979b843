//! The heap shared by processes: randomized allocation and freeing from two processes at once
//! with every invariant checked after, and processes killed mid-allocation.
//!
//! Runs without the libtest harness (fork in a threaded harness is hazardous).

mod common;

use std::time::Duration;

use common::processes::{self, Ended, fork, wait};
use mmapkit::alloc::{Heap, RelPtr};
use mmapkit::{Segment, SegmentOptions};

fn main() {
    let cases: &[(&str, fn())] = &[
        (
            "two_processes_allocate_and_free_at_random",
            two_processes_allocate_and_free_at_random,
        ),
        (
            "processes_killed_mid_allocation_leave_a_sound_heap",
            processes_killed_mid_allocation_leave_a_sound_heap,
        ),
    ];
    processes::run(cases);
}

fn segment() -> Segment {
    SegmentOptions::new("test/heap", 1 << 20)
        .unwrap()
        .create_memfd("heap")
        .unwrap()
}

/// A small deterministic generator, so that each process has its own sequence.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Allocates and frees at random; every live block holds its owner's signature, checked
/// before it is freed and at the end. Returns the blocks still live.
fn churn(
    heap: &Heap<'_>,
    seed: u64,
    rounds: usize,
) -> Result<Vec<(RelPtr<u8>, usize, u8)>, String> {
    let mut state = seed;
    let mut live: Vec<(RelPtr<u8>, usize, u8)> = Vec::new();
    for _ in 0..rounds {
        let roll = next(&mut state);
        if !roll.is_multiple_of(3) || live.is_empty() {
            let size = 1 + (roll >> 8) as usize % 2000;
            let fill = (roll >> 32) as u8;
            let block = match heap.alloc(size) {
                Ok(block) => block,
                Err(error) if error.kind() == mmapkit::ErrorKind::OutOfMemory => continue,
                Err(error) => return Err(error.to_string()),
            };
            heap.write_bytes(block, 0, &vec![fill; size])
                .map_err(|error| error.to_string())?;
            live.push((block, size, fill));
        } else {
            let (block, size, fill) = live.swap_remove((roll >> 16) as usize % live.len());
            verify(heap, block, size, fill)?;
            heap.free(block).map_err(|error| error.to_string())?;
        }
    }
    for &(block, size, fill) in &live {
        verify(heap, block, size, fill)?;
    }
    Ok(live)
}

fn verify(heap: &Heap<'_>, block: RelPtr<u8>, size: usize, fill: u8) -> Result<(), String> {
    let mut bytes = vec![0; size];
    heap.read_bytes(block, 0, &mut bytes)
        .map_err(|error| error.to_string())?;
    match bytes.iter().all(|&byte| byte == fill) {
        true => Ok(()),
        false => Err(format!("block {block:?} was overwritten")),
    }
}

fn two_processes_allocate_and_free_at_random() {
    let segment = segment();
    let heap = Heap::init(&segment, 0, segment.payload_len()).unwrap();
    let child = fork(|| match churn(&heap, 0x9e37_79b9_7f4a_7c15, 20_000) {
        Ok(_) => 0,
        Err(problem) => {
            eprintln!("child: {problem}");
            1
        }
    });
    let live = churn(&heap, 0xdead_beef_cafe_f00d, 20_000).unwrap();
    assert_eq!(wait(child), Ended::Exited(0));
    let stats = heap.check().unwrap();
    assert!(
        stats.allocated_blocks >= live.len() as u64,
        "the child's live blocks are counted too"
    );
    for (block, size, fill) in live {
        verify(&heap, block, size, fill).unwrap();
    }
    println!("({stats:?})");
}

fn processes_killed_mid_allocation_leave_a_sound_heap() {
    let segment = segment();
    let heap = Heap::init(&segment, 0, segment.payload_len()).unwrap();
    for round in 0..20u64 {
        let child = fork(|| {
            let _ = churn(&heap, round + 1, usize::MAX);
            0
        });
        std::thread::sleep(Duration::from_millis(10 + round % 7));
        // SAFETY: kills our own child.
        assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
        wait(child);
        // Whatever the child was doing, the heap is whole: the lock is taken over and the free
        // lists rebuilt if it died holding it.
        let probe = heap.alloc(64).unwrap();
        heap.free(probe).unwrap();
        heap.check().unwrap();
    }
}
