//! The report's view model: plain, pre-formatted data that the templates print. Built from the plan (what
//! should exist), the stored results (what was measured) and the experiment's static facts only.
//!
//! Invariants: every cell of the plan appears in exactly one table row, measured or not (a missing result
//! is a 未完成/失败 row, never a silently shorter table); every warning attached to a number also appears
//! in the table's warning list with the cell it belongs to; numbers are formatted here, never in the
//! templates, so a custom template cannot print them differently by accident; a figure that was not
//! measured prints as `—` and has no chart point, never 0.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde::Serialize;

use super::format::{self, NONE};
use crate::envinfo::Environment;
use crate::experiment::load::PromptMode;
use crate::experiment::{AXES, Experiment};
use crate::plan::{CellPlan, Plan, ServerPlan};
use crate::stats::{Dist, TokenCheck};
use crate::store::{CellFailure, CellResult, ServerRecord, ServerStatus};

/// The warning marker placed right after a suspect number.
pub const MARK: &str = " ⚠";

/// What the store holds, indexed for the report.
pub struct Stored {
    /// Results by cell id.
    pub results: HashMap<String, CellResult>,
    pub failures: HashMap<String, CellFailure>,
    pub servers: HashMap<String, ServerRecord>,
    pub environment: Option<Environment>,
    /// Cells of the plan whose `result.json` exists but could not be read: cell id → the problem.
    pub unreadable_cells: HashMap<String, String>,
    /// Every stored file that could not be read (`path: error`), skipped with a warning.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// A result with the plan's settings.
    Done,
    /// A result measured with other settings (the plan changed since): shown, flagged.
    Changed,
    Failed,
    Pending,
    /// A result file is there but could not be read (it will be measured again by the next run).
    Unreadable,
}

/// One table row: one cell of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cell_id: String,
    pub status: RowStatus,
    pub concurrency: String,
    pub qps: String,
    pub prompt_tps: String,
    pub decode_tps: String,
    pub ttft: String,
    pub e2e: String,
    pub tpot: String,
    pub input_tokens: String,
    pub output_tokens: String,
    pub hit_rate: String,
    pub output_check: String,
    pub output_tps: String,
    pub remark: String,
    pub warnings: Vec<String>,
}

/// One server configuration's table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// `3.1`, `3B.2`: numbered within its precision's section.
    pub number: String,
    pub heading: String,
    pub model_id: String,
    pub model_name: String,
    pub precision: String,
    pub precision_label: String,
    pub checkpoint: String,
    pub engine: String,
    pub engine_label: String,
    pub server_id: String,
    /// Server variables other than model/precision/engine, `name=value`.
    pub params: Vec<String>,
    /// Chart file name under `report/charts/`, when the chart has data.
    pub chart: Option<String>,
    pub rows: Vec<Row>,
    /// `c=40：…` for each warning of a row.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// `3`, `3B`, `3C`, …
    pub number: String,
    pub precision: String,
    pub label: String,
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatioRow {
    pub concurrency: String,
    /// Why the ratio may mislead (different load settings), or empty.
    pub note: String,
    pub qps: String,
    pub decode_tps: String,
    pub output_tps: String,
    pub ttft: String,
    pub e2e: String,
    pub tpot: String,
}

/// One precision against the model's first precision, same engine and server settings.
#[derive(Debug, Clone, Serialize)]
pub struct RatioTable {
    pub heading: String,
    pub numerator: String,
    pub denominator: String,
    pub rows: Vec<RatioRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub name: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub input_k: String,
    pub output_k: String,
    /// `records/<id>.zh.md`, relative to the summary.
    pub record: String,
    /// `FP8=Qwen/Qwen3-14B-FP8；FP4（NVFP4）=RedHatAI/Qwen3-14B-NVFP4`
    pub checkpoints: String,
    pub precisions: String,
    pub concurrencies: String,
    pub engines: String,
    /// When each precision was measured (first cell's start): `FP8=2025-12-18 10:39:40 +08:00；…`
    pub times: String,
    pub params: String,
}

