//! One function per subcommand; each returns the exit code or an error for the printer in `cli`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::exit::{self, Failure};
use crate::experiment::executor::ExecutorKind;
use crate::experiment::{self, Experiment};
use crate::plan::{self, Plan};
use crate::preflight;
use crate::progress::say;
use crate::store::Store;

/// Which view of the experiment file a command works on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// `--executor`: overrides `[executor] kind`.
    pub executor: Option<ExecutorKind>,
    /// `--rehearse`: every engine becomes the simulated engine, results in `<results_dir>-rehearsal`.
    pub rehearse: bool,
}

impl View {
    /// The arguments that give a `runner unit` in a Slurm job this same view.
    fn unit_args(&self) -> Vec<String> {
        let mut args = vec!["--executor".to_string(), "slurm".to_string()];
        if self.rehearse {
            args.push("--rehearse".into());
        }
        args
    }
}

/// Loads, validates and expands an experiment file, applying `--only` filters. Every input problem
/// becomes a [`Failure`] with exit code 2, before anything is started.
pub fn prepare(file: &Path, only: &[String], view: &View) -> anyhow::Result<(Experiment, Plan)> {
    let mut exp = experiment::load(file).map_err(|d| Failure::bad_input(d.to_string()))?;
    if let Some(kind) = view.executor {
        exp.executor.kind = kind;
    }
    if view.rehearse {
        // The real file expands first: a rehearsal must not hide what tonight would refuse.
        plan::expand(&exp).map_err(|d| Failure::bad_input(d.to_string()))?;
        exp = exp.rehearsal();
    }
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
    view: &View,
    mut policy: crate::run::Policy,
    preflight: bool,
) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, only, view)?;
    let store = Store::new(&exp.results_dir);
    let slurm = exp.executor.kind == ExecutorKind::Slurm;
    if policy.detach && !slurm {
        return Err(Failure::bad_input(
            "--detach submits Slurm jobs and returns; a local run has nothing to leave running\n  help: add `--executor slurm` (or `[executor] kind = \"slurm\"`), or run locally under tmux/nohup (see the README)",
        )
        .into());
    }
    if slurm && crate::tool::find_program("sbatch", None, None).is_none() {
        return Err(Failure::bad_input(format!(
            "{}: the Slurm executor submits with `sbatch`, which is not on PATH here\n  help: run on a login node of the cluster, or use `--executor local`",
            file.display()
        ))
        .into());
    }
    policy.unit_args = view.unit_args();
    if !slurm {
        // A runner killed hard may have left servers running on this host: clean them up before
        // anything starts (and before the pre-flight, which would find their ports taken). Slurm jobs
        // clean up after their own server on their node.
        for pid_file in store.pid_files() {
            match crate::server::cleanup_stale(&pid_file) {
                Ok(Some(cleanup)) => say(format!(
                    "cleaned up a stale server from an earlier run: {cleanup}"
                )),
                Ok(None) => {}
                Err(e) => return Err(Failure::bad_input(format!("{e}")).into()),
            }
        }
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
                say(format!("pre-flight {}: {d}", severity.label()));
            }
        }
    }
    ensure_writable(&exp)?;
    crate::store::write_atomic(
        &exp.results_dir.join("experiment.toml"),
        exp.source.as_bytes(),
    )
    .context("copying the experiment file into the results directory")?;
    let outcome = crate::run::execute(&exp, &plan, &store, &policy)?;
    if policy.detach {
        say(format!(
            "{} Slurm job(s) submitted or already queued; `runner status {}` shows their state, \
             and rerunning this command waits for them and renders the report",
            outcome.detached_jobs,
            file.display()
        ));
        return Ok(exit::OK);
    }
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

pub fn plan(file: &Path, only: &[String], view: &View, json: bool) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, only, view)?;
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
pub fn report(file: &Path, view: &View) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, &[], view)?;
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
        say(format!("warning: skipped an unreadable record: {problem}"));
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
/// What a Slurm job asks of `runner unit`.
#[derive(Debug, Clone)]
pub struct UnitRequest {
    pub file: std::path::PathBuf,
    pub server: String,
    pub server_hash: Option<String>,
    pub cells: Vec<String>,
    pub force: bool,
    pub view: View,
}

