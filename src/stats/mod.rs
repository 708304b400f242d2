//! Summaries computed from per-request records: the seed report's columns and vLLM `bench serve`
//! compatible statistics. Pure functions over plain data; every number here can be recomputed from a
//! cell's `requests.jsonl`.
//!
//! CONTRACT (other modules rely on these names): the load generator writes one [`RequestRecord`] per
//! request ([`record`]) and fills [`Summary`] through
//! [`summarize`]; the store writes it inside each cell's `result.json`; the report reads it. Fields may be
//! added; existing ones keep their meaning.
//!
//! Invariants:
//! - A figure that could not be measured is `None` (`null` in JSON), never 0: a [`Dist`] always has at
//!   least one sample, and a throughput or speed that needs a count the server did not report is `None`.
//!   A 0 in a summary is a measured 0.
//! - Token counts are the server's own (`usage`); the client's count of what it sent is never used in
//!   their place (see [`summarize`] for what each figure needs).
//! - [`percentile`] is the project's one percentile: everything that reports one calls it.

pub mod interval;
pub mod record;
pub mod repeats;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use record::{ErrorKind, RecordSink, RequestRecord};

use crate::experiment::load::{LoadSpec, Slo};

/// Distribution of one metric over the successful measured requests, in milliseconds.
/// `std` is the population standard deviation; percentiles use linear interpolation (NumPy's default),
/// as vLLM does, so numbers compare with its output. Invariant: `count >= 1` (a metric without samples
/// has no distribution: `Option<Dist>` is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub count: u64,
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Whether the server really processed the token counts we asked for, from its own `usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenCheck {
    /// The requested count.
    pub expected: u32,
    /// Requests whose `usage` reported exactly `expected`.
    pub exact: u64,
    /// Requests whose `usage` reported another count.
    pub mismatched: u64,
    /// Requests without a `usage` block: unknown, never assumed.
    pub unknown: u64,
    /// Smallest / largest / mean reported count (over requests that reported one); `None` if none did.
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub mean: Option<f64>,
}

/// The client's own health during a load point: if it read chunks late, the numbers may be distorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientCheck {
    /// Scheduling lag of the client's runtime (how late a timer wake-up ran), ms; `None` when the lag
    /// monitor took no sample.
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_ms_max: Option<f64>,
    /// Read lag: how long received response bytes waited in the kernel before the client read them
    /// (the kernel's receive timestamp to the read), ms, over every read of the measured phase; `None`
    /// where the kernel gives no timestamps (and in results from before it was measured).
    #[serde(default)]
    pub read_lag_ms_p50: Option<f64>,
    #[serde(default)]
    pub read_lag_ms_p99: Option<f64>,
    #[serde(default)]
    pub read_lag_ms_max: Option<f64>,
    /// Most requests in flight at once (proves the offered load).
    pub peak_inflight: u32,
    /// True when either lag was high enough that TTFT/ITL may be inflated by the client; flagged in
    /// the report.
    pub saturated: bool,
    /// CPU time (user + system) of the whole client process during the measured phase, seconds.
    #[serde(default)]
    pub cpu_s: f64,
    /// With `connections = "warm"`: connections open before the measured phase started, and how long
    /// opening them took (ms). `None` with cold connections (and in older results).
    #[serde(default)]
    pub connections_warm: Option<u32>,
    #[serde(default)]
    pub connect_ms: Option<f64>,
    /// The point's time origin (0 ms in `requests.jsonl`) on the system's monotonic clock, ns: lines the
    /// records up with other logs of the same machine (an engine's timing log, telemetry).
    #[serde(default)]
    pub t0_mono_ns: Option<u64>,
}

/// One load point's figures. Figures that may be unmeasured are `Option`s (see the module's invariants);
/// distributions read back from older results treat a zero-filled `count: 0` distribution as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Measured requests sent (warm-up excluded).
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed requests by kind (`http_500`, `timeout`, `stream_cut`, `connect`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured phase, seconds (first measured send to last measured completion).
    pub duration_s: f64,

    // The seed report's columns.
    /// Completed (successful) requests per second over the measured phase; `None` without a duration.
    pub qps: Option<f64>,
    /// Mean over requests of the server's input tokens / TTFT (a per-request prefill speed), tokens/s;
    /// requests without a server-reported input count are left out, `None` when none has one.
    pub prompt_tps: Option<f64>,
    /// 1000 / mean TPOT in ms (a per-request decode speed), tokens/s; `None` without TPOT samples.
    pub decode_tps: Option<f64>,

    // vLLM-compatible distributions (ms).
    #[serde(default, deserialize_with = "some_samples")]
    pub ttft_ms: Option<Dist>,
    /// (E2E − TTFT) / (output tokens − 1), per request with more than one output token.
    #[serde(default, deserialize_with = "some_samples")]
    pub tpot_ms: Option<Dist>,
    /// Gaps between consecutive content chunks, over all requests.
    #[serde(default, deserialize_with = "some_samples")]
    pub itl_ms: Option<Dist>,
    #[serde(default, deserialize_with = "some_samples")]
    pub e2e_ms: Option<Dist>,
    /// Time requests waited at the client's own concurrency gate before being sent.
    #[serde(default, deserialize_with = "some_samples")]
    pub queue_ms: Option<Dist>,

    // Aggregate throughput over the measured phase. Both need the server's count for every successful
    // request: a sum over only some of them would understate the throughput while looking measured.
    /// Output tokens (server-reported) per second.
    pub output_tokens_per_s: Option<f64>,
    /// Input + output tokens (both server-reported) per second.
    pub total_tokens_per_s: Option<f64>,
    /// Requests per second meeting every configured SLO; `None` without SLOs.
    pub goodput_rps: Option<f64>,

    pub input_tokens: TokenCheck,
    pub output_tokens: TokenCheck,
    /// Measured requests that had to open a connection (their latency includes a TCP connect); `None`
    /// in results from before it was counted.
    #[serde(default)]
    pub new_connections: Option<u64>,
    pub client: ClientCheck,
}

/// Reads a stored distribution: results written before unmeasured figures became `None` stored a
/// distribution without samples as zeros with `count: 0`; that means "no samples", so it reads as `None`.
fn some_samples<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Dist>, D::Error> {
    let dist = Option::<Dist>::deserialize(d)?;
    Ok(dist.filter(|d| d.count > 0))
}

impl Summary {
    /// Reads a summary written before unmeasured figures became `None` (results without a `schema`, see
    /// the store). That writer put 0 where a figure could not be computed, summed the token counts that
    /// were reported, and used the count it sent where the server reported no input count. What it wrote
    /// cannot be told apart from a measurement, so a figure is kept only where the rules of today's
    /// [`summarize`] would have produced it from the same requests:
    /// - QPS and goodput need a measured duration;
    /// - Prompt TPS needs every request's input count from the server (the old value may mix in the
    ///   client's counts otherwise), and 0 was "not computed";
    /// - Decode TPS of 0 was "no TPOT samples";
    /// - output tokens/s needs every output count from the server, total tokens/s every input and output
    ///   count.
    ///
    /// Distributions need no help: [`Dist`] fields read `count: 0` as `None` in any version.
    pub fn read_zero_as_unmeasured(mut self) -> Summary {
        let timed = self.duration_s > 0.0;
        let inputs_known = self.input_tokens.unknown == 0;
        let outputs_known = self.output_tokens.unknown == 0;
        let positive = |x: Option<f64>| x.filter(|v| *v > 0.0);
        self.qps = self.qps.filter(|_| timed);
        self.goodput_rps = self.goodput_rps.filter(|_| timed);
        self.prompt_tps = positive(self.prompt_tps).filter(|_| inputs_known);
        self.decode_tps = positive(self.decode_tps);
        self.output_tokens_per_s = self.output_tokens_per_s.filter(|_| timed && outputs_known);
        self.total_tokens_per_s = self
            .total_tokens_per_s
            .filter(|_| timed && inputs_known && outputs_known);
        self
    }
}

/// The `p`-th percentile (0..=100) of sorted data by linear interpolation between the closest ranks,
/// NumPy's default (`method="linear"`): rank = p/100 × (n − 1). `None` for no data.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

impl Dist {
    /// Distribution of the finite `values` (any order); `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Dist> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let (&min, &max) = (v.first()?, v.last()?);
        let mean = v.iter().sum::<f64>() / n;
        // Population standard deviation (ddof = 0), as NumPy's `std` and vLLM report it.
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let p = |q: f64| percentile(&v, q).unwrap_or(f64::NAN); // never NaN: `v` is not empty
        let p50 = p(50.0);
        Some(Dist {
            count: v.len() as u64,
            mean,
            median: p50,
            std,
            min,
            max,
            p50,
            p90: p(90.0),
            p95: p(95.0),
            p99: p(99.0),
        })
    }

    /// The mean of a distribution that may not exist.
    pub fn mean_of(d: &Option<Dist>) -> Option<f64> {
        d.as_ref().map(|d| d.mean)
    }
}

