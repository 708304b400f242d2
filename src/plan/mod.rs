//! Matrix expansion: turns a validated [`Experiment`] into the [`Plan`], the exact list of server
//! configurations (one server start each) and the load points run against each warm server. Pure: no I/O,
//! no clock. `runner plan` prints it and `runner run` executes it, in the same order.
//!
//! Expansion rules (documented in the README):
//! 1. The cartesian product of the `[matrix]` lists, in the order the keys are written, the first key
//!    varying slowest.
//! 2. `[[matrix.exclude]]` entries remove every combination that matches all of their keys.
//! 3. Each `[[matrix.include]]` entry extends every combination that agrees with it on the matrix lists it
//!    names, setting its other keys; if it agrees with none, it adds new combinations, taking each list it
//!    does not name over all of that list's values.
//! 4. Variables named like a load setting (see [`LOAD_KEYS`]) and `concurrency` are load variables; all
//!    others are server variables. Combinations with the same server variables share one server.
//!
//! Ids name only the variables that vary, e.g. `qwen3-14b/fp8/vllm` and `qwen3-14b/fp8/vllm/c40`; hashes
//! cover every resolved setting that can change a measurement, so resume can tell a changed cell.

pub mod print;

use std::collections::HashSet;

use indexmap::IndexMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::experiment::load::{self, LOAD_KEYS, Layered, LoadSpec, Workload};
use crate::experiment::{
    AXES, CommandTemplate, Diagnostic, Diagnostics, Engine, Experiment, Launch, Model, Scalar,
};
use crate::secret::{REDACTED, Secrets, looks_secret};

/// Upper bound on cells, so a typo cannot expand into a million-cell night.
pub const MAX_CELLS: usize = 10_000;

/// Port shown in plans and hashed while the real port is not known yet.
pub const PORT_PLACEHOLDER: &str = crate::shell::PORT_PLACEHOLDER;

/// `{{ gpus }}` shown in plans and hashed while the GPUs are not assigned yet: which GPUs a server gets
/// must not change its settings hash (a rerun may place it elsewhere).
pub const GPUS_PLACEHOLDER: &str = "$GPUS";

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub title: String,
    pub servers: Vec<ServerPlan>,
}

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

/// One server configuration: started once, loaded at each of its points, then torn down.
#[derive(Debug, Clone, Serialize)]
pub struct ServerPlan {
    pub id: String,
    pub hash: String,
    pub engine: String,
    pub model: String,
    pub precision: String,
    /// Every server variable, including `model`, `precision` and `engine`.
    pub vars: IndexMap<String, Scalar>,
    /// GPUs this configuration is given, when the executor assigns GPUs (local GPU slots, Slurm):
    /// `gpus_per_server`, rendered with its variables. `None`: the serial local run, which leaves GPUs
    /// alone.
    pub gpu_count: Option<u32>,
    /// The command as it will run, with the port shown as `$PORT` when the runner picks it.
    pub display: Rendered,
    #[serde(skip)]
    context: serde_json::Value,
    pub points: Vec<CellPlan>,
}

/// One measured load point against a warm server.
#[derive(Debug, Clone, Serialize)]
pub struct CellPlan {
    pub id: String,
    pub hash: String,
    /// The load variables: `concurrency` and any load setting the matrix varies.
    pub vars: IndexMap<String, Scalar>,
    pub load: LoadSpec,
}

/// A server's command and environment after template rendering, as the process gets them. Everything
/// that shows them (plans, records, logs, messages) goes through the redacting views below; `Debug` and
/// `Serialize` show those views too, so the real values cannot be printed by accident.
#[derive(Clone, PartialEq)]
pub struct Rendered {
    /// argv (program first); with `shell`, a single `sh -c` script.
    pub argv: Vec<String>,
    pub shell: bool,
    pub env: IndexMap<String, String>,
    pub workdir: Option<String>,
    pub version_command: Option<String>,
    /// The base URL the load generator talks to (`http://127.0.0.1:$PORT` until the port is known).
    pub base_url: String,
    /// The model name sent in requests.
    pub request_model: String,
    /// The values never shown: the experiment's secrets plus those this command reveals (values of
    /// secret-looking options, assignments and `env` entries).
    secrets: Secrets,
}

impl Rendered {
    /// `text` with this command's secrets hidden (for messages that quote any part of it).
    pub fn redact(&self, text: &str) -> String {
        self.secrets.redact(text).into_owned()
    }

    /// argv with secrets hidden.
    pub fn shown_argv(&self) -> Vec<String> {
        self.argv.iter().map(|a| self.redact(a)).collect()
    }

    /// The command as one line a person could paste into a shell, secrets hidden.
    pub fn command_line(&self) -> String {
        crate::shell::shown_command(&self.argv, self.shell, &self.secrets)
    }

    /// The values this command hides (the server supervisor shows the command too).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The environment with secrets hidden: the whole value of a secret-looking name, any secret inside
    /// other values.
    pub fn shown_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| {
                let shown = if looks_secret(k) {
                    REDACTED.to_string()
                } else {
                    self.redact(v)
                };
                (k.clone(), shown)
            })
            .collect()
    }

    pub fn shown_workdir(&self) -> Option<String> {
        self.workdir.as_deref().map(|w| self.redact(w))
    }

    /// The base URL with secrets hidden (a `url = "https://user:${PASSWORD}@host"`).
    pub fn shown_url(&self) -> String {
        self.redact(&self.base_url)
    }
}

