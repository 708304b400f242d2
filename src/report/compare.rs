//! `runner compare A B`: one run against another (an engine upgrade, a changed flag, another day), from
//! their stored results alone. A and B are experiment files or results directories; B is compared with
//! A (ratios are B / A).
//!
//! Matching: two cells are the same measurement when they agree on model, precision, engine and
//! concurrency, and on every other variable (server or load) that tells cells with those four apart
//! within A or within B. A variable that does not (say the simulated `decode_step_ms`, one value per
//! model and precision) is a setting: where it differs between the runs, the report lists it with the
//! commands, engine versions and load settings that differ. Cells found on one side only are listed,
//! never dropped; a cell that failed on B but was measured on A is named as such.
//!
//! Invariants: every ratio goes through [`super::ratio::row`], so a row carries a ⚠ for either side's
//! caveats exactly as the report's ratio tables do, and says 差异不显著 where both sides were measured
//! several times and their intervals overlap (the repeat count itself is not a load difference); an unmeasured figure is `null` in JSON and `—` in
//! Markdown; `--fail-if` thresholds treat a ratio that cannot be computed, a cell that failed on B, or a
//! comparison without a single matched cell as missed, never as passed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use super::caveat::{self, Caveat};
use super::format::{self, NONE};
use super::metric::Metric;
use super::ratio::{self, RatioRow, Side};
use crate::envinfo::Environment;
use crate::experiment::AXES;
use crate::stats::interval::Interval;
use crate::store::{CellFailure, CellResult, Store};

/// The built-in template of the Markdown comparison.
pub const TEMPLATE: &str = include_str!("../../templates/compare.zh.md.tera");
const TEMPLATE_NAME: &str = "templates/compare.zh.md.tera";

/// The prefix-cache threshold used for a results directory, which carries no `[report]` settings.
pub const DEFAULT_HIT_RATE_THRESHOLD: f64 = 0.10;

/// One side's stored results.
pub struct Run {
    /// The path as given on the command line.
    pub label: String,
    pub results_dir: PathBuf,
    pub cells: Vec<CellResult>,
    pub failures: Vec<CellFailure>,
    pub environment: Option<Environment>,
    /// Stored files that could not be read (`path: error`).
    pub unreadable: Vec<String>,
    /// `[report] prefix_cache_warn_above` of the experiment, or the default for a directory.
    pub threshold: f64,
}

impl Run {
    /// Reads the results under `results_dir`. A directory without `cells/` holds no results: `None`.
    pub fn read(
        label: String,
        results_dir: PathBuf,
        threshold: f64,
    ) -> std::io::Result<Option<Run>> {
        let store = Store::new(&results_dir);
        if !results_dir.join("cells").is_dir() {
            return Ok(None);
        }
        let stored = store.read_cells()?;
        let (failures, bad_failures) = store.read_failures()?;
        let mut unreadable: Vec<String> = stored
            .unreadable
            .iter()
            .chain(&bad_failures)
            .map(|u| u.to_string())
            .collect();
        let environment = super::readable(store.read_environment(), &mut unreadable);
        Ok(Some(Run {
            label,
            results_dir,
            cells: stored.cells,
            failures,
            environment,
            unreadable,
            threshold,
        }))
    }
}

/// `--fail-if "output_tps < 0.95"`: the comparison fails when B / A of the metric is below 0.95.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds(self, x: f64, value: f64) -> bool {
        match self {
            Op::Lt => x < value,
            Op::Le => x <= value,
            Op::Gt => x > value,
            Op::Ge => x >= value,
        }
    }
}

