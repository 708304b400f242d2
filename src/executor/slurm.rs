//! The Slurm executor: one batch job per unit. The job runs this binary on its node for exactly that
//! unit (`runner unit FILE --server ID --cell …`), which writes the unit's cells and server record into
//! the results directory (a filesystem the nodes share); the coordinator submits, follows, cancels and
//! renders the report.
//!
//! Records and rules:
//! - `servers/<id>/job.sh` is the job script; `servers/<id>/slurm-<job id>.out` its output;
//!   `servers/<id>/job.json` the job id, written the moment `sbatch` answers.
//! - A server configuration whose recorded job is still in the queue (any state `squeue` lists:
//!   pending, running, completing, …) is never submitted again: a rerun, or a second coordinator,
//!   follows that job instead.
//! - A job that left the queue is judged by its cells: a `result.json` is the only proof of a measured
//!   cell. Cells without one (and without a failure the job itself recorded) become failure records
//!   naming how the job ended and the tail of its output; a rerun submits only configurations with
//!   cells still missing.
//!
//! How a job ended, in the order the signals are trusted: `sacct` (when accounting is on), `scontrol
//! show job` (while slurmctld still remembers the job, `MinJobAge`, 300 s by default), then the unit's
//! own server record (which says ok, failed or interrupted, and for which job). `squeue` alone decides
//! whether a job is still in the queue.
//!
//! Ctrl-C cancels the jobs this coordinator submitted (`scancel`), waits a bounded time for them to leave
//! the queue (their units tear their servers down on Slurm's SIGTERM) and ends the run with 130; jobs it
//! only followed keep running. `--detach` submits and returns at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::{Done, Unit};
use crate::experiment::Experiment;
use crate::experiment::executor::Slurm;
use crate::plan::CellStatus;
use crate::progress::{Reporter, UnitProgress};
use crate::signals::Shutdown;
use crate::store::{
    CellFailure, JobRecord, Schema, ServerRecord, ServerStatus, Store, now_rfc3339,
};
use crate::tool::Tool;
use crate::unit::UnitResult;

/// How long a Slurm command may take (slurmctld can be slow under load, never forever).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// After `scancel`, how long the coordinator waits for its jobs to leave the queue.
const CANCEL_WAIT: Duration = Duration::from_secs(90);
/// Lines of a job's output quoted in a failure record.
const OUTPUT_TAIL: usize = 30;
/// States in which a job ended without its work done (the others that end a job: COMPLETED).
pub const FAILED_STATES: &[&str] = &[
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
];

/// One coordinator's Slurm run.
pub struct Run<'a> {
    pub exp: &'a Experiment,
    pub store: &'a Store,
    pub reporter: &'a Reporter,
    pub shutdown: &'a Shutdown,
    pub settings: &'a Slurm,
    pub force: bool,
    pub fail_fast: bool,
    /// Arguments every job's `runner unit` gets so that it loads the same plan (`--rehearse`, …).
    pub unit_args: &'a [String],
    /// Server configurations in the plan (for `[i/n]`).
    pub servers: usize,
}

/// A job in the queue, as `squeue` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub state: String,
    pub node: String,
    pub reason: String,
}

impl Queued {
    /// `pending (Resources)`, `running on node1`, or the state in lower case.
    pub fn describe(&self) -> String {
        match self.state.as_str() {
            "PENDING" => format!("pending ({})", self.reason),
            "RUNNING" => format!("running on {}", self.node),
            other => other.to_lowercase(),
        }
    }
}

/// A unit whose job this coordinator follows.
struct Followed<'p, 'r> {
    unit: Unit<'p>,
    job: JobRecord,
    /// Submitted by this coordinator (only those are cancelled on Ctrl-C).
    ours: bool,
    progress: UnitProgress<'r>,
    last_shown: String,
}

impl<'a> Run<'a> {
    /// Submits every unit that has no job in the queue, and returns: `--detach`. The number of jobs
    /// submitted or found in the queue.
    pub async fn submit_only(&self, units: Vec<Unit<'_>>) -> anyhow::Result<usize> {
        let queue = queue().await.map_err(anyhow::Error::msg)?;
        let mut n = 0;
        for unit in units {
            let (job, ours) = match self.adopt(&unit, &queue) {
                Some(job) => (job, false),
                None => (self.submit(&unit).await?, true),
            };
            self.reporter.line(format!(
                "{}: job {} {}",
                unit.server.id,
                job.job_id,
                if ours {
                    "submitted"
                } else {
                    "already in the queue"
                }
            ));
            n += 1;
        }
        Ok(n)
    }

