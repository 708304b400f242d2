//! Environment capture: the facts a reader needs to trust (or question) a night of numbers — time with
//! time zone, host, CPU, memory, OS, GPUs from `nvidia-smi`, engine and runner versions, and the git state
//! of the experiment file. Captured once at the start of a run and stored as `environment.json`.
//!
//! Invariants: capture never fails and never guesses. A fact that cannot be read is `None` (with a note
//! saying why where that helps), so a missing `nvidia-smi` or a file outside git is visible in the report
//! rather than an error that stops the run. External commands run with a time limit, so a wedged driver
//! cannot hang the runner before it has started anything.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gpu::Smi;
use crate::tool::{Tool, find_program};

/// Everything known about the machine and software of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// Local time with offset, RFC 3339.
    pub captured_at: String,
    /// The same moment for people: `2025-12-18 10:39:40 +08:00`.
    pub captured_at_local: String,
    /// IANA zone name when the system names one (`Asia/Shanghai`).
    pub timezone: Option<String>,
    pub host: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_logical_cores: Option<u32>,
    pub memory_total_mib: Option<u64>,
    /// `PRETTY_NAME` from os-release.
    pub os: Option<String>,
    pub kernel: Option<String>,
    /// One entry per GPU, in `nvidia-smi` order; empty without GPUs or without `nvidia-smi`.
    pub gpus: Vec<Gpu>,
    /// Why `gpus` is empty, when it is.
    pub gpu_note: Option<String>,
    /// Engine name → its version output (as the orchestrator ran the engines' version commands).
    pub engine_versions: BTreeMap<String, String>,
    pub runner_version: String,
    pub experiment: ExperimentSource,
}

pub use crate::gpu::Gpu;

/// Where the experiment file came from: its git commit and whether it had local changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExperimentSource {
    pub file: String,
    pub commit: Option<String>,
    /// True when the file differs from the commit (or is not tracked); `None` outside git.
    pub dirty: Option<bool>,
    pub note: Option<String>,
}

/// How external tools are found. Tests point `path` at a directory holding a fake `nvidia-smi`; the
/// search path is handed to the child only, never set on this process (tests run in parallel).
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The search path for `nvidia-smi` and `git`; `None` uses this process's `PATH`.
    pub path: Option<OsString>,
    /// Time limit for each external command.
    pub timeout: Option<Duration>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Captures the environment of this machine for a run of `exp_file`.
pub fn capture(exp_file: &Path, engine_versions: &BTreeMap<String, String>) -> Environment {
    capture_with(exp_file, engine_versions, &Probe::default())
}

/// [`capture`] with an explicit tool search path.
pub fn capture_with(
    exp_file: &Path,
    engine_versions: &BTreeMap<String, String>,
    probe: &Probe,
) -> Environment {
    let now = chrono::Local::now();
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cpu = read("/proc/cpuinfo").map(|t| parse_cpuinfo(&t));
    let (gpus, gpu_note) = match query_gpus(probe) {
        Ok(gpus) if gpus.is_empty() => (gpus, Some("nvidia-smi listed no GPU".to_string())),
        Ok(gpus) => (gpus, None),
        Err(note) => (Vec::new(), Some(note)),
    };
    Environment {
        captured_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        captured_at_local: now.format("%Y-%m-%d %H:%M:%S %:z").to_string(),
        timezone: timezone_name(),
        host: nix::unistd::gethostname()
            .ok()
            .map(|h| h.to_string_lossy().into_owned()),
        cpu_model: cpu.as_ref().and_then(|c| c.0.clone()),
        cpu_logical_cores: cpu.map(|c| c.1).filter(|n| *n > 0),
        memory_total_mib: read("/proc/meminfo").and_then(|t| parse_meminfo_total_mib(&t)),
        os: read("/etc/os-release").and_then(|t| parse_os_release(&t)),
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
        gpus,
        gpu_note,
        engine_versions: engine_versions.clone(),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
        experiment: git_state(exp_file, probe),
    }
}

/// The model name and the number of logical CPUs from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> (Option<String>, u32) {
    let mut model = None;
    let mut count = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(value.trim().to_string()),
            _ => {}
        }
    }
    (model, count)
}

/// `MemTotal` from `/proc/meminfo`, in MiB.
pub fn parse_meminfo_total_mib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// `PRETTY_NAME` (or `NAME`) from os-release, unquoted.
pub fn parse_os_release(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

/// Runs a tool with the probe's time limit and search path; `Err` is a short note for the report.
fn run_tool(program: &Path, args: &[&str], probe: &Probe) -> Result<String, String> {
    Tool {
        program,
        args,
        path: probe.path.as_deref(),
        timeout: probe.timeout.unwrap_or(DEFAULT_TIMEOUT),
        merge_stderr: false,
    }
    .run()
    .map(|out| out.stdout)
    .map_err(|e| e.0)
}

fn query_gpus(probe: &Probe) -> Result<Vec<Gpu>, String> {
    let smi = Smi::find(probe.path.as_deref())
        .ok_or_else(|| "nvidia-smi not found (no NVIDIA GPU driver on this host)".to_string())?;
    smi.timeout(probe.timeout.unwrap_or(DEFAULT_TIMEOUT)).gpus()
}

/// The commit of the repository holding the experiment file, and whether the file has local changes.
fn git_state(exp_file: &Path, probe: &Probe) -> ExperimentSource {
    let mut source = ExperimentSource {
        file: exp_file.display().to_string(),
        ..Default::default()
    };
    let Some(git) = find_program("git", None, probe.path.as_deref()) else {
        source.note = Some("git not found".into());
        return source;
    };
    let dir = match exp_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_arg = dir.to_string_lossy().into_owned();
    let file_arg = exp_file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match run_tool(&git, &["-C", &dir_arg, "rev-parse", "HEAD"], probe) {
        Ok(out) => source.commit = Some(out.trim().to_string()),
        Err(note) => {
            source.note = Some(format!("not in a git repository ({note})"));
            return source;
        }
    }
    match run_tool(
        &git,
        &["-C", &dir_arg, "status", "--porcelain", "--", &file_arg],
        probe,
    ) {
        Ok(out) => {
            let dirty = !out.trim().is_empty();
            source.dirty = Some(dirty);
            if out.trim_start().starts_with("??") {
                source.note = Some("the file is not tracked by git".into());
            }
        }
        Err(note) => source.note = Some(note),
    }
    source
}

/// The IANA zone name: `TZ`, `/etc/timezone`, or the target of the `/etc/localtime` link.
fn timezone_name() -> Option<String> {
    if let Ok(tz) = std::env::var("TZ") {
        let tz = tz.trim_start_matches(':').trim();
        if !tz.is_empty() {
            return Some(tz.to_string());
        }
    }
    if let Ok(text) = std::fs::read_to_string("/etc/timezone") {
        let tz = text.trim();
        if !tz.is_empty() {
            return Some(tz.to_string());
        }
    }
    let target = std::fs::read_link("/etc/localtime").ok()?;
    let text = target.to_string_lossy();
    text.split_once("zoneinfo/")
        .map(|(_, zone)| zone.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC 9V45\nprocessor\t: 1\nmodel name\t: AMD EPYC 9V45\n";
        assert_eq!(parse_cpuinfo(cpu), (Some("AMD EPYC 9V45".into()), 2));
        assert_eq!(
            parse_meminfo_total_mib("MemTotal:       16384000 kB\nMemFree: 1 kB\n"),
            Some(16000)
        );
        assert_eq!(
            parse_os_release("NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\n").as_deref(),
            Some("Ubuntu 24.04.1 LTS")
        );
    }
}
