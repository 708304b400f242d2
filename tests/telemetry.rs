//! Telemetry end to end through the `runner` binary: a fake `nvidia-smi` streams one GPU at a steady
//! 200 W while the simulated engine, its KV cache too small for the load, queues requests. Energy, J per
//! token and cost come out as worked out by hand from the stored duration and throughput; the raw samples
//! are kept beside the requests; with telemetry turned off every GPU figure is absent, never 0.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{csv_rows, json, runner_cmd, text};

/// One model at one concurrency on the simulated engine, whose KV cache holds two sequences at a time
/// (64 + 32 tokens = 6 blocks of 16; 224 tokens = 14 blocks), so half of the four streams wait.
const EXPERIMENT: &str = r#"
title = "telemetry"
results_dir = "results/telemetry"
[engines.sim]
preset = "sim"
command = "{{ runner }} sim --port {{ port }} --max-model-len {{ max_model_len }} --startup-delay 0 --seed 5 --decode-step-ms 20 --decode-step-ms-per-seq 0 --kv-cache-tokens 224"
[models.tiny]
input_tokens = 64
output_tokens = 32
[models.tiny.precisions]
fp8 = { path = "sim/tiny-fp8" }
[matrix]
model = ["tiny"]
precision = ["fp8"]
engine = ["sim"]
concurrency = [4]
[load]
requests = 8
warmup = 0
timeout = "30s"
[cost]
gpu_hour = 2.0
currency = "USD"
kwh = 0.5
"#;

/// A fake GPU host: `bin/nvidia-smi` prints one GPU at 200 W.
fn fake_gpu_host(dir: &Path) -> PathBuf {
    crate::common::fake_gpu_host(
        dir,
        &[
            (
                "lms",
                "TS, 0, GPU-0000-fake, 200.00, 90, 30000, 81559, 1980, 61, 0x0000000000000004\n",
            ),
            ("mem", "30000\n"),
            ("apps", ""),
        ],
    )
}

fn run(dir: &Path, bin: &Path, telemetry: &str) -> std::process::Output {
    run_file(dir, bin, telemetry, EXPERIMENT)
}

fn run_file(dir: &Path, bin: &Path, telemetry: &str, body: &str) -> std::process::Output {
    std::fs::write(dir.join("t.toml"), body).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    runner_cmd(dir, &["t.toml"])
        .env("PATH", path)
        .env("RUNNER_TELEMETRY", telemetry)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn energy_per_token_and_cost_from_a_streaming_nvidia_smi() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_gpu_host(tmp.path());
    let out = run(tmp.path(), &bin, "nvidia-smi");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = tmp.path().join("results/telemetry");
    let cell = results.join("cells/tiny/fp8/sim/c4");
    let r = json(&cell.join("result.json"));
    let duration = r["summary"]["duration_s"].as_f64().unwrap();
    let out_tps = r["summary"]["output_tokens_per_s"].as_f64().unwrap();
    let total_tps = r["summary"]["total_tokens_per_s"].as_f64().unwrap();
    let t = &r["telemetry"];

    // GPU: the only one the host lists, at a steady 200 W: energy = 200 W × the measured phase.
    assert_eq!(t["gpus"]["count"], 1, "{t}");
    assert_eq!(t["gpus"]["from"], "all GPUs of the host");
    let g = &t["gpu"];
    assert_eq!(g["source"], "nvidia-smi", "{t}");
    assert_eq!(g["energy_method"], "integrated_power");
    close(
        g["window_s"].as_f64().unwrap(),
        duration,
        "window = measured phase",
    );
    let energy = g["energy_j"].as_f64().unwrap();
    close(energy, 200.0 * duration, "energy");
    close(g["power_mean_w"].as_f64().unwrap(), 200.0, "mean power");
    assert_eq!(g["util_mean_pct"], 90.0);
    assert_eq!(g["mem_total_mib"], 81559.0);
    assert_eq!(g["throttle_reasons"], serde_json::json!(["sw_power_cap"]));
    assert_eq!(g["gaps"], false, "{g}");
    assert!(g["samples"].as_u64().unwrap() >= 4, "{g}");
    assert_eq!(g["devices"][0]["uuid"], "GPU-0000-fake");
    let gpu_lines = std::fs::read_to_string(cell.join("gpu.jsonl")).unwrap();
    assert!(gpu_lines.lines().count() >= 4);
    assert!(gpu_lines.contains("\"power_w\":200.0"), "{gpu_lines}");

    // Server timeline: the KV cache (two sequences of 6 blocks out of 14) was the limit.
    let s = &t["server"];
    assert!(s["samples"].as_u64().unwrap() >= 1, "{s}");
    close(s["peak_kv_usage"].as_f64().unwrap(), 12.0 / 14.0, "peak KV");
    assert_eq!(s["peak_waiting"], 2.0, "{s}");
    assert_eq!(s["peak_running"], 2.0, "{s}");
    assert!(s.get("preemptions").is_none_or(|p| p.is_null()), "{s}");
    let timeline = std::fs::read_to_string(cell.join("server_metrics.jsonl")).unwrap();
    assert!(timeline.contains("\"kv_usage\""), "{timeline}");

    // cells.csv: per token and per million, as worked out by hand.
    let rows = csv_rows(&results.join("cells.csv"));
    let field = |name: &str| -> f64 { rows[0][name].parse().unwrap() };
    let output_tokens = out_tps * duration;
    close(
        field("j_per_output_token"),
        energy / output_tokens,
        "J/output token",
    );
    close(
        field("j_per_token"),
        energy / (total_tps * duration),
        "J/token",
    );
    close(
        field("kwh_per_1m_output_tokens"),
        energy / 3.6e6 / output_tokens * 1e6,
        "kWh/1M",
    );
    close(
        field("cost_per_1m_output_tokens"),
        2.0 / (out_tps * 3600.0) * 1e6,
        "cost/1M output",
    );
    close(
        field("cost_per_1m_tokens"),
        2.0 / (total_tps * 3600.0) * 1e6,
        "cost/1M",
    );
    close(
        field("electricity_cost_per_1m_output_tokens"),
        0.5 * energy / 3.6e6 / output_tokens * 1e6,
        "electricity/1M output",
    );

    // The report names the source and shows the figures.
    let md = std::fs::read_to_string(results.join("report/summary.zh.md")).unwrap();
    assert!(
        md.contains("GPU 遥测：nvidia-smi（能耗为功率的梯形积分）"),
        "{md}"
    );
    assert!(md.contains("| 每百万输出 token 成本 (USD) | J/输出 token |"));
    assert!(!md.contains("无 GPU 遥测（"));
    // No sampler outlived the run.
    let leftover = Command::new("pgrep")
        .args(["-f", &bin.join("nvidia-smi").display().to_string()])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "{}", text(&leftover.stdout));
}

