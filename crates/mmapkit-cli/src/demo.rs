//! `mmapkit demo`: the seed's C program redone with mmapkit, and a few more demonstrations.
//!
//! The `shared` demo prints the seed's four lines: one anonymous shared mapping and one shared
//! mapping of /dev/zero; after fork the child prints, sleeps and prints again while the parent
//! writes "string 2" into both. The seed orders its output with sleeps alone; here the sleeps
//! only set the pace, and a socket pair orders the steps, so the output is the same on a busy
//! machine and with `--time-scale 0`.

use std::error::Error;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clap::{Args, ValueEnum};
use mmapkit::{MapOptions, Mapping};

type DemoResult = Result<(), Box<dyn Error>>;

/// Arguments of `mmapkit demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Which demonstration to run.
    #[arg(value_enum, default_value_t = Which::Shared)]
    which: Which,
    /// Run every demonstration in turn.
    #[arg(long)]
    all: bool,
    /// Multiply the seed program's pauses (2 s and 3 s) by this factor; 0 runs without pauses.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR", value_parser = parse_time_scale)]
    time_scale: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Shared anonymous and /dev/zero mappings across fork (the seed's program).
    Shared,
    /// Private (copy-on-write) mappings: writes reach neither the child nor the file.
    Private,
    /// msync: a write through a shared file mapping, flushed, read back with read(2).
    Msync,
    /// A file truncated under its mapping: an error instead of SIGBUS.
    Truncate,
}

/// The largest pause factor: the longest pause is then 3,000 s, and no product overflows.
const MAX_TIME_SCALE: f64 = 1000.0;

fn parse_time_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(scale) if (0.0..=MAX_TIME_SCALE).contains(&scale) => Ok(scale),
        _ => Err(format!(
            "{text:?} is not a factor from 0 to {MAX_TIME_SCALE}"
        )),
    }
}

/// Runs the demonstration(s) the arguments select.
pub fn run(args: &DemoArgs) -> DemoResult {
    let pause = Pause(args.time_scale);
    let which: &[Which] = if args.all {
        &[Which::Shared, Which::Private, Which::Msync, Which::Truncate]
    } else {
        std::slice::from_ref(&args.which)
    };
    for (index, demo) in which.iter().enumerate() {
        if args.all {
            if index > 0 {
                outln!();
            }
            outln!(
                "== {} ==",
                demo.to_possible_value()
                    .expect("no skipped variants")
                    .get_name()
            );
        }
        match demo {
            Which::Shared => shared(pause)?,
            Which::Private => private(pause)?,
            Which::Msync => msync()?,
            Which::Truncate => truncate()?,
        }
    }
    Ok(())
}

/// The seed's pauses, scaled.
#[derive(Debug, Clone, Copy)]
struct Pause(f64);

impl Pause {
    fn seconds(self, seconds: u32) {
        std::thread::sleep(Duration::from_secs_f64(self.0 * f64::from(seconds)));
    }
}

fn shared(pause: Pause) -> DemoResult {
    let anonymous = MapOptions::new().len(4096).shared().map_anonymous()?;
    let zero_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")?;
    let zero = MapOptions::new()
        .len(4096)
        .write(true)
        .map_file(&zero_file)?;
    put(&anonymous, "anonymous string 1")?;
    put(&zero, "zero-backed string 1")?;
    let report = || -> DemoResult {
        outln!(
            "PID {}:\t{}, {}",
            std::process::id(),
            get(&anonymous)?,
            get(&zero)?
        );
        Ok(())
    };
    seed_choreography(pause, &report, &|| {
        put(&anonymous, "anonymous string 2")?;
        Ok(put(&zero, "zero-backed string 2")?)
    })
}

/// The seed program's steps after the first write: the parent reports; the forked child
/// reports, sleeps 3 s and reports again; meanwhile the parent sleeps 2 s, makes its second
/// write and reports. The socket pair keeps that order whatever the pauses.
fn seed_choreography(
    pause: Pause,
    report: &dyn Fn() -> DemoResult,
    second_write: &dyn Fn() -> DemoResult,
) -> DemoResult {
    report()?;
    let (pid, mut parent) = fork_with(UnixStream::pair()?, |mut child| {
        report()?;
        notify(&mut child)?;
        pause.seconds(3);
        wait_for(&mut child)?;
        report()
    })?;
    wait_for(&mut parent)?;
    pause.seconds(2);
    second_write()?;
    report()?;
    notify(&mut parent)?;
    reap(pid)
}

