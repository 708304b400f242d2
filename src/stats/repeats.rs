//! One load point measured several times (`[load] repeats`): the cell's summary from its repeats'
//! summaries. Pure; each repeat's own summary stays beside it in `result.json`.
//!
//! The rules, the same for every figure so that one sentence explains a repeated row:
//! - Rates, speeds and every statistic of a latency distribution (mean, median, percentiles, standard
//!   deviation) are the **mean over repeats of each repeat's figure**. The headline figures (QPS, Prompt
//!   TPS, Decode TPS, TTFT, E2E, TPOT, output throughput) are therefore means over repeats, and their
//!   spread over repeats is what [`super::interval`] turns into a confidence interval.
//! - Counts add up (requests, errors, samples), so does the measured time; minima and maxima are the
//!   extremes over all repeats; token checks are pooled over every request.
//! - The client check is the worst repeat's: the highest scheduling lag, saturated when any repeat was,
//!   the lowest peak of requests in flight (so a repeat that never reached the concurrency still shows);
//!   CPU time adds up.
//! - A figure one repeat lacks is missing for the cell (`None`): a mean over the repeats that have it
//!   would look like a mean over all of them.

use std::collections::BTreeMap;

use super::{ClientCheck, Dist, Summary, TokenCheck};

/// Every value, or `None` as soon as one is missing.
pub(crate) fn all<T>(values: impl IntoIterator<Item = Option<T>>) -> Option<Vec<T>> {
    values.into_iter().collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The mean over repeats of a figure every repeat has.
pub(crate) fn mean_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    all(values).filter(|v| !v.is_empty()).map(|v| mean(&v))
}

/// The extreme of the figures that exist (`pick` is `f64::max` or `f64::min`).
fn extreme(
    values: impl IntoIterator<Item = Option<f64>>,
    pick: fn(f64, f64) -> f64,
) -> Option<f64> {
    values.into_iter().flatten().reduce(pick)
}

/// The cell's summary from its repeats' summaries (see the module's rules); `None` without repeats.
pub fn combine(parts: &[Summary]) -> Option<Summary> {
    let first = parts.first()?;
    let sum = |f: fn(&Summary) -> u64| parts.iter().map(f).sum::<u64>();
    let each = |f: fn(&Summary) -> Option<f64>| mean_of(parts.iter().map(f));
    let dist = |f: fn(&Summary) -> &Option<Dist>| combine_dists(parts.iter().map(f));
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (kind, n) in parts.iter().flat_map(|s| &s.errors) {
        *errors.entry(kind.clone()).or_insert(0) += n;
    }
    Some(Summary {
        requests: sum(|s| s.requests),
        succeeded: sum(|s| s.succeeded),
        failed: sum(|s| s.failed),
        errors,
        duration_s: parts.iter().map(|s| s.duration_s).sum(),
        qps: each(|s| s.qps),
        prompt_tps: each(|s| s.prompt_tps),
        decode_tps: each(|s| s.decode_tps),
        ttft_ms: dist(|s| &s.ttft_ms),
        tpot_ms: dist(|s| &s.tpot_ms),
        itl_ms: dist(|s| &s.itl_ms),
        e2e_ms: dist(|s| &s.e2e_ms),
        queue_ms: dist(|s| &s.queue_ms),
        output_tokens_per_s: each(|s| s.output_tokens_per_s),
        total_tokens_per_s: each(|s| s.total_tokens_per_s),
        goodput_rps: each(|s| s.goodput_rps),
        input_tokens: pool_tokens(
            first.input_tokens.expected,
            parts.iter().map(|s| &s.input_tokens),
        ),
        output_tokens: pool_tokens(
            first.output_tokens.expected,
            parts.iter().map(|s| &s.output_tokens),
        ),
        client: worst_client(parts.iter().map(|s| &s.client)),
        // Known only when every repeat counted them.
        new_connections: parts.iter().map(|s| s.new_connections).sum(),
    })
}

/// Means of each statistic, the sample counts added, the extremes kept; `None` when a repeat has no
/// distribution.
fn combine_dists<'a>(dists: impl Iterator<Item = &'a Option<Dist>> + Clone) -> Option<Dist> {
    let d: Vec<&Dist> = dists.map(Option::as_ref).collect::<Option<_>>()?;
    if d.is_empty() {
        return None;
    }
    let m = |f: fn(&Dist) -> f64| mean(&d.iter().map(|x| f(x)).collect::<Vec<_>>());
    Some(Dist {
        count: d.iter().map(|x| x.count).sum(),
        mean: m(|x| x.mean),
        median: m(|x| x.median),
        std: m(|x| x.std),
        min: d.iter().map(|x| x.min).fold(f64::INFINITY, f64::min),
        max: d.iter().map(|x| x.max).fold(f64::NEG_INFINITY, f64::max),
        p50: m(|x| x.p50),
        p90: m(|x| x.p90),
        p95: m(|x| x.p95),
        p99: m(|x| x.p99),
    })
}

/// Every request's count, as if all repeats were one point: the mean weighted by the requests that
/// reported a count.
fn pool_tokens<'a>(
    expected: u32,
    checks: impl Iterator<Item = &'a TokenCheck> + Clone,
) -> TokenCheck {
    let mut out = TokenCheck {
        expected,
        ..TokenCheck::default()
    };
    let mut weighted = 0.0;
    for c in checks {
        out.exact += c.exact;
        out.mismatched += c.mismatched;
        out.unknown += c.unknown;
        out.min = [out.min, c.min].into_iter().flatten().min();
        out.max = [out.max, c.max].into_iter().flatten().max();
        if let Some(m) = c.mean {
            weighted += m * (c.exact + c.mismatched) as f64;
        }
    }
    let known = out.exact + out.mismatched;
    out.mean = (known > 0).then(|| weighted / known as f64);
    out
}

