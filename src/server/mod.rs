//! Supervise one engine server: start its process group, wait until it is ready, stop it so that nothing
//! of it survives, and clean up after a runner that was killed hard. This is the only module that
//! starts, signals or waits for child processes (the runner's own signals are `crate::signals`).
//!
//! The lifecycle, as the orchestrator drives it (all plain data and async fns):
//!
//! ```text
//! cleanup_stale(pid_file)?                       once, before the first server of a run
//! port = spec port or pick_free_port()           render the command with it, build a ServerSpec
//! let mut s = start(&spec, &pid_file).await?     PortInUse / Spawn / Io errors: nothing is running
//! match s.wait_ready(&cancel).await {            ExitedEarly / ReadyTimeout / SmokeFailed / Interrupted
//!     Ok(ready) => { /* measure */ }
//!     Err(e) => { /* record e, e.log_tail() */ }
//! }
//! let teardown = s.stop().await;                 always, also after a wait_ready error
//! ```
//! A second Ctrl-C makes the loop that owns the server call [`KillHandle::kill_now`] (SIGKILL to the group
//! at once) while `wait_ready` or `stop` is in progress; `stop` then finds the group gone and reports the
//! teardown as escalated. `url = …` engines use [`attach`] instead.
//!
//! Invariants:
//! - Every server runs in its own session and process group (pgid = pid of the spawned process), stdin
//!   closed, stdout and stderr appended to its log file. The direct child gets `PR_SET_PDEATHSIG(SIGKILL)`
//!   so it dies with the runner; its descendants are found through the pid file on the next run.
//!   (The death signal follows the spawning *thread*: call [`start`] from an async task, never from
//!   `spawn_blocking`, whose threads retire when idle.)
//! - Teardown is SIGTERM to the group, the grace period, SIGKILL to the group, then a wait until `/proc`
//!   shows no live process with that group id and the port can be bound again; on a GPU host also until
//!   `nvidia-smi` shows the memory released, each wait bounded.
//! - A `RunningServer` dropped without `stop` SIGKILLs its group (a last resort after a panic); the pid
//!   file then stays for the next run to check.
//! - We never signal a process group that is not provably ours: groups are named by leader pid *and*
//!   start time.

// A start error happens at most once per server configuration and carries the log tail a person needs:
// its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod gpu;
mod logs;
mod pidfile;
mod port;
pub mod procs;
mod version;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use gpu::GpuProbe;
pub use logs::TAIL_LINES;
pub use pidfile::{PidFile, StaleCleanup, cleanup_stale, this_host};
pub use port::{
    PortAllocator, pick_free_port, port_in_use, port_in_use_async, says_address_in_use,
};
pub use version::engine_version;

pub use crate::tool::describe_status;

/// How often the ready endpoint is asked (from 25 ms, doubling up to 250 ms: a server that is ready
/// at once is not kept waiting a whole interval), and how long one answer may take.
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(25);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// After SIGKILL, how long we wait for the group to vanish (only uninterruptible sleep delays it).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a tail read after an exit waits for the log copier (only with secrets to hide).
const LOG_DRAIN_WAIT: Duration = Duration::from_millis(500);
/// After the group is gone, how long the kernel may take to release the listening socket.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// One short completion sent before a server is declared ready: it proves the engine can generate, not
/// just answer HTTP. Success is HTTP 200 with a non-empty answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmokeRequest {
    /// Path below the base URL, e.g. `/v1/completions`.
    pub path: String,
    pub body: serde_json::Value,
    /// Sent as `Authorization: Bearer …` (a server started with `--api-key` refuses the request
    /// without it). Readiness polls go without: the engines serve their health endpoint to anyone.
    #[serde(skip)]
    pub api_key: Option<crate::secret::ApiKey>,
}