impl TokenCheck {
    /// Compares each reported count with `expected`; `None` (no `usage`) counts as unknown.
    pub fn of(expected: u32, reported: impl IntoIterator<Item = Option<u32>>) -> TokenCheck {
        let mut tally = TokenTally::new(expected);
        for r in reported {
            tally.add(r);
        }
        tally.finish()
    }
}

/// A [`TokenCheck`] built one count at a time.
#[derive(Debug, Clone)]
struct TokenTally {
    check: TokenCheck,
    sum: u64,
}

impl TokenTally {
    fn new(expected: u32) -> TokenTally {
        TokenTally {
            check: TokenCheck {
                expected,
                ..TokenCheck::default()
            },
            sum: 0,
        }
    }

    fn add(&mut self, reported: Option<u32>) {
        let check = &mut self.check;
        match reported {
            None => check.unknown += 1,
            Some(n) => {
                if n == check.expected {
                    check.exact += 1;
                } else {
                    check.mismatched += 1;
                }
                self.sum += u64::from(n);
                check.min = Some(check.min.map_or(n, |m| m.min(n)));
                check.max = Some(check.max.map_or(n, |m| m.max(n)));
            }
        }
    }

    fn finish(self) -> TokenCheck {
        let mut check = self.check;
        let known = check.exact + check.mismatched;
        check.mean = (known > 0).then(|| self.sum as f64 / known as f64);
        check
    }
}

