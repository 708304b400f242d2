//! The experiment file: reading, validation, and the domain types that everything after validation uses.
//!
//! [`load`] reads the file, deserialises it into the all-optional [`raw`] types while collecting unknown
//! keys, then validates every table into [`Experiment`]. Every problem is collected into one
//! [`Diagnostics`] (file, key, line:column, fix) so the user fixes them all in one go. Problems that need
//! the expanded matrix (template variables, missing checkpoints per combination) are found by
//! [`crate::plan::expand`], which is pure and also runs before anything starts. Whether this host has
//! what the file names (programs, checkpoint and tokenizer files, ports) is [`crate::preflight`]'s job:
//! a file valid here is valid on the GPU host it is written for.

pub mod cost;
pub mod diag;
pub mod executor;
pub mod expr;
pub mod load;
mod raw;
pub mod rehearse;
pub mod scalar;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

pub use cost::Cost;
pub use diag::{Diagnostic, Diagnostics};
use diag::{Locator, did_you_mean};
use load::{LOAD_KEYS, Layered, Vocab};
use raw::*;
pub use scalar::Scalar;

use crate::engine::{Defaults, Preset};
use crate::secret::{ApiKey, Secrets, looks_secret};

/// A validated experiment. Nothing invalid exists past this point.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub file: PathBuf,
    /// The file's text as read, stored with the results.
    pub source: String,
    pub title: String,
    pub results_dir: PathBuf,
    pub hardware: toml::Table,
    pub environment: toml::Table,
    pub engines: IndexMap<String, Engine>,
    pub models: IndexMap<String, Model>,
    pub matrix: Matrix,
    /// `[load]`: the lowest layer of load settings.
    pub load: IndexMap<String, Layered>,
    pub report: ReportSettings,
    /// `[cost]`: prices for cost per token in the report; `None` when the file has no such table.
    pub cost: Option<Cost>,
    /// `[executor]`: where and when each server configuration runs (`--executor` overrides the kind).
    pub executor: executor::Executor,
    /// Values never to be shown: those of `${VAR}` whose name looks secret, and every `api_key`.
    pub secrets: Secrets,
}

