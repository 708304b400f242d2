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

pub use record::{ErrorKind, RequestRecord};

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
    /// Scheduling lag of the client's runtime (how late a timer or read wake-up ran), ms; `None` when
    /// the lag monitor took no sample.
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_ms_max: Option<f64>,
    /// Most requests in flight at once (proves the offered load).
    pub peak_inflight: u32,
    /// True when lag was high enough that TTFT/ITL may be inflated by the client; flagged in the report.
    pub saturated: bool,
    /// CPU time (user + system) the client process used during the point, seconds.
    #[serde(default)]
    pub cpu_s: f64,
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
        let mut check = TokenCheck {
            expected,
            ..TokenCheck::default()
        };
        let mut sum = 0u64;
        for r in reported {
            match r {
                None => check.unknown += 1,
                Some(n) => {
                    if n == expected {
                        check.exact += 1;
                    } else {
                        check.mismatched += 1;
                    }
                    sum += u64::from(n);
                    check.min = Some(check.min.map_or(n, |m| m.min(n)));
                    check.max = Some(check.max.map_or(n, |m| m.max(n)));
                }
            }
        }
        let known = check.exact + check.mismatched;
        check.mean = (known > 0).then(|| sum as f64 / known as f64);
        check
    }
}

/// The measured phase, ms on the point's clock: from the first measured request's intended send to the
/// last measured request's end (the interval every throughput divides by; telemetry summarizes the same
/// one). `None` without measured requests.
pub fn measured_span(records: &[RequestRecord]) -> Option<(f64, f64)> {
    let measured = records.iter().filter(|r| !r.warmup);
    let start = measured.clone().map(|r| r.intended_ms).reduce(f64::min)?;
    let end = measured.map(|r| r.end_ms).reduce(f64::max)?;
    Some((start, end))
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
pub fn summarize(records: &[RequestRecord], spec: &LoadSpec, client: ClientCheck) -> Summary {
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.ok()).collect();

    let mut errors = BTreeMap::new();
    for kind in measured.iter().filter_map(|r| r.error.as_deref()) {
        *errors.entry(kind.to_string()).or_insert(0u64) += 1;
    }

    let duration_s = match measured_span(records) {
        Some((start, end)) if end > start => (end - start) / 1000.0,
        _ => 0.0,
    };
    let per_s = |x: f64| (duration_s > 0.0).then(|| x / duration_s);

    let ttft_ms = Dist::of(ok.iter().filter_map(|r| r.ttft_ms));
    let tpot_ms = Dist::of(ok.iter().filter_map(|r| r.tpot_ms()));
    let itl_ms = Dist::of(ok.iter().flat_map(|r| r.itl_ms()));
    let e2e_ms = Dist::of(ok.iter().filter_map(|r| r.e2e_ms));
    let queue_ms = Dist::of(measured.iter().map(|r| r.sent_ms - r.intended_ms));

    // Prompt TPS as the seed computes it: input tokens / TTFT per request, then averaged.
    let prefill = ok
        .iter()
        .filter_map(|r| match (r.prompt_tokens, r.ttft_ms) {
            (Some(n), Some(t)) if t > 0.0 => Some(f64::from(n) / (t / 1000.0)),
            _ => None,
        });
    let prompt_tps = Dist::mean_of(&Dist::of(prefill));
    let decode_tps = Dist::mean_of(&tpot_ms)
        .filter(|m| *m > 0.0)
        .map(|m| 1000.0 / m);

    // `None` as soon as one successful request lacks the server's count.
    let total = |count: fn(&RequestRecord) -> Option<u32>| -> Option<u64> {
        ok.iter().map(|r| count(r).map(u64::from)).sum()
    };
    let output = total(|r| r.completion_tokens);
    let input = total(|r| r.prompt_tokens);

    Summary {
        requests: measured.len() as u64,
        succeeded: ok.len() as u64,
        failed: (measured.len() - ok.len()) as u64,
        errors,
        duration_s,
        qps: per_s(ok.len() as f64),
        prompt_tps,
        decode_tps,
        ttft_ms,
        tpot_ms,
        itl_ms,
        e2e_ms,
        queue_ms,
        output_tokens_per_s: output.and_then(|n| per_s(n as f64)),
        total_tokens_per_s: input.zip(output).and_then(|(i, o)| per_s((i + o) as f64)),
        goodput_rps: goodput(&ok, &spec.slo).and_then(|n| per_s(n as f64)),
        input_tokens: TokenCheck::of(spec.input_tokens, ok.iter().map(|r| r.prompt_tokens)),
        output_tokens: TokenCheck::of(spec.output_tokens, ok.iter().map(|r| r.completion_tokens)),
        client,
    }
}

/// Successful requests meeting every SLO that is set; `None` when no SLO is set. As in vLLM, a request
/// with a single output token has TPOT 0 for this purpose.
fn goodput(ok: &[&RequestRecord], slo: &Slo) -> Option<u64> {
    if slo.ttft.is_none() && slo.tpot.is_none() && slo.e2e.is_none() {
        return None;
    }
    let within = |limit: Option<std::time::Duration>, value: Option<f64>| match (limit, value) {
        (None, _) => true,
        (Some(limit), Some(v)) => v <= limit.as_secs_f64() * 1000.0,
        (Some(_), None) => false,
    };
    let met = ok
        .iter()
        .filter(|r| {
            within(slo.ttft, r.ttft_ms)
                && within(slo.tpot, Some(r.tpot_ms().unwrap_or(0.0)))
                && within(slo.e2e, r.e2e_ms)
        })
        .count();
    Some(met as u64)
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
