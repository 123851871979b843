//! `guard`: the cost of the fault guard. A guarded `read_at` into a buffer against a plain
//! `copy_from_slice` out of the same mapping, over the whole page-cache-hot file, in 1 MiB and
//! 4 KiB chunks. The mapping is populated first, so both copy and neither faults. A third
//! contender reads under a `SigbusUnblocked` promise, which skips the signal-mask system call
//! each guarded copy of a file mapping otherwise makes (`guard-promised-*` JSON lines).

use std::hint::black_box;

use mmapkit::{Advice, MapOptions};

use crate::files::BenchFile;
use crate::harness::{self, Contender, Unit};

pub fn run(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    let map = MapOptions::new().map_file(&file.file)?;
    map.advise(.., Advice::PopulateRead)?;
    // SAFETY: the benchmark owns the file; nothing writes or truncates it during the run.
    let slice = unsafe { map.as_slice_unchecked() };
    for (name, chunk) in [("guard-1m", 1 << 20), ("guard-4k", 4096)] {
        let chunks = file.size / chunk;
        let mut buffer = vec![0u8; chunk];
        let mut promised = vec![0u8; chunk];
        let mut plain = vec![0u8; chunk];
        let mut contenders = [
            Contender::new("mmapkit read_at (guarded)", || {
                1e3 * harness::seconds(|| {
                    for index in 0..chunks {
                        map.read_at(index * chunk, &mut buffer).expect("read_at");
                        black_box(&mut buffer);
                    }
                })
            }),
            Contender::new("read_at, SigbusUnblocked promise", || {
                // SAFETY: the benchmark never blocks SIGBUS.
                let _promise = unsafe { mmapkit::fault::SigbusUnblocked::promise() };
                1e3 * harness::seconds(|| {
                    for index in 0..chunks {
                        map.read_at(index * chunk, &mut promised).expect("read_at");
                        black_box(&mut promised);
                    }
                })
            }),
            Contender::new("copy_from_slice (unguarded)", || {
                1e3 * harness::seconds(|| {
                    for index in 0..chunks {
                        plain.copy_from_slice(&slice[index * chunk..(index + 1) * chunk]);
                        black_box(&mut plain);
                    }
                })
            }),
        ];
        let samples = harness::alternate(rounds, &mut contenders);
        let title = format!(
            "{name}: copy {} MiB out of a mapping in {chunk}-byte chunks, per pass",
            file.size >> 20
        );
        harness::print_table(&title, Unit::Milliseconds, &samples);
        harness::print_json(name, &samples[0], &samples[2], Unit::Milliseconds);
        let promised_name = name.replace("guard-", "guard-promised-");
        harness::print_json(&promised_name, &samples[1], &samples[2], Unit::Milliseconds);
    }
    Ok(())
}