/// Captured environment, ready to print.
#[derive(Debug, Clone, Serialize)]
pub struct EnvView {
    pub captured_at: String,
    pub timezone: String,
    pub host: String,
    pub cpu: String,
    pub memory: String,
    pub os: String,
    pub gpu_line: String,
    pub gpu_note: String,
    pub mig: String,
    pub runner_version: String,
    pub engine_versions: String,
    pub git: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub total: usize,
    pub done: usize,
    pub changed: usize,
    pub failed: usize,
    pub pending: usize,
    pub unreadable: usize,
}

/// One chart's data: per model and precision, one series per server configuration.
#[derive(Debug, Clone)]
pub struct ChartData {
    pub file: String,
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// (concurrency, [output tokens/s, TTFT mean ms, TPOT mean ms]), sorted by concurrency; a metric
    /// that was not measured is `None` and gets no point.
    pub points: Vec<(f64, [Option<f64>; 3])>,
}

/// Everything the templates see, plus the chart data.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub generated_at: String,
    pub experiment_file: String,
    pub precision_list: String,
    pub concurrencies: String,
    pub prompt_modes: String,
    pub models: Vec<ModelInfo>,
    pub sections: Vec<Section>,
    pub ratio_number: String,
    pub ratios: Vec<RatioTable>,
    pub nvfp4_number: Option<String>,
    pub hardware: serde_json::Map<String, serde_json::Value>,
    /// `[hardware]` keys the templates do not print by name.
    pub hardware_extra: Vec<(String, String)>,
    pub site: serde_json::Map<String, serde_json::Value>,
    pub env: Option<EnvView>,
    pub counts: Counts,
    pub threshold: String,
    /// Every warning, prefixed with its table's heading.
    pub warnings: Vec<String>,
    /// Stored files that could not be read and were skipped (`path: error`).
    pub unreadable: Vec<String>,
    #[serde(skip)]
    pub charts: Vec<ChartData>,
}

/// Per-model record context: the report's shared facts with only this model's sections.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    #[serde(flatten)]
    pub report: &'a Report,
    pub model: &'a ModelInfo,
    pub model_sections: Vec<Section>,
    pub model_ratios: Vec<RatioTable>,
}

const HARDWARE_KEYS: &[&str] = &["vm", "vcpu", "memory", "gpu", "spec_url"];

