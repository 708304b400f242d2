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

use super::caveat::{self, Kind};
pub use super::chart_view::{ChartLinks, ModelCharts};
use super::format::{self, NONE};
use super::metric::Metric;
use super::pairing::Across;
pub use super::ratio::RatioRow;
use super::{chart_view, comparisons};
use crate::envinfo::Environment;
use crate::experiment::load::PromptMode;
use crate::experiment::{AXES, Experiment};
use crate::plan::{CellPlan, Plan, ServerPlan};
use crate::store::{CellFailure, CellResult, ServerRecord, ServerStatus};

/// The warning marker placed right after a suspect number.
pub const MARK: &str = " ⚠";

/// A measured cell with its server and plan: what comparisons and charts are built from.
pub type Done<'a> = (&'a ServerPlan, &'a CellPlan, &'a CellResult);

/// What the store holds, indexed for the report.
pub struct Stored {
    /// Results by cell id.
    pub results: HashMap<String, CellResult>,
    pub failures: HashMap<String, CellFailure>,
    pub servers: HashMap<String, ServerRecord>,
    pub environment: Option<Environment>,
    /// Each node's own environment (`nodes/<host>/environment.json`), by host name.
    pub node_environments: HashMap<String, Environment>,
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
    /// Cost per 1M output tokens and J per output token (shown right of the seed's columns).
    pub economy: super::cost::RowCost,
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
    pub rows: Vec<Row>,
    /// `c=40：…` for each warning of a row.
    pub warnings: Vec<String>,
    /// `c=200：TTFT … ；KV cache 峰值 100%，最多 143 个请求排队…`: latency jumps the server's timeline
    /// explains.
    pub explanations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// `3`, `3B`, `3C`, …
    pub number: String,
    pub precision: String,
    pub label: String,
    /// The label as a heading starts with it, before `结果`: `FP8 ` (a space after Latin text) or
    /// `FP4（NVFP4）` (none after a full-width bracket).
    pub heading: String,
    pub tables: Vec<Table>,
}

/// One precision (engine) against the first one of its model and engine (precision), pairing servers
/// as [`super::pairing`] decides and cells at the same concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RatioTable {
    pub model_id: String,
    pub heading: String,
    pub numerator: String,
    pub denominator: String,
    /// The variables tied to the compared precision (engine), per side:
    /// `NVFP4：decode_step_ms=4；FP8：decode_step_ms=5`; empty when none.
    pub setup: String,
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
    /// Server variables: those all servers share, then each server's own labelled with its precision
    /// (and engine): `FP8：decode_step_ms=5，…；FP4（NVFP4）：decode_step_ms=4，…`.
    pub params: String,
    /// The model's charts, when any of its cells was measured.
    pub charts: Option<ChartLinks>,
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

/// Where one server configuration ran, shown when its nodes differ (the environment above is then one
/// node's only).
#[derive(Debug, Clone, Serialize)]
pub struct PlacementView {
    pub server: String,
    pub node: String,
    pub executor: String,
    pub gpus: String,
    /// The node's GPUs and driver, from its own environment record.
    pub gpu_line: String,
    pub engine_version: String,
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

/// Everything the templates see, plus the chart data.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub generated_at: String,
    pub experiment_file: String,
    /// `FP8/FP4（NVFP4）`, spaced for the Chinese text that follows (see [`spaced`]).
    pub precision_list: String,
    pub concurrencies: String,
    pub prompt_modes: String,
    pub models: Vec<ModelInfo>,
    pub sections: Vec<Section>,
    pub ratio_number: String,
    pub ratios: Vec<RatioTable>,
    /// The engine comparison's section number, when a model and precision ran on several engines.
    pub engine_number: Option<String>,
    pub engine_ratios: Vec<RatioTable>,
    /// The charts section's number, when any model has charts.
    pub charts_number: Option<String>,
    pub nvfp4_number: Option<String>,
    pub hardware: serde_json::Map<String, serde_json::Value>,
    /// `[hardware]` keys the templates do not print by name.
    pub hardware_extra: Vec<(String, String)>,
    pub site: serde_json::Map<String, serde_json::Value>,
    pub env: Option<EnvView>,
    /// One row per server configuration when they ran on more than one node; empty otherwise.
    pub placements: Vec<PlacementView>,
    pub counts: Counts,
    pub threshold: String,
    /// Every warning, prefixed with its table's heading.
    pub warnings: Vec<String>,
    /// Stored files that could not be read and were skipped (`path: error`).
    pub unreadable: Vec<String>,
    /// `[cost]` is set: tables show cost per 1M output tokens.
    pub show_cost: bool,
    /// Some result has GPU telemetry: tables show J per output token.
    pub show_energy: bool,
    /// Some measured cell was measured several times: figures with intervals, significance in ratios.
    pub repeated: bool,
    /// `[cost]`'s currency (empty without one).
    pub currency: String,
    /// The 成本与能耗 section: its number, the prices, one part per model.
    pub cost_number: String,
    pub cost_basis: String,
    pub costs: Vec<super::cost::CostModel>,
    #[serde(skip)]
    pub charts: Vec<ModelCharts>,
}

