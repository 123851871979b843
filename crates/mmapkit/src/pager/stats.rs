//! What a region did: faults, bytes moved, evictions, write-backs, errors, and how long
//! faults took to serve.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of a [`PagedRegion`](super::PagedRegion), as returned by
/// [`stats`](super::PagedRegion::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Missing-page faults served (a thread touched a page that was not in memory).
    pub faults: u64,
    /// First writes to clean pages (write-protect faults): pages that became dirty.
    pub write_faults: u64,
    /// Pages filled from the store, on demand or ahead of it.
    pub pages_filled: u64,
    /// Of those, pages filled for an explicit access (a pin or an optimistic read that
    /// missed): no fault, no round trip to a handler.
    pub explicit_fills: u64,
    /// Of those, pages filled ahead of demand: sequential read-ahead and `prefetch`.
    pub pages_prefetched: u64,
    /// Bytes read from the store.
    pub bytes_read: u64,
    /// Pages evicted to stay within the budget (or by `evict`).
    pub evictions: u64,
    /// Of those, pages the background evictor took (the rest were evicted by a fill that
    /// found the budget exhausted, or by `evict`).
    pub background_evictions: u64,
    /// Dirty pages written back to the store (by eviction, `flush` or drop).
    pub writebacks: u64,
    /// Bytes written to the store.
    pub bytes_written: u64,
    /// Store reads and writes that failed.
    pub store_errors: u64,
    /// Bytes in memory now.
    pub resident_bytes: u64,
    /// The most bytes that were in memory at once (frames reserved for fills included).
    pub peak_resident_bytes: u64,
    /// Bytes in memory that the store does not have yet.
    pub dirty_bytes: u64,
    /// Time from reading a fault off the userfaultfd to waking the faulting thread.
    pub fault_latency: Histogram,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "faults {} (first writes to clean pages {}), pages filled {} (prefetched {}, \
             explicit {}), read {} B",
            self.faults,
            self.write_faults,
            self.pages_filled,
            self.pages_prefetched,
            self.explicit_fills,
            self.bytes_read
        )?;
        writeln!(
            f,
            "evictions {} (in the background {}), write-backs {}, written {} B, store errors {}",
            self.evictions,
            self.background_evictions,
            self.writebacks,
            self.bytes_written,
            self.store_errors
        )?;
        writeln!(
            f,
            "resident {} B (peak {} B), dirty {} B",
            self.resident_bytes, self.peak_resident_bytes, self.dirty_bytes
        )?;
        write!(f, "fault latency: {}", self.fault_latency)
    }
}

/// Buckets of powers of two nanoseconds: bucket `i` counts durations in `[2^i, 2^(i+1))` ns.
const BUCKETS: usize = 40;

/// A latency histogram with power-of-two buckets (1 ns to about 18 minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: [u64; BUCKETS],
    total_nanos: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: [0; BUCKETS],
            total_nanos: 0,
        }
    }
}

impl Histogram {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The mean duration, or zero when empty.
    pub fn mean(&self) -> Duration {
        match self.count() {
            0 => Duration::ZERO,
            count => Duration::from_nanos(self.total_nanos / count),
        }
    }

    /// An upper bound of the `quantile` (0.0–1.0): the top of the bucket it falls in.
    pub fn quantile(&self, quantile: f64) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_nanos(1u64 << (bucket + 1));
            }
        }
        Duration::from_nanos(1u64 << BUCKETS)
    }

    /// The non-empty buckets as `(lower bound, count)`.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(bucket, &n)| (Duration::from_nanos(1u64 << bucket), n))
    }
}

impl fmt::Display for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count() == 0 {
            return f.write_str("no faults");
        }
        write!(
            f,
            "{} faults, mean {:?}, p50 < {:?}, p99 < {:?}, max < {:?}",
            self.count(),
            self.mean(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }
}

/// The live counters, updated by the handler threads.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) faults: AtomicU64,
    pub(crate) write_faults: AtomicU64,
    pub(crate) pages_filled: AtomicU64,
    pub(crate) explicit_fills: AtomicU64,
    pub(crate) pages_prefetched: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) background_evictions: AtomicU64,
    pub(crate) writebacks: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_nanos: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            faults: AtomicU64::new(0),
            write_faults: AtomicU64::new(0),
            pages_filled: AtomicU64::new(0),
            explicit_fills: AtomicU64::new(0),
            pages_prefetched: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            background_evictions: AtomicU64::new(0),
            writebacks: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_nanos: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_latency(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let bucket = (63 - nanos.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counters with the page table's figures, in bytes.
    pub(crate) fn snapshot(
        &self,
        resident_bytes: u64,
        peak_resident_bytes: u64,
        dirty_bytes: u64,
    ) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            faults: load(&self.faults),
            write_faults: load(&self.write_faults),
            pages_filled: load(&self.pages_filled),
            explicit_fills: load(&self.explicit_fills),
            pages_prefetched: load(&self.pages_prefetched),
            bytes_read: load(&self.bytes_read),
            evictions: load(&self.evictions),
            background_evictions: load(&self.background_evictions),
            writebacks: load(&self.writebacks),
            bytes_written: load(&self.bytes_written),
            store_errors: load(&self.store_errors),
            resident_bytes,
            peak_resident_bytes,
            dirty_bytes,
            fault_latency: Histogram {
                buckets: std::array::from_fn(|bucket| load(&self.latency[bucket])),
                total_nanos: load(&self.latency_nanos),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_tops() {
        let counters = Counters::default();
        for micros in [1, 1, 1, 1, 1, 1, 1, 1, 1, 100] {
            counters.record_latency(Duration::from_micros(micros));
        }
        let histogram = counters.snapshot(0, 0, 0).fault_latency;
        assert_eq!(histogram.count(), 10);
        // 1 µs = 1000 ns lies in [512, 1024): the bucket's top is 1024 ns.
        assert_eq!(histogram.quantile(0.5), Duration::from_nanos(1024));
        // 100 µs lies in [65536, 131072) ns.
        assert_eq!(histogram.quantile(1.0), Duration::from_nanos(131_072));
        assert_eq!(histogram.mean(), Duration::from_nanos(10_900));
        assert_eq!(histogram.buckets().count(), 2);
    }
}