/// Builds the whole view model.
pub fn build(exp: &Experiment, plan: &Plan, stored: &Stored, generated_at: &str) -> Report {
    let threshold = exp.report.prefix_cache_warn_above;
    let mut counts = Counts::default();
    let mut sections: IndexMap<String, Section> = IndexMap::new();
    let mut charts: IndexMap<(String, String), ChartData> = IndexMap::new();
    let mut warnings = Vec::new();
    let mut done_cells: Vec<(&ServerPlan, &CellPlan, &CellResult)> = Vec::new();

    let siblings = |s: &ServerPlan| -> Vec<&ServerPlan> {
        plan.servers
            .iter()
            .filter(|o| o.model == s.model && o.precision == s.precision)
            .collect()
    };

    for server in &plan.servers {
        let Some(model) = exp.models.get(&server.model) else {
            continue; // a plan always comes from this experiment; nothing to show otherwise
        };
        let engine = exp.engines.get(&server.engine);
        let preset = engine.map_or(crate::engine::Preset::Generic, |e| e.preset);
        let record = stored.servers.get(&server.id);
        let version = server
            .points
            .iter()
            .find_map(|c| stored.results.get(&c.id)?.engine_version.clone())
            .or_else(|| record.and_then(|r| r.engine_version.clone()));
        let engine_label = format::engine_label(preset, &server.engine, version.as_deref());
        let params: Vec<String> = server
            .vars
            .iter()
            .filter(|(k, _)| !AXES.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (section_label, inline_label) = format::precision_labels(&server.precision);

        let mut rows = Vec::new();
        let mut points = Vec::new();
        for cell in &server.points {
            counts.total += 1;
            let row = match stored.results.get(&cell.id) {
                Some(result) => {
                    let changed = result.hash != cell.hash;
                    if changed {
                        counts.changed += 1;
                    } else {
                        counts.done += 1;
                    }
                    done_cells.push((server, cell, result));
                    let s = &result.summary;
                    points.push((
                        f64::from(cell.load.concurrency),
                        [
                            s.output_tokens_per_s,
                            Dist::mean_of(&s.ttft_ms),
                            Dist::mean_of(&s.tpot_ms),
                        ],
                    ));
                    measured_row(cell, result, changed, preset, threshold)
                }
                None => {
                    let missing = Missing {
                        unreadable: stored.unreadable_cells.get(&cell.id),
                        failure: stored.failures.get(&cell.id),
                        server_failed: record.filter(|r| r.status == ServerStatus::Failed),
                    };
                    let row = missing_row(server, cell, &missing);
                    match row.status {
                        RowStatus::Unreadable => counts.unreadable += 1,
                        RowStatus::Failed => counts.failed += 1,
                        _ => counts.pending += 1,
                    }
                    row
                }
            };
            rows.push(row);
        }

        let mut heading = format!(
            "{}（{} → {}，{}）",
            model.name,
            format::kilo(model.input_tokens),
            format::kilo(model.output_tokens),
            inline_label
        );
        // Tables of the same model and precision are told apart by what differs between them only.
        let sibs = siblings(server);
        if sibs.iter().any(|o| o.engine != server.engine) {
            heading.push_str(&format!(" · {}", server.engine));
        }
        for (k, v) in server
            .vars
            .iter()
            .filter(|(k, _)| !AXES.contains(&k.as_str()))
        {
            if sibs.iter().any(|o| o.vars.get(k) != Some(v)) {
                heading.push_str(&format!(" · {k}={v}"));
            }
        }
        let chart_key = (server.model.clone(), server.precision.clone());
        let chart = charts.entry(chart_key).or_insert_with(|| ChartData {
            file: format!(
                "{}.svg",
                file_stem(&format!("{}-{}", server.model, server.precision))
            ),
            title: format!("{} · {}", model.name, inline_label),
            series: Vec::new(),
        });
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            let mut label = server.engine.clone();
            for p in &params {
                label.push_str(&format!(" {p}"));
            }
            chart.series.push(Series { label, points });
        }

        let table_warnings: Vec<String> = rows
            .iter()
            .flat_map(|r: &Row| {
                let c = r.concurrency.clone();
                r.warnings.iter().map(move |w| format!("c={c}：{w}"))
            })
            .collect();
        warnings.extend(table_warnings.iter().map(|w| format!("{heading}：{w}")));

        let section = sections
            .entry(server.precision.clone())
            .or_insert_with(|| Section {
                number: String::new(),
                precision: server.precision.clone(),
                label: section_label,
                tables: Vec::new(),
            });
        section.tables.push(Table {
            number: String::new(),
            heading,
            model_id: model.id.clone(),
            model_name: model.name.clone(),
            precision: server.precision.clone(),
            precision_label: inline_label,
            checkpoint: checkpoint_name(model, &server.precision),
            engine: server.engine.clone(),
            engine_label,
            server_id: server.id.clone(),
            params,
            chart: None,
            rows,
            warnings: table_warnings,
        });
    }

    // Number the sections and tables the way the seed does: 3, 3B, 3C… and 3.1, 3B.1….
    let mut sections: Vec<Section> = sections.into_values().collect();
    for (i, section) in sections.iter_mut().enumerate() {
        section.number = section_number(i);
        for (j, table) in section.tables.iter_mut().enumerate() {
            table.number = format!("{}.{}", section.number, j + 1);
            let key = (table.model_id.clone(), table.precision.clone());
            table.chart = charts
                .get(&key)
                .filter(|c| !c.series.is_empty())
                .map(|c| c.file.clone());
        }
    }
    let ratio_number = section_number(sections.len());
    let nvfp4_number = sections
        .iter()
        .any(|s| s.precision.eq_ignore_ascii_case("nvfp4"))
        .then(|| section_number(sections.len() + 1));

    let ratios = ratio_tables(exp, plan, &done_cells);
    let models = model_infos(exp, plan, stored, &sections);

    let mut concurrencies: Vec<u32> = plan
        .servers
        .iter()
        .flat_map(|s| s.points.iter().map(|c| c.load.concurrency))
        .collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    let mut prompt_modes: Vec<String> = plan
        .servers
        .iter()
        .flat_map(|s| s.points.iter().map(|c| prompt_text(&c.load.prompt)))
        .collect();
    prompt_modes.dedup();
    prompt_modes.sort();
    prompt_modes.dedup();

    let (hardware, hardware_extra) = toml_strings(&exp.hardware, HARDWARE_KEYS);
    let (site, _) = toml_strings(&exp.environment, &[]);

    Report {
        title: exp.title.clone(),
        generated_at: generated_at.to_string(),
        experiment_file: exp.file.display().to_string(),
        precision_list: sections
            .iter()
            .map(|s| s.label.clone())
            .collect::<Vec<_>>()
            .join("/"),
        concurrencies: join_nums(&concurrencies),
        prompt_modes: prompt_modes.join("；"),
        models,
        sections,
        ratio_number,
        ratios,
        nvfp4_number,
        hardware,
        hardware_extra,
        site,
        env: stored.environment.as_ref().map(env_view),
        counts,
        threshold: format::percent(threshold),
        warnings,
        unreadable: stored.unreadable.clone(),
        charts: charts
            .into_values()
            .filter(|c| !c.series.is_empty())
            .collect(),
    }
}

