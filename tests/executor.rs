//! The local executor through the `runner` binary and its simulated engine: GPU slots (fake GPU ids, no
//! GPU needed) run server configurations at once on disjoint GPUs and ports and finish clearly faster
//! than the serial run; a server that cannot bind its port is started again on another one; the
//! `[executor]` table is validated; a rehearsal runs a real campaign file on the simulated engine.
//!
//! The speed-up is measured, not assumed: `cargo test --test tests executor::gpu_slots -- --nocapture`
//! prints the table (serial wall time, slots wall time, their ratio).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    Guard, cells_in_csv, experiment_dir, json, repo, run_in, runner_cmd, send, text, wait_for,
};

/// Four server configurations × two load points on the simulated engine; each configuration takes a
/// few seconds (slow decode), so that running two at once shows.
pub fn four_servers(executor: &str) -> String {
    format!(
        r#"
title = "four"
results_dir = "results/four"
{executor}
[engines.sim]
preset = "sim"
command = "{{{{ runner }}}} sim --port {{{{ port }}}} --startup-delay 200ms --decode-step-ms {{{{ step }}}} --decode-step-ms-per-seq 0 --seed 3 --served-model-name {{{{ model.path }}}}"
stop_grace = "3s"
[models.tiny]
input_tokens = 32
output_tokens = 40
[models.tiny.precisions]
a = {{ path = "sim/a" }}
b = {{ path = "sim/b" }}
[matrix]
model = ["tiny"]
precision = ["a", "b"]
engine = ["sim"]
step = [25, 26]
concurrency = [1, 2]
[load]
requests = "2"
warmup = 0
timeout = "30s"
"#
    )
}

/// Every `server.json` under `results`.
pub fn server_records(results: &Path) -> Vec<serde_json::Value> {
    crate::common::files_named(&results.join("servers"), "server.json")
        .iter()
        .map(|p| json(p))
        .collect()
}

/// Each record's life as (start, end) in seconds (the records' timestamps have second resolution).
fn spans(records: &[serde_json::Value]) -> Vec<(i64, i64)> {
    let secs = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("timestamp {v}: {e}"))
            .timestamp()
    };
    records
        .iter()
        .map(|r| (secs(&r["started_at"]), secs(&r["finished_at"])))
        .collect()
}

