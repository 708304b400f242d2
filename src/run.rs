//! The coordinator: decides which units run and hands them to the executor; it does not measure. For
//! each server configuration with pending cells (in the plan's order) it makes a unit
//! ([`crate::executor::Unit`]); the executor chosen by `[executor]` / `--executor` places the units
//! ([`crate::executor::local`]: this host, one at a time or on GPU slots; [`crate::executor::slurm`]: one
//! batch job each). Each time a unit finishes, the coordinator re-renders `cells.csv` and the report
//! ([`crate::report`]) from the store: it is their only writer, so units that run at once (or on other
//! nodes) never contend for them.
//!
//! Signals ([`crate::signals`]): the first Ctrl-C, SIGTERM or SIGHUP stops every running unit gracefully
//! (load cancelled, servers torn down; Slurm jobs cancelled) and the run ends with exit code 130, keeping
//! every finished cell; a second one kills every server's process group at once (see
//! [`crate::unit::guard`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::executor::{self, Done, Unit};
use crate::exit::{self, Failure};
use crate::experiment::Experiment;
use crate::experiment::executor::{ExecutorKind, GpuSet};
use crate::load::LoadClient;
use crate::plan::{CellStatus, Plan};
use crate::progress::Reporter;
use crate::server::{self, PortAllocator};
use crate::signals::Shutdown;
use crate::store::Store;
use crate::unit::{self, UnitResult};

/// What the person asked of this run, as plain data (the command line maps its flags to this).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Stop at the first failed server configuration or cell.
    pub fail_fast: bool,
    /// Rerun cells even when a result with the same settings hash exists.
    pub force: bool,
    /// Slurm: submit the jobs and return at once (`runner status` follows them).
    pub detach: bool,
    /// The arguments a Slurm job's `runner unit` needs to load the same plan (`--rehearse`, …).
    pub unit_args: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub cells_run: usize,
    pub cells_skipped: usize,
    pub cells_failed: usize,
    pub servers_failed: usize,
    pub interrupted: bool,
    /// Slurm jobs submitted and left running (`--detach`).
    pub detached_jobs: usize,
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

    fn add(&mut self, r: &UnitResult) {
        self.cells_run += r.cells_ok;
        self.cells_failed += r.cells_failed;
        self.servers_failed += usize::from(r.server_failed);
        self.interrupted |= r.interrupted;
    }
}

/// Runs the plan. Input was validated before; errors here are runtime failures (exit 1), except a GPU
/// set that cannot be resolved (exit 2, nothing started).
pub fn execute(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
    policy: &Policy,
) -> anyhow::Result<Outcome> {
    with_signals(async |shutdown| execute_async(exp, plan, store, policy, shutdown).await)
}

/// Runs `work` on a new runtime that listens for SIGINT, SIGTERM and SIGHUP (see [`Shutdown`]); a
/// run and a Slurm job's unit both live in one.
pub fn with_signals<T>(
    work: impl AsyncFnOnce(&Shutdown) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        let listener = shutdown
            .listen()
            .context("installing the signal handlers")?;
        let result = work(&shutdown).await;
        listener.abort();
        result
    });
    // A version command still running after an early Ctrl-C must not keep the runner alive: its thread is
    // left behind (the command ends at its own time limit).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The GPU slots of a local run: `None` for the serial run. `"all"` asks `nvidia-smi`; a host without
