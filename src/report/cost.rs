//! What a token costs and how much energy it takes: per-cell economics from a stored result and the
//! experiment's `[cost]`, the 成本与能耗 section, the extra table and CSV columns. A pure function of
//! stored results and prices, so a corrected price needs only `runner report`.
//!
//! Formulas (the glossary prints the same):
//! - tokens of the measured phase = tokens/s × its duration (the server-reported counts the throughputs
//!   come from);
//! - price per hour of the server = `gpu_hour` × GPUs it held, or `vm_hour` / `vm_gpus` × GPUs it held;
//!   where the GPUs it held are unknown, a `vm_hour` price charges the whole VM (the server ran alone on
//!   it) and a `gpu_hour` price gives no cost;
//! - cost per 1M output tokens = price per hour / (output tokens/s × 3600) × 10^6; per 1M tokens the same
//!   with input + output tokens/s;
//! - J per output token = energy / output tokens; J per token = energy / (input + output tokens);
//!   kWh per 1M output tokens = energy / 3.6×10^6 / output tokens × 10^6;
//! - electricity per 1M output tokens = `kwh` × kWh per 1M output tokens (and per 1M tokens alike).
//!
//! Invariant: a figure whose inputs were not measured (no GPU telemetry, no throughput, no price) is
//! `None` and prints as `—`, never 0.

use serde::Serialize;

use super::format::{self, NONE};
use super::view::{MARK, RatioTable, Row};
use crate::experiment::Cost;
use crate::experiment::cost::Price;
use crate::plan::{CellPlan, ServerPlan};
use crate::store::CellResult;

/// A configuration "meets" its SLOs when at least this share of its measured requests met every one.
pub const SLO_SHARE: f64 = 0.99;

/// The economics of one cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Economics {
    /// GPUs charged: `Some(n)` known, `None` unknown.
    pub gpus: Option<u32>,
    /// The whole VM was charged because the GPUs held are unknown.
    pub whole_vm: bool,
    pub energy_j: Option<f64>,
    pub j_per_output_token: Option<f64>,
    pub j_per_token: Option<f64>,
    pub kwh_per_1m_output: Option<f64>,
    pub cost_per_1m_output: Option<f64>,
    pub cost_per_1m_tokens: Option<f64>,
    pub electricity_per_1m_output: Option<f64>,
    pub electricity_per_1m_tokens: Option<f64>,
}

/// `x / y` where both exist and `y` is a positive, finite amount.
fn per(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    let (x, y) = (x?, y?);
    (y > 0.0 && y.is_finite() && x.is_finite()).then(|| x / y)
}

impl Economics {
    /// A cell's economics. For a cell measured several times, the per-token and per-million figures are
    /// the means over repeats of each repeat's own, like its headline figures: its summary's throughputs
    /// are means while its duration and energy add up over repeats, so they do not multiply into one
    /// repeat's token count.
    pub fn of(cell: &CellResult, cost: Option<&Cost>) -> Economics {
        let mut e = Economics::of_measurement(&cell.summary, &cell.telemetry, cost);
        if cell.repeats.len() > 1 {
            let each: Vec<Economics> = cell
                .repeats
                .iter()
                .map(|r| Economics::of_measurement(&r.summary, &r.telemetry, cost))
                .collect();
            let mean = |f: fn(&Economics) -> Option<f64>| {
                let v: Option<Vec<f64>> = each.iter().map(f).collect();
                v.filter(|v| !v.is_empty())
                    .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            };
            e.j_per_output_token = mean(|x| x.j_per_output_token);
            e.j_per_token = mean(|x| x.j_per_token);
            e.kwh_per_1m_output = mean(|x| x.kwh_per_1m_output);
            e.cost_per_1m_output = mean(|x| x.cost_per_1m_output);
            e.cost_per_1m_tokens = mean(|x| x.cost_per_1m_tokens);
            e.electricity_per_1m_output = mean(|x| x.electricity_per_1m_output);
            e.electricity_per_1m_tokens = mean(|x| x.electricity_per_1m_tokens);
        }
        e
    }

