//! `mmapkit-bench`: mmapkit against its anchors, in one process, alternating, several rounds.
//! One subcommand per scenario; each prints a table and one JSON line per comparison.

mod buffer;
mod cabi;
mod cgroup;
mod files;
mod guard;
mod harness;
#[cfg(feature = "iceoryx2")]
mod iceoryx;
mod inspect;
mod ipc;
mod mapcost;
mod pager;
mod process;
mod scan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mmapkit-bench",
    about = "Benchmarks of mmapkit against its anchors"
)]
struct Cli {
    /// Rounds per scenario; medians are compared.
    #[arg(long, default_value_t = 7, global = true)]
    rounds: usize,
    /// Directory for the data file (kept between runs).
    #[arg(long, default_value = "/var/tmp/mmapkit-bench", global = true)]
    dir: PathBuf,
    /// Size of the data file in MiB.
    #[arg(long, default_value_t = 1024, global = true)]
    size_mib: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
enum Scenario {
    /// Sum the words of a page-cache-hot file: mmapkit (unsafe slice and safe chunks),
    /// memmap2, read(), a Vec in memory.
    Scan,
    /// The safe chunked scan at several chunk sizes against memmap2.
    ScanChunks,
    /// Guarded read_at against a plain slice copy, 1 MiB and 4 KiB chunks.
    Guard,
    /// Map + unmap of a 4 KiB window and of the whole file, and of anonymous memory.
    Mapcost,
    /// Ping-pong latency between two processes: 64 B, 4 KiB, 1 MiB (iceoryx2 with the
    /// `iceoryx2` feature).
    IpcLatency,
    /// 64-byte ping-pong from C through libmmapkit against the Rust API (builds
    /// mmapkit-c and compiles bench/c/pingpong.c with `cc`).
    CAbiLatency,
    /// 64-byte messages streamed between two processes, messages per second.
    IpcThroughput,
    /// Wake-up latency of a sleeping receiver.
    IpcWake,
    /// Sequential scan of the page-cache-hot file through the pager against kernel mmap.
    PagerSeq,
    /// Random 4 KiB reads through the pager (faults per second) against kernel mmap.
    PagerRandom,
    /// Scan with a budget of 25% of the file against kernel mmap under the same cgroup
    /// memory limit, from a cold cache.
    PagerBudget,
    /// Random 8-byte lookups in resident pages through `read_optimistic` against a Vec.
    PagerHotLookup,
    /// `pager-random` through the explicit API (misses read in the calling thread) against
    /// kernel mmap and the faulting pager.
    PagerRandomExplicit,
    /// Random 4 KiB reads of a file 4x a cgroup memory limit, cold, 2 threads: the explicit
    /// pager, the faulting pager, kernel mmap (MADV_RANDOM), O_DIRECT pread.
    PagerOomRandom,
    /// Residency of the 1 GiB cached file: `mmapkit residency` against vmtouch and fincore.
    ResidencyFile,
    /// Residency of a tree of 2,000 cached files against vmtouch.
    ResidencyTree,
    /// `mmapkit maps -x` of a process with 10,000 mappings against `pmap -x`.
    Maps,
    /// The process `maps` inspects (internal).
    #[command(hide = true)]
    MapsTarget,
    /// One contender of `pager-oom-random`, run in the cgroup (internal).
    #[command(hide = true)]
    PagerOomChild {
        mode: String,
        path: String,
        procs: String,
    },
    /// One side of `pager-budget`, run in the cgroup (internal).
    #[command(hide = true)]
    PagerBudgetChild {
        mode: String,
        path: String,
        budget: usize,
        procs: String,
    },
    /// Every scenario above.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mmapkit-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    if cli.rounds == 0 || cli.size_mib == 0 {
        return Err("--rounds and --size-mib must be at least 1".into());
    }
    let file = || files::prepare(&cli.dir, "data.bin", cli.size_mib << 20);
    match &cli.scenario {
        Scenario::IpcLatency => ipc::latency(cli.rounds),
        Scenario::CAbiLatency => cabi::latency(cli.rounds),
        Scenario::IpcThroughput => ipc::throughput(cli.rounds),
        Scenario::IpcWake => ipc::wake(cli.rounds),
        Scenario::Scan => scan::run(&file()?, cli.rounds)?,
        Scenario::ScanChunks => scan::chunk_sizes(&file()?, cli.rounds)?,
        Scenario::Guard => guard::run(&file()?, cli.rounds)?,
        Scenario::Mapcost => mapcost::run(&file()?, cli.rounds)?,
        Scenario::PagerSeq => pager::sequential(&file()?, cli.rounds)?,
        Scenario::PagerRandom => pager::random(&file()?, cli.rounds)?,
        Scenario::PagerBudget => pager::budget(&file()?, cli.rounds)?,
        Scenario::PagerHotLookup => buffer::hot_lookup(&file()?, cli.rounds)?,
        Scenario::PagerRandomExplicit => buffer::random_explicit(&file()?, cli.rounds)?,
        Scenario::PagerOomRandom => buffer::oom_random(&cli.dir, cli.rounds.min(3))?,
        Scenario::PagerOomChild { mode, path, procs } => buffer::oom_child(mode, path, procs)?,
        Scenario::ResidencyFile => inspect::residency_file(&file()?, cli.rounds)?,
        Scenario::ResidencyTree => inspect::residency_tree(&cli.dir, cli.rounds)?,
        Scenario::Maps => inspect::maps(cli.rounds)?,
        Scenario::MapsTarget => inspect::maps_target()?,
        Scenario::PagerBudgetChild {
            mode,
            path,
            budget,
            procs,
        } => pager::budget_child(mode, path, *budget, procs)?,
        Scenario::All => {
            let file = file()?;
            scan::run(&file, cli.rounds)?;
            guard::run(&file, cli.rounds)?;
            mapcost::run(&file, cli.rounds)?;
            ipc::latency(cli.rounds);
            cabi::latency(cli.rounds);
            ipc::throughput(cli.rounds);
            ipc::wake(cli.rounds);
            pager::sequential(&file, cli.rounds)?;
            pager::random(&file, cli.rounds)?;
            pager::budget(&file, cli.rounds)?;
            buffer::hot_lookup(&file, cli.rounds)?;
            buffer::random_explicit(&file, cli.rounds)?;
            buffer::oom_random(&cli.dir, cli.rounds.min(3))?;
            inspect::residency_file(&file, cli.rounds)?;
            inspect::residency_tree(&cli.dir, cli.rounds)?;
            inspect::maps(cli.rounds)?;
        }
    }
    Ok(())
}
