//! The results directory: layout, atomic writes, and the status of each cell for resume and `runner plan`.
//!
//! ```text
//! <results_dir>/
//!   experiment.toml                       the experiment file as last run
//!   environment.json                      machine, GPU, versions, git state of the last run
//!   nodes/<host>/environment.json         the same, per node that ran a server configuration
//!   servers/<server id>/server.json       where it ran, rendered command, engine version, time to ready, teardown
//!   servers/<server id>/server.log        the server's stdout and stderr
//!   servers/<server id>/runner.pid        the runner running this server now (stale-server cleanup)
//!   servers/<server id>/job.json          the Slurm job that runs (or ran) it; job.sh, slurm-<job id>.out
//!   cells/<cell id>/result.json           one finished cell: settings, hash, summary, server metrics
//!   cells/<cell id>/requests.jsonl        one line per request (the source of truth for every number),
//!                                         written as requests finish (see [`RequestsWriter`])
//!   cells/<cell id>/gpu.jsonl             GPU samples during the point (where telemetry was available)
//!   cells/<cell id>/server_metrics.jsonl  the server's gauges, scraped every second during the point
//!   cells/<cell id>/failure.json          why a cell failed (replaced by result.json once it succeeds)
//!   cells/<cell id>/repeats/<k>/          one measurement of a cell with `repeats` ≥ 2: repeat.json (its
//!                                         summary, the repeat's commit point), requests.jsonl (each line
//!                                         tagged with `repeat`), gpu.jsonl, server_metrics.jsonl, prompts
//!   cells.csv                             one row per finished cell, stable columns
//!   report/                               summary, per-model records, charts
//! ```
//!
//! Every file is written to a temporary file in the same directory and renamed into place, so a crash
//! leaves either the old file or the new one, never half of one.
//!
//! A cell measured several times commits each repeat as it finishes (a crash keeps every finished
//! repeat) and `result.json` once all are there. Its directory holds what its `result.json` describes:
//! storing a cell's first new repeat removes the result it replaces, and committing removes repeats
//! beyond the cell's count and the records of an earlier single measurement.
//!
//! The store survives its own history: every record carries a [`Schema`] version, fields added after the
//! first version have serde defaults, and what an older version wrote differently is translated on
//! reading (see [`parse_cell`]). One unreadable `result.json` does not hide the others: [`Store::read_cells`]
//! returns it beside the readable ones, and the report names it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plan::{CellPlan, CellStatus, ServerPlan};

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// A cell id as a relative path inside the results dir: each `/`-separated part made filesystem-safe.
pub fn id_path(id: &str) -> std::path::PathBuf {
    id.split('/')
        .map(|part| {
            part.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._=-+".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .iter()
        .collect::<std::path::PathBuf>()
}

pub const RESULT_FILE: &str = "result.json";
pub const FAILURE_FILE: &str = "failure.json";
pub const REQUESTS_FILE: &str = "requests.jsonl";
pub const PROMPTS_FILE: &str = "prompts.jsonl";
pub const GPU_FILE: &str = "gpu.jsonl";
pub const SERVER_METRICS_FILE: &str = "server_metrics.jsonl";
pub const REPEAT_FILE: &str = "repeat.json";
pub const REPEATS_DIR: &str = "repeats";

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn cell_dir(&self, cell: &CellPlan) -> PathBuf {
        self.cell_dir_of(&cell.id)
    }

    /// The directory of the cell (or repeat, see [`repeat_id`]) with this id.
    pub fn cell_dir_of(&self, id: &str) -> PathBuf {
        self.root.join("cells").join(id_path(id))
    }

    pub fn server_dir(&self, server: &ServerPlan) -> PathBuf {
        self.root.join("servers").join(id_path(&server.id))
    }

    /// Reads a cell's status from disk; unreadable results count as pending (they will be redone).
    pub fn cell_status(&self, cell: &CellPlan) -> CellStatus {
        let dir = self.cell_dir(cell);
        match read_hash(&dir.join(RESULT_FILE)) {
            Some(hash) if hash == cell.hash => CellStatus::Done,
            Some(_) => CellStatus::Changed,
            None if dir.join(FAILURE_FILE).is_file() => CellStatus::Failed,
            None => CellStatus::Pending,
        }
    }
}

fn read_hash(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("hash")?.as_str().map(str::to_string)
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// One JSON line per item, written atomically.
fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut lines = Vec::new();
    for item in items {
        serde_json::to_writer(&mut lines, item).map_err(std::io::Error::other)?;
        lines.push(b'\n');
    }
    write_atomic(path, &lines)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// The version of a stored record's shape. Records written before versioning have no `schema` field and
/// read as version 1; [`Schema::default`] is the version this build writes.
///
/// - 1: summaries stored 0 for figures that could not be computed (see
///   [`crate::stats::Summary::read_zero_as_unmeasured`]); server statuses were free strings.
/// - 2: unmeasured figures are `null`; statuses are [`ServerStatus`]; every record has `schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Schema(pub u32);

impl Schema {
    /// The version this build writes.
    pub const CURRENT: Schema = Schema(2);
    /// What a record without a `schema` field is.
    pub const UNVERSIONED: Schema = Schema(1);

    fn unversioned() -> Schema {
        Schema::UNVERSIONED
    }
}

impl Default for Schema {
    fn default() -> Self {
        Schema::CURRENT
    }
}

/// One finished cell as stored in `result.json`. CONTRACT: the report reads exactly this (through
/// [`parse_cell`], which translates older versions).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CellResult {
    #[serde(default = "Schema::unversioned")]
    pub schema: Schema,
    pub id: String,
    /// Settings hash of the cell (resume compares it with the plan's).
    pub hash: String,
    pub server_id: String,
    pub server_hash: String,
    pub model: String,
    pub precision: String,
    pub engine: String,
    /// Every variable of the cell: server variables, then load variables.
    pub vars: indexmap::IndexMap<String, crate::experiment::Scalar>,
    /// The resolved load settings (as JSON, so old results stay readable when settings gain fields).
    pub load: serde_json::Value,
    pub summary: crate::stats::Summary,
    #[serde(default)]
    pub server_metrics: crate::scrape::ServerMetrics,
    /// GPU telemetry and the server timeline over the measured phase (absent in results written before
    /// telemetry existed: nothing was recorded).
    #[serde(default)]
    pub telemetry: crate::telemetry::Telemetry,
    /// The server command line as run (secrets redacted), and the engine's version output.
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Local time with offset, RFC 3339.
    pub started_at: String,
    pub finished_at: String,
    /// With `repeats` ≥ 2: every repeat's own measurement, in repeat order; `summary`, `server_metrics`
    /// and `telemetry` above then combine them (see [`crate::repeat`]). Absent for a cell measured once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<RepeatResult>,
}

/// One measurement of a cell measured several times, stored as `cells/<cell id>/repeats/<k>/repeat.json`
/// (its commit point) and copied into the cell's `result.json` once every repeat is there.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RepeatResult {
    #[serde(default = "Schema::unversioned")]
    pub schema: Schema,
    /// Which repeat, from 1.
    pub repeat: u32,
    /// The repeat's own settings hash (see [`crate::plan::ServerPlan::repeat_of`]): a stored repeat
    /// counts for a cell exactly when it matches.
    pub hash: String,
    pub summary: crate::stats::Summary,
    #[serde(default)]
    pub server_metrics: crate::scrape::ServerMetrics,
    #[serde(default)]
    pub telemetry: crate::telemetry::Telemetry,
    /// The server command as run (secrets redacted) and the engine's version, as for a cell.
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub engine_version: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// Where repeat `k` of a cell keeps its files, written like a cell id (`<cell id>/repeats/<k>`), so that
/// the per-cell writers ([`Store::write_prompts`], [`Store::write_telemetry`]) serve repeats too.
pub fn repeat_id(cell_id: &str, k: u32) -> String {
    format!("{cell_id}/{REPEATS_DIR}/{k}")
}

/// Reads a `result.json`, translating what an older schema meant into today's types.
pub fn parse_cell(text: &str) -> serde_json::Result<CellResult> {
    let mut cell: CellResult = serde_json::from_str(text)?;
    // Version 2 is the one that stopped writing 0 for unmeasured figures.
    if cell.schema < Schema(2) {
        cell.summary = cell.summary.read_zero_as_unmeasured();
    }
    Ok(cell)
}

/// Why a cell (or its whole server) failed, stored in `failure.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CellFailure {
    #[serde(default = "Schema::unversioned")]
    pub schema: Schema,
    pub id: String,
    pub hash: String,
    pub server_id: String,
    pub reason: String,
    /// Last lines of the server log, if a server was involved.
    #[serde(default)]
    pub log_tail: Vec<String>,
    pub at: String,
}