/// The redacted view, never the real values.
impl Serialize for Rendered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "command": self.command_line(),
            "argv": self.shown_argv(),
            "shell": self.shell,
            "env": self.shown_env(),
            "workdir": self.shown_workdir(),
            "base_url": self.shown_url(),
            "request_model": self.request_model,
        })
        .serialize(s)
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("command", &self.command_line())
            .field("env", &self.shown_env())
            .field("base_url", &self.shown_url())
            .finish_non_exhaustive()
    }
}

impl ServerPlan {
    /// Renders the command for the real port (`None` for `url` engines). Cannot fail for a plan that
    /// expanded: the same templates rendered with the placeholder port.
    pub fn render(&self, exp: &Experiment, port: Option<u16>) -> Result<Rendered, String> {
        self.render_on(exp, port, None)
    }

    /// [`ServerPlan::render`] for the GPUs the executor gave this server (`{{ gpus }}`, e.g. "0,1").
    pub fn render_on(
        &self,
        exp: &Experiment,
        port: Option<u16>,
        gpus: Option<&str>,
    ) -> Result<Rendered, String> {
        let mut context = self.context.clone();
        if let Some(gpus) = gpus
            && context.get("gpus").is_some()
        {
            context["gpus"] = serde_json::Value::from(gpus);
        }
        context["port"] = port.map_or(
            serde_json::Value::from(PORT_PLACEHOLDER),
            serde_json::Value::from,
        );
        context["runner"] = serde_json::Value::from(runner_path());
        render(&exp.engines[&self.engine], &context, &exp.secrets)
            .map_err(|e| exp.secrets.redact(&e).into_owned())
    }

    /// Repeat `k` (from 1) of `cell` as a point of its own: the cell's load settings with the repeat count
    /// left out and the repeat's number in, and the settings hash of exactly that. Repeat 1 of any cell is
    /// the cell measured once (same prompts, same hash: a cell with `repeats = 1` is its own repeat 1);
    /// each later repeat sends other prompts. A repeat's hash does not depend on the repeat count, so
    /// stored repeats stay valid when the count changes.
    pub fn repeat_of(&self, cell: &CellPlan, k: u32) -> CellPlan {
        let load = LoadSpec {
            repeats: 1,
            repeat: k,
            ..cell.load.clone()
        };
        CellPlan {
            id: cell.id.clone(),
            hash: cell_hash(&self.hash, &load),
            vars: cell.vars.clone(),
            load,
        }
    }

    /// Every variable of a cell of this server: server variables, then the cell's load variables.
    pub fn cell_vars<'a>(
        &'a self,
        cell: &'a CellPlan,
    ) -> impl Iterator<Item = (&'a String, &'a Scalar)> {
        self.vars.iter().chain(cell.vars.iter())
    }
}

/// Where the running binary is, for `{{ runner }}` (the simulated engine is this binary). Read once: if the
/// binary is replaced during a run (a rebuild, an upgrade), Linux names the running one `<path> (deleted)`
/// from then on, and later servers would be started with that name; the path itself still leads to a
/// runner.
pub fn runner_path() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "runner".into())
    })
    .clone()
}

impl Plan {
    pub fn cell_count(&self) -> usize {
        self.servers.iter().map(|s| s.points.len()).sum()
    }

    /// Every request the plan sends: each point's warm-up and measured requests, once per repeat.
    pub fn request_count(&self) -> u64 {
        self.servers
            .iter()
            .flat_map(|s| &s.points)
            .map(|c| u64::from(c.load.requests + c.load.warmup) * u64::from(c.load.repeats))
            .sum()
    }

    /// Keeps only the cells whose variables match every filter; servers left without cells are dropped.
    pub fn select(mut self, filters: &[Filter]) -> Plan {
        if filters.is_empty() {
            return self;
        }
        for server in &mut self.servers {
            let vars = server.vars.clone();
            server.points.retain(|cell| {
                filters.iter().all(|f| {
                    vars.get(&f.key)
                        .or_else(|| cell.vars.get(&f.key))
                        .is_some_and(|v| v.to_string() == f.value)
                })
            });
        }
        self.servers.retain(|s| !s.points.is_empty());
        self
    }

    /// Every variable name a filter may use, with every value it takes somewhere (as a filter writes
    /// it), in order of first appearance.
    pub fn variables(&self) -> IndexMap<String, Vec<String>> {
        let mut out: IndexMap<String, Vec<String>> = IndexMap::new();
        for s in &self.servers {
            for (k, v) in s
                .vars
                .iter()
                .chain(s.points.iter().flat_map(|c| c.vars.iter()))
            {
                let values = out.entry(k.clone()).or_default();
                let v = v.to_string();
                if !values.contains(&v) {
                    values.push(v);
                }
            }
        }
        out
    }
}

/// `--only key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key: String,
    pub value: String,
}