/// Summarises one load point. Warm-up records are ignored; latency statistics and token checks cover
/// the successful measured requests (failed ones are counted by kind in `errors`); throughputs divide by
/// the measured phase, from the earliest intended send to the last completion.
///
/// What each figure needs, so that none is shown as measured when it was not:
/// - Prompt TPS: the server's input count (`usage.prompt_tokens`) and a TTFT, per request; the length
///   the client sent is not the server's measurement and is not used.
/// - TPOT (hence Decode TPS): the server's output count, more than one token.
/// - Output and total tokens/s: the server's counts for every successful request.
///
/// The same as feeding every record to an [`Accumulator`], in any order.
pub fn summarize(records: &[RequestRecord], spec: &LoadSpec, client: ClientCheck) -> Summary {
    let mut acc = Accumulator::new(spec);
    for r in records {
        acc.add(r);
    }
    acc.finish(client)
}

/// A load point's summary built one record at a time, as requests finish, so that a point's records
/// need not be held in memory: it keeps only what the summary needs (a few numbers per request, and
/// every inter-token gap, 8 bytes each, for exact percentiles). Every statistic is independent of the
/// order records arrive in, so the result equals [`summarize`] over the same records.
#[derive(Debug, Clone)]
pub struct Accumulator {
    slo: Slo,
    requests: u64,
    succeeded: u64,
    errors: BTreeMap<String, u64>,
    start: f64,
    end: f64,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    e2e: Vec<f64>,
    queue: Vec<f64>,
    prefill: Vec<f64>,
    /// `None` as soon as one successful request lacks the server's count.
    output_sum: Option<u64>,
    input_sum: Option<u64>,
    slo_met: u64,
    input_tokens: TokenTally,
    output_tokens: TokenTally,
    new_connections: u64,
}