    /// The economics of one measurement (a cell measured once, or one repeat).
    fn of_measurement(
        s: &crate::stats::Summary,
        telemetry: &crate::telemetry::Telemetry,
        cost: Option<&Cost>,
    ) -> Economics {
        let tokens = |rate: Option<f64>| rate.map(|r| r * s.duration_s);
        let (output, total) = (tokens(s.output_tokens_per_s), tokens(s.total_tokens_per_s));
        let energy_j = telemetry.gpu.as_ref().and_then(|g| g.total.energy_j);
        let gpus = telemetry.gpus.as_ref().map(|g| g.count);
        // J per token → kWh per million tokens.
        let kwh_per_million = |j: Option<f64>| j.map(|j| j / 3.6e6 * 1e6);
        let (j_per_output_token, j_per_token) = (per(energy_j, output), per(energy_j, total));
        let mut e = Economics {
            gpus,
            energy_j,
            j_per_output_token,
            j_per_token,
            kwh_per_1m_output: kwh_per_million(j_per_output_token),
            ..Economics::default()
        };
        let Some(cost) = cost else { return e };
        let per_hour = match (gpus, &cost.price) {
            (Some(0), _) => None,
            (Some(n), _) => Some(cost.gpu_hour() * f64::from(n)),
            (None, Price::VmHour { price, .. }) => {
                e.whole_vm = true;
                Some(*price)
            }
            (None, Price::GpuHour(_)) => None,
        };
        let per_million =
            |rate: Option<f64>| per(per_hour, rate.map(|r| r * 3600.0)).map(|c| c * 1e6);
        e.cost_per_1m_output = per_million(s.output_tokens_per_s);
        e.cost_per_1m_tokens = per_million(s.total_tokens_per_s);
        e.electricity_per_1m_output = cost.kwh.zip(e.kwh_per_1m_output).map(|(p, k)| p * k);
        e.electricity_per_1m_tokens = cost
            .kwh
            .zip(kwh_per_million(j_per_token))
            .map(|(p, k)| p * k);
        e
    }
}

/// The two figures a summary table row gains (right of the seed's columns).
#[derive(Debug, Clone, Serialize)]
pub struct RowCost {
    pub cost_out: String,
    pub j_out: String,
}

impl RowCost {
    pub fn none() -> RowCost {
        RowCost {
            cost_out: NONE.to_string(),
            j_out: NONE.to_string(),
        }
    }
}

/// Fills a measured row's cost and energy columns; a telemetry series with gaps over 3 s is flagged next
/// to its J/token like any other suspect number.
pub fn annotate(row: &mut Row, cell: &CellResult, cost: Option<&Cost>) {
    let e = Economics::of(cell, cost);
    row.economy = RowCost {
        cost_out: format::opt3(e.cost_per_1m_output),
        j_out: format::opt3(e.j_per_output_token),
    };
    if let Some(g) = cell.telemetry.gpu.as_ref().filter(|g| g.total.gaps) {
        row.economy.j_out.push_str(MARK);
        row.warnings.push(format!(
            "GPU 遥测有超过 3 s 的采样间隙（最长 {} s）：能耗与功率不可全信（{}）",
            format::opt3(g.total.max_gap_s),
            g.total.notes.join("；")
        ));
    }
}

/// The ratio of cost per 1M output tokens, numerator over denominator cell.
pub fn cost_ratio(num: &CellResult, den: &CellResult, cost: Option<&Cost>) -> String {
    let (n, d) = (
        Economics::of(num, cost).cost_per_1m_output,
        Economics::of(den, cost).cost_per_1m_output,
    );
    match per(n, d) {
        Some(r) => format::ratio(r),
        None => NONE.to_string(),
    }
}

/// `cells.csv` columns appended after the core ones (see `csv.rs`: never reordered, only appended).
pub const CSV_COLUMNS: &[&str] = &[
    "gpus",
    "gpus_from",
    "gpu_telemetry_source",
    "energy_j",
    "energy_method",
    "energy_integrated_j",
    "gpu_power_mean_w",
    "gpu_power_max_w",
    "gpu_util_mean_pct",
    "gpu_mem_used_max_mib",
    "gpu_mem_total_mib",
    "gpu_sm_clock_mean_mhz",
    "gpu_temp_max_c",
    "gpu_throttle_reasons",
    "gpu_telemetry_gaps",
    "j_per_output_token",
    "j_per_token",
    "kwh_per_1m_output_tokens",
    "currency",
    "cost_per_1m_output_tokens",
    "cost_per_1m_tokens",
    "electricity_cost_per_1m_output_tokens",
    "electricity_cost_per_1m_tokens",
    "server_peak_running",
    "server_peak_waiting",
    "server_peak_kv_usage",
    "server_preemptions",
];

