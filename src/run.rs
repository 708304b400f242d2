//! The orchestrator: decides the order of things and nothing else. For each server configuration with
//! pending cells: start it ([`crate::server`]), prove it ready, run each pending load point
//! ([`crate::load`]), store each cell the moment it finishes ([`crate::store`]), tear the server down, and
//! re-render the report ([`crate::report`]).
//!
//! Signals: the first Ctrl-C or SIGTERM cancels the load, tears the current server down gracefully and
//! ends with exit code 130, keeping every finished cell; a second one kills the server's process group at
//! once. A runner killed hard leaves a pid file that the next run uses to clean up the stale server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::experiment::{Engine, Experiment, Launch};
use crate::load::{self, LoadClient, LoadError, Target};
use crate::plan::CellStatus;
use crate::plan::print::{command_line, redacted_env};
use crate::plan::{CellPlan, Plan, Rendered, ServerPlan};
use crate::progress::Reporter;
use crate::server::{self, KillHandle, ServerSpec, SmokeRequest};
use crate::store::{CellFailure, CellResult, ServerRecord, Store, now_rfc3339};

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
    runtime.block_on(execute_async(exp, plan, store, policy))
}

async fn execute_async(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
    policy: Policy,
) -> anyhow::Result<Outcome> {
    let cancel = CancellationToken::new();
    let current: Arc<Mutex<Option<KillHandle>>> = Arc::new(Mutex::new(None));
    let signals = tokio::spawn(watch_signals(cancel.clone(), current.clone()));

    let reporter = Reporter::new(plan.cell_count() as u64);
    // Engine versions once per engine, before any server starts: they label every result and the
    // environment record, and a missing engine binary shows up in the first seconds.
    let versions = engine_versions(exp, plan);
    for (engine, version) in &versions {
        reporter.line(format!(
            "{engine}: {}",
            version
                .as_deref()
                .unwrap_or("version unknown (version_command failed)")
        ));
    }
    let known: std::collections::BTreeMap<String, String> = versions
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    store
        .write_environment(&crate::envinfo::capture(&exp.file, &known))
        .context("writing environment.json")?;
    let client = LoadClient::new().context("creating the HTTP client")?;
    let mut outcome = Outcome::default();
    let n = plan.servers.len();

    for (i, server) in plan.servers.iter().enumerate() {
        if cancel.is_cancelled() {
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
        let result = run_server(
            exp, server, &pending, store, &client, &reporter, &cancel, &current, version,
        )
        .await;
        outcome.cells_run += result.cells_ok;
        outcome.cells_failed += result.cells_failed;
        if result.server_failed {
            outcome.servers_failed += 1;
        }
        if result.interrupted || cancel.is_cancelled() {
            outcome.interrupted = true;
        }
        // Re-render after every server configuration so a crash later loses no report.
        if let Err(e) = crate::report::render_all(exp, plan, store) {
            reporter.line(format!("warning: report not rendered: {e:#}"));
        }
        if outcome.interrupted
            || (policy.fail_fast && (result.server_failed || result.cells_failed > 0))
        {
            break;
        }
    }
    reporter.finish();
    signals.abort();
    Ok(outcome)
}

/// First signal: cancel (graceful). Second: SIGKILL the current server's process group at once.
async fn watch_signals(cancel: CancellationToken, current: Arc<Mutex<Option<KillHandle>>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let mut count = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        count += 1;
        if count == 1 {
            eprintln!(
                "\ninterrupted: stopping the load and tearing the server down (again to kill it at once)"
            );
            cancel.cancel();
        } else {
            eprintln!("\nkilling the server's process group");
            if let Some(handle) = current.lock().ok().and_then(|g| g.clone()) {
                handle.kill_now();
            }
        }
    }
}

#[derive(Default)]
struct ServerResult {
    cells_ok: usize,
    cells_failed: usize,
    server_failed: bool,
    interrupted: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_server(
    exp: &Experiment,
    server: &ServerPlan,
    pending: &[&CellPlan],
    store: &Store,
    client: &LoadClient,
    reporter: &Reporter,
    cancel: &CancellationToken,
    current: &Arc<Mutex<Option<KillHandle>>>,
    engine_version: Option<String>,
) -> ServerResult {
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
    let started = start_server(exp, engine, server, store, reporter, cancel, &mut record).await;
    let (mut running, rendered) = match started {
        Ok(pair) => pair,
        Err((reason, log_tail, interrupted)) => {
            record.status = if interrupted { "interrupted" } else { "failed" }.into();
            record.reason = Some(reason.clone());
            record.log_tail = log_tail.clone();
            write_or_warn(reporter, store.write_server(&record), "server record");
            if interrupted {
                result.interrupted = true;
                return result;
            }
            reporter.line(format!("  server failed: {reason}"));
            for cell in pending {
                fail_cell(store, reporter, server, cell, &reason, &log_tail);
            }
            result.server_failed = true;
            result.cells_failed = pending.len();
            return result;
        }
    };
    if let Some(r) = &running {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.kill_handle());
    }