/// GPUs is then an error (exit 2), as is a server configuration that needs more GPUs than there are.
pub fn local_slots(exp: &Experiment, plan: &Plan) -> anyhow::Result<executor::local::Slots> {
    use executor::local::Slots;
    let ids = match &exp.executor.local.gpus {
        None => return Ok(Slots::Serial),
        Some(GpuSet::Ids(ids)) => {
            // On a GPU host, every index must exist; without nvidia-smi the ids are taken as given
            // (nothing to check them against: a container without the tool, or a rehearsal).
            if let Some(Ok(gpus)) = crate::gpu::Smi::find(None).map(|smi| smi.gpus())
                && !gpus.is_empty()
                && let Some(missing) = ids.iter().find(|i| **i as usize >= gpus.len())
            {
                return Err(Failure::bad_input(format!(
                    "{}: [executor.local] gpus lists GPU {missing}, but nvidia-smi lists {} GPU(s) (0 to {})\n  help: list existing indexes, or write `gpus = \"all\"`",
                    exp.file.display(),
                    gpus.len(),
                    gpus.len() - 1
                ))
                .into());
            }
            ids.clone()
        }
        Some(GpuSet::All) => {
            let found = crate::gpu::Smi::find(None)
                .ok_or_else(|| "nvidia-smi is not on PATH".to_string())
                .and_then(|smi| smi.gpus());
            match found {
                Ok(gpus) if !gpus.is_empty() => (0..gpus.len() as u32).collect(),
                Ok(_) => return Err(no_gpus(exp, "nvidia-smi lists no GPU")),
                Err(e) => return Err(no_gpus(exp, &e)),
            }
        }
    };
    if let Some(s) = plan
        .servers
        .iter()
        .find(|s| s.gpu_count.unwrap_or(1) as usize > ids.len())
    {
        return Err(Failure::bad_input(format!(
            "{}: server {} needs {} GPUs, but this host has {} ({:?})\n  help: lower `gpus_per_server` in [executor.local], or run on a larger host",
            exp.file.display(),
            s.id,
            s.gpu_count.unwrap_or(1),
            ids.len(),
            ids
        ))
        .into());
    }
    Ok(Slots::Gpus(ids))
}

fn no_gpus(exp: &Experiment, why: &str) -> anyhow::Error {
    Failure::bad_input(format!(
        "{}: [executor.local] gpus = \"all\", but this host has no GPU to use ({why})\n  help: list the GPU indexes (`gpus = [0, 1]`), or remove `gpus` to run one server configuration at a time",
        exp.file.display()
    ))
    .into()
}

async fn execute_async(
    exp: &Experiment,
    plan: &Plan,
    store: &Store,
    policy: &Policy,
    shutdown: &Shutdown,
) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(plan.cell_count() as u64, exp.executor.concurrent());
    let mut outcome = Outcome::default();
    let units = units(plan, store, policy.force, &reporter, &mut outcome);
    let slots = match exp.executor.kind {
        ExecutorKind::Local => Some(local_slots(exp, plan)?),
        ExecutorKind::Slurm => None,
    };
    let (done, finished) = tokio::sync::mpsc::unbounded_channel();
    let c = Coordinator {
        exp,
        plan,
        store,
        policy,
        shutdown,
        reporter: &reporter,
    };
    let work = async {
        match slots {
            Some(slots) => c.run_local(units, slots, done).await.map(|()| 0),
            None => {
                let run = executor::slurm::Run {
                    exp,
                    store,
                    reporter: &reporter,
                    shutdown,
                    settings: &exp.executor.slurm,
                    force: policy.force,
                    fail_fast: policy.fail_fast,
                    unit_args: &policy.unit_args,
                    servers: plan.servers.len(),
                };
                if policy.detach {
                    run.submit_only(units).await
                } else {
                    run.run(units, done).await.map(|()| 0)
                }
            }
        }
    };
    let (detached, mut outcome) = tokio::join!(work, c.coordinate(finished, outcome));
    outcome.detached_jobs = detached?;
    if shutdown.stopping().is_cancelled() {
        outcome.interrupted = true;
    }
    reporter.finish();
    Ok(outcome)
}