#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub preset: Preset,
    pub launch: Launch,
    pub ready_path: String,
    pub ready_timeout: Duration,
    /// Send one short completion before declaring the server ready.
    pub smoke_test: bool,
    /// Time between SIGTERM to the process group and SIGKILL.
    pub stop_grace: Duration,
    pub metrics_path: Option<String>,
    /// A short command whose output names the engine version (a template like `command`).
    pub version_command: Option<String>,
    /// On a GPU host, how long to wait for GPU memory to be released after a teardown.
    pub gpu_release_timeout: Duration,
    /// Sent as `Authorization: Bearer …` with every request to the server; never written anywhere.
    pub api_key: Option<ApiKey>,
    pub defaults: Defaults,
    /// In a rehearsal, the real engine's templates: a matrix variable they use is not unused, although
    /// the simulator's command does not mention it.
    pub rehearsal_of: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Launch {
    /// The runner starts the server and stops it.
    Spawn {
        command: CommandTemplate,
        /// Run `command` through `sh -c` (only when the file asks for it).
        shell: bool,
        env: IndexMap<String, String>,
        workdir: Option<PathBuf>,
        /// Fixed port; `None` means the runner picks a free one.
        port: Option<u16>,
    },
    /// A server that is already running: benchmarked as is, never started or stopped.
    Attach { url: String },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum CommandTemplate {
    Line(String),
    Argv(Vec<String>),
}

impl CommandTemplate {
    pub fn parts(&self) -> Vec<&str> {
        match self {
            CommandTemplate::Line(s) => vec![s.as_str()],
            CommandTemplate::Argv(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub name: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub served_model_name: Option<String>,
    /// Tokens added to input + output for `{{ max_model_len }}` (the seed used 128: 10000 + 800 + 128).
    pub context_headroom: u32,
    pub vocab: Vocab,
    pub precisions: IndexMap<String, Precision>,
    pub load: IndexMap<String, Layered>,
}

/// Upper bound of `input_tokens`, `output_tokens` and `context_headroom` (ten million: beyond the longest
/// contexts served today), so that their sum, `max_model_len`, cannot overflow.
pub const MAX_TOKENS: u32 = 10_000_000;
/// Upper bound of a concurrency: one socket per stream, and no client keeps more streams than this.
pub const MAX_CONCURRENCY: i64 = 100_000;

impl Model {
    /// Cannot overflow: validation bounds each term by [`MAX_TOKENS`].
    pub fn max_model_len(&self) -> u32 {
        self.input_tokens + self.output_tokens + self.context_headroom
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Precision {
    pub path: String,
    /// Display name of the checkpoint, e.g. `RedHatAI/Qwen3-14B-NVFP4`.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Matrix {
    pub axes: IndexMap<String, Vec<Scalar>>,
    pub include: Vec<IndexMap<String, Scalar>>,
    pub exclude: Vec<IndexMap<String, Scalar>>,
}

#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub summary_template: Option<PathBuf>,
    pub record_template: Option<PathBuf>,
    /// A prefix-cache hit rate above this is flagged next to the row (0..1).
    pub prefix_cache_warn_above: f64,
}

/// Matrix keys with a fixed meaning; every other key is a free variable for templates or load settings.
pub const AXES: &[&str] = &["model", "precision", "engine", "concurrency"];
/// Names the command templates get from the runner; matrix variables may not reuse them.
pub const BUILTIN_VARS: &[&str] = &[
    "port",
    "host",
    "max_model_len",
    "runner",
    "results_dir",
    "server_id",
    "gpus",
    "gpu_count",
];

/// Reads and validates an experiment file. `Err` carries every problem found.
pub fn load(file: &Path) -> Result<Experiment, Diagnostics> {
    let bytes = std::fs::read(file).map_err(|e| {
        let mut d = Diagnostics::new(file, "");
        let help = if e.kind() == std::io::ErrorKind::NotFound {
            "check the path; experiment files usually live in experiments/"
        } else {
            "check the file's permissions"
        };
        d.push(Diagnostic {
            key: String::new(),
            position: None,
            message: format!("cannot read the file: {e}"),
            help: Some(help.into()),
        });
        d
    })?;
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let mut d = Diagnostics::new(file, &text);
            d.push(Diagnostic {
                key: String::new(),
                position: Some(diag::line_col(&prefix, valid)),
                message: format!("the file is not valid UTF-8 (byte {valid})"),
                help: Some("save the file as UTF-8".into()),
            });
            return Err(d);
        }
    };
    parse(file, &source)
}

/// Validates experiment text as if it were the file `file` (tests use this directly).
pub fn parse(file: &Path, source: &str) -> Result<Experiment, Diagnostics> {
    let mut diags = Diagnostics::new(file, source);
    if source.trim().is_empty() {
        diags.push(Diagnostic {
            key: String::new(),
            position: None,
            message: "the file is empty".into(),
            help: Some("an experiment needs [engines.*], [models.*] and [matrix]; start from experiments/demo.toml".into()),
        });
        return Err(diags);
    }
    let locator = Locator::new(source);
    let mut ignored: Vec<Vec<String>> = Vec::new();
    let located = |e: &toml::de::Error| e.span().map(|s| diag::line_col(source, s.start));
    let deserializer = match toml::de::Deserializer::parse(source) {
        Ok(de) => de,
        Err(e) => {
            diags.push(Diagnostic {
                key: String::new(),
                position: located(&e),
                message: format!("TOML syntax: {}", e.message().trim()),
                help: Some("fix the syntax at the marked position (strings need closing quotes, tables `[name]`)".into()),
            });
            return Err(diags);
        }
    };
    let raw: RawExperiment =
        match serde_ignored::deserialize(deserializer, |path| ignored.push(path_segments(&path))) {
            Ok(raw) => raw,
            Err(e) => {
                diags.push(Diagnostic {
                    key: String::new(),
                    position: located(&e),
                    message: e.message().trim().to_string(),
                    help: Some(
                        "check the value's type against the file reference in the README".into(),
                    ),
                });
                return Err(diags);
            }
        };
    for path in &ignored {
        unknown_key(&mut diags, &locator, path);
    }
    let mut v = Validator {
        diags,
        locator: &locator,
        secrets: Secrets::default(),
    };
    let experiment = v.experiment(file, source, raw);
    if v.diags.is_empty() {
        Ok(experiment)
    } else {
        // A message may quote a value that came from a secret (`${TOKEN}` in a malformed url).
        v.diags.redact(&v.secrets);
        Err(v.diags)
    }
}

fn path_segments(path: &serde_ignored::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = path;
    loop {
        match p {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(index.to_string());
                p = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(key.clone());
                p = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => p = parent,
        }
    }
    out.reverse();
    out
}

fn unknown_key(diags: &mut Diagnostics, locator: &Locator, path: &[String]) {
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    let (table, candidates): (String, &[&str]) = match segs.as_slice() {
        [_] => ("the top level".into(), TOP_KEYS),
        ["engines", name, _] => (format!("[engines.{name}]"), ENGINE_KEYS),
        ["models", id, _] => (format!("[models.{id}]"), MODEL_KEYS),
        ["models", id, "precisions", p, _] => {
            (format!("[models.{id}.precisions.{p}]"), PRECISION_KEYS)
        }
        ["report", _] => ("[report]".into(), REPORT_KEYS),
        ["cost", _] => ("[cost]".into(), cost::COST_KEYS),
        ["executor", _] => ("[executor]".into(), executor::EXECUTOR_KEYS),
        ["executor", "local", _] => ("[executor.local]".into(), executor::LOCAL_KEYS),
        ["executor", "slurm", _] => ("[executor.slurm]".into(), executor::SLURM_KEYS),
        _ => ("this table".into(), &[]),
    };
    let key = segs.last().copied().unwrap_or_default();
    let help = did_you_mean(key, candidates.iter().copied())
        .unwrap_or_else(|| format!("remove it; {table} accepts: {}", candidates.join(", ")));
    diags.push(Diagnostic {
        key: path.join("."),
        position: locator.position(&segs),
        message: format!("unknown key in {table}"),
        help: Some(help),
    });
}

struct Validator<'a> {
    diags: Diagnostics,
    locator: &'a Locator<'a>,
    /// Secret values met so far (see [`Experiment::secrets`]).
    secrets: Secrets,
}

impl Validator<'_> {
    fn error(&mut self, path: &[&str], message: impl Into<String>, help: Option<String>) {
        self.diags.push(Diagnostic {
            key: path.join("."),
            position: self.locator.position(path),
            message: message.into(),
            help,
        });
    }

    fn duration(&mut self, path: &[&str], value: Option<&String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        load::parse_duration(text).unwrap_or_else(|(message, help)| {
            self.error(path, message, help);
            default
        })
    }

    /// Replaces `${VAR}` with the environment variable VAR; an unset variable is an error. The value of a
    /// variable whose name looks secret is remembered, to be hidden wherever it is shown.
    fn expand_env(&mut self, path: &[&str], text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.error(
                    path,
                    "`${` without a closing `}`",
                    Some("write ${NAME} for an environment variable".into()),
                );
                return text.to_string();
            };
            let name = &after[..end];
            match std::env::var(name) {
                Ok(value) => {
                    if looks_secret(name) {
                        self.secrets.add(&value);
                    }
                    out.push_str(&value)
                }
                Err(_) => self.error(
                    path,
                    format!("environment variable `{name}` is not set"),
                    Some(format!("export {name}=… before running (for the CPU engines: source the env file that scripts/install-engines.sh writes)")),
                ),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn experiment(&mut self, file: &Path, source: &str, raw: RawExperiment) -> Experiment {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "experiment".into());
        let results_dir = match raw.results_dir {
            Some(d) if d.trim().is_empty() => {
                self.error(
                    &["results_dir"],
                    "is empty",
                    Some(format!("remove it to use results/{stem}")),
                );
                PathBuf::new()
            }
            Some(d) => PathBuf::from(d),
            None => PathBuf::from("results").join(&stem),
        };
        let engines: IndexMap<String, Engine> = raw
            .engines
            .into_iter()
            .map(|(name, e)| (name.clone(), self.engine(&name, e)))
            .collect();
        let models: IndexMap<String, Model> = raw
            .models
            .into_iter()
            .map(|(id, m)| (id.clone(), self.model(&id, m)))
            .collect();
        if engines.is_empty() {
            self.error(
                &[],
                "no engines are defined",
                Some(
                    "add an [engines.NAME] table, e.g. `[engines.vllm]` with `preset = \"vllm\"`"
                        .into(),
                ),
            );
        }
        if models.is_empty() {
            self.error(
                &[],
                "no models are defined",
                Some(
                    "add a [models.ID] table with input_tokens, output_tokens and precisions"
                        .into(),
                ),
            );
        }
        let load = self.load_layer(&["load"], raw.load.unwrap_or_default());
        let matrix = self.matrix(raw.matrix, &engines, &models);
        let report = self.report(raw.report.unwrap_or_default());
        let cost = self.cost(raw.cost);
        let executor = self.executor(raw.executor);
        Experiment {
            file: file.to_path_buf(),
            source: source.to_string(),
            title: raw.title.unwrap_or(stem),
            results_dir,
            hardware: raw.hardware.unwrap_or_default(),
            environment: raw.environment.unwrap_or_default(),
            engines,
            models,
            matrix,
            load,
            report,
            cost,
            executor,
            secrets: self.secrets.clone(),
        }
    }

    fn engine(&mut self, name: &str, raw: RawEngine) -> Engine {
        let at = |key: &'static str| ["engines", name, key];
        let preset = match raw.preset.as_deref() {
            None => Preset::Generic,
            Some(p) => Preset::parse(p).unwrap_or_else(|| {
                let help = did_you_mean(p, Preset::NAMES.iter().copied()).unwrap_or_else(|| {
                    format!(
                        "use one of: {}, or remove `preset` for a generic OpenAI-compatible server",
                        Preset::NAMES.join(", ")
                    )
                });
                self.error(&at("preset"), format!("unknown preset `{p}`"), Some(help));
                Preset::Generic
            }),
        };
        let d = preset.defaults();
        let launch = match (raw.url, raw.command) {
            (Some(_), Some(_)) => {
                self.error(&at("url"), "an engine has either `url` (a running server) or `command` (one the runner starts), not both", Some("remove one of them".into()));
                Launch::Attach { url: String::new() }
            }
            (Some(url), None) => {
                let url = self.expand_env(&at("url"), &url);
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.error(
                        &at("url"),
                        format!("`{url}` is not an http:// URL"),
                        Some("write it like \"http://127.0.0.1:8000\"".into()),
                    );
                }
                for key in ["shell", "env", "workdir", "port"] {
                    let given = match key {
                        "shell" => raw.shell.is_some(),
                        "env" => raw.env.is_some(),
                        "workdir" => raw.workdir.is_some(),
                        _ => raw.port.is_some(),
                    };
                    if given {
                        self.error(
                            &["engines", name, key],
                            format!("`{key}` has no effect on a running server given by `url`"),
                            Some("remove it".into()),
                        );
                    }
                }
                Launch::Attach {
                    url: url.trim_end_matches('/').to_string(),
                }
            }
            (None, command) => {
                let command = match command {
                    Some(RawCommand::Line(s)) if s.trim().is_empty() => {
                        self.error(
                            &at("command"),
                            "is empty",
                            Some("write the server's command line".into()),
                        );
                        CommandTemplate::Line(String::new())
                    }
                    Some(RawCommand::Argv(v)) if v.is_empty() => {
                        self.error(
                            &at("command"),
                            "is an empty list",
                            Some("write the program and its arguments".into()),
                        );
                        CommandTemplate::Argv(v)
                    }
                    Some(RawCommand::Line(s)) => {
                        CommandTemplate::Line(self.expand_env(&at("command"), &s))
                    }
                    Some(RawCommand::Argv(v)) => CommandTemplate::Argv(
                        v.iter()
                            .map(|a| self.expand_env(&at("command"), a))
                            .collect(),
                    ),
                    None => match d.command {
                        Some(c) => CommandTemplate::Line(c.to_string()),
                        None => {
                            self.error(&["engines", name], "needs a `command` (or `url` for a server that is already running)", Some("add e.g. `command = \"my-server --port {{ port }}\"`, or `preset = \"vllm\"` for its default command".into()));
                            CommandTemplate::Line(String::new())
                        }
                    },
                };
                let env = raw
                    .env
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        let v = self.expand_env(&["engines", name, "env", &k], &v);
                        (k, v)
                    })
                    .collect();
                let workdir = raw
                    .workdir
                    .map(|w| PathBuf::from(self.expand_env(&at("workdir"), &w)));
                if raw.port == Some(0) {
                    self.error(
                        &at("port"),
                        "port 0 is not a port",
                        Some("remove `port` to let the runner pick a free one".into()),
                    );
                }
                Launch::Spawn {
                    command,
                    shell: raw.shell.unwrap_or(false),
                    env,
                    workdir,
                    port: raw.port,
                }
            }
        };
        let ready_path = raw.ready_path.unwrap_or_else(|| d.ready_path.to_string());
        if !ready_path.starts_with('/') {
            self.error(
                &at("ready_path"),
                format!("`{ready_path}` must start with `/`"),
                Some("e.g. \"/health\"".into()),
            );
        }
        let metrics_path = match raw.metrics_path {
            Some(p) if p.is_empty() => None,
            Some(p) => {
                if !p.starts_with('/') {
                    self.error(
                        &at("metrics_path"),
                        format!("`{p}` must start with `/`"),
                        Some("e.g. \"/metrics\", or \"\" for none".into()),
                    );
                }
                Some(p)
            }
            None => d.metrics_path.map(str::to_string),
        };
        if preset == Preset::Sglang
            && metrics_path.is_some()
            && let Launch::Spawn { command, .. } = &launch
            && !command
                .parts()
                .iter()
                .any(|p| p.contains("--enable-metrics"))
        {
            self.error(&at("command"), "SGLang serves /metrics only with --enable-metrics; without it the prefix-cache hit rate is unknown", Some("add --enable-metrics to the command (or metrics_path = \"\" to go without)".into()));
        }
        let version_command = match raw.version_command {
            Some(c) if c.trim().is_empty() => None,
            Some(c) => Some(self.expand_env(&at("version_command"), &c)),
            None => d.version_command.map(str::to_string),
        };
        let ready_timeout = self.duration(
            &at("ready_timeout"),
            raw.ready_timeout.as_ref(),
            d.ready_timeout,
        );
        let stop_grace = self.duration(&at("stop_grace"), raw.stop_grace.as_ref(), d.stop_grace);
        let gpu_release_timeout = self.duration(
            &at("gpu_release_timeout"),
            raw.gpu_release_timeout.as_ref(),
            Duration::from_secs(120),
        );
        let api_key = match raw.api_key {
            Some(k) => {
                let key = self.expand_env(&at("api_key"), &k);
                if key.trim().is_empty() {
                    self.error(
                        &at("api_key"),
                        "is empty",
                        Some("write `api_key = \"${OPENAI_API_KEY}\"` (an environment variable), or remove it".into()),
                    );
                }
                self.secrets.add(&key);
                Some(ApiKey::new(key))
            }
            None => None,
        };
        Engine {
            name: name.to_string(),
            preset,
            launch,
            ready_path,
            ready_timeout,
            smoke_test: raw.smoke_test.unwrap_or(d.smoke_test),
            stop_grace,
            metrics_path,
            version_command,
            gpu_release_timeout,
            api_key,
            defaults: d,
            rehearsal_of: Vec::new(),
        }
    }

    fn model(&mut self, id: &str, raw: RawModel) -> Model {
        let mut tokens = |key: &'static str, value: Option<u32>, example: &str| match value {
            Some(0) => {
                self.error(&["models", id, key], "must be at least 1", None);
                1
            }
            Some(n) if n > MAX_TOKENS => {
                self.error(
                    &["models", id, key],
                    format!("{n} tokens is more than any model serves"),
                    Some(format!(
                        "write at most {MAX_TOKENS}; check for an extra digit"
                    )),
                );
                1
            }
            Some(n) => n,
            None => {
                self.error(
                    &["models", id],
                    format!("`{key}` is missing"),
                    Some(format!("add `{key} = {example}`")),
                );
                1
            }
        };
        let input_tokens = tokens("input_tokens", raw.input_tokens, "10000");
        let output_tokens = tokens("output_tokens", raw.output_tokens, "800");
        if raw.precisions.is_empty() {
            self.error(
                &["models", id],
                "has no precisions",
                Some(format!(
                    "add e.g. `[models.{id}.precisions]` with `fp8 = {{ path = \"/models/…\" }}`"
                )),
            );
        }
        let precisions = raw
            .precisions
            .into_iter()
            .map(|(p, rp)| {
                let path = match rp.path {
                    Some(path) if !path.trim().is_empty() => {
                        self.expand_env(&["models", id, "precisions", &p, "path"], &path)
                    }
                    _ => {
                        self.error(
                            &["models", id, "precisions", &p],
                            format!("precision `{p}` has no checkpoint `path`"),
                            Some(format!("write `{p} = {{ path = \"/models/…\" }}`")),
                        );
                        String::new()
                    }
                };
                (
                    p,
                    Precision {
                        path,
                        name: rp.name,
                    },
                )
            })
            .collect();
        // Whether the file is there is this host's business: the pre-flight checks it.
        let tokenizer = raw.tokenizer.map(|t| {
            let t = PathBuf::from(self.expand_env(&["models", id, "tokenizer"], &t));
            if t.is_dir() {
                t.join("tokenizer.json")
            } else {
                t
            }
        });
        let id_range = raw.token_id_range.unwrap_or([100, 30000]);
        if id_range[0] >= id_range[1] {
            self.error(
                &["models", id, "token_id_range"],
                format!("[{}, {}] is empty", id_range[0], id_range[1]),
                Some("write [first id, one past the last id], e.g. [100, 30000]".into()),
            );
        }
        let load = self.load_layer(&["models", id, "load"], raw.load.unwrap_or_default());
        let context_headroom = match raw.context_headroom {
            Some(n) if n > MAX_TOKENS => {
                self.error(
                    &["models", id, "context_headroom"],
                    format!("{n} tokens is more than any model serves"),
                    Some(format!("write at most {MAX_TOKENS} (the seed used 128)")),
                );
                0
            }
            Some(n) => n,
            None => 128,
        };
        Model {
            id: id.to_string(),
            name: raw.name.unwrap_or_else(|| id.to_string()),
            input_tokens,
            output_tokens,
            served_model_name: raw.served_model_name,
            context_headroom,
            vocab: Vocab {
                tokenizer,
                id_range,
            },
            precisions,
            load,
        }
    }

    /// Checks a table of load settings key by key; values are typed per cell in [`load::resolve`].
    fn load_layer(
        &mut self,
        at: &[&str],
        table: IndexMap<String, toml::Value>,
    ) -> IndexMap<String, Layered> {
        let mut out = IndexMap::new();
        for (key, value) in table {
            let mut path: Vec<&str> = at.to_vec();
            path.push(&key);
            if key == "concurrency" {
                self.error(
                    &path,
                    "concurrency is a matrix axis, not a load setting",
                    Some("list it under [matrix]: `concurrency = [1, 10, 40]`".into()),
                );
                continue;
            }
            if !LOAD_KEYS.contains(&key.as_str()) {
                let help = did_you_mean(&key, LOAD_KEYS.iter().copied()).unwrap_or_else(|| {
                    format!("remove it; load settings are: {}", LOAD_KEYS.join(", "))
                });
                self.error(&path, "unknown load setting", Some(help));
                continue;
            }
            match Scalar::from_toml(&value) {
                Some(value) => {
                    out.insert(
                        key.clone(),
                        Layered {
                            value,
                            origin: path.iter().map(|s| s.to_string()).collect(),
                        },
                    );
                }
                None => self.error(
                    &path,
                    format!("expected a single value, found {}", value.type_str()),
                    None,
                ),
            }
        }
        out
    }

    fn matrix(
        &mut self,
        raw: Option<IndexMap<String, toml::Value>>,
        engines: &IndexMap<String, Engine>,
        models: &IndexMap<String, Model>,
    ) -> Matrix {
        let Some(raw) = raw else {
            self.error(
                &[],
                "there is no [matrix]",
                Some("add [matrix] with model, precision, engine and concurrency lists".into()),
            );
            return Matrix::default();
        };
        let mut m = Matrix::default();
        for (key, value) in raw {
            match key.as_str() {
                "include" | "exclude" => {
                    let entries = self.matrix_entries(&key, &value);
                    if key == "include" {
                        m.include = entries
                    } else {
                        m.exclude = entries
                    }
                }
                _ => {
                    let path = ["matrix", key.as_str()];
                    let items: Vec<toml::Value> = match value {
                        toml::Value::Array(items) => items,
                        other => vec![other],
                    };
                    let mut values = Vec::new();
                    for item in &items {
                        match Scalar::from_toml(item) {
                            Some(s) => values.push(s),
                            None => self.error(
                                &path,
                                format!(
                                    "matrix values are strings, numbers or booleans, found {}",
                                    item.type_str()
                                ),
                                None,
                            ),
                        }
                    }
                    if BUILTIN_VARS.contains(&key.as_str()) {
                        self.error(
                            &path,
                            format!("`{key}` is set by the runner and cannot be a matrix variable"),
                            Some("rename the variable".into()),
                        );
                    }
                    m.axes.insert(key, values);
                }
            }
        }
        // Every reference must resolve: checked on axes and on include/exclude entries alike.
        let mut refs: Vec<(Vec<String>, String, Scalar)> = Vec::new();
        for (key, values) in &m.axes {
            for v in values {
                refs.push((vec!["matrix".into(), key.clone()], key.clone(), v.clone()));
            }
        }
        for (kind, entries) in [("include", &m.include), ("exclude", &m.exclude)] {
            for (i, entry) in entries.iter().enumerate() {
                for (key, v) in entry {
                    refs.push((
                        vec!["matrix".into(), kind.into(), i.to_string(), key.clone()],
                        key.clone(),
                        v.clone(),
                    ));
                }
            }
        }
        let precisions: Vec<&str> = {
            let mut all: Vec<&str> = models
                .values()
                .flat_map(|m| m.precisions.keys().map(String::as_str))
                .collect();
            all.dedup();
            all
        };
        for (path, key, value) in refs {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let (known, what): (Vec<&str>, &str) = match key.as_str() {
                "model" => (models.keys().map(String::as_str).collect(), "model"),
                "engine" => (engines.keys().map(String::as_str).collect(), "engine"),
                "precision" => (precisions.clone(), "precision"),
                "concurrency" => {
                    if !matches!(value, Scalar::Int(n) if (1..=MAX_CONCURRENCY).contains(&n)) {
                        self.error(
                            &path,
                            format!("concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, found {value}"),
                            None,
                        );
                    }
                    continue;
                }
                _ => continue,
            };
            let name = value.to_string();
            if value.as_str().is_none() || !known.contains(&name.as_str()) {
                let help = did_you_mean(&name, known.iter().copied()).unwrap_or_else(|| {
                    format!(
                        "defined {what}s: {}",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    )
                });
                self.error(&path, format!("no {what} named `{name}`"), Some(help));
            }
        }
        for axis in ["model", "precision", "engine", "concurrency"] {
            let in_axes = m.axes.get(axis).is_some_and(|v| !v.is_empty());
            let in_all_includes =
                !m.include.is_empty() && m.include.iter().all(|e| e.contains_key(axis));
            if !in_axes && !in_all_includes {
                self.error(
                    &["matrix"],
                    format!("`{axis}` is missing or empty"),
                    Some(format!(
                        "list the values to run, e.g. `{axis} = {}`",
                        match axis {
                            "model" => "[\"qwen3-14b\"]",
                            "precision" => "[\"fp8\"]",
                            "engine" => "[\"vllm\"]",
                            _ => "[1, 10, 40]",
                        }
                    )),
                );
            }
        }
        m
    }

    fn matrix_entries(&mut self, kind: &str, value: &toml::Value) -> Vec<IndexMap<String, Scalar>> {
        let toml::Value::Array(items) = value else {
            self.error(
                &["matrix", kind],
                format!("expected an array of tables, found {}", value.type_str()),
                Some(format!("write each entry as [[matrix.{kind}]]")),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let index = i.to_string();
            let toml::Value::Table(t) = item else {
                self.error(
                    &["matrix", kind, &index],
                    format!("expected a table, found {}", item.type_str()),
                    Some(format!("write each entry as [[matrix.{kind}]]")),
                );
                continue;
            };
            if t.is_empty() {
                self.error(
                    &["matrix", kind, &index],
                    format!("an empty {kind} entry matches everything"),
                    Some("give at least one key, e.g. `engine = \"sglang\"`".into()),
                );
                continue;
            }
            let mut entry = IndexMap::new();
            for (k, v) in t {
                match Scalar::from_toml(v) {
                    Some(s) => {
                        entry.insert(k.clone(), s);
                    }
                    None => self.error(
                        &["matrix", kind, &index, k],
                        format!("expected a single value, found {}", v.type_str()),
                        Some("write one entry per value".into()),
                    ),
                }
            }
            out.push(entry);
        }
        out
    }

    fn report(&mut self, raw: RawReport) -> ReportSettings {
        let rate = raw.prefix_cache_warn_above.unwrap_or(0.10);
        if !(0.0..=1.0).contains(&rate) {
            self.error(
                &["report", "prefix_cache_warn_above"],
                format!("{rate} is not a fraction"),
                Some("write a value between 0 and 1, e.g. 0.10 for 10 %".into()),
            );
        }
        let mut template = |key: &'static str, value: Option<String>| {
            value.map(|t| {
                let p = PathBuf::from(t);
                if !p.is_file() {
                    self.error(
                        &["report", key],
                        format!("no template at {}", p.display()),
                        Some(
                            "give a path to a .tera file, relative to the current directory".into(),
                        ),
                    );
                }
                p
            })
        };
        ReportSettings {
            summary_template: template("summary_template", raw.summary_template),
            record_template: template("record_template", raw.record_template),
            prefix_cache_warn_above: rate,
        }
    }
}