impl SmokeRequest {
    /// A 4-token, non-streamed, greedy completion for `model` on `/v1/completions`.
    pub fn completion(model: &str) -> SmokeRequest {
        SmokeRequest {
            path: "/v1/completions".into(),
            body: serde_json::json!({
                "model": model,
                "prompt": "Hello",
                "max_tokens": 4,
                "temperature": 0,
                "stream": false,
            }),
            api_key: None,
        }
    }

    pub fn with_api_key(mut self, key: Option<crate::secret::ApiKey>) -> SmokeRequest {
        self.api_key = key;
        self
    }
}

/// Everything needed to run one server configuration. Built by the orchestrator from the rendered plan.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The server id of the plan (for messages and the pid file).
    pub id: String,
    /// Program and arguments; with `shell`, the words are joined into one `sh -c` script.
    pub argv: Vec<String>,
    /// Values hidden wherever the command is shown (log header, messages); `argv` is what runs.
    pub secrets: crate::secret::Secrets,
    pub shell: bool,
    /// Added to the runner's own environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    /// The port the command was rendered with (0: not known, no check).
    pub port: u16,
    /// e.g. `http://127.0.0.1:8000`.
    pub base_url: String,
    /// e.g. `/health` (never `/v1/models`, which SGLang answers before it can generate).
    pub ready_path: String,
    pub ready_timeout: Duration,
    pub smoke: Option<SmokeRequest>,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    pub log_path: PathBuf,
    /// Upper bound of the wait for GPU memory after teardown (0: do not wait).
    pub gpu_release_timeout: Duration,
}

impl ServerSpec {
    /// The command as a person would type it, secrets redacted (for messages and the log header).
    pub fn command_line(&self) -> String {
        crate::shell::shown_command(&self.argv, self.shell, &self.secrets)
    }

    fn url(&self, path: &str) -> String {
        join_url(&self.base_url, path)
    }
}

fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The GPU indexes of `CUDA_VISIBLE_DEVICES` in a server's environment; `None` when it is not set or
/// names GPUs otherwise (UUIDs): then every GPU is watched.
fn visible_gpus(env: &[(String, String)]) -> Option<Vec<usize>> {
    let (_, value) = env
        .iter()
        .rev()
        .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")?;
    value
        .split(',')
        .map(|id| id.trim().parse::<usize>().ok())
        .collect()
}

/// A server declared ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadyInfo {
    /// From spawn (or from the start of `attach`) to ready, smoke request included.
    pub seconds: f64,
    /// `Some(true)` when a smoke request was sent and answered (a failed one is an error instead).
    pub smoke_ok: Option<bool>,
    /// How long the smoke request took.
    pub smoke_s: Option<f64>,
}

/// What stopping a server took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Teardown {
    /// From the first signal until the group was gone and the port free (GPU wait excluded).
    pub seconds: f64,
    /// SIGKILL was needed (the grace period ran out, or `kill_now` was called).
    pub escalated: bool,
    /// Processes of the group still alive after everything (should be empty).
    pub leftovers: Vec<u32>,
    pub port_freed: bool,
    /// Seconds waited for GPU memory, on a GPU host.
    pub gpu_wait_s: Option<f64>,
    /// How the spawned process ended, e.g. `exit code 0` or `killed by SIGKILL`.
    pub exit_status: Option<String>,
}