/// The units with pending cells, in the plan's order; configurations with every cell done are counted
/// as skipped and named.
fn units<'p>(
    plan: &'p Plan,
    store: &Store,
    force: bool,
    reporter: &Reporter,
    outcome: &mut Outcome,
) -> Vec<Unit<'p>> {
    let n = plan.servers.len();
    let mut out = Vec::new();
    for (index, server) in plan.servers.iter().enumerate() {
        let pending: Vec<_> = server
            .points
            .iter()
            .filter(|c| force || store.cell_status(c) != CellStatus::Done)
            .collect();
        let skipped = server.points.len() - pending.len();
        outcome.cells_skipped += skipped;
        reporter.cells_done(skipped as u64);
        if pending.is_empty() {
            reporter.line(format!(
                "[{}/{n}] {}: all {} cells done, not started",
                index + 1,
                server.id,
                server.points.len()
            ));
        } else {
            out.push(Unit {
                index,
                server,
                pending,
            });
        }
    }
    out
}

/// What the coordinator's parts share.
struct Coordinator<'a> {
    exp: &'a Experiment,
    plan: &'a Plan,
    store: &'a Store,
    policy: &'a Policy,
    shutdown: &'a Shutdown,
    reporter: &'a Reporter,
}

impl Coordinator<'_> {
    /// The local run: engine versions and the environment once, then the units on this host.
    async fn run_local(
        &self,
        units: Vec<Unit<'_>>,
        slots: executor::local::Slots,
        done: Done,
    ) -> anyhow::Result<()> {
        let (exp, store, reporter) = (self.exp, self.store, self.reporter);
        // Engine versions once per engine, before any server starts: they label every result and the
        // environment record, and a missing engine binary shows up in the first seconds.
        let servers: Vec<_> = self.plan.servers.iter().collect();
        let versions = tokio::select! {
            versions = engine_versions(exp, &servers) => versions,
            () = self.shutdown.stopping().cancelled() => return Ok(()),
        };
        for (engine, version) in &versions {
            reporter.line(format!(
                "{engine}: {}",
                version
                    .as_deref()
                    .unwrap_or("version unknown (version_command failed)")
            ));
        }
        capture_environment(exp, store, &versions).await?;
        if units.is_empty() {
            return Ok(());
        }
        let client = LoadClient::new().context("creating the HTTP client")?;
        let ports = PortAllocator::new();
        let ctx = unit::Context {
            exp,
            store,
            client: &client,
            shutdown: self.shutdown,
            ports: &ports,
            force: self.policy.force,
        };
        executor::local::run(
            &ctx,
            reporter,
            units,
            &slots,
            &versions,
            self.policy.fail_fast,
            &done,
        )
        .await;
        Ok(())
    }

    /// Follows finished units until every executor is done: adds their outcomes to `outcome` and
    /// re-renders the report after each (several finished at once are rendered once).
    async fn coordinate(
        &self,
        mut finished: tokio::sync::mpsc::UnboundedReceiver<UnitResult>,
        mut outcome: Outcome,
    ) -> Outcome {
        while let Some(first) = finished.recv().await {
            outcome.add(&first);
            while let Ok(more) = finished.try_recv() {
                outcome.add(&more);
            }
            // Re-rendered as units finish, so a crash later loses no report.
            match render_report(self.exp, self.plan, self.store).await {
                Ok(unreadable) => {
                    for problem in unreadable {
                        self.reporter.line(format!(
                            "warning: report skipped an unreadable record: {problem}"
                        ));
                    }
                }
                Err(e) => self
                    .reporter
                    .line(format!("warning: report not rendered: {e:#}")),
            }
        }
        outcome
    }
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

/// Captures this host's environment into `environment.json` and `nodes/<host>/environment.json`.
pub async fn capture_environment(
    exp: &Experiment,
    store: &Store,
    versions: &BTreeMap<String, Option<String>>,
) -> anyhow::Result<()> {
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
    let node = environment.host.clone().unwrap_or_else(server::this_host);
    store
        .write_node_environment(&node, &environment)
        .context("writing the node's environment.json")?;
    Ok(())
}

/// Each engine's version, from its version command rendered for its first server configuration. The
/// commands run at the same time, on the blocking pool (each may take up to two minutes).
pub async fn engine_versions(
    exp: &Experiment,
    servers: &[&crate::plan::ServerPlan],
) -> BTreeMap<String, Option<String>> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = BTreeMap::new();
    for server in servers {
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
