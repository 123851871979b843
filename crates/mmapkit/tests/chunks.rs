//! Safe scans in chunks: every byte in order at every chunk size, exclusive memory lent in
//! place, a truncation mid-scan reported where it happened, and bad arguments refused.

mod common;

use std::ops::ControlFlow;

use common::{file_with, pattern};
use mmapkit::fault::DEFAULT_CHUNK;
use mmapkit::{ErrorKind, MapOptions};

fn collect(map: &mmapkit::Mapping, range: std::ops::Range<usize>, chunk: usize) -> Vec<u8> {
    let mut chunks = map.chunks(range.clone(), chunk).unwrap();
    let mut bytes = Vec::new();
    let mut expected_offset = range.start;
    while let Some(next) = chunks.next_chunk() {
        let next = next.unwrap();
        assert_eq!(next.offset, expected_offset, "chunks come in order");
        assert!(!next.bytes.is_empty() && next.bytes.len() <= chunk);
        expected_offset += next.bytes.len();
        bytes.extend_from_slice(next.bytes);
    }
    assert!(chunks.next_chunk().is_none(), "the end stays the end");
    bytes
}

#[test]
fn every_byte_arrives_in_order_at_every_chunk_size() {
    let contents = pattern(3 * 4096 + 777);
    let file = file_with(&contents);
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    for chunk in [1, 7, 64, 4096, 5000, 1 << 20] {
        for range in [
            0..contents.len(),
            13..contents.len() - 5,
            4096..8192,
            100..100,
        ] {
            let bytes = collect(&map, range.clone(), chunk);
            assert!(
                bytes == contents[range.clone()],
                "chunk {chunk}, range {range:?}"
            );
        }
    }
}

#[test]
fn exclusive_memory_is_lent_in_place() {
    let mut map = MapOptions::new().len(1 << 20).map_anonymous().unwrap();
    map.as_mut_slice().unwrap().fill(3);
    // Read-only from now on, and exclusive: the chunks are the mapping's own bytes.
    map.protect(.., mmapkit::Protection::READ).unwrap();
    let mut chunks = map.chunks(4096.., 8192).unwrap();
    let first = chunks.next_chunk().unwrap().unwrap();
    assert_eq!(first.bytes.as_ptr(), map.as_ptr().wrapping_add(4096));
}

#[test]
fn a_truncation_mid_scan_is_an_error_where_it_happened() {
    let file = file_with(&pattern(8 * 4096));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    let mut chunks = map.chunks(.., 3000).unwrap();
    let first = chunks.next_chunk().unwrap().unwrap();
    assert_eq!(first.bytes.len(), 3000);
    file.as_file().set_len(2 * 4096 + 10).unwrap();
    let mut read = 3000;
    let error = loop {
        match chunks.next_chunk().unwrap() {
            Ok(chunk) => read += chunk.bytes.len(),
            Err(error) => break error,
        }
    };
    assert_eq!(error.kind(), ErrorKind::Truncated);
    assert_eq!(error.offset(), Some(3 * 4096), "the first missing page");
    // The page the file still touches reads to its end (zeros past the file's new end).
    assert_eq!(read, 12000, "the chunks before the missing page arrived");
    assert!(chunks.next_chunk().is_none(), "an error ends the scan");
}

#[test]
fn for_each_chunk_visits_everything_or_stops_with_the_callers_value() {
    let contents = pattern(3 * DEFAULT_CHUNK + 123);
    let file = file_with(&contents);
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    let mut sum = 0u64;
    let mut calls = 0;
    let stopped = map
        .for_each_chunk(.., |chunk| {
            calls += 1;
            sum += chunk.bytes.iter().map(|&byte| u64::from(byte)).sum::<u64>();
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    assert_eq!(stopped, None);
    assert_eq!(calls, 4);
    assert_eq!(
        sum,
        contents.iter().map(|&byte| u64::from(byte)).sum::<u64>()
    );
    let found = map
        .for_each_chunk(.., |chunk| match chunk.offset >= DEFAULT_CHUNK {
            true => ControlFlow::Break(chunk.offset),
            false => ControlFlow::Continue(()),
        })
        .unwrap();
    assert_eq!(found, Some(DEFAULT_CHUNK));
}

#[test]
fn bad_chunk_arguments_are_refused() {
    let file = file_with(&pattern(4096));
    let map = MapOptions::new().map_file(file.as_file()).unwrap();
    assert_eq!(
        map.chunks(.., 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        map.chunks(0..5000, 64).unwrap_err().kind(),
        ErrorKind::OutOfBounds
    );
    let mut locked = MapOptions::new().map_file(file.as_file()).unwrap();
    locked.protect(.., mmapkit::Protection::empty()).unwrap();
    assert_eq!(
        locked.chunks(.., 64).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
}
