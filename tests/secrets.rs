//! Secrets stay secret: a token expanded into a command with `${…}`, an `--api-key` argument and an
//! engine's `api_key` appear in no output of `runner plan`, `runner run` or `runner report`, and in no file
//! under the results directory; the API key is really sent (the simulated engine refuses requests
//! without it), and a rotated token does not change a settings hash.

use std::path::Path;
use std::process::Output;

use runner::experiment::load::{LoadSpec, Vocab};
use runner::load::{LoadClient, Progress, Target, run_point};
use runner::secret::ApiKey;
use runner::sim::{SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

use crate::common::{experiment_dir, json, runner_cmd, text};

const TOKEN: &str = "hf-tok-5ecret-value-913";
const API_KEY: &str = "sk-api-key-value-4711";

/// Two simulated engines, one started directly and one through `sh -c`, given the token and the API key
/// in every way a file can: `${VAR}` in the command, an assignment, `--api-key X`, `--api-key=X`, a
/// secret `env` entry, and `api_key`. The second prints both secrets first, as vLLM logs its arguments:
/// its log must still not show them.
const EXPERIMENT: &str = r#"
title = "secrets"
results_dir = "results/secrets"

[engines.sim]
preset = "sim"
command = "{{ runner }} sim --port {{ port }} --startup-delay 0 --seed 3 --api-key ${RUNNER_TEST_SECRET_TOKEN}"
api_key = "${RUNNER_TEST_SECRET_TOKEN}"

[engines.sim-sh]
preset = "sim"
shell = true
command = "echo engine args: ${RUNNER_TEST_API_KEY} $HF_TOKEN; HF_TOKEN=${RUNNER_TEST_SECRET_TOKEN} exec {{ runner }} sim --port {{ port }} --startup-delay 0 --api-key=${RUNNER_TEST_API_KEY}"
api_key = "${RUNNER_TEST_API_KEY}"
[engines.sim-sh.env]
HF_TOKEN = "${RUNNER_TEST_SECRET_TOKEN}"

[models.tiny]
input_tokens = 32
output_tokens = 4
[models.tiny.precisions]
fp8 = { path = "sim/tiny-fp8" }

[matrix]
model = ["tiny"]
precision = ["fp8"]
engine = ["sim", "sim-sh"]
concurrency = [2]

[load]
requests = 4
warmup = 1
timeout = "30s"
"#;

fn runner(dir: &Path, args: &[&str], token: &str) -> Output {
    runner_cmd(dir, args)
        .env("RUNNER_TEST_SECRET_TOKEN", token)
        .env("RUNNER_TEST_API_KEY", API_KEY)
        .output()
        .expect("runner starts")
}

fn assert_no_secret(what: &str, content: &str) {
    for secret in [TOKEN, API_KEY] {
        assert!(
            !content.contains(secret),
            "{what} shows a secret:\n{content}"
        );
    }
}

#[test]
fn no_secret_reaches_any_output_or_result_file() {
    let (_tmp, dir) = experiment_dir("s.toml", EXPERIMENT);

    let mut outputs = Vec::new();
    for args in [
        &["plan", "s.toml"][..],
        &["plan", "s.toml", "--json"],
        &["s.toml"],
        &["report", "s.toml"],
    ] {
        let out = runner(&dir, args, TOKEN);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "runner {args:?}:\n{stderr}");
        assert_no_secret(&format!("runner {args:?} stdout"), &stdout);
        assert_no_secret(&format!("runner {args:?} stderr"), &stderr);
        outputs.push(stdout);
    }
    // The plan still shows the command, with the secrets marked as hidden.
    assert!(
        outputs[0].contains("--api-key '<redacted>'") && outputs[0].contains("HF_TOKEN=<redacted>"),
        "{}",
        outputs[0]
    );

    let results = dir.join("results/secrets");
    let all = crate::common::files_under(&results, |_| true);
    assert!(
        all.iter().filter(|p| p.ends_with("result.json")).count() == 2,
        "both servers measured (the key was sent): {all:?}"
    );
    for file in &all {
        let bytes = std::fs::read(file).expect("read result file");
        assert_no_secret(
            &file.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }
    let server = json(&results.join("servers/tiny/fp8/sim/server.json"));
    assert!(
        server["command"]
            .as_str()
            .is_some_and(|c| c.contains("--api-key '<redacted>'")),
        "{server}"
    );
    // The engine that printed its secrets did print them: its log shows where they were.
    let log = std::fs::read_to_string(results.join("servers/tiny/fp8/sim-sh/server.log"))
        .expect("server.log");
    assert!(log.contains("engine args: <redacted> <redacted>"), "{log}");
}

#[test]
fn a_rotated_token_keeps_every_settings_hash() {
    let (_tmp, dir) = experiment_dir("s.toml", EXPERIMENT);
    let hashes = |token: &str| {
        let out = runner(&dir, &["plan", "s.toml", "--json"], token);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
        v["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .map(|s| (s["hash"].clone(), s["cells"][0]["hash"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(hashes(TOKEN), hashes("another-token-value"));
}

#[test]
fn a_secret_in_a_bad_value_is_hidden_in_the_error() {
    let body = EXPERIMENT.replace(
            "[engines.sim-sh]\n",
            "[engines.remote]\nurl = \"ftp://user:${RUNNER_TEST_SECRET_TOKEN}@host\"\n\n[engines.sim-sh]\n",
        );
    let (_tmp, dir) = experiment_dir("s.toml", &body);
    let out = runner(&dir, &["plan", "s.toml"], TOKEN);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not an http:// URL"), "{stderr}");
    assert_no_secret("the error", &stderr);
}

/// The load tests' point (crate::load::spec), without a warm-up and with a smaller vocabulary.
fn spec() -> LoadSpec {
    LoadSpec {
        warmup: 0,
        vocab: Vocab {
            tokenizer: None,
            id_range: [100, 1000],
        },
        ..crate::load::spec(2, 4, 16, 4)
    }
}

/// The simulated engine with `--api-key` refuses requests without the key (so the end-to-end test above
/// proves the key is sent), and the load client sends it on every request.
#[tokio::test]
async fn the_api_key_is_required_by_the_simulator_and_sent_by_the_client() {
    let sim = SimHandle::start(SimConfig {
        startup_delay: std::time::Duration::ZERO,
        api_key: Some(API_KEY.into()),
        ..SimConfig::default()
    })
    .await
    .expect("sim starts");
    let health = reqwest::get(format!("{}/health", sim.url()))
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "health needs no key, as vLLM's");

    let client = LoadClient::new().expect("client");
    let target = |key: Option<&str>| Target {
        api_key: key.map(ApiKey::new),
        ..crate::load::target(&sim)
    };
    let progress = Progress::default();
    let cancel = CancellationToken::new();
    for (key, ok) in [(None, 0), (Some("wrong"), 0), (Some(API_KEY), 4)] {
        let out = run_point(
            &client,
            &target(key),
            &spec(),
            &progress,
            &cancel,
            Vec::new(),
        )
        .await
        .expect("point runs");
        assert_eq!(out.summary.succeeded, ok, "key {key:?}");
        if ok == 0 {
            assert!(
                out.records.iter().all(|r| r.status == Some(401)),
                "{:?}",
                out.records
            );
        }
    }
    sim.stop().await.expect("sim stops");
}
