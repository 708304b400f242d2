//! The `[executor]` table: where and when each server configuration runs. Validated here into plain
//! settings; what a GPU count template gives per server configuration is decided in
//! [`crate::plan::expand`] (it needs the configuration's variables), and whether the GPUs named exist is
//! the run's business (`"all"` is asked of `nvidia-smi` when the run starts).
//!
//! Without the table a run is exactly what it always was: local, one server configuration at a time.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::load::{DURATION_HELP, MAX_DURATION};
use super::{Validator, did_you_mean};

/// Keys of `[executor]`, `[executor.local]` and `[executor.slurm]` (unknown-key detection).
pub const EXECUTOR_KEYS: &[&str] = &["kind", "local", "slurm"];
pub const LOCAL_KEYS: &[&str] = &["gpus", "gpus_per_server"];
pub const SLURM_KEYS: &[&str] = &[
    "partition",
    "gpus_per_server",
    "time_limit",
    "account",
    "qos",
    "constraint",
    "max_jobs",
    "extra_args",
    "setup",
    "runner",
    "poll_interval",
];
/// The kinds, as written in the file and after `--executor`.
pub const KINDS: &[&str] = &["local", "slurm"];

#[derive(Debug, Deserialize, Default)]
pub struct RawExecutor {
    pub kind: Option<String>,
    pub local: Option<RawLocal>,
    pub slurm: Option<RawSlurm>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawLocal {
    pub gpus: Option<toml::Value>,
    pub gpus_per_server: Option<toml::Value>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawSlurm {
    pub partition: Option<String>,
    pub gpus_per_server: Option<toml::Value>,
    pub time_limit: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    pub max_jobs: Option<u32>,
    pub extra_args: Option<Lines>,
    pub setup: Option<Lines>,
    pub runner: Option<String>,
    pub poll_interval: Option<String>,
}

/// One string (split into lines) or a list of lines.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Lines {
    One(String),
    Many(Vec<String>),
}

impl Lines {
    fn lines(self) -> Vec<String> {
        let all = match self {
            Lines::One(s) => s.lines().map(str::to_string).collect(),
            Lines::Many(v) => v,
        };
        all.into_iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// This host: one server configuration at a time, or several on disjoint GPU sets.
    #[default]
    Local,
    /// One Slurm batch job per server configuration.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(name: &str) -> Option<ExecutorKind> {
        match name {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }
}

/// The validated `[executor]` table.
#[derive(Debug, Clone, Default)]
pub struct Executor {
    pub kind: ExecutorKind,
    pub local: Local,
    pub slurm: Slurm,
}

/// `[executor.local]`.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// `None`: one server configuration at a time, no GPU assignment (the default).
    pub gpus: Option<GpuSet>,
    pub gpus_per_server: GpuCount,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GpuSet {
    /// Every GPU `nvidia-smi -L` lists when the run starts.
    All,
    Ids(Vec<u32>),
}

/// GPUs per server configuration: a number, or a template rendered with the configuration's variables.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuCount {
    Fixed(u32),
    Template(String),
}

impl Default for GpuCount {
    fn default() -> Self {
        GpuCount::Fixed(1)
    }
}

/// `[executor.slurm]`.
#[derive(Debug, Clone)]
pub struct Slurm {
    pub partition: Option<String>,
    pub gpus_per_server: GpuCount,
    pub time_limit: Option<Duration>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    /// Jobs submitted and not yet ended, at most; `None`: no limit.
    pub max_jobs: Option<u32>,
    /// Extra `#SBATCH` lines (with or without the `#SBATCH` prefix).
    pub extra_args: Vec<String>,
    /// Shell lines run in the job before the runner (`module load …`, `source venv/bin/activate`).
    pub setup: Vec<String>,
    /// The runner binary on the compute nodes; `None`: this binary's path.
    pub runner: Option<PathBuf>,
    /// How often the coordinator asks Slurm about its jobs.
    pub poll_interval: Duration,
}

impl Default for Slurm {
    fn default() -> Self {
        Slurm {
            partition: None,
            gpus_per_server: GpuCount::default(),
            time_limit: None,
            account: None,
            qos: None,
            constraint: None,
            max_jobs: None,
            extra_args: Vec::new(),
            setup: Vec::new(),
            runner: None,
            poll_interval: Duration::from_secs(3),
        }
    }
}

impl Executor {
    /// The GPU count of each server configuration, when this executor assigns GPUs (local GPU slots,
    /// Slurm); `None` for the serial local run, which leaves GPUs alone.
    pub fn gpu_count(&self) -> Option<(&GpuCount, [&'static str; 3])> {
        match self.kind {
            ExecutorKind::Local => self.local.gpus.as_ref().map(|_| {
                (
                    &self.local.gpus_per_server,
                    ["executor", "local", "gpus_per_server"],
                )
            }),
            ExecutorKind::Slurm => Some((
                &self.slurm.gpus_per_server,
                ["executor", "slurm", "gpus_per_server"],
            )),
        }
    }

    /// Whether server configurations may run at the same time.
    pub fn concurrent(&self) -> bool {
        self.gpu_count().is_some()
    }
}

impl Validator<'_> {
    pub(super) fn executor(&mut self, raw: Option<RawExecutor>) -> Executor {
        let Some(raw) = raw else {
            return Executor::default();
        };
        let kind = match raw.kind.as_deref() {
            None => ExecutorKind::Local,
            Some(k) => ExecutorKind::parse(k).unwrap_or_else(|| {
                let help = did_you_mean(k, KINDS.iter().copied())
                    .unwrap_or_else(|| format!("use one of: {}", KINDS.join(", ")));
                self.error(
                    &["executor", "kind"],
                    format!("unknown executor `{k}`"),
                    Some(help),
                );
                ExecutorKind::Local
            }),
        };
        let local = raw.local.map(|l| self.local(l)).unwrap_or_default();
        let slurm = raw.slurm.map(|s| self.slurm(s)).unwrap_or_default();
        Executor { kind, local, slurm }
    }