    /// Submits (up to `max_jobs` in flight), follows every job until it has left the queue, and
    /// reports each finished unit to `done`.
    pub async fn run(&self, units: Vec<Unit<'_>>, done: Done) -> anyhow::Result<()> {
        let mut waiting: std::collections::VecDeque<Unit<'_>> = units.into();
        let mut followed: Vec<Followed<'_, '_>> = Vec::new();
        let mut stop_submitting = false;
        let mut first = true;
        loop {
            let queue = match queue().await {
                Ok(q) => q,
                Err(e) if first => anyhow::bail!("{e}"),
                Err(e) => {
                    self.reporter.line(format!("warning: {e}; asking again"));
                    self.pause().await;
                    continue;
                }
            };
            first = false;
            if self.shutdown.stopping().is_cancelled() {
                self.cancel(&followed).await;
                return Ok(());
            }
            // Jobs already in the queue for a waiting unit are followed, never submitted again.
            let mut rest = std::collections::VecDeque::new();
            for unit in waiting.drain(..) {
                match self.adopt(&unit, &queue) {
                    Some(job) => {
                        let progress = self.reporter.unit(&unit.server.id);
                        progress.line(format!(
                            "[{}] job {} of an earlier coordinator is still in the queue: following it, not submitting again",
                            unit.server.id, job.job_id
                        ));
                        followed.push(Followed {
                            unit,
                            job,
                            ours: false,
                            progress,
                            last_shown: String::new(),
                        });
                    }
                    None => rest.push_back(unit),
                }
            }
            waiting = rest;
            let limit = self.settings.max_jobs.map_or(usize::MAX, |n| n as usize);
            let mut submitted = false;
            while !stop_submitting && followed.len() < limit {
                let Some(unit) = waiting.pop_front() else {
                    break;
                };
                let job = match self.submit(&unit).await {
                    Ok(job) => job,
                    Err(e) => {
                        // Refused (a wrong partition, an account over its limit…): its cells fail with
                        // Slurm's words; the run goes on with the others.
                        let result = self.refused(&unit, &format!("{e:#}"));
                        if self.fail_fast {
                            stop_submitting = true;
                        }
                        self.finished(result, &done);
                        continue;
                    }
                };
                submitted = true;
                let progress = self.reporter.unit(&unit.server.id);
                progress.line(format!(
                    "[{}/{}] {}: {} cell(s), submitted as Slurm job {}",
                    unit.index + 1,
                    self.servers,
                    unit.server.id,
                    unit.pending.len(),
                    job.job_id
                ));
                followed.push(Followed {
                    unit,
                    job,
                    ours: true,
                    progress,
                    last_shown: String::new(),
                });
            }
            // Jobs submitted in this pass are not in the listing taken before them: ask again before
            // judging them.
            let queue = if submitted {
                self::queue().await.unwrap_or(queue)
            } else {
                queue
            };
            let mut still = Vec::new();
            for mut f in followed.drain(..) {
                match queue.get(&f.job.job_id) {
                    Some(q) => {
                        let shown = format!("job {}: {}", f.job.job_id, q.describe());
                        if shown != f.last_shown {
                            f.progress.phase(format!("{}: {shown}", f.unit.server.id));
                            f.last_shown = shown;
                        }
                        still.push(f);
                    }
                    None => {
                        let result = self.conclude(&mut f).await;
                        if result.failed() && self.fail_fast {
                            stop_submitting = true;
                        }
                        self.finished(result, &done);
                    }
                }
            }
            followed = still;
            if followed.is_empty() && (waiting.is_empty() || stop_submitting) {
                return Ok(());
            }
            self.pause().await;
        }
    }

    /// A unit is over (refused, or its job left the queue): its cells count as done on the overall
    /// bar, and the coordinator hears of it.
    fn finished(&self, result: UnitResult, done: &Done) {
        self.reporter
            .cells_done((result.cells_ok + result.cells_failed) as u64);
        let _ = done.send(result);
    }

    async fn pause(&self) {
        tokio::select! {
            () = tokio::time::sleep(self.settings.poll_interval) => {}
            () = self.shutdown.stopping().cancelled() => {}
        }
    }

