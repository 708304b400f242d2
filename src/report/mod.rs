//! The report: renders the summary document, one record per model, SVG charts and `cells.csv` from the
//! results directory alone. Nothing here runs a server or a benchmark, so `runner report FILE` can be
//! rerun at any time and the orchestrator can call [`render_all`] after every server configuration.
//!
//! Invariants:
//! - Inputs are the store (cell results, failures, server records, `environment.json`) and the
//!   experiment's static facts (title, hardware, models, engines); the output is a pure function of them
//!   apart from the generation timestamp.
//! - Everything is rendered in memory first and only then written, each file atomically: a template
//!   error leaves the previous report untouched rather than half-replaced.
//! - A template error names the template file, the line and the variable (or the syntax problem).
//! - A stored record that cannot be read (damaged, or written by a newer runner) is skipped: the report
//!   renders everything else, names the file in the summary and in [`ReportFiles::unreadable`] for the
//!   caller to print. Only an unreadable results directory fails the report.

pub mod caveat;
pub mod chart_view;
pub mod charts;
pub mod compare;
pub mod comparisons;
pub mod cost;
pub mod csv;
pub mod explain;
pub mod format;
pub mod metric;
pub mod pairing;
pub mod ratio;
pub mod view;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::experiment::Experiment;
use crate::plan::Plan;
use crate::store::{self, Store};

/// The built-in templates, used unless the experiment names its own in `[report]`.
pub const SUMMARY_TEMPLATE: &str = include_str!("../../templates/summary.zh.md.tera");
pub const RECORD_TEMPLATE: &str = include_str!("../../templates/record.zh.md.tera");
const SUMMARY_NAME: &str = "templates/summary.zh.md.tera";
const RECORD_NAME: &str = "templates/record.zh.md.tera";

/// What [`render_all`] wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub summary: PathBuf,
    pub records: Vec<PathBuf>,
    pub charts: Vec<PathBuf>,
    pub csv: PathBuf,
    /// Number of warnings placed next to numbers.
    pub warnings: usize,
    /// Cells of the plan without a result (failed, not yet run, or its result unreadable).
    pub missing: usize,
    /// Stored files that could not be read and were skipped (`path: error`).
    pub unreadable: Vec<String>,
}

