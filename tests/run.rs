//! End to end through the `runner` binary and its simulated engine: a run stores every cell and the report;
//! a rerun skips what is done and reruns only what changed; Ctrl-C exits 130 leaving no server behind; a
//! runner killed hard leaves a server that the next run cleans up, and no finished cell is lost or rerun.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{
    Guard, cells_in_csv, exit_within, experiment_dir, files_named, json, run_in, runner_cmd, send,
    text, wait_for,
};

/// A small experiment: one model, two precisions (two servers), two load points each.
fn experiment(slow: bool, shell: bool) -> String {
    let (out, step, requests) = if slow {
        (48, 25, "4")
    } else {
        (8, 2, "max(2, 2 * concurrency)")
    };
    let sim = "{{ runner }} sim --port {{ port }} --startup-delay 100ms --decode-step-ms {{ decode_step_ms }} --decode-step-ms-per-seq 0 --seed 3".to_string();
    let (command, shell_line) = if shell {
        // The shell is the direct child (killed with the runner); the engine below it is a grandchild in
        // the same process group, like vLLM's EngineCore and workers.
        (format!("{sim} & wait"), "shell = true\n")
    } else {
        (sim, "")
    };
    format!(
        r#"
title = "e2e"
results_dir = "results/e2e"
[engines.sim]
preset = "sim"
{shell_line}command = "{command}"
stop_grace = "3s"
[models.tiny]
input_tokens = 64
output_tokens = {out}
[models.tiny.precisions]
fp8 = {{ path = "sim/tiny-fp8" }}
nvfp4 = {{ path = "sim/tiny-nvfp4" }}
[matrix]
model = ["tiny"]
precision = ["fp8", "nvfp4"]
engine = ["sim"]
decode_step_ms = [{step}]
concurrency = [1, 2]
[load]
requests = "{requests}"
warmup = 0
timeout = "30s"
"#
    )
}

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn setup(body: &str) -> Dir {
    let (_tmp, path) = experiment_dir("e2e.toml", body);
    Dir { _tmp, path }
}

fn results(dir: &Path) -> PathBuf {
    dir.join("results/e2e")
}

fn result_files(dir: &Path) -> Vec<PathBuf> {
    files_named(&results(dir).join("cells"), "result.json")
}

