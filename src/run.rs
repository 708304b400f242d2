//! The orchestrator: decides the order of things and nothing else. For each server configuration with
//! pending cells: start it ([`crate::server`]), prove it ready, run each pending load point
//! ([`crate::load`]), store each cell the moment it finishes ([`crate::store`]), tear the server down, and
//! re-render the report ([`crate::report`]).
//!
//! Signals ([`crate::signals`]): the first Ctrl-C, SIGTERM or SIGHUP cancels the load, tears the current
//! server down gracefully and ends with exit code 130, keeping every finished cell; a second one kills the
//! server's process group at once, in whatever phase it is: every phase of a server's life runs under
//! [`guard`], which obeys it. A runner killed hard leaves a pid file that the next run uses to clean up the
//! stale server.
//!
//! Nothing here blocks the async runtime: version commands, the environment capture, port probes and
//! `/proc` scans run on the blocking pool (the runtime's threads read the load's streams).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;

use crate::exit;
use crate::experiment::{Engine, Experiment, Launch};
use crate::load::{self, LoadClient, LoadError, Target};
use crate::plan::CellStatus;
use crate::plan::print::{command_line, redacted_env};
use crate::plan::{CellPlan, Plan, Rendered, ServerPlan};
use crate::progress::Reporter;
use crate::server::{self, KillHandle, ServerSpec, SmokeRequest, Teardown};
use crate::signals::Shutdown;
use crate::store::{
    CellFailure, CellResult, Schema, ServerRecord, ServerStatus, Store, now_rfc3339,
};

/// What the person asked of this run, as plain data (the command line maps its flags to this).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Stop at the first failed server configuration or cell.
    pub fail_fast: bool,
    /// Rerun cells even when a result with the same settings hash exists.
    pub force: bool,
}

/// How a run ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub cells_run: usize,
    pub cells_skipped: usize,
    pub cells_failed: usize,
    pub servers_failed: usize,
    pub interrupted: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            exit::INTERRUPTED
        } else if self.cells_failed > 0 || self.servers_failed > 0 {
            exit::CELLS_FAILED
        } else {
            exit::OK
        }
    }
}

/// Runs the plan. Input was validated before; errors here are runtime failures (exit 1).
pub fn execute(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
    policy: Policy,
) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(execute_async(exp, plan, store, policy));
    // A version command still running after an early Ctrl-C must not keep the runner alive: its thread is
    // left behind (the command ends at its own time limit).
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// What every server configuration of a run shares.
struct Shared<'a> {
    exp: &'a Experiment,
    store: &'a Store,
    client: &'a LoadClient,
    reporter: &'a Reporter,
    shutdown: &'a Shutdown,
}

/// Runs one phase of a server's life (start, readiness, a load point, teardown) obeying the second signal:
/// when it comes, the group is SIGKILLed at once and the phase is left to end on its own (its process is
/// gone, so it ends promptly). The first signal reaches the phases through `shutdown.stopping()`.
async fn guard<T>(
    phase: impl Future<Output = T>,
    shutdown: &Shutdown,
    group: Option<&KillHandle>,
) -> T {
    let mut phase = std::pin::pin!(phase);
    tokio::select! {
        biased;
        out = &mut phase => out,
        () = shutdown.killing().cancelled() => {
            if let Some(group) = group {
                group.kill_now();
            }
            phase.await
        }
    }
}

