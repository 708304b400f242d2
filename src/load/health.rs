//! The client's self-check while a point runs: how late its runtime wakes up, how long received data
//! waits before it is read, and how much CPU the process uses. These say whether the client itself may
//! have inflated what it measured.
//!
//! Invariants:
//! - Samples go into a [`Histogram`] of fixed size, so a point of any length costs the same memory.
//!   Percentiles are read from it to within 1/32 of the value (3 %); the maximum is exact.
//! - A histogram without samples has no percentiles (`None`), never 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the runtime-lag timer wakes. Its cost is a wake-up of an otherwise idle runtime per period,
/// which dominates the client's CPU at concurrency 1, so it wakes no more often than it needs to.
pub const LAG_PERIOD: Duration = Duration::from_millis(10);
/// A point is flagged `saturated` when the p99 of either lag exceeds this many milliseconds: TTFT and
/// ITL may then have been read that late.
pub const SATURATION_P99_MS: f64 = 5.0;
/// ... over at least this many samples: below it the p99 is just the maximum, one hiccup of a busy
/// machine, not a client that falls behind. (The lags of a shorter point are still recorded.)
pub const SATURATION_MIN_SAMPLES: u64 = 100;

/// Values below this many microseconds have a bucket each.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 32;
const SUB_BITS: u32 = 5;
/// Enough octaves for 2^40 µs (12 days).
const BUCKETS: usize = (LINEAR + (40 - 6) * SUB) as usize;

/// A log-linear histogram of microsecond values, shared by the tasks that record into it. Recording
/// is on the path of every socket read, so it writes one shared counter (the bucket), and the maximum
/// only when it grows; the count is the buckets' sum, taken when read.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let octave = 63 - u64::from(us.leading_zeros()); // ≥ 6
    let sub = (us >> (octave - u64::from(SUB_BITS))) & (SUB - 1);
    let index = LINEAR + (octave - 6) * SUB + sub;
    (index as usize).min(BUCKETS - 1)
}

/// The smallest value of a bucket and its width.
fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LINEAR {
        return (index, 1);
    }
    let octave = (index - LINEAR) / SUB + 6;
    let sub = (index - LINEAR) % SUB;
    let width = 1u64 << (octave - u64::from(SUB_BITS));
    ((1u64 << octave) + sub * width, width)
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Histogram {
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Forgets every sample (the measured phase starts after warm-up and connection opening).
    pub fn clear(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.max_us.store(0, Ordering::Relaxed);
    }

    /// p50, p99 (the middle of the bucket holding that rank) and the exact maximum; `None` without samples.
    pub fn lag(&self) -> Option<Lag> {
        let count: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        if count == 0 {
            return None;
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let at = |q: f64| -> f64 {
            // The smallest value with at least q of the samples at or below it.
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, b) in self.buckets.iter().enumerate() {
                seen += b.load(Ordering::Relaxed);
                if seen >= rank {
                    let (low, width) = bucket_range(i);
                    let mid = low as f64 + (width as f64 - 1.0) / 2.0;
                    return mid.min(max_us as f64) / 1000.0;
                }
            }
            max_us as f64 / 1000.0
        };
        Some(Lag {
            count,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: max_us as f64 / 1000.0,
        })
    }
}

impl Lag {
    /// Whether this lag says the client fell behind (see [`SATURATION_P99_MS`]).
    pub fn saturated(&self) -> bool {
        self.count >= SATURATION_MIN_SAMPLES && self.p99_ms > SATURATION_P99_MS
    }
}

/// Wakes every [`LAG_PERIOD`] until its task is aborted, recording how late each wake-up was into
/// `lags`.
pub async fn lag_monitor(lags: Arc<Histogram>) {
    let mut next = Instant::now() + LAG_PERIOD;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        lags.record_us(now.saturating_duration_since(next).as_micros() as u64);
        // After a long stall, measure the next period from now rather than firing a burst of catch-ups.
        next = (next + LAG_PERIOD).max(now + LAG_PERIOD / 2);
    }
}

/// User + system CPU time of this process (all its threads), seconds.
pub fn cpu_time() -> f64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_three_percent() {
        for us in [0, 1, 63, 64, 65, 100, 1000, 4095, 4096, 123_456, 10_000_000] {
            let (low, width) = bucket_range(bucket_of(us));
            assert!(low <= us && us < low + width, "{us}: [{low}, +{width})");
            assert!(
                width as f64 <= (us as f64 / 32.0).max(1.0),
                "{us}: width {width}"
            );
        }
        assert_eq!(
            bucket_of(u64::MAX),
            BUCKETS - 1,
            "huge values stay in range"
        );
    }

    #[test]
    fn percentiles_and_exact_maximum() {
        let h = Histogram::default();
        assert_eq!(h.lag(), None, "no samples, no lag");
        for us in 1..=100 {
            h.record_us(us * 10); // 10 µs .. 1000 µs
        }
        let lag = h.lag().unwrap();
        assert!((lag.p50_ms - 0.5).abs() <= 0.5 * 0.04, "{lag:?}");
        assert!((lag.p99_ms - 0.99).abs() <= 0.99 * 0.04, "{lag:?}");
        assert_eq!(lag.max_ms, 1.0);
        h.clear();
        assert_eq!(h.lag(), None);
    }
}