impl Threshold {
    /// Parses `METRIC OP VALUE`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let metrics = Metric::ALL.map(Metric::key).join(", ");
        let help = format!(
            "  help: write METRIC OP RATIO, e.g. --fail-if \"output_tps < 0.95\" or --fail-if \"ttft > 1.10\"; metrics: {metrics}; operators: < <= > >=; the ratio is B / A"
        );
        // Two-character operators first, so `<=` is not read as `<`.
        let found = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|op| text.find(op).map(|at| (at, *op)));
        let Some((at, op_text)) = found else {
            return Err(format!(
                "--fail-if {text:?}: no comparison operator\n{help}"
            ));
        };
        let name = text[..at].trim();
        let value_text = text[at + op_text.len()..].trim();
        let metric = Metric::parse(name)
            .ok_or_else(|| format!("--fail-if {text:?}: unknown metric `{name}`\n{help}"))?;
        let value: f64 = value_text
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| {
                format!("--fail-if {text:?}: `{value_text}` is not a positive ratio\n{help}")
            })?;
        let op = match op_text {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        Ok(Threshold {
            text: format!("{} {} {}", metric.key(), op.text(), value_text),
            metric,
            op,
            value,
        })
    }
}

/// The whole comparison: what the template prints and `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: RunInfo,
    pub b: RunInfo,
    /// Some matched cell was measured several times on both sides: its rows can say 差异不显著.
    pub repeated: bool,
    /// Some matched cell was measured several times on one side only (no significance for it).
    pub repeated_one_side: bool,
    /// Metric keys in column order.
    pub metrics: Vec<&'static str>,
    pub cells: Vec<CellComparison>,
    pub only_a: Vec<OneSided>,
    pub only_b: Vec<OneSided>,
    pub differences: Vec<Difference>,
    pub thresholds: Vec<ThresholdResult>,
    /// False when any threshold was missed.
    pub passed: bool,
    pub unreadable: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub label: String,
    pub results_dir: String,
    pub cells: usize,
    /// First and last measurement (local time), or `—`.
    pub measured: String,
}

/// One matched cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellComparison {
    /// A's cell id (B's where it differs is `b_id`).
    pub id: String,
    pub b_id: Option<String>,
    /// Per metric key: the measured value, `null` when not measured.
    pub a: BTreeMap<&'static str, Option<f64>>,
    pub b: BTreeMap<&'static str, Option<f64>>,
    /// Per metric key: the 95 % interval over the side's repeats, `null` for a side measured once.
    pub a_interval: BTreeMap<&'static str, Option<Interval>>,
    pub b_interval: BTreeMap<&'static str, Option<Interval>>,
    pub ratio: BTreeMap<&'static str, Option<f64>>,
    /// The printed row (ratios with three decimals and the ⚠ reasons).
    pub row: RatioRow,
    /// `A → B` per metric, printed.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OneSided {
    pub id: String,
    /// Why the other side has no result, when it recorded a failure for the same cell id.
    pub other_failed: Option<String>,
}

/// A setting that differs between the runs, and the cells it concerns (none: the whole run).
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub what: String,
    pub a: String,
    pub b: String,
    pub cells: Vec<String>,
    /// `3 个测试点：…` or `整次运行`, printed.
    pub scope: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdResult {
    pub expr: String,
    pub metric: &'static str,
    pub op: Op,
    pub value: f64,
    pub passed: bool,
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub cell: String,
    /// B / A, when it could be computed.
    pub ratio: Option<f64>,
    pub reason: String,
}

/// What identifies a cell within its model, precision, engine and concurrency.
type Base = (String, String, String, String);

fn base(c: &CellResult) -> Base {
    let concurrency = c
        .vars
        .get("concurrency")
        .map(|v| v.to_string())
        .or_else(|| c.load.get("concurrency").map(|v| v.to_string()))
        .unwrap_or_default();
    (
        c.model.clone(),
        c.precision.clone(),
        c.engine.clone(),
        concurrency,
    )
}

fn var(c: &CellResult, k: &str) -> Option<String> {
    c.vars.get(k).map(|v| v.to_string())
}

