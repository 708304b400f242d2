//! The pid file in the results directory: which runner is using it and which server group it started,
//! so that the next run can clean up after a runner that was killed hard.
//!
//! Invariants: the file is written atomically once the server's group exists and removed once the group
//! is gone. Processes are named by (pid, start time): a recycled pid is never mistaken for ours, so
//! cleanup never signals a stranger's processes.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::port::port_in_use;
use super::procs;

/// Contents of `runner.pid` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    /// The host the runner runs on (results directories may be shared between the nodes of a cluster:
    /// a pid means something only on its own host). Empty in files of older runners: this host.
    #[serde(default)]
    pub host: String,
    pub runner_pid: u32,
    pub runner_start_ticks: u64,
    pub server_id: String,
    /// The server's process group (= the pid of the process the runner spawned).
    pub pgid: i32,
    /// Start time of the group leader, to recognise its pid if it was reused.
    pub server_start_ticks: u64,
    pub port: u16,
    /// Local time, RFC 3339 (a label for people).
    pub started_at: String,
}

impl PidFile {
    /// The record for a server group this runner just started.
    pub fn new(server_id: &str, pgid: i32, port: u16) -> PidFile {
        let runner_pid = std::process::id();
        PidFile {
            host: this_host(),
            runner_pid,
            runner_start_ticks: procs::stat(runner_pid).map_or(0, |s| s.start_ticks),
            server_id: server_id.to_string(),
            pgid,
            server_start_ticks: u32::try_from(pgid)
                .ok()
                .and_then(procs::stat)
                .map_or(0, |s| s.start_ticks),
            port,
            started_at: crate::store::now_rfc3339(),
        }
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        crate::store::write_json(path, self)
    }

    /// `Ok(None)` when there is no pid file.
    pub fn read(path: &Path) -> io::Result<Option<PidFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(with_path(path, "cannot read the pid file", e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a runner pid file ({e}); remove it if no runner is using this results directory",
                    path.display()
                ),
            )
        })
    }

    /// Whether the recorded runner is still running (a process with its pid *and* start time) and is not
    /// this very process.
    fn runner_alive_elsewhere(&self) -> bool {
        self.runner_pid != std::process::id()
            && procs::stat(self.runner_pid)
                .is_some_and(|s| s.state != 'Z' && s.start_ticks == self.runner_start_ticks)
    }

    /// Whether the recorded group can only be ours: its leader is the recorded process, or the leader is
    /// gone (Linux keeps a pid reserved while a group still uses it as its id, so survivors of a dead
    /// leader are the leader's children).
    fn group_is_ours(&self) -> bool {
        match u32::try_from(self.pgid).ok().and_then(procs::stat) {
            Some(leader) => leader.start_ticks == self.server_start_ticks,
            None => true,
        }
    }
}

/// This host's name (empty if it cannot be read).
pub fn this_host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An I/O error that names the file and what we tried, keeping its kind.
fn with_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{what} {}: {e}; remove it by hand if no runner is using this results directory",
            path.display()
        ),
    )
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleCleanup {
    pub runner_pid: u32,
    pub server_id: String,
    pub pgid: i32,
    pub port: u16,
    /// Processes of the stale group found alive (and signalled).
    pub found: Vec<u32>,
    /// SIGKILL was needed.
    pub escalated: bool,
    /// Processes that survived even SIGKILL (should be empty).
    pub leftovers: Vec<u32>,
    pub port_freed: bool,
}

impl std::fmt::Display for StaleCleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {} (process group {}, port {}) of runner {}: {} process(es) stopped{}{}",
            self.server_id,
            self.pgid,
            self.port,
            self.runner_pid,
            self.found.len(),
            if self.escalated { " with SIGKILL" } else { "" },
            if self.leftovers.is_empty() {
                String::new()
            } else {
                format!(", {} left alive", self.leftovers.len())
            },
        )
    }
}

const STALE_GRACE: Duration = Duration::from_secs(5);
const KILL_WAIT: Duration = Duration::from_secs(5);
const PORT_WAIT: Duration = Duration::from_secs(5);

/// Cleans up after a runner that died without tearing its server down. Blocks for up to ~15 s.
///
/// - no pid file, or one written on another host: `Ok(None)`;
/// - the recorded runner still runs (another process): an error of kind `ResourceBusy` naming it;
/// - otherwise the recorded group gets TERM, a short grace, KILL; we wait until it is gone and its port
///   free, remove the file and report what was done.
pub fn cleanup_stale(pid_file: &Path) -> io::Result<Option<StaleCleanup>> {
    let Some(record) = PidFile::read(pid_file)? else {
        return Ok(None);
    };
    if !record.host.is_empty() && record.host != this_host() {
        // Another node's runner (a shared results directory): its pids mean nothing here.
        return Ok(None);
    }
    if record.runner_alive_elsewhere() {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "another runner (pid {}, started {}) is using this results directory and runs server `{}` on port {}; \
                 wait for it or stop it (Ctrl-C) before starting a new run here",
                record.runner_pid, record.started_at, record.server_id, record.port
            ),
        ));
    }
    let found = if record.group_is_ours() {
        procs::group_members(record.pgid)
    } else {
        Vec::new()
    };
    let (escalated, leftovers) = if found.is_empty() {
        (false, Vec::new())
    } else {
        procs::terminate_group_blocking(record.pgid, STALE_GRACE, KILL_WAIT)
    };
    let deadline = Instant::now() + PORT_WAIT;
    while port_in_use(record.port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let port_freed = !port_in_use(record.port);
    if leftovers.is_empty() {
        // Survivors keep the file, so the next run tries again and the user sees the pids.
        std::fs::remove_file(pid_file)
            .map_err(|e| with_path(pid_file, "cannot remove the stale pid file", e))?;
    }
    Ok(Some(StaleCleanup {
        runner_pid: record.runner_pid,
        server_id: record.server_id,
        pgid: record.pgid,
        port: record.port,
        found,
        escalated,
        leftovers,
        port_freed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.pid");
        assert_eq!(PidFile::read(&path).unwrap(), None);
        let rec = PidFile::new("vllm/qwen", 4242, 8000);
        rec.write(&path).unwrap();
        assert_eq!(PidFile::read(&path).unwrap(), Some(rec));
    }

    #[test]
    fn garbage_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner.pid");
        std::fs::write(&path, "not json").unwrap();
        let err = PidFile::read(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("remove it"));
    }

    #[test]
    fn an_unreadable_pid_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails with something other than NotFound.
        let path = dir.path().join("runner.pid");
        std::fs::create_dir(&path).unwrap();
        let err = cleanup_stale(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn our_own_pid_file_is_stale_not_busy() {
        // A runner that lost its server (e.g. after a panic) may clean up its own leftovers.
        let rec = PidFile::new("s", i32::MAX, 1);
        assert!(!rec.runner_alive_elsewhere());
    }

    #[test]
    fn a_reused_leader_pid_is_not_ours() {
        let me = std::process::id();
        let mut rec = PidFile::new("s", me as i32, 1);
        assert!(rec.group_is_ours());
        rec.server_start_ticks += 1;
        assert!(!rec.group_is_ours());
    }
}