/// The values of [`CSV_COLUMNS`] for one cell; a figure not measured is an empty field.
pub fn csv_fields(cell: &CellResult, cost: Option<&Cost>) -> Vec<String> {
    let n = super::csv::opt_num;
    let e = Economics::of(cell, cost);
    let t = &cell.telemetry;
    let g = t.gpu.as_ref().map(|g| &g.total);
    let srv = t.server.as_ref();
    let fields = vec![
        t.gpus
            .as_ref()
            .map(|g| g.count.to_string())
            .unwrap_or_default(),
        t.gpus.as_ref().map(|g| g.from.clone()).unwrap_or_default(),
        t.gpu
            .as_ref()
            .map(|g| g.source.label().to_string())
            .unwrap_or_default(),
        n(e.energy_j),
        g.and_then(|g| g.energy_method)
            .map(|m| match m {
                crate::telemetry::EnergyMethod::Counter => "counter",
                crate::telemetry::EnergyMethod::IntegratedPower => "integrated_power",
            })
            .unwrap_or_default()
            .to_string(),
        n(g.and_then(|g| g.integrated_energy_j)),
        n(g.and_then(|g| g.power_mean_w)),
        n(g.and_then(|g| g.power_max_w)),
        n(g.and_then(|g| g.util_mean_pct)),
        n(g.and_then(|g| g.mem_used_max_mib)),
        n(g.and_then(|g| g.mem_total_mib)),
        n(g.and_then(|g| g.sm_clock_mean_mhz)),
        n(g.and_then(|g| g.temp_max_c)),
        g.map(|g| g.throttle_reasons.join(";")).unwrap_or_default(),
        g.map(|g| g.gaps.to_string()).unwrap_or_default(),
        n(e.j_per_output_token),
        n(e.j_per_token),
        n(e.kwh_per_1m_output),
        cost.map(|c| c.currency.clone()).unwrap_or_default(),
        n(e.cost_per_1m_output),
        n(e.cost_per_1m_tokens),
        n(e.electricity_per_1m_output),
        n(e.electricity_per_1m_tokens),
        n(srv.and_then(|s| s.peak_running)),
        n(srv.and_then(|s| s.peak_waiting)),
        n(srv.and_then(|s| s.peak_kv_usage)),
        n(srv.and_then(|s| s.preemptions)),
    ];
    debug_assert_eq!(fields.len(), CSV_COLUMNS.len());
    fields
}

/// One row of a model's 成本与能耗 table.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    /// `FP8 · sim`, with the server variables that tell configurations apart.
    pub config: String,
    pub concurrency: String,
    pub gpus: String,
    pub cost_out: String,
    pub cost_total: String,
    pub electricity_out: String,
    pub j_out: String,
    pub j_token: String,
    pub kwh_1m: String,
    pub power_mean: String,
    pub util_mean: String,
    pub kv_peak: String,
    pub waiting_peak: String,
}

/// A model's 成本与能耗 section.
#[derive(Debug, Clone, Serialize)]
pub struct CostModel {
    pub model_id: String,
    pub model_name: String,
    /// The sentence a customer reads first.
    pub headline: String,
    /// Where the energy figures come from, or 无 GPU 遥测 and why.
    pub telemetry: String,
    pub rows: Vec<CostRow>,
    /// `c=16：NVFP4 每百万输出 token 成本为 FP8 的 0.710×`.
    pub ratios: Vec<String>,
}

/// What the prices are, for the section's first line.
pub fn basis(cost: Option<&Cost>) -> String {
    let Some(c) = cost else {
        return "未设置 [cost]：只给出能耗；在实验文件中加上 [cost]（gpu_hour 或 vm_hour + vm_gpus、currency、可选 kwh）即可计算每百万 token 成本（重新运行 `runner report` 即可，无需重测）。".into();
    };
    let price = match c.price {
        Price::GpuHour(p) => format!("每 GPU 小时 {p} {}", c.currency),
        Price::VmHour { price, gpus } => format!(
            "每 VM 小时 {price} {cur}（{gpus} 块 GPU，即每 GPU 小时 {} {cur}；占用 GPU 数未知的服务器按整机计价）",
            format::fixed3(price / f64::from(gpus)),
            cur = c.currency
        ),
    };
    match c.kwh {
        Some(k) => format!("价格：{price}；电价 {k} {}/kWh。", c.currency),
        None => format!("价格：{price}；未设置电价（kwh），不计电费。"),
    }
}