/// The sections, ratio tables and facts of one model, for its record.
pub fn record<'a>(report: &'a Report, model: &'a ModelInfo) -> Record<'a> {
    let model_sections = report
        .sections
        .iter()
        .filter_map(|s| {
            let tables: Vec<Table> = s
                .tables
                .iter()
                .filter(|t| t.model_id == model.id)
                .cloned()
                .collect();
            (!tables.is_empty()).then(|| Section {
                tables,
                ..s.clone()
            })
        })
        .collect();
    let model_ratios = report
        .ratios
        .iter()
        .filter(|r| r.heading.starts_with(&format!("{}：", model.name)))
        .cloned()
        .collect();
    Record {
        report,
        model,
        model_sections,
        model_ratios,
    }
}

/// The checkpoint's display name (or its path); the plan only has precisions the model defines, so the
/// fallback to the bare precision key never shows in practice.
fn checkpoint_name(model: &crate::experiment::Model, precision: &str) -> String {
    model
        .precisions
        .get(precision)
        .map(|c| c.name.clone().unwrap_or_else(|| c.path.clone()))
        .unwrap_or_else(|| precision.to_string())
}

fn section_number(i: usize) -> String {
    match i {
        0 => "3".into(),
        // 3B … 3Z, then plain numbers: more than 25 precisions is not a real campaign.
        1..=25 => format!("3{}", char::from(b'A' + i as u8)),
        _ => format!("3.{i}"),
    }
}