/// Why a server could not be started or declared ready. Every message names what a person needs to act:
/// the port, the command, the log file.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "port {port} is already in use by another program; stop it, or leave `port` out of the engine so that the runner picks a free one"
    )]
    PortInUse { port: u16 },
    #[error("could not start `{command}`: {source}{}", spawn_hint(source))]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "server `{id}` exited ({status}) {after:.1} s after start, before it was ready{}",
        where_to_look(log_path.as_deref(), log_tail)
    )]
    ExitedEarly {
        id: String,
        status: String,
        after: f64,
        log_path: Option<PathBuf>,
        log_tail: Vec<String>,
    },
    #[error(
        "server `{id}` was not ready after {after:.1} s (last answer of {url}: {last_seen}); raise `ready_timeout` if loading takes longer{}",
        where_to_look(log_path.as_deref(), log_tail)
    )]
    ReadyTimeout {
        id: String,
        after: f64,
        url: String,
        last_seen: String,
        log_path: Option<PathBuf>,
        log_tail: Vec<String>,
    },
    #[error(
        "server `{id}` is up but its smoke request to {url} failed: {reason}{}",
        where_to_look(log_path.as_deref(), log_tail)
    )]
    SmokeFailed {
        id: String,
        url: String,
        reason: String,
        log_path: Option<PathBuf>,
        log_tail: Vec<String>,
    },
    #[error("interrupted while waiting for the server to become ready")]
    Interrupted,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The last lines of the server's output, when a server process was involved.
    pub fn log_tail(&self) -> &[String] {
        match self {
            StartError::ExitedEarly { log_tail, .. }
            | StartError::ReadyTimeout { log_tail, .. }
            | StartError::SmokeFailed { log_tail, .. } => log_tail,
            _ => &[],
        }
    }
}

fn spawn_hint(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            " (is the program installed and on PATH, and does `workdir` exist?)"
        }
        std::io::ErrorKind::PermissionDenied => " (is the program executable?)",
        _ => "",
    }
}

fn where_to_look(log_path: Option<&Path>, tail: &[String]) -> String {
    let mut out = String::new();
    if let Some(path) = log_path {
        out.push_str(&format!("; its output is in {}", path.display()));
    }
    if let Some(last) = tail.last() {
        out.push_str(&format!("; last line: {last}"));
    }
    out
}

fn http_client() -> Result<reqwest::Client, StartError> {
    // No proxy: engines run on loopback and a proxy from the environment would answer for them. No idle
    // connections: an open keep-alive socket can hold up an engine's graceful shutdown.
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| StartError::Io {
            what: "could not set up the HTTP client".into(),
            source: std::io::Error::other(e),
        })
}

/// A spawned server: its process group, log and pid file. Call [`RunningServer::stop`] in every case.
#[derive(Debug)]
pub struct RunningServer {
    spec: ServerSpec,
    child: tokio::process::Child,
    pgid: i32,
    leader_start_ticks: u64,
    pid_file: PathBuf,
    log_since: u64,
    /// Whether the server's output has reached the log (a copier thread may sit in between).
    log_drain: logs::LogDrain,
    started: Instant,
    client: reqwest::Client,
    gpu: Option<GpuProbe>,
    gpu_baseline: Option<Vec<u64>>,
    /// Set once SIGKILL was sent, by `stop` or through a [`KillHandle`]: the teardown was escalated.
    killed: Arc<AtomicBool>,
    stopped: bool,
}

/// Kills a server's process group while the [`RunningServer`] is busy elsewhere (waiting for readiness,
/// in the middle of `stop`); see [`RunningServer::kill_handle`]. It checks the group is still ours (leader
/// start time), so a recycled pid is never signalled, and marks the teardown as escalated.
#[derive(Debug, Clone)]
pub struct KillHandle {
    pgid: i32,
    leader_start_ticks: u64,
    killed: Arc<AtomicBool>,
}

impl KillHandle {
    /// SIGKILL to the whole group at once. Does not wait: the server's `stop` still does that, and
    /// reports the teardown as escalated.
    pub fn kill_now(&self) {
        self.killed.store(true, Ordering::SeqCst);
        signal_if_ours(self.pgid, self.leader_start_ticks, Signal::SIGKILL);
    }
}

