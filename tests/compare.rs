//! `runner compare A B`: two small runs on the simulated engine, B with a three times slower decode step,
//! compared as Markdown and JSON; thresholds that B misses exit 1, thresholds it meets exit 0; cells on
//! one side only are listed; bad thresholds and paths are usage errors.

use std::path::Path;
use std::sync::OnceLock;

use crate::common::{json, run_in, text};

/// A tiny campaign: one model and precision, `decode_step_ms` per run, the concurrencies given.
fn experiment(dir: &Path, name: &str, decode_step_ms: u32, concurrency: &str) -> String {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
title = "{name}"
results_dir = "results/{name}"
[engines.sim]
preset = "sim"
command = "{{{{ runner }}}} sim --port {{{{ port }}}} --startup-delay 0 --seed 3 --decode-step-ms {{{{ decode_step_ms }}}}"
[models.tiny]
input_tokens = 64
output_tokens = 16
[models.tiny.precisions]
fp8 = {{ path = "sim/tiny-fp8" }}
[matrix]
model = ["tiny"]
precision = ["fp8"]
engine = ["sim"]
decode_step_ms = [{decode_step_ms}]
concurrency = {concurrency}
[load]
requests = "2 * concurrency"
warmup = 1
timeout = "30s"
"#
        ),
    )
    .unwrap();
    file.display().to_string()
}

/// Two runs measured once for all tests: A at 5 ms per decode step (c=1, 4), B at 15 ms (c=1, 2).
struct Runs {
    dir: tempfile::TempDir,
    a: String,
    b: String,
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let a = experiment(dir.path(), "fast", 5, "[1, 4]");
        let b = experiment(dir.path(), "slow", 15, "[1, 2]");
        for file in [&a, &b] {
            let out = run_in(dir.path(), &[file]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }
        Runs { dir, a, b }
    })
}

fn compare(args: &[&str]) -> std::process::Output {
    let r = runs();
    let mut all = vec!["compare"];
    all.extend_from_slice(args);
    run_in(r.dir.path(), &all)
}

fn ratio(cell: &str) -> f64 {
    cell.trim_end_matches('×').parse().unwrap()
}

#[test]
fn a_slower_decode_shows_in_the_ratios_and_the_settings() {
    let r = runs();
    // Experiment files on one side, the results directory on the other: both name a run.
    let out = compare(&[&r.a, "results/slow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let md = text(&out.stdout);
    assert!(md.starts_with("# 运行对比：B 相对于 A"), "{md}");
    let row = md
        .lines()
        .find(|l| l.starts_with("| tiny/fp8/sim/c1 |") && l.contains('×'))
        .unwrap_or_else(|| panic!("no ratio row for c=1:\n{md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | id | QPS | Prompt TPS | Decode TPS | 输出吞吐 | TTFT | E2E | TPOT | 说明 |
    let (decode, output, tpot) = (ratio(cells[4]), ratio(cells[5]), ratio(cells[8]));
    assert!(decode < 0.6 && output < 0.6, "B decodes slower: {row}");
    assert!(tpot > 1.8, "B's TPOT is longer: {row}");
    // What differs: the variable and the command it renders into (ports masked), nothing else.
    assert!(
        md.contains("- **变量 decode_step_ms**：A 5 → B 15（全部 1 个匹配的测试点）"),
        "{md}"
    );
    assert!(md.contains("--decode-step-ms 5` → B `"), "{md}");
    assert!(md.contains("--port $PORT"), "{md}");
    assert!(
        !md.contains("- **负载设置**"),
        "same load on both sides:\n{md}"
    );
    // Cells on one side only are listed, not dropped.
    assert!(md.contains("- 仅 A：tiny/fp8/sim/c4"), "{md}");
    assert!(md.contains("- 仅 B：tiny/fp8/sim/c2"), "{md}");
    assert!(text(&out.stderr).contains("1 cell(s) only in A, 1 only in B"));
}

#[test]
fn a_threshold_the_slower_run_misses_exits_1_and_one_it_meets_exits_0() {
    let r = runs();
    let out = compare(&[
        &r.a,
        &r.b,
        "--fail-if",
        "output_tps < 0.95",
        "--fail-if",
        "ttft > 100",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let md = text(&out.stdout);
    assert!(md.contains("- ✗ `output_tps < 0.95`：1 处触发"), "{md}");
    assert!(md.contains("- ✓ `ttft > 100`"), "{md}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("fail-if output_tps < 0.95: tiny/fp8/sim/c1 (0."),
        "{stderr}"
    );
    // The other way round, the faster run passes the same gate.
    let out = compare(&[&r.b, &r.a, "--fail-if", "output_tps < 0.95"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn json_carries_values_ratios_and_the_verdict() {
    let r = runs();
    let file = r.dir.path().join("cmp.json");
    let out = compare(&[
        &r.a,
        &r.b,
        "--json",
        "--out",
        file.to_str().unwrap(),
        "--fail-if",
        "decode_tps<0.9",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "--out writes the file, not stdout");
    let v = json(&file);
    assert_eq!(v["passed"], false);
    let cell = &v["cells"][0];
    assert_eq!(cell["id"], "tiny/fp8/sim/c1");
    let (a, b, ratio) = (
        cell["a"]["output_tps"].as_f64().unwrap(),
        cell["b"]["output_tps"].as_f64().unwrap(),
        cell["ratio"]["output_tps"].as_f64().unwrap(),
    );
    assert!((ratio - b / a).abs() < 1e-9 && ratio < 1.0);
    let t = &v["thresholds"][0];
    assert_eq!(
        (t["metric"].as_str(), t["op"].as_str()),
        (Some("decode_tps"), Some("<"))
    );
    assert_eq!(t["violations"][0]["cell"], "tiny/fp8/sim/c1");
    assert_eq!(v["only_a"][0]["id"], "tiny/fp8/sim/c4");
    assert_eq!(v["only_b"][0]["id"], "tiny/fp8/sim/c2");
}

#[test]
fn bad_thresholds_and_paths_are_usage_errors() {
    let r = runs();
    let out = compare(&[&r.a, &r.b, "--fail-if", "speed < 1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown metric `speed`") && stderr.contains("output_tps"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing written before the check");
    let out = compare(&[&r.a, "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nowhere: no such file or directory"));
    // A directory that holds no results.
    let out = compare(&[&r.a, "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no cells/ directory"));
}