/// Variables that tell cells of the same model, precision, engine and concurrency apart, within A or
/// within B (a missing variable counts as a value of its own).
pub fn identity_vars(a: &[CellResult], b: &[CellResult]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for run in [a, b] {
        let mut groups: HashMap<Base, Vec<&CellResult>> = HashMap::new();
        for c in run {
            groups.entry(base(c)).or_default().push(c);
        }
        for cells in groups.values() {
            for c in cells {
                for k in c.vars.keys().filter(|k| !AXES.contains(&k.as_str())) {
                    let differs = cells.iter().any(|o| var(o, k) != var(c, k));
                    if differs && !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
        }
    }
    names.sort();
    names
}

fn key(c: &CellResult, identity: &[String]) -> (Base, Vec<Option<String>>) {
    (base(c), identity.iter().map(|k| var(c, k)).collect())
}

/// Compares `b` with `a` and checks the thresholds.
pub fn compare(a: &Run, b: &Run, thresholds: &[Threshold]) -> Comparison {
    let identity = identity_vars(&a.cells, &b.cells);
    let mut b_by_key: HashMap<(Base, Vec<Option<String>>), &CellResult> = HashMap::new();
    for c in &b.cells {
        b_by_key.entry(key(c, &identity)).or_insert(c);
    }
    let mut a_sorted: Vec<&CellResult> = a.cells.iter().collect();
    a_sorted.sort_by_key(|c| sort_key(c));
    let mut matched: Vec<(&CellResult, &CellResult)> = Vec::new();
    let mut only_a = Vec::new();
    for c in a_sorted {
        match b_by_key.remove(&key(c, &identity)) {
            Some(other) => matched.push((c, other)),
            None => only_a.push(one_sided(c, &b.failures)),
        }
    }
    let mut rest: Vec<&CellResult> = b_by_key.into_values().collect();
    rest.sort_by_key(|c| sort_key(c));
    let only_b: Vec<OneSided> = rest.iter().map(|c| one_sided(c, &a.failures)).collect();

    let cells: Vec<CellComparison> = matched
        .iter()
        .map(|(x, y)| cell_comparison(x, y, a.threshold, b.threshold))
        .collect();
    let differences = differences(a, b, &matched);
    let thresholds: Vec<ThresholdResult> = thresholds
        .iter()
        .map(|t| check(t, &cells, &only_a))
        .collect();
    let passed = thresholds.iter().all(|t| t.passed);
    let mut unreadable: Vec<String> = a.unreadable.iter().map(|u| format!("A：{u}")).collect();
    unreadable.extend(b.unreadable.iter().map(|u| format!("B：{u}")));
    Comparison {
        repeated: matched
            .iter()
            .any(|(x, y)| x.repeats.len() > 1 && y.repeats.len() > 1),
        repeated_one_side: matched
            .iter()
            .any(|(x, y)| (x.repeats.len() > 1) != (y.repeats.len() > 1)),
        a: run_info(a),
        b: run_info(b),
        metrics: Metric::ALL.map(Metric::key).to_vec(),
        cells,
        only_a,
        only_b,
        differences,
        thresholds,
        passed,
        unreadable,
    }
}

/// Model, precision, engine, then concurrency by number, then id.
fn sort_key(c: &CellResult) -> (String, String, String, u64, String) {
    let (m, p, e, conc) = base(c);
    (m, p, e, conc.parse().unwrap_or(u64::MAX), c.id.clone())
}

fn one_sided(c: &CellResult, other_failures: &[CellFailure]) -> OneSided {
    OneSided {
        id: c.id.clone(),
        other_failed: other_failures
            .iter()
            .find(|f| f.id == c.id)
            .map(|f| f.reason.clone()),
    }
}

fn run_info(run: &Run) -> RunInfo {
    let times: Vec<&str> = run
        .cells
        .iter()
        .flat_map(|c| [c.started_at.as_str(), c.finished_at.as_str()])
        .filter(|t| !t.is_empty())
        .collect();
    let measured = match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) => format!(
            "{} – {}",
            format::local_time(first),
            format::local_time(last)
        ),
        _ => NONE.to_string(),
    };
    RunInfo {
        label: run.label.clone(),
        results_dir: run.results_dir.display().to_string(),
        cells: run.cells.len(),
        measured,
    }
}

