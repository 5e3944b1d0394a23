//! A fixed-size log-linear latency histogram: recording is an index
//! computation and an increment, with no allocation after construction, so the
//! load generator can record every response on its hot path.
//!
//! Values (nanoseconds) below 2^SUB_BITS land in exact buckets; above that,
//! each power of two is split into 2^SUB_BITS buckets, so a reported
//! percentile is within 1/2^SUB_BITS (about 1.6 %) of the true value.

/// Sub-bucket bits per power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Groups: one exact group, then one per power of two from 2^SUB_BITS to 2^63.
const GROUPS: usize = (64 - SUB_BITS as usize) + 1;
const BUCKETS: usize = GROUPS * SUB as usize;

/// Latency histogram over nanosecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (allocates its buckets once).
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let log2 = 63 - v.leading_zeros();
        let shift = log2 - SUB_BITS;
        let group = (shift + 1) as usize;
        let sub = ((v >> shift) & (SUB - 1)) as usize;
        (group << SUB_BITS) | sub
    }

    /// Smallest value and width of bucket `idx`.
    fn bounds(idx: usize) -> (u64, u64) {
        let group = idx >> SUB_BITS;
        let sub = (idx as u64) & (SUB - 1);
        if group == 0 {
            (sub, 1)
        } else {
            let shift = group as u32 - 1;
            ((SUB + sub) << shift, 1 << shift)
        }
    }

    /// Record one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest recorded value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Add another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0.0..=1.0): the middle of the bucket that
    /// holds the ceil(q * count)-th smallest value, never above the maximum
    /// (and exactly the maximum for the largest rank).
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            // The largest value is known exactly.
            return Some(self.max);
        }
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bounds(idx);
                return Some((low + width / 2).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Latency percentiles in microseconds, as both benches report them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds, rounded to 0.1 µs;
    /// `None` when it is empty.
    pub fn from_nanos(h: &Histogram) -> Option<Latency> {
        let us = |ns: u64| (ns as f64 / 1e3 * 10.0).round() / 10.0;
        let q = |q: f64| us(h.quantile(q).unwrap_or(0));
        (h.count() > 0).then(|| Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: us(h.max()),
        })
    }

    /// One report line: `label` then the percentiles, or `none` without data.
    pub fn line(l: &Option<Latency>, label: &str, none: &str) -> String {
        match l {
            Some(l) => format!(
                "  {label:<12} p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
            None => format!("  {label:<12} ({none})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_bounds_agree() {
        for v in (0..10_000u64).chain([1 << 20, (1 << 20) + 12_345, u64::MAX / 3, u64::MAX]) {
            let (low, width) = Histogram::bounds(Histogram::index(v));
            assert!(low <= v && v - low < width, "v={v} low={low} width={width}");
        }
        assert!(Histogram::index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_are_within_bucket_precision() {
        let mut h = Histogram::new();
        // 1..=100_000 ns, uniform: the q-quantile is q * 100_000.
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                (got - want).abs() / want < 0.02,
                "q={q} got={got} want={want}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(100_000));
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn merge_adds_counts_and_keeps_max() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        assert_eq!(a.quantile(0.5), None);
        a.record(10);
        b.record(1_000_000);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.quantile(0.1), Some(10));
        let p99 = a.quantile(0.99).unwrap();
        assert!((984_000..=1_000_000).contains(&p99), "{p99}");
    }
}