impl CellFailure {
    /// `cell` of server `server_id` failed now, for `reason`.
    pub fn new(server_id: &str, cell: &CellPlan, reason: String, log_tail: Vec<String>) -> Self {
        CellFailure {
            schema: Schema::default(),
            id: cell.id.clone(),
            hash: cell.hash.clone(),
            server_id: server_id.to_string(),
            reason,
            log_tail,
            at: now_rfc3339(),
        }
    }
}

/// How a server configuration's life ended, in `server.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerStatus {
    /// The record's state until an outcome is known; stored, it means the runner stopped before it
    /// could record one (killed hard).
    #[default]
    Started,
    /// Started, ready, its load points run (some cells may still have failed on their own).
    Ok,
    /// It did not become ready, or it died under load: its pending cells failed with its reason.
    Failed,
    /// The run was interrupted (Ctrl-C, SIGTERM) while this server was up.
    Interrupted,
}

/// One server configuration's lifecycle, stored in `servers/<id>/server.json`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ServerRecord {
    #[serde(default = "Schema::unversioned")]
    pub schema: Schema,
    pub id: String,
    pub hash: String,
    pub engine: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub base_url: String,
    pub port: Option<u16>,
    pub engine_version: Option<String>,
    pub time_to_ready_s: Option<f64>,
    pub teardown_s: Option<f64>,
    /// SIGKILL was needed after the grace period.
    pub teardown_escalated: Option<bool>,
    /// Processes of the server's group still alive after teardown (should be empty).
    #[serde(default)]
    pub teardown_leftovers: Vec<u32>,
    /// The port could be bound again after teardown.
    #[serde(default)]
    pub port_freed: Option<bool>,
    /// Seconds spent waiting for GPU memory to be released after teardown (GPU hosts only).
    #[serde(default)]
    pub gpu_wait_s: Option<f64>,
    pub started_at: String,
    pub status: ServerStatus,
    pub reason: Option<String>,
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// Where it ran: the executor (`local`, `slurm`), the node's host name, the Slurm job id, and the
    /// GPUs it was given (its `CUDA_VISIBLE_DEVICES`; `None` when the runner did not assign any).
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub gpus: Option<String>,
    /// Ports given up because the server reported "address already in use" (another program took the
    /// port between our pick and its bind); the server then started on `port`.
    #[serde(default)]
    pub ports_in_use: Vec<u16>,
    /// When the server record was last written with an outcome (local time, RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// The Slurm job of one server configuration, in `servers/<id>/job.json`: written by the coordinator