/// Parses `--only` arguments (`k=v,k=v`, repeatable), checking keys and values against the plan's
/// variables: a value no cell has is a typo, not an empty selection.
pub fn parse_filters(args: &[String], plan: &Plan) -> Result<Vec<Filter>, String> {
    let variables = plan.variables();
    let names: Vec<&String> = variables.keys().collect();
    let mut out = Vec::new();
    for arg in args {
        for part in arg.split(',').filter(|p| !p.trim().is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "--only `{part}` is not KEY=VALUE\n  help: e.g. --only model=qwen3-14b,concurrency=40"
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            let Some(values) = variables.get(k) else {
                let hint =
                    crate::experiment::diag::did_you_mean(k, names.iter().map(|n| n.as_str()))
                        .unwrap_or_else(|| {
                            let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                            format!("variables: {}", names.join(", "))
                        });
                return Err(format!(
                    "--only: no variable `{k}` in this experiment\n  help: {hint}"
                ));
            };
            if !values.iter().any(|x| x == v) {
                let hint =
                    crate::experiment::diag::did_you_mean(v, values.iter().map(String::as_str))
                        .unwrap_or_else(|| format!("{k} takes: {}", values.join(", ")));
                return Err(format!("--only: no cell has {k} = {v}\n  help: {hint}"));
            }
            out.push(Filter {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
    }
    Ok(out)
}

type Combo = IndexMap<String, Scalar>;

/// Expands the matrix. `Err` lists every problem (missing checkpoints, template errors, unused
/// variables, duplicate ids, an empty or oversized matrix).
pub fn expand(exp: &Experiment) -> Result<Plan, Diagnostics> {
    let mut diags = Diagnostics::new(&exp.file, &exp.source);
    let locator = crate::experiment::diag::Locator::new(&exp.source);
    let mut error = |path: &[&str], message: String, help: Option<String>| {
        diags.push(Diagnostic {
            key: path.join("."),
            position: locator.position(path),
            message,
            help,
        });
    };

    // Sized before it is built: a typo in five lists of forty values must be this message, not an
    // out-of-memory.
    let bound = combination_bound(&exp.matrix);
    if bound.is_none_or(|n| n > MAX_CELLS as u64) {
        let (message, key) = oversized(&exp.matrix, bound);
        error(
            &["matrix", &key],
            message,
            Some("narrow the lists (a wrong or pasted list multiplies every other one), or split the campaign into several files".into()),
        );
        return Err(diags);
    }
    let combos = combinations(exp);
    if combos.is_empty() {
        error(
            &["matrix"],
            "the matrix expands to no cells".into(),
            Some("check [[matrix.exclude]]: it removes every combination".into()),
        );
    }

    // Group into servers, preserving first appearance.
    let mut servers: IndexMap<String, (Combo, Vec<Combo>)> = IndexMap::new();
    for combo in combos {
        let (server_vars, load_vars): (Combo, Combo) = combo
            .into_iter()
            .partition(|(k, _)| !(k == "concurrency" || LOAD_KEYS.contains(&k.as_str())));
        let key = serde_json::to_string(&server_vars).unwrap_or_default();
        servers
            .entry(key)
            .or_insert_with(|| (server_vars, Vec::new()))
            .1
            .push(load_vars);
    }

    // An id names a variable only where it tells cells apart: server variables that vary among servers of
    // the same model, precision and engine; load variables that vary among points at the same concurrency.
    let core = |c: &Combo, keys: &[&str]| {
        keys.iter()
            .map(|k| c.get(*k).map(|v| v.to_string()))
            .collect::<Vec<_>>()
    };
    let server_key = |c: &Combo| core(c, &["model", "precision", "engine"]);
    let all_server_vars: Vec<Combo> = servers.values().map(|(s, _)| s.clone()).collect();
    let mut reported: HashSet<String> = HashSet::new();
    let mut plans = Vec::new();
    let mut ids: HashSet<String> = HashSet::new();

    for (server_vars, points) in servers.into_values() {
        let get = |k: &str| {
            server_vars
                .get(k)
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let (model_id, precision, engine_name) = (get("model"), get("precision"), get("engine"));
        let (Some(model), Some(engine)) =
            (exp.models.get(&model_id), exp.engines.get(&engine_name))
        else {
            continue; // dangling references were reported by validation
        };
        let Some(checkpoint) = model.precisions.get(&precision) else {
            if reported.insert(format!("precision/{model_id}/{precision}")) {
                error(
                    &["models", &model_id, "precisions"],
                    format!(
                        "the matrix runs model `{model_id}` at precision `{precision}`, which has no checkpoint path"
                    ),
                    Some(format!(
                        "add `{precision} = {{ path = \"…\" }}` under [models.{model_id}.precisions], or add [[matrix.exclude]] with model = \"{model_id}\", precision = \"{precision}\""
                    )),
                );
            }
            continue;
        };
        if points.iter().any(|p| !p.contains_key("concurrency")) {
            if reported.insert("concurrency".into()) {
                error(
                    &["matrix"],
                    "a combination has no `concurrency`".into(),
                    Some("list concurrency under [matrix] or in each [[matrix.include]]".into()),
                );
            }
            continue;
        }

        let mut id = format!("{model_id}/{precision}/{engine_name}");
        let siblings = all_server_vars
            .iter()
            .filter(|c| server_key(c) == server_key(&server_vars));
        let varying_server = varying(siblings);
        // Once per distinct concurrency, not once per point.
        let mut concurrencies: Vec<Option<&Scalar>> = Vec::new();
        for p in &points {
            if !concurrencies.contains(&p.get("concurrency")) {
                concurrencies.push(p.get("concurrency"));
            }
        }
        let varying_load: HashSet<String> = concurrencies
            .into_iter()
            .flat_map(|c| varying(points.iter().filter(move |q| q.get("concurrency") == c)))
            .collect();
        for (k, v) in &server_vars {
            if !AXES.contains(&k.as_str()) && varying_server.contains(k) {
                id.push_str(&format!("/{k}={v}"));
            }
        }

        let mut context = context(
            exp,
            model,
            &precision,
            checkpoint,
            engine,
            &server_vars,
            &id,
        );
        let gpu_count = match exp.executor.gpu_count() {
            None => None,
            Some((count, at)) => match gpus_for(count, &context, &exp.executor) {
                Ok(n) => {
                    context["gpu_count"] = n.into();
                    context["gpus"] = GPUS_PLACEHOLDER.into();
                    Some(n)
                }
                Err(message) => {
                    if reported.insert(format!("gpus/{message}")) {
                        error(
                            &at,
                            format!("for server {id}: {message}"),
                            Some("write a number of GPUs, or a template of the configuration's variables such as \"{{ tensor_parallel_size }}\"".into()),
                        );
                    }
                    continue;
                }
            },
        };
        let display = match render(engine, &context, &exp.secrets) {
            Ok(r) => r,
            Err(e) => {
                // A template error may quote the template, in which `${VAR}` is already expanded.
                let e = exp.secrets.redact(&e).into_owned();
                if reported.insert(format!("render/{engine_name}/{e}")) {
                    error(
                        &["engines", &engine_name, "command"],
                        format!("cannot render for server {id}: {e}"),
                        Some(template_help(&context)),
                    );
                }
                continue;
            }
        };
        for name in server_vars.keys() {
            if AXES.contains(&name.as_str()) {
                continue;
            }
            // The GPU count template counts as a use: `tensor_parallel_size` may size the GPU set only.
            let gpu_template = match exp.executor.gpu_count() {
                Some((crate::experiment::executor::GpuCount::Template(t), _)) => Some(t.as_str()),
                _ => None,
            };
            let used = template_text(engine)
                .into_iter()
                .chain(engine.rehearsal_of.iter().map(String::as_str))
                .chain(gpu_template)
                .any(|t| mentions(t, name));
            if !used && reported.insert(format!("unused/{engine_name}/{name}")) {
                error(
                    &["matrix", name],
                    format!(
                        "variable `{name}` is used by no template of engine `{engine_name}` and is not a load setting"
                    ),
                    Some(
                        match crate::experiment::diag::did_you_mean(name, LOAD_KEYS.iter().copied())
                        {
                            Some(dym) => dym,
                            None => format!(
                                "use `{{{{ {name} }}}}` in [engines.{engine_name}] command, or remove the variable"
                            ),
                        },
                    ),
                );
            }
        }

        // The redacted form: a rotated token must not invalidate a night's results (and a hash must not
        // be a way to test guesses of a secret).
        let hash = short_hash(&serde_json::json!({
            "engine": { "preset": engine.preset, "command": display.shown_argv(), "shell": display.shell,
                        "env": display.shown_env().into_iter().collect::<IndexMap<_, _>>(),
                        "workdir": display.shown_workdir(), "url": display.shown_url() },
            "model": { "path": checkpoint.path, "served_model_name": model.served_model_name },
            "vars": server_vars,
        }));

        let mut cells = Vec::new();
        for load_vars in points {
            let concurrency = match load_vars.get("concurrency") {
                Some(Scalar::Int(n)) if *n >= 1 => u32::try_from(*n).unwrap_or(u32::MAX),
                _ => continue, // reported by validation
            };
            let mut layers: IndexMap<String, Layered> = exp.load.clone();
            layers.extend(model.load.clone());
            for (k, v) in &load_vars {
                if k != "concurrency" {
                    layers.insert(
                        k.clone(),
                        Layered {
                            value: v.clone(),
                            origin: vec!["matrix".into(), k.clone()],
                        },
                    );
                }
            }
            let workload = Workload {
                input_tokens: model.input_tokens,
                output_tokens: model.output_tokens,
                vocab: &model.vocab,
            };
            let spec = match load::resolve(concurrency, &layers, &workload) {
                Ok(spec) => spec,
                Err(problems) => {
                    for (origin, message, help) in problems {
                        if reported.insert(format!("load/{}/{message}", origin.join("."))) {
                            let path: Vec<&str> = origin.iter().map(String::as_str).collect();
                            error(&path, message, help);
                        }
                    }
                    continue;
                }
            };
            let mut cell_id = format!("{id}/c{concurrency}");
            for (k, v) in &load_vars {
                if k != "concurrency" && varying_load.contains(k) {
                    cell_id.push_str(&format!("/{k}={v}"));
                }
            }
            if !ids.insert(cell_id.clone()) {
                if reported.insert(format!("dup/{cell_id}")) {
                    error(
                        &["matrix"],
                        format!("two cells have the id `{cell_id}`"),
                        Some(
                            "two values print the same (e.g. 0.9 and \"0.9\"): make them distinct"
                                .into(),
                        ),
                    );
                }
                continue;
            }
            cells.push(CellPlan {
                id: cell_id,
                hash: cell_hash(&hash, &spec),
                vars: load_vars,
                load: spec,
            });
        }
        plans.push(ServerPlan {
            id,
            hash,
            engine: engine_name,
            model: model_id,
            precision,
            vars: server_vars,
            gpu_count,
            display,
            context,
            points: cells,
        });
    }

    if diags.is_empty() {
        Ok(Plan {
            title: exp.title.clone(),
            servers: plans,
        })
    } else {
        Err(diags)
    }
}

/// The most combinations [`combinations`] can give, from the list lengths alone: the product of the
/// lists (before exclusions) plus, per include entry, the product of the lists it does not name (what
/// it adds when it agrees with no combination). `None` when that does not fit in a u64.
fn combination_bound(m: &crate::experiment::Matrix) -> Option<u64> {
    let lists: Vec<(&String, usize)> = m
        .axes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.len()))
        .collect();
    let product = |skip: &dyn Fn(&String) -> bool| {
        lists
            .iter()
            .filter(|(k, _)| !skip(k))
            .try_fold(1u64, |acc, (_, n)| acc.checked_mul(*n as u64))
    };
    let mut total = if lists.is_empty() {
        0
    } else {
        product(&|_| false)?
    };
    for entry in &m.include {
        total = total.checked_add(product(&|k| entry.contains_key(k))?)?;
    }
    Some(total)
}

/// The message for a matrix over [`MAX_CELLS`], naming each list's length, and the longest list (where
/// a typo most likely is).
fn oversized(m: &crate::experiment::Matrix, bound: Option<u64>) -> (String, String) {
    let sizes: Vec<String> = m
        .axes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k} {}", v.len()))
        .collect();
    let longest = m
        .axes
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    let count = bound.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
    let includes = if m.include.is_empty() {
        String::new()
    } else {
        " with [[matrix.include]]".to_string()
    };
    (
        format!(
            "the matrix lists ({}) give up to {count} combinations{includes}, more than {MAX_CELLS}",
            sizes.join(" × ")
        ),
        longest,
    )
}

fn combinations(exp: &Experiment) -> Vec<Combo> {
    let m = &exp.matrix;
    let axes: Vec<(&String, &Vec<Scalar>)> = m.axes.iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut combos: Vec<Combo> = if axes.is_empty() {
        Vec::new()
    } else {
        product(&axes)
    };
    combos.retain(|c| {
        !m.exclude
            .iter()
            .any(|e| e.iter().all(|(k, v)| c.get(k) == Some(v)))
    });
    for entry in &m.include {
        let mut extended = false;
        for combo in &mut combos {
            let agrees = entry
                .iter()
                .filter(|(k, _)| m.axes.contains_key(*k))
                .all(|(k, v)| combo.get(k) == Some(v));
            if agrees {
                for (k, v) in entry {
                    combo.insert(k.clone(), v.clone());
                }
                extended = true;
            }
        }
        if !extended {
            let missing: Vec<(&String, &Vec<Scalar>)> = axes
                .iter()
                .filter(|(k, _)| !entry.contains_key(*k))
                .copied()
                .collect();
            let bases = if missing.is_empty() {
                vec![Combo::new()]
            } else {
                product(&missing)
            };
            for base in bases {
                // Keep the matrix's key order so ids and output read the same for added combinations.
                let mut combo = Combo::new();
                for (k, _) in &axes {
                    if let Some(v) = entry.get(*k).or_else(|| base.get(*k)) {
                        combo.insert((*k).clone(), v.clone());
                    }
                }
                for (k, v) in entry {
                    combo.entry(k.clone()).or_insert_with(|| v.clone());
                }
                combos.push(combo);
            }
        }
    }
    let mut seen = HashSet::new();
    combos.retain(|c| seen.insert(serde_json::to_string(c).unwrap_or_default()));
    combos
}

fn product(axes: &[(&String, &Vec<Scalar>)]) -> Vec<Combo> {
    let mut out = vec![Combo::new()];
    for (key, values) in axes {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for combo in &out {
            for v in *values {
                let mut c = combo.clone();
                c.insert((*key).clone(), v.clone());
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// Variables whose value differs somewhere in the set, being absent counting as a value (the others add
/// nothing to an id).
fn varying<'a>(combos: impl Iterator<Item = &'a Combo> + Clone) -> HashSet<String> {
    let keys: HashSet<&String> = combos.clone().flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter(|k| {
            let mut values = combos.clone().map(|c| c.get(*k));
            let first = values.next().flatten();
            values.any(|v| v != first)
        })
        .cloned()
        .collect()
}

fn context(
    exp: &Experiment,
    model: &Model,
    precision: &str,
    checkpoint: &crate::experiment::Precision,
    engine: &Engine,
    vars: &Combo,
    id: &str,
) -> serde_json::Value {
    let mut ctx = serde_json::Map::new();
    for (k, v) in vars {
        ctx.insert(k.clone(), v.to_json());
    }
    ctx.insert(
        "model".into(),
        serde_json::json!({
            "id": model.id, "name": model.name, "path": checkpoint.path,
            "checkpoint": checkpoint.name.clone().unwrap_or_else(|| checkpoint.path.clone()),
            "precision": precision, "input_tokens": model.input_tokens, "output_tokens": model.output_tokens,
            "served_model_name": model.served_model_name, "max_model_len": model.max_model_len(),
        }),
    );
    ctx.insert("precision".into(), precision.into());
    ctx.insert("engine".into(), engine.name.clone().into());
    ctx.insert("port".into(), PORT_PLACEHOLDER.into());
    ctx.insert("host".into(), "127.0.0.1".into());
    ctx.insert("max_model_len".into(), model.max_model_len().into());
    // `runner` is hashed as a plain name, so moving the binary does not invalidate results.
    ctx.insert("runner".into(), "runner".into());
    ctx.insert(
        "results_dir".into(),
        exp.results_dir.to_string_lossy().into_owned().into(),
    );
    ctx.insert("server_id".into(), id.into());
    serde_json::Value::Object(ctx)
}

/// The GPUs one server configuration needs: the number, or the template rendered with the
/// configuration's context; at least 1, and no more than an explicit `[executor.local] gpus` list has.
fn gpus_for(
    count: &crate::experiment::executor::GpuCount,
    context: &serde_json::Value,
    executor: &crate::experiment::executor::Executor,
) -> Result<u32, String> {
    use crate::experiment::executor::{ExecutorKind, GpuCount, GpuSet};
    let n = match count {
        GpuCount::Fixed(n) => *n,
        GpuCount::Template(t) => {
            let ctx = tera::Context::from_value(context.clone()).map_err(|e| e.to_string())?;
            let text = render_one(t, &ctx)?;
            match text.trim().parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(format!(
                        "gpus_per_server `{t}` gives `{}`, not a number of GPUs (1 or more)",
                        text.trim()
                    ));
                }
            }
        }
    };
    if executor.kind == ExecutorKind::Local
        && let Some(GpuSet::Ids(ids)) = &executor.local.gpus
        && n as usize > ids.len()
    {
        return Err(format!(
            "it needs {n} GPUs, but [executor.local] gpus lists only {}",
            ids.len()
        ));
    }
    Ok(n)
}

/// Whether any template of `engine` (command, env values, version command) uses variable `name`, e.g.
/// `model.path`.
pub fn uses_variable(engine: &Engine, name: &str) -> bool {
    template_text(engine).iter().any(|t| mentions(t, name))
}

fn template_text(engine: &Engine) -> Vec<&str> {
    let mut out = Vec::new();
    if let Launch::Spawn { command, env, .. } = &engine.launch {
        out.extend(command.parts());
        out.extend(env.values().map(String::as_str));
    }
    if let Some(v) = &engine.version_command {
        out.push(v);
    }
    out
}

/// Whether a template mentions `name` (a variable, or a dotted path like `model.path`) as a whole word
/// inside `{{ }}` or `{% %}`.
fn mentions(template: &str, name: &str) -> bool {
    let mut rest = template;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let Some(end) = after.find(close) else { break };
        let inner = &after[1..end];
        // `model.path` is one word here: `model` matches it, and so does `model.path`, but not `path`.
        if inner
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .any(|w| w == name || w.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
        {
            return true;
        }
        rest = &after[end..];
    }
    false
}

fn template_help(context: &serde_json::Value) -> String {
    let names: Vec<String> = match context {
        serde_json::Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| match v {
                serde_json::Value::Object(inner) => inner
                    .keys()
                    .map(|ik| format!("{k}.{ik}"))
                    .collect::<Vec<_>>(),
                _ => vec![k.clone()],
            })
            .collect(),
        _ => Vec::new(),
    };
    format!(
        "variables available here: {}; for a variable only some servers have, use {{% if NAME is defined %}}…{{% endif %}}",
        names.join(", ")
    )
}

fn render_one(template: &str, context: &tera::Context) -> Result<String, String> {
    tera::Tera::one_off(template, context, false).map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        msg.replace("Failed to render '__tera_one_off'", "template error")
    })
}