/// The most lives that overlap at one moment; one ending in the second another starts does not count
/// (ends are taken before starts).
pub fn most_at_once(records: &[serde_json::Value]) -> usize {
    let mut events: Vec<(i64, i32)> = spans(records)
        .into_iter()
        .flat_map(|(s, e)| [(s, 1), (e, -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn gpu_slots_run_two_servers_at_once_on_distinct_gpus_and_ports_and_beat_the_serial_run() {
    let (_serial_tmp, serial) = experiment_dir("four.toml", &four_servers(""));
    let t0 = Instant::now();
    let out = run_in(&serial, &["four.toml"]);
    let serial_wall = t0.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let (_slots_tmp, slots) = experiment_dir(
        "four.toml",
        &four_servers("[executor.local]\ngpus = [0, 1]\n"),
    );
    let t0 = Instant::now();
    let out = run_in(&slots, &["four.toml"]);
    let slots_wall = t0.elapsed().as_secs_f64();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let results = slots.join("results/four");
    assert_eq!(cells_in_csv(&results), 8, "every cell measured");
    let records = server_records(&results);
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["executor"], "local", "{r}");
        assert!(r["node"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
        let gpus = r["gpus"].as_str().expect("a GPU set");
        assert!(gpus == "0" || gpus == "1", "{r}");
        assert!(
            r["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kv| kv[0] == "CUDA_VISIBLE_DEVICES" && kv[1] == gpus),
            "the server saw only its GPU: {r}"
        );
    }
    let gpus: std::collections::BTreeSet<&str> =
        records.iter().filter_map(|r| r["gpus"].as_str()).collect();
    assert_eq!(gpus.len(), 2, "both GPUs used: {gpus:?}");
    assert_eq!(
        most_at_once(&records),
        2,
        "two servers at once, never more: {:?}",
        spans(&records)
    );
    // Servers that ran at once had distinct ports.
    let s = spans(&records);
    for i in 0..records.len() {
        for j in i + 1..records.len() {
            if s[i].0 < s[j].1 && s[j].0 < s[i].1 {
                assert_ne!(records[i]["port"], records[j]["port"], "{records:?}");
            }
        }
    }
    let serial_records = server_records(&serial.join("results/four"));
    assert_eq!(most_at_once(&serial_records), 1, "the serial run is serial");
    assert!(serial_records.iter().all(|r| r["gpus"].is_null()));
    assert!(results.join("report/summary.zh.md").is_file());

    let ratio = serial_wall / slots_wall;
    eprintln!(
        "\n| run | wall (s) |\n|---|---|\n| serial | {serial_wall:.1} |\n| 2 GPU slots | {slots_wall:.1} |\n| ratio serial / slots | {ratio:.2} |\n"
    );
    assert!(
        ratio > 1.3,
        "two slots should be clearly faster: serial {serial_wall:.1}s, slots {slots_wall:.1}s"
    );
}

#[test]
fn a_server_that_cannot_bind_its_port_is_started_again_on_another() {
    // The first start says what vLLM says when its port was taken between our pick and its bind, and
    // exits; every later start is a real server.
    let body = four_servers("").replace(
        "command = \"{{ runner }} sim",
        "shell = true\ncommand = \"if [ ! -e taken ]; then touch taken; echo 'OSError: [Errno 98] error while attempting to bind on address: address already in use' >&2; exit 1; fi; exec {{ runner }} sim",
    );
    let body = body
        .replace("step = [25, 26]", "step = [2]")
        .replace("precision = [\"a\", \"b\"]", "precision = [\"a\"]");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let out = run_in(&dir, &["four.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("address already in use"), "{stderr}");
    let records = server_records(&dir.join("results/four"));
    let r = &records[0];
    assert_eq!(r["status"], "ok", "{r}");
    let lost = r["ports_in_use"].as_array().expect("ports given up");
    assert_eq!(lost.len(), 1, "{r}");
    assert_ne!(lost[0], r["port"], "started on another port: {r}");
}

#[test]
fn the_executor_table_is_validated_with_fixes() {
    let check = |executor: &str, expect: &[&str]| {
        let (_tmp, dir) = experiment_dir("four.toml", &four_servers(executor));
        let out = run_in(&dir, &["plan", "four.toml"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{executor}: {stderr}");
        for e in expect {
            assert!(stderr.contains(e), "{executor}: wanted `{e}` in:\n{stderr}");
        }
    };
    check(
        "[executor]\nkind = \"slrum\"",
        &["executor.kind", "did you mean `slurm`?"],
    );
    check(
        "[executor.local]\ngpus = [0, \"x\"]",
        &["executor.local.gpus", "not a GPU index"],
    );
    check(
        "[executor.local]\ngpus = [0, 1]\ngpus_per_server = 3",
        &["3 GPUs per server", "lists only 2"],
    );
    check(
        "[executor.slurm]\npartiton = \"gpu\"",
        &["executor.slurm.partiton", "did you mean `partition`?"],
    );
    check(
        "[executor.slurm]\ntime_limit = \"soon\"",
        &["executor.slurm.time_limit", "not a duration"],
    );
    // A template is rendered per server configuration and must give a number.
    check(
        "[executor]\nkind = \"slurm\"\n[executor.slurm]\ngpus_per_server = \"{{ step }}x\"",
        &["executor.slurm.gpus_per_server", "not a number of GPUs"],
    );
}

#[test]
fn gpu_templates_size_each_server_and_plans_say_where_it_runs() {
    let body = four_servers("[executor]\nkind = \"slurm\"\n[executor.slurm]\npartition = \"gpu\"\ngpus_per_server = \"{{ tp }}\"\ntime_limit = \"2h\"")
        .replace("--seed 3", "--seed 3 --max-num-seqs {{ gpu_count }}0")
        .replace("step = [25, 26]", "step = [25]\ntp = [1, 2]");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let out = run_in(&dir, &["plan", "four.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers = plan["servers"].as_array().unwrap();
    let counts: Vec<u64> = servers
        .iter()
        .map(|s| s["gpu_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 1, 2]);
    assert!(
        servers[1]["command"]
            .as_str()
            .unwrap()
            .contains("--max-num-seqs 20"),
        "{{{{ gpu_count }}}} rendered: {}",
        servers[1]["command"]
    );
    assert_eq!(
        servers[1]["runs_on"],
        "a Slurm job on partition gpu, 2 GPUs, time limit 2h"
    );
    // The same file runs locally, one at a time, with --executor local: no GPU variables then.
    let out = run_in(&dir, &["plan", "four.toml", "--executor", "local"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("gpu_count"), "{stderr}");
}

#[test]
fn a_rehearsal_runs_the_real_campaign_file_on_the_simulated_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let file = repo().join("experiments/rtxpro6000.toml");
    let file = file.to_str().unwrap();
    let out = run_in(tmp.path(), &["plan", file, "--rehearse"]);
    let plan = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(plan.contains("results/rtxpro6000-rehearsal"), "{plan}");
    assert!(
        plan.contains("runner sim --port $PORT --max-model-len 10928"),
        "{plan}"
    );
    assert!(!plan.contains("vllm serve"), "{plan}");
    // One configuration's point end to end: same ids, token counts and layout, no GPU, no vLLM.
    let only = "model=qwen3-14b,precision=fp8,engine=vllm,concurrency=1";
    let out = run_in(tmp.path(), &["run", file, "--rehearse", "--only", only]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cell = json(
        &tmp.path()
            .join("results/rtxpro6000-rehearsal/cells/qwen3-14b/fp8/vllm/c1/result.json"),
    );
    assert_eq!(cell["summary"]["output_tokens"]["exact"], 2, "{cell}");
    assert_eq!(cell["load"]["input_tokens"], 10000);
    assert!(!tmp.path().join("results/rtxpro6000").exists());
}

#[test]
fn the_report_shows_where_each_server_ran_only_when_nodes_differ() {
    let body =
        four_servers("[executor.local]\ngpus = [0, 1]\n").replace("step = [25, 26]", "step = [2]");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let out = run_in(&dir, &["four.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = dir.join("results/four");
    let summary = || std::fs::read_to_string(results.join("report/summary.zh.md")).unwrap();
    assert!(!summary().contains("运行位置"), "one node: no table");
    // As if the second configuration had run on another node, with its own environment record.
    let path = results.join("servers/tiny/b/sim/server.json");
    let mut record = json(&path);
    record["node"] = "gpu-node-7".into();
    std::fs::write(&path, record.to_string()).unwrap();
    let mut env = json(&results.join("environment.json"));
    env["host"] = "gpu-node-7".into();
    env["gpus"] = serde_json::json!([{ "name": "NVIDIA H100", "memory_total": "81559 MiB", "driver": "580.1" }]);
    let node_env = results.join("nodes/gpu-node-7/environment.json");
    std::fs::create_dir_all(node_env.parent().unwrap()).unwrap();
    std::fs::write(&node_env, env.to_string()).unwrap();
    let out = run_in(&dir, &["report", "four.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = summary();
    assert!(summary.contains("运行位置"), "{summary}");
    assert!(
        summary.contains("| tiny/b/sim | gpu-node-7 | local | 1 | NVIDIA H100, 81559 MiB, 580.1 |"),
        "{summary}"
    );
}

#[test]
fn one_ctrl_c_stops_every_server_running_on_gpu_slots() {
    let body = four_servers("[executor.local]\ngpus = [0, 1]\n")
        .replace("output_tokens = 40", "output_tokens = 400");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    let results = dir.join("results/four");
    let mut runner = Guard(
        runner_cmd(&dir, &["four.toml"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Each running server's runner.pid exists from its spawn until its teardown.
    let pid_files = || {
        [25, 26]
            .iter()
            .filter(|step| {
                results
                    .join(format!("servers/tiny/a/sim/step={step}/runner.pid"))
                    .exists()
            })
            .count()
    };
    wait_for(
        "two servers running at once",
        Duration::from_secs(30),
        || pid_files() >= 2,
    );
    std::thread::sleep(Duration::from_millis(800));
    send(&runner, nix::sys::signal::Signal::SIGINT);
    let status = runner.0.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let records = server_records(&results);
    let interrupted: Vec<_> = records
        .iter()
        .filter(|r| r["status"] == "interrupted")
        .collect();
    assert_eq!(
        interrupted.len(),
        2,
        "both running servers stopped: {records:?}"
    );
    for r in interrupted {
        assert_eq!(r["teardown_leftovers"], serde_json::json!([]), "{r}");
        assert_eq!(r["port_freed"], true, "{r}");
    }
    assert_eq!(records.len(), 2, "no server started after the Ctrl-C");
}

#[test]
fn gpus_all_asks_nvidia_smi_and_a_host_without_one_is_refused_before_anything_starts() {
    let body = four_servers("[executor.local]\ngpus = \"all\"\n")
        .replace("step = [25, 26]", "step = [2]")
        .replace("concurrency = [1, 2]", "concurrency = [1]");
    let (_tmp, dir) = experiment_dir("four.toml", &body);
    // No nvidia-smi on this PATH: an error naming the fix, nothing started.
    let out = runner_cmd(&dir, &["four.toml"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gpus = \"all\"") && stderr.contains("no GPU"),
        "{stderr}"
    );
    assert!(
        !dir.join("results/four/servers").exists(),
        "nothing started"
    );
    // A host whose nvidia-smi lists two GPUs: two slots.
    let bin = crate::common::fake_gpu_host(
        &dir,
        &[(
            "gpus",
            "NVIDIA H100, 81559 MiB, 580.1, Disabled\nNVIDIA H100, 81559 MiB, 580.1, Disabled\n",
        )],
    );
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = runner_cmd(&dir, &["four.toml"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let gpus: std::collections::BTreeSet<String> = server_records(&dir.join("results/four"))
        .iter()
        .filter_map(|r| r["gpus"].as_str().map(str::to_string))
        .collect();
    assert_eq!(gpus, ["0", "1"].map(String::from).into_iter().collect());
    // On that host, an index it does not have is refused.
    std::fs::write(
        dir.join("four.toml"),
        body.replace("gpus = \"all\"", "gpus = [0, 5]"),
    )
    .unwrap();
    let out = runner_cmd(&dir, &["four.toml", "--force"])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lists GPU 5"), "{stderr}");
}
