//! What `nvidia-smi` says about this host's GPUs: their names, memory and driver (for the environment
//! record), the memory each uses and which processes hold it (for the GPU-release wait after a teardown),
//! and a stream of samples while a load point runs (for telemetry where NVML cannot load). The one place
//! that runs `nvidia-smi`.
//!
//! Invariants: every query is bounded in time (see [`crate::tool`]) and blocks its thread (async callers
//! use `spawn_blocking`); a host without `nvidia-smi` simply has no [`Smi`]; values the tool prints as
//! `[N/A]` are `None`, never a made-up number. A sampling stream ([`SmiStream`]) runs in a process group
//! of its own that is killed when the stream is dropped, so it never outlives its load point.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use serde::{Deserialize, Serialize};

use crate::tool::{Tool, ToolError};

/// How long one `nvidia-smi` query may take (a wedged driver can hang it).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One GPU as `nvidia-smi --query-gpu=name,memory.total,driver_version,mig.mode.current` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpu {
    pub name: String,
    /// As printed, e.g. `98304 MiB`.
    pub memory_total: Option<String>,
    pub driver: Option<String>,
    /// `Enabled` / `Disabled`; `None` where the GPU does not support MIG (`[N/A]`).
    pub mig_mode: Option<String>,
}

impl Gpu {
    /// `name, memory, driver` — the line the seed report prints as "GPU Driver".
    pub fn line(&self) -> String {
        let mut parts = vec![self.name.clone()];
        parts.extend(self.memory_total.clone());
        parts.extend(self.driver.clone());
        parts.join(", ")
    }
}

/// An `nvidia-smi` to ask.
#[derive(Debug, Clone)]
pub struct Smi {
    program: PathBuf,
    /// `PATH` for the child (tests point it at a fake's directory), `None`: inherited.
    path: Option<OsString>,
    timeout: Duration,
}

impl Smi {
    /// `nvidia-smi` from `search` (a `PATH`-style list; `None`: this process's `PATH`), if there is one,
    /// i.e. this is a GPU host.
    pub fn find(search: Option<&OsStr>) -> Option<Smi> {
        crate::tool::find_program("nvidia-smi", None, search).map(|program| Smi {
            program,
            path: search.map(OsStr::to_os_string),
            timeout: QUERY_TIMEOUT,
        })
    }

    /// A probe that runs `program` instead (tests use a fake).
    pub fn with_program(program: impl Into<PathBuf>) -> Smi {
        Smi {
            program: program.into(),
            path: None,
            timeout: QUERY_TIMEOUT,
        }
    }

    /// Bounds each query by `timeout` instead of [`QUERY_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Smi {
        self.timeout = timeout;
        self
    }

    fn query(&self, args: &[&str]) -> Result<String, ToolError> {
        Tool {
            program: &self.program,
            args,
            path: self.path.as_deref(),
            timeout: self.timeout,
            merge_stderr: false,
        }
        .run()
        .map(|out| out.stdout)
    }

    /// Every GPU, in index order.
    pub fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let out = self
            .query(&[
                "--query-gpu=name,memory.total,driver_version,mig.mode.current",
                "--format=csv,noheader",
            ])
            .map_err(|e| e.0)?;
        parse_gpus(&out)
    }

    /// Used memory per GPU in MiB, in index order.
    pub fn memory_used(&self) -> Option<Vec<u64>> {
        let text = self.query_gpu(&["memory.used"]).ok()?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().parse().ok())
            .collect()
    }

    /// One `--query-gpu=FIELDS --format=csv,noheader,nounits` answer: a line per GPU, fields in the order
    /// asked.
    pub fn query_gpu(&self, fields: &[&str]) -> Result<String, ToolError> {
        let query = format!("--query-gpu={}", fields.join(","));
        self.query(&[&query, "--format=csv,noheader,nounits"])
    }

    /// Starts `nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits -lms INTERVAL`: one line per
    /// GPU every interval, read on a thread of its own as the tool prints them.
    pub fn stream(&self, fields: &[&str], interval: Duration) -> Result<SmiStream, ToolError> {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nvidia-smi".into());
        let mut command = Command::new(&self.program);
        command
            .arg(format!("--query-gpu={}", fields.join(",")))
            .arg("--format=csv,noheader,nounits")
            .arg("-lms")
            .arg(interval.as_millis().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: dropping the stream kills whatever it started too.
            .process_group(0);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        let mut child = command
            .spawn()
            .map_err(|e| ToolError(format!("{name} could not start: {e}")))?;
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = std::sync::mpsc::channel();
        let err_pipe = child.stderr.take();
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = err_pipe {
                // A few lines at most: the tool's complaint about a field or the driver.
                let _ = pipe.take(4096).read_to_string(&mut text);
            }
            let _ = err_tx.send(text);
        });
        Ok(SmiStream {
            name,
            child,
            lines,
            stderr,
        })
    }

    /// Pids of processes holding GPU memory.
    pub fn compute_pids(&self) -> Option<Vec<u32>> {
        let text = self
            .query(&[
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ])
            .ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split(',').next()?.trim().parse().ok())
                .collect(),
        )
    }
}