fn render(
    engine: &Engine,
    context: &serde_json::Value,
    secrets: &Secrets,
) -> Result<Rendered, String> {
    let ctx = tera::Context::from_value(context.clone()).map_err(|e| e.to_string())?;
    let request_model = context["model"]["served_model_name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            context["model"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
    let version_command = engine
        .version_command
        .as_deref()
        .map(|v| render_one(v, &ctx))
        .transpose()?;
    match &engine.launch {
        Launch::Attach { url } => Ok(Rendered {
            argv: Vec::new(),
            shell: false,
            env: IndexMap::new(),
            workdir: None,
            version_command,
            base_url: url.clone(),
            request_model,
            secrets: secrets.clone(),
        }),
        Launch::Spawn {
            command,
            shell,
            env,
            workdir,
            ..
        } => {
            let argv = match command {
                CommandTemplate::Line(line) => {
                    let text = render_one(line, &ctx)?;
                    if *shell {
                        vec![text]
                    } else {
                        crate::shell::split(&text)?
                    }
                }
                CommandTemplate::Argv(parts) => {
                    let rendered = parts
                        .iter()
                        .map(|p| render_one(p, &ctx))
                        .collect::<Result<Vec<_>, _>>()?;
                    if *shell {
                        vec![rendered.join(" ")]
                    } else {
                        rendered
                    }
                }
            };
            let env = env
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_one(v, &ctx)?)))
                .collect::<Result<IndexMap<_, _>, String>>()?;
            let port = context["port"].to_string().trim_matches('"').to_string();
            let mut secrets = secrets.clone();
            for (k, v) in &env {
                if looks_secret(k) {
                    secrets.add(v);
                }
            }
            if *shell {
                // Best effort: a script that does not split still has its `${VAR}` secrets hidden.
                if let Some(words) = crate::shell::words(&argv.join(" ")) {
                    secrets.add_from_words(&words);
                }
            } else {
                secrets.add_from_words(&argv);
            }
            Ok(Rendered {
                argv,
                shell: *shell,
                env,
                workdir: workdir.as_ref().map(|w| w.to_string_lossy().into_owned()),
                version_command,
                base_url: format!("http://127.0.0.1:{port}"),
                request_model,
                secrets,
            })
        }
    }
}