    let target = Target {
        base_url: rendered.base_url.clone(),
        model: rendered.request_model.clone(),
        dialect: engine.defaults.dialect,
        metrics_url: engine
            .metrics_path
            .as_ref()
            .map(|p| format!("{}{p}", rendered.base_url)),
        cache_counters: engine.defaults.cache_counters,
        api_key: engine.api_key.clone(),
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
        let outcome = load::run_point(client, &target, &cell.load, &progress, cancel).await;
        drop(bar);
        // A server that died under load invalidates the point, whatever the client saw.
        let exited = running.as_mut().and_then(|r| r.exit_status());
        match (outcome, exited) {
            (Err(LoadError::Interrupted), _) => {
                result.interrupted = true;
                break;
            }
            (_, Some(status)) => {
                let tail = running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
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
                let tail = running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
                fail_cell(store, reporter, server, cell, &reason, &tail);
                result.cells_failed += 1;
            }
            (Ok(point), None) if point.summary.succeeded == 0 => {
                let kinds: Vec<String> = point
                    .summary
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect();
                let reason = format!("no request succeeded ({})", kinds.join(", "));
                let tail = running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
                fail_cell(store, reporter, server, cell, &reason, &tail);
                result.cells_failed += 1;
            }
            (Ok(point), None) => {
                let cell_result = CellResult {
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
                .and_then(|()| store.write_cell(&cell_result, &point.records));
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
        let teardown = r.stop().await;
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
                " (SIGKILL after the grace period)"
            } else {
                ""
            }
        ));
    }
    record.status = if result.interrupted {
        "interrupted"
    } else if result.server_failed {
        "failed"
    } else {
        "ok"
    }
    .into();
    write_or_warn(reporter, store.write_server(&record), "server record");
    result
}

type StartFailure = (String, Vec<String>, bool);

/// Picks the port, renders the command, starts the server (or attaches) and waits until it is ready.
async fn start_server(
    exp: &Experiment,
    engine: &Engine,
    server: &ServerPlan,
    store: &Store,
    reporter: &Reporter,
    cancel: &CancellationToken,
    record: &mut ServerRecord,
) -> Result<(Option<server::RunningServer>, Rendered), StartFailure> {
    let fail = |reason: String| (reason, Vec::new(), false);
    let smoke_for = |rendered: &Rendered| {
        engine.smoke_test.then(|| {
            SmokeRequest::completion(&rendered.request_model).with_api_key(engine.api_key.clone())
        })
    };
    match &engine.launch {
        Launch::Attach { .. } => {
            let rendered = server.render(exp, None).map_err(fail)?;
            record.command = format!("(already running at {})", rendered.shown_url());
            record.base_url = rendered.shown_url();
            reporter.phase(format!("{}: checking {}", server.id, rendered.shown_url()));
            let ready = server::attach(
                &rendered.base_url,
                &engine.ready_path,
                engine.ready_timeout,
                smoke_for(&rendered).as_ref(),
                cancel,
            )
            .await
            .map_err(|e| {
                (
                    rendered.redact(&e.to_string()),
                    Vec::new(),
                    matches!(e, server::StartError::Interrupted),
                )
            })?;
            record.time_to_ready_s = Some(ready.seconds);
            Ok((None, rendered))
        }
        Launch::Spawn { port, .. } => {
            let port = match port {
                Some(p) if server::port_in_use(*p) => {
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
            record.base_url = rendered.shown_url();
            record.port = Some(port);
            let spec = ServerSpec {
                id: server.id.clone(),
                argv: rendered.argv.clone(),
                secrets: rendered.secrets().clone(),
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
            let mut running = server::start(&spec, &store.pid_file())
                .await
                .map_err(|e| (e.to_string(), e.log_tail().to_vec(), false))?;
            reporter.phase(format!(
                "{}: waiting for {} (up to {})",
                server.id,
                engine.ready_path,
                humantime::format_duration(engine.ready_timeout)
            ));
            match running.wait_ready(cancel).await {
                Ok(ready) => {
                    record.time_to_ready_s = Some(ready.seconds);
                    reporter.line(format!("  ready in {:.1}s", ready.seconds));
                    Ok((Some(running), rendered))
                }
                Err(e) => {
                    let tail = running.log_tail();
                    let interrupted = matches!(e, server::StartError::Interrupted);
                    let teardown = running.stop().await;
                    record.teardown_s = Some(teardown.seconds);
                    record.teardown_escalated = Some(teardown.escalated);
                    Err((e.to_string(), tail, interrupted))
                }
            }
        }
    }
}

/// Each engine's version, from its version command rendered for its first server configuration.
fn engine_versions(
    exp: &Experiment,
    plan: &Plan,
) -> std::collections::BTreeMap<String, Option<String>> {
    let mut out = std::collections::BTreeMap::new();
    for server in &plan.servers {
        if out.contains_key(&server.engine) {
            continue;
        }
        let command = server
            .render(exp, None)
            .ok()
            .and_then(|r| r.version_command);
        let version = command.and_then(|c| server::engine_version(&c, Duration::from_secs(120)));
        out.insert(server.engine.clone(), version);
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

/// One line per finished cell, with the numbers a person checks first.
fn cell_line(c: &CellResult) -> String {
    let s = &c.summary;
    let mut line = format!(
        "{}: {}/{} ok, QPS {:.3}, TTFT {:.1} ms, TPOT {:.2} ms, E2E {:.0} ms, out {:.1} tok/s",
        c.id,
        s.succeeded,
        s.requests,
        s.qps,
        s.ttft_ms.mean,
        s.tpot_ms.mean,
        s.e2e_ms.mean,
        s.output_tokens_per_s
    );
    if let Some(rate) = c.server_metrics.prefix_cache_hit_rate {
        line.push_str(&format!(", prefix hits {:.1}%", rate * 100.0));
    }
    if s.output_tokens.mismatched + s.output_tokens.unknown > 0 {
        line.push_str(&format!(
            "  [output length: {} mismatched, {} unknown]",
            s.output_tokens.mismatched, s.output_tokens.unknown
        ));
    }
    if s.client.saturated {
        line.push_str("  [client saturated]");
    }
    line
}
