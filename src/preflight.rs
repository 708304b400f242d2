//! Pre-flight: what can be checked on this host before the first server starts, so that a night is not
//! lost at 2 a.m. to a program that is not installed, a checkpoint that is not there, a port that is
//! taken or a results directory that cannot be written.
//!
//! Checks, each on what the plan will really use:
//! - every engine's program resolves: a name on `PATH`, a path that is an executable file (relative to
//!   `workdir` when one is set); `python -m PACKAGE.module` also asks that interpreter whether it can find
//!   `PACKAGE`. With `shell = true` the script's first word is checked when it is a plain program (after
//!   `VAR=value` assignments and `exec`); otherwise a note says it cannot be.
//! - every checkpoint `path` that looks local (absolute, or starting with `./` or `../`) exists, for
//!   engines whose templates use `{{ model.path }}`; any other form (`Qwen/Qwen3-14B-FP8`) is an id the
//!   engine resolves itself. Every `tokenizer` exists (it is read by the runner).
//! - `workdir`s exist; fixed `port`s are free; the results directory is writable and has room.
//! - `url =` engines: nothing to start; a server that does not answer now is a warning only.
//!
//! Every finding names the file, the key (with its line) and the fix. Errors stop `runner run` (exit 2)
//! unless `--no-preflight`; `runner plan` only shows them. It only looks at the host: nothing is
//! started and nothing is written (the run creates the results directory once the checks pass).

use std::collections::HashSet;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::experiment::diag::Locator;
use crate::experiment::{Diagnostic, Diagnostics, Experiment, Launch};
use crate::plan::{Plan, Rendered};

/// Below this much free space the results directory gets a warning.
pub const LOW_SPACE_BYTES: u64 = 2 << 30;
/// How long `python -c` may take to say whether a package is installed.
const PYTHON_PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `url =` server may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Tonight would fail: `runner run` stops before anything starts.
    Error,
    /// Worth a look; the run goes on.
    Warning,
    /// Something that could not be checked.
    Note,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// One finding: the key it is about (dotted path in the file), what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    /// 1-based line and column of the key in the file, when it is written there.
    pub line: Option<usize>,
    #[serde(skip)]
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

/// Everything the pre-flight found, most severe first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    source: String,
    pub findings: Vec<Finding>,
}

/// Runs every check on the servers of `plan`.
pub fn check(exp: &Experiment, plan: &Plan) -> Report {
    let locator = Locator::new(&exp.source);
    let mut c = Checker {
        locator: &locator,
        findings: Vec::new(),
        seen: HashSet::new(),
    };
    let mut engines_seen = HashSet::new();
    let mut checkpoints_seen = HashSet::new();
    for server in &plan.servers {
        let engine = &exp.engines[&server.engine];
        let first_of_engine = engines_seen.insert(server.engine.clone());
        match &engine.launch {
            Launch::Attach { url } => {
                if first_of_engine {
                    c.url(&server.engine, url);
                }
            }
            Launch::Spawn { port, workdir, .. } => {
                if first_of_engine {
                    c.workdir(&server.engine, workdir.as_deref());
                    if let Some(port) = port {
                        c.port(&server.engine, *port);
                    }
                }
                match server.render(exp, None) {
                    Ok(rendered) => c.program(&server.engine, &rendered, workdir.as_deref()),
                    // Expansion rendered the same templates; a failure here is reported, not hidden.
                    Err(e) => c.push(
                        Severity::Error,
                        &["engines", &server.engine, "command"],
                        format!("cannot render for server {}: {e}", server.id),
                        None,
                    ),
                }
                if crate::plan::uses_variable(engine, "model.path")
                    && checkpoints_seen.insert((server.model.clone(), server.precision.clone()))
                {
                    c.checkpoint(exp, &server.model, &server.precision, workdir.as_deref());
                }
            }
        }
    }
    let mut tokenizers_seen = HashSet::new();
    for server in &plan.servers {
        let model = &exp.models[&server.model];
        if let Some(t) = &model.vocab.tokenizer
            && tokenizers_seen.insert(model.id.clone())
            && !t.is_file()
        {
            c.push(
                Severity::Error,
                &["models", &model.id, "tokenizer"],
                format!("no tokenizer at {}", t.display()),
                Some("give the model's tokenizer.json (or its directory), or remove `tokenizer` to draw ids from token_id_range".into()),
            );
        }
    }
    c.results_dir(&exp.results_dir);

    let mut findings = c.findings;
    for f in &mut findings {
        f.message = exp.secrets.redact(&f.message).into_owned();
        f.help = f
            .help
            .as_deref()
            .map(|h| exp.secrets.redact(h).into_owned());
    }
    // In the order of the file, errors first.
    findings.sort_by_key(|f| (f.severity, f.line.unwrap_or(usize::MAX)));
    Report {
        file: exp.file.clone(),
        source: exp.source.clone(),
        findings,
    }
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The findings of one severity as located diagnostics (`file:line:col`, the key, the line, the fix).
    pub fn diagnostics(&self, severity: Severity) -> Diagnostics {
        let mut d = Diagnostics::new(&self.file, &self.source);
        for f in self.findings.iter().filter(|f| f.severity == severity) {
            d.push(Diagnostic {
                key: f.key.clone(),
                position: f.line.zip(f.column),
                message: f.message.clone(),
                help: f.help.clone(),
            });
        }
        d
    }
}