/// Renders the whole report from the store into `<results>/report/` and `<results>/cells.csv`.
pub fn render_all(exp: &Experiment, plan: &Plan, store: &Store) -> anyhow::Result<ReportFiles> {
    let stored = read_store(plan, store)?;
    let generated_at = format::local_time(&store::now_rfc3339());
    let report = view::build(exp, plan, &stored, &generated_at);
    let templates = Templates::load(exp)?;

    // Render everything before writing anything.
    let summary = templates.render(Which::Summary, &report)?;
    let mut records = Vec::new();
    for model in &report.models {
        let text = templates.render(Which::Record, &view::record(&report, model))?;
        records.push((model.record.clone(), text));
    }
    let mut charts = Vec::new();
    for model in &report.charts {
        charts.extend(charts::render(&model.set)?);
    }
    let csv_bytes = csv::to_csv(&csv_order(plan, &stored), exp.cost.as_ref())?;

    let dir = store.root.join("report");
    let write = |path: &Path, bytes: &[u8]| {
        store::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    let summary_path = dir.join("summary.zh.md");
    write(&summary_path, summary.as_bytes())?;
    let mut files = ReportFiles {
        summary: summary_path,
        records: Vec::new(),
        charts: Vec::new(),
        csv: store.root.join("cells.csv"),
        warnings: report.warnings.len(),
        missing: report.counts.failed + report.counts.pending + report.counts.unreadable,
        unreadable: report.unreadable.clone(),
    };
    for (rel, text) in records {
        let path = dir.join(rel);
        write(&path, text.as_bytes())?;
        files.records.push(path);
    }
    for (file, svg) in charts {
        let path = dir.join("charts").join(file);
        write(&path, svg.as_bytes())?;
        files.charts.push(path);
    }
    write(&files.csv, &csv_bytes)?;
    Ok(files)
}

/// Everything the report reads from the store. Unreadable records are collected, not fatal (see the
/// module's invariants).
fn read_store(plan: &Plan, store: &Store) -> anyhow::Result<view::Stored> {
    let stored = store
        .read_cells()
        .with_context(|| format!("reading cell results under {}", store.root.display()))?;
    let mut unreadable: Vec<String> = stored.unreadable.iter().map(|u| u.to_string()).collect();
    let mut unreadable_cells = HashMap::new();
    let mut failures = HashMap::new();
    let mut servers = HashMap::new();
    for server in &plan.servers {
        if let Some(record) = readable(store.read_server(server), &mut unreadable) {
            servers.insert(server.id.clone(), record);
        }
        for cell in &server.points {
            if let Some(f) = readable(store.read_failure(cell), &mut unreadable) {
                failures.insert(cell.id.clone(), f);
            }
            let result = store.cell_dir(cell).join(store::RESULT_FILE);
            if let Some(u) = stored.unreadable.iter().find(|u| u.path == result) {
                unreadable_cells.insert(cell.id.clone(), u.error.clone());
            }
        }
    }
    let environment = readable(store.read_environment(), &mut unreadable);
    let mut node_environments = HashMap::new();
    for node in servers
        .values()
        .filter_map(|r: &store::ServerRecord| r.node.clone())
    {
        if !node_environments.contains_key(&node)
            && let Some(env) = readable(store.read_node_environment(&node), &mut unreadable)
        {
            node_environments.insert(node, env);
        }
    }
    Ok(view::Stored {
        results: stored
            .cells
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect(),
        failures,
        servers,
        environment,
        node_environments,
        unreadable_cells,
        unreadable,
    })
}

/// The record if it could be read; otherwise its problem (the error names the file) is noted.
fn readable<T>(read: std::io::Result<Option<T>>, unreadable: &mut Vec<String>) -> Option<T> {
    read.unwrap_or_else(|e| {
        unreadable.push(e.to_string());
        None
    })
}

/// Stored cells in plan order; results the plan no longer has follow, sorted by id.
fn csv_order<'a>(plan: &Plan, stored: &'a view::Stored) -> Vec<&'a store::CellResult> {
    let order: HashMap<&str, usize> = plan
        .servers
        .iter()
        .flat_map(|s| &s.points)
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    let mut cells: Vec<&store::CellResult> = stored.results.values().collect();
    cells.sort_by(|a, b| {
        let key = |c: &store::CellResult| order.get(c.id.as_str()).copied().unwrap_or(usize::MAX);
        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
    });
    cells
}

#[derive(Clone, Copy)]
enum Which {
    Summary,
    Record,
}

/// The two templates, parsed, with the names and sources errors refer to.
struct Templates {
    tera: tera::Tera,
    summary: (String, String),
    record: (String, String),
}

impl Templates {
    fn load(exp: &Experiment) -> anyhow::Result<Templates> {
        let source = |custom: &Option<PathBuf>, name: &str, builtin: &str| match custom {
            Some(path) => std::fs::read_to_string(path)
                .map(|text| (path.display().to_string(), text))
                .with_context(|| format!("reading the template {}", path.display())),
            None => Ok((name.to_string(), builtin.to_string())),
        };
        let summary = source(&exp.report.summary_template, SUMMARY_NAME, SUMMARY_TEMPLATE)?;
        let record = source(&exp.report.record_template, RECORD_NAME, RECORD_TEMPLATE)?;
        let mut tera = tera::Tera::default();
        // Markdown, not HTML: escaping would turn `<outdir>` and `&` in commands into entities.
        tera.autoescape_on(Vec::new());
        for (name, text) in [&summary, &record] {
            tera.add_raw_template(name, text)
                .map_err(|e| template_error(name, text, &e))?;
        }
        Ok(Templates {
            tera,
            summary,
            record,
        })
    }