    /// The unit's recorded job, when it is still in the queue.
    fn adopt(&self, unit: &Unit<'_>, queue: &HashMap<String, Queued>) -> Option<JobRecord> {
        let job = self.store.read_job(unit.server).ok().flatten()?;
        queue.contains_key(&job.job_id).then_some(job)
    }

    /// Writes the job script, submits it and records the job id.
    async fn submit(&self, unit: &Unit<'_>) -> anyhow::Result<JobRecord> {
        let script_path = self.store.job_script_path(unit.server);
        let script = job_script(
            self.exp,
            self.store,
            self.settings,
            unit,
            self.force,
            self.unit_args,
        )?;
        crate::store::write_atomic(&script_path, script.as_bytes())
            .with_context(|| format!("writing {}", script_path.display()))?;
        let path = script_path.clone();
        let job_id = tokio::task::spawn_blocking(move || sbatch(&path))
            .await
            .context("the sbatch task")?
            .map_err(|e| anyhow::anyhow!("submitting {}: {e}", script_path.display()))?;
        let job = JobRecord {
            schema: Schema::default(),
            server_id: unit.server.id.clone(),
            server_hash: unit.server.hash.clone(),
            job_id,
            cells: unit.pending.iter().map(|c| c.id.clone()).collect(),
            submitted_at: now_rfc3339(),
            submitted_by: format!("{}:{}", crate::server::this_host(), std::process::id()),
            final_state: None,
        };
        self.store
            .write_job(unit.server, &job)
            .with_context(|| format!("recording job {} of {}", job.job_id, unit.server.id))?;
        Ok(job)
    }

    /// Slurm refused the unit's job: each pending cell fails with the reason.
    fn refused(&self, unit: &Unit<'_>, reason: &str) -> UnitResult {
        let reason = format!("the Slurm job could not be submitted: {reason}");
        self.reporter.line(format!("{}: {reason}", unit.server.id));
        for cell in &unit.pending {
            let failure = CellFailure::new(&unit.server.id, cell, reason.clone(), Vec::new());
            if let Err(e) = self.store.write_failure(&failure) {
                self.reporter
                    .line(format!("warning: could not write a failure record: {e}"));
            }
        }
        UnitResult {
            cells_failed: unit.pending.len(),
            server_failed: true,
            ..UnitResult::default()
        }
    }

    /// A job left the queue: what became of its cells.
    async fn conclude(&self, f: &mut Followed<'_, '_>) -> UnitResult {
        let server = f.unit.server;
        let job_id = f.job.job_id.clone();
        let id = job_id.clone();
        let known = tokio::task::spawn_blocking(move || ended_state(&id))
            .await
            .ok()
            .flatten();
        let record = self.store.read_server(server).ok().flatten();
        let record = record.filter(|r| r.job_id.as_deref() == Some(job_id.as_str()));
        let state = match (&known, &record) {
            (Some((state, _)), _) => state.clone(),
            (None, Some(r)) if r.status != ServerStatus::Started => format!(
                "ended (Slurm no longer knows the job; its server record says {})",
                status_word(r.status)
            ),
            _ => "ended in an unknown state (Slurm no longer knows the job and it recorded no outcome)"
                .to_string(),
        };
        let output = self
            .store
            .server_dir(server)
            .join(format!("slurm-{job_id}.out"));
        let tail = tail_of(&output, OUTPUT_TAIL);
        let mut result = UnitResult::default();
        let mut unfinished = 0;
        for cell in &f.unit.pending {
            match self.store.cell_status(cell) {
                CellStatus::Done => result.cells_ok += 1,
                CellStatus::Failed if self.failed_since(cell, &f.job.submitted_at) => {
                    result.cells_failed += 1
                }
                _ => {
                    unfinished += 1;
                    result.cells_failed += 1;
                    let reason = format!(
                        "Slurm job {job_id} {} before this cell was measured (output: {})",
                        state_phrase(&state),
                        output.display()
                    );
                    let failure = CellFailure::new(&server.id, cell, reason, tail.clone());
                    if let Err(e) = self.store.write_failure(&failure) {
                        f.progress
                            .line(format!("warning: could not write a failure record: {e}"));
                    }
                }
            }
        }
        result.server_failed = unfinished > 0
            || record
                .as_ref()
                .is_some_and(|r| r.status == ServerStatus::Failed);
        if unfinished > 0 {
            // The unit could not say so itself (killed, cancelled, never started): the coordinator does.
            let mut r = record.unwrap_or_else(|| ServerRecord {
                id: server.id.clone(),
                hash: server.hash.clone(),
                engine: server.engine.clone(),
                executor: Some("slurm".into()),
                job_id: Some(job_id.clone()),
                node: known
                    .as_ref()
                    .map(|(_, node)| node.clone())
                    .filter(|n| !n.is_empty()),
                started_at: f.job.submitted_at.clone(),
                ..ServerRecord::default()
            });
            r.schema = Schema::default();
            r.status = ServerStatus::Failed;
            r.reason = Some(format!(
                "Slurm job {job_id} {} with {unfinished} cell(s) not measured",
                state_phrase(&state)
            ));
            r.log_tail = tail.clone();
            r.finished_at = Some(now_rfc3339());
            if let Err(e) = self.store.write_server(&r) {
                f.progress
                    .line(format!("warning: could not write the server record: {e}"));
            }
        }
        f.job.final_state = Some(state.clone());
        let _ = self.store.write_job(server, &f.job);
        f.progress.line(format!(
            "[{}] job {job_id} {}: {} cell(s) measured, {} failed",
            server.id,
            state_phrase(&state),
            result.cells_ok,
            result.cells_failed
        ));
        result
    }

