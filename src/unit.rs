//! One unit of work: a server configuration's whole life on the GPUs it was given. Start the server
//! ([`crate::server`]), prove it ready, run each pending load point ([`crate::load`]), store each cell
//! the moment it finishes ([`crate::store`]), tear the server down, and write its server record. An
//! executor ([`crate::executor`]) decides where and when units run; nothing here knows whether it runs
//! alone, beside other units on one host, or in a Slurm job.
//!
//! A point with `repeats` = N is measured N times on the same warm server, the repeats interleaved over
//! the server's points ([`crate::repeat::interleave`]). Each repeat is a load point of its own (its own
//! warm-up, prompts and summary, see [`ServerPlan::repeat_of`]), stored the moment it finishes; the
//! cell's `result.json` is written when the last one is. A rerun measures only the repeats not stored
//! with the same settings (every one under `--force`); a cell one of whose repeats fails is measured no
//! further in this run (its stored repeats are kept for the next).
//!
//! Invariants:
//! - A unit writes only its own cells, its server record and its server's pid file (one writer per
//!   file), so units never contend; the report and `cells.csv` are the coordinator's.
//! - The placement is plain data: the GPUs become `CUDA_VISIBLE_DEVICES` and `{{ gpus }}`; ports come
//!   from the run's [`PortAllocator`], so units that run at once never share one. A server that says
//!   "address already in use" at startup (another program took the port between pick and bind) is
//!   started again on another port, a few times, and the ports given up are recorded.
//! - Signals ([`crate::signals`]): the first Ctrl-C, SIGTERM or SIGHUP cancels the load, tears the server
//!   down gracefully and marks the unit interrupted; a second one kills the server's process group at
//!   once, in whatever phase it is: every phase of a server's life runs under [`guard`], which obeys it.
//!   Every running unit watches the same [`Shutdown`], so one Ctrl-C stops all of them.
//!
//! Nothing here blocks the async runtime: port probes and `/proc` scans run on the blocking pool (the
//! runtime's threads read the load's streams).

use std::future::Future;

use crate::experiment::{Engine, Experiment, Launch};
use crate::load::{self, LoadClient, LoadError, Target};
use crate::plan::{CellPlan, Rendered, ServerPlan};
use crate::progress::UnitProgress;
use crate::server::{self, KillHandle, PortAllocator, ServerSpec, SmokeRequest, Teardown};
use crate::signals::Shutdown;
use crate::store::{
    CellFailure, CellResult, RepeatResult, Schema, ServerRecord, ServerStatus, Store, now_rfc3339,
};
use crate::telemetry;

/// How many ports a server may try when each one turns out taken at startup.
const PORT_TRIES: usize = 3;

/// What every unit of a run shares.
pub struct Context<'a> {
    pub exp: &'a Experiment,
    pub store: &'a Store,
    pub client: &'a LoadClient,
    pub shutdown: &'a Shutdown,
    pub ports: &'a PortAllocator,
    /// `--force`: every repeat of a pending cell is measured again, none taken from the store.
    pub force: bool,
}

/// Where a unit runs, as plain data (recorded in its server record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// `local` or `slurm`.
    pub executor: String,
    /// The host name of the node.
    pub node: String,
    /// The Slurm job id.
    pub job_id: Option<String>,
    /// The GPUs given to the server (`CUDA_VISIBLE_DEVICES`); `None`: the runner assigns none.
    pub gpus: Option<Vec<String>>,
}

impl UnitResult {
    /// Whether the unit failed (its server, or any cell): this stops a `--fail-fast` run.
    pub fn failed(&self) -> bool {
        self.server_failed || self.cells_failed > 0
    }
}

impl Placement {
    /// `0,1`, as `CUDA_VISIBLE_DEVICES` and `{{ gpus }}` take it.
    pub fn gpu_list(&self) -> Option<String> {
        self.gpus.as_ref().map(|g| g.join(","))
    }
}

/// Runs one phase of a server's life (start, readiness, a load point, teardown) obeying the second signal:
/// when it comes, the group is SIGKILLed at once and the phase is left to end on its own (its process is
/// gone, so it ends promptly). The first signal reaches the phases through `shutdown.stopping()`.
pub async fn guard<T>(
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

/// How a unit ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UnitResult {
    pub cells_ok: usize,
    pub cells_failed: usize,
    pub server_failed: bool,
    pub interrupted: bool,
}