    fn render(&self, which: Which, context: &impl serde::Serialize) -> anyhow::Result<String> {
        let (name, text) = match which {
            Which::Summary => &self.summary,
            Which::Record => &self.record,
        };
        let ctx = tera::Context::from_serialize(context)
            .with_context(|| format!("preparing the data for template {name}"))?;
        self.tera
            .render(name, &ctx)
            .map(|out| tidy(&out))
            .map_err(|e| template_error(name, text, &e))
    }
}

/// Template whitespace control is fiddly; rather than make every template fight it, the output loses
/// leading blank lines and runs of blank lines (insignificant in markdown) and ends with one newline.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    let mut blank_run = 0;
    for line in text.trim_start_matches('\n').lines() {
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let trimmed = out.trim_end_matches('\n').len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

/// Turns a tera error into one message naming the template, the line and the variable. tera reports the
/// line itself for syntax errors; for a missing variable or filter it names only the variable, so the
/// line is the first one of the template that mentions it inside a tag.
pub fn template_error(name: &str, source: &str, err: &tera::Error) -> anyhow::Error {
    let mut messages = vec![err.to_string()];
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        messages.push(c.to_string());
        cause = c.source();
    }
    let detail = messages.last().cloned().unwrap_or_default();
    if let Some(line) = syntax_error_line(&detail) {
        return anyhow::anyhow!(
            "template {name}, line {line}: syntax error\n{}",
            detail.trim_end()
        );
    }
    let what = detail
        .split(" while rendering")
        .next()
        .unwrap_or(&detail)
        .trim()
        .to_string();
    match backticked(&detail).and_then(|token| line_of(source, token).map(|l| (token, l))) {
        Some((token, line)) => {
            let what = if what.starts_with("Variable") {
                format!("variable `{token}` is not defined ({what})")
            } else {
                what
            };
            anyhow::anyhow!("template {name}, line {line}: {what}")
        }
        None => anyhow::anyhow!("template {name}: {}", messages.join(": ")),
    }
}

/// The line of a pest syntax error (` --> 12:5`).
fn syntax_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("--> ")? + 4..];
    rest.split(':').next()?.trim().parse().ok()
}

/// The first name tera quotes in a message (it uses both `x` and 'x').
fn backticked(message: &str) -> Option<&str> {
    let open = message.find(['`', '\''])?;
    let quote = message[open..].chars().next()?;
    let start = open + 1;
    let len = message[start..].find(quote)?;
    Some(&message[start..start + len])
}

/// 1-based line of the first tag mentioning `token` (or of the first mention at all).
fn line_of(source: &str, token: &str) -> Option<usize> {
    let in_tag = |l: &str| l.contains(token) && (l.contains("{{") || l.contains("{%"));
    let lines: Vec<&str> = source.lines().collect();
    lines
        .iter()
        .position(|l| in_tag(l))
        .or_else(|| lines.iter().position(|l| l.contains(token)))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_err(source: &str) -> String {
        let mut tera = tera::Tera::default();
        let err = match tera.add_raw_template("t.tera", source) {
            Err(e) => e,
            Ok(()) => tera
                .render(
                    "t.tera",
                    &tera::Context::from_serialize(serde_json::json!({"a": {"b": 1}})).unwrap(),
                )
                .unwrap_err(),
        };
        template_error("my/t.tera", source, &err).to_string()
    }

    #[test]
    fn missing_variable_names_template_line_and_variable() {
        let msg = render_err("line one\n{{ a.b }}\n\n{% if true %}{{ nope.deeper }}{% endif %}\n");
        assert!(msg.starts_with("template my/t.tera, line 4:"), "{msg}");
        assert!(msg.contains("`nope.deeper`"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = render_err("ok\nok\n{{ a.b + }}\nok\n");
        assert!(msg.starts_with("template my/t.tera, line 3"), "{msg}");
    }

    #[test]
    fn unknown_filter_names_line() {
        let msg = render_err("x\n{{ a.b | frobnicate }}\n");
        assert!(
            msg.contains("line 2") && msg.contains("frobnicate"),
            "{msg}"
        );
    }
}