/// A file name from an id: only characters that are safe everywhere.
fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn join_nums(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

fn prompt_text(mode: &PromptMode) -> String {
    match mode {
        PromptMode::Unique => "每个请求的提示词各不相同（不命中前缀缓存）".into(),
        PromptMode::SharedPrefix { tokens } => {
            format!("所有请求共享 {tokens} tokens 的前缀，其余部分各不相同")
        }
    }
}

fn measured_row(
    cell: &CellPlan,
    result: &CellResult,
    changed: bool,
    preset: crate::engine::Preset,
    threshold: f64,
) -> Row {
    let s = &result.summary;
    let mut warnings = Vec::new();
    let mut flag = |text: &mut String, warning: String| {
        if !text.ends_with(MARK) {
            text.push_str(MARK);
        }
        warnings.push(warning);
    };

    let mut qps = format::opt3(s.qps);
    let mut ttft = format::opt3(Dist::mean_of(&s.ttft_ms));
    let mut tpot = format::opt3(Dist::mean_of(&s.tpot_ms));
    let mut input_tokens = format::tokens(&s.input_tokens);
    let mut hit_rate = match result.server_metrics.prefix_cache_hit_rate {
        Some(rate) => format::percent(rate),
        None => NONE.to_string(),
    };
    let mut output_check = output_check_text(s);

    if let Some(rate) = result
        .server_metrics
        .prefix_cache_hit_rate
        .filter(|r| *r > threshold)
    {
        flag(
            &mut hit_rate,
            format!(
                "前缀缓存命中率 {} 高于阈值 {}：TTFT 与 Prompt TPS 可能因缓存命中而偏好",
                format::percent(rate),
                format::percent(threshold)
            ),
        );
    }
    if let Some(warning) = token_warning("输出", &s.output_tokens) {
        flag(&mut output_check, warning);
    }
    if let Some(warning) = token_warning("输入", &s.input_tokens) {
        flag(&mut input_tokens, warning);
    }
    if s.failed > 0 {
        let kinds = s
            .errors
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join("，");
        flag(
            &mut qps,
            format!(
                "失败请求 {}/{}（{kinds}）：QPS 与各项延迟只统计成功请求",
                s.failed, s.requests
            ),
        );
    }
    if s.client.saturated {
        // Read lag (how long received bytes waited for the client) is shown where it was measured.
        let read = match s.client.read_lag_ms_p99 {
            Some(p99) => format!(
                "；读取延迟 p99 {} ms，最大 {} ms",
                format::opt3(Some(p99)),
                format::opt3(s.client.read_lag_ms_max)
            ),
            None => String::new(),
        };
        let text = format!(
            "客户端饱和（调度延迟 p99 {} ms，最大 {} ms{read}）：TTFT/TPOT 可能被客户端拉高",
            format::opt3(s.client.lag_ms_p99),
            format::opt3(s.client.lag_ms_max)
        );
        flag(&mut ttft, text);
        if !tpot.ends_with(MARK) {
            tpot.push_str(MARK);
        }
    }
    let expected_inflight = cell
        .load
        .concurrency
        .min(cell.load.max_inflight.unwrap_or(u32::MAX))
        .min(cell.load.requests);
    if s.client.peak_inflight > 0 && s.client.peak_inflight < expected_inflight {
        flag(
            &mut qps,
            format!(
                "客户端最高在途请求数 {} 低于目标 {}：负载未达到设定并发",
                s.client.peak_inflight, expected_inflight
            ),
        );
    }
    if changed {
        warnings.push(format!(
            "此结果来自不同的设置（结果 {} ≠ 计划 {}），重新运行可更新",
            result.hash, cell.hash
        ));
    }

    let mut remark = vec![format::engine_label(
        preset,
        &result.engine,
        result.engine_version.as_deref(),
    )];
    remark.extend(load_remarks(cell, Some(s.requests)));
    if changed {
        remark.push("⚠ 旧设置的结果".into());
    }
    remark.push(format!("server：`{}`", result.command.replace('`', "'")));

    Row {
        cell_id: cell.id.clone(),
        status: if changed {
            RowStatus::Changed
        } else {
            RowStatus::Done
        },
        concurrency: cell.load.concurrency.to_string(),
        qps,
        prompt_tps: format::opt3(s.prompt_tps),
        decode_tps: format::opt3(s.decode_tps),
        ttft,
        e2e: format::opt3(Dist::mean_of(&s.e2e_ms)),
        tpot,
        input_tokens,
        output_tokens: format::tokens(&s.output_tokens),
        hit_rate,
        output_check,
        output_tps: format::opt3(s.output_tokens_per_s),
        remark: format::cell_text(&remark.join("；")),
        warnings,
    }
}

/// The warning for token counts the server did not report as asked (`side` is 输入 or 输出): counts
/// that differ, and requests whose count is unknown (no `usage`); `None` when every count was exact.
fn token_warning(side: &str, check: &TokenCheck) -> Option<String> {
    let mut parts = Vec::new();
    if check.mismatched > 0 {
        let range = match (check.min, check.max) {
            (Some(lo), Some(hi)) => format!("（实际 {lo}–{hi}）"),
            _ => String::new(),
        };
        parts.push(format!(
            "{} 个请求的{side}不是 {} tokens{range}",
            check.mismatched, check.expected
        ));
    }
    if check.unknown > 0 {
        parts.push(format!("{} 个请求未报告 usage", check.unknown));
    }
    if parts.is_empty() {
        return None;
    }
    let what = if check.mismatched > 0 {
        "长度不符"
    } else {
        "长度未知"
    };
    Some(format!("{side}{what}：{}", parts.join("，")))
}

/// `✓ 30/30` when every request produced exactly the requested length.
fn output_check_text(s: &crate::stats::Summary) -> String {
    let o = &s.output_tokens;
    let total = o.exact + o.mismatched + o.unknown;
    if total == 0 {
        NONE.to_string()
    } else if o.exact == total {
        format!("✓ {}/{}", o.exact, total)
    } else {
        format!("{}/{}", o.exact, total)
    }
}

/// The load settings a reader needs next to a row: request count, explicit caps, arrival rate.
fn load_remarks(cell: &CellPlan, measured: Option<u64>) -> Vec<String> {
    let l = &cell.load;
    let mut out = vec![format!(
        "{} req / c={}",
        measured.unwrap_or(u64::from(l.requests)),
        l.concurrency
    )];
    if let Some(m) = l.max_inflight {
        out.push(format!("max_inflight={m}"));
    }
    if let Some(r) = l.request_rate {
        out.push(format!("request_rate={r} req/s（Poisson）"));
    }
    if let PromptMode::SharedPrefix { tokens } = l.prompt {
        out.push(format!("共享前缀 {tokens} tokens"));
    }
    out
}

/// Why a planned cell has no result to show.
struct Missing<'a> {
    /// Its `result.json` exists but could not be read.
    unreadable: Option<&'a String>,
    failure: Option<&'a CellFailure>,
    /// Its server's record says the server failed.
    server_failed: Option<&'a ServerRecord>,
}