/// when it submits, read by every later coordinator (never submit twice while it is pending or running).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct JobRecord {
    #[serde(default = "Schema::unversioned")]
    pub schema: Schema,
    pub server_id: String,
    pub server_hash: String,
    pub job_id: String,
    /// The cells the job was submitted to run.
    pub cells: Vec<String>,
    pub submitted_at: String,
    /// The host and pid of the coordinator that submitted it.
    pub submitted_by: String,
    /// How it ended, once a coordinator saw it end (`COMPLETED`, `CANCELLED`, …, or a description).
    #[serde(default)]
    pub final_state: Option<String>,
}

impl Store {
    /// Opens the writer of a cell's `requests.jsonl`, for the load point to fill as its requests finish.
    pub fn requests_writer(&self, cell_id: &str) -> std::io::Result<RequestsWriter> {
        let dir = self.cell_dir_of(cell_id);
        RequestsWriter::create(
            dir.join(format!("{REQUESTS_FILE}.partial")),
            dir.join(REQUESTS_FILE),
            None,
        )
    }

    /// The writer of repeat `k`'s `requests.jsonl` in the cell's `repeats/<k>/`; every line carries
    /// `"repeat": k`. Until it is committed the file lives beside the cell's own files, so that replacing
    /// the cell's older repeats (`--force`) cannot remove it.
    pub fn repeat_requests_writer(&self, cell_id: &str, k: u32) -> std::io::Result<RequestsWriter> {
        let cell = self.cell_dir_of(cell_id);
        let dir = self.cell_dir_of(&repeat_id(cell_id, k));
        RequestsWriter::create(
            cell.join(format!("{REQUESTS_FILE}.repeat-{k}.partial")),
            dir.join(REQUESTS_FILE),
            Some(k),
        )
    }