/// The load settings of a stored cell as `key=value` strings (nested settings flattened), so two
/// cells' lists are equal exactly when their load was.
fn load_settings(c: &CellResult) -> Vec<String> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, inner) in map {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&name, inner, out);
                }
            }
            serde_json::Value::Null => out.push(format!("{prefix}=无")),
            serde_json::Value::String(s) => out.push(format!("{prefix}={s}")),
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    flatten("", &c.load, &mut out);
    out.sort();
    out
}

fn side<'a>(label: &str, c: &'a CellResult, threshold: f64) -> Side<'a> {
    Side {
        label: label.to_string(),
        result: c,
        caveats: caveats(c, threshold),
        // How often a point was measured changes how sure a figure is, not the load it measured: the
        // repeat count is listed under 设置差异, not flagged on every row.
        load: load_settings(c)
            .into_iter()
            .filter(|s| !s.starts_with("repeats="))
            .collect(),
    }
}

/// A stored cell's caveats, from the load settings it recorded.
fn caveats(c: &CellResult, threshold: f64) -> Vec<Caveat> {
    let number = |k: &str| {
        c.load
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let concurrency = number("concurrency").unwrap_or(u32::MAX);
    let requests = number("requests").unwrap_or(u32::MAX);
    let ctx = caveat::Context {
        expected_inflight: caveat::expected_inflight(concurrency, number("max_inflight"), requests),
        threshold,
        plan_hash: None,
    };
    caveat::of_cell(c, &ctx)
}

fn cell_comparison(a: &CellResult, b: &CellResult, ta: f64, tb: f64) -> CellComparison {
    let values = |c: &CellResult| {
        Metric::ALL
            .into_iter()
            .map(|m| (m.key(), m.of(&c.summary)))
            .collect::<BTreeMap<_, _>>()
    };
    let ratios = Metric::ALL
        .into_iter()
        .map(|m| (m.key(), m.ratio(&b.summary, &a.summary)))
        .collect();
    let intervals = |c: &CellResult| {
        Metric::ALL
            .into_iter()
            .map(|m| (m.key(), m.interval(c)))
            .collect::<BTreeMap<_, _>>()
    };
    let row = ratio::row(a.id.clone(), &side("B", b, tb), &side("A", a, ta));
    CellComparison {
        id: a.id.clone(),
        b_id: (b.id != a.id).then(|| b.id.clone()),
        a: values(a),
        b: values(b),
        a_interval: intervals(a),
        b_interval: intervals(b),
        ratio: ratios,
        row,
        values: Metric::ALL
            .into_iter()
            .map(|m| format!("{} → {}", m.headline(a), m.headline(b)))
            .collect(),
    }
}

/// The server command with its port masked: the port is picked per run and is not a setting.
fn masked_command(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let after_port = i > 0 && words[i - 1] == "--port";
        let is_port = |p: &str| p.parse::<u16>().is_ok();
        if after_port && is_port(w) {
            out.push("$PORT".to_string());
        } else if w.strip_prefix("--port=").is_some_and(is_port) {
            out.push("--port=$PORT".to_string());
        } else {
            out.push((*w).to_string());
        }
    }
    out.join(" ")
}