/// Starts the server of `spec` in its own session and process group and records it in `pid_file`.
/// Returns as soon as the process runs; readiness is [`RunningServer::wait_ready`].
pub async fn start(spec: &ServerSpec, pid_file: &Path) -> Result<RunningServer, StartError> {
    if spec.port != 0 && port_in_use_async(spec.port).await {
        return Err(StartError::PortInUse { port: spec.port });
    }
    let client = http_client()?;
    let command = spec.command_line();
    let header = format!(
        "==> runner: starting server `{}` at {}: {command}",
        spec.id,
        crate::store::now_rfc3339()
    );
    let io_err = |what: String| {
        move |source| StartError::Io {
            what: what.clone(),
            source,
        }
    };
    let (log, log_since) = logs::open(&spec.log_path, &header).map_err(io_err(format!(
        "could not open the server log {}",
        spec.log_path.display()
    )))?;
    let output = if spec.secrets.is_empty() {
        logs::Output::direct(log)
    } else {
        logs::Output::redacting(log, &spec.secrets)
    }
    .map_err(io_err(
        "could not connect the server's output to its log".into(),
    ))?;
    let log_drain = output.drained();

    // The memory in use before the server exists is what "released" means after it is gone; only the
    // GPUs this server was given count (others may be busy with servers running beside it).
    let gpu = GpuProbe::find().map(|probe| probe.only(visible_gpus(&spec.env)));
    let gpu_baseline = match &gpu {
        Some(probe) if !spec.gpu_release_timeout.is_zero() => probe.memory_used().await,
        _ => None,
    };

    let mut cmd = if spec.shell {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(spec.argv.join(" "));
        c
    } else {
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(StartError::Spawn {
                command,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let mut c = tokio::process::Command::new(program);
        c.args(args);
        c
    };
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(output.stdout)
        .stderr(output.stderr)
        .kill_on_drop(false);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    let runner_pid = nix::unistd::Pid::this();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls are
    // allowed (another thread of the runner may have held the allocator's lock at the fork). It makes
    // three system calls (setsid, prctl, getppid) and builds its errors from raw errno values, which
    // `io::Error` stores inline: nothing in it allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The runner may have died before the death signal was armed: then nobody would stop us.
            // (ESRCH, "no such process": our parent is gone; nobody reads this error but the kernel.)
            if nix::unistd::getppid() != runner_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| StartError::Spawn {
        command: command.clone(),
        source,
    })?;
    let Some(pid) = child.id() else {
        return Err(StartError::Spawn {
            command,
            source: std::io::Error::other("the process vanished right after it was spawned"),
        });
    };
    let pgid = pid as i32;
    let record = PidFile::new(&spec.id, pgid, spec.port);
    let server = RunningServer {
        spec: spec.clone(),
        child,
        pgid,
        leader_start_ticks: record.server_start_ticks,
        pid_file: pid_file.to_path_buf(),
        log_since,
        log_drain,
        started: Instant::now(),
        client,
        gpu,
        gpu_baseline,
        killed: Arc::new(AtomicBool::new(false)),
        stopped: false,
    };
    if let Err(source) = record.write(pid_file) {
        // Without the pid file a hard-killed runner would leave this group unfindable: do not go on.
        server.stop().await;
        return Err(StartError::Io {
            what: format!("could not write the pid file {}", pid_file.display()),
            source,
        });
    }
    Ok(server)
}

/// Readiness of a server that the runner did not start (`url = …` engines): same polling and smoke
/// request as [`RunningServer::wait_ready`], without a process to watch.
pub async fn attach(
    url: &str,
    ready_path: &str,
    ready_timeout: Duration,
    smoke: Option<&SmokeRequest>,
    cancel: &CancellationToken,
) -> Result<ReadyInfo, StartError> {
    let client = http_client()?;
    let probe = Readiness {
        id: url,
        client: &client,
        base_url: url,
        ready_url: join_url(url, ready_path),
        smoke,
        last_seen: Mutex::new("no answer yet".into()),
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + ready_timeout);
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(StartError::Interrupted),
        r = tokio::time::timeout_at(deadline, probe.run()) => match r {
            Ok(smoke) => probe.ready(started, smoke, None, Vec::new),
            Err(_) => Err(probe.timed_out(started, None, Vec::new())),
        },
    }
}