/// Per-model record context: the report's shared facts with only this model's sections.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    #[serde(flatten)]
    pub report: &'a Report,
    pub model: &'a ModelInfo,
    pub model_sections: Vec<Section>,
    pub model_ratios: Vec<RatioTable>,
    pub model_cost: Option<super::cost::CostModel>,
    pub model_engine_ratios: Vec<RatioTable>,
}

const HARDWARE_KEYS: &[&str] = &["vm", "vcpu", "memory", "gpu", "spec_url"];

/// Builds the whole view model.
pub fn build(exp: &Experiment, plan: &Plan, stored: &Stored, generated_at: &str) -> Report {
    let threshold = exp.report.prefix_cache_warn_above;
    let mut counts = Counts::default();
    let mut sections: IndexMap<String, Section> = IndexMap::new();
    let mut warnings = Vec::new();
    let mut done_cells: Vec<Done> = Vec::new();

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
                    let mut row = measured_row(cell, result, changed, preset, threshold);
                    super::cost::annotate(&mut row, result, exp.cost.as_ref());
                    row
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
        for p in differing_vars(server, &sibs) {
            heading.push_str(&format!(" · {p}"));
        }

        let explanations = super::explain::ttft_jumps(
            done_cells
                .iter()
                .filter(|(s, _, _)| s.id == server.id)
                .map(|(_, c, r)| (c.load.concurrency, *r))
                .collect(),
        );
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
                heading: spaced(&section_label),
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
            rows,
            warnings: table_warnings,
            explanations,
        });
    }

    // Number the sections and tables the way the seed does: 3, 3B, 3C… and 3.1, 3B.1….
    let mut sections: Vec<Section> = sections.into_values().collect();
    for (i, section) in sections.iter_mut().enumerate() {
        section.number = section_number(i);
        for (j, table) in section.tables.iter_mut().enumerate() {
            table.number = format!("{}.{}", section.number, j + 1);
        }
    }
    let ratios = comparisons::tables(exp, plan, &done_cells, Across::Precision);
    let engine_ratios = comparisons::tables(exp, plan, &done_cells, Across::Engine);
    let charts = chart_view::chart_sets(exp, plan, &done_cells);
    // The sections after the results continue the seed's numbering (3C, 3D, …); optional ones take a
    // number only when they are there.
    let mut next = sections.len();
    let mut number = |present: bool| {
        present.then(|| {
            next += 1;
            section_number(next - 1)
        })
    };
    let ratio_number = number(true).unwrap_or_default();
    let engine_number = number(!engine_ratios.is_empty());
    let charts_number = number(!charts.is_empty());
    let nvfp4_number = number(
        sections
            .iter()
            .any(|s| s.precision.eq_ignore_ascii_case("nvfp4")),
    );
    let costs = super::cost::sections(exp, &done_cells, &ratios);
    let repeated = done_cells.iter().any(|(_, _, r)| r.repeats.len() > 1);
    let cost_number = number(!costs.is_empty()).unwrap_or_default();
    let models = model_infos(exp, plan, stored, &sections, &charts);

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
        precision_list: spaced(
            &sections
                .iter()
                .map(|s| s.label.clone())
                .collect::<Vec<_>>()
                .join("/"),
        ),
        concurrencies: join_nums(&concurrencies),
        prompt_modes: prompt_modes.join("；"),
        models,
        sections,
        ratio_number,
        ratios,
        engine_number,
        engine_ratios,
        charts_number,
        nvfp4_number,
        hardware,
        hardware_extra,
        site,
        env: stored.environment.as_ref().map(env_view),
        placements: placements(plan, stored),
        counts,
        threshold: format::percent(threshold),
        warnings,
        unreadable: stored.unreadable.clone(),
        show_cost: exp.cost.is_some(),
        show_energy: stored.results.values().any(|r| r.telemetry.gpu.is_some()),
        repeated,
        currency: exp
            .cost
            .as_ref()
            .map(|c| c.currency.clone())
            .unwrap_or_default(),
        cost_number,
        cost_basis: super::cost::basis(exp.cost.as_ref()),
        costs,
        charts,
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
    let of_model = |tables: &[RatioTable]| {
        tables
            .iter()
            .filter(|r| r.model_id == model.id)
            .cloned()
            .collect()
    };
    let model_cost = report
        .costs
        .iter()
        .find(|c| c.model_id == model.id)
        .cloned();
    Record {
        report,
        model,
        model_sections,
        model_ratios: of_model(&report.ratios),
        model_engine_ratios: of_model(&report.engine_ratios),
        model_cost,
    }
}