/// Settings that differ between the runs, grouped so that one change shows once with its cells.
fn differences(a: &Run, b: &Run, matched: &[(&CellResult, &CellResult)]) -> Vec<Difference> {
    let mut found: Vec<Difference> = Vec::new();
    let mut note = |what: String, va: String, vb: String, cell: Option<&str>| {
        if va == vb {
            return;
        }
        match found
            .iter_mut()
            .find(|d| d.what == what && d.a == va && d.b == vb)
        {
            Some(d) => d.cells.extend(cell.map(str::to_string)),
            None => found.push(Difference {
                what,
                a: va,
                b: vb,
                cells: cell.map(str::to_string).into_iter().collect(),
                scope: String::new(),
            }),
        }
    };
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "无".to_string());
    for (x, y) in matched {
        let id = Some(x.id.as_str());
        note(
            "引擎版本".into(),
            or_none(x.engine_version.as_deref().map(|v| v.trim().to_string())),
            or_none(y.engine_version.as_deref().map(|v| v.trim().to_string())),
            id,
        );
        note(
            "服务命令".into(),
            format!("`{}`", masked_command(&x.command)),
            format!("`{}`", masked_command(&y.command)),
            id,
        );
        let mut names: Vec<&String> = x.vars.keys().chain(y.vars.keys()).collect();
        names.sort();
        names.dedup();
        for k in names.into_iter().filter(|k| !AXES.contains(&k.as_str())) {
            note(
                format!("变量 {k}"),
                or_none(var(x, k)),
                or_none(var(y, k)),
                id,
            );
        }
        let (lx, ly) = (load_settings(x), load_settings(y));
        if lx != ly {
            note(
                "负载设置".into(),
                ratio::only_in(&lx, &ly),
                ratio::only_in(&ly, &lx),
                id,
            );
        }
    }
    if let (Some(ea), Some(eb)) = (&a.environment, &b.environment) {
        let gpus = super::view::gpu_line;
        note(
            "runner 版本".into(),
            ea.runner_version.clone(),
            eb.runner_version.clone(),
            None,
        );
        note("GPU".into(), gpus(ea), gpus(eb), None);
        note(
            "主机".into(),
            or_none(ea.host.clone()),
            or_none(eb.host.clone()),
            None,
        );
    }
    for d in &mut found {
        d.scope = if d.cells.is_empty() {
            "整次运行".to_string()
        } else if d.cells.len() == matched.len() {
            format!("全部 {} 个匹配的测试点", d.cells.len())
        } else {
            format!("{} 个测试点：{}", d.cells.len(), d.cells.join("、"))
        };
    }
    found
}

fn check(t: &Threshold, cells: &[CellComparison], only_a: &[OneSided]) -> ThresholdResult {
    let mut violations = Vec::new();
    for c in cells {
        let ratio = c.ratio.get(t.metric.key()).copied().flatten();
        match ratio {
            None => violations.push(Violation {
                cell: c.id.clone(),
                ratio: None,
                reason: "比值无法计算（至少一侧未测得）".into(),
            }),
            Some(r) if t.op.holds(r, t.value) => violations.push(Violation {
                cell: c.id.clone(),
                ratio: Some(r),
                reason: format!("{} {} {}", format::ratio(r), t.op.text(), t.value),
            }),
            Some(_) => {}
        }
    }
    for one in only_a {
        if let Some(reason) = &one.other_failed {
            violations.push(Violation {
                cell: one.id.clone(),
                ratio: None,
                reason: format!("B 侧失败：{reason}"),
            });
        }
    }
    if cells.is_empty() {
        violations.push(Violation {
            cell: NONE.to_string(),
            ratio: None,
            reason: "没有两侧都测得的测试点，无法检查".into(),
        });
    }
    ThresholdResult {
        expr: t.text.clone(),
        metric: t.metric.key(),
        op: t.op,
        value: t.value,
        passed: violations.is_empty(),
        violations,
    }
}