    fn local(&mut self, raw: RawLocal) -> Local {
        let at = ["executor", "local", "gpus"];
        let gpus = match raw.gpus {
            None => None,
            Some(toml::Value::String(s)) if s == "all" => Some(GpuSet::All),
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                let mut ids = Vec::new();
                for item in &items {
                    match item.as_integer().and_then(|n| u32::try_from(n).ok()) {
                        Some(id) if !ids.contains(&id) => ids.push(id),
                        Some(id) => self.error(
                            &at,
                            format!("GPU {id} is listed twice"),
                            Some("list each GPU index once".into()),
                        ),
                        None => self.error(
                            &at,
                            format!("`{item}` is not a GPU index"),
                            Some("write GPU indexes as `nvidia-smi -L` numbers them, e.g. [0, 1, 2, 3]".into()),
                        ),
                    }
                }
                Some(GpuSet::Ids(ids))
            }
            Some(other) => {
                self.error(
                    &at,
                    format!("expected a list of GPU indexes or \"all\", found {other}"),
                    Some("write e.g. `gpus = [0, 1, 2, 3]` or `gpus = \"all\"`".into()),
                );
                None
            }
        };
        let gpus_per_server = self.gpu_count(
            &["executor", "local", "gpus_per_server"],
            raw.gpus_per_server,
        );
        if let (Some(GpuSet::Ids(ids)), GpuCount::Fixed(n)) = (&gpus, &gpus_per_server)
            && *n as usize > ids.len()
            && !ids.is_empty()
        {
            self.error(
                &["executor", "local", "gpus_per_server"],
                format!("{n} GPUs per server, but `gpus` lists only {}", ids.len()),
                Some("list more GPUs, or give each server fewer".into()),
            );
        }
        Local {
            gpus,
            gpus_per_server,
        }
    }

    fn gpu_count(&mut self, at: &[&str], raw: Option<toml::Value>) -> GpuCount {
        match raw {
            None => GpuCount::default(),
            Some(toml::Value::Integer(n)) if n >= 1 && n <= i64::from(u16::MAX) => {
                GpuCount::Fixed(n as u32)
            }
            Some(toml::Value::String(s)) if s.contains("{{") => GpuCount::Template(s),
            Some(toml::Value::String(s)) if s.trim().parse::<u32>().is_ok_and(|n| n >= 1) => {
                GpuCount::Fixed(s.trim().parse().unwrap_or(1))
            }
            Some(other) => {
                self.error(
                    at,
                    format!("expected a number of GPUs (1 or more) or a template, found {other}"),
                    Some("write e.g. `gpus_per_server = 2` or `gpus_per_server = \"{{ tensor_parallel_size }}\"`".into()),
                );
                GpuCount::default()
            }
        }
    }

    fn slurm(&mut self, raw: RawSlurm) -> Slurm {
        let d = Slurm::default();
        let text = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let time_limit = raw
            .time_limit
            .as_ref()
            .and_then(|t| match humantime::parse_duration(t) {
                Ok(d) if d >= Duration::from_secs(60) && d <= MAX_DURATION => Some(d),
                Ok(_) => {
                    self.error(
                        &["executor", "slurm", "time_limit"],
                        format!("`{t}` is not between a minute and a week"),
                        Some("Slurm counts in minutes: write e.g. \"2h\" or \"1h 30m\"".into()),
                    );
                    None
                }
                Err(e) => {
                    self.error(
                        &["executor", "slurm", "time_limit"],
                        format!("`{t}` is not a duration ({e})"),
                        Some(DURATION_HELP.into()),
                    );
                    None
                }
            });
        let poll_interval = match raw.poll_interval.as_ref() {
            None => d.poll_interval,
            Some(t) => match humantime::parse_duration(t) {
                Ok(p) if p >= Duration::from_millis(200) && p <= Duration::from_secs(600) => p,
                _ => {
                    self.error(
                        &["executor", "slurm", "poll_interval"],
                        format!("`{t}` is not a duration from 200ms to 10m"),
                        Some("write e.g. \"5s\"".into()),
                    );
                    d.poll_interval
                }
            },
        };
        if raw.max_jobs == Some(0) {
            self.error(
                &["executor", "slurm", "max_jobs"],
                "0 jobs would never run anything",
                Some("remove it for no limit, or write 1 or more".into()),
            );
        }
        for (key, value) in [
            ("partition", &raw.partition),
            ("account", &raw.account),
            ("qos", &raw.qos),
            ("constraint", &raw.constraint),
        ] {
            if let Some(v) = value
                && v.chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"')
            {
                self.error(
                    &["executor", "slurm", key],
                    format!("`{v}` contains spaces or quotes"),
                    Some(format!(
                        "write the {key} name as Slurm knows it (`sinfo`, `sacctmgr show assoc`)"
                    )),
                );
            }
        }
        let gpus_per_server = self.gpu_count(
            &["executor", "slurm", "gpus_per_server"],
            raw.gpus_per_server,
        );
        Slurm {
            partition: text(raw.partition),
            gpus_per_server,
            time_limit,
            account: text(raw.account),
            qos: text(raw.qos),
            constraint: text(raw.constraint),
            max_jobs: raw.max_jobs.filter(|n| *n > 0),
            extra_args: raw.extra_args.map(Lines::lines).unwrap_or_default(),
            setup: raw.setup.map(Lines::lines).unwrap_or_default(),
            runner: text(raw.runner).map(PathBuf::from),
            poll_interval,
        }
    }
}
