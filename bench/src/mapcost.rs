//! `mapcost`: what making and dropping a mapping costs — mmapkit against memmap2, for a 4 KiB
//! window and the whole file, and for anonymous memory of the same sizes. Nothing is touched,
//! so this is the system calls plus each library's own checks.

use mmapkit::MapOptions;

use crate::files::BenchFile;
use crate::harness::{self, Contender, Unit};

pub fn run(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    let size = file.size;
    let file_4k = (
        "mapcost-file-4k",
        "file, 4 KiB window",
        20_000,
        Box::new(|| {
            drop(
                MapOptions::new()
                    .len(4096)
                    .map_file(&file.file)
                    .expect("map"),
            )
        }) as Box<dyn Fn()>,
        Box::new(|| {
            // SAFETY: the mapping is dropped untouched.
            drop(unsafe { memmap2::MmapOptions::new().len(4096).map(&file.file) }.expect("map"))
        }) as Box<dyn Fn()>,
    );
    let file_whole = (
        "mapcost-file-whole",
        "file, whole",
        5_000,
        Box::new(|| drop(MapOptions::new().map_file(&file.file).expect("map"))) as Box<dyn Fn()>,
        // SAFETY: the mapping is dropped untouched.
        Box::new(|| drop(unsafe { memmap2::Mmap::map(&file.file) }.expect("map"))) as Box<dyn Fn()>,
    );
    let anon_4k = (
        "mapcost-anon-4k",
        "anonymous, 4 KiB",
        20_000,
        Box::new(|| drop(MapOptions::new().len(4096).map_anonymous().expect("map")))
            as Box<dyn Fn()>,
        Box::new(|| drop(memmap2::MmapMut::map_anon(4096).expect("map"))) as Box<dyn Fn()>,
    );
    let anon_whole = (
        "mapcost-anon-whole",
        "anonymous, file-sized",
        5_000,
        Box::new(move || drop(MapOptions::new().len(size).map_anonymous().expect("map")))
            as Box<dyn Fn()>,
        Box::new(move || drop(memmap2::MmapMut::map_anon(size).expect("map"))) as Box<dyn Fn()>,
    );
    for (name, what, iterations, ours, anchor) in [file_4k, file_whole, anon_4k, anon_whole] {
        let per_op = |work: &dyn Fn()| {
            1e9 * harness::seconds(|| (0..iterations).for_each(|_| work())) / iterations as f64
        };
        let mut contenders = [
            Contender::new("mmapkit MapOptions", || per_op(&*ours)),
            Contender::new("memmap2", || per_op(&*anchor)),
        ];
        let samples = harness::alternate(rounds, &mut contenders);
        let title = format!(
            "{name}: map + unmap, {what} ({} MiB file), per operation",
            size >> 20
        );
        harness::print_table(&title, Unit::Nanoseconds, &samples);
        harness::print_json(name, &samples[0], &samples[1], Unit::Nanoseconds);
    }
    Ok(())
}
