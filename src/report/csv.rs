//! `cells.csv`: one row per stored cell result, for pandas or Excel.
//!
//! Invariant: the columns are stable. [`CORE_COLUMNS`] come first, always, in this order (a new column is
//! only ever appended to it); then the telemetry, energy and cost columns of [`super::cost::CSV_COLUMNS`]
//! (likewise only appended to); then one `var.NAME` column per extra matrix variable found in the
//! results, sorted by name. Numbers are written with full precision (the report rounds, the CSV does not); a value
//! that does not exist or was not measured (`None`) is an empty field, never 0. `total_tokens_per_s`
//! counts input and output tokens as the server reported them. For a point measured several times the
//! figures are those of `result.json`'s summary (headline figures: means over repeats), and the
//! `*_ci95_lo`/`*_ci95_hi` columns give their 95 % intervals.

use super::metric::Metric;
use crate::stats::Dist;
use crate::store::CellResult;

/// The fixed leading columns. Times are milliseconds, throughputs per second, rates 0..1.
pub const CORE_COLUMNS: &[&str] = &[
    "id",
    "server_id",
    "model",
    "precision",
    "engine",
    "concurrency",
    "requests",
    "succeeded",
    "failed",
    "duration_s",
    "qps",
    "prompt_tps",
    "decode_tps",
    "ttft_mean_ms",
    "ttft_median_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_median_ms",
    "tpot_p99_ms",
    "itl_mean_ms",
    "itl_p99_ms",
    "e2e_mean_ms",
    "e2e_median_ms",
    "e2e_p99_ms",
    "queue_mean_ms",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "goodput_rps",
    "input_tokens_expected",
    "input_tokens_mean",
    "input_tokens_mismatched",
    "output_tokens_expected",
    "output_tokens_mean",
    "output_tokens_mismatched",
    "output_tokens_unknown",
    "prefix_cache_hit_rate",
    "client_lag_p99_ms",
    "client_peak_inflight",
    "client_saturated",
    "engine_version",
    "command",
    "started_at",
    "finished_at",
    "hash",
    "input_tokens_unknown",
    // How many times the point was measured, then the 95 % interval over repeats of each headline
    // figure (in `Metric::ALL` order; empty for a point measured once).
    "repeats",
    "qps_ci95_lo",
    "qps_ci95_hi",
    "prompt_tps_ci95_lo",
    "prompt_tps_ci95_hi",
    "decode_tps_ci95_lo",
    "decode_tps_ci95_hi",
    "output_tokens_per_s_ci95_lo",
    "output_tokens_per_s_ci95_hi",
    "ttft_mean_ms_ci95_lo",
    "ttft_mean_ms_ci95_hi",
    "e2e_mean_ms_ci95_lo",
    "e2e_mean_ms_ci95_hi",
    "tpot_mean_ms_ci95_lo",
    "tpot_mean_ms_ci95_hi",
];

/// Variables that already have a core column.
const CORE_VARS: &[&str] = &["model", "precision", "engine", "concurrency"];

/// The CSV bytes for `cells`, in the order given; costs priced with `cost` where given.
pub fn to_csv(
    cells: &[&CellResult],
    cost: Option<&crate::experiment::Cost>,
) -> anyhow::Result<Vec<u8>> {
    let mut extra: Vec<&str> = cells
        .iter()
        .flat_map(|c| c.vars.keys().map(String::as_str))
        .filter(|k| !CORE_VARS.contains(k))
        .collect();
    extra.sort_unstable();
    extra.dedup();

    let mut w = ::csv::Writer::from_writer(Vec::new());
    let header: Vec<String> = CORE_COLUMNS
        .iter()
        .chain(super::cost::CSV_COLUMNS)
        .map(|c| c.to_string())
        .chain(extra.iter().map(|k| format!("var.{k}")))
        .collect();
    w.write_record(&header)?;
    for cell in cells {
        let mut record = core_fields(cell);
        record.extend(super::cost::csv_fields(cell, cost));
        record.extend(
            extra
                .iter()
                .map(|k| cell.vars.get(*k).map(|v| v.to_string()).unwrap_or_default()),
        );
        w.write_record(&record)?;
    }
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

fn num(x: f64) -> String {
    if x.is_finite() {
        x.to_string()
    } else {
        String::new()
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// A measured number, or an empty field.
pub(super) fn opt_num(x: Option<f64>) -> String {
    x.map(num).unwrap_or_default()
}

/// One statistic of a distribution that may not exist.
fn stat(d: &Option<Dist>, f: fn(&Dist) -> f64) -> String {
    opt_num(d.as_ref().map(f))
}

fn core_fields(c: &CellResult) -> Vec<String> {
    let s = &c.summary;
    let concurrency = c
        .vars
        .get("concurrency")
        .map(|v| v.to_string())
        .or_else(|| {
            c.load
                .get("concurrency")
                .map(|v| v.to_string().trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let fields = vec![
        c.id.clone(),
        c.server_id.clone(),
        c.model.clone(),
        c.precision.clone(),
        c.engine.clone(),
        concurrency,
        s.requests.to_string(),
        s.succeeded.to_string(),
        s.failed.to_string(),
        num(s.duration_s),
        opt_num(s.qps),
        opt_num(s.prompt_tps),
        opt_num(s.decode_tps),
        stat(&s.ttft_ms, |d| d.mean),
        stat(&s.ttft_ms, |d| d.median),
        stat(&s.ttft_ms, |d| d.p99),
        stat(&s.tpot_ms, |d| d.mean),
        stat(&s.tpot_ms, |d| d.median),
        stat(&s.tpot_ms, |d| d.p99),
        stat(&s.itl_ms, |d| d.mean),
        stat(&s.itl_ms, |d| d.p99),
        stat(&s.e2e_ms, |d| d.mean),
        stat(&s.e2e_ms, |d| d.median),
        stat(&s.e2e_ms, |d| d.p99),
        stat(&s.queue_ms, |d| d.mean),
        opt_num(s.output_tokens_per_s),
        opt_num(s.total_tokens_per_s),
        opt_num(s.goodput_rps),
        s.input_tokens.expected.to_string(),
        opt_num(s.input_tokens.mean),
        s.input_tokens.mismatched.to_string(),
        s.output_tokens.expected.to_string(),
        opt_num(s.output_tokens.mean),
        s.output_tokens.mismatched.to_string(),
        s.output_tokens.unknown.to_string(),
        opt_num(c.server_metrics.prefix_cache_hit_rate),
        opt_num(s.client.lag_ms_p99),
        s.client.peak_inflight.to_string(),
        s.client.saturated.to_string(),
        opt(c.engine_version.as_deref().map(str::trim)),
        c.command.clone(),
        c.started_at.clone(),
        c.finished_at.clone(),
        c.hash.clone(),
        s.input_tokens.unknown.to_string(),
        c.repeats.len().max(1).to_string(),
    ];
    let mut fields = fields;
    for m in Metric::ALL {
        let interval = m.interval(c);
        fields.push(opt_num(interval.map(|i| i.lo)));
        fields.push(opt_num(interval.map(|i| i.hi)));
    }
    debug_assert_eq!(fields.len(), CORE_COLUMNS.len());
    fields
}