/// One readiness check: poll the ready endpoint until 200, then the optional smoke request.
struct Readiness<'a> {
    id: &'a str,
    client: &'a reqwest::Client,
    base_url: &'a str,
    ready_url: String,
    smoke: Option<&'a SmokeRequest>,
    /// What the last poll saw, for the timeout message (a poll is dropped mid-flight at the deadline).
    last_seen: Mutex<String>,
}

type SmokeOutcome = Result<Option<f64>, (String, String)>;

impl Readiness<'_> {
    fn note(&self, seen: String) {
        if let Ok(mut last) = self.last_seen.lock() {
            *last = seen;
        }
    }

    /// Polls until ready, then runs the smoke request: `Ok(Some(seconds))` for a good smoke answer,
    /// `Err((url, reason))` for a bad one. Never returns while the server is not ready: the caller bounds
    /// it with the deadline.
    async fn run(&self) -> SmokeOutcome {
        let mut interval = FIRST_POLL_INTERVAL;
        loop {
            match self
                .client
                .get(&self.ready_url)
                .timeout(POLL_TIMEOUT)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => self.note(format!("HTTP {}", resp.status())),
                Err(e) if e.is_connect() => self.note("connection refused".into()),
                Err(e) if e.is_timeout() => self.note("no answer within 2 s".into()),
                Err(e) => self.note(e.to_string()),
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(POLL_INTERVAL);
        }
        let Some(smoke) = self.smoke else {
            return Ok(None);
        };
        let url = join_url(self.base_url, &smoke.path);
        let started = Instant::now();
        let fail = |reason: String| (url.clone(), reason);
        let mut request = self.client.post(&url).json(&smoke.body);
        if let Some(key) = &smoke.api_key {
            request = request.header(reqwest::header::AUTHORIZATION, key.bearer());
        }
        let resp = request.send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}: {}", snippet(&text))));
        }
        if !has_answer(&text) {
            return Err(fail(format!(
                "no generated text in the answer: {}",
                snippet(&text)
            )));
        }
        Ok(Some(started.elapsed().as_secs_f64()))
    }

    fn ready(
        &self,
        started: Instant,
        smoke: SmokeOutcome,
        log_path: Option<&Path>,
        tail: impl FnOnce() -> Vec<String>,
    ) -> Result<ReadyInfo, StartError> {
        match smoke {
            Ok(smoke_s) => Ok(ReadyInfo {
                seconds: started.elapsed().as_secs_f64(),
                smoke_ok: smoke_s.map(|_| true),
                smoke_s,
            }),
            Err((url, reason)) => Err(StartError::SmokeFailed {
                id: self.id.to_string(),
                url,
                reason,
                log_path: log_path.map(Path::to_path_buf),
                log_tail: tail(),
            }),
        }
    }

    fn timed_out(
        &self,
        started: Instant,
        log_path: Option<&Path>,
        log_tail: Vec<String>,
    ) -> StartError {
        StartError::ReadyTimeout {
            id: self.id.to_string(),
            after: started.elapsed().as_secs_f64(),
            url: self.ready_url.clone(),
            last_seen: self.last_seen.lock().map(|s| s.clone()).unwrap_or_default(),
            log_path: log_path.map(Path::to_path_buf),
            log_tail,
        }
    }
}