/// The 成本与能耗 sections, one per model with measured cells, in plan order.
pub fn sections(
    exp: &crate::experiment::Experiment,
    done: &[(&ServerPlan, &CellPlan, &CellResult)],
    ratios: &[RatioTable],
) -> Vec<CostModel> {
    let cost = exp.cost.as_ref();
    let mut out = Vec::new();
    for model in exp.models.values() {
        let cells: Vec<&(&ServerPlan, &CellPlan, &CellResult)> = done
            .iter()
            .filter(|(s, _, _)| s.model == model.id)
            .collect();
        if cells.is_empty() {
            continue;
        }
        let configs: Vec<&ServerPlan> = {
            let mut v: Vec<&ServerPlan> = Vec::new();
            for (s, _, _) in &cells {
                if !v.iter().any(|o| o.id == s.id) {
                    v.push(s);
                }
            }
            v
        };
        let label = |s: &ServerPlan| {
            let mut text = format!(
                "{} · {}",
                format::precision_labels(&s.precision).1,
                s.engine
            );
            for p in super::view::differing_vars(s, &configs) {
                text.push_str(&format!(" · {p}"));
            }
            text
        };
        let rows: Vec<CostRow> = cells
            .iter()
            .map(|(s, c, r)| cost_row(label(s), c, r, cost))
            .collect();
        let headline = headline(&cells, cost, &label);
        let ratio_lines = ratios
            .iter()
            .filter(|t| t.model_id == model.id)
            .flat_map(|t| {
                t.rows.iter().filter(|r| r.cost_out != NONE).map(move |r| {
                    format!(
                        "c={}：{} 每百万输出 token 成本为 {} 的 {}",
                        r.concurrency, t.numerator, t.denominator, r.cost_out
                    )
                })
            })
            .collect();
        out.push(CostModel {
            model_id: model.id.clone(),
            model_name: model.name.clone(),
            headline,
            telemetry: telemetry_line(&cells),
            rows,
            ratios: ratio_lines,
        });
    }
    out
}

fn cost_row(config: String, cell: &CellPlan, r: &CellResult, cost: Option<&Cost>) -> CostRow {
    let e = Economics::of(r, cost);
    let g = r.telemetry.gpu.as_ref().map(|g| &g.total);
    let srv = r.telemetry.server.as_ref();
    let flag = |mut text: String| {
        if g.is_some_and(|g| g.gaps) && text != NONE {
            text.push_str(MARK);
        }
        text
    };
    CostRow {
        config,
        concurrency: cell.load.concurrency.to_string(),
        gpus: match (e.gpus, e.whole_vm) {
            (Some(n), _) => n.to_string(),
            (None, true) => "整机".into(),
            (None, false) => NONE.into(),
        },
        cost_out: format::opt3(e.cost_per_1m_output),
        cost_total: format::opt3(e.cost_per_1m_tokens),
        electricity_out: format::opt3(e.electricity_per_1m_output),
        j_out: flag(format::opt3(e.j_per_output_token)),
        j_token: flag(format::opt3(e.j_per_token)),
        kwh_1m: flag(format::opt3(e.kwh_per_1m_output)),
        power_mean: flag(format::opt3(g.and_then(|g| g.power_mean_w))),
        util_mean: g
            .and_then(|g| g.util_mean_pct)
            .map(|u| format::percent(u / 100.0))
            .unwrap_or_else(|| NONE.into()),
        kv_peak: srv
            .and_then(|s| s.peak_kv_usage)
            .map(format::percent)
            .unwrap_or_else(|| NONE.into()),
        waiting_peak: srv
            .and_then(|s| s.peak_waiting)
            .map(|w| format!("{w:.0}"))
            .unwrap_or_else(|| NONE.into()),
    }
}

/// Share of a cell's measured requests that met every SLO (over every repeat's requests); `None`
/// without SLOs.
fn slo_share(r: &CellResult) -> Option<f64> {
    let single = [&r.summary];
    let parts: Vec<&crate::stats::Summary> = if r.repeats.is_empty() {
        single.to_vec()
    } else {
        r.repeats.iter().map(|x| &x.summary).collect()
    };
    let met: Option<f64> = parts
        .iter()
        .map(|s| s.goodput_rps.map(|g| g * s.duration_s))
        .sum();
    let requests: u64 = parts.iter().map(|s| s.requests).sum();
    (requests > 0)
        .then(|| met.map(|m| m / requests as f64))
        .flatten()
}

