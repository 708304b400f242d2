//! The results directory: layout, atomic writes, and the status of each cell for resume and `runner plan`.
//!
//! ```text
//! <results_dir>/
//!   experiment.toml                       the experiment file as last run
//!   environment.json                      machine, GPU, versions, git state of the last run
//!   runner.pid                            the running runner and its current server (stale-server cleanup)
//!   servers/<server id>/server.json       rendered command, engine version, time to ready, teardown
//!   servers/<server id>/server.log        the server's stdout and stderr
//!   cells/<cell id>/result.json           one finished cell: settings, hash, summary, server metrics
//!   cells/<cell id>/requests.jsonl        one line per request (the source of truth for every number)
//!   cells/<cell id>/failure.json          why a cell failed (replaced by result.json once it succeeds)
//!   cells.csv                             one row per finished cell, stable columns
//!   report/                               summary, per-model records, charts
//! ```
//!
//! Every file is written to a temporary file in the same directory and renamed into place, so a crash
//! leaves either the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plan::{CellPlan, ServerPlan, id_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    /// No result yet.
    Pending,
    /// A result with the same settings hash exists: resume skips it.
    Done,
    /// A result exists but its settings changed: it will be rerun.
    Changed,
    /// The last attempt failed: it will be retried.
    Failed,
}

impl CellStatus {
    pub fn label(self) -> &'static str {
        match self {
            CellStatus::Pending => "pending",
            CellStatus::Done => "done",
            CellStatus::Changed => "changed",
            CellStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

pub const RESULT_FILE: &str = "result.json";
pub const FAILURE_FILE: &str = "failure.json";
pub const REQUESTS_FILE: &str = "requests.jsonl";

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn cell_dir(&self, cell: &CellPlan) -> PathBuf {
        self.root.join("cells").join(id_path(&cell.id))
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

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}