fn missing_row(server: &ServerPlan, cell: &CellPlan, missing: &Missing) -> Row {
    let (status, what) = match missing {
        Missing {
            unreadable: Some(problem),
            ..
        } => (
            RowStatus::Unreadable,
            format!("结果文件无法读取，已跳过（下次运行会重测）：{problem}"),
        ),
        Missing {
            failure: Some(f), ..
        } => (RowStatus::Failed, format!("失败：{}", f.reason)),
        Missing {
            server_failed: Some(r),
            ..
        } => (
            RowStatus::Failed,
            format!(
                "服务器失败：{}",
                r.reason.as_deref().unwrap_or("未记录原因")
            ),
        ),
        _ => (RowStatus::Pending, "未完成".to_string()),
    };
    let mut remark = vec![what.clone()];
    remark.extend(load_remarks(cell, None));
    remark.push(format!(
        "server：`{}`",
        crate::plan::print::command_line(&server.display).replace('`', "'")
    ));
    let none = || NONE.to_string();
    Row {
        cell_id: cell.id.clone(),
        status,
        concurrency: cell.load.concurrency.to_string(),
        qps: match status {
            RowStatus::Failed => "失败".to_string(),
            RowStatus::Unreadable => "无法读取".to_string(),
            _ => "未完成".to_string(),
        },
        prompt_tps: none(),
        decode_tps: none(),
        ttft: none(),
        e2e: none(),
        tpot: none(),
        input_tokens: none(),
        output_tokens: none(),
        hit_rate: none(),
        output_check: none(),
        output_tps: none(),
        remark: format::cell_text(&remark.join("；")),
        warnings: match status {
            RowStatus::Failed | RowStatus::Unreadable => vec![what],
            _ => Vec::new(),
        },
    }
}