/// `TTFT ≤ 2s、TPOT ≤ 50ms`.
fn slo_text(cell: &CellPlan) -> Option<String> {
    let slo = &cell.load.slo;
    let parts: Vec<String> = [("TTFT", slo.ttft), ("TPOT", slo.tpot), ("E2E", slo.e2e)]
        .into_iter()
        .filter_map(|(name, d)| Some(format!("{name} ≤ {}", humantime::format_duration(d?))))
        .collect();
    (!parts.is_empty()).then(|| parts.join("、"))
}

/// The sentence a customer reads first: the cheapest configuration, among those that meet the SLOs
/// where SLOs are set.
fn headline(
    cells: &[&(&ServerPlan, &CellPlan, &CellResult)],
    cost: Option<&Cost>,
    label: &dyn Fn(&ServerPlan) -> String,
) -> String {
    let Some(c) = cost else {
        return "未设置 [cost]，无法给出每百万 token 成本。".into();
    };
    let priced: Vec<(f64, &(&ServerPlan, &CellPlan, &CellResult))> = cells
        .iter()
        .filter_map(|x| Some((Economics::of(x.2, cost).cost_per_1m_output?, *x)))
        .collect();
    if priced.is_empty() {
        return "每百万输出 token 成本无法计算：没有测得的输出吞吐，或服务器占用的 GPU 数未知（按 gpu_hour 计价时需要 CUDA_VISIBLE_DEVICES 或本机 GPU 遥测）。".into();
    }
    let cheapest = |list: &[(f64, &(&ServerPlan, &CellPlan, &CellResult))]| {
        list.iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(v, (s, cell, _))| {
                format!(
                    "{}，c={}：每百万输出 token {} {}",
                    label(s),
                    cell.load.concurrency,
                    format::fixed3(*v),
                    c.currency
                )
            })
    };
    let slo = cells.iter().find_map(|(_, cell, _)| slo_text(cell));
    let share = format!("{:.0}%", SLO_SHARE * 100.0);
    match slo {
        None => format!(
            "**最便宜的配置**：{}（未设置 slo_ttft / slo_tpot / slo_e2e，未考虑延迟）。",
            cheapest(&priced).unwrap_or_default()
        ),
        Some(slo) => {
            let meeting: Vec<_> = priced
                .iter()
                .filter(|(_, x)| slo_share(x.2).is_some_and(|s| s >= SLO_SHARE))
                .copied()
                .collect();
            match cheapest(&meeting) {
                Some(best) => {
                    format!("**满足 {slo}（≥ {share} 的请求达标）的最便宜配置**：{best}。")
                }
                None => format!(
                    "**没有配置满足 {slo}（≥ {share} 的请求达标）**；不考虑延迟时最便宜的是 {}。",
                    cheapest(&priced).unwrap_or_default()
                ),
            }
        }
    }
}

/// Where a model's energy figures come from, or 无 GPU 遥测 and why.
fn telemetry_line(cells: &[&(&ServerPlan, &CellPlan, &CellResult)]) -> String {
    let mut sources: Vec<String> = Vec::new();
    let mut interval = None;
    for (_, _, r) in cells {
        if let Some(g) = &r.telemetry.gpu {
            interval.get_or_insert(g.interval_ms);
            let text = match g.total.energy_method {
                Some(crate::telemetry::EnergyMethod::Counter) => {
                    format!("{}（能耗取自 NVML 能耗计数器）", g.source.label())
                }
                _ => format!("{}（能耗为功率的梯形积分）", g.source.label()),
            };
            if !sources.contains(&text) {
                sources.push(text);
            }
        }
    }
    if sources.is_empty() {
        let why = cells
            .iter()
            .find_map(|(_, _, r)| r.telemetry.gpu_note.as_deref().map(format::note_zh))
            .unwrap_or_else(|| "结果中没有 GPU 遥测记录".into());
        return format!("无 GPU 遥测（{why}）：能耗、功率与利用率列为 —。");
    }
    let missing = cells
        .iter()
        .filter(|(_, _, r)| r.telemetry.gpu.is_none())
        .count();
    let mut line = format!(
        "GPU 遥测：{}，每 {} ms 采样，只统计测得阶段。",
        sources.join("、"),
        interval.unwrap_or_default()
    );
    if missing > 0 {
        line.push_str(&format!("{missing} 个测试点无 GPU 遥测（列为 —）。"));
    }
    line
}
