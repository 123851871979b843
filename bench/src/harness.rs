//! The measuring harness: contenders run in one process, alternating, for several rounds, so
//! that ours and the anchor see the same machine state; medians are compared.
//!
//! Output per scenario: a table (median, min, max per contender) and one JSON line per
//! comparison, `{"bench": NAME, "ours": X, "anchor": Y, "unit": U, "ratio": X/Y}`.

use std::time::Instant;

/// What a measurement counts, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Throughput in GB/s (10^9 bytes per second); higher is better.
    GigabytesPerSecond,
    /// Milliseconds per pass; lower is better.
    Milliseconds,
    /// Nanoseconds per operation; lower is better.
    Nanoseconds,
    /// Microseconds per operation; lower is better.
    Microseconds,
    /// Millions of operations per second; higher is better.
    MillionsPerSecond,
    /// Thousands of operations per second; higher is better.
    ThousandsPerSecond,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::GigabytesPerSecond => "GB/s",
            Unit::Milliseconds => "ms",
            Unit::Nanoseconds => "ns",
            Unit::Microseconds => "us",
            Unit::MillionsPerSecond => "M/s",
            Unit::ThousandsPerSecond => "K/s",
        }
    }
}

/// One thing being measured: a label and a closure that does one round and returns its value
/// in the scenario's unit.
pub struct Contender<'a> {
    pub label: &'static str,
    pub run: Box<dyn FnMut() -> f64 + 'a>,
}

impl<'a> Contender<'a> {
    pub fn new(label: &'static str, run: impl FnMut() -> f64 + 'a) -> Contender<'a> {
        Contender {
            label,
            run: Box::new(run),
        }
    }
}

/// Every round's values of one contender.
#[derive(Debug, Clone)]
pub struct Samples {
    pub label: &'static str,
    values: Vec<f64>,
}

impl Samples {
    pub fn median(&self) -> f64 {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Runs every contender once per round, rotating who goes first, for `rounds` rounds, after
/// one warm-up round whose values are dropped (the first touch of a freshly cached file, say,
/// costs more than every later one).
pub fn alternate(rounds: usize, contenders: &mut [Contender<'_>]) -> Vec<Samples> {
    for contender in contenders.iter_mut() {
        (contender.run)();
    }
    let mut samples: Vec<Samples> = contenders
        .iter()
        .map(|contender| Samples {
            label: contender.label,
            values: Vec::with_capacity(rounds),
        })
        .collect();
    for round in 0..rounds {
        for step in 0..contenders.len() {
            let index = (round + step) % contenders.len();
            let value = (contenders[index].run)();
            samples[index].values.push(value);
        }
    }
    samples
}

/// Prints a table of the samples, with each median's ratio to the first row's.
pub fn print_table(title: &str, unit: Unit, samples: &[Samples]) {
    println!("\n{title}");
    println!(
        "  {:<34} {:>10} {:>10} {:>10} {:>8}",
        format!("contender ({})", unit.label()),
        "median",
        "min",
        "max",
        "vs 1st"
    );
    let first = samples[0].median();
    for sample in samples {
        println!(
            "  {:<34} {:>10.3} {:>10.3} {:>10.3} {:>7.3}x",
            sample.label,
            sample.median(),
            sample.min(),
            sample.max(),
            sample.median() / first
        );
    }
}

/// Prints the JSON line comparing `ours` with `anchor`.
pub fn print_json(bench: &str, ours: &Samples, anchor: &Samples, unit: Unit) {
    let line = serde_json::json!({
        "bench": bench,
        "ours": round(ours.median()),
        "anchor": round(anchor.median()),
        "anchor_name": anchor.label,
        "unit": unit.label(),
        "ratio": round(ours.median() / anchor.median()),
    });
    println!("{line}");
}

fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// Seconds taken by `work`.
pub fn seconds(work: impl FnOnce()) -> f64 {
    let start = Instant::now();
    work();
    start.elapsed().as_secs_f64()
}

/// Sums the file's words, whatever holds them. Not inlined, so that every contender runs the
/// same machine code.
#[inline(never)]
pub fn sum_words(bytes: &[u8]) -> u64 {
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(bytes);
    let edges = head.iter().chain(tail).map(|&byte| u64::from(byte));
    words
        .iter()
        .copied()
        .chain(edges)
        .fold(0u64, u64::wrapping_add)
}