/// The settings hash of a load point: its server's hash and every resolved load setting.
fn cell_hash(server_hash: &str, load: &LoadSpec) -> String {
    short_hash(&serde_json::json!({ "server": server_hash, "load": load }))
}

/// First 12 hex digits of SHA-256 over the canonical JSON of the settings.
fn short_hash(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(value).unwrap_or_default());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[engines.a]
command = "srv --model {{ model.path }} --port {{ port }}{% if gmu is defined %} --gmu {{ gmu }}{% endif %}{% if kv is defined %} --kv {{ kv }}{% endif %}"
[engines.b]
command = ["srv-b", "--port", "{{ port }}", "--len", "{{ max_model_len }}"]
[models.m1]
input_tokens = 100
output_tokens = 10
[models.m1.precisions]
fp8 = { path = "/m1/fp8" }
nvfp4 = { path = "/m1/nvfp4" }
[models.m2]
input_tokens = 200
output_tokens = 20
context_headroom = 0
[models.m2.precisions]
fp8 = { path = "/m2/fp8" }
"#;

    fn plan(matrix: &str) -> Plan {
        let text = format!("{BASE}\n{matrix}");
        let exp =
            crate::experiment::parse(Path::new("t.toml"), &text).unwrap_or_else(|d| panic!("{d}"));
        expand(&exp).unwrap_or_else(|d| panic!("{d}"))
    }

    fn cell_ids(p: &Plan) -> Vec<String> {
        p.servers
            .iter()
            .flat_map(|s| s.points.iter().map(|c| c.id.clone()))
            .collect()
    }

    #[test]
    fn order_follows_the_file_first_key_slowest() {
        let p = plan(
            "[matrix]\nmodel = [\"m1\", \"m2\"]\nprecision = [\"fp8\"]\nengine = [\"a\", \"b\"]\nconcurrency = [4, 1]\n",
        );
        assert_eq!(
            cell_ids(&p),
            [
                "m1/fp8/a/c4",
                "m1/fp8/a/c1",
                "m1/fp8/b/c4",
                "m1/fp8/b/c1",
                "m2/fp8/a/c4",
                "m2/fp8/a/c1",
                "m2/fp8/b/c4",
                "m2/fp8/b/c1",
            ]
        );
        assert_eq!(p.servers.len(), 4);
        // Load variables never split a server: concurrency written first still groups by server.
        let q = plan(
            "[matrix]\nconcurrency = [1, 4]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\", \"b\"]\n",
        );
        assert_eq!(
            cell_ids(&q),
            ["m1/fp8/a/c1", "m1/fp8/a/c4", "m1/fp8/b/c1", "m1/fp8/b/c4"]
        );
    }

    #[test]
    fn exclude_then_include_extend_and_add() {
        let p = plan(
            r#"[matrix]
model = ["m1"]
precision = ["fp8", "nvfp4"]
engine = ["a", "b"]
concurrency = [1, 8]
[[matrix.exclude]]
engine = "b"
precision = "nvfp4"
[[matrix.include]]
engine = "a"
precision = "fp8"
kv = "fp8_e5m2"
[[matrix.include]]
model = "m2"
precision = "fp8"
engine = "b"
[[matrix.include]]
concurrency = 1
requests = 2
"#,
        );
        assert_eq!(
            cell_ids(&p),
            [
                "m1/fp8/a/c1",
                "m1/fp8/a/c8",
                "m1/fp8/b/c1",
                "m1/fp8/b/c8",
                "m1/nvfp4/a/c1",
                "m1/nvfp4/a/c8",
                "m2/fp8/b/c1",
                "m2/fp8/b/c8",
            ]
        );
        let s0 = &p.servers[0];
        assert!(
            s0.display
                .argv
                .ends_with(&["--kv".to_string(), "fp8_e5m2".to_string()]),
            "{:?}",
            s0.display.argv
        );
        assert!(!p.servers[2].display.argv.contains(&"--kv".to_string()));
        // Include-added load settings apply only where they match; requests default elsewhere.
        assert_eq!(s0.points[0].load.requests, 2);
        assert_eq!(s0.points[1].load.requests, 24);
        // The added model took concurrency from the list.
        assert_eq!(
            p.servers[3].display.argv,
            ["srv-b", "--port", "$PORT", "--len", "220"]
        );
    }

    #[test]
    fn ids_name_only_distinguishing_variables() {
        let p = plan(
            "[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\ngmu = [0.85, 0.9]\nshared_prefix_tokens = [10, 50]\nconcurrency = [2]\n",
        );
        assert_eq!(
            cell_ids(&p),
            [
                "m1/fp8/a/gmu=0.85/c2/shared_prefix_tokens=10",
                "m1/fp8/a/gmu=0.85/c2/shared_prefix_tokens=50",
                "m1/fp8/a/gmu=0.9/c2/shared_prefix_tokens=10",
                "m1/fp8/a/gmu=0.9/c2/shared_prefix_tokens=50",
            ]
        );
        assert_eq!(p.servers.len(), 2, "a load variable shares the warm server");
    }

    #[test]
    fn hashes_change_only_with_what_they_cover() {
        let m = "[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\nconcurrency = [1, 4]\n";
        let p1 = plan(m);
        let p2 = plan(m);
        assert_eq!(p1.servers[0].hash, p2.servers[0].hash, "deterministic");
        assert_eq!(p1.servers[0].points[1].hash, p2.servers[0].points[1].hash);
        assert_eq!(p1.servers[0].hash.len(), 12);
        // A load change alters the cell hash but not the server's.
        let p3 = plan(&format!("{m}[load]\nwarmup = 3\n"));
        assert_eq!(p1.servers[0].hash, p3.servers[0].hash);
        assert_ne!(p1.servers[0].points[0].hash, p3.servers[0].points[0].hash);
        // A server change alters both.
        let p4 = plan(&m.replace("engine = [\"a\"]", "engine = [\"a\"]\ngmu = [0.5]"));
        assert_ne!(p1.servers[0].hash, p4.servers[0].hash);
        assert_ne!(p1.servers[0].points[0].hash, p4.servers[0].points[0].hash);
        // Cells at different concurrency differ.
        assert_ne!(p1.servers[0].points[0].hash, p1.servers[0].points[1].hash);
    }

    #[test]
    fn repeats_change_the_cell_hash_but_not_their_own() {
        let m = "[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\nconcurrency = [1, 4]\n";
        let once = plan(m);
        let three = plan(&format!("{m}[load]\nrepeats = 3\n"));
        let five = plan(&format!("{m}[load]\nrepeats = 5\n"));
        let (s1, s3, s5) = (&once.servers[0], &three.servers[0], &five.servers[0]);
        let (c1, c3, c5) = (&s1.points[1], &s3.points[1], &s5.points[1]);
        assert_eq!(c3.load.repeats, 3);
        assert_ne!(c1.hash, c3.hash, "the count is a setting of the cell");
        assert_ne!(c3.hash, c5.hash);
        // A cell measured once is its own first repeat.
        assert_eq!(s1.repeat_of(c1, 1).hash, c1.hash);
        assert_eq!(s1.repeat_of(c1, 1).load, c1.load);
        // A repeat's hash is its number's, whatever the count: 3 → 5 keeps the three stored.
        for k in 1..=3 {
            assert_eq!(s3.repeat_of(c3, k).hash, s5.repeat_of(c5, k).hash);
            assert_eq!(s3.repeat_of(c3, k).load.repeat, k);
        }
        assert_eq!(s3.repeat_of(c3, 1).hash, c1.hash);
        assert_ne!(s3.repeat_of(c3, 1).hash, s3.repeat_of(c3, 2).hash);
        // The first repeat's settings are the single measurement's (so are its prompts, salted with
        // them); a later one's carry its number (tests/repeats.rs checks the prompts themselves).
        assert_eq!(s3.repeat_of(c3, 1).load, c1.load);
        assert_eq!(s3.repeat_of(c3, 2).load.repeat, 2);
        // Requests are counted once per repeat: (3 + 1) + (12 + 1) per repeat.
        assert_eq!(once.request_count(), 17);
        assert_eq!(three.request_count(), 51);
    }

    #[test]
    fn selection_keeps_matching_cells_only() {
        let p = plan(
            "[matrix]\nmodel = [\"m1\", \"m2\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\nconcurrency = [1, 4]\n",
        );
        let f = parse_filters(&["model=m2,concurrency=4".into()], &p).unwrap();
        assert_eq!(cell_ids(&p.clone().select(&f)), ["m2/fp8/a/c4"]);
        assert!(
            parse_filters(&["modl=m2".into()], &p)
                .unwrap_err()
                .contains("did you mean `model`?")
        );
        assert!(parse_filters(&["model".into()], &p).is_err());
        let err = parse_filters(&["model=m3".into()], &p).unwrap_err();
        assert!(
            err.contains("no cell has model = m3") && err.contains("did you mean `m1`?"),
            "{err}"
        );
        let err = parse_filters(&["concurrency=99".into()], &p).unwrap_err();
        assert!(err.contains("concurrency takes: 1, 4"), "{err}");
    }

    #[test]
    fn dotted_variables_are_whole_words() {
        let exp = crate::experiment::parse(
            Path::new("t.toml"),
            &format!("{BASE}\n[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\nconcurrency = [1]\n"),
        )
        .unwrap();
        let (a, b) = (&exp.engines["a"], &exp.engines["b"]);
        assert!(uses_variable(a, "model.path") && uses_variable(a, "model"));
        assert!(!uses_variable(a, "path") && !uses_variable(a, "model.id"));
        assert!(!uses_variable(b, "model.path") && uses_variable(b, "max_model_len"));
    }

    #[test]
    fn the_matrix_is_sized_before_it_is_built() {
        // 40^5 combinations would take many gigabytes to build: the bound refuses it first.
        let forty: Vec<String> = (1..=40).map(|n| n.to_string()).collect();
        let list = forty.join(", ");
        let text = format!(
            "{BASE}\n[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\ngmu = [{list}]\nkv = [{list}]\nwarmup = [{list}]\nseed = [{list}]\nconcurrency = [{list}]\n"
        );
        let exp = crate::experiment::parse(Path::new("t.toml"), &text).unwrap();
        let err = expand(&exp).unwrap_err().to_string();
        assert!(
            err.contains("gmu 40 × kv 40 × warmup 40 × seed 40 × concurrency 40")
                && err.contains("102400000 combinations"),
            "{err}"
        );
        // The bound is exact without include/exclude and an upper bound with them.
        let p = plan(
            "[matrix]\nmodel = [\"m1\", \"m2\"]\nprecision = [\"fp8\"]\nengine = [\"a\", \"b\"]\nconcurrency = [1, 2, 4]\n",
        );
        let exp_bound = |matrix: &str| {
            let text = format!("{BASE}\n{matrix}");
            let exp = crate::experiment::parse(Path::new("t.toml"), &text).unwrap();
            (
                combination_bound(&exp.matrix),
                combinations(&exp).len() as u64,
            )
        };
        assert_eq!(p.cell_count(), 12);
        let (bound, built) = exp_bound(
            "[matrix]\nmodel = [\"m1\", \"m2\"]\nprecision = [\"fp8\"]\nengine = [\"a\", \"b\"]\nconcurrency = [1, 2, 4]\n",
        );
        assert_eq!(bound, Some(built));
        let (bound, built) = exp_bound(
            "[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\nconcurrency = [1, 2]\n[[matrix.include]]\nmodel = \"m2\"\nengine = \"b\"\n[[matrix.exclude]]\nconcurrency = 2\n",
        );
        assert!(bound.is_some_and(|b| b >= built), "{bound:?} {built}");
    }

    #[test]
    fn rendering_is_single_pass() {
        // A value that looks like a template is not rendered again.
        let text = format!(
            "{BASE}\n[matrix]\nmodel = [\"m1\"]\nprecision = [\"fp8\"]\nengine = [\"a\"]\ngmu = [\"{{{{port}}}}\"]\nconcurrency = [1]\n"
        );
        let exp = crate::experiment::parse(Path::new("t.toml"), &text).unwrap();
        let p = expand(&exp).unwrap();
        assert!(
            p.servers[0].display.argv.contains(&"{{port}}".to_string()),
            "{:?}",
            p.servers[0].display.argv
        );
        let real = p.servers[0].render(&exp, Some(8123)).unwrap();
        assert!(
            real.argv.contains(&"8123".to_string()) && real.base_url == "http://127.0.0.1:8123"
        );
    }
}
