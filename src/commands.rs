//! One function per subcommand; each returns the exit code or an error for the printer in `cli`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::exit::{self, Failure};
use crate::experiment::{self, Experiment};
use crate::plan::{self, Plan};
use crate::preflight;
use crate::progress::say;
use crate::store::Store;

/// Loads, validates and expands an experiment file, applying `--only` filters. Every input problem
/// becomes a [`Failure`] with exit code 2, before anything is started.
pub fn prepare(file: &Path, only: &[String]) -> anyhow::Result<(Experiment, Plan)> {
    let exp = experiment::load(file).map_err(|d| Failure::bad_input(d.to_string()))?;
    let plan = plan::expand(&exp).map_err(|d| Failure::bad_input(d.to_string()))?;
    let filters = plan::parse_filters(only, &plan).map_err(Failure::bad_input)?;
    let plan = plan.select(&filters);
    if plan.servers.is_empty() {
        // Each value exists (parse_filters checked), but not together.
        return Err(Failure::bad_input(format!(
            "--only {} matches no cell: each value exists, but no cell has all of them\n  help: `runner plan {}` lists the cells",
            only.join(","),
            file.display()
        ))
        .into());
    }
    Ok((exp, plan))
}

/// Runs an experiment: validation, the pre-flight checks (unless `preflight` is false), then the plan.
pub fn run(
    file: &Path,
    only: &[String],
    policy: crate::run::Policy,
    preflight: bool,
) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, only)?;
    let store = Store::new(&exp.results_dir);
    // A runner killed hard may have left its server running: clean it up before anything starts (and
    // before the pre-flight, which would find its port taken).
    match crate::server::cleanup_stale(&store.pid_file()) {
        Ok(Some(cleanup)) => say(format!(
            "cleaned up a stale server from an earlier run: {cleanup}"
        )),
        Ok(None) => {}
        Err(e) => return Err(Failure::bad_input(format!("{e}")).into()),
    }
    if preflight {
        let report = preflight::check(&exp, &plan);
        if report.has_errors() {
            return Err(Failure::bad_input(format!(
                "pre-flight: nothing was started, because this would fail tonight:\n{}\n\nfix these, or pass --no-preflight to start anyway",
                report.diagnostics(preflight::Severity::Error)
            ))
            .into());
        }
        for severity in [preflight::Severity::Warning, preflight::Severity::Note] {
            let d = report.diagnostics(severity);
            if !d.is_empty() {
                eprintln!("pre-flight {}: {d}", severity.label());
            }
        }
    }
    ensure_writable(&exp)?;
    crate::store::write_atomic(
        &exp.results_dir.join("experiment.toml"),
        exp.source.as_bytes(),
    )
    .context("copying the experiment file into the results directory")?;
    let outcome = crate::run::execute(&exp, &plan, &store, policy)?;
    say(format!(
        "{} cell(s) run, {} already done, {} failed{}; results in {}, report in {}",
        outcome.cells_run,
        outcome.cells_skipped,
        outcome.cells_failed,
        if outcome.interrupted {
            ", interrupted"
        } else {
            ""
        },
        exp.results_dir.display(),
        exp.results_dir.join("report/summary.zh.md").display()
    ));
    Ok(outcome.exit_code())
}

/// The results directory must be writable before the first server starts, not after an hour (also with
/// --no-preflight: nothing can run without it).
fn ensure_writable(exp: &Experiment) -> anyhow::Result<()> {
    let dir = &exp.results_dir;
    preflight::ensure_writable(dir).map_err(|e| {
        Failure::bad_input(format!(
            "{}: results_dir {} is not writable: {e}\n  help: choose another `results_dir` or fix the permissions",
            exp.file.display(),
            dir.display()
        ))
        .into()
    })
}

pub fn plan(file: &Path, only: &[String], json: bool) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, only)?;
    let store = Store::new(&exp.results_dir);
    // The same checks a run makes first, shown, not enforced: a plan is also read away from the host.
    let checks = preflight::check(&exp, &plan);
    let telemetry = crate::telemetry::availability();
    let mut out = std::io::stdout().lock();
    let written = if json {
        let doc = crate::plan::print::json_value(&exp, &plan, &|c| store.cell_status(c))
            .and_then(|mut doc| {
                doc["preflight"] = serde_json::to_value(&checks.findings)?;
                doc["telemetry"] = serde_json::to_value(&telemetry)?;
                Ok(doc)
            })
            .context("building the plan's JSON")?;
        serde_json::to_writer_pretty(&mut out, &doc)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        crate::plan::print::text(&mut out, &exp, &plan, &|c| store.cell_status(c))
            .and_then(|()| crate::plan::print::telemetry_text(&mut out, &exp, &telemetry))
            .and_then(|()| write!(out, "\n{checks}"))
    };
    quiet_when_closed(written).context("writing the plan to stdout")?;
    Ok(exit::OK)
}