    /// Stores a finished cell: its per-request records (written while it ran) are put in place first,
    /// then `result.json`, whose presence is the commit point for resume. A stale `failure.json` is
    /// removed afterwards.
    pub fn write_cell(&self, cell: &CellResult, requests: RequestsWriter) -> std::io::Result<()> {
        let dir = self.cell_dir_of(&cell.id);
        requests.commit()?;
        write_json(&dir.join(RESULT_FILE), cell)?;
        remove_file(&dir.join(FAILURE_FILE))
    }

    /// Stores the prompts a cell sent (`save_prompts`); call before [`Store::write_cell`], which commits.
    pub fn write_prompts<P: Serialize>(&self, cell_id: &str, prompts: &[P]) -> std::io::Result<()> {
        write_jsonl(&self.cell_dir_of(cell_id).join(PROMPTS_FILE), prompts)
    }

    /// Stores the raw telemetry samples of a cell (`gpu.jsonl` where there were GPU samples,
    /// `server_metrics.jsonl` where the server was scraped); call before [`Store::write_cell`], which
    /// commits.
    pub fn write_telemetry(
        &self,
        cell_id: &str,
        recorded: &crate::telemetry::Recorded,
    ) -> std::io::Result<()> {
        let dir = self.cell_dir_of(cell_id);
        if !recorded.gpu_samples.is_empty() {
            write_jsonl(&dir.join(GPU_FILE), &recorded.gpu_samples)?;
        }
        if !recorded.server_samples.is_empty() {
            write_jsonl(&dir.join(SERVER_METRICS_FILE), &recorded.server_samples)?;
        }
        Ok(())
    }

    /// Records a failed cell. A previous successful result with other settings is left in place until
    /// the cell succeeds again; one with the same hash cannot exist (the cell would have been skipped).
    pub fn write_failure(&self, failure: &CellFailure) -> std::io::Result<()> {
        let dir = self.cell_dir_of(&failure.id);
        write_json(&dir.join(FAILURE_FILE), failure)
    }

    pub fn write_server(&self, record: &ServerRecord) -> std::io::Result<()> {
        write_json(
            &self
                .root
                .join("servers")
                .join(id_path(&record.id))
                .join("server.json"),
            record,
        )
    }

    pub fn server_log_path(&self, server: &ServerPlan) -> PathBuf {
        self.server_dir(server).join("server.log")
    }

    /// Where the runner that runs `server` records itself and its server's process group.
    pub fn pid_file(&self, server: &ServerPlan) -> PathBuf {
        self.server_dir(server).join(PID_FILE)
    }