/// Ratio tables: each precision of a model against the model's first precision, pairing servers that
/// agree on everything else (engine and server variables) and cells at the same concurrency.
fn ratio_tables(
    exp: &Experiment,
    plan: &Plan,
    done: &[(&ServerPlan, &CellPlan, &CellResult)],
) -> Vec<RatioTable> {
    let others = |s: &ServerPlan| {
        s.vars
            .iter()
            .filter(|(k, _)| k.as_str() != "precision")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    let mut tables = Vec::new();
    for model in exp.models.values() {
        let mut precisions: Vec<&str> = Vec::new();
        for s in plan.servers.iter().filter(|s| s.model == model.id) {
            if !precisions.contains(&s.precision.as_str()) {
                precisions.push(&s.precision);
            }
        }
        let Some((base, rest)) = precisions.split_first() else {
            continue;
        };
        for base_server in plan
            .servers
            .iter()
            .filter(|s| s.model == model.id && s.precision == *base)
        {
            for other in rest {
                let Some(num_server) = plan.servers.iter().find(|s| {
                    s.model == model.id && s.precision == *other && others(s) == others(base_server)
                }) else {
                    continue;
                };
                let find = |server: &ServerPlan, c: u32| {
                    done.iter()
                        .find(|(s, cell, _)| s.id == server.id && cell.load.concurrency == c)
                        .map(|(_, cell, r)| (*cell, &r.summary))
                };
                let mut concs: Vec<u32> = base_server
                    .points
                    .iter()
                    .map(|c| c.load.concurrency)
                    .collect();
                concs.sort_unstable();
                concs.dedup();
                let rows: Vec<RatioRow> = concs
                    .into_iter()
                    .filter_map(|c| {
                        let ((d_cell, d), (n_cell, n)) =
                            (find(base_server, c)?, find(num_server, c)?);
                        // A ratio needs both figures; one unmeasured side leaves it `—`.
                        let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
                            (Some(a), Some(b)) => format::ratio(a / b),
                            _ => NONE.to_string(),
                        };
                        let mean = Dist::mean_of;
                        // A ratio is only fair under the same load; say so where it is not (the
                        // seed compared a run capped at 24 in flight with an uncapped one).
                        let settings = |cell: &CellPlan| load_remarks(cell, None).split_off(1);
                        let (ds, ns) = (settings(d_cell), settings(n_cell));
                        let note = if ds == ns {
                            String::new()
                        } else {
                            let text = |v: Vec<String>| {
                                if v.is_empty() {
                                    "无".to_string()
                                } else {
                                    v.join("，")
                                }
                            };
                            format!("⚠ 负载设置不同：{} vs {}", text(ns), text(ds))
                        };
                        Some(RatioRow {
                            note,
                            concurrency: c.to_string(),
                            qps: r(n.qps, d.qps),
                            decode_tps: r(n.decode_tps, d.decode_tps),
                            output_tps: r(n.output_tokens_per_s, d.output_tokens_per_s),
                            ttft: r(mean(&n.ttft_ms), mean(&d.ttft_ms)),
                            e2e: r(mean(&n.e2e_ms), mean(&d.e2e_ms)),
                            tpot: r(mean(&n.tpot_ms), mean(&d.tpot_ms)),
                        })
                    })
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let (num_label, den_label) = (other.to_uppercase(), base.to_uppercase());
                let mut heading = format!(
                    "{}：{} / {}（{}",
                    model.name, num_label, den_label, base_server.engine
                );
                for (k, v) in base_server.vars.iter() {
                    if !AXES.contains(&k.as_str()) {
                        heading.push_str(&format!("，{k}={v}"));
                    }
                }
                heading.push('）');
                tables.push(RatioTable {
                    heading,
                    numerator: num_label,
                    denominator: den_label,
                    rows,
                });
            }
        }
    }
    tables
}