impl Accumulator {
    pub fn new(spec: &LoadSpec) -> Accumulator {
        Accumulator {
            slo: spec.slo.clone(),
            requests: 0,
            succeeded: 0,
            errors: BTreeMap::new(),
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
            ttft: Vec::new(),
            tpot: Vec::new(),
            itl: Vec::new(),
            e2e: Vec::new(),
            queue: Vec::new(),
            prefill: Vec::new(),
            output_sum: Some(0),
            input_sum: Some(0),
            slo_met: 0,
            input_tokens: TokenTally::new(spec.input_tokens),
            output_tokens: TokenTally::new(spec.output_tokens),
            new_connections: 0,
        }
    }

    /// Takes one record into account (warm-up records are ignored).
    pub fn add(&mut self, r: &RequestRecord) {
        if r.warmup {
            return;
        }
        self.requests += 1;
        self.start = self.start.min(r.intended_ms);
        self.end = self.end.max(r.end_ms);
        self.queue.push(r.sent_ms - r.intended_ms);
        self.new_connections += u64::from(r.new_connection);
        if let Some(kind) = r.error.as_deref() {
            *self.errors.entry(kind.to_string()).or_insert(0) += 1;
            return;
        }
        self.succeeded += 1;
        self.ttft.extend(r.ttft_ms);
        self.tpot.extend(r.tpot_ms());
        self.itl.extend(r.itl_ms());
        self.e2e.extend(r.e2e_ms);
        // Prompt TPS as the seed computes it: input tokens / TTFT per request, then averaged.
        if let (Some(n), Some(t)) = (r.prompt_tokens, r.ttft_ms)
            && t > 0.0
        {
            self.prefill.push(f64::from(n) / (t / 1000.0));
        }
        let add = |sum: Option<u64>, n: Option<u32>| Some(sum? + u64::from(n?));
        self.output_sum = add(self.output_sum, r.completion_tokens);
        self.input_sum = add(self.input_sum, r.prompt_tokens);
        self.slo_met += u64::from(meets_slo(r, &self.slo));
        self.input_tokens.add(r.prompt_tokens);
        self.output_tokens.add(r.completion_tokens);
    }

    /// The measured phase, ms on the point's clock: from the first measured request's intended send to
    /// the last measured request's end (the interval every throughput divides by; telemetry summarizes
    /// the same one). `None` before a measured record was added.
    pub fn span(&self) -> Option<(f64, f64)> {
        (self.requests > 0).then_some((self.start, self.end))
    }

    /// The summary of every record added, with the client's self-check.
    pub fn finish(self, client: ClientCheck) -> Summary {
        let duration_s = if self.end > self.start {
            (self.end - self.start) / 1000.0
        } else {
            0.0
        };
        let per_s = |x: f64| (duration_s > 0.0).then(|| x / duration_s);
        let tpot_ms = Dist::of(self.tpot);
        let decode_tps = Dist::mean_of(&tpot_ms)
            .filter(|m| *m > 0.0)
            .map(|m| 1000.0 / m);
        let slo_set = self.slo.ttft.is_some() || self.slo.tpot.is_some() || self.slo.e2e.is_some();
        let (input, output) = (self.input_sum, self.output_sum);
        Summary {
            requests: self.requests,
            succeeded: self.succeeded,
            failed: self.requests - self.succeeded,
            errors: self.errors,
            duration_s,
            qps: per_s(self.succeeded as f64),
            prompt_tps: Dist::mean_of(&Dist::of(self.prefill)),
            decode_tps,
            ttft_ms: Dist::of(self.ttft),
            tpot_ms,
            itl_ms: Dist::of(self.itl),
            e2e_ms: Dist::of(self.e2e),
            queue_ms: Dist::of(self.queue),
            output_tokens_per_s: output.and_then(|n| per_s(n as f64)),
            total_tokens_per_s: input.zip(output).and_then(|(i, o)| per_s((i + o) as f64)),
            // Requests meeting every SLO that is set; `None` when no SLO is set.
            goodput_rps: if slo_set {
                per_s(self.slo_met as f64)
            } else {
                None
            },
            input_tokens: self.input_tokens.finish(),
            output_tokens: self.output_tokens.finish(),
            new_connections: Some(self.new_connections),
            client,
        }
    }
}