async fn execute_async(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
    policy: Policy,
) -> anyhow::Result<Outcome> {
    let shutdown = Shutdown::new();
    let listener = shutdown
        .listen()
        .context("installing the signal handlers")?;
    let reporter = Reporter::new(plan.cell_count() as u64);
    let mut outcome = Outcome::default();
    // Engine versions once per engine, before any server starts: they label every result and the
    // environment record, and a missing engine binary shows up in the first seconds.
    let versions = tokio::select! {
        versions = engine_versions(exp, plan) => versions,
        () = shutdown.stopping().cancelled() => {
            outcome.interrupted = true;
            listener.abort();
            return Ok(outcome);
        }
    };
    for (engine, version) in &versions {
        reporter.line(format!(
            "{engine}: {}",
            version
                .as_deref()
                .unwrap_or("version unknown (version_command failed)")
        ));
    }
    let known: BTreeMap<String, String> = versions
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    let file = exp.file.clone();
    let environment = tokio::task::spawn_blocking(move || crate::envinfo::capture(&file, &known))
        .await
        .context("capturing the environment")?;
    store
        .write_environment(&environment)
        .context("writing environment.json")?;
    let client = LoadClient::new().context("creating the HTTP client")?;
    let ctx = Shared {
        exp,
        store,
        client: &client,
        reporter: &reporter,
        shutdown: &shutdown,
    };
    let n = plan.servers.len();

    for (i, server) in plan.servers.iter().enumerate() {
        if shutdown.stopping().is_cancelled() {
            outcome.interrupted = true;
            break;
        }
        let pending: Vec<&CellPlan> = server
            .points
            .iter()
            .filter(|c| policy.force || store.cell_status(c) != CellStatus::Done)
            .collect();
        let skipped = server.points.len() - pending.len();
        outcome.cells_skipped += skipped;
        reporter.cells_done(skipped as u64);
        if pending.is_empty() {
            reporter.line(format!(
                "[{}/{n}] {}: all {} cells done, not started",
                i + 1,
                server.id,
                server.points.len()
            ));
            continue;
        }
        reporter.line(format!(
            "[{}/{n}] {}: {} cell(s) to run",
            i + 1,
            server.id,
            pending.len()
        ));
        let version = versions.get(&server.engine).cloned().flatten();
        let result = run_server(&ctx, server, &pending, version).await;
        outcome.cells_run += result.cells_ok;
        outcome.cells_failed += result.cells_failed;
        if result.server_failed {
            outcome.servers_failed += 1;
        }
        if result.interrupted || shutdown.stopping().is_cancelled() {
            outcome.interrupted = true;
        }
        // Re-render after every server configuration so a crash later loses no report.
        match render_report(exp, plan, store).await {
            Ok(unreadable) => {
                for problem in unreadable {
                    reporter.line(format!(
                        "warning: report skipped an unreadable record: {problem}"
                    ));
                }
            }
            Err(e) => reporter.line(format!("warning: report not rendered: {e:#}")),
        }
        if outcome.interrupted
            || (policy.fail_fast && (result.server_failed || result.cells_failed > 0))
        {
            break;
        }
    }
    reporter.finish();
    listener.abort();
    Ok(outcome)
}

/// Renders the report on the blocking pool (templates and files; it must not stall a running load);
/// returns the records it had to skip as unreadable.
async fn render_report(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
) -> anyhow::Result<Vec<String>> {
    let (exp, plan, store) = (exp.clone(), plan.clone(), store.clone());
    tokio::task::spawn_blocking(move || {
        crate::report::render_all(&exp, &plan, &store).map(|files| files.unreadable)
    })
    .await
    .context("the report task")?
}

#[derive(Default)]
struct ServerResult {
    cells_ok: usize,
    cells_failed: usize,
    server_failed: bool,
    interrupted: bool,
}