/// A completion answer counts when it has generated text or at least one generated token.
fn has_answer(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let choice = &v["choices"][0];
    let content = choice["text"]
        .as_str()
        .or_else(|| choice["message"]["content"].as_str())
        .unwrap_or("");
    !content.is_empty() || v["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

impl RunningServer {
    /// The process group id (= pid of the spawned process).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// The last lines the server wrote since this start (at most [`TAIL_LINES`]).
    pub fn log_tail(&self) -> Vec<String> {
        logs::tail(&self.spec.log_path, self.log_since)
    }

    /// Polls the ready endpoint (every 250 ms once past the first second) while watching the process, then sends the smoke request.
    /// Fails at once if the process exits, after `ready_timeout` (counted from the spawn), or when
    /// `cancel` fires. After an error the server may still run: call [`RunningServer::stop`].
    pub async fn wait_ready(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<ReadyInfo, StartError> {
        let probe = Readiness {
            id: &self.spec.id,
            client: &self.client,
            base_url: &self.spec.base_url,
            ready_url: self.spec.url(&self.spec.ready_path),
            smoke: self.spec.smoke.as_ref(),
            last_seen: Mutex::new("no answer yet".into()),
        };
        let log_path = Some(self.spec.log_path.as_path());
        let drain = self.log_drain.clone();
        let tail = || {
            // The server's processes are gone or going: give its last words time to reach the file.
            drain.wait(LOG_DRAIN_WAIT);
            logs::tail(&self.spec.log_path, self.log_since)
        };
        let deadline = tokio::time::Instant::from_std(self.started + self.spec.ready_timeout);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StartError::Interrupted),
            status = self.child.wait() => Err(StartError::ExitedEarly {
                id: self.spec.id.clone(),
                status: match status {
                    Ok(s) => describe_status(&s),
                    Err(e) => format!("status unknown: {e}"),
                },
                after: self.started.elapsed().as_secs_f64(),
                log_path: log_path.map(Path::to_path_buf),
                log_tail: tail(),
            }),
            r = tokio::time::timeout_at(deadline, probe.run()) => match r {
                Ok(smoke) => probe.ready(self.started, smoke, log_path, tail),
                Err(_) => Err(probe.timed_out(self.started, log_path, tail())),
            },
        }
    }

    fn signal(&self, signal: Signal) -> bool {
        signal_if_ours(self.pgid, self.leader_start_ticks, signal)
    }

    /// A handle that kills the group while this server is borrowed by one of its own phases (the second
    /// Ctrl-C during `wait_ready` or `stop`).
    pub fn kill_handle(&self) -> KillHandle {
        KillHandle {
            pgid: self.pgid,
            leader_start_ticks: self.leader_start_ticks,
            killed: Arc::clone(&self.killed),
        }
    }

    /// The leader's exit status if it has exited (checked without waiting): a server that died under load
    /// invalidates the load point.
    pub fn exit_status(&mut self) -> Option<String> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| describe_status(&s))
    }

    /// SIGKILL to the whole group at once (the second Ctrl-C). Does not wait: `stop` still does that.
    pub fn kill_now(&self) {
        self.kill_handle().kill_now();
    }

    /// Tears the server down: SIGTERM to the group, up to `stop_grace` for it to go, SIGKILL to the group,
    /// then waits (bounded) until no process of the group is left and the port is free, and on a GPU host
    /// until the GPU memory is released. Removes the pid file once the group is gone.
    pub async fn stop(mut self) -> Teardown {
        let t0 = Instant::now();
        let (pgid, ticks) = (self.pgid, self.leader_start_ticks);
        // Who holds GPU memory is matched against these pids; the leader may have exited already.
        let mut ours = procs::group_members_async(pgid).await;
        ours.push(pgid as u32);
        let child = &mut self.child;
        let mut reap = || {
            let _ = child.try_wait();
        };
        let mut left = procs::wait_group_gone(pgid, Duration::ZERO, &mut reap).await;
        if !left.is_empty() {
            let grace = if self.killed.load(Ordering::SeqCst) {
                Duration::ZERO
            } else {
                self.spec.stop_grace
            };
            // The whole group, not just the leader: the engine's workers may have been re-parented away
            // from it.
            if signal_if_ours(pgid, ticks, Signal::SIGTERM) {
                left = procs::wait_group_gone(pgid, grace, &mut reap).await;
            }
            if !left.is_empty() {
                self.killed.store(true, Ordering::SeqCst);
                signal_if_ours(pgid, ticks, Signal::SIGKILL);
                left = procs::wait_group_gone(pgid, KILL_WAIT, &mut reap).await;
            }
        }
        let exit_status = self
            .child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| describe_status(&s));
        let port_freed = self.spec.port == 0 || wait_port_free(self.spec.port, PORT_WAIT).await;
        let seconds = t0.elapsed().as_secs_f64();
        let gpu_wait_s = match &self.gpu {
            Some(probe) if !self.spec.gpu_release_timeout.is_zero() => Some(
                probe
                    .wait_released(
                        &ours,
                        self.gpu_baseline.as_deref(),
                        self.spec.gpu_release_timeout,
                    )
                    .await,
            ),
            _ => None,
        };
        if left.is_empty() {
            // Nothing to clean up any more; a missing file is fine (the orchestrator may have removed it).
            let _ = std::fs::remove_file(&self.pid_file);
        }
        self.stopped = true;
        Teardown {
            seconds,
            escalated: self.killed.load(Ordering::SeqCst),
            leftovers: left,
            port_freed,
            gpu_wait_s,
            exit_status,
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !self.stopped {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Signals group `pgid` only while it is provably ours: its leader is the process we started (same start
/// time), or the leader is gone and members remain (Linux does not reuse a pid that is still a group id).
fn signal_if_ours(pgid: i32, leader_start_ticks: u64, signal: Signal) -> bool {
    let ours = u32::try_from(pgid)
        .ok()
        .and_then(procs::stat)
        .is_none_or(|leader| leader.start_ticks == leader_start_ticks);
    ours && procs::signal_group(pgid, signal)
}

async fn wait_port_free(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !port_in_use_async(port).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_hides_secrets_and_urls_join() {
        let mut secrets = crate::secret::Secrets::default();
        secrets.add("sk-1");
        let spec = ServerSpec {
            id: "s".into(),
            argv: vec!["vllm".into(), "--api-key".into(), "sk-1".into()],
            secrets,
            shell: false,
            env: vec![],
            workdir: None,
            port: 0,
            base_url: "http://127.0.0.1:1/".into(),
            ready_path: "health".into(),
            ready_timeout: Duration::from_secs(1),
            smoke: None,
            stop_grace: Duration::from_secs(1),
            log_path: "l".into(),
            gpu_release_timeout: Duration::ZERO,
        };
        assert_eq!(spec.command_line(), "vllm --api-key '<redacted>'");
        assert_eq!(spec.url(&spec.ready_path), "http://127.0.0.1:1/health");
    }

    #[test]
    fn answers_with_text_or_tokens_count() {
        assert!(has_answer(r#"{"choices":[{"text":" world"}]}"#));
        assert!(has_answer(r#"{"choices":[{"message":{"content":"hi"}}]}"#));
        assert!(has_answer(
            r#"{"choices":[{"text":""}],"usage":{"completion_tokens":1}}"#
        ));
        assert!(!has_answer(
            r#"{"choices":[{"text":""}],"usage":{"completion_tokens":0}}"#
        ));
        assert!(!has_answer(r#"{"choices":[]}"#));
        assert!(!has_answer("<html>"));
    }

    #[test]
    fn messages_name_port_log_and_last_line() {
        let e = StartError::PortInUse { port: 8123 };
        assert!(e.to_string().contains("8123"));
        let e = StartError::ExitedEarly {
            id: "vllm/q".into(),
            status: "exit code 3".into(),
            after: 0.25,
            log_path: Some("/r/servers/q/server.log".into()),
            log_tail: vec!["a".into(), "CUDA out of memory".into()],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("exit code 3") && msg.contains("0.2 s"),
            "{msg}"
        );
        assert!(msg.contains("/r/servers/q/server.log"), "{msg}");
        assert!(msg.ends_with("last line: CUDA out of memory"), "{msg}");
        assert_eq!(e.log_tail().len(), 2);
        let e = StartError::Spawn {
            command: "vlm serve".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(e.to_string().contains("`vlm serve`") && e.to_string().contains("PATH"));
    }
}