/// Runs one unit: `server`'s `pending` cells on `placement`, reporting to `reporter`.
pub async fn run(
    ctx: &Context<'_>,
    reporter: &UnitProgress<'_>,
    server: &ServerPlan,
    pending: &[&CellPlan],
    engine_version: Option<String>,
    placement: &Placement,
) -> UnitResult {
    let store = ctx.store;
    // A runner of this server killed hard (on this node) may have left its server running.
    let pid_file = store.pid_file(server);
    match tokio::task::spawn_blocking(move || server::cleanup_stale(&pid_file)).await {
        Ok(Ok(Some(cleanup))) => reporter.line(format!(
            "cleaned up a stale server from an earlier run: {cleanup}"
        )),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            // Another live runner runs this server: touch none of its records.
            reporter.line(format!("  not started: {e}"));
            return UnitResult {
                server_failed: true,
                ..UnitResult::default()
            };
        }
        Err(e) => reporter.line(format!("warning: stale-server check failed: {e}")),
    }
    // Each cell's measurements still to make. A cell whose repeats are all stored (the runner stopped
    // between its last repeat and its result) is committed here, without starting a server.
    let mut done = UnitResult::default();
    let mut work = Vec::new();
    for cell in pending {
        let todo = repeats_to_run(ctx, server, cell);
        if !todo.is_empty() {
            work.push(Work { cell, todo });
            continue;
        }
        match commit_repeats(ctx.store, server, cell) {
            Ok(Some(result)) => {
                reporter.line(format!("  {} (stored repeats)", cell_line(&result)));
                reporter.cells_done(1);
                done.cells_ok += 1;
            }
            other => {
                let reason = match other {
                    Err(e) => format!("could not store the result: {e}"),
                    _ => "a stored repeat could not be read back".to_string(),
                };
                fail_cell(ctx.store, reporter, server, cell, &reason, &[]);
                done.cells_failed += 1;
            }
        }
    }
    if work.is_empty() {
        return done;
    }
    let mut result = run_server(ctx, reporter, server, &work, engine_version, placement).await;
    result.cells_ok += done.cells_ok;
    result.cells_failed += done.cells_failed;
    result
}

/// A pending cell and the repeats it still needs, in the order they run.
struct Work<'a> {
    cell: &'a CellPlan,
    todo: Vec<u32>,
}

/// How a cell stands during its server's run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CellState {
    Open,
    Stored,
    Failed,
}

/// The repeats of `cell` to measure: all of them under `--force` or for a cell measured once; otherwise
/// those without a stored repeat of the same settings (a stored repeat stays valid when only the count
/// changed, see [`ServerPlan::repeat_of`]).
fn repeats_to_run(ctx: &Context<'_>, server: &ServerPlan, cell: &CellPlan) -> Vec<u32> {
    let n = cell.load.repeats;
    (1..=n)
        .filter(|&k| {
            n == 1
                || ctx.force
                || ctx
                    .store
                    .read_repeat(&cell.id, k)
                    .is_none_or(|stored| stored.hash != server.repeat_of(cell, k).hash)
        })
        .collect()
}

/// Commits a repeated cell whose repeats are all stored with the cell's settings: `Ok(None)` while one
/// is missing.
fn commit_repeats(
    store: &Store,
    server: &ServerPlan,
    cell: &CellPlan,
) -> std::io::Result<Option<CellResult>> {
    let repeats: Option<Vec<RepeatResult>> = (1..=cell.load.repeats)
        .map(|k| {
            store
                .read_repeat(&cell.id, k)
                .filter(|r| r.hash == server.repeat_of(cell, k).hash)
        })
        .collect();
    let Some(repeats) = repeats else {
        return Ok(None);
    };
    // The command and engine version the cell shows are those of its latest repeat.
    let Some(last) = repeats
        .iter()
        .max_by_key(|r| r.finished_at.clone())
        .cloned()
    else {
        return Ok(None);
    };
    let mut result = cell_result(server, cell, last);
    crate::repeat::combine_into(&mut result, repeats);
    store.write_repeated_cell(&result)?;
    Ok(Some(result))
}