async fn run_server(
    ctx: &Shared<'_>,
    server: &ServerPlan,
    pending: &[&CellPlan],
    engine_version: Option<String>,
) -> ServerResult {
    let (exp, store, reporter) = (ctx.exp, ctx.store, ctx.reporter);
    let cancel = ctx.shutdown.stopping();
    let engine = &exp.engines[&server.engine];
    let mut record = ServerRecord {
        id: server.id.clone(),
        hash: server.hash.clone(),
        engine: server.engine.clone(),
        engine_version,
        started_at: now_rfc3339(),
        ..ServerRecord::default()
    };
    let mut result = ServerResult::default();

    // Everything up to "ready": on failure every pending cell of this server fails with the reason.
    let (running, rendered) = match start_server(ctx, engine, server, &mut record).await {
        Ok(started) => started,
        Err(failure) => {
            if let Some(teardown) = &failure.teardown {
                record_teardown(reporter, &mut record, teardown);
            }
            record.status = if failure.interrupted {
                ServerStatus::Interrupted
            } else {
                ServerStatus::Failed
            };
            record.reason = Some(failure.reason.clone());
            record.log_tail = failure.log_tail.clone();
            write_or_warn(reporter, store.write_server(&record), "server record");
            if failure.interrupted {
                result.interrupted = true;
                return result;
            }
            reporter.line(format!("  server failed: {}", failure.reason));
            for cell in pending {
                fail_cell(
                    store,
                    reporter,
                    server,
                    cell,
                    &failure.reason,
                    &failure.log_tail,
                );
            }
            result.server_failed = true;
            result.cells_failed = pending.len();
            return result;
        }
    };
    let group = running.as_ref().map(server::RunningServer::kill_handle);
    let mut running = running;

    let target = Target {
        base_url: rendered.base_url.clone(),
        model: rendered.request_model.clone(),
        dialect: engine.defaults.dialect,
        metrics_url: engine
            .metrics_path
            .as_ref()
            .map(|p| format!("{}{p}", rendered.base_url)),
        cache_counters: engine.defaults.cache_counters,
    };
    let command = command_line(&rendered);
    for (k, cell) in pending.iter().enumerate() {
        if cancel.is_cancelled() {
            result.interrupted = true;
            break;
        }
        let label = format!("{} ({}/{})", cell.id, k + 1, pending.len());
        reporter.phase(format!(
            "{}: load point {}/{}",
            server.id,
            k + 1,
            pending.len()
        ));
        let progress = load::Progress::default();
        let bar = reporter.point(&label, progress.done.clone(), u64::from(cell.load.requests));
        let started_at = now_rfc3339();
        // Records go to the cell's requests.jsonl as requests finish.
        let outcome = match store.requests_writer(&cell.id) {
            Ok(sink) => {
                let point =
                    load::run_point(ctx.client, &target, &cell.load, &progress, cancel, sink);
                guard(point, ctx.shutdown, group.as_ref()).await
            }
            Err(e) => Err(LoadError::Record(e)),
        };
        drop(bar);
        // A server that died under load invalidates the point, whatever the client saw.
        let exited = running.as_mut().and_then(|r| r.exit_status());
        let log_tail = || running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
        match (outcome, exited) {
            (Err(LoadError::Interrupted), _) => {
                result.interrupted = true;
                break;
            }
            (_, Some(status)) => {
                let tail = log_tail();
                let reason = format!("the server exited during the load point ({status})");
                reporter.line(format!("  {}: {reason}", cell.id));
                for c in &pending[k..] {
                    fail_cell(store, reporter, server, c, &reason, &tail);
                }
                result.cells_failed += pending.len() - k;
                result.server_failed = true;
                break;
            }
            (Err(e), None) => {
                let reason = format!("load point failed: {e:#}");
                fail_cell(store, reporter, server, cell, &reason, &log_tail());
                result.cells_failed += 1;
            }
            (Ok(point), None) if point.summary.succeeded == 0 => {
                let reason = no_success_reason(&point.summary.errors, &target.model, &server.model);
                fail_cell(store, reporter, server, cell, &reason, &log_tail());
                result.cells_failed += 1;
            }
            (Ok(point), None) => {
                let cell_result = CellResult {
                    schema: Schema::default(),
                    id: cell.id.clone(),
                    hash: cell.hash.clone(),
                    server_id: server.id.clone(),
                    server_hash: server.hash.clone(),
                    model: server.model.clone(),
                    precision: server.precision.clone(),
                    engine: server.engine.clone(),
                    vars: server
                        .cell_vars(cell)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    load: serde_json::to_value(&cell.load).unwrap_or_default(),
                    summary: point.summary,
                    server_metrics: point.server_metrics,
                    command: command.clone(),
                    engine_version: record.engine_version.clone(),
                    started_at,
                    finished_at: now_rfc3339(),
                };
                let stored = match &point.prompts {
                    Some(prompts) => store.write_prompts(&cell.id, prompts),
                    None => Ok(()),
                }
                .and_then(|()| store.write_cell(&cell_result, point.records));
                match stored {
                    Ok(()) => {
                        reporter.line(format!("  {}", cell_line(&cell_result)));
                        reporter.cells_done(1);
                        result.cells_ok += 1;
                    }
                    Err(e) => {
                        reporter.line(format!("  {}: could not store the result: {e}", cell.id));
                        result.cells_failed += 1;
                    }
                }
            }
        }
    }

    if let Some(r) = running {
        reporter.phase(format!("{}: stopping", server.id));
        let teardown = guard(r.stop(), ctx.shutdown, group.as_ref()).await;
        record_teardown(reporter, &mut record, &teardown);
    }
    record.status = if result.interrupted {
        ServerStatus::Interrupted
    } else if result.server_failed {
        ServerStatus::Failed
    } else {
        ServerStatus::Ok
    };
    write_or_warn(reporter, store.write_server(&record), "server record");
    result
}

