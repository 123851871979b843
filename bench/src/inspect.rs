//! The inspection commands against the tools operators use, every side run as a process:
//!
//! * `residency-file`: `mmapkit residency` on the 1 GiB data file, fully cached, against
//!   vmtouch and fincore (and the library call itself, in-process, for scale);
//! * `residency-tree`: a tree of 2,000 cached files (about 130 MB) against vmtouch;
//! * `maps`: `mmapkit maps -x` of a process with 10,000 mappings against `pmap -x`.
//!
//! The `mmapkit` binary is the one built next to this benchmark (`cargo build --release`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mmapkit::inspect::{self, ResidencyOptions};

use crate::files::{self, BenchFile, CacheState};
use crate::harness::{self, Contender, Unit};

/// Files in the `residency-tree` tree, and their size (2,000 × 65 KiB ≈ 130 MB).
const TREE_FILES: usize = 2000;
const TREE_FILE_BYTES: usize = 65 << 10;
/// Mappings of the `maps` target process.
const MAPPINGS: usize = 10_000;

/// The `mmapkit` command built beside this binary.
fn mmapkit_binary() -> mmapkit::Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| mmapkit::Error::io("current_exe", &e))?;
    let binary = exe.with_file_name("mmapkit");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(mmapkit::Error::new(
            mmapkit::ErrorKind::NotFound,
            "bench",
            format!(
                "{} is missing: build the command first (cargo build --release)",
                binary.display()
            ),
        ))
    }
}

/// Milliseconds one run of `program args` takes, output discarded; panics if it fails.
fn run_ms(program: &Path, args: &[&str]) -> f64 {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut status = None;
    let seconds = harness::seconds(|| status = Some(command.status()));
    match status {
        Some(Ok(status)) if status.success() => seconds * 1e3,
        other => panic!("{} {args:?} failed: {other:?}", program.display()),
    }
}

fn which(tool: &str) -> mmapkit::Result<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.exists())
        .ok_or_else(|| {
            mmapkit::Error::new(
                mmapkit::ErrorKind::NotFound,
                "bench",
                format!(
                    "{tool} is needed as the anchor (apt-get install vmtouch procps util-linux)"
                ),
            )
        })
}