fn spawn_runner(dir: &Path) -> Guard {
    Guard(
        runner_cmd(dir, &["e2e.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runner starts"),
    )
}

/// Process ids whose process group is `pgid` (zombies excluded), from /proc.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 3 && fields[0] != "Z" && fields[2].parse::<i32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Every pid file in the results directory (one per server configuration that runs now).
fn pid_paths(dir: &Path) -> Vec<PathBuf> {
    files_named(&results(dir), "runner.pid")
}

fn pid_file(dir: &Path) -> serde_json::Value {
    json(&pid_paths(dir).pop().expect("pid file"))
}

#[test]
fn run_stores_every_cell_and_report_then_resume_reruns_only_what_changed() {
    let dir = setup(&experiment(false, false));
    let out = run_in(&dir.path, &["e2e.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let files = result_files(&dir.path);
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        let cell = json(f);
        let s = &cell["summary"];
        assert_eq!(s["failed"], 0);
        assert_eq!(
            s["output_tokens"]["exact"], s["requests"],
            "every output exactly as asked: {s}"
        );
        assert_eq!(s["input_tokens"]["exact"], s["requests"]);
        let requests = std::fs::read_to_string(f.with_file_name("requests.jsonl")).unwrap();
        assert_eq!(
            requests.lines().count() as u64,
            s["requests"].as_u64().unwrap()
        );
    }
    assert_eq!(cells_in_csv(&results(&dir.path)), 4);
    let report = results(&dir.path).join("report");
    assert!(report.join("summary.zh.md").is_file() && report.join("records/tiny.zh.md").is_file());
    assert!(std::fs::read_dir(report.join("charts")).unwrap().count() >= 2);
    assert!(
        pid_paths(&dir.path).is_empty(),
        "pid file removed after a clean run"
    );
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();

    // Same file again: nothing reruns, no server starts.
    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("0 cell(s) run, 4 already done"), "{stderr}");
    assert!(!stderr.contains("starting on port"), "{stderr}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert_eq!(before, after, "finished cells untouched");

    // A setting of one server changes: only its two cells rerun.
    let changed = experiment(false, false).replace("sim/tiny-nvfp4", "sim/tiny-nvfp4-v2");
    std::fs::write(dir.path.join("e2e.toml"), changed).unwrap();
    let plan = run_in(&dir.path, &["plan", "e2e.toml"]);
    let plan_out = text(&plan.stdout);
    assert!(
        plan_out.contains("2 done, 0 pending, 0 failed, 2 changed"),
        "{plan_out}"
    );
    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 cell(s) run, 2 already done"), "{stderr}");
    let fp8_after: Vec<Vec<u8>> = files
        .iter()
        .filter(|f| f.to_string_lossy().contains("/fp8/"))
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let fp8_before: Vec<Vec<u8>> = files
        .iter()
        .zip(&before)
        .filter(|(f, _)| f.to_string_lossy().contains("/fp8/"))
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(fp8_after, fp8_before);

    // `runner report` re-renders from results alone.
    std::fs::remove_file(report.join("summary.zh.md")).unwrap();
    let out = run_in(&dir.path, &["report", "e2e.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(report.join("summary.zh.md").is_file());
}

#[test]
fn ctrl_c_mid_load_exits_130_tears_the_server_down_and_keeps_finished_cells() {
    let dir = setup(&experiment(true, false));
    let mut runner = spawn_runner(&dir.path);
    // Wait until one cell is stored and the server is in its second load point.
    wait_for("the first finished cell", Duration::from_secs(60), || {
        !result_files(&dir.path).is_empty()
    });
    let pgid = pid_file(&dir.path)["pgid"].as_i64().expect("pgid") as i32;
    assert!(!group_members(pgid).is_empty(), "the server runs");
    std::thread::sleep(Duration::from_millis(300));
    send(&runner, nix::sys::signal::Signal::SIGINT);
    let (code, _) = exit_within(&mut runner, Duration::from_secs(30));
    assert_eq!(code, Some(130));
    assert!(
        group_members(pgid).is_empty(),
        "no process of the server's group is left"
    );
    assert!(pid_paths(&dir.path).is_empty());
    let files = result_files(&dir.path);
    assert!(!files.is_empty() && files.len() < 4, "{files:?}");
    for f in &files {
        let cell = json(f);
        assert_eq!(cell["summary"]["failed"], 0);
    }
    // Resuming finishes the rest without redoing the finished cells.
    let kept: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).unwrap()))
        .collect();
    let out = run_in(&dir.path, &["e2e.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(result_files(&dir.path).len(), 4);
    for (f, bytes) in kept {
        assert_eq!(
            std::fs::read(&f).unwrap(),
            bytes,
            "{} was rerun",
            f.display()
        );
    }
}

#[test]
fn runner_killed_hard_leaves_a_server_the_next_run_cleans_up() {
    let dir = setup(&experiment(true, true));
    let mut runner = spawn_runner(&dir.path);
    wait_for("the first finished cell", Duration::from_secs(60), || {
        !result_files(&dir.path).is_empty()
    });
    let pgid = pid_file(&dir.path)["pgid"].as_i64().expect("pgid") as i32;
    let first = result_files(&dir.path);
    let kept: Vec<Vec<u8>> = first.iter().map(|f| std::fs::read(f).unwrap()).collect();
    runner.0.kill().expect("SIGKILL the runner");
    runner.0.wait().expect("reaped");
    // The engine (a grandchild in the server's group) outlives the runner, as vLLM's workers do.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !group_members(pgid).is_empty(),
        "the stale engine is still running"
    );
    assert!(!pid_paths(&dir.path).is_empty());

    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cleaned up a stale server"), "{stderr}");
    assert!(group_members(pgid).is_empty(), "stale group gone");
    assert_eq!(result_files(&dir.path).len(), 4);
    for (f, bytes) in first.iter().zip(kept) {
        assert_eq!(
            std::fs::read(f).unwrap(),
            bytes,
            "{} was rerun or lost",
            f.display()
        );
    }
    assert_eq!(cells_in_csv(&results(&dir.path)), 4);
}

#[test]
fn unwritable_results_dir_is_bad_input_and_starts_nothing() {
    let dir =
        setup(&experiment(false, false).replace("results/e2e", "/proc/runner-cannot-write-here"));
    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not writable") && stderr.contains("e2e.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("starting on port"));
}

#[test]
fn a_server_that_never_gets_ready_fails_its_cells_and_the_run_goes_on() {
    let body = experiment(false, false)
        .replace(
            "--seed 3",
            "--seed 3 {% if precision == \\\"fp8\\\" %}--never-ready{% endif %}",
        )
        .replace("[engines.sim]\n", "[engines.sim]\nready_timeout = \"2s\"\n");
    let dir = setup(&body);
    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        result_files(&dir.path).len(),
        2,
        "the nvfp4 server still ran"
    );
    let failure = results(&dir.path).join("cells/tiny/fp8/sim/c1/failure.json");
    let f = json(&failure);
    assert!(
        f["reason"].as_str().unwrap_or_default().contains("ready"),
        "{f}"
    );
    let server = json(&results(&dir.path).join("servers/tiny/fp8/sim/server.json"));
    assert_eq!(server["status"], "failed");
}