/// The reason a point in which no request succeeded failed. Every request answered 404 almost always
/// means the server does not know the model name we send.
fn no_success_reason(
    errors: &std::collections::BTreeMap<String, u64>,
    sent_model: &str,
    model_id: &str,
) -> String {
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    let mut reason = format!("no request succeeded ({})", kinds.join(", "));
    if !errors.is_empty() && errors.keys().all(|k| k == "http_404") {
        reason.push_str(&format!(
            "\n  help: the server answered 404 to every request for model `{sent_model}`: it probably serves \
             the model under another name; set `served_model_name` in [models.{model_id}] to the name it \
             lists at /v1/models (or pass `--served-model-name` in the engine's command)"
        ));
    }
    reason
}

/// What a teardown did, into the server record and the terminal (the same facts for a failed start, an
/// interrupted one and a normal stop).
fn record_teardown(reporter: &Reporter, record: &mut ServerRecord, teardown: &Teardown) {
    record.teardown_s = Some(teardown.seconds);
    record.teardown_escalated = Some(teardown.escalated);
    record.teardown_leftovers = teardown.leftovers.clone();
    record.port_freed = Some(teardown.port_freed);
    record.gpu_wait_s = teardown.gpu_wait_s;
    if !teardown.leftovers.is_empty() || !teardown.port_freed {
        reporter.line(format!(
            "  warning: after teardown {} process(es) of the group remain and the port is {}",
            teardown.leftovers.len(),
            if teardown.port_freed {
                "free"
            } else {
                "still taken"
            }
        ));
    }
    reporter.line(format!(
        "  stopped in {:.1}s{}",
        teardown.seconds,
        if teardown.escalated {
            " (SIGKILL after the grace period or a second Ctrl-C)"
        } else {
            ""
        }
    ));
}

/// Why a server configuration never became ready; `teardown` is set when a process had been started.
struct StartFailure {
    reason: String,
    log_tail: Vec<String>,
    interrupted: bool,
    teardown: Option<Teardown>,
}

impl StartFailure {
    fn before_spawn(reason: String) -> StartFailure {
        StartFailure {
            reason,
            log_tail: Vec::new(),
            interrupted: false,
            teardown: None,
        }
    }
}

/// Picks the port, renders the command, starts the server (or attaches) and waits until it is ready.
async fn start_server(
    ctx: &Shared<'_>,
    engine: &Engine,
    server: &ServerPlan,
    record: &mut ServerRecord,
) -> Result<(Option<server::RunningServer>, Rendered), StartFailure> {
    let (exp, store, reporter) = (ctx.exp, ctx.store, ctx.reporter);
    let cancel = ctx.shutdown.stopping();
    let fail = StartFailure::before_spawn;
    let smoke_for = |rendered: &Rendered| {
        engine
            .smoke_test
            .then(|| SmokeRequest::completion(&rendered.request_model))
    };
    match &engine.launch {
        Launch::Attach { .. } => {
            let rendered = server.render(exp, None).map_err(fail)?;
            record.command = format!("(already running at {})", rendered.base_url);
            record.base_url = rendered.base_url.clone();
            reporter.phase(format!("{}: checking {}", server.id, rendered.base_url));
            let ready = server::attach(
                &rendered.base_url,
                &engine.ready_path,
                engine.ready_timeout,
                smoke_for(&rendered).as_ref(),
                cancel,
            )
            .await
            .map_err(|e| StartFailure {
                interrupted: matches!(e, server::StartError::Interrupted),
                ..fail(e.to_string())
            })?;
            record.time_to_ready_s = Some(ready.seconds);
            Ok((None, rendered))
        }
        Launch::Spawn { port, .. } => {
            let port = match port {
                Some(p) if server::port_in_use_async(*p).await => {
                    return Err(fail(format!(
                        "port {p} is already in use by another process; stop it or change `port` in [engines.{}]",
                        engine.name
                    )));
                }
                Some(p) => *p,
                None => server::pick_free_port().map_err(|e| fail(format!("no free port: {e}")))?,
            };
            let rendered = server.render(exp, Some(port)).map_err(fail)?;
            record.command = command_line(&rendered);
            record.env = redacted_env(&rendered);
            record.base_url = rendered.base_url.clone();
            record.port = Some(port);
            let spec = ServerSpec {
                id: server.id.clone(),
                argv: rendered.argv.clone(),
                shell: rendered.shell,
                env: rendered
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                workdir: rendered.workdir.as_ref().map(Into::into),
                port,
                base_url: rendered.base_url.clone(),
                ready_path: engine.ready_path.clone(),
                ready_timeout: engine.ready_timeout,
                smoke: smoke_for(&rendered),
                stop_grace: engine.stop_grace,
                log_path: store.server_log_path(server),
                gpu_release_timeout: engine.gpu_release_timeout,
            };
            reporter.phase(format!("{}: starting on port {port}", server.id));
            let mut running =
                server::start(&spec, &store.pid_file())
                    .await
                    .map_err(|e| StartFailure {
                        log_tail: e.log_tail().to_vec(),
                        ..fail(e.to_string())
                    })?;
            // From here on a second Ctrl-C kills this group at once, whatever the phase.
            let group = running.kill_handle();
            reporter.phase(format!(
                "{}: waiting for {} (up to {})",
                server.id,
                engine.ready_path,
                humantime::format_duration(engine.ready_timeout)
            ));
            match guard(running.wait_ready(cancel), ctx.shutdown, Some(&group)).await {
                Ok(ready) => {
                    record.time_to_ready_s = Some(ready.seconds);
                    reporter.line(format!("  ready in {:.1}s", ready.seconds));
                    Ok((Some(running), rendered))
                }
                Err(e) => {
                    let log_tail = running.log_tail();
                    let interrupted = matches!(e, server::StartError::Interrupted);
                    reporter.phase(format!("{}: stopping", server.id));
                    let teardown = guard(running.stop(), ctx.shutdown, Some(&group)).await;
                    Err(StartFailure {
                        reason: e.to_string(),
                        log_tail,
                        interrupted,
                        teardown: Some(teardown),
                    })
                }
            }
        }
    }
}