/// The checkpoint's display name (or its path); the plan only has precisions the model defines, so the
/// fallback to the bare precision key never shows in practice.
pub(super) fn checkpoint_name(model: &crate::experiment::Model, precision: &str) -> String {
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
pub(super) fn file_stem(id: &str) -> String {
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
    let mut qps = Metric::Qps.headline(result);
    let mut ttft = Metric::Ttft.headline(result);
    let mut tpot = Metric::Tpot.headline(result);
    let mut input_tokens = format::tokens(&s.input_tokens);
    let mut hit_rate = match result.server_metrics.prefix_cache_hit_rate {
        Some(rate) => format::percent(rate),
        None => NONE.to_string(),
    };
    let mut output_check = output_check_text(s);

    // Each caveat puts a ⚠ beside the figure it concerns and a sentence under the table.
    let caveats = caveat::of_cell(result, &caveat_context(cell, threshold));
    for c in &caveats {
        let marked: &mut [&mut String] = match c.kind {
            Kind::HitRate => &mut [&mut hit_rate],
            Kind::Output => &mut [&mut output_check],
            Kind::Input => &mut [&mut input_tokens],
            Kind::Failed | Kind::Underloaded => &mut [&mut qps],
            Kind::Saturated => &mut [&mut ttft, &mut tpot],
            Kind::Changed => &mut [],
        };
        for text in marked.iter_mut() {
            if !text.ends_with(MARK) {
                text.push_str(MARK);
            }
        }
    }
    let warnings = caveats.into_iter().map(|c| c.text).collect();

    let mut remark = vec![format::engine_label(
        preset,
        &result.engine,
        result.engine_version.as_deref(),
    )];
    let measured = result
        .repeats
        .first()
        .map_or(s.requests, |r| r.summary.requests);
    remark.extend(load_remarks(cell, Some(measured)));
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
        prompt_tps: Metric::PromptTps.headline(result),
        decode_tps: Metric::DecodeTps.headline(result),
        ttft,
        e2e: Metric::E2e.headline(result),
        tpot,
        input_tokens,
        output_tokens: format::tokens(&s.output_tokens),
        hit_rate,
        output_check,
        output_tps: Metric::OutputTps.headline(result),
        economy: super::cost::RowCost::none(),
        remark: format::cell_text(&remark.join("；")),
        warnings,
    }
}

/// What the caveat checks need from the plan: the load the cell was asked for and its settings hash.
pub(super) fn caveat_context(cell: &CellPlan, threshold: f64) -> caveat::Context<'_> {
    let l = &cell.load;
    caveat::Context {
        expected_inflight: caveat::expected_inflight(l.concurrency, l.max_inflight, l.requests),
        threshold,
        plan_hash: Some(&cell.hash),
    }
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

/// The load settings a reader needs next to a row: request count (per repeat, and how many repeats),
/// explicit caps, arrival rate. The first entry (the count) is what the row measured, not a setting
/// that makes two rows' load differ.
pub(super) fn load_remarks(cell: &CellPlan, measured: Option<u64>) -> Vec<String> {
    let l = &cell.load;
    let repeats = if l.repeats > 1 {
        format!(" × {} 次重复", l.repeats)
    } else {
        String::new()
    };
    let mut out = vec![format!(
        "{} req{repeats} / c={}",
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
        server.display.command_line().replace('`', "'")
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
        economy: super::cost::RowCost::none(),
        remark: format::cell_text(&remark.join("；")),
        warnings: match status {
            RowStatus::Failed | RowStatus::Unreadable => vec![what],
            _ => Vec::new(),
        },
    }
}

fn model_infos(
    exp: &Experiment,
    plan: &Plan,
    stored: &Stored,
    sections: &[Section],
    charts: &[ModelCharts],
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
            params: labelled_params(&servers),
            charts: charts
                .iter()
                .find(|c| c.model_id == model.id)
                .map(|c| c.links.clone()),
        });
    }
    out
}