    /// Every pid file in the results directory: one per server configuration that runs now (or whose
    /// runner was killed hard), and the single one older runners wrote at the top.
    pub fn pid_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let top = self.root.join(PID_FILE);
        if top.exists() {
            out.push(top);
        }
        let mut stack = vec![self.root.join("servers")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == PID_FILE) {
                    out.push(path);
                }
            }
        }
        out.sort();
        out
    }

    pub fn job_script_path(&self, server: &ServerPlan) -> PathBuf {
        self.server_dir(server).join("job.sh")
    }

    pub fn write_job(&self, server: &ServerPlan, job: &JobRecord) -> std::io::Result<()> {
        write_json(&self.server_dir(server).join(JOB_FILE), job)
    }

    pub fn read_job(&self, server: &ServerPlan) -> std::io::Result<Option<JobRecord>> {
        read_json(&self.server_dir(server).join(JOB_FILE))
    }

    /// Writes the environment of one node (the unit that runs there does this before its server starts).
    pub fn write_node_environment(
        &self,
        node: &str,
        env: &crate::envinfo::Environment,
    ) -> std::io::Result<()> {
        write_json(&self.node_environment_path(node), env)
    }

    pub fn read_node_environment(
        &self,
        node: &str,
    ) -> std::io::Result<Option<crate::envinfo::Environment>> {
        read_json(&self.node_environment_path(node))
    }

    fn node_environment_path(&self, node: &str) -> PathBuf {
        self.root
            .join("nodes")
            .join(id_path(node))
            .join(ENVIRONMENT_FILE)
    }

    /// Every stored cell result, in directory order (the report sorts as it needs). A `result.json`
    /// that cannot be read or parsed is listed in [`StoredCells::unreadable`] instead of failing the
    /// whole read: one damaged or foreign file must not hide every other result. Only a directory that
    /// cannot be listed is an error.
    pub fn read_cells(&self) -> std::io::Result<StoredCells> {
        let mut out = StoredCells::default();
        for path in self.cell_files(RESULT_FILE)? {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_cell(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(cell) => out.cells.push(cell),
                Err(error) => out.unreadable.push(Unreadable { path, error }),
            }
        }
        Ok(out)
    }

    /// Every stored `failure.json` (cells whose last attempt failed), for tools that have no plan to
    /// ask about each cell (`runner compare`); unreadable ones are listed apart, as in
    /// [`Store::read_cells`].
    pub fn read_failures(&self) -> std::io::Result<(Vec<CellFailure>, Vec<Unreadable>)> {
        let (mut failures, mut unreadable) = (Vec::new(), Vec::new());
        for path in self.cell_files(FAILURE_FILE)? {
            match read_json::<CellFailure>(&path) {
                Ok(Some(f)) => failures.push(f),
                Ok(None) => {}
                Err(e) => unreadable.push(Unreadable {
                    path,
                    error: e.to_string(),
                }),
            }
        }
        Ok((failures, unreadable))
    }

    /// Paths of every file called `name` under `cells/`, depth first, in name order.
    fn cell_files(&self, name: &str) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let root = self.root.join("cells");
        if !root.is_dir() {
            return Ok(out);
        }
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .and_then(|entries| entries.collect::<Result<_, _>>())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == name) {
                    out.push(path);
                }
            }
        }
        Ok(out)
    }
}

/// A cell's `requests.jsonl`, written one line per request as requests finish, so that a point's
/// records are never all in memory. Lines go to `requests.jsonl.partial`; [`Store::write_cell`] renames
/// it into place just before it writes `result.json` (the commit point), so a stored result never sits
/// beside half of its records. Dropped without that (the point failed or was interrupted), the partial
/// file is removed; a crash leaves it behind, without a new `result.json`, and the next run overwrites it.
pub struct RequestsWriter {
    file: Option<std::io::BufWriter<std::fs::File>>,
    partial: PathBuf,
    path: PathBuf,
    /// The repeat every line is tagged with (`"repeat": k`), for a repeated point.
    repeat: Option<u32>,
}

impl RequestsWriter {
    /// A writer of `path`, through the `partial` file renamed into place on commit.
    fn create(
        partial: PathBuf,
        path: PathBuf,
        repeat: Option<u32>,
    ) -> std::io::Result<RequestsWriter> {
        if let Some(dir) = partial.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&partial)?;
        Ok(RequestsWriter {
            file: Some(std::io::BufWriter::with_capacity(256 << 10, file)),
            path,
            partial,
            repeat,
        })
    }

    /// Appends one JSON line (tagged with the repeat, for a repeated point).
    pub fn append<T: Serialize>(&mut self, item: &T) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            repeat: u32,
            #[serde(flatten)]
            record: &'a T,
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the requests file was already committed"))?;
        match self.repeat {
            Some(repeat) => serde_json::to_writer(
                &mut *file,
                &Tagged {
                    repeat,
                    record: item,
                },
            ),
            None => serde_json::to_writer(&mut *file, item),
        }
        .map_err(std::io::Error::other)?;
        file.write_all(b"\n")
    }

    /// Flushes, syncs and renames the file into place.
    fn commit(mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.take() {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&self.partial, &self.path)?;
        }
        Ok(())
    }
}

impl crate::stats::RecordSink for RequestsWriter {
    fn write(&mut self, record: crate::stats::RequestRecord) -> std::io::Result<()> {
        self.append(&record)
    }
}

impl Drop for RequestsWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// What [`Store::read_cells`] found.
#[derive(Debug, Default)]
pub struct StoredCells {
    pub cells: Vec<CellResult>,
    pub unreadable: Vec<Unreadable>,
}

