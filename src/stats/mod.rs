//! Summaries computed from per-request records: the seed report's columns and vLLM `bench serve`
//! compatible statistics. Pure functions over plain data; every number here can be recomputed from a
//! cell's `requests.jsonl`.
//!
//! CONTRACT (other modules rely on these names): the load generator writes one [`RequestRecord`] per
//! request ([`record`]) and fills [`Summary`] through
//! [`summarize`]; the store writes it inside each cell's `result.json`; the report reads it. Fields may be
//! added; existing ones keep their meaning.

pub mod record;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use record::{ErrorKind, RequestRecord};

use crate::experiment::load::{LoadSpec, Slo};

/// Distribution of one metric over the successful measured requests, in milliseconds.
/// `std` is the population standard deviation; percentiles use linear interpolation (NumPy's default),
/// as vLLM does, so numbers compare with its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Scheduling lag of the client's runtime (how late a timer or read wake-up ran), ms.
    pub lag_ms_p50: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    /// Most requests in flight at once (proves the offered load).
    pub peak_inflight: u32,
    /// True when lag was high enough that TTFT/ITL may be inflated by the client; flagged in the report.
    pub saturated: bool,
    /// CPU time (user + system) the client process used during the point, seconds.
    #[serde(default)]
    pub cpu_s: f64,
}

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
    /// Completed (successful) requests per second over the measured phase.
    pub qps: f64,
    /// Mean over requests of input tokens / TTFT (a per-request prefill speed), tokens/s.
    pub prompt_tps: f64,
    /// 1000 / mean TPOT in ms (a per-request decode speed), tokens/s.
    pub decode_tps: f64,

    // vLLM-compatible distributions (ms).
    pub ttft_ms: Dist,
    /// (E2E − TTFT) / (output tokens − 1), per request with more than one output token.
    pub tpot_ms: Dist,
    /// Gaps between consecutive content chunks, over all requests.
    pub itl_ms: Dist,
    pub e2e_ms: Dist,
    /// Time requests waited at the client's own concurrency gate before being sent.
    pub queue_ms: Dist,

    // Aggregate throughput over the measured phase.
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    /// Requests per second meeting every configured SLO; `None` without SLOs.
    pub goodput_rps: Option<f64>,

    pub input_tokens: TokenCheck,
    pub output_tokens: TokenCheck,
    pub client: ClientCheck,
}

/// The `p`-th percentile (0..=100) of sorted data by linear interpolation between the closest ranks,
/// NumPy's default (`method="linear"`): rank = p/100 × (n − 1). 0 for no data.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

impl Dist {
    /// Distribution of `values` (any order). Empty input gives all zeros with `count = 0`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Dist {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Dist::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        // Population standard deviation (ddof = 0), as NumPy's `std` and vLLM report it.
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let p50 = percentile(&v, 50.0);
        Dist {
            count: v.len() as u64,
            mean,
            median: p50,
            std,
            min: v[0],
            max: v[v.len() - 1],
            p50,
            p90: percentile(&v, 90.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
        }
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

/// Summarises one load point. Warm-up records are ignored; latency statistics and token checks cover
/// the successful measured requests (failed ones are counted by kind in `errors`); throughputs divide by
/// the measured phase, from the earliest intended send to the last completion.
pub fn summarize(records: &[RequestRecord], spec: &LoadSpec, client: ClientCheck) -> Summary {
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let ok: Vec<&RequestRecord> = measured.iter().copied().filter(|r| r.ok()).collect();

    let mut errors = BTreeMap::new();
    for kind in measured.iter().filter_map(|r| r.error.as_deref()) {
        *errors.entry(kind.to_string()).or_insert(0u64) += 1;
    }

    let start = measured
        .iter()
        .map(|r| r.intended_ms)
        .fold(f64::INFINITY, f64::min);
    let end = measured
        .iter()
        .map(|r| r.end_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let duration_s = if end > start {
        (end - start) / 1000.0
    } else {
        0.0
    };
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };

    let ttft_ms = Dist::of(ok.iter().filter_map(|r| r.ttft_ms));
    let tpot_ms = Dist::of(ok.iter().filter_map(|r| r.tpot_ms()));
    let itl_ms = Dist::of(ok.iter().flat_map(|r| r.itl_ms()));
    let e2e_ms = Dist::of(ok.iter().filter_map(|r| r.e2e_ms));
    let queue_ms = Dist::of(measured.iter().map(|r| r.sent_ms - r.intended_ms));

    // Prompt TPS as the seed computes it: input tokens / TTFT per request, then averaged.
    let prefill: Vec<f64> = ok
        .iter()
        .filter_map(|r| match (r.input_tokens(), r.ttft_ms) {
            (Some(n), Some(t)) if t > 0.0 => Some(f64::from(n) / (t / 1000.0)),
            _ => None,
        })
        .collect();
    let prompt_tps = if prefill.is_empty() {
        0.0
    } else {
        prefill.iter().sum::<f64>() / prefill.len() as f64
    };
    let decode_tps = if tpot_ms.mean > 0.0 {
        1000.0 / tpot_ms.mean
    } else {
        0.0
    };

    let output: u64 = ok
        .iter()
        .filter_map(|r| r.completion_tokens)
        .map(u64::from)
        .sum();
    let input: u64 = ok
        .iter()
        .filter_map(|r| r.input_tokens())
        .map(u64::from)
        .sum();

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
        output_tokens_per_s: per_s(output as f64),
        total_tokens_per_s: per_s((input + output) as f64),
        goodput_rps: goodput(&ok, &spec.slo).map(|n| per_s(n as f64)),
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
            .map(|p| percentile(&v, *p))
            .collect();
        assert_eq!(got, [15.0, 29.0, 35.0, 46.0, 50.0]);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn dist_uses_population_std_and_any_order() {
        // numpy: mean 4, median 3, std (ddof=0) sqrt(10), p90 7.6, p95 8.8, p99 9.76
        let d = Dist::of([10.0, 1.0, 4.0, 3.0, 2.0]);
        assert_eq!(d.count, 5);
        assert_eq!((d.mean, d.median, d.min, d.max), (4.0, 3.0, 1.0, 10.0));
        assert!((d.std - 10f64.sqrt()).abs() < 1e-12);
        for (got, want) in [(d.p90, 7.6), (d.p95, 8.8), (d.p99, 9.76)] {
            assert!((got - want).abs() < 1e-9, "{got} != {want}");
        }
        assert_eq!(Dist::of([]), Dist::default());
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
        assert_eq!(s.qps, 3.0);
        assert_eq!(s.ttft_ms.mean, (50.0 + 100.0 + 50.0) / 3.0);
        assert!((s.tpot_ms.mean - 40.0 / 3.0).abs() < 1e-9);
        assert!((s.decode_tps - 1000.0 / (40.0 / 3.0)).abs() < 1e-9);
        // 100 tokens / 0.05 s = 2000, / 0.1 s = 1000, / 0.05 s = 2000 → mean 5000/3.
        assert!((s.prompt_tps - 5000.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.e2e_ms.max, 300.0);
        assert_eq!(s.itl_ms.count, 10 + 10 + 5);
        assert_eq!(s.output_tokens_per_s, 28.0);
        assert_eq!(s.total_tokens_per_s, 328.0);
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
        assert_eq!(s.output_tokens_per_s, 0.0);
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