fn private(pause: Pause) -> DemoResult {
    outln!("A private anonymous mapping is copied on write after fork:");
    let private = MapOptions::new().len(4096).private().map_anonymous()?;
    put(&private, "private string 1")?;
    let report = || -> DemoResult {
        outln!("PID {}:\t{}", std::process::id(), get(&private)?);
        Ok(())
    };
    seed_choreography(pause, &report, &|| Ok(put(&private, "private string 2")?))?;

    outln!("A private file mapping keeps its writes from the file:");
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(b"file contents\0")?;
    let map = MapOptions::new()
        .private()
        .write(true)
        .map_file(file.as_file())?;
    put(&map, "private edit")?;
    map.flush()?;
    let on_disk = std::fs::read(file.path())?;
    outln!("  the mapping reads: {:?}", get(&map)?);
    outln!(
        "  the file reads:    {:?}",
        String::from_utf8_lossy(&on_disk[..13])
    );
    Ok(())
}

fn msync() -> DemoResult {
    let file = tempfile::NamedTempFile::new()?;
    file.as_file().set_len(4096)?;
    let map = MapOptions::new().write(true).map_file(file.as_file())?;
    let text = "hello from the mapping";
    map.write_at(0, text.as_bytes())?;
    outln!(
        "wrote {text:?} through a shared mapping of {}",
        file.path().display()
    );
    map.flush()?;
    outln!("msync(MS_SYNC) returned: the bytes are in the file");
    let mut read_back = vec![0u8; text.len()];
    std::fs::File::open(file.path())?.read_exact(&mut read_back)?;
    outln!("read(2) returns {:?}", String::from_utf8_lossy(&read_back));
    Ok(())
}

fn truncate() -> DemoResult {
    let file = tempfile::NamedTempFile::new()?;
    file.as_file().set_len(8192)?;
    let map = MapOptions::new().map_file(file.as_file())?;
    outln!(
        "mapped {} ({} bytes), then truncated it to 0 bytes",
        file.path().display(),
        map.len()
    );
    file.as_file().set_len(0)?;
    let mut buf = [0u8; 16];
    match map.read_at(4096, &mut buf) {
        Ok(()) => outln!("read_at(4096) succeeded (the file was not truncated after all)"),
        Err(error) => {
            outln!("read_at(4096) returned {:?}: {error}", error.kind());
            outln!("(a plain mmap read here would have killed the process with SIGBUS)");
        }
    }
    Ok(())
}

/// Writes `text` and a terminating NUL at the start of `map`, like the seed's strcpy.
fn put(map: &Mapping, text: &str) -> mmapkit::Result<()> {
    map.write_at(0, text.as_bytes())?;
    map.write_at(text.len(), &[0])
}

/// Reads the NUL-terminated string at the start of `map`, like the seed's printf("%s").
fn get(map: &Mapping) -> mmapkit::Result<String> {
    let mut bytes = vec![0u8; map.len().min(64)];
    map.read_at(0, &mut bytes)?;
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn notify(stream: &mut UnixStream) -> std::io::Result<()> {
    stream.write_all(&[1])
}

fn wait_for(stream: &mut UnixStream) -> std::io::Result<()> {
    stream.read_exact(&mut [0])
}

/// Runs `child` in a forked child process with the second end of `pair`; the child exits 0
/// if it succeeds and 1 if not. Returns the child's pid and the first end. Each process
/// closes the other's end, so either sees end-of-file when the other is gone rather than
/// waiting for ever.
fn fork_with(
    pair: (UnixStream, UnixStream),
    child: impl FnOnce(UnixStream) -> DemoResult,
) -> Result<(libc::pid_t, UnixStream), Box<dyn Error>> {
    let (parent_end, child_end) = pair;
    // Nothing buffered may be written twice; a failure here is `out`'s to report.
    let _ = std::io::stdout().flush();
    // SAFETY: the CLI runs on one thread, so the child inherits no lock held by another.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        drop(parent_end);
        let code = match child(child_end) {
            Ok(()) => 0,
            Err(error) => {
                errln!("mmapkit: child: {error}");
                1
            }
        };
        let _ = std::io::stdout().flush();
        // SAFETY: ends the child without running the parent's exit handlers a second time.
        unsafe { libc::_exit(code) };
    }
    drop(child_end);
    Ok((pid, parent_end))
}

/// Waits for the child and turns a failure into an error.
fn reap(pid: libc::pid_t) -> DemoResult {
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a valid integer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(std::io::Error::last_os_error().into());
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("the child process {pid} failed (wait status {status:#x})").into())
    }
}