#[test]
fn demo_killed_mid_run_then_rerun_loses_and_repeats_nothing() {
    let body = std::fs::read_to_string(crate::common::repo().join("experiments/demo.toml"))
        .expect("demo.toml");
    let dir = setup(&body.replace("results/demo", "results/e2e"));
    let mut runner = spawn_runner(&dir.path);
    wait_for("two finished demo cells", Duration::from_secs(120), || {
        result_files(&dir.path).len() >= 2
    });
    runner.0.kill().expect("SIGKILL the runner");
    runner.0.wait().expect("reaped");
    let first: Vec<(PathBuf, Vec<u8>)> = result_files(&dir.path)
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
        .collect();
    assert!(first.len() < 12, "killed mid-run");

    let out = run_in(&dir.path, &["e2e.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} cell(s) run, {} already done",
            12 - first.len(),
            first.len()
        )),
        "{stderr}"
    );
    assert_eq!(result_files(&dir.path).len(), 12);
    for (f, bytes) in first {
        assert_eq!(
            std::fs::read(&f).unwrap(),
            bytes,
            "{} was rerun or lost",
            f.display()
        );
    }
    assert_eq!(cells_in_csv(&results(&dir.path)), 12);
    let summary = std::fs::read_to_string(results(&dir.path).join("report/summary.zh.md")).unwrap();
    assert!(summary.contains("完成 12/12"), "the report is complete");
}

#[test]
fn saved_prompts_are_exact_and_identical_across_runs() {
    let body = experiment(false, false).replace("warmup = 0", "warmup = 1\nsave_prompts = true");
    let dir = setup(&body);
    let prompts_of = |dir: &Path| {
        let file = results(dir).join("cells/tiny/fp8/sim/c2/prompts.jsonl");
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let out = run_in(&dir.path, &["e2e.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let first = prompts_of(&dir.path);
    let lines: Vec<serde_json::Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1 + 4, "the warm-up and every measured request");
    assert_eq!(lines[0]["warmup"], true);
    for l in &lines {
        assert_eq!(
            l["token_ids"].as_array().map(Vec::len),
            Some(64),
            "exact input length: {l}"
        );
    }
    assert_ne!(
        lines[1]["token_ids"][0], lines[2]["token_ids"][0],
        "unique prompts differ from the first token"
    );

    // A forced rerun regenerates and sends the very same prompts.
    let out = run_in(&dir.path, &["e2e.toml", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(prompts_of(&dir.path), first);
}

fn server_record(dir: &Path, id: &str) -> serde_json::Value {
    json(&results(dir).join("servers").join(id).join("server.json"))
}

#[test]
fn double_ctrl_c_while_waiting_for_readiness_kills_the_group_at_once() {
    // A server that never gets ready and ignores SIGTERM, with a long grace period: only the second
    // Ctrl-C can end the teardown quickly.
    let body = experiment(false, false)
        .replace("--seed 3", "--seed 3 --never-ready --ignore-sigterm")
        .replace("stop_grace = \"3s\"", "stop_grace = \"60s\"");
    let dir = setup(&body);
    let mut runner = spawn_runner(&dir.path);
    wait_for("the server to start", Duration::from_secs(30), || {
        !pid_paths(&dir.path).is_empty()
    });
    let pgid = pid_file(&dir.path)["pgid"].as_i64().expect("pgid") as i32;
    // Readiness polling is under way (the server answers 503).
    std::thread::sleep(Duration::from_millis(500));
    assert!(!group_members(pgid).is_empty(), "the server runs");
    send(&runner, nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        runner.0.try_wait().unwrap().is_none(),
        "the first Ctrl-C waits for the grace period"
    );
    send(&runner, nix::sys::signal::Signal::SIGINT);
    let (code, took) = exit_within(&mut runner, Duration::from_secs(10));
    assert_eq!(code, Some(130));
    assert!(
        took < Duration::from_secs(2),
        "the second Ctrl-C took {took:?}"
    );
    assert!(group_members(pgid).is_empty(), "the group is gone");
    let record = server_record(&dir.path, "tiny/fp8/sim");
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["teardown_escalated"], true, "{record}");
    assert_eq!(record["port_freed"], true, "{record}");
    assert!(
        result_files(&dir.path).is_empty(),
        "nothing was measured, nothing recorded as measured"
    );
}

#[test]
fn sighup_with_the_terminal_gone_stops_gracefully_and_keeps_finished_cells() {
    let dir = setup(&experiment(true, false));
    let mut runner = spawn_runner(&dir.path);
    wait_for("the first finished cell", Duration::from_secs(60), || {
        !result_files(&dir.path).is_empty()
    });
    let pgid = pid_file(&dir.path)["pgid"].as_i64().expect("pgid") as i32;
    // The SSH session dropped: whoever read the runner's output is gone, every write to it now fails.
    drop(runner.0.stderr.take());
    send(&runner, nix::sys::signal::Signal::SIGHUP);
    let (code, _) = exit_within(&mut runner, Duration::from_secs(30));
    assert_eq!(
        code,
        Some(130),
        "a graceful stop, not a panic on a failed write"
    );
    assert!(group_members(pgid).is_empty(), "the group is gone");
    assert!(pid_paths(&dir.path).is_empty());
    let record = server_record(&dir.path, "tiny/fp8/sim");
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["teardown_escalated"], false, "{record}");
    for f in result_files(&dir.path) {
        let cell = json(&f);
        assert_eq!(cell["summary"]["failed"], 0);
    }
}