pub fn residency_file(file: &BenchFile, rounds: usize) -> mmapkit::Result<()> {
    files::warm(file, CacheState::LargeFolios)?;
    let ours = mmapkit_binary()?;
    let (vmtouch, fincore) = (which("vmtouch")?, which("fincore")?);
    let path = file.path.to_str().expect("a UTF-8 benchmark path");
    let mut contenders = [
        Contender::new("mmapkit residency (process)", || {
            run_ms(&ours, &["residency", path])
        }),
        Contender::new("vmtouch (process)", || run_ms(&vmtouch, &[path])),
        Contender::new("fincore (process)", || run_ms(&fincore, &[path])),
        Contender::new("inspect::residency (in-process)", || {
            harness::seconds(|| {
                let report = inspect::residency(&file.path, &ResidencyOptions::default())
                    .expect("residency");
                assert_eq!(report.cached, report.pages, "the file is fully cached");
            }) * 1e3
        }),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    let title = format!(
        "residency-file: page-cache residency of a fully cached {} MiB file",
        file.size >> 20
    );
    harness::print_table(&title, Unit::Milliseconds, &samples);
    harness::print_json(
        "residency-file",
        &samples[0],
        &samples[1],
        Unit::Milliseconds,
    );
    harness::print_json(
        "residency-file-vs-fincore",
        &samples[0],
        &samples[2],
        Unit::Milliseconds,
    );
    Ok(())
}

/// Creates (once) and caches the tree of `residency-tree`.
fn prepare_tree(dir: &Path) -> mmapkit::Result<PathBuf> {
    let tree = dir.join("tree");
    let complete = (0..TREE_FILES).all(|index| {
        std::fs::metadata(tree_file(&tree, index)).is_ok_and(|m| m.len() == TREE_FILE_BYTES as u64)
    });
    if !complete {
        eprintln!("creating {} ({TREE_FILES} files)...", tree.display());
        let content: Vec<u8> = (0..TREE_FILE_BYTES).map(|i| (i % 251) as u8).collect();
        for index in 0..TREE_FILES {
            let path = tree_file(&tree, index);
            let parent = path.parent().expect("files live in directories");
            std::fs::create_dir_all(parent).map_err(|e| mmapkit::Error::io("mkdir", &e))?;
            std::fs::write(&path, &content).map_err(|e| mmapkit::Error::io("write", &e))?;
        }
    }
    for index in 0..TREE_FILES {
        std::fs::read(tree_file(&tree, index)).map_err(|e| mmapkit::Error::io("read", &e))?;
    }
    Ok(tree)
}

/// 20 directories of 100 files.
fn tree_file(tree: &Path, index: usize) -> PathBuf {
    tree.join(format!("d{:02}", index / 100))
        .join(format!("f{:04}", index))
}

pub fn residency_tree(dir: &Path, rounds: usize) -> mmapkit::Result<()> {
    let tree = prepare_tree(dir)?;
    let ours = mmapkit_binary()?;
    let vmtouch = which("vmtouch")?;
    let path = tree.to_str().expect("a UTF-8 benchmark path");
    let mut contenders = [
        Contender::new("mmapkit residency -s (process)", || {
            run_ms(&ours, &["residency", "-s", path])
        }),
        Contender::new("vmtouch (process)", || run_ms(&vmtouch, &[path])),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    let title = format!(
        "residency-tree: {TREE_FILES} cached files of {} KiB in 20 directories",
        TREE_FILE_BYTES >> 10
    );
    harness::print_table(&title, Unit::Milliseconds, &samples);
    harness::print_json(
        "residency-tree",
        &samples[0],
        &samples[1],
        Unit::Milliseconds,
    );
    Ok(())
}

/// The `maps` target: maps 10,000 single pages with alternating protections (so that none
/// merge), touches them, says "ready" and waits until killed.
pub fn maps_target() -> mmapkit::Result<()> {
    let mut mappings = Vec::with_capacity(MAPPINGS);
    for index in 0..MAPPINGS {
        let mut mapping = mmapkit::MapOptions::new()
            .len(4096)
            .write(true)
            .map_anonymous()?;
        mapping.write_at(0, &[1])?;
        if index % 2 == 1 {
            mapping.protect(.., mmapkit::Protection::READ)?;
        }
        mappings.push(mapping);
    }
    println!("ready");
    std::thread::sleep(std::time::Duration::from_secs(3600));
    drop(mappings);
    Ok(())
}

pub fn maps(rounds: usize) -> mmapkit::Result<()> {
    let ours = mmapkit_binary()?;
    let pmap = which("pmap")?;
    let exe = std::env::current_exe().map_err(|e| mmapkit::Error::io("current_exe", &e))?;
    let mut target = Command::new(exe)
        .arg("maps-target")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| mmapkit::Error::io("spawn", &e))?;
    let mut ready = String::new();
    let stdout = target.stdout.take().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)
        .map_err(|e| mmapkit::Error::io("read", &e))?;
    let pid = target.id().to_string();
    let count = inspect::maps(inspect::Pid::Id(target.id()))?.len();
    let mut contenders = [
        Contender::new("mmapkit maps -x (process)", || {
            run_ms(&ours, &["maps", "-x", &pid])
        }),
        Contender::new("pmap -x (process)", || run_ms(&pmap, &["-x", &pid])),
        Contender::new("mmapkit maps (no smaps)", || run_ms(&ours, &["maps", &pid])),
        Contender::new("pmap (no smaps)", || run_ms(&pmap, &[pid.as_str()])),
    ];
    let samples = harness::alternate(rounds, &mut contenders);
    let _ = target.kill();
    let _ = target.wait();
    let title = format!("maps: a process with {count} mappings");
    harness::print_table(&title, Unit::Milliseconds, &samples);
    harness::print_json("maps", &samples[0], &samples[1], Unit::Milliseconds);
    Ok(())
}