fn model_infos(
    exp: &Experiment,
    plan: &Plan,
    stored: &Stored,
    sections: &[Section],
) -> Vec<ModelInfo> {
    let mut out = Vec::new();
    for model in exp.models.values() {
        let servers: Vec<&ServerPlan> = plan
            .servers
            .iter()
            .filter(|s| s.model == model.id)
            .collect();
        if servers.is_empty() {
            continue;
        }
        let mut precisions: Vec<&str> = Vec::new();
        for s in &servers {
            if !precisions.contains(&s.precision.as_str()) {
                precisions.push(&s.precision);
            }
        }
        let label = |p: &str| format::precision_labels(p).0;
        let checkpoints = precisions
            .iter()
            .map(|p| format!("{}={}", label(p), checkpoint_name(model, p)))
            .collect::<Vec<_>>()
            .join("；");
        let times = precisions
            .iter()
            .filter_map(|p| {
                let first = servers
                    .iter()
                    .filter(|s| s.precision == *p)
                    .flat_map(|s| &s.points)
                    .filter_map(|c| stored.results.get(&c.id))
                    .map(|r| r.started_at.as_str())
                    .min()?;
                Some(format!("{}={}", label(p), format::local_time(first)))
            })
            .collect::<Vec<_>>()
            .join("；");
        let mut engines: Vec<String> = sections
            .iter()
            .flat_map(|s| &s.tables)
            .filter(|t| t.model_id == model.id)
            .map(|t| t.engine_label.clone())
            .collect();
        engines.dedup();
        let mut params: Vec<String> = servers
            .iter()
            .flat_map(|s| {
                s.vars
                    .iter()
                    .filter(|(k, _)| !AXES.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={v}"))
            })
            .collect();
        params.sort();
        params.dedup();
        let mut concs: Vec<u32> = servers
            .iter()
            .flat_map(|s| s.points.iter().map(|c| c.load.concurrency))
            .collect();
        concs.sort_unstable();
        concs.dedup();
        out.push(ModelInfo {
            id: model.id.clone(),
            name: model.name.clone(),
            input_tokens: model.input_tokens,
            output_tokens: model.output_tokens,
            input_k: format::kilo(model.input_tokens),
            output_k: format::kilo(model.output_tokens),
            record: format!("records/{}.zh.md", file_stem(&model.id)),
            checkpoints,
            precisions: precisions
                .iter()
                .map(|p| label(p))
                .collect::<Vec<_>>()
                .join("、"),
            concurrencies: join_nums(&concs),
            engines: engines.join("、"),
            times,
            params: params.join("；"),
        });
    }
    out
}

fn env_view(env: &Environment) -> EnvView {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| NONE.to_string());
    let gpu_line = env
        .gpus
        .iter()
        .map(crate::envinfo::Gpu::line)
        .collect::<Vec<_>>()
        .join("；");
    let mig = env
        .gpus
        .iter()
        .map(|g| g.mig_mode.clone().unwrap_or_else(|| "不支持（N/A）".into()))
        .collect::<Vec<_>>()
        .join("；");
    let git = match (&env.experiment.commit, env.experiment.dirty) {
        (Some(c), Some(true)) => format!("{c}（有本地修改）"),
        (Some(c), _) => c.clone(),
        (None, _) => env
            .experiment
            .note
            .clone()
            .unwrap_or_else(|| NONE.to_string()),
    };
    EnvView {
        captured_at: if env.captured_at_local.is_empty() {
            format::local_time(&env.captured_at)
        } else {
            env.captured_at_local.clone()
        },
        timezone: or_none(&env.timezone),
        host: or_none(&env.host),
        cpu: match (&env.cpu_model, env.cpu_logical_cores) {
            (Some(m), Some(n)) => format!("{m}（{n} 逻辑核）"),
            (Some(m), None) => m.clone(),
            (None, Some(n)) => format!("{n} 逻辑核"),
            (None, None) => NONE.to_string(),
        },
        memory: env
            .memory_total_mib
            .map(|m| format!("{:.1} GiB", m as f64 / 1024.0))
            .unwrap_or_else(|| NONE.to_string()),
        os: match (&env.os, &env.kernel) {
            (Some(o), Some(k)) => format!("{o}（内核 {k}）"),
            (o, _) => or_none(o),
        },
        gpu_line: if gpu_line.is_empty() {
            NONE.to_string()
        } else {
            gpu_line
        },
        gpu_note: env.gpu_note.clone().unwrap_or_default(),
        mig: if mig.is_empty() {
            NONE.to_string()
        } else {
            mig
        },
        runner_version: env.runner_version.clone(),
        engine_versions: env
            .engine_versions
            .iter()
            .map(|(k, v)| format!("{k}={}", v.trim()))
            .collect::<Vec<_>>()
            .join("；"),
        git,
    }
}

/// A TOML table as strings for templates, plus the entries not named in `known` (in file order).
fn toml_strings(
    table: &toml::Table,
    known: &[&str],
) -> (
    serde_json::Map<String, serde_json::Value>,
    Vec<(String, String)>,
) {
    let mut map = serde_json::Map::new();
    let mut extra = Vec::new();
    for (k, v) in table {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !known.is_empty() && !known.contains(&k.as_str()) {
            extra.push((k.clone(), text.clone()));
        }
        map.insert(k.clone(), serde_json::Value::String(text));
    }
    (map, extra)
}