    /// Whether the cell's failure record was written by this job (not left from an earlier run).
    fn failed_since(&self, cell: &crate::plan::CellPlan, submitted_at: &str) -> bool {
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
        match (
            self.store.read_failure(cell).ok().flatten(),
            at(submitted_at),
        ) {
            (Some(f), Some(since)) => at(&f.at).is_some_and(|t| t >= since),
            _ => false,
        }
    }

    /// Ctrl-C: cancel the jobs this coordinator submitted and wait (bounded) until they left the queue.
    async fn cancel(&self, followed: &[Followed<'_, '_>]) {
        let ours: Vec<String> = followed
            .iter()
            .filter(|f| f.ours)
            .map(|f| f.job.job_id.clone())
            .collect();
        let others = followed.len() - ours.len();
        if others > 0 {
            self.reporter.line(format!(
                "{others} job(s) of an earlier coordinator keep running (scancel them yourself if need be)"
            ));
        }
        if ours.is_empty() {
            return;
        }
        self.reporter
            .line(format!("cancelling Slurm job(s) {}", ours.join(" ")));
        let ids = ours.clone();
        let cancelled = tokio::task::spawn_blocking(move || scancel(&ids)).await;
        if let Ok(Err(e)) = cancelled {
            self.reporter.line(format!("warning: {e}"));
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < CANCEL_WAIT && !self.shutdown.killing().is_cancelled() {
            match queue().await {
                Ok(q) if !ours.iter().any(|id| q.contains_key(id)) => return,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        self.reporter.line(format!(
            "warning: job(s) {} still in the queue; `squeue` shows them",
            ours.join(" ")
        ));
    }
}

fn status_word(s: ServerStatus) -> &'static str {
    match s {
        ServerStatus::Started => "started",
        ServerStatus::Ok => "ok",
        ServerStatus::Failed => "failed",
        ServerStatus::Interrupted => "interrupted",
    }
}

/// `ended CANCELLED`, or the description as is.
fn state_phrase(state: &str) -> String {
    if state.starts_with("ended") {
        state.to_string()
    } else {
        format!("ended {state}")
    }
}

/// The script of one unit's job.
pub fn job_script(
    exp: &Experiment,
    store: &Store,
    settings: &Slurm,
    unit: &Unit<'_>,
    force: bool,
    unit_args: &[String],
) -> anyhow::Result<String> {
    use crate::shell::quote;
    let cwd = std::env::current_dir().context("the current directory")?;
    let absolute = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let server = unit.server;
    let dir = absolute(&store.server_dir(server));
    let runner = settings
        .runner
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::plan::runner_path()));
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# One server configuration of {}, written by runner.",
            exp.file.display()
        ),
        format!(
            "#SBATCH --job-name={}",
            quote(&format!("runner:{}", server.id))
        ),
        format!(
            "#SBATCH --output={}",
            quote(&dir.join("slurm-%j.out").to_string_lossy())
        ),
        format!("#SBATCH --chdir={}", quote(&cwd.to_string_lossy())),
        "#SBATCH --ntasks=1".to_string(),
        format!("#SBATCH --gres=gpu:{}", server.gpu_count.unwrap_or(1)),
    ];
    let mut opt = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            lines.push(format!("#SBATCH --{name}={v}"));
        }
    };
    opt("partition", &settings.partition);
    opt("account", &settings.account);
    opt("qos", &settings.qos);
    opt("constraint", &settings.constraint);
    if let Some(limit) = settings.time_limit {
        let minutes = limit.as_secs().div_ceil(60);
        lines.push(format!(
            "#SBATCH --time={}-{:02}:{:02}:00",
            minutes / 1440,
            minutes % 1440 / 60,
            minutes % 60
        ));
    }
    for extra in &settings.extra_args {
        let extra = extra.trim();
        lines.push(if extra.starts_with("#SBATCH") {
            extra.to_string()
        } else {
            format!("#SBATCH {extra}")
        });
    }
    lines.extend(settings.setup.iter().cloned());
    let mut argv: Vec<String> = vec![
        runner.to_string_lossy().into_owned(),
        "unit".into(),
        absolute(&exp.file).to_string_lossy().into_owned(),
        "--server".into(),
        server.id.clone(),
        "--server-hash".into(),
        server.hash.clone(),
    ];
    argv.extend(unit_args.iter().cloned());
    if force {
        argv.push("--force".into());
    }
    for cell in &unit.pending {
        argv.push("--cell".into());
        argv.push(cell.id.clone());
    }
    lines.push(format!(
        "exec {}",
        crate::shell::join(argv.iter().map(String::as_str))
    ));
    Ok(lines.join("\n") + "\n")
}

