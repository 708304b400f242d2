//! `[load] repeats = N` end to end on the simulated engine: repeats run interleaved over a server's
//! points, every request is stored tagged with its repeat, a runner killed between repeats loses and
//! redoes nothing on the rerun, and raising N keeps the repeats already measured.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::common::{Guard, experiment_dir, json, run_in, runner_cmd, text, wait_for};

/// One model at one precision (one server), two points; each request takes `output` × `step` ms.
fn experiment(repeats: u32, output: u32, step: u32) -> String {
    format!(
        r#"
title = "repeats"
results_dir = "results/r"
[engines.sim]
preset = "sim"
command = "{{{{ runner }}}} sim --port {{{{ port }}}} --startup-delay 100ms --decode-step-ms {step} --decode-step-ms-per-seq 0 --seed 3"
stop_grace = "3s"
[models.tiny]
input_tokens = 64
output_tokens = {output}
[models.tiny.precisions]
fp8 = {{ path = "sim/tiny-fp8" }}
[matrix]
model = ["tiny"]
precision = ["fp8"]
engine = ["sim"]
concurrency = [1, 2]
[load]
requests = 2
warmup = 1
timeout = "30s"
repeats = {repeats}
"#
    )
}

fn setup(body: &str) -> tempfile::TempDir {
    experiment_dir("r.toml", body).0
}

fn cell(dir: &Path, c: u32) -> PathBuf {
    dir.join(format!("results/r/cells/tiny/fp8/sim/c{c}"))
}

fn repeat_dir(dir: &Path, c: u32, k: u32) -> PathBuf {
    cell(dir, c).join(format!("repeats/{k}"))
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap()
}

/// Every file under a repeat's directory with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn repeats_run_interleaved_and_every_request_is_tagged() {
    let body = experiment(2, 8, 2).replace("repeats = 2", "repeats = 2\nsave_prompts = true");
    let tmp = setup(&body);
    let dir = tmp.path();
    let out = run_in(dir, &["r.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // Stored in the order they ran: c1 r1, c2 r1, c1 r2, c2 r2.
    let order = [(1, 1), (2, 1), (1, 2), (2, 2)];
    let times: Vec<SystemTime> = order
        .iter()
        .map(|&(c, k)| modified(&repeat_dir(dir, c, k).join("repeat.json")))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "not interleaved: {order:?} stored at {times:?}\n{stderr}"
    );

    for c in [1, 2] {
        let result = json(&cell(dir, c).join("result.json"));
        assert_eq!(result["load"]["repeats"], 2);
        let repeats = result["repeats"].as_array().expect("the repeats are kept");
        assert_eq!(repeats.len(), 2);
        let mut qps = Vec::new();
        for (i, r) in repeats.iter().enumerate() {
            let k = i as u64 + 1;
            assert_eq!(r["repeat"], k);
            // Each repeat's own warm-up and measured requests, each tagged.
            let requests = lines(&repeat_dir(dir, c, k as u32).join("requests.jsonl"));
            assert_eq!(requests.len(), 1 + 2, "c{c} repeat {k}");
            assert!(requests.iter().all(|l| l["repeat"] == k), "c{c} repeat {k}");
            assert_eq!(requests.iter().filter(|l| l["warmup"] == true).count(), 1);
            assert_eq!(r, &json(&repeat_dir(dir, c, k as u32).join("repeat.json")));
            qps.push(r["summary"]["qps"].as_f64().unwrap());
        }
        // The headline figure is the mean over repeats; counts add up.
        let mean = result["summary"]["qps"].as_f64().unwrap();
        assert!((mean - (qps[0] + qps[1]) / 2.0).abs() < 1e-9);
        assert_eq!(result["summary"]["requests"], 4);
        assert_ne!(repeats[0]["hash"], repeats[1]["hash"]);
        // Nothing of a single measurement at the cell's top level.
        assert!(!cell(dir, c).join("requests.jsonl").exists());
    }

    // Every repeat sent prompts of its own (its first repeat's are those of a single measurement), so
    // no repeat is served from the prefix cache an earlier one filled.
    let mut prompts: Vec<serde_json::Value> = order
        .iter()
        .flat_map(|&(c, k)| lines(&repeat_dir(dir, c, k).join("prompts.jsonl")))
        .map(|l| l["token_ids"].clone())
        .collect();
    assert_eq!(prompts.len(), 2 * 2 * 3);
    prompts.sort_by_key(|p| p.to_string());
    prompts.dedup();
    assert_eq!(prompts.len(), 12, "a prompt was sent twice");

    // The plan counts every repeat's requests and says how many repeats each point has.
    let plan = run_in(dir, &["plan", "r.toml"]);
    let plan_text = text(&plan.stdout);
    assert!(plan_text.contains("× 2 repeats"), "{plan_text}");
    assert!(plan_text.contains("12 requests; 2 done"), "{plan_text}");
}