/// A running `nvidia-smi -lms` (see [`Smi::stream`]).
#[derive(Debug)]
pub struct SmiStream {
    name: String,
    child: Child,
    lines: Receiver<(Instant, String)>,
    stderr: Receiver<String>,
}

impl SmiStream {
    /// Every line printed since the last call, each with the instant it was read.
    pub fn take(&self) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        loop {
            match self.lines.try_recv() {
                Ok(line) => out.push(line),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Why the tool stopped, once it has (its exit status and the first line it printed on stderr);
    /// `None` while it runs.
    pub fn ended(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default();
        let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
        Some(match first {
            Some(line) => format!(
                "{} ended ({}): {line}",
                self.name,
                crate::tool::describe_status(&status)
            ),
            None => format!(
                "{} ended ({})",
                self.name,
                crate::tool::describe_status(&status)
            ),
        })
    }
}

impl Drop for SmiStream {
    fn drop(&mut self) {
        // The child leads its own group (see `stream`).
        crate::tool::signal_group(self.child.id() as i32, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Parses `nvidia-smi --query-gpu=name,memory.total,driver_version,mig.mode.current
/// --format=csv,noheader`: one GPU per non-empty line. A name containing commas keeps them (the last
/// three fields are split off from the right). `[N/A]`-style values become `None`.
pub fn parse_gpus(text: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.rsplitn(4, ',').map(str::trim).collect();
        let [mig, driver, memory, name] = fields.as_slice() else {
            return Err(format!("unexpected nvidia-smi line: {line}"));
        };
        let known = |v: &str| {
            let bare = v.trim_matches(|c| c == '[' || c == ']');
            (!v.is_empty() && !matches!(bare, "N/A" | "Not Supported" | "Unknown Error"))
                .then(|| v.to_string())
        };
        gpus.push(Gpu {
            name: name.to_string(),
            memory_total: known(memory),
            driver: known(driver),
            mig_mode: known(mig),
        });
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn gpu_lines_parse_with_na_and_several_gpus() {
        let text = "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08, [N/A]\n\
                    NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15, Enabled\n\n";
        let gpus = parse_gpus(text).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(
            gpus[0].line(),
            "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08"
        );
        assert_eq!(gpus[0].mig_mode, None);
        assert_eq!(gpus[1].mig_mode.as_deref(), Some("Enabled"));
    }

    #[test]
    fn gpu_name_with_comma_and_garbage() {
        let gpus = parse_gpus("Odd, Name, 1 MiB, 1.0, Disabled").unwrap();
        assert_eq!(gpus[0].name, "Odd, Name");
        assert!(parse_gpus("No devices were found").is_err());
    }

    /// The fake `nvidia-smi` answers from files in its own directory; it is linked, not written:
    /// executing a file just written can fail with ETXTBSY while other tests fork.
    fn fake(dir: &Path) -> Smi {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-nvidia-smi");
        let link = dir.join("nvidia-smi");
        std::os::unix::fs::symlink(script, &link).unwrap();
        Smi::with_program(link)
    }

    #[test]
    fn parses_memory_and_pids() {
        let dir = tempfile::tempdir().unwrap();
        let smi = fake(dir.path());
        std::fs::write(dir.path().join("mem"), "1200\n 35000\n").unwrap();
        std::fs::write(dir.path().join("apps"), "4242, 33000\n77, 10\n").unwrap();
        assert_eq!(smi.memory_used(), Some(vec![1200, 35000]));
        assert_eq!(smi.compute_pids(), Some(vec![4242, 77]));
    }

    #[test]
    fn a_stream_delivers_lines_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let smi = fake(dir.path());
        std::fs::write(
            dir.path().join("lms"),
            "TS, 0, GPU-a, 100\nTS, 1, GPU-b, 200\n",
        )
        .unwrap();
        let mut stream = smi
            .stream(&["timestamp", "index"], Duration::from_millis(250))
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let lines = stream.take();
        assert!(lines.len() >= 4, "{lines:?}");
        assert!(lines[1].1.contains(", 1, GPU-b, 200"), "{lines:?}");
        assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(stream.ended(), None, "still running");
        drop(stream); // kills the group: the test would hang on a leaked loop otherwise
    }

    #[test]
    fn a_stream_that_ends_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let smi = fake(dir.path()); // no `lms` file: the fake's sed fails and it exits
        let mut stream = smi
            .stream(&["timestamp"], Duration::from_millis(250))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let why = loop {
            if let Some(why) = stream.ended() {
                break why;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(why.contains("ended (exit code 1)"), "{why}");
    }

    #[test]
    fn a_missing_program_answers_nothing() {
        let smi = Smi::with_program("/nonexistent/nvidia-smi");
        assert_eq!(smi.memory_used(), None);
        assert!(smi.gpus().unwrap_err().contains("could not start"));
        assert!(Smi::find(Some(OsStr::new("/nonexistent"))).is_none());
    }
}