#[test]
fn without_gpu_telemetry_every_gpu_figure_is_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_gpu_host(tmp.path());
    let out = run(tmp.path(), &bin, "off");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let results = tmp.path().join("results/telemetry");
    let cell = results.join("cells/tiny/fp8/sim/c4");
    let t = json(&cell.join("result.json"))["telemetry"].clone();
    assert!(t.get("gpu").is_none(), "absent, not zero: {t}");
    assert!(t.get("gpus").is_none(), "{t}");
    assert!(
        t["gpu_note"].as_str().unwrap().contains("turned off"),
        "{t}"
    );
    assert!(
        t["server"]["peak_kv_usage"].is_number(),
        "the timeline still runs"
    );
    assert!(!cell.join("gpu.jsonl").exists());

    let row = &csv_rows(&results.join("cells.csv"))[0];
    for name in [
        "energy_j",
        "gpu_power_mean_w",
        "j_per_output_token",
        "cost_per_1m_output_tokens",
    ] {
        assert_eq!(row[name], "", "{name} is unmeasured, not 0");
    }
    let md = std::fs::read_to_string(results.join("report/summary.zh.md")).unwrap();
    assert!(md.contains("无 GPU 遥测（GPU 遥测已按设置关闭）"), "{md}");
    assert!(md.contains("每百万输出 token 成本无法计算"), "{md}");
}

/// With `[executor.local] gpus`, each server is watched on the GPU its slot gave it, not on every GPU
/// of the host (two run at once, and each must count only its own energy).
#[test]
fn a_gpu_slot_is_the_set_its_server_is_watched_on() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = crate::common::fake_gpu_host(
        tmp.path(),
        &[
            (
                "lms",
                "TS, 0, GPU-0000-fake, 200.00, 90, 30000, 81559, 1980, 61, 0x0000000000000004\n\
                 TS, 1, GPU-0001-fake, 300.00, 90, 30000, 81559, 1980, 61, 0x0000000000000004\n",
            ),
            ("mem", "30000\n30000\n"),
            ("apps", ""),
        ],
    );
    let body = format!("{EXPERIMENT}[executor.local]\ngpus = [1]\n");
    let out = run_file(tmp.path(), &bin, "nvidia-smi", &body);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r = json(
        &tmp.path()
            .join("results/telemetry/cells/tiny/fp8/sim/c4/result.json"),
    );
    let t = &r["telemetry"];
    assert_eq!(t["gpus"]["from"], "CUDA_VISIBLE_DEVICES", "{t}");
    assert_eq!(t["gpus"]["count"], 1, "{t}");
    assert_eq!(t["gpu"]["devices"][0]["uuid"], "GPU-0001-fake", "{t}");
    close(
        t["gpu"]["power_mean_w"].as_f64().unwrap(),
        300.0,
        "the slot's GPU only",
    );
}
