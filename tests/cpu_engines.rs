//! The real-engine tier: `experiments/cpu-engines.toml` through `runner`, against vLLM's CPU build and
//! llama.cpp's `llama-server` serving a tiny locally generated model. It proves, from the servers' own
//! usage and counters, what the simulator can only assume: readiness, exact input and output token counts,
//! prefix-cache hit rates near 0 for unique prompts and clearly positive for a shared prefix, and a clean
//! teardown.
//!
//! The engines come from `scripts/install-engines.sh` (its env file sets `RUNNER_VLLM` and friends;
//! `scripts/test.sh` sources it and runs the ignored tests too). The tier is `#[ignore]`d, so a plain
//! `cargo test` reports it as ignored rather than as passed when it did not run. Asked for explicitly
//! (`--include-ignored`, as `scripts/test.sh` and CI do), missing engines fail it with how to install them.

use crate::common::{json, repo, run_in, text};

const NEEDED: &[&str] = &[
    "RUNNER_VLLM",
    "RUNNER_LLAMA_SERVER",
    "RUNNER_TINY_MODEL_HF",
    "RUNNER_TINY_MODEL_GGUF",
];

/// Fails the test, naming what is missing, when the engines' environment is not set: a tier that was
/// asked for must run or fail, never pass without running.
fn require_engines() {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the CPU engines are not installed ({} unset): run the tests with `scripts/test.sh` (it installs \
         them), or run `scripts/install-engines.sh` and `source ~/.cache/runner-engines/env.sh` first",
        missing.join(", ")
    );
}

#[test]
#[ignore = "needs the CPU engines; scripts/test.sh runs it"]
fn real_engines_end_to_end() {
    require_engines();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = repo().join("experiments/cpu-engines.toml");
    let out = run_in(dir.path(), &[file.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the tier's run failed:\n{stderr}"
    );

    let results = dir.path().join("results/cpu-engines");
    let mut checked = 0;
    for engine in ["vllm", "llama-cpp"] {
        let server = json(&results.join(format!("servers/tiny/bf16/{engine}/server.json")));
        assert_eq!(server["status"], "ok", "{server}");
        assert!(
            server["time_to_ready_s"].as_f64().is_some_and(|s| s > 0.0),
            "readiness detected: {server}"
        );
        assert_eq!(
            server["teardown_leftovers"],
            serde_json::json!([]),
            "nothing of the group left: {server}"
        );
        assert_eq!(server["port_freed"], true, "{server}");
        assert!(
            server["engine_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{server}"
        );
        for c in [1, 4] {
            for prefix in [0, 192] {
                let cell = json(&results.join(format!(
                    "cells/tiny/bf16/{engine}/c{c}/shared_prefix_tokens={prefix}/result.json"
                )));
                let s = &cell["summary"];
                let requests = s["requests"].as_u64().expect("requests");
                let what = format!("{engine} c{c} prefix {prefix}: {s}");
                // Every request exact, by the server's own usage (unknown or mismatched would show here).
                assert_eq!(s["failed"], 0, "{what}");
                assert_eq!(
                    s["input_tokens"]["exact"].as_u64(),
                    Some(requests),
                    "{what}"
                );
                assert_eq!(
                    s["output_tokens"]["exact"].as_u64(),
                    Some(requests),
                    "{what}"
                );
                assert_eq!(s["output_tokens"]["expected"], 32, "{what}");
                let rate = cell["server_metrics"]["prefix_cache_hit_rate"]
                    .as_f64()
                    .unwrap_or_else(|| {
                        panic!(
                            "no hit rate from the server's counters: {}",
                            cell["server_metrics"]
                        )
                    });
                if prefix == 0 {
                    assert!(
                        rate < 0.05,
                        "unique prompts must not hit the prefix cache: {rate} ({what})"
                    );
                } else {
                    assert!(
                        rate > 0.3,
                        "a 192-of-256-token shared prefix must hit: {rate} ({what})"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8);
    let csv = std::fs::read_to_string(results.join("cells.csv")).expect("cells.csv");
    assert_eq!(csv.lines().count(), 9, "a header and 8 rows");
    let summary = std::fs::read_to_string(results.join("report/summary.zh.md")).expect("summary");
    assert!(
        summary.contains("Tiny Llama") && summary.contains("vllm"),
        "report names model and engine"
    );
}