/// A model's server variables for its record: those every server shares once, then each server's own,
/// labelled with its precision (and engine, when the model ran on several), so per-precision settings
/// are never listed side by side without saying whose they are.
fn labelled_params(servers: &[&ServerPlan]) -> String {
    let params = |s: &ServerPlan| -> Vec<String> {
        s.vars
            .iter()
            .filter(|(k, _)| !AXES.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    let Some(first) = servers.first() else {
        return String::new();
    };
    let common: Vec<String> = params(first)
        .into_iter()
        .filter(|p| servers.iter().all(|s| params(s).contains(p)))
        .collect();
    let several_engines = servers.iter().any(|s| s.engine != first.engine);
    let mut parts = common.clone();
    for s in servers {
        let own: Vec<String> = params(s)
            .into_iter()
            .filter(|p| !common.contains(p))
            .collect();
        if own.is_empty() {
            continue;
        }
        let mut label = format::precision_labels(&s.precision).0;
        if several_engines {
            label.push_str(&format!(" · {}", s.engine));
        }
        let part = format!("{label}：{}", own.join("，"));
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join("；")
}

/// `name=value` of each server variable (not model, precision or engine) whose value is not the same
/// across `peers`: what tells `server` apart from them.
pub(super) fn differing_vars(server: &ServerPlan, peers: &[&ServerPlan]) -> Vec<String> {
    server
        .vars
        .iter()
        .filter(|(k, _)| !AXES.contains(&k.as_str()))
        .filter(|(k, v)| peers.iter().any(|o| o.vars.get(*k) != Some(*v)))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The load variables of `cell` (its concurrency aside) in which another of `peers` at the same
/// concurrency differs, as `k=v`: what tells apart two points of one server at one concurrency (a swept
/// load setting). A setting that only changes with the concurrency (fewer requests at c=1) is not one.
pub(super) fn differing_point_vars(cell: &CellPlan, peers: &[&CellPlan]) -> Vec<String> {
    cell.vars
        .iter()
        .filter(|(k, v)| {
            *k != "concurrency"
                && peers.iter().any(|o| {
                    o.load.concurrency == cell.load.concurrency
                        && o.vars.get(*k).map(|x| x.to_string()) != Some(v.to_string())
                })
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// A label followed by Chinese text: a space after Latin text (`FP8 结果`), none after a full-width
/// character (`FP4（NVFP4）结果`).
fn spaced(label: &str) -> String {
    match label.chars().last() {
        Some(c) if c.is_ascii() => format!("{label} "),
        _ => label.to_string(),
    }
}

/// The placement table, when server configurations ran on more than one node (or elsewhere than the
/// host the environment record describes).
fn placements(plan: &Plan, stored: &Stored) -> Vec<PlacementView> {
    let mut nodes: Vec<&str> = stored
        .servers
        .values()
        .filter_map(|r| r.node.as_deref())
        .collect();
    if let Some(host) = stored.environment.as_ref().and_then(|e| e.host.as_deref()) {
        nodes.push(host);
    }
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.len() < 2 {
        return Vec::new();
    }
    plan.servers
        .iter()
        .filter_map(|s| stored.servers.get(&s.id))
        .map(|r| {
            let node = r.node.clone().unwrap_or_else(|| NONE.to_string());
            let gpu_line = stored
                .node_environments
                .get(&node)
                .map(gpu_line)
                .unwrap_or_else(|| NONE.to_string());
            PlacementView {
                server: r.id.clone(),
                node,
                executor: r.executor.clone().unwrap_or_else(|| NONE.to_string()),
                gpus: r.gpus.clone().unwrap_or_else(|| NONE.to_string()),
                gpu_line,
                engine_version: r
                    .engine_version
                    .as_deref()
                    .map(|v| v.trim().to_string())
                    .unwrap_or_else(|| NONE.to_string()),
            }
        })
        .collect()
}

/// The GPUs an environment record lists, on one line (`—` for none).
pub(super) fn gpu_line(env: &Environment) -> String {
    let line = env
        .gpus
        .iter()
        .map(crate::envinfo::Gpu::line)
        .collect::<Vec<_>>()
        .join("；");
    if line.is_empty() {
        NONE.to_string()
    } else {
        line
    }
}

fn env_view(env: &Environment) -> EnvView {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| NONE.to_string());
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
        gpu_line: gpu_line(env),
        gpu_note: env
            .gpu_note
            .as_deref()
            .map(format::note_zh)
            .unwrap_or_default(),
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