/// A cell's result from one measurement (the identity from the plan, the rest from `measured`).
fn cell_result(server: &ServerPlan, cell: &CellPlan, measured: RepeatResult) -> CellResult {
    CellResult {
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
        summary: measured.summary,
        server_metrics: measured.server_metrics,
        telemetry: measured.telemetry,
        command: measured.command,
        engine_version: measured.engine_version,
        started_at: measured.started_at,
        finished_at: measured.finished_at,
        repeats: Vec::new(),
    }
}

async fn run_server(
    ctx: &Context<'_>,
    reporter: &UnitProgress<'_>,
    server: &ServerPlan,
    work: &[Work<'_>],
    engine_version: Option<String>,
    placement: &Placement,
) -> UnitResult {
    let (exp, store) = (ctx.exp, ctx.store);
    let cancel = ctx.shutdown.stopping();
    let engine = &exp.engines[&server.engine];
    let mut record = ServerRecord {
        id: server.id.clone(),
        hash: server.hash.clone(),
        engine: server.engine.clone(),
        engine_version,
        started_at: now_rfc3339(),
        executor: Some(placement.executor.clone()),
        node: Some(placement.node.clone()).filter(|n| !n.is_empty()),
        job_id: placement.job_id.clone(),
        gpus: placement.gpu_list(),
        ..ServerRecord::default()
    };
    let mut result = UnitResult::default();
    // Written at once, so `runner status` and a coordinator following a job see where it runs.
    write_or_warn(reporter, store.write_server(&record), "server record");

    // Everything up to "ready": on failure every pending cell of this server fails with the reason.
    let started = start_server(ctx, reporter, engine, server, placement, &mut record).await;
    let (running, rendered) = match started {
        Ok(started) => started,
        Err(failure) => {
            if let Some(teardown) = &failure.teardown {
                record_teardown(reporter, &mut record, teardown);
            }
            record.reason = Some(failure.reason.clone());
            record.log_tail = failure.log_tail.clone();
            let status = if failure.interrupted {
                ServerStatus::Interrupted
            } else {
                ServerStatus::Failed
            };
            close_record(ctx, reporter, &mut record, status);
            if failure.interrupted {
                result.interrupted = true;
                return result;
            }
            reporter.line(format!("  server failed: {}", failure.reason));
            for w in work {
                fail_cell(
                    store,
                    reporter,
                    server,
                    w.cell,
                    &failure.reason,
                    &failure.log_tail,
                );
            }
            result.server_failed = true;
            result.cells_failed = work.len();
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
        api_key: engine.api_key.clone(),
    };
    let command = rendered.command_line();
    // Telemetry: the server's GPUs (its CUDA_VISIBLE_DEVICES, else every GPU of this host) and metrics.
    let watched = telemetry::Subject {
        gpus: telemetry::GpuSet::for_server(&rendered.env, &rendered.base_url),
        metrics: target
            .metrics_url
            .clone()
            .map(|url| telemetry::MetricsEndpoint {
                // Keeps no idle connection (see `LoadClient`).
                http: ctx.client.http().clone(),
                url,
                api_key: target.api_key.clone(),
            }),
    };
    // Repeats interleaved over the points (c1 r1, c4 r1, …, c1 r2, …), so drift falls on no one point.
    let order = crate::repeat::interleave(&work.iter().map(|w| w.todo.clone()).collect::<Vec<_>>());
    let mut states = vec![CellState::Open; work.len()];
    let mut left: Vec<usize> = work.iter().map(|w| w.todo.len()).collect();
    // Under --force a cell's stored repeats are dropped before its first new one is stored, so an
    // interrupted forced run never mixes old repeats into the new result.
    let mut discard = vec![ctx.force; work.len()];
    for (step, &(i, k)) in order.iter().enumerate() {
        if cancel.is_cancelled() {
            result.interrupted = true;
            break;
        }
        if states[i] != CellState::Open {
            continue;
        }
        let planned = work[i].cell;
        let n = planned.load.repeats;
        // This measurement as a point of its own: the cell itself when it is measured once.
        let cell = &server.repeat_of(planned, k);
        let repeat = if n > 1 {
            format!(" repeat {k}/{n}")
        } else {
            String::new()
        };
        let label = format!("{}{repeat} ({}/{})", cell.id, step + 1, order.len());
        reporter.phase(format!(
            "{}: load point {}/{}",
            server.id,
            step + 1,
            order.len()
        ));
        let progress = load::Progress::default();
        let bar = reporter.point(&label, progress.done.clone(), u64::from(cell.load.requests));
        let started_at = now_rfc3339();
        let window = telemetry::Window::start(&watched);
        // Records go to the cell's requests.jsonl (a repeat's own, tagged with its number) as requests
        // finish.
        let writer = if n == 1 {
            store.requests_writer(&cell.id)
        } else {
            store.repeat_requests_writer(&cell.id, k)
        };
        let outcome = match writer {
            Ok(sink) => {
                let point =
                    load::run_point(ctx.client, &target, &cell.load, &progress, cancel, sink);
                guard(point, ctx.shutdown, group.as_ref()).await
            }
            Err(e) => Err(LoadError::Record(e)),
        };
        let recorded = window
            .finish(outcome.as_ref().ok().map(|p| (p.t0, p.span)))
            .await;
        drop(bar);
        left[i] -= 1;
        // A server that died under load invalidates the point, whatever the client saw.
        let exited = running.as_mut().and_then(|r| r.exit_status());
        let log_tail = || running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
        let which = if n > 1 {
            format!("repeat {k}/{n}: ")
        } else {
            String::new()
        };
        let failure = match (outcome, exited) {
            (Err(LoadError::Interrupted), _) => {
                result.interrupted = true;
                break;
            }
            (_, Some(status)) => {
                let tail = log_tail();
                // Every open cell fails with it: say which point the server died under.
                let reason = if n > 1 {
                    format!(
                        "the server exited during load point {}, repeat {k}/{n} ({status})",
                        cell.id
                    )
                } else {
                    format!("the server exited during the load point ({status})")
                };
                reporter.line(format!("  {}: {reason}", cell.id));
                for (j, w) in work.iter().enumerate() {
                    if states[j] == CellState::Open {
                        fail_cell(store, reporter, server, w.cell, &reason, &tail);
                        states[j] = CellState::Failed;
                        result.cells_failed += 1;
                    }
                }
                result.server_failed = true;
                break;
            }
            (Err(e), None) => Some(format!("{which}load point failed: {e:#}")),
            (Ok(point), None) if point.summary.succeeded == 0 => Some(format!(
                "{which}{}",
                no_success_reason(&point.summary.errors, &target.model, &server.model)
            )),
            (Ok(point), None) => {
                let measured = RepeatResult {
                    schema: Schema::default(),
                    repeat: k,
                    hash: cell.hash.clone(),
                    summary: point.summary,
                    server_metrics: point.server_metrics,
                    telemetry: recorded.telemetry.clone(),
                    command: command.clone(),
                    engine_version: record.engine_version.clone(),
                    started_at,
                    finished_at: now_rfc3339(),
                };
                // A cell measured once is stored as it always was; a repeat in its own directory.
                let dir_id = if n == 1 {
                    cell.id.clone()
                } else {
                    crate::store::repeat_id(&cell.id, k)
                };
                let stored = if std::mem::take(&mut discard[i]) && n > 1 {
                    store.prune_repeats(&cell.id, 0)
                } else {
                    Ok(())
                }
                .and_then(|()| match &point.prompts {
                    Some(prompts) => store.write_prompts(&dir_id, prompts),
                    None => Ok(()),
                })
                .and_then(|()| store.write_telemetry(&dir_id, &recorded));
                let stored = if n == 1 {
                    let cell_result = cell_result(server, cell, measured);
                    stored
                        .and_then(|()| store.write_cell(&cell_result, point.records))
                        .and_then(|()| store.prune_repeats(&cell.id, 0))
                        .map(|()| Some(cell_result))
                } else {
                    reporter.line(format!("  {}: {}", cell.id, repeat_line(&measured, n)));
                    stored
                        .and_then(|()| store.write_repeat(&cell.id, &measured, point.records))
                        .and_then(|()| commit_repeats(store, server, planned))
                };
                match stored {
                    Ok(Some(cell_result)) => {
                        reporter.line(format!("  {}", cell_line(&cell_result)));
                        reporter.cells_done(1);
                        result.cells_ok += 1;
                        states[i] = CellState::Stored;
                        None
                    }
                    Ok(None) if left[i] > 0 => None,
                    Ok(None) => Some("a stored repeat could not be read back".to_string()),
                    Err(e) => {
                        reporter.line(format!("  {}: could not store the result: {e}", cell.id));
                        result.cells_failed += 1;
                        states[i] = CellState::Failed;
                        None
                    }
                }
            }
        };
        if let Some(reason) = failure {
            fail_cell(store, reporter, server, planned, &reason, &log_tail());
            states[i] = CellState::Failed;
            result.cells_failed += 1;
        }
    }

    if let Some(r) = running {
        reporter.phase(format!("{}: stopping", server.id));
        let teardown = guard(r.stop(), ctx.shutdown, group.as_ref()).await;
        record_teardown(reporter, &mut record, &teardown);
    }
    let status = if result.interrupted {
        ServerStatus::Interrupted
    } else if result.server_failed {
        ServerStatus::Failed
    } else {
        ServerStatus::Ok
    };
    close_record(ctx, reporter, &mut record, status);
    result
}

/// The server's life is over: its record gets the outcome and is written, and its port is free again.
fn close_record(
    ctx: &Context<'_>,
    reporter: &UnitProgress<'_>,
    record: &mut ServerRecord,
    status: ServerStatus,
) {
    record.status = status;
    record.finished_at = Some(now_rfc3339());
    write_or_warn(reporter, ctx.store.write_server(record), "server record");
    if let Some(port) = record.port {
        ctx.ports.release(port);
    }
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
fn record_teardown(reporter: &UnitProgress<'_>, record: &mut ServerRecord, teardown: &Teardown) {
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
    ctx: &Context<'_>,
    reporter: &UnitProgress<'_>,
    engine: &Engine,
    server: &ServerPlan,
    placement: &Placement,
    record: &mut ServerRecord,
) -> Result<(Option<server::RunningServer>, Rendered), StartFailure> {
    let exp = ctx.exp;
    let cancel = ctx.shutdown.stopping();
    let fail = StartFailure::before_spawn;
    let smoke_for = |rendered: &Rendered| {
        engine.smoke_test.then(|| {
            SmokeRequest::completion(&rendered.request_model).with_api_key(engine.api_key.clone())
        })
    };
    let gpus = placement.gpu_list();
    match &engine.launch {
        Launch::Attach { .. } => {
            let rendered = server.render_on(exp, None, gpus.as_deref()).map_err(fail)?;
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
            .map_err(|e| StartFailure {
                interrupted: matches!(e, server::StartError::Interrupted),
                ..fail(rendered.redact(&e.to_string()))
            })?;
            record.time_to_ready_s = Some(ready.seconds);
            Ok((None, rendered))
        }
        Launch::Spawn { port: fixed, .. } => {
            let mut tries = 0;
            loop {
                tries += 1;
                // A port the runner picked may be taken by someone else before the server binds it:
                // then another one, a few times. A fixed port is the file's promise: never replaced.
                let may_retry = fixed.is_none() && tries < PORT_TRIES;
                let port = match fixed {
                    Some(p) if server::port_in_use_async(*p).await => {
                        return Err(fail(format!(
                            "port {p} is already in use by another process; stop it or change `port` in [engines.{}]",
                            engine.name
                        )));
                    }
                    Some(p) => {
                        ctx.ports.hold(*p);
                        *p
                    }
                    None => ctx
                        .ports
                        .take()
                        .map_err(|e| fail(format!("no free port: {e}")))?,
                };
                let mut rendered = server
                    .render_on(exp, Some(port), gpus.as_deref())
                    .map_err(fail)?;
                // The slot's GPUs are part of the server's environment: what it is started with, what
                // its record shows and what telemetry watches all come from `rendered.env`.
                if let Some(gpus) = &gpus {
                    rendered
                        .env
                        .insert(telemetry::gpuset::CUDA_VISIBLE_DEVICES.into(), gpus.clone());
                }
                record.command = rendered.command_line();
                record.env = rendered.shown_env();
                record.base_url = rendered.shown_url();
                record.port = Some(port);
                let env: Vec<(String, String)> = rendered
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let spec = ServerSpec {
                    id: server.id.clone(),
                    argv: rendered.argv.clone(),
                    secrets: rendered.secrets().clone(),
                    shell: rendered.shell,
                    env,
                    workdir: rendered.workdir.as_ref().map(Into::into),
                    port,
                    base_url: rendered.base_url.clone(),
                    ready_path: engine.ready_path.clone(),
                    ready_timeout: engine.ready_timeout,
                    smoke: smoke_for(&rendered),
                    stop_grace: engine.stop_grace,
                    log_path: ctx.store.server_log_path(server),
                    gpu_release_timeout: engine.gpu_release_timeout,
                };
                reporter.phase(format!("{}: starting on port {port}", server.id));
                let mut running = match server::start(&spec, &ctx.store.pid_file(server)).await {
                    Ok(running) => running,
                    Err(server::StartError::PortInUse { port }) if may_retry => {
                        // Taken between our pick and now: never ours again in this run.
                        reporter.line(format!("  port {port} was taken meanwhile; trying another"));
                        record.ports_in_use.push(port);
                        continue;
                    }
                    Err(e) => {
                        return Err(StartFailure {
                            log_tail: e.log_tail().to_vec(),
                            ..fail(e.to_string())
                        });
                    }
                };
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
                        return Ok((Some(running), rendered));
                    }
                    Err(e) => {
                        let log_tail = running.log_tail();
                        let interrupted = matches!(e, server::StartError::Interrupted);
                        reporter.phase(format!("{}: stopping", server.id));
                        let teardown = guard(running.stop(), ctx.shutdown, Some(&group)).await;
                        let lost_port = matches!(e, server::StartError::ExitedEarly { .. })
                            && server::says_address_in_use(&log_tail);
                        if lost_port && may_retry && !cancel.is_cancelled() {
                            reporter.line(format!(
                                "  the server could not bind port {port} (address already in use); trying another"
                            ));
                            record.ports_in_use.push(port);
                            continue;
                        }
                        return Err(StartFailure {
                            reason: e.to_string(),
                            log_tail,
                            interrupted,
                            teardown: Some(teardown),
                        });
                    }
                }
            }
        }
    }
}

fn fail_cell(
    store: &Store,
    reporter: &UnitProgress<'_>,
    server: &ServerPlan,
    cell: &CellPlan,
    reason: &str,
    log_tail: &[String],
) {
    let failure = CellFailure::new(&server.id, cell, reason.to_string(), log_tail.to_vec());
    write_or_warn(reporter, store.write_failure(&failure), "failure record");
    reporter.cells_done(1);
}

fn write_or_warn(reporter: &UnitProgress<'_>, result: std::io::Result<()>, what: &str) {
    if let Err(e) = result {
        reporter.line(format!("warning: could not write the {what}: {e}"));
    }
}

/// The figures a person checks first: `QPS …, TTFT … ms, …`; an unmeasured one is `—`.
fn figures(s: &crate::stats::Summary) -> String {
    use crate::stats::Dist;
    let n = |x: Option<f64>, decimals: usize| match x {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "—".to_string(),
    };
    format!(
        "{}/{} ok, QPS {}, TTFT {} ms, TPOT {} ms, E2E {} ms, out {} tok/s",
        s.succeeded,
        s.requests,
        n(s.qps, 3),
        n(Dist::mean_of(&s.ttft_ms), 1),
        n(Dist::mean_of(&s.tpot_ms), 2),
        n(Dist::mean_of(&s.e2e_ms), 0),
        n(s.output_tokens_per_s, 1)
    )
}

/// One line per stored repeat of a cell measured several times.
fn repeat_line(r: &RepeatResult, n: u32) -> String {
    format!("repeat {}/{n}: {}", r.repeat, figures(&r.summary))
}

/// One line per finished cell, with the numbers a person checks first (means over repeats for a cell
/// measured several times).
fn cell_line(c: &CellResult) -> String {
    let s = &c.summary;
    let mut line = format!("{}: {}", c.id, figures(s));
    if c.repeats.len() > 1 {
        line.push_str(&format!(" (mean of {} repeats)", c.repeats.len()));
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn all_404_points_suggest_the_served_model_name() {
        let errors = BTreeMap::from([("http_404".to_string(), 12u64)]);
        let reason = no_success_reason(&errors, "/models/q14", "qwen3-14b");
        assert!(
            reason.starts_with("no request succeeded (http_404 ×12)"),
            "{reason}"
        );
        assert!(
            reason.contains("`/models/q14`")
                && reason.contains("served_model_name")
                && reason.contains("[models.qwen3-14b]"),
            "{reason}"
        );
        let mixed = BTreeMap::from([("http_404".to_string(), 1u64), ("timeout".to_string(), 2)]);
        assert!(!no_success_reason(&mixed, "m", "x").contains("served_model_name"));
    }
}