/// Runs a Slurm command (bounded in time); its stdout, or what it said went wrong.
fn slurm(program: &str, args: &[&str]) -> Result<String, String> {
    Tool {
        program: Path::new(program),
        args,
        path: None,
        timeout: COMMAND_TIMEOUT,
        merge_stderr: false,
    }
    .run()
    .map(|o| o.stdout)
    .map_err(|e| e.0)
}

/// `sbatch --parsable SCRIPT`: the job id.
fn sbatch(script: &Path) -> Result<String, String> {
    let out = slurm("sbatch", &["--parsable", &script.to_string_lossy()])?;
    // `123` or `123;cluster`.
    out.trim()
        .split(';')
        .next()
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_'))
        .map(str::to_string)
        .ok_or_else(|| format!("sbatch answered `{}`, not a job id", out.trim()))
}

/// This user's jobs in the queue, by id (blocks up to the Slurm command time limit).
pub fn queue_now() -> Result<HashMap<String, Queued>, String> {
    slurm("squeue", &["-h", "--me", "-o", "%i|%T|%N|%r"])
        .map(|out| parse_squeue(&out))
        .map_err(|e| format!("asking Slurm for the queue: {e}"))
}

/// [`queue_now`] on the blocking pool.
pub async fn queue() -> Result<HashMap<String, Queued>, String> {
    tokio::task::spawn_blocking(queue_now)
        .await
        .map_err(|e| e.to_string())?
}

pub fn parse_squeue(out: &str) -> HashMap<String, Queued> {
    out.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split('|');
            let id = parts.next()?.trim().to_string();
            let state = parts.next()?.trim().to_string();
            let node = parts.next().unwrap_or("").trim().to_string();
            let reason = parts.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some((
                id,
                Queued {
                    state,
                    node,
                    reason,
                },
            ))
        })
        .collect()
}

/// How a job that left the queue ended, and on which node: `sacct` when accounting is on, else
/// `scontrol show job` while slurmctld remembers it. `None` when neither knows.
pub fn ended_state(job_id: &str) -> Option<(String, String)> {
    if let Ok(out) = slurm(
        "sacct",
        &["-n", "-P", "-X", "-j", job_id, "-o", "State,NodeList"],
    ) && let Some(line) = out.lines().find(|l| !l.trim().is_empty())
    {
        let mut parts = line.split('|');
        let state = parts.next().unwrap_or("").split_whitespace().next()?;
        let node = parts.next().unwrap_or("").trim();
        return Some((state.to_string(), node.to_string()));
    }
    let out = slurm("scontrol", &["show", "job", job_id, "-o"]).ok()?;
    parse_scontrol(&out)
}