#[test]
fn a_runner_killed_between_repeats_redoes_nothing_and_more_repeats_keep_the_done_ones() {
    // Each request takes about a second, so the kill lands inside the second round.
    let tmp = setup(&experiment(2, 40, 25));
    let dir = tmp.path();
    let mut runner = Guard(
        runner_cmd(dir, &["r.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runner starts"),
    );
    wait_for(
        "the first round of repeats",
        Duration::from_secs(60),
        || repeat_dir(dir, 2, 1).join("repeat.json").exists(),
    );
    runner.0.kill().expect("SIGKILL the runner");
    runner.0.wait().expect("reaped");
    assert!(!repeat_dir(dir, 1, 2).exists(), "killed before round two");
    assert!(!cell(dir, 1).join("result.json").exists());
    let first: Vec<_> = [1, 2]
        .iter()
        .flat_map(|&c| snapshot(&repeat_dir(dir, c, 1)))
        .collect();

    // The rerun measures round two only and keeps round one byte for byte.
    let out = run_in(dir, &["r.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2 cell(s) run, 0 already done"), "{stderr}");
    assert_eq!(stderr.matches(": repeat 2/2: ").count(), 2, "{stderr}");
    assert!(!stderr.contains(": repeat 1/2: "), "{stderr}");
    let again: Vec<_> = [1, 2]
        .iter()
        .flat_map(|&c| snapshot(&repeat_dir(dir, c, 1)))
        .collect();
    assert_eq!(again, first, "a stored repeat was redone or lost");
    for c in [1, 2] {
        let result = json(&cell(dir, c).join("result.json"));
        assert_eq!(result["repeats"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            result["repeats"][0],
            json(&repeat_dir(dir, c, 1).join("repeat.json"))
        );
    }

    // Three repeats instead of two: only the third is measured, the first two are kept.
    let kept: Vec<_> = [1, 2]
        .iter()
        .flat_map(|&c| [1, 2].map(|k| snapshot(&repeat_dir(dir, c, k))))
        .collect();
    std::fs::write(dir.join("r.toml"), experiment(3, 40, 25)).unwrap();
    let plan = text(&run_in(dir, &["plan", "r.toml"]).stdout);
    assert!(plan.contains("2 changed"), "{plan}");
    let out = run_in(dir, &["r.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches(": repeat 3/3: ").count(), 2, "{stderr}");
    assert!(!stderr.contains(": repeat 1/3: "), "{stderr}");
    let now: Vec<_> = [1, 2]
        .iter()
        .flat_map(|&c| [1, 2].map(|k| snapshot(&repeat_dir(dir, c, k))))
        .collect();
    assert_eq!(now, kept);
    for c in [1, 2] {
        let result = json(&cell(dir, c).join("result.json"));
        assert_eq!(result["load"]["repeats"], 3);
        assert_eq!(result["repeats"].as_array().map(Vec::len), Some(3));
    }

    // Stopped after a cell's last repeat but before its result: the rerun commits it from the stored
    // repeats without starting a server.
    let result = json(&cell(dir, 1).join("result.json"));
    std::fs::remove_file(cell(dir, 1).join("result.json")).unwrap();
    let out = run_in(dir, &["r.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("(stored repeats)"), "{stderr}");
    assert!(!stderr.contains("starting on port"), "{stderr}");
    assert_eq!(json(&cell(dir, 1).join("result.json")), result);

    // Back to one measurement: the cell is measured once, as without repeats, and its directory
    // holds that measurement only.
    std::fs::write(dir.join("r.toml"), experiment(1, 40, 25)).unwrap();
    let out = run_in(dir, &["r.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let result = json(&cell(dir, 1).join("result.json"));
    assert!(result.get("repeats").is_none(), "{result}");
    assert!(result["load"].get("repeats").is_none());
    assert!(cell(dir, 1).join("requests.jsonl").exists());
    assert!(!cell(dir, 1).join("repeats").exists());
}
