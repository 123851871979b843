//! `mmapkit maps` beside procps pmap on the same live processes, flag by flag: the listings
//! must be the same text, and the smaps tables the same columns with the same figures.

use std::process::{Child, Command};

mod common;
use common::{json, mmapkit, tool};

/// A process whose mappings stay put while both tools read them; killed when dropped.
struct Target(Child);

impl Target {
    fn sleeper() -> Target {
        Target::settled(Command::new("sleep").arg("60").spawn().unwrap(), 1)
    }

    /// A Python interpreter with a second thread, for thread ids.
    fn threaded() -> Target {
        let script = "import threading, time; \
                      threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)";
        Target::settled(
            Command::new("python3")
                .args(["-c", script])
                .spawn()
                .unwrap(),
            2,
        )
    }

    /// Waits until the process has finished starting (its `threads` threads exist, its
    /// libraries are mapped): two listings a moment apart agree.
    fn settled(child: Child, threads: usize) -> Target {
        let target = Target(child);
        let maps = format!("/proc/{}/maps", target.pid());
        let tasks = format!("/proc/{}/task", target.pid());
        let mut before = String::new();
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = std::fs::read_to_string(&maps).unwrap_or_default();
            let running = std::fs::read_dir(&tasks).map_or(0, |tasks| tasks.count());
            if now == before && !now.is_empty() && running == threads {
                return target;
            }
            before = now;
        }
        panic!("{maps} did not settle");
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ours(args: &[&str]) -> String {
    let output = mmapkit(args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn both(flags: &[&str], pid: &str) -> (String, String) {
    let mut args = flags.to_vec();
    args.push(pid);
    let pmap = tool("pmap", &args);
    let mut ours_args = vec!["maps"];
    ours_args.extend(&args);
    (pmap, ours(&ours_args))
}

#[test]
fn listings_are_pmaps_text() {
    let target = Target::sleeper();
    let pid = target.pid();
    for flags in [
        &[][..],
        &["-x"],
        &["-d"],
        &["-q"],
        &["-q", "-x"],
        &["-q", "-d"],
        &["-p"],
        &["-p", "-x"],
        &["-p", "-d"],
    ] {
        let (pmap, mmapkit) = both(flags, &pid);
        assert_eq!(mmapkit, pmap, "pmap {flags:?}");
    }
}

/// The starts of the target's mappings, as pmap's listing shows them.
fn starts(pid: &str) -> Vec<String> {
    tool("pmap", &["-q", pid])
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn address_ranges_select_what_pmap_selects() {
    let target = Target::sleeper();
    let pid = target.pid();
    let starts = starts(&pid);
    assert!(starts.len() > 5, "{starts:?}");
    let (second, fourth) = (&starts[1], &starts[3]);
    let inside_first = format!("{:x}", u64::from_str_radix(&starts[0], 16).unwrap() + 1);
    for range in [
        format!("{second},{fourth}"),
        second.clone(),
        inside_first,
        format!(",{second}"),
        format!("{fourth},"),
    ] {
        for flags in [&["-A", &range][..], &["-d", "-A", &range]] {
            let (pmap, mmapkit) = both(flags, &pid);
            assert_eq!(mmapkit, pmap, "pmap {flags:?}");
        }
        // pmap -x -A adds the RSS and dirty sizes of the first mapping past the range to its
        // totals (it reads that mapping's figures before it sees its address): the rows
        // agree, and our totals are the sums of the rows.
        let (pmap, mmapkit) = both(&["-x", "-A", &range], &pid);
        let (pmap_rows, _) = pmap.rsplit_once("total kB").unwrap();
        let (rows, total) = mmapkit.rsplit_once("total kB").unwrap();
        assert_eq!(rows, pmap_rows, "pmap -x -A {range}");
        let column = |index: usize| -> u64 {
            rows.lines()
                .filter(|row| row.split_whitespace().next().is_some_and(|a| a.len() == 16))
                .filter_map(|row| row.split_whitespace().nth(index)?.parse::<u64>().ok())
                .sum()
        };
        let totals: Vec<u64> = total
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(totals, [column(1), column(2), column(3)], "{mmapkit}");
    }
    let selected = json(&["maps", "--json", "-A", &format!("{second},{fourth}"), &pid]);
    assert_eq!(selected[0]["mappings"].as_array().unwrap().len(), 3);

    // pmap ignores -A with -X; mmapkit selects there too, and a selection without rows is
    // shown as pmap shows a process without mappings: the header alone.
    let none = ours(&["maps", "-X", "-A", "0,1", &pid]);
    assert_eq!(none, ours(&["maps", "-q", "-A", "0,1", &pid]));
    assert_eq!(ours(&["maps", "-X", "2"]), tool("pmap", &["-X", "2"]));

    for bad in ["zz", "2000,1000", ""] {
        let output = mmapkit(&["maps", "-A", bad, &pid]);
        assert_eq!(output.status.code(), Some(2), "-A {bad:?}: {output:?}");
    }
}

/// Columns whose figures depend on which other processes map the same pages at the moment
/// (proportional sizes, the shared/private split): the tools run one after the other.
fn shifts_with_other_processes(heading: &str) -> bool {
    heading.contains("Pss") || heading.starts_with("Shared_") || heading.starts_with("Private_")
}

/// Compares `-X`/`-XX` tables field by field (the widths follow the figures): the header and
/// the headings, then every row, the rule and the totals, but for the columns
/// [`shifts_with_other_processes`].
fn assert_same_table(pmap: &str, mmapkit: &str, flags: &[&str]) {
    let pmap: Vec<&str> = pmap.lines().collect();
    let mmapkit: Vec<&str> = mmapkit.lines().collect();
    assert_eq!(
        mmapkit.len(),
        pmap.len(),
        "{flags:?}:\n{pmap:#?}\n{mmapkit:#?}"
    );
    assert_eq!(mmapkit[0], pmap[0], "{flags:?}: the header");
    let headings: Vec<&str> = pmap[1].split_whitespace().collect();
    let size_column = headings.iter().position(|&h| h == "Size").unwrap();
    for (line, (theirs, ours)) in pmap.iter().zip(&mmapkit).enumerate().skip(1) {
        // The rule and the totals start at the Size column.
        let first_column = if line + 2 >= pmap.len() {
            size_column
        } else {
            0
        };
        let fields = |row: &str| -> Vec<String> {
            row.split_whitespace()
                .enumerate()
                .map(|(index, field)| match headings.get(index + first_column) {
                    Some(heading) if line > 1 && shifts_with_other_processes(heading) => {
                        String::from("*")
                    }
                    _ => field.to_owned(),
                })
                .collect()
        };
        assert_eq!(
            fields(ours),
            fields(theirs),
            "{flags:?} line {line}:\n{theirs}\n{ours}"
        );
    }
}

#[test]
fn smaps_tables_have_pmaps_columns_and_figures() {
    let target = Target::sleeper();
    let pid = target.pid();
    for flags in [&["-X"][..], &["-XX"], &["-p", "-X"], &["-p", "-XX"]] {
        let (pmap, mmapkit) = both(flags, &pid);
        assert_same_table(&pmap, &mmapkit, flags);
    }
    let (pmap, _) = both(&["-X"], &pid);
    for column in ["Anonymous", "Pss_Dirty", "LazyFree", "THPeligible"] {
        assert!(
            pmap.lines().nth(1).unwrap().contains(column),
            "{column}: {pmap}"
        );
    }
    for flags in [&["-q", "-X"][..], &["-q", "-XX"]] {
        let (pmap, mmapkit) = both(flags, &pid);
        let shape = |text: &str| -> Vec<(String, usize)> {
            text.lines()
                .map(|line| {
                    (
                        line.split_whitespace().next().unwrap().to_owned(),
                        line.split_whitespace().count(),
                    )
                })
                .collect()
        };
        assert_eq!(
            shape(&mmapkit),
            shape(&pmap),
            "{flags:?}:\n{pmap}\n---\n{mmapkit}"
        );
    }
}

#[test]
fn a_thread_id_lists_its_process() {
    let target = Target::threaded();
    let pid = target.pid();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| task.unwrap().file_name().into_string().unwrap())
        .collect();
    let thread = tasks
        .iter()
        .find(|&task| *task != pid)
        .expect("a second thread");
    for flags in [&[][..], &["-x"], &["-d"]] {
        let (pmap, mmapkit) = both(flags, thread);
        assert_eq!(mmapkit, pmap, "pmap {flags:?} of thread {thread}");
        assert!(mmapkit.starts_with(&format!("{pid}:")), "{mmapkit}");
    }
    let listed = json(&["maps", "--json", thread]);
    assert_eq!(listed[0]["pid"].to_string(), pid);
    let command = listed[0]["command"].as_array().unwrap();
    assert_eq!(command[1], "-c");
    assert!(command[2].as_str().unwrap().ends_with("time.sleep(60)"));
}

/// A kernel on a CPU with memory protection keys adds a `ProtectionKey:` line to every smaps
/// entry, and pmap shows it with `-X`. This machine may lack them: in a mount namespace of its
/// own, a copy of a real smaps with the line added (one mapping with key 5) is bound over the
/// process's smaps, and both tools read that same, unchanging text.
#[test]
fn protection_keys_are_a_column_as_in_pmap() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("(skipped: needs root for a mount namespace)");
        return;
    }
    let target = Target::sleeper();
    let pid = target.pid();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut with_keys = String::new();
    let mut entry = 0;
    for line in smaps.lines() {
        if line.starts_with("VmFlags:") && !smaps.contains("ProtectionKey:") {
            entry += 1;
            let key = if entry == 2 { 5 } else { 0 };
            with_keys += &format!("ProtectionKey:  {key:8}\n");
        }
        with_keys += line;
        with_keys += "\n";
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("smaps");
    std::fs::write(&fake, with_keys).unwrap();
    for flags in ["-X", "-XX", "-p -X", "-q -X"] {
        let script = format!(
            "mount --bind {fake} /proc/{pid}/smaps && pmap {flags} {pid} && echo ---- && {ours} maps {flags} {pid}",
            fake = fake.display(),
            ours = env!("CARGO_BIN_EXE_mmapkit"),
        );
        let output = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let (pmap, mmapkit) = text.split_once("----\n").unwrap();
        assert_eq!(mmapkit, pmap, "{flags}");
        if !flags.contains("-q") {
            assert!(pmap.contains("ProtectionKey"), "{pmap}");
        }
    }
}