/// The plan's section: one line per finding with its fix, or that every check passed.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pre-flight on this host (`runner run` stops on errors; --no-preflight starts anyway):"
        )?;
        if self.findings.is_empty() {
            return writeln!(
                f,
                "  ok: programs, checkpoints, ports and the results directory"
            );
        }
        for x in &self.findings {
            let at = x.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            writeln!(
                f,
                "  {:<8} `{}`{at}: {}",
                x.severity.label(),
                x.key,
                x.message
            )?;
            if let Some(help) = &x.help {
                writeln!(f, "           help: {help}")?;
            }
        }
        Ok(())
    }
}

struct Checker<'a> {
    locator: &'a Locator<'a>,
    findings: Vec<Finding>,
    /// (key, message) already reported: one engine's program is checked once per server.
    seen: HashSet<(String, String)>,
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, path: &[&str], message: String, help: Option<String>) {
        let key = path.join(".");
        if !self.seen.insert((key.clone(), message.clone())) {
            return;
        }
        let position = self.locator.position(path);
        self.findings.push(Finding {
            severity,
            key,
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            message,
            help,
        });
    }

    fn program(&mut self, engine: &str, rendered: &Rendered, workdir: Option<&Path>) {
        let at = ["engines", engine, "command"];
        let words = if rendered.shell {
            let Some(words) = crate::shell::words(&rendered.argv.join(" ")) else {
                self.push(Severity::Note, &at, "runs through `sh -c` and does not split into words, so its program is not checked".into(), None);
                return;
            };
            match script_program(&words) {
                Ok(i) => words[i..].to_vec(),
                Err(first) => {
                    self.push(
                        Severity::Note,
                        &at,
                        format!("runs through `sh -c` and starts with `{}`, not a program on disk, so its program is not checked", rendered.redact(&first)),
                        None,
                    );
                    return;
                }
            }
        } else {
            rendered.argv.clone()
        };
        let Some(program) = words.first() else { return };
        let shown = rendered.redact(program);
        let Some(path) = crate::tool::find_program(program, workdir, None) else {
            let (message, help) = if program.contains('/') {
                (
                    format!("program `{shown}` does not exist or is not executable"),
                    "fix the path in `command` (relative paths start from `workdir`, or the current directory)".to_string(),
                )
            } else {
                (
                    format!("program `{shown}` is not on PATH"),
                    format!(
                        "install it, activate its environment before running, or give its full path in `command` (`command -v {shown}` finds nothing now)"
                    ),
                )
            };
            self.push(Severity::Error, &at, message, Some(help));
            return;
        };
        if let Some(package) = python_module(&path, &words) {
            self.python_package(&at, &path, &package, &words, rendered, workdir);
        }
    }

    /// Asks the interpreter of `python -m package.module` whether it finds `package`, with the
    /// engine's environment and working directory (both change what Python finds).
    fn python_package(
        &mut self,
        at: &[&str],
        python: &Path,
        package: &str,
        words: &[String],
        rendered: &Rendered,
        workdir: Option<&Path>,
    ) {
        let mut script = String::new();
        if let Some(dir) = workdir {
            script.push_str(&format!(
                "cd {} && ",
                crate::shell::quote(&dir.to_string_lossy())
            ));
        }
        for (k, v) in &rendered.env {
            script.push_str(&format!("{k}={} ", crate::shell::quote(v)));
        }
        script.push_str(&crate::shell::join([
            python.to_string_lossy().as_ref(),
            "-c",
            "import importlib.util, sys; print('found' if importlib.util.find_spec(sys.argv[1]) else 'missing')",
            package,
        ]));
        let invocation = format!("{} -m {}", rendered.redact(&words[0]), words[2]);
        let answer = crate::tool::run_shell(&script, PYTHON_PROBE_TIMEOUT)
            .ok()
            .and_then(|out| out.stdout.lines().last().map(|l| l.trim().to_string()));
        match answer.as_deref() {
            Some("found") => {}
            Some("missing") => self.push(
                Severity::Error,
                at,
                format!("`{invocation}`: {} cannot find the package `{package}`", python.display()),
                Some(format!("install `{package}` into that Python, or start it with the interpreter of its virtual environment (e.g. /opt/{package}/bin/python3 -m …)")),
            ),
            _ => self.push(
                Severity::Note,
                at,
                format!("could not ask {} whether `{package}` is installed", python.display()),
                None,
            ),
        }
    }

    fn checkpoint(
        &mut self,
        exp: &Experiment,
        model: &str,
        precision: &str,
        workdir: Option<&Path>,
    ) {
        let Some(p) = exp.models[model].precisions.get(precision) else {
            return;
        };
        if !looks_local(&p.path) {
            return;
        }
        let path = match workdir {
            Some(dir) if Path::new(&p.path).is_relative() => dir.join(&p.path),
            _ => PathBuf::from(&p.path),
        };
        if !path.exists() {
            self.push(
                Severity::Error,
                &["models", model, "precisions", precision, "path"],
                format!("checkpoint {} does not exist", path.display()),
                Some("download the checkpoint there or fix `path`; an id like Qwen/Qwen3-14B-FP8 (no leading / or ./) is left to the engine to fetch".into()),
            );
        }
    }

    fn workdir(&mut self, engine: &str, workdir: Option<&Path>) {
        if let Some(dir) = workdir
            && !dir.is_dir()
        {
            self.push(
                Severity::Error,
                &["engines", engine, "workdir"],
                format!("{} is not a directory", dir.display()),
                Some("create it or fix `workdir`".into()),
            );
        }
    }

    fn port(&mut self, engine: &str, port: u16) {
        if crate::server::port_in_use(port) {
            self.push(
                Severity::Error,
                &["engines", engine, "port"],
                format!("port {port} is in use now"),
                Some(format!("stop what listens there (`ss -ltnp 'sport = :{port}'` shows it), or remove `port` so that the runner picks a free one")),
            );
        }
    }

    fn url(&mut self, engine: &str, url: &str) {
        let Some(authority) = authority(url) else {
            return;
        };
        let reachable = authority
            .to_socket_addrs()
            .ok()
            .into_iter()
            .flatten()
            .any(|addr| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok());
        if !reachable {
            self.push(
                Severity::Warning,
                &["engines", engine, "url"],
                format!("nothing answers at {url} now"),
                Some("start the server before the run (it is not started by the runner), or fix `url`".into()),
            );
        }
    }

    /// Whether the results directory (or where it would be created) is writable, asked without writing;
    /// the run proves it by writing once the checks pass ([`ensure_writable`]).
    fn results_dir(&mut self, dir: &Path) {
        let at = ["results_dir"];
        let existing = existing_ancestor(dir);
        let writable = nix::unistd::access(&existing, nix::unistd::AccessFlags::W_OK)
            .map_err(std::io::Error::from);
        if let Err(e) = writable {
            self.push(
                Severity::Error,
                &at,
                format!("results_dir {} is not writable: {e}", dir.display()),
                Some("choose another `results_dir` or fix the permissions".into()),
            );
            return;
        }
        if let Ok(stat) = nix::sys::statvfs::statvfs(&existing) {
            let free = stat.blocks_available().saturating_mul(stat.fragment_size());
            if free < LOW_SPACE_BYTES {
                self.push(
                    Severity::Warning,
                    &at,
                    format!(
                        "only {:.1} GiB free where results go ({})",
                        free as f64 / f64::from(1u32 << 30),
                        existing.display()
                    ),
                    Some("free some space or choose another `results_dir`: every request of every cell is stored".into()),
                );
            }
        }
    }
}