/// A stored file that could not be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// Removes a file that may not exist.
fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Store {
    /// Stores one finished repeat of a cell: its requests, each line tagged with the repeat's number,
    /// then `repeat.json`, the repeat's commit point; its prompts and telemetry samples go first, through
    /// the per-cell writers with [`repeat_id`]. A result the cell had is removed with its top-level
    /// records: the repeats now being stored replace it (the cell is pending until they are complete).
    pub fn write_repeat(
        &self,
        cell_id: &str,
        repeat: &RepeatResult,
        requests: RequestsWriter,
    ) -> std::io::Result<()> {
        let cell = self.cell_dir_of(cell_id);
        let dir = self.cell_dir_of(&repeat_id(cell_id, repeat.repeat));
        requests.commit()?;
        write_json(&dir.join(REPEAT_FILE), repeat)?;
        for file in [
            RESULT_FILE,
            REQUESTS_FILE,
            PROMPTS_FILE,
            GPU_FILE,
            SERVER_METRICS_FILE,
        ] {
            remove_file(&cell.join(file))?;
        }
        Ok(())
    }

    /// Repeat `k` of a cell as stored; `None` when it is missing or unreadable (it is measured again).
    pub fn read_repeat(&self, cell_id: &str, k: u32) -> Option<RepeatResult> {
        let path = self.cell_dir_of(&repeat_id(cell_id, k)).join(REPEAT_FILE);
        read_json(&path).ok().flatten()
    }

    /// Commits a cell measured several times once every repeat is stored: `result.json` (which carries
    /// every repeat's summary), then removes a stale `failure.json` and stored repeats beyond the cell's
    /// count.
    pub fn write_repeated_cell(&self, cell: &CellResult) -> std::io::Result<()> {
        let dir = self.cell_dir_of(&cell.id);
        write_json(&dir.join(RESULT_FILE), cell)?;
        remove_file(&dir.join(FAILURE_FILE))?;
        self.prune_repeats(
            &cell.id,
            u32::try_from(cell.repeats.len()).unwrap_or(u32::MAX),
        )
    }

    /// Removes a cell's stored repeats numbered above `keep` (all of them with 0).
    pub fn prune_repeats(&self, cell_id: &str, keep: u32) -> std::io::Result<()> {
        let dir = self.cell_dir_of(cell_id).join(REPEATS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(_) if keep == 0 => return std::fs::remove_dir_all(&dir),
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let number = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok());
            if number.is_some_and(|k| k > keep) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Now, local time with offset (labels only; durations use `Instant`).
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

pub const ENVIRONMENT_FILE: &str = "environment.json";
pub const SERVER_FILE: &str = "server.json";
pub const JOB_FILE: &str = "job.json";
pub const PID_FILE: &str = "runner.pid";

/// Reads one JSON record; a missing file is `None`, an unreadable one an error naming the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

impl Store {
    /// The last failure recorded for a cell, if any.
    pub fn read_failure(&self, cell: &CellPlan) -> std::io::Result<Option<CellFailure>> {
        read_json(&self.cell_dir(cell).join(FAILURE_FILE))
    }

    /// A server configuration's lifecycle record, if it was started at least once.
    pub fn read_server(&self, server: &ServerPlan) -> std::io::Result<Option<ServerRecord>> {
        read_json(&self.server_dir(server).join(SERVER_FILE))
    }

    /// Writes `environment.json` (the orchestrator does this at the start of a run).
    pub fn write_environment(&self, env: &crate::envinfo::Environment) -> std::io::Result<()> {
        write_json(&self.root.join(ENVIRONMENT_FILE), env)
    }

    pub fn read_environment(&self) -> std::io::Result<Option<crate::envinfo::Environment>> {
        read_json(&self.root.join(ENVIRONMENT_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_measured_once_keeps_its_shape() {
        // Written before repeats existed (and by a cell measured once): no `repeats`, in and out.
        let text = include_str!(
            "../tests/fixtures/report/results/cells/qwen3-14b/fp8/vllm/c10/result.json"
        );
        let cell = parse_cell(text).unwrap();
        assert!(cell.repeats.is_empty());
        let json = serde_json::to_value(&cell).unwrap();
        assert!(
            json.get("repeats").is_none(),
            "old readers see the same shape"
        );
        assert!(json["load"].get("repeats").is_none());
    }

    #[test]
    fn ids_become_safe_relative_paths() {
        assert_eq!(id_path("m/fp8/a/x=1 2").to_string_lossy(), "m/fp8/a/x=1_2");
    }
}