/// A reader that stopped reading (`runner plan FILE | head`) is not an error: what it wanted, it got.
fn quiet_when_closed(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Re-renders the report from stored results only; nothing is started. A results directory that does
/// not exist yet is a usage error (exit 2): there is nothing to report, and rendering an all-pending
/// report would only hide the mistake (wrong file, or a run that never happened).
pub fn report(file: &Path) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, &[])?;
    let store = Store::new(&exp.results_dir);
    if !store.root.is_dir() {
        return Err(Failure::bad_input(format!(
            "no results at {}\n  help: run `runner {}` first; the report is rendered from its results",
            store.root.display(),
            file.display()
        ))
        .into());
    }
    let files = crate::report::render_all(&exp, &plan, &store)
        .with_context(|| format!("rendering the report of {}", file.display()))?;
    let mut out = std::io::stdout().lock();
    let mut lines = vec![files.summary.display().to_string()];
    lines.extend(files.records.iter().map(|p| p.display().to_string()));
    lines.push(format!(
        "{} ({} charts)",
        store.root.join("report").join("charts").display(),
        files.charts.len()
    ));
    lines.push(files.csv.display().to_string());
    quiet_when_closed(lines.iter().try_for_each(|line| writeln!(out, "{line}")))
        .context("writing to stdout")?;
    for problem in &files.unreadable {
        say(format!(
            "warning: skipped an unreadable record (the report shows the rest): {problem}"
        ));
    }
    if files.warnings > 0 || files.missing > 0 {
        say(format!(
            "note: {} warning(s) next to numbers, {} cell(s) without a result",
            files.warnings, files.missing
        ));
    }
    Ok(exit::OK)
}

/// `runner compare A B`: reads both runs' stored results, writes the comparison (Markdown or JSON) to
/// stdout or `--out`, and returns 1 when a `--fail-if` threshold was missed. Bad thresholds and paths
/// without results are usage errors (exit 2), checked before anything is written.
pub fn compare(
    (a, b): (&Path, &Path),
    fail_if: &[String],
    json: bool,
    out: Option<&Path>,
) -> anyhow::Result<i32> {
    use crate::report::compare::{self, Threshold};
    let thresholds = fail_if
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::bad_input)?;
    let a = open_run(a)?;
    let b = open_run(b)?;
    let cmp = compare::compare(&a, &b, &thresholds);
    let text = if json {
        let mut text =
            serde_json::to_string_pretty(&cmp).context("writing the comparison as JSON")?;
        text.push('\n');
        text
    } else {
        compare::markdown(&cmp)?
    };
    match out {
        Some(path) => {
            crate::store::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            say(format!("comparison written to {}", path.display()));
        }
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing to stdout")?,
    }
    for problem in a.unreadable.iter().chain(&b.unreadable) {
        eprintln!("warning: skipped an unreadable record: {problem}");
    }
    if !cmp.only_a.is_empty() || !cmp.only_b.is_empty() {
        say(format!(
            "note: {} cell(s) only in A, {} only in B (listed in the comparison)",
            cmp.only_a.len(),
            cmp.only_b.len()
        ));
    }
    for t in cmp.thresholds.iter().filter(|t| !t.passed) {
        let cells: Vec<String> = t
            .violations
            .iter()
            .map(|v| format!("{} ({})", v.cell, v.reason))
            .collect();
        say(format!("fail-if {}: {}", t.expr, cells.join("; ")));
    }
    // Exit 1 is the documented "something failed" code; here: a threshold was missed.
    Ok(if cmp.passed {
        exit::OK
    } else {
        exit::CELLS_FAILED
    })
}

/// One side of `runner compare`: a results directory, or the `results_dir` of an experiment file.
fn open_run(path: &Path) -> anyhow::Result<crate::report::compare::Run> {
    use crate::report::compare::{DEFAULT_HIT_RATE_THRESHOLD, Run};
    let label = path.display().to_string();
    let (dir, threshold) = if path.is_dir() {
        (path.to_path_buf(), DEFAULT_HIT_RATE_THRESHOLD)
    } else if path.is_file() {
        let exp = experiment::load(path).map_err(|d| Failure::bad_input(d.to_string()))?;
        (exp.results_dir.clone(), exp.report.prefix_cache_warn_above)
    } else {
        return Err(Failure::bad_input(format!(
            "{label}: no such file or directory\n  help: give an experiment file or a results directory"
        ))
        .into());
    };
    let run = Run::read(label.clone(), dir.clone(), threshold)
        .with_context(|| format!("reading the results under {}", dir.display()))?;
    run.ok_or_else(|| {
        Failure::bad_input(format!(
            "{label}: no results at {} (no cells/ directory)\n  help: run the experiment first, or give the results directory it wrote",
            dir.display()
        ))
        .into()
    })
}
