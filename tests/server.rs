//! The server lifecycle against fixture programs (tests/fixtures/) that misbehave the way engines do:
//! never ready, exit at once, bind late, ignore SIGTERM, leave grandchildren behind, flood their output.
//! After every teardown we check through /proc that no process of the group survives and that the port
//! can be bound again. Timeouts are generous: the machine running the tests may be busy.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runner::server::{
    self, PidFile, ReadyInfo, RunningServer, ServerSpec, SmokeRequest, StartError, Teardown, procs,
};
use tokio_util::sync::CancellationToken;

use crate::common::Guard;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A temporary results directory with one server's log and the pid file.
struct Case {
    dir: tempfile::TempDir,
    port: u16,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            port: server::pick_free_port().unwrap(),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("runner.pid")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("servers/fixture/server.log")
    }

    /// A fixture started as `FIXTURE PORT ARGS…`.
    fn spec(&self, name: &str, args: &[&str]) -> ServerSpec {
        let mut argv = vec![fixture(name), self.port.to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        ServerSpec {
            id: format!("fixture/{name}"),
            secrets: Default::default(),
            argv,
            shell: false,
            env: Vec::new(),
            workdir: None,
            port: self.port,
            base_url: format!("http://127.0.0.1:{}", self.port),
            ready_path: "/health".into(),
            ready_timeout: Duration::from_secs(60),
            smoke: None,
            stop_grace: Duration::from_secs(5),
            log_path: self.log(),
            gpu_release_timeout: Duration::ZERO,
        }
    }

    async fn start(&self, spec: &ServerSpec) -> RunningServer {
        server::start(spec, &self.pid_file()).await.unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// Stops the server and checks the invariants every teardown must leave behind.
async fn stop_and_check(case: &Case, server: RunningServer) -> Teardown {
    let pgid = server.pgid();
    let teardown = server.stop().await;
    assert!(teardown.leftovers.is_empty(), "survivors: {teardown:?}");
    assert_eq!(
        procs::group_members(pgid),
        Vec::<u32>::new(),
        "group {pgid} still has processes"
    );
    assert!(teardown.port_freed, "{teardown:?}");
    TcpListener::bind((Ipv4Addr::LOCALHOST, case.port)).expect("port can be bound again");
    assert!(!case.pid_file().exists(), "pid file left behind");
    teardown
}

async fn ready(server: &mut RunningServer) -> ReadyInfo {
    match server.wait_ready(&CancellationToken::new()).await {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{}", server.log_tail().join("\n")),
    }
}

#[tokio::test]
async fn never_ready_times_out_and_leaves_nothing() {
    let case = Case::new();
    let mut spec = case.spec("never-ready", &[]);
    spec.ready_timeout = Duration::from_secs(2);
    let mut server = case.start(&spec).await;
    let err = server
        .wait_ready(&CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        StartError::ReadyTimeout {
            after, last_seen, ..
        } => {
            assert!(*after >= 2.0, "gave up early: {after}");
            assert!(*after < 30.0, "timeout not honoured: {after}");
            assert!(last_seen.contains("503"), "{last_seen}");
        }
        other => panic!("expected a ready timeout, got {other}"),
    }
    assert!(
        err.to_string().contains(&case.log().display().to_string()),
        "{err}"
    );
    let teardown = stop_and_check(&case, server).await;
    assert!(!teardown.escalated, "python exits on SIGTERM: {teardown:?}");
    assert!(case.log_text().contains("never-ready: loading weights"));
}

#[tokio::test]
async fn exit_at_once_fails_fast_with_status_and_tail() {
    let case = Case::new();
    let spec = case.spec("exit-at-once", &[]);
    let t0 = Instant::now();
    let mut server = case.start(&spec).await;
    let err = server
        .wait_ready(&CancellationToken::new())
        .await
        .unwrap_err();
    // Well before the 60 s ready timeout: the exit is noticed, not waited out.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    match &err {
        StartError::ExitedEarly {
            status, log_tail, ..
        } => {
            assert_eq!(status, "exit code 3");
            assert_eq!(
                log_tail,
                &[
                    "exit-at-once: starting",
                    "exit-at-once: error: CUDA driver not found"
                ]
            );
        }
        other => panic!("expected an early exit, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("exit code 3") && msg.contains("CUDA driver not found"),
        "{msg}"
    );
    let teardown = stop_and_check(&case, server).await;
    assert_eq!(teardown.exit_status.as_deref(), Some("exit code 3"));
}

#[tokio::test]
async fn late_binder_is_ready_once_it_listens_and_answers_the_smoke_request() {
    let case = Case::new();
    let mut spec = case.spec("late-binder", &[]);
    spec.smoke = Some(SmokeRequest::completion("m"));
    let mut server = case.start(&spec).await;
    let info = ready(&mut server).await;
    assert!(
        info.seconds >= 1.4,
        "ready before the port was bound: {info:?}"
    );
    assert_eq!(info.smoke_ok, Some(true));
    let teardown = stop_and_check(&case, server).await;
    assert!(!teardown.escalated, "{teardown:?}");
}

#[tokio::test]
async fn sigterm_ignored_is_escalated_after_the_grace_period() {
    let case = Case::new();
    let mut spec = case.spec("ignores-sigterm", &[]);
    spec.stop_grace = Duration::from_secs(1);
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    let teardown = stop_and_check(&case, server).await;
    assert!(teardown.escalated, "{teardown:?}");
    assert!(
        teardown.seconds >= 1.0,
        "killed before the grace period ended: {teardown:?}"
    );
    assert_eq!(teardown.exit_status.as_deref(), Some("killed by SIGKILL"));
    assert!(
        case.log_text().contains("got SIGTERM, ignoring it"),
        "TERM never arrived"
    );
}

#[tokio::test]
async fn grandchildren_that_outlive_their_parent_are_killed_and_release_the_port() {
    let case = Case::new();
    let mut spec = case.spec("grandchildren", &[]);
    spec.stop_grace = Duration::from_secs(1);
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    let members = procs::group_members(server.pgid());
    assert!(
        members.len() >= 3,
        "parent and two workers expected: {members:?}"
    );
    let teardown = stop_and_check(&case, server).await;
    // The parent obeyed SIGTERM; its workers (holding the listening socket) needed SIGKILL.
    assert_eq!(teardown.exit_status.as_deref(), Some("exit code 0"));
    assert!(teardown.escalated, "{teardown:?}");
    for pid in members {
        assert!(!procs::alive(pid), "{pid} survived");
    }
}

#[tokio::test]
async fn chatty_output_is_all_in_the_log_and_the_tail_has_the_last_lines() {
    let case = Case::new();
    let spec = case.spec("chatty", &[]);
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    let size = std::fs::metadata(case.log()).unwrap().len();
    assert!(size >= 8 * 1024 * 1024, "log holds {size} bytes");
    let tail = server.log_tail();
    assert!(tail.len() <= server::TAIL_LINES);
    assert!(
        tail.iter().any(|l| l == "chatty: LAST LINE before serving"),
        "{:?}",
        &tail[tail.len().saturating_sub(3)..]
    );
    assert!(tail.iter().any(|l| l == "chatty: a line on stderr"));
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn a_taken_port_is_refused_before_anything_starts() {
    let case = Case::new();
    let _taken = TcpListener::bind((Ipv4Addr::LOCALHOST, case.port)).unwrap();
    let err = server::start(&case.spec("late-binder", &[]), &case.pid_file())
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::PortInUse { port } if port == case.port));
    assert!(err.to_string().contains(&case.port.to_string()), "{err}");
    assert!(!case.pid_file().exists());
    assert!(!case.log().exists(), "nothing should have been started");
}

#[tokio::test]
async fn a_failed_smoke_request_is_an_error_with_the_answer() {
    let case = Case::new();
    let mut spec = case.spec("grandchildren", &["--smoke-fails"]);
    spec.smoke = Some(SmokeRequest::completion("m"));
    spec.stop_grace = Duration::from_secs(1);
    let mut server = case.start(&spec).await;
    let err = server
        .wait_ready(&CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        StartError::SmokeFailed { reason, url, .. } => {
            assert!(
                reason.contains("500") && reason.contains("model exploded"),
                "{reason}"
            );
            assert!(url.ends_with("/v1/completions"));
        }
        other => panic!("expected a smoke failure, got {other}"),
    }
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn cancel_interrupts_the_wait_at_once() {
    let case = Case::new();
    let spec = case.spec("never-ready", &[]);
    let mut server = case.start(&spec).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let t0 = Instant::now();
    let err = server.wait_ready(&cancel).await.unwrap_err();
    assert!(matches!(err, StartError::Interrupted), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn kill_now_skips_the_grace_period() {
    let case = Case::new();
    let mut spec = case.spec("ignores-sigterm", &[]);
    spec.stop_grace = Duration::from_secs(120);
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    server.kill_now();
    let teardown = stop_and_check(&case, server).await;
    assert!(teardown.escalated);
    assert!(
        teardown.seconds < 60.0,
        "waited for the grace period: {teardown:?}"
    );
}

#[tokio::test]
async fn the_pid_file_names_the_running_group_until_it_is_gone() {
    let case = Case::new();
    let spec = case.spec("late-binder", &[]);
    let server = case.start(&spec).await;
    let record = PidFile::read(&case.pid_file())
        .unwrap()
        .expect("pid file written at start");
    assert_eq!(record.pgid, server.pgid());
    assert_eq!(record.port, case.port);
    assert_eq!(record.runner_pid, std::process::id());
    assert_eq!(record.server_id, "fixture/late-binder");
    // Stopping before it is ready is fine too.
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn shell_env_and_workdir_reach_the_server() {
    let case = Case::new();
    let mut spec = case.spec("late-binder", &[]);
    spec.shell = true;
    spec.argv = vec![format!(
        "echo \"var=$FIXTURE_VAR in $(pwd)\"; exec ./late-binder {}",
        case.port
    )];
    spec.env = vec![("FIXTURE_VAR".into(), "hello".into())];
    spec.workdir = Some(PathBuf::from(fixture("")));
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    let dir = Path::new(&fixture("")).canonicalize().unwrap();
    assert!(
        case.log_text()
            .contains(&format!("var=hello in {}", dir.display())),
        "{}",
        case.log_text()
    );
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error_naming_the_command() {
    let case = Case::new();
    let mut spec = case.spec("late-binder", &[]);
    spec.argv = vec![
        "/nonexistent/engine-server".into(),
        "--port".into(),
        "1".into(),
    ];
    let err = server::start(&spec, &case.pid_file()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StartError::Spawn { .. }), "{msg}");
    assert!(
        msg.contains("/nonexistent/engine-server --port 1") && msg.contains("PATH"),
        "{msg}"
    );
    assert!(!case.pid_file().exists());
}

#[tokio::test]
async fn attach_checks_readiness_of_a_running_server() {
    let case = Case::new();
    let spec = case.spec("late-binder", &[]);
    let server = case.start(&spec).await;
    let cancel = CancellationToken::new();
    let smoke = SmokeRequest::completion("m");
    let info = server::attach(
        &spec.base_url,
        "/health",
        Duration::from_secs(60),
        Some(&smoke),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(info.smoke_ok, Some(true));
    stop_and_check(&case, server).await;

    // Nothing listens any more: a timeout that says so.
    let err = server::attach(
        &spec.base_url,
        "/health",
        Duration::from_secs(1),
        None,
        &cancel,
    )
    .await
    .unwrap_err();
    match err {
        StartError::ReadyTimeout { last_seen, .. } => {
            assert_eq!(last_seen, "connection refused")
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

/// Kills a process group we started by hand when the test ends, however it ends.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        procs::signal_group(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn stale_group_of_a_dead_runner_is_cleaned_up() {
    let case = Case::new();
    // What a runner killed hard leaves behind: a server group whose workers ignore SIGTERM, and a pid
    // file naming a runner that no longer exists.
    let mut server = case.start(&case.spec("grandchildren", &[])).await;
    ready(&mut server).await;
    let pgid = server.pgid();
    let _guard = GroupGuard(pgid);
    std::mem::forget(server); // the runner "dies": no stop, no Drop
    let mut record = PidFile::read(&case.pid_file()).unwrap().unwrap();
    record.runner_pid = dead_pid();
    record.write(&case.pid_file()).unwrap();

    let pid_file = case.pid_file();
    let done = tokio::task::spawn_blocking(move || server::cleanup_stale(&pid_file))
        .await
        .unwrap()
        .unwrap()
        .expect("a stale server");
    assert!(done.found.len() >= 3, "{done:?}");
    assert!(done.escalated, "the workers ignore SIGTERM: {done:?}");
    assert!(done.leftovers.is_empty() && done.port_freed, "{done:?}");
    assert_eq!(procs::group_members(pgid), Vec::<u32>::new());
    TcpListener::bind((Ipv4Addr::LOCALHOST, case.port)).expect("port can be bound again");
    assert!(!case.pid_file().exists());
    assert_eq!(server::cleanup_stale(&case.pid_file()).unwrap(), None);
}

#[test]
fn a_live_runner_is_not_disturbed() {
    let case = Case::new();
    let other = Guard(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let pid = other.0.id();
    let record = PidFile {
        host: String::new(),
        runner_pid: pid,
        runner_start_ticks: procs::stat(pid).unwrap().start_ticks,
        server_id: "s".into(),
        pgid: pid as i32,
        server_start_ticks: 0,
        port: case.port,
        started_at: "now".into(),
    };
    record.write(&case.pid_file()).unwrap();
    let err = server::cleanup_stale(&case.pid_file()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy);
    assert!(
        err.to_string()
            .contains(&format!("another runner (pid {pid}")),
        "{err}"
    );
    assert!(
        case.pid_file().exists(),
        "the other runner's pid file must stay"
    );
}

#[test]
fn the_server_dies_with_the_thread_that_started_it() {
    // PR_SET_PDEATHSIG fires when the spawning thread ends: a stand-in for the runner being killed hard,
    // without a Drop or stop to help (even SIGTERM is ignored by this fixture).
    let case = Case::new();
    let spec = case.spec("ignores-sigterm", &[]);
    let pid_file = case.pid_file();
    let pgid = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut server = server::start(&spec, &pid_file).await.unwrap();
            ready(&mut server).await;
            let pgid = server.pgid();
            std::mem::forget(server);
            pgid
        })
    })
    .join()
    .unwrap();
    let _guard = GroupGuard(pgid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !procs::group_members(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "server outlived its runner thread"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The built-in simulated engine, started the way an experiment file's `sim` engine is.
fn sim_spec(case: &Case, knobs: &[&str]) -> ServerSpec {
    let mut spec = case.spec("late-binder", &[]);
    spec.id = "sim".into();
    spec.argv = vec![
        env!("CARGO_BIN_EXE_runner").to_string(),
        "sim".into(),
        "--port".into(),
        case.port.to_string(),
    ];
    spec.argv.extend(knobs.iter().map(|k| k.to_string()));
    spec.smoke = Some(SmokeRequest::completion("sim"));
    spec
}

#[tokio::test]
async fn the_simulated_engine_loads_answers_and_stops_on_sigterm() {
    let case = Case::new();
    let spec = sim_spec(&case, &["--startup-delay", "1s"]);
    let mut server = case.start(&spec).await;
    let info = ready(&mut server).await;
    // /health is 503 during the simulated load: ready cannot come before it.
    assert!(info.seconds >= 1.0, "{info:?}");
    assert_eq!(info.smoke_ok, Some(true));
    let teardown = stop_and_check(&case, server).await;
    assert!(!teardown.escalated, "{teardown:?}");
    assert_eq!(teardown.exit_status.as_deref(), Some("exit code 0"));
}

#[tokio::test]
async fn the_simulated_engine_failing_at_start_is_reported_with_its_message() {
    let case = Case::new();
    let spec = sim_spec(&case, &["--exit-at-start", "7"]);
    let mut server = case.start(&spec).await;
    let err = server
        .wait_ready(&CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        StartError::ExitedEarly {
            status, log_tail, ..
        } => {
            assert_eq!(status, "exit code 7");
            assert!(
                log_tail.iter().any(|l| l.contains("--exit-at-start 7")),
                "{log_tail:?}"
            );
        }
        other => panic!("expected an early exit, got {other}"),
    }
    stop_and_check(&case, server).await;
}

#[tokio::test]
async fn the_simulated_engine_ignoring_sigterm_is_killed() {
    let case = Case::new();
    let mut spec = sim_spec(&case, &["--startup-delay", "0s", "--ignore-sigterm"]);
    spec.stop_grace = Duration::from_secs(1);
    let mut server = case.start(&spec).await;
    ready(&mut server).await;
    let teardown = stop_and_check(&case, server).await;
    assert!(teardown.escalated, "{teardown:?}");
}
