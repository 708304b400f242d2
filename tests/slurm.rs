//! The Slurm executor on a real cluster: `scripts/slurm-up.sh` starts a one-node Slurm (Debian's
//! slurm-wlm) with two fake GPUs, and `scripts/test.sh` calls it before the tests. Four server
//! configurations of the simulated engine, one `--gres=gpu:1` job each: every cell is measured, two run
//! at once and never more, on distinct `CUDA_VISIBLE_DEVICES`; a rerun submits nothing; a job cancelled
//! with `scancel` is recorded as failed and the rerun resubmits only it; Ctrl-C on the coordinator
//! leaves no job in the queue. With two more nodes in network namespaces of their own
//! (`scripts/slurm-two-hosts.sh`), the results of two "hosts" merge into one report.
//!
//! The tier is `#[ignore]`d: a plain `cargo test` reports it as not run. Asked for (`--include-ignored`,
//! as `scripts/test.sh` and CI do), a missing cluster fails it with how to start one. The tests share
//! the cluster's two GPUs, so they take turns.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{cells_in_csv, experiment_dir, json, run_in, runner_cmd, text};
use crate::executor::{four_servers, most_at_once, server_records};

/// How long a test waits for the cluster to get a job going: generous, since CI machines are slow and
/// busy; a wait that runs out explains itself (`Coordinator::diagnosis`).
const WAIT: Duration = Duration::from_secs(180);

/// One test at a time on the cluster's two GPUs.
static CLUSTER: Mutex<()> = Mutex::new(());

fn require_slurm() -> std::sync::MutexGuard<'static, ()> {
    require_nodes(&[], "scripts/slurm-up.sh")
}

/// Waits for the cluster lock once the nodes answer: this host's (no `partition`), or every node of
/// `partition`.
fn require_nodes(partition: &[&str], script: &str) -> std::sync::MutexGuard<'static, ()> {
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut args = vec!["-h", "-N", "-o", "%T"];
    match partition {
        [] => args.extend(["-n", host.as_str()]),
        p => args.extend(["-p", p[0]]),
    }
    let out = Command::new("sinfo").args(&args).output();
    let states = out.map(|o| text(&o.stdout)).unwrap_or_default();
    let up = |s: &str| ["idle", "mixed", "allocated"].contains(&s.trim());
    assert!(
        !states.trim().is_empty() && states.lines().all(up),
        "no Slurm nodes answer here (sinfo {} said {:?}): run the tests with `scripts/test.sh`, or \
         start them with `{script}` (as root) first",
        args.join(" "),
        states.trim()
    );
    CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

fn slurm_experiment(slow: bool) -> String {
    let body = four_servers(
        "[executor]\nkind = \"slurm\"\n[executor.slurm]\ntime_limit = \"10m\"\npoll_interval = \"500ms\"",
    );
    if slow {
        body.replace("output_tokens = 40", "output_tokens = 160")
    } else {
        body
    }
}

