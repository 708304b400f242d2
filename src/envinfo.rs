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

/// Parses `nvidia-smi --query-gpu=name,memory.total,driver_version,mig.mode.current
/// --format=csv,noheader`: one GPU per non-empty line. A name containing commas keeps them (the last
/// three fields are split off from the right). `[N/A]`-style values become `None`.
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<Gpu>, String> {
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

/// Finds `program` in the probe's search path (or this process's `PATH`).
fn find_program(program: &str, probe: &Probe) -> Option<PathBuf> {
    let path = probe.path.clone().or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a tool with a time limit; `Err` is a short note for the report.
fn run_tool(program: &Path, args: &[&str], probe: &Probe) -> Result<String, String> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut expr = duct::cmd(program, args)
        .stdout_capture()
        .stderr_capture()
        .stdin_null()
        .unchecked();
    if let Some(path) = &probe.path {
        expr = expr.env("PATH", path);
    }
    let handle = expr
        .start()
        .map_err(|e| format!("{name} could not start: {e}"))?;
    let output = match handle.wait_timeout(probe.timeout.unwrap_or(DEFAULT_TIMEOUT)) {
        Ok(Some(out)) => out.clone(),
        Ok(None) => {
            // Best effort: the note below is what matters; a kill error leaves nothing to do.
            let _ = handle.kill();
            return Err(format!("{name} did not answer in time"));
        }
        Err(e) => return Err(format!("{name} failed: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .chain(stdout.lines())
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        Err(format!("{name} failed ({}): {first}", output.status))
    }
}

fn query_gpus(probe: &Probe) -> Result<Vec<Gpu>, String> {
    let program = find_program("nvidia-smi", probe)
        .ok_or_else(|| "nvidia-smi not found (no NVIDIA GPU driver on this host)".to_string())?;
    let out = run_tool(
        &program,
        &[
            "--query-gpu=name,memory.total,driver_version,mig.mode.current",
            "--format=csv,noheader",
        ],
        probe,
    )?;
    parse_nvidia_smi(&out)
}

/// The commit of the repository holding the experiment file, and whether the file has local changes.
fn git_state(exp_file: &Path, probe: &Probe) -> ExperimentSource {
    let mut source = ExperimentSource {
        file: exp_file.display().to_string(),
        ..Default::default()
    };
    let Some(git) = find_program("git", probe) else {
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
    fn nvidia_smi_lines_parse_with_na_and_several_gpus() {
        let text = "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08, [N/A]\n\
                    NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15, Enabled\n\n";
        let gpus = parse_nvidia_smi(text).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(
            gpus[0].line(),
            "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08"
        );
        assert_eq!(gpus[0].mig_mode, None);
        assert_eq!(gpus[1].mig_mode.as_deref(), Some("Enabled"));
    }

    #[test]
    fn nvidia_smi_name_with_comma_and_garbage() {
        let gpus = parse_nvidia_smi("Odd, Name, 1 MiB, 1.0, Disabled").unwrap();
        assert_eq!(gpus[0].name, "Odd, Name");
        assert!(parse_nvidia_smi("No devices were found").is_err());
    }

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