/// Creates the results directory and proves a file can be written in it.
pub fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).and_then(|()| tempfile::NamedTempFile::new_in(dir).map(drop))
}

/// `dir` or its nearest ancestor that exists (where the results directory would be created).
fn existing_ancestor(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute
        .ancestors()
        .find(|p| p.exists())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

/// A checkpoint path the runner can check: absolute, or explicitly relative. Anything else may be a
/// model id the engine downloads (`Qwen/Qwen3-14B-FP8`).
fn looks_local(path: &str) -> bool {
    path.starts_with('/') || path.starts_with("./") || path.starts_with("../")
}

/// Index of the program among a shell script's words, past `VAR=value` assignments and `exec`; `Err`
/// with the first word when that is not a program (a builtin, a variable, a subshell).
fn script_program(words: &[String]) -> Result<usize, String> {
    const NOT_PROGRAMS: &[&str] = &[
        "cd", "source", ".", "eval", "export", "set", "ulimit", "if", "for", "while", "until",
        "case", "{", "(", "!", "time",
    ];
    let is_assignment = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let mut i = 0;
    while i < words.len() && (is_assignment(&words[i]) || words[i] == "exec") {
        i += 1;
    }
    match words.get(i) {
        Some(w) if NOT_PROGRAMS.contains(&w.as_str()) || w.contains(['$', '`', '(']) => {
            Err(w.clone())
        }
        Some(_) => Ok(i),
        None => Err(words.first().cloned().unwrap_or_default()),
    }
}

/// `python -m package.module …`: the top-level package to look for.
fn python_module(program: &Path, words: &[String]) -> Option<String> {
    let name = program.file_name()?.to_string_lossy();
    if !name.starts_with("python") || words.get(1).map(String::as_str) != Some("-m") {
        return None;
    }
    let module = words.get(2)?;
    module.split('.').next().map(str::to_string)
}

/// `host:port` of an http(s) URL, for a connection attempt.
fn authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host_port = rest.split(['/', '?', '#']).next()?;
    let host_port = host_port.rsplit('@').next()?;
    if host_port.is_empty() {
        return None;
    }
    let has_port = host_port.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !host_port.ends_with(']')
    });
    Some(if has_port {
        host_port.to_string()
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{host_port}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        crate::shell::words(s).unwrap()
    }

    #[test]
    fn a_scripts_program_is_found_past_assignments_and_exec() {
        assert_eq!(
            script_program(&words("HF_TOKEN=x A=1 exec vllm serve")),
            Ok(3)
        );
        assert_eq!(script_program(&words("vllm serve & wait")), Ok(0));
        assert_eq!(script_program(&words("cd /x && vllm")), Err("cd".into()));
        assert_eq!(script_program(&words("$VLLM serve")), Err("$VLLM".into()));
    }

    #[test]
    fn python_modules_name_their_package() {
        let w = words("python3 -m sglang.launch_server --port 1");
        assert_eq!(
            python_module(Path::new("/usr/bin/python3"), &w).as_deref(),
            Some("sglang")
        );
        assert_eq!(python_module(Path::new("/usr/bin/vllm"), &w), None);
        assert_eq!(
            python_module(Path::new("/usr/bin/python3"), &words("python3 x.py")),
            None
        );
    }

    #[test]
    fn local_paths_and_hub_ids() {
        assert!(looks_local("/mnt/models/q"));
        assert!(looks_local("./models/q") && looks_local("../q"));
        assert!(!looks_local("Qwen/Qwen3-14B-FP8"));
        assert!(!looks_local("sim/demo-14b-fp8"));
    }

    #[test]
    fn url_authorities() {
        assert_eq!(
            authority("http://127.0.0.1:8000/v1").as_deref(),
            Some("127.0.0.1:8000")
        );
        assert_eq!(authority("https://u:p@host/x").as_deref(), Some("host:443"));
        assert_eq!(authority("http://host").as_deref(), Some("host:80"));
        assert_eq!(authority("http://[::1]:9").as_deref(), Some("[::1]:9"));
        assert_eq!(authority("nonsense"), None);
    }
}