fn worst_client<'a>(checks: impl Iterator<Item = &'a ClientCheck> + Clone) -> ClientCheck {
    ClientCheck {
        lag_ms_p50: extreme(checks.clone().map(|c| c.lag_ms_p50), f64::max),
        lag_ms_p99: extreme(checks.clone().map(|c| c.lag_ms_p99), f64::max),
        lag_ms_max: extreme(checks.clone().map(|c| c.lag_ms_max), f64::max),
        read_lag_ms_p50: extreme(checks.clone().map(|c| c.read_lag_ms_p50), f64::max),
        read_lag_ms_p99: extreme(checks.clone().map(|c| c.read_lag_ms_p99), f64::max),
        read_lag_ms_max: extreme(checks.clone().map(|c| c.read_lag_ms_max), f64::max),
        peak_inflight: checks.clone().map(|c| c.peak_inflight).min().unwrap_or(0),
        saturated: checks.clone().any(|c| c.saturated),
        cpu_s: checks.clone().map(|c| c.cpu_s).sum(),
        // Connections were opened per repeat: the fewest any repeat had warm, the longest it took.
        connections_warm: checks.clone().filter_map(|c| c.connections_warm).min(),
        connect_ms: extreme(checks.clone().map(|c| c.connect_ms), f64::max),
        // Each repeat has its own time origin: the cell has none.
        t0_mono_ns: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(mean: f64, min: f64, max: f64, count: u64) -> Dist {
        Dist {
            count,
            mean,
            median: mean,
            std: 1.0,
            min,
            max,
            p50: mean,
            p90: max,
            p95: max,
            p99: max,
        }
    }

    fn repeat(qps: f64, ttft: f64, out: Option<f64>) -> Summary {
        Summary {
            requests: 12,
            succeeded: 11,
            failed: 1,
            errors: BTreeMap::from([("timeout".to_string(), 1)]),
            duration_s: 2.0,
            qps: Some(qps),
            prompt_tps: Some(1000.0 * qps),
            decode_tps: Some(100.0 + qps),
            ttft_ms: Some(dist(ttft, ttft - 5.0, ttft + 5.0, 11)),
            tpot_ms: Some(dist(10.0, 9.0, 11.0, 11)),
            e2e_ms: Some(dist(700.0, 600.0, 800.0, 11)),
            output_tokens_per_s: out,
            output_tokens: TokenCheck::of(64, [Some(64); 11]),
            input_tokens: TokenCheck::of(1000, [Some(1000); 11]),
            client: ClientCheck {
                lag_ms_p99: Some(qps),
                peak_inflight: 4,
                cpu_s: 0.5,
                ..ClientCheck::default()
            },
            ..Summary::default()
        }
    }

    #[test]
    fn headline_figures_are_means_over_repeats_and_counts_add_up() {
        let parts = [
            repeat(2.0, 30.0, Some(100.0)),
            repeat(3.0, 40.0, Some(110.0)),
            repeat(4.0, 50.0, Some(120.0)),
        ];
        let s = combine(&parts).unwrap();
        assert_eq!((s.requests, s.succeeded, s.failed), (36, 33, 3));
        assert_eq!(s.errors.get("timeout"), Some(&3));
        assert_eq!(s.duration_s, 6.0);
        assert_eq!(s.qps, Some(3.0));
        assert_eq!(s.prompt_tps, Some(3000.0));
        assert_eq!(s.decode_tps, Some(103.0));
        assert_eq!(s.output_tokens_per_s, Some(110.0));
        let ttft = s.ttft_ms.unwrap();
        assert_eq!(
            (ttft.count, ttft.mean, ttft.min, ttft.max),
            (33, 40.0, 25.0, 55.0)
        );
        assert_eq!(s.output_tokens.exact, 33);
        assert_eq!(s.output_tokens.mean, Some(64.0));
        assert_eq!(s.client.lag_ms_p99, Some(4.0), "the worst repeat");
        assert_eq!(s.client.cpu_s, 1.5);
        // Unmeasured everywhere stays unmeasured.
        assert_eq!((s.goodput_rps, s.itl_ms), (None, None));
        assert_eq!(combine(&[]), None);
    }

    #[test]
    fn a_figure_one_repeat_lacks_is_missing_for_the_cell() {
        let mut short = repeat(3.0, 40.0, None);
        short.client.peak_inflight = 2;
        short.client.saturated = true;
        short.tpot_ms = None;
        let s = combine(&[repeat(2.0, 30.0, Some(100.0)), short]).unwrap();
        assert_eq!(s.output_tokens_per_s, None, "not a mean over one repeat");
        assert_eq!(s.tpot_ms, None);
        assert_eq!(s.qps, Some(2.5));
        assert_eq!(
            s.client.peak_inflight, 2,
            "the repeat that never reached it"
        );
        assert!(s.client.saturated);
    }

    #[test]
    fn one_repeat_is_itself() {
        let one = repeat(2.0, 30.0, Some(100.0));
        assert_eq!(combine(std::slice::from_ref(&one)).unwrap(), one);
    }
}