/// The comparison as Markdown (the built-in Chinese template).
pub fn markdown(cmp: &Comparison) -> anyhow::Result<String> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(TEMPLATE_NAME, TEMPLATE)
        .map_err(|e| super::template_error(TEMPLATE_NAME, TEMPLATE, &e))?;
    let ctx = tera::Context::from_serialize(cmp)?;
    tera.render(TEMPLATE_NAME, &ctx)
        .map(|out| super::tidy(&out))
        .map_err(|e| super::template_error(TEMPLATE_NAME, TEMPLATE, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_explain_themselves() {
        let t = Threshold::parse("output_tps < 0.95").unwrap();
        assert_eq!((t.metric, t.op, t.value), (Metric::OutputTps, Op::Lt, 0.95));
        assert_eq!(t.text, "output_tps < 0.95");
        let t = Threshold::parse("ttft>=1.1").unwrap();
        assert_eq!((t.metric, t.op, t.value), (Metric::Ttft, Op::Ge, 1.1));
        let t = Threshold::parse(" qps <= 0.9 ").unwrap();
        assert_eq!(t.op, Op::Le);
        for (bad, says) in [
            ("throughput < 0.9", "unknown metric `throughput`"),
            ("output_tps = 0.9", "no comparison operator"),
            ("output_tps < fast", "`fast` is not a positive ratio"),
            ("output_tps < -1", "not a positive ratio"),
        ] {
            let err = Threshold::parse(bad).unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(err.contains("metrics: qps, prompt_tps"), "{err}");
        }
    }

    #[test]
    fn ports_are_not_settings() {
        assert_eq!(
            masked_command("runner sim --port 45819 --seed 7"),
            "runner sim --port $PORT --seed 7"
        );
        assert_eq!(masked_command("x --port=8000"), "x --port=$PORT");
        assert_eq!(masked_command("x --seed 8000"), "x --seed 8000");
    }

    fn cell(id: &str, vars: &[(&str, &str)]) -> CellResult {
        let mut v = serde_json::Map::new();
        let parts: Vec<&str> = id.split('/').collect();
        v.insert("model".into(), parts[0].into());
        v.insert("precision".into(), parts[1].into());
        v.insert("engine".into(), parts[2].into());
        for (k, x) in vars {
            v.insert((*k).into(), (*x).into());
        }
        serde_json::from_value(serde_json::json!({
            "id": id, "hash": "h", "server_id": "s", "server_hash": "sh",
            "model": parts[0], "precision": parts[1], "engine": parts[2],
            "vars": v, "load": {}, "summary": crate::stats::Summary::default(),
            "started_at": "", "finished_at": ""
        }))
        .unwrap()
    }

    #[test]
    fn identity_is_what_tells_cells_apart_within_a_run() {
        // A varies the memory fraction; B ran one value. decode_step_ms is one value per model and
        // precision on both sides (a setting, even though B's differs).
        let a = vec![
            cell(
                "m/fp8/sim/g=0.8/c1",
                &[("g", "0.8"), ("d", "5"), ("concurrency", "1")],
            ),
            cell(
                "m/fp8/sim/g=0.9/c1",
                &[("g", "0.9"), ("d", "5"), ("concurrency", "1")],
            ),
        ];
        let b = vec![cell(
            "m/fp8/sim/c1",
            &[("g", "0.9"), ("d", "8"), ("concurrency", "1")],
        )];
        assert_eq!(identity_vars(&a, &b), ["g"]);
        let run = |cells: Vec<CellResult>| Run {
            label: "x".into(),
            results_dir: PathBuf::from("x"),
            cells,
            failures: vec![],
            environment: None,
            unreadable: vec![],
            threshold: 0.1,
        };
        let cmp = compare(&run(a), &run(b), &[]);
        assert_eq!(cmp.cells.len(), 1);
        assert_eq!(cmp.cells[0].id, "m/fp8/sim/g=0.9/c1");
        assert_eq!(cmp.cells[0].b_id.as_deref(), Some("m/fp8/sim/c1"));
        assert_eq!(cmp.only_a.len(), 1);
        assert_eq!(cmp.only_a[0].id, "m/fp8/sim/g=0.8/c1");
        let d = cmp
            .differences
            .iter()
            .find(|d| d.what == "变量 d")
            .expect("the changed setting is listed");
        assert_eq!((d.a.as_str(), d.b.as_str()), ("5", "8"));
        // Nothing measured: a threshold cannot pass on an uncomputable ratio.
        let t = Threshold::parse("output_tps < 0.95").unwrap();
        let r = check(&t, &cmp.cells, &cmp.only_a);
        assert!(!r.passed);
        assert_eq!(r.violations[0].reason, "比值无法计算（至少一侧未测得）");
        let none = check(&t, &[], &[]);
        assert!(!none.passed, "no matched cell is not a pass");
    }
}