/// Each engine's version, from its version command rendered for its first server configuration. The
/// commands run at the same time, on the blocking pool (each may take up to two minutes).
async fn engine_versions(exp: &Experiment, plan: &Plan) -> BTreeMap<String, Option<String>> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = BTreeMap::new();
    for server in &plan.servers {
        if out.contains_key(&server.engine) {
            continue;
        }
        out.insert(server.engine.clone(), None);
        let command = server
            .render(exp, None)
            .ok()
            .and_then(|r| r.version_command);
        let engine = server.engine.clone();
        tasks.spawn_blocking(move || {
            let version =
                command.and_then(|c| server::engine_version(&c, Duration::from_secs(120)));
            (engine, version)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((engine, version)) = joined {
            out.insert(engine, version);
        }
    }
    out
}

fn fail_cell(
    store: &Store,
    reporter: &Reporter,
    server: &ServerPlan,
    cell: &CellPlan,
    reason: &str,
    log_tail: &[String],
) {
    let failure = CellFailure {
        schema: Schema::default(),
        id: cell.id.clone(),
        hash: cell.hash.clone(),
        server_id: server.id.clone(),
        reason: reason.to_string(),
        log_tail: log_tail.to_vec(),
        at: now_rfc3339(),
    };
    write_or_warn(reporter, store.write_failure(&failure), "failure record");
    reporter.cells_done(1);
}

fn write_or_warn(reporter: &Reporter, result: std::io::Result<()>, what: &str) {
    if let Err(e) = result {
        reporter.line(format!("warning: could not write the {what}: {e}"));
    }
}

/// One line per finished cell, with the numbers a person checks first; an unmeasured one is `—`.
fn cell_line(c: &CellResult) -> String {
    use crate::stats::Dist;
    let s = &c.summary;
    let n = |x: Option<f64>, decimals: usize| match x {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "—".to_string(),
    };
    let mut line = format!(
        "{}: {}/{} ok, QPS {}, TTFT {} ms, TPOT {} ms, E2E {} ms, out {} tok/s",
        c.id,
        s.succeeded,
        s.requests,
        n(s.qps, 3),
        n(Dist::mean_of(&s.ttft_ms), 1),
        n(Dist::mean_of(&s.tpot_ms), 2),
        n(Dist::mean_of(&s.e2e_ms), 0),
        n(s.output_tokens_per_s, 1)
    );
    if let Some(rate) = c.server_metrics.prefix_cache_hit_rate {
        line.push_str(&format!(", prefix hits {:.1}%", rate * 100.0));
    }
    for (what, check) in [("input", &s.input_tokens), ("output", &s.output_tokens)] {
        if check.mismatched + check.unknown > 0 {
            line.push_str(&format!(
                "  [{what} length: {} mismatched, {} unknown]",
                check.mismatched, check.unknown
            ));
        }
    }
    if s.client.saturated {
        line.push_str("  [client saturated]");
    }
    line
}