/// Whether a successful request meets every SLO that is set. As in vLLM, a request with a single output
/// token has TPOT 0 for this purpose.
fn meets_slo(r: &RequestRecord, slo: &Slo) -> bool {
    let within = |limit: Option<std::time::Duration>, value: Option<f64>| match (limit, value) {
        (None, _) => true,
        (Some(limit), Some(v)) => v <= limit.as_secs_f64() * 1000.0,
        (Some(_), None) => false,
    };
    within(slo.ttft, r.ttft_ms)
        && within(slo.tpot, Some(r.tpot_ms().unwrap_or(0.0)))
        && within(slo.e2e, r.e2e_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::load::{Api, PromptMode, Vocab};
    use std::time::Duration;

    fn spec(input: u32, output: u32) -> LoadSpec {
        LoadSpec {
            concurrency: 2,
            requests: 4,
            warmup: 1,
            max_inflight: None,
            request_rate: None,
            prompt: PromptMode::Unique,
            input_tokens: input,
            output_tokens: output,
            timeout: Duration::from_secs(60),
            seed: 0,
            api: Api::Completions,
            slo: Slo::default(),
            vocab: Vocab {
                tokenizer: None,
                id_range: [100, 1000],
            },
            save_prompts: false,
            connections: Default::default(),
            repeats: 1,
            repeat: 1,
        }
    }

    /// A successful request sent at `sent`, first content at `sent + ttft`, then `n - 1` messages
    /// `itl` apart, usage reporting `n` output tokens.
    fn req(index: u32, sent: f64, ttft: f64, itl: f64, n: u32) -> RequestRecord {
        let chunk_ms: Vec<f64> = (0..n).map(|i| sent + ttft + itl * f64::from(i)).collect();
        let last = *chunk_ms.last().unwrap();
        RequestRecord {
            index,
            intended_ms: sent,
            sent_ms: sent,
            origin_ms: sent,
            end_ms: last + 1.0,
            ttft_ms: Some(ttft),
            e2e_ms: Some(last - sent),
            prompt_tokens_sent: Some(100),
            prompt_tokens: Some(100),
            completion_tokens: Some(n),
            chunk_ms,
            ..RequestRecord::default()
        }
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([15, 20, 35, 40, 50], [0, 40, 50, 90, 100]) == [15, 29, 35, 46, 50]
        let v = [15.0, 20.0, 35.0, 40.0, 50.0];
        let got: Vec<f64> = [0.0, 40.0, 50.0, 90.0, 100.0]
            .iter()
            .map(|p| percentile(&v, *p).unwrap())
            .collect();
        assert_eq!(got, [15.0, 29.0, 35.0, 46.0, 50.0]);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None, "no data, no percentile");
    }

    #[test]
    fn dist_uses_population_std_and_any_order() {
        // numpy: mean 4, median 3, std (ddof=0) sqrt(10), p90 7.6, p95 8.8, p99 9.76
        let d = Dist::of([10.0, 1.0, 4.0, 3.0, 2.0]).unwrap();
        assert_eq!(d.count, 5);
        assert_eq!((d.mean, d.median, d.min, d.max), (4.0, 3.0, 1.0, 10.0));
        assert!((d.std - 10f64.sqrt()).abs() < 1e-12);
        for (got, want) in [(d.p90, 7.6), (d.p95, 8.8), (d.p99, 9.76)] {
            assert!((got - want).abs() < 1e-9, "{got} != {want}");
        }
        assert_eq!(Dist::of([]), None, "no samples, no distribution");
        assert_eq!(Dist::of([f64::NAN]), None);
    }

    #[test]
    fn tpot_needs_two_tokens() {
        let r = req(0, 0.0, 50.0, 10.0, 5);
        assert_eq!(r.tpot_ms(), Some(10.0));
        let one = req(0, 0.0, 50.0, 10.0, 1);
        assert_eq!(one.tpot_ms(), None);
        let unknown = RequestRecord {
            completion_tokens: None,
            ..r
        };
        assert_eq!(unknown.tpot_ms(), None, "never assume the requested length");
    }

    #[test]
    fn summary_follows_the_seed_columns() {
        let mut records = vec![RequestRecord {
            warmup: true,
            ..req(0, 0.0, 999.0, 99.0, 3)
        }];
        records.push(req(1, 1000.0, 50.0, 10.0, 11)); // e2e 150, tpot 10
        records.push(req(2, 1000.0, 100.0, 20.0, 11)); // e2e 300, tpot 20
        let mut failed = req(3, 1100.0, 10.0, 10.0, 2);
        failed.error = Some("http_500".into());
        failed.completion_tokens = None;
        records.push(failed);
        let mut short = req(4, 1300.0, 50.0, 10.0, 6); // e2e 100, tpot 10, 6 tokens instead of 11
        short.end_ms = 2000.0;
        records.push(short);

        let s = summarize(&records, &spec(100, 11), ClientCheck::default());
        assert_eq!((s.requests, s.succeeded, s.failed), (4, 3, 1));
        assert_eq!(s.errors.get("http_500"), Some(&1));
        assert_eq!(s.duration_s, 1.0); // intended 1000 → end 2000
        assert_eq!(s.qps, Some(3.0));
        assert_eq!(Dist::mean_of(&s.ttft_ms), Some((50.0 + 100.0 + 50.0) / 3.0));
        assert!((Dist::mean_of(&s.tpot_ms).unwrap() - 40.0 / 3.0).abs() < 1e-9);
        assert!((s.decode_tps.unwrap() - 1000.0 / (40.0 / 3.0)).abs() < 1e-9);
        // 100 tokens / 0.05 s = 2000, / 0.1 s = 1000, / 0.05 s = 2000 → mean 5000/3.
        assert!((s.prompt_tps.unwrap() - 5000.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.e2e_ms.as_ref().unwrap().max, 300.0);
        assert_eq!(s.itl_ms.as_ref().unwrap().count, 10 + 10 + 5);
        assert_eq!(s.output_tokens_per_s, Some(28.0));
        assert_eq!(s.total_tokens_per_s, Some(328.0));
        assert_eq!(s.output_tokens.exact, 2);
        assert_eq!(s.output_tokens.mismatched, 1);
        assert_eq!(s.output_tokens.min, Some(6));
        assert_eq!(s.input_tokens.exact, 3);
        assert_eq!(s.goodput_rps, None);
    }

    #[test]
    fn missing_usage_is_unknown_not_assumed() {
        let mut r = req(0, 0.0, 50.0, 10.0, 4);
        r.completion_tokens = None;
        r.prompt_tokens = None;
        let s = summarize(&[r], &spec(100, 4), ClientCheck::default());
        assert_eq!(s.output_tokens.unknown, 1);
        assert_eq!(s.output_tokens.exact, 0);
        assert_eq!(s.output_tokens.mean, None);
        assert_eq!(s.input_tokens.unknown, 1);
        // Measured without the counts: latency, QPS. Not measured: everything that needs a count.
        assert!(s.ttft_ms.is_some() && s.e2e_ms.is_some() && s.itl_ms.is_some());
        assert!(s.qps.is_some());
        assert_eq!(s.tpot_ms, None);
        assert_eq!(s.decode_tps, None);
        assert_eq!(s.output_tokens_per_s, None);
        assert_eq!(s.total_tokens_per_s, None);
        assert_eq!(
            s.prompt_tps, None,
            "the 100 tokens we sent are not the server's count"
        );
        // And in JSON they are null, not 0.
        let json = serde_json::to_value(&s).unwrap();
        for key in ["tpot_ms", "decode_tps", "output_tokens_per_s", "prompt_tps"] {
            assert_eq!(json[key], serde_json::Value::Null, "{key}");
        }
    }

    #[test]
    fn throughput_needs_every_count_and_one_token_has_no_tpot() {
        let mut partial = req(1, 0.0, 50.0, 10.0, 4);
        partial.completion_tokens = None;
        let records = [req(0, 0.0, 50.0, 10.0, 4), partial];
        let s = summarize(&records, &spec(100, 4), ClientCheck::default());
        // A sum over half the requests is not the throughput.
        assert_eq!(s.output_tokens_per_s, None);
        assert_eq!(s.total_tokens_per_s, None);
        // Per-request figures use the requests that have the count.
        assert_eq!(s.tpot_ms.as_ref().map(|d| d.count), Some(1));
        assert_eq!(s.prompt_tps, Some(2000.0));

        let one = [req(0, 0.0, 50.0, 10.0, 1), req(1, 0.0, 60.0, 10.0, 1)];
        let s = summarize(&one, &spec(100, 1), ClientCheck::default());
        assert_eq!((s.tpot_ms, s.decode_tps), (None, None));
        assert!(s.output_tokens_per_s.is_some_and(|x| x > 0.0));
    }

    #[test]
    fn zero_filled_summaries_of_older_results_read_as_unmeasured() {
        // What the writer before `None` stored for a server without usage: zero-filled TPOT, zero
        // speeds, and a Prompt TPS and total throughput from the lengths the client sent.
        let zeros = serde_json::json!({
            "count": 0, "mean": 0.0, "median": 0.0, "std": 0.0, "min": 0.0, "max": 0.0,
            "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0
        });
        let mut json = serde_json::to_value(summarize(
            &[req(0, 0.0, 50.0, 10.0, 4), req(1, 0.0, 50.0, 10.0, 4)],
            &spec(100, 4),
            ClientCheck::default(),
        ))
        .unwrap();
        json["tpot_ms"] = zeros;
        json["decode_tps"] = 0.0.into();
        json["output_tokens_per_s"] = 0.0.into();
        json["prompt_tps"] = 2000.0.into();
        json["total_tokens_per_s"] = 100.0.into();
        for side in ["input_tokens", "output_tokens"] {
            json[side]["exact"] = 0.into();
            json[side]["unknown"] = 2.into();
        }
        let old: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(
            old.tpot_ms, None,
            "count 0 means no samples, in any version"
        );
        let s = old.read_zero_as_unmeasured();
        assert_eq!(s.decode_tps, None);
        assert_eq!(s.output_tokens_per_s, None);
        assert_eq!(s.prompt_tps, None, "it came from the client's count");
        assert_eq!(s.total_tokens_per_s, None);
        // Measured figures stay as they were.
        assert!(s.qps.is_some_and(|q| q > 0.0));
        assert_eq!(Dist::mean_of(&s.ttft_ms), Some(50.0));

        // A complete old summary loses nothing.
        let full = summarize(
            &[req(0, 0.0, 50.0, 10.0, 4)],
            &spec(100, 4),
            ClientCheck::default(),
        );
        assert_eq!(full.clone().read_zero_as_unmeasured(), full);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let records = [
            req(0, 0.0, 50.0, 10.0, 11),  // ttft 50, tpot 10
            req(1, 0.0, 150.0, 10.0, 11), // ttft too slow
            req(2, 0.0, 50.0, 30.0, 11),  // tpot too slow
            req(3, 0.0, 50.0, 0.0, 1),    // one token: tpot counts as 0
        ];
        let mut spec = spec(100, 11);
        spec.slo = Slo {
            ttft: Some(Duration::from_millis(100)),
            tpot: Some(Duration::from_millis(20)),
            e2e: None,
        };
        let s = summarize(&records, &spec, ClientCheck::default());
        let duration = s.duration_s;
        assert!((s.goodput_rps.unwrap() - 2.0 / duration).abs() < 1e-9);
    }
}