/// Runs one server configuration here (inside a Slurm job): its engine's version and this node's
/// environment, then the unit on the GPUs Slurm gave (`CUDA_VISIBLE_DEVICES`). Writes cells, the server
/// record and the node's environment; never the report (the coordinator renders it).
pub fn unit(req: &UnitRequest) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(&req.file, &[], &req.view)?;
    let Some(server) = plan.servers.iter().find(|s| s.id == req.server) else {
        return Err(Failure::bad_input(format!(
            "{}: no server configuration `{}`\n  help: `runner plan {}` lists them",
            req.file.display(),
            req.server,
            req.file.display()
        ))
        .into());
    };
    if let Some(hash) = &req.server_hash
        && *hash != server.hash
    {
        return Err(Failure::bad_input(format!(
            "{}: server {} has changed since its job was submitted (settings hash {} now, {hash} then); \
             nothing was run\n  help: rerun the coordinator (`runner run {} --executor slurm`), which submits the current settings",
            req.file.display(),
            server.id,
            server.hash,
            req.file.display()
        ))
        .into());
    }
    let store = Store::new(&exp.results_dir);
    let pending: Vec<&plan::CellPlan> = server
        .points
        .iter()
        .filter(|c| req.cells.is_empty() || req.cells.contains(&c.id))
        .filter(|c| req.force || store.cell_status(c) != plan::CellStatus::Done)
        .collect();
    let placement = crate::unit::Placement {
        executor: "slurm".into(),
        node: crate::server::this_host(),
        job_id: std::env::var("SLURM_JOB_ID").ok(),
        gpus: std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .filter(|g| !g.trim().is_empty())
            .map(|g| g.split(',').map(|s| s.trim().to_string()).collect()),
    };
    say(format!(
        "runner unit: {} on {}{}{}: {} cell(s)",
        server.id,
        placement.node,
        placement
            .job_id
            .as_deref()
            .map(|j| format!(", Slurm job {j}"))
            .unwrap_or_default(),
        placement
            .gpu_list()
            .map(|g| format!(", GPUs {g}"))
            .unwrap_or_default(),
        pending.len()
    ));
    if pending.is_empty() {
        return Ok(exit::OK);
    }
    let result = crate::run::with_signals(async |shutdown| {
        let versions = crate::run::engine_versions(&exp, &[server]).await;
        crate::run::capture_environment(&exp, &store, &versions).await?;
        let client = crate::load::LoadClient::new().context("creating the HTTP client")?;
        let ports = crate::server::PortAllocator::new();
        let ctx = crate::unit::Context {
            exp: &exp,
            store: &store,
            client: &client,
            shutdown,
            ports: &ports,
            force: req.force,
        };
        let reporter = crate::progress::Reporter::new(pending.len() as u64, false);
        let progress = reporter.unit(&server.id);
        let version = versions.get(&server.engine).cloned().flatten();
        let result = crate::unit::run(&ctx, &progress, server, &pending, version, &placement).await;
        drop(progress);
        reporter.finish();
        anyhow::Ok(result)
    })?;
    Ok(if result.interrupted {
        exit::INTERRUPTED
    } else if result.failed() {
        exit::CELLS_FAILED
    } else {
        exit::OK
    })
}

/// `runner status FILE`: every server configuration's and cell's state, from the results directory and,
/// for Slurm jobs, from the queue. Starts nothing.
pub fn status(file: &Path, view: &View) -> anyhow::Result<i32> {
    let (exp, plan) = prepare(file, &[], view)?;
    let store = Store::new(&exp.results_dir);
    let jobs: Vec<Option<crate::store::JobRecord>> = plan
        .servers
        .iter()
        .map(|s| store.read_job(s).ok().flatten())
        .collect();
    let queue = if jobs.iter().any(Option::is_some) {
        crate::executor::slurm::queue_now()
            .map_err(|e| say(format!("note: {e}")))
            .ok()
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!(
        "{} ({}), results in {}",
        exp.title,
        file.display(),
        exp.results_dir.display()
    )];
    let mut totals = [0usize; 4];
    for (server, job) in plan.servers.iter().zip(&jobs) {
        let statuses: Vec<plan::CellStatus> =
            server.points.iter().map(|c| store.cell_status(c)).collect();
        let count = |s: plan::CellStatus| statuses.iter().filter(|x| **x == s).count();
        for s in &statuses {
            totals[*s as usize] += 1;
        }
        let record = store.read_server(server).ok().flatten();
        let mut facts = Vec::new();
        if let Some(r) = &record {
            facts.push(format!("server {}", server_status_word(r.status)));
            if let Some(node) = &r.node {
                facts.push(format!("on {node}"));
            }
            if let Some(gpus) = &r.gpus {
                facts.push(format!("GPUs {gpus}"));
            }
        } else {
            facts.push("never started".into());
        }
        if let Some(job) = job {
            facts.push(crate::executor::slurm::describe_job(job, queue.as_ref()));
        }
        lines.push(format!(
            "\n{}  {}/{} done, {} failed, {} pending, {} changed; {}",
            server.id,
            count(plan::CellStatus::Done),
            statuses.len(),
            count(plan::CellStatus::Failed),
            count(plan::CellStatus::Pending),
            count(plan::CellStatus::Changed),
            facts.join(", ")
        ));
        for (cell, status) in server.points.iter().zip(&statuses) {
            let mut line = format!("    {:<40} {}", cell.id, status.label());
            if *status == plan::CellStatus::Failed
                && let Ok(Some(f)) = store.read_failure(cell)
            {
                line.push_str(&format!(
                    ": {}",
                    f.reason.lines().next().unwrap_or_default()
                ));
            }
            lines.push(line);
        }
    }
    lines.push(format!(
        "\ntotals: {} cells; {} done, {} pending, {} failed, {} changed",
        plan.cell_count(),
        totals[plan::CellStatus::Done as usize],
        totals[plan::CellStatus::Pending as usize],
        totals[plan::CellStatus::Failed as usize],
        totals[plan::CellStatus::Changed as usize],
    ));
    quiet_when_closed(lines.iter().try_for_each(|l| writeln!(out, "{l}")))
        .context("writing to stdout")?;
    Ok(exit::OK)
}

fn server_status_word(s: crate::store::ServerStatus) -> &'static str {
    use crate::store::ServerStatus;
    match s {
        ServerStatus::Started => "running (or its runner was killed)",
        ServerStatus::Ok => "ok",
        ServerStatus::Failed => "failed",
        ServerStatus::Interrupted => "interrupted",
    }
}