/// `JobState=…` and `NodeList=…` of `scontrol show job -o`.
pub fn parse_scontrol(out: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let state = field("JobState=")?;
    let node = field("NodeList=")
        .filter(|n| n != "(null)")
        .unwrap_or_default();
    Some((state, node))
}

fn scancel(ids: &[String]) -> Result<(), String> {
    let args: Vec<&str> = ids.iter().map(String::as_str).collect();
    slurm("scancel", &args).map(|_| ())
}

/// The last `n` lines of a file (empty when it cannot be read).
fn tail_of(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// A job's state for `runner status`: in the queue (with its node), or how it ended.
pub fn describe_job(job: &JobRecord, queue: Option<&HashMap<String, Queued>>) -> String {
    match queue.and_then(|q| q.get(&job.job_id)) {
        Some(q) => format!("job {} {}", job.job_id, q.describe()),
        None => match &job.final_state {
            Some(state) => format!("job {} {}", job.job_id, state_phrase(state)),
            None if queue.is_some() => format!("job {} no longer in the queue", job.job_id),
            None => format!("job {} (Slurm not reachable from here)", job.job_id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_script_carries_every_setting_and_runs_exactly_the_unit() {
        let text = r##"
[executor]
kind = "slurm"
[executor.slurm]
partition = "h100"
gpus_per_server = "{{ tp }}"
time_limit = "1d 2h 30m"
account = "bench"
qos = "high"
constraint = "hopper"
extra_args = ["--exclusive", "#SBATCH --mem=0"]
setup = "module load cuda\nsource /opt/venv/bin/activate"
runner = "/shared/bin/runner"
[engines.e]
command = "srv --port {{ port }} --tp {{ gpu_count }}"
[models.m]
input_tokens = 10
output_tokens = 2
[models.m.precisions]
fp8 = { path = "/m" }
[matrix]
model = ["m"]
precision = ["fp8"]
engine = ["e"]
tp = [4]
concurrency = [1, 8]
"##;
        let exp = crate::experiment::parse(Path::new("x.toml"), text).unwrap();
        let plan = crate::plan::expand(&exp).unwrap();
        let server = &plan.servers[0];
        let unit = Unit {
            index: 0,
            server,
            pending: server.points.iter().skip(1).collect(),
        };
        let store = Store::new("results/x");
        let args = ["--executor".to_string(), "slurm".to_string()];
        let script = job_script(&exp, &store, &exp.executor.slurm, &unit, false, &args).unwrap();
        for line in [
            "#SBATCH --gres=gpu:4",
            "#SBATCH --partition=h100",
            "#SBATCH --time=1-02:30:00",
            "#SBATCH --account=bench",
            "#SBATCH --qos=high",
            "#SBATCH --constraint=hopper",
            "#SBATCH --exclusive",
            "#SBATCH --mem=0",
            "module load cuda",
            "source /opt/venv/bin/activate",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "{line} missing:\n{script}"
            );
        }
        let exec = script.lines().last().unwrap();
        assert!(exec.starts_with("exec /shared/bin/runner unit /"), "{exec}");
        assert!(
            exec.ends_with(&format!(
                "--server m/fp8/e --server-hash {} --executor slurm --cell m/fp8/e/c8",
                server.hash
            )),
            "only the pending cell: {exec}"
        );
        assert!(script.contains("slurm-%j.out"));
    }

    #[test]
    fn squeue_and_scontrol_are_read() {
        let q = parse_squeue("12|RUNNING|node1|None\n13|PENDING||Resources\n");
        assert_eq!(q["12"].node, "node1");
        assert_eq!(q["13"].state, "PENDING");
        assert_eq!(q["13"].reason, "Resources");
        let s = parse_scontrol(
            "JobId=12 JobName=x UserId=root(0) JobState=CANCELLED Reason=None NodeList=vm BatchHost=vm",
        );
        assert_eq!(s, Some(("CANCELLED".into(), "vm".into())));
        assert_eq!(
            parse_scontrol("JobId=13 JobState=PENDING NodeList=(null)"),
            Some(("PENDING".into(), String::new()))
        );
        assert_eq!(
            parse_scontrol("slurm_load_jobs error: Invalid job id"),
            None
        );
    }
}