/// The job ids in the queue now.
fn queued() -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i"])
        .output()
        .expect("squeue");
    text(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

fn job_ids(results: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        crate::common::files_named(&results.join("servers"), "job.json")
            .iter()
            .map(|p| {
                let job = json(p);
                (
                    job["server_id"].as_str().unwrap().to_string(),
                    job["job_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    out.sort();
    out
}

/// Waits up to `limit` for `ok`; on a timeout the panic says what the cluster and `coordinator` were
/// doing (the queue, the nodes, the coordinator's words, the jobs' output), so that a failure in CI
/// explains itself.
fn wait_for(
    what: &str,
    limit: Duration,
    coordinator: &Coordinator,
    results: &Path,
    mut ok: impl FnMut() -> bool,
) {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() >= limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                coordinator.diagnosis(results)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `runner run four.toml` in the background. Its stderr is read as it comes (a full pipe would stall
/// it); dropped before it ended (an assertion failed), it gets Ctrl-C and is waited for, so that it
/// cancels its jobs and the next test finds the cluster's GPUs free.
struct Coordinator {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: std::sync::Arc<Mutex<String>>,
}

impl Coordinator {
    fn spawn(dir: &Path) -> Coordinator {
        let mut child = runner_cmd(dir, &["run", "four.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runner starts");
        let pipe = child.stderr.take().expect("piped stderr");
        let seen = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = seen.clone();
        let stderr = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
            sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
        });
        Coordinator {
            child,
            stderr: Some(stderr),
            seen,
        }
    }

    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }

    /// Its exit status within `limit`, and everything it wrote to stderr.
    fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                t0.elapsed() < limit,
                "the coordinator did not end within {limit:?}:\n{}",
                self.seen.lock().unwrap_or_else(|e| e.into_inner())
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
        (status, stderr.unwrap_or_default())
    }

    /// What a timed-out wait reports.
    fn diagnosis(&self, results: &Path) -> String {
        let run = |program: &str, args: &[&str]| match Command::new(program).args(args).output() {
            Ok(o) => format!("{}{}", text(&o.stdout), text(&o.stderr)),
            Err(e) => format!("{program}: {e}\n"),
        };
        let mut out = String::new();
        out += "--- squeue\n";
        out += &run("squeue", &["-o", "%i %j %T %r %M %N"]);
        out += "--- sinfo -N\n";
        out += &run("sinfo", &["-N", "-o", "%N %T %E %G"]);
        out += "--- the coordinator's stderr\n";
        out += &self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for name in ["slurm-", "server.log"] {
            for file in crate::common::files_under(&results.join("servers"), |p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(name))
            }) {
                let body = std::fs::read_to_string(&file).unwrap_or_default();
                out += &format!("--- {}\n", file.display());
                out += &tail(&body, 15);
            }
        }
        if let Ok(log) = std::fs::read_to_string("/var/log/slurm/slurmctld.log") {
            out += "--- slurmctld.log (tail)\n";
            out += &tail(&log, 30);
        }
        out
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.interrupt();
            let t0 = Instant::now();
            while matches!(self.child.try_wait(), Ok(None))
                && t0.elapsed() < Duration::from_secs(120)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of `text`, each ending in a newline.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn slurm_runs_two_jobs_at_once_on_distinct_gpus_and_a_rerun_submits_nothing() {
    let _cluster = require_slurm();
    let (_tmp, dir) = experiment_dir("four.toml", &slurm_experiment(false));
    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results = dir.join("results/four");
    assert_eq!(cells_in_csv(&results), 8, "every cell measured:\n{stderr}");
    assert!(results.join("report/summary.zh.md").is_file());
    let records = server_records(&results);
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["executor"], "slurm", "{r}");
        assert!(r["job_id"].as_str().is_some(), "{r}");
    }
    let gpus: std::collections::BTreeSet<&str> =
        records.iter().filter_map(|r| r["gpus"].as_str()).collect();
    assert_eq!(
        gpus,
        ["0", "1"].into_iter().collect(),
        "Slurm's CUDA_VISIBLE_DEVICES recorded: {records:?}"
    );
    assert_eq!(most_at_once(&records), 2, "two jobs at once, never more");
    let jobs = job_ids(&results);
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(results.join("servers/tiny/a/sim/step=25/job.sh").is_file());

    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("submitted"), "{stderr}");
    assert_eq!(job_ids(&results), jobs, "nothing resubmitted");
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn a_cancelled_job_is_recorded_failed_and_the_rerun_resubmits_only_its_cells() {
    let _cluster = require_slurm();
    let (_tmp, dir) = experiment_dir("four.toml", &slurm_experiment(true));
    let results = dir.join("results/four");
    let mut coordinator = Coordinator::spawn(&dir);
    // The first job whose unit runs its server (Slurm decides which starts first).
    let mut started = None;
    wait_for(
        "a job to run its server",
        WAIT,
        &coordinator,
        &results,
        || {
            started = crate::common::files_named(&results.join("servers"), "server.log")
                .into_iter()
                .find(|log| {
                    std::fs::read_to_string(log).is_ok_and(|text| text.contains("starting server"))
                });
            started.is_some()
        },
    );
    let first = started
        .unwrap()
        .parent()
        .unwrap()
        .strip_prefix(results.join("servers"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let first = first.as_str();
    let jobs = job_ids(&results);
    let (_, victim) = jobs
        .iter()
        .find(|(s, _)| s == first)
        .expect("its job")
        .clone();
    let cancelled = Command::new("scancel").arg(&victim).status().unwrap();
    assert!(cancelled.success());
    let (status, stderr) = coordinator.wait(Duration::from_secs(300));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let record = json(&results.join(format!("servers/{first}/server.json")));
    assert_eq!(record["status"], "failed", "{record}");
    let failure = json(&results.join(format!("cells/{first}/c2/failure.json")));
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("Slurm job {victim}")) && reason.contains("CANCELLED"),
        "{failure}"
    );
    assert_eq!(cells_in_csv(&results), 6, "the others finished:\n{stderr}");

    let before = job_ids(&results);
    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let after = job_ids(&results);
    let changed: Vec<&String> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert_eq!(changed, [first], "only the cancelled one resubmitted");
    assert_eq!(cells_in_csv(&results), 8);
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn ctrl_c_on_the_coordinator_cancels_its_jobs_and_leaves_none_queued() {
    let _cluster = require_slurm();
    let (_tmp, dir) = experiment_dir("four.toml", &slurm_experiment(true));
    let results = dir.join("results/four");
    let mut coordinator = Coordinator::spawn(&dir);
    wait_for("four submitted jobs", WAIT, &coordinator, &results, || {
        job_ids(&results).len() == 4
    });
    wait_for("a job to run", WAIT, &coordinator, &results, || {
        server_records(&results)
            .iter()
            .any(|r| r["status"] == "started")
    });
    let ours: Vec<String> = job_ids(&results).into_iter().map(|(_, j)| j).collect();
    coordinator.interrupt();
    let (status, stderr) = coordinator.wait(Duration::from_secs(100));
    assert_eq!(status.code(), Some(130), "{stderr}");
    let left: Vec<String> = queued().into_iter().filter(|j| ours.contains(j)).collect();
    assert!(left.is_empty(), "jobs still queued: {left:?}");
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn detach_submits_and_returns_then_status_and_a_second_coordinator_follow_the_same_jobs() {
    let _cluster = require_slurm();
    let (_tmp, dir) = experiment_dir("four.toml", &slurm_experiment(false));
    let results = dir.join("results/four");
    let t0 = Instant::now();
    let out = run_in(&dir, &["run", "four.toml", "--detach"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "--detach returns at once"
    );
    let jobs = job_ids(&results);
    assert_eq!(jobs.len(), 4, "{stderr}");
    let out = run_in(&dir, &["status", "four.toml"]);
    let status = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (server, job) in &jobs {
        assert!(status.contains(server.as_str()), "{status}");
        assert!(status.contains(&format!("job {job}")), "{status}");
    }
    // A coordinator started now follows the queued jobs: it submits none of its own.
    let out = run_in(&dir, &["run", "four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not submitting again"), "{stderr}");
    assert_eq!(job_ids(&results), jobs, "no job submitted twice");
    assert_eq!(cells_in_csv(&results), 8);
    let out = run_in(&dir, &["status", "four.toml"]);
    assert!(
        text(&out.stdout).contains("8 done"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn a_job_slurm_refuses_fails_its_cells_with_slurms_words() {
    let _cluster = require_slurm();
    let body = slurm_experiment(false)
        .replace("time_limit = \"10m\"", "partition = \"no-such-partition\"");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failure = json(&dir.join("results/four/cells/tiny/a/sim/step=25/c1/failure.json"));
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.contains("could not be submitted") && reason.contains("no-such-partition"),
        "{failure}"
    );
}

#[test]
#[ignore = "needs a Slurm cluster; scripts/test.sh starts one"]
fn results_from_two_hosts_merge_into_one_report() {
    let _cluster = require_nodes(&["twohosts"], "scripts/slurm-two-hosts.sh");
    let body = slurm_experiment(false).replace(
        "time_limit = \"10m\"",
        "time_limit = \"10m\"\npartition = \"twohosts\"",
    );
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results = dir.join("results/four");
    assert_eq!(cells_in_csv(&results), 8);
    let nodes: std::collections::BTreeSet<String> = server_records(&results)
        .iter()
        .filter_map(|r| r["node"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        nodes,
        ["nodea", "nodeb"].map(String::from).into_iter().collect()
    );
    for node in &nodes {
        let env = json(&results.join(format!("nodes/{node}/environment.json")));
        assert_eq!(
            env["host"],
            node.as_str(),
            "each node recorded its own environment"
        );
    }
    let summary = std::fs::read_to_string(results.join("report/summary.zh.md")).unwrap();
    for node in &nodes {
        assert!(
            summary.contains(&format!("| {node} | slurm | 0 |")),
            "{node} in the placement table:\n{summary}"
        );
    }
}
