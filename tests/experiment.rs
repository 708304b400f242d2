//! Bad input: every broken experiment file exits 2 with a message naming the file, the key or line, and
//! the fix; nothing panics. Table-driven: each case is a file body and the fragments the error must show.

use crate::common::{run_in, runner_cmd, text};

const VALID: &str = r#"
title = "t"

[engines.srv]
command = "my-server --model {{ model.path }} --port {{ port }} --max-model-len {{ max_model_len }}"

[models.m]
input_tokens = 100
output_tokens = 8
[models.m.precisions]
fp8 = { path = "/models/m-fp8" }

[matrix]
model = ["m"]
precision = ["fp8"]
engine = ["srv"]
concurrency = [1, 4]
"#;

/// (name, file body, fragments that must all appear in stderr).
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let with = |from: &str, to: &str| {
        assert!(VALID.contains(from), "case setup: {from:?} not in VALID");
        VALID.replacen(from, to, 1)
    };
    vec![
        ("empty file", String::new(), vec!["the file is empty", "help:"]),
        ("whitespace only", "  \n\n".into(), vec!["the file is empty"]),
        ("syntax error", with("title = \"t\"", "title = \"t"), vec!["t.toml:2:"]),
        ("unclosed table header", with("[matrix]", "[matrix"), vec!["t.toml:13:", "TOML syntax", "fix the syntax"]),
        ("typo at top level", with("title =", "titel ="), vec!["t.toml:2:1", "`titel`", "did you mean `title`?"]),
        ("typo in engine key", with("[engines.srv]\n", "[engines.srv]\nready_timout = \"5m\"\n"), vec!["t.toml:5:1", "engines.srv.ready_timout", "did you mean `ready_timeout`?"]),
        ("typo in model key", with("input_tokens = 100", "input_tokens = 100\noutput_token = 8"), vec!["models.m.output_token", "did you mean `output_tokens`?"]),
        ("wrong type", with("input_tokens = 100", "input_tokens = \"100\""), vec!["t.toml:8:", "invalid type", "help:"]),
        ("negative tokens", with("output_tokens = 8", "output_tokens = -8"), vec!["t.toml:9:"]),
        ("dangling model", with("model = [\"m\"]", "model = [\"n\"]"), vec!["matrix.model", "no model named `n`", "defined models: m"]),
        ("dangling engine typo", with("engine = [\"srv\"]", "engine = [\"svr\"]"), vec!["t.toml:16:1", "no engine named `svr`", "did you mean `srv`?"]),
        ("dangling precision", with("precision = [\"fp8\"]", "precision = [\"fp8\", \"nvfp4\"]"), vec!["no precision named `nvfp4`"]),
        ("precision without checkpoint for one model", with("[matrix]", "[models.k]\ninput_tokens = 10\noutput_tokens = 2\n[models.k.precisions]\nnvfp4 = { path = \"/x\" }\n\n[matrix]").replacen("model = [\"m\"]", "model = [\"m\", \"k\"]", 1), vec!["precision `fp8`", "no checkpoint path", "[[matrix.exclude]]"]),
        ("precision with no path", with("fp8 = { path = \"/models/m-fp8\" }", "fp8 = { name = \"x\" }"), vec!["models.m.precisions.fp8", "has no checkpoint `path`"]),
        ("undefined template variable", with("{{ model.path }}", "{{ modle.path }}"), vec!["engines.srv.command", "cannot render", "modle", "variables available here"]),
        ("unused matrix variable", with("concurrency = [1, 4]", "concurrency = [1, 4]\ngpu_mem = [0.9]"), vec!["matrix.gpu_mem", "used by no template", "{{ gpu_mem }}"]),
        ("load typo as matrix variable", with("concurrency = [1, 4]", "concurrency = [1, 4]\nwarmpu = [0]"), vec!["matrix.warmpu", "did you mean `warmup`?"]),
        ("empty matrix list", with("concurrency = [1, 4]", "concurrency = []"), vec!["`concurrency` is missing or empty"]),
        ("exclude removes everything", format!("{VALID}\n[[matrix.exclude]]\nengine = \"srv\"\n"), vec!["expands to no cells", "matrix.exclude"]),
        ("bad duration", with("[engines.srv]\n", "[engines.srv]\nstop_grace = \"3 parsecs\"\n"), vec!["t.toml:5:", "is not a duration", "\"30m\""]),
        ("unknown preset", with("[engines.srv]\n", "[engines.srv]\npreset = \"vlm\"\n"), vec!["engines.srv.preset", "did you mean `vllm`?"]),
        ("url and command", with("[engines.srv]\n", "[engines.srv]\nurl = \"http://127.0.0.1:9\"\n"), vec!["engines.srv.url", "not both"]),
        ("no engines", VALID.split("[engines.srv]").next().unwrap_or_default().to_string() + "[models.m]\ninput_tokens=1\noutput_tokens=1\n[models.m.precisions]\nfp8={path=\"/x\"}\n[matrix]\nmodel=[\"m\"]\nprecision=[\"fp8\"]\nengine=[\"srv\"]\nconcurrency=[1]\n", vec!["no engines are defined", "[engines.NAME]"]),
        ("no matrix", VALID.split("[matrix]").next().unwrap_or_default().to_string(), vec!["there is no [matrix]"]),
        ("zero concurrency", with("concurrency = [1, 4]", "concurrency = [0, 4]"), vec!["concurrency must be a whole number from 1 to 100000, found 0"]),
        ("concurrency in load", format!("{VALID}\n[load]\nconcurrency = 4\n"), vec!["load.concurrency", "matrix axis"]),
        ("load key typo", format!("{VALID}\n[load]\nwarmpu = 2\n"), vec!["t.toml:20:1", "load.warmpu", "did you mean `warmup`?"]),
        ("bad requests expression", format!("{VALID}\n[load]\nrequests = \"3 * concurency\"\n"), vec!["load.requests", "unknown name `concurency`"]),
        ("bad prompt mode", format!("{VALID}\n[load]\nprompt = \"same\"\n"), vec!["load.prompt", "\"shared_prefix\""]),
        ("duplicate ids", with("concurrency = [1, 4]", "concurrency = [1, 4]\nflag = [0.5, \"0.5\"]").replacen("--port {{ port }}", "--port {{ port }} --f {{ flag }}", 1), vec!["two cells have the id", "m/fp8/srv/flag=0.5/c1"]),
        ("command needs a shell", with("--port {{ port }}", "--port {{ port }} | tee log"), vec!["needs a shell", "shell = true"]),
        ("unset environment variable", with("/models/m-fp8", "${RUNNER_TEST_SURELY_UNSET}/m"), vec!["RUNNER_TEST_SURELY_UNSET", "is not set"]),
        ("several problems at once", with("title =", "titel =").replacen("engine = [\"srv\"]", "engine = [\"svr\"]", 1), vec!["2 problems in", "titel", "svr"]),
        // Bounds: each a located error with the fix.
        ("zero request rate", format!("{VALID}\n[load]\nrequest_rate = 0\n"), vec!["t.toml:20:1", "load.request_rate", "from 0.001 to 1000000"]),
        ("infinite request rate", format!("{VALID}\n[load]\nrequest_rate = inf\n"), vec!["load.request_rate", "expected requests per second, found inf"]),
        ("vanishing request rate", format!("{VALID}\n[load]\nrequest_rate = 1e-300\n"), vec!["load.request_rate", "from 0.001"]),
        ("too many input tokens", with("input_tokens = 100", "input_tokens = 4000000000"), vec!["t.toml:8:1", "models.m.input_tokens", "more than any model serves", "at most 10000000"]),
        ("tokens beyond u32", with("output_tokens = 8", "output_tokens = 99999999999"), vec!["t.toml:9:"]),
        ("headroom that would overflow max_model_len", with("output_tokens = 8", "output_tokens = 8\ncontext_headroom = 4294967295"), vec!["models.m.context_headroom", "at most 10000000"]),
        ("huge concurrency", with("concurrency = [1, 4]", "concurrency = [1, 4000000]"), vec!["matrix.concurrency", "from 1 to 100000"]),
        ("huge request count", format!("{VALID}\n[load]\nrequests = 50000000\n"), vec!["load.requests", "from 1 to 1000000"]),
        ("huge warm-up", format!("{VALID}\n[load]\nwarmup = 5000000\n"), vec!["load.warmup", "from 0 to 100000"]),
        ("week-long timeout", format!("{VALID}\n[load]\ntimeout = \"100 years\"\n"), vec!["load.timeout", "longer than a week"]),
        ("engine timeout beyond the clock", with("[engines.srv]\n", "[engines.srv]\nready_timeout = \"100000000 years\"\n"), vec!["t.toml:5:1", "engines.srv.ready_timeout", "longer than a week"]),
        ("matrix too large to build", with("concurrency = [1, 4]", &format!("concurrency = [{}]\nwarmup = [{}]\nseed = [{}]\nmax_inflight = [{}]\ntimeout = [{}]", forty(), forty(), forty(), forty(), (1..=40).map(|n| format!("\"{n}s\"")).collect::<Vec<_>>().join(", "))), vec!["concurrency 40 × warmup 40 × seed 40 × max_inflight 40 × timeout 40", "102400000 combinations", "more than 10000"]),
        ("empty api key", with("[engines.srv]\n", "[engines.srv]\napi_key = \"\"\n"), vec!["engines.srv.api_key", "is empty"]),
        // [cost]: one way to price the GPUs, positive numbers, a currency code.
        ("cost without currency", format!("{VALID}\n[cost]\ngpu_hour = 2.5\n"), vec!["t.toml:19:", "`cost`", "`currency` is missing", "currency = \"USD\""]),
        ("negative gpu price", format!("{VALID}\n[cost]\ngpu_hour = -1\ncurrency = \"USD\"\n"), vec!["t.toml:20:1", "cost.gpu_hour", "not a positive price"]),
        ("vm price without its gpus", format!("{VALID}\n[cost]\nvm_hour = 20\ncurrency = \"USD\"\n"), vec!["cost.vm_hour", "needs `vm_gpus`"]),
        ("vm with zero gpus", format!("{VALID}\n[cost]\nvm_hour = 20\nvm_gpus = 0\ncurrency = \"USD\"\n"), vec!["cost.vm_gpus", "at least one GPU"]),
        ("two prices", format!("{VALID}\n[cost]\ngpu_hour = 2\nvm_hour = 20\nvm_gpus = 8\ncurrency = \"USD\"\n"), vec!["cost.vm_hour", "not both"]),
        ("lower-case currency", format!("{VALID}\n[cost]\ngpu_hour = 2\ncurrency = \"usd\"\n"), vec!["t.toml:21:1", "cost.currency", "write `currency = \"USD\"`"]),
        ("free electricity", format!("{VALID}\n[cost]\ngpu_hour = 2\ncurrency = \"CNY\"\nkwh = 0\n"), vec!["cost.kwh", "not a positive price"]),
        ("cost key typo", format!("{VALID}\n[cost]\ngpu_hours = 2\ncurrency = \"USD\"\n"), vec!["t.toml:20:1", "cost.gpu_hours", "did you mean `gpu_hour`?"]),
    ]
}

/// `1, 2, …, 40`: five such lists multiply to 102 400 000 combinations.
fn forty() -> String {
    (1..=40)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn broken_files_exit_2_with_a_located_message_and_a_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for (name, body, fragments) in cases() {
        let file = dir.path().join("t.toml");
        std::fs::write(&file, &body).expect("write case");
        let out = run_in(dir.path(), &["plan", "t.toml"]);
        let stderr = text(&out.stderr);
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: exit {:?}, stderr:\n{stderr}",
                out.status.code()
            ));
            continue;
        }
        if stderr.contains("panicked") || !stderr.contains("t.toml") {
            failures.push(format!("{name}: no file name or a panic:\n{stderr}"));
        }
        for f in fragments {
            if !stderr.contains(f) {
                failures.push(format!("{name}: missing {f:?} in:\n{stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn non_utf8_file_is_located() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut body = b"title = \"ok\"\nname = \"".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\"\n");
    std::fs::write(dir.path().join("t.toml"), body).expect("write");
    let out = run_in(dir.path(), &["plan", "t.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("t.toml:2:9") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
}

#[test]
fn missing_file_and_bad_usage_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_in(dir.path(), &["plan", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope.toml") && text(&out.stderr).contains("cannot read"));
    let out = run_in(dir.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_in(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_in(dir.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Exit codes"));
}

#[test]
fn only_filter_with_unknown_key_is_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("t.toml"), VALID).expect("write");
    let out = run_in(dir.path(), &["plan", "t.toml", "--only", "concurency=4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("did you mean `concurrency`?"),
        "{}",
        text(&out.stderr)
    );
    let out = run_in(dir.path(), &["plan", "t.toml", "--only", "concurrency=4"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("c4") && !stdout.contains("  c1 "),
        "{stdout}"
    );
}

#[test]
fn seed_campaign_plan_renders_the_seed_commands() {
    let out = run_in(
        &crate::common::repo(),
        &["plan", "experiments/rtxpro6000.toml"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains(
        "vllm serve /mnt/data/models/Qwen_Qwen3-14B-FP8 --enforce-eager --enable-prefix-caching --max-model-len 10928 --gpu-memory-utilization 0.90"
    ));
    assert!(
        stdout.contains("--max-model-len 21128"),
        "72B: 20000 + 1000 + 128"
    );
    assert!(stdout.contains("--kv-cache-dtype fp8_e5m2"));
    assert!(stdout.contains("totals: 10 servers, 40 cells"), "{stdout}");
    // The seed's rule: 2 requests at c=1, 3 × concurrency elsewhere.
    assert!(stdout.contains("c1 ") && stdout.contains("    2 req + 1 warm-up"));
    assert!(stdout.contains("  120 req + 1 warm-up"));
    let json = run_in(
        &crate::common::repo(),
        &["plan", "experiments/rtxpro6000.toml", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan --json is JSON");
    assert_eq!(v["totals"]["cells"], 40);
    assert_eq!(v["servers"][0]["cells"][0]["id"], "qwen3-14b/fp8/vllm/c1");
}

#[test]
fn only_values_that_match_nothing_suggest_the_closest() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("t.toml"), VALID).expect("write");
    let out = run_in(dir.path(), &["plan", "t.toml", "--only", "model=mm"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no cell has model = mm") && stderr.contains("did you mean `m`?"),
        "{stderr}"
    );
    let out = run_in(dir.path(), &["plan", "t.toml", "--only", "concurrency=99"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("concurrency takes: 1, 4"), "{stderr}");
}

#[test]
fn plan_into_a_closed_pipe_ends_quietly() {
    let mut child = runner_cmd(
        &crate::common::repo(),
        &["plan", "experiments/rtxpro6000.toml"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("runner starts");
    // `| head -0`: the reader is gone before the plan is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("runner ends");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn help_examples_name_what_their_files_have() {
    let repo = crate::common::repo();
    let help = text(&run_in(&repo, &["--help"]).stdout);
    let examples: Vec<&str> = help
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("runner ") && l.contains("--only"))
        .collect();
    assert!(!examples.is_empty(), "{help}");
    for example in examples {
        let words: Vec<&str> = example.split_whitespace().skip(1).collect();
        // Run the example as a plan: same file, same selection, nothing started.
        let args: Vec<&str> = std::iter::once("plan")
            .chain(words.iter().copied().filter(|w| *w != "run"))
            .collect();
        let out = run_in(&repo, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            text(&out.stderr)
        );
    }
}

/// A file that passes the pre-flight on any host: the simulated engine, a checkpoint directory the test
/// creates, no fixed port.
const HOST_READY: &str = r#"
title = "pf"
[engines.srv]
preset = "sim"
command = "{{ runner }} sim --port {{ port }} --served-model-name {{ model.path }}"

[models.m]
input_tokens = 16
output_tokens = 2
[models.m.precisions]
fp8 = { path = "./ckpt" }

[matrix]
model = ["m"]
precision = ["fp8"]
engine = ["srv"]
concurrency = [1]
"#;

/// (name, file body, fragments that must all appear in stderr of `runner t.toml`).
fn preflight_cases(busy_port: u16) -> Vec<(&'static str, String, Vec<String>)> {
    let with = |from: &str, to: &str| {
        assert!(HOST_READY.contains(from), "case setup: {from:?}");
        HOST_READY.replacen(from, to, 1)
    };
    let mut cases = vec![
        (
            "program not on PATH",
            with("{{ runner }} sim", "surely-not-installed-srv sim"),
            vec![
                "t.toml:5:1".into(),
                "`engines.srv.command`".into(),
                "program `surely-not-installed-srv` is not on PATH".into(),
                "full path".into(),
            ],
        ),
        (
            "program path that does not exist",
            with("{{ runner }} sim", "./bin/srv sim"),
            vec!["program `./bin/srv` does not exist or is not executable".into()],
        ),
        (
            "local checkpoint missing",
            with("./ckpt", "/nonexistent/ckpt"),
            vec![
                "t.toml:11:9".into(),
                "models.m.precisions.fp8.path".into(),
                "checkpoint /nonexistent/ckpt does not exist".into(),
            ],
        ),
        (
            "missing tokenizer",
            with(
                "output_tokens = 2",
                "output_tokens = 2\ntokenizer = \"./no-such-tokenizer.json\"",
            ),
            vec![
                "models.m.tokenizer".into(),
                "no tokenizer at ./no-such-tokenizer.json".into(),
            ],
        ),
        (
            "missing workdir",
            with(
                "preset = \"sim\"",
                "preset = \"sim\"\nworkdir = \"/nonexistent-workdir\"",
            ),
            vec![
                "engines.srv.workdir".into(),
                "/nonexistent-workdir is not a directory".into(),
            ],
        ),
        (
            "fixed port in use",
            with(
                "preset = \"sim\"",
                &format!("preset = \"sim\"\nport = {busy_port}"),
            ),
            vec![
                "engines.srv.port".into(),
                format!("port {busy_port} is in use now"),
            ],
        ),
        (
            "everything at once",
            with("{{ runner }} sim", "surely-not-installed-srv sim").replacen(
                "./ckpt",
                "/nonexistent/ckpt",
                1,
            ),
            vec![
                "2 problems in".into(),
                "surely-not-installed-srv".into(),
                "/nonexistent/ckpt".into(),
            ],
        ),
    ];
    if runner::tool::find_program("python3", None, None).is_some() {
        cases.push((
            "python module not installed",
            with(
                "{{ runner }} sim",
                "python3 -m surely_no_such_package.server sim",
            ),
            vec![
                "`python3 -m surely_no_such_package.server`".into(),
                "cannot find the package `surely_no_such_package`".into(),
            ],
        ));
    }
    cases
}

#[test]
fn preflight_problems_stop_the_run_before_anything_starts() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let mut failures = Vec::new();
    for (name, body, fragments) in preflight_cases(busy_port) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("ckpt")).expect("checkpoint dir");
        std::fs::write(dir.path().join("t.toml"), &body).expect("write case");
        let out = run_in(dir.path(), &["t.toml"]);
        let stderr = text(&out.stderr);
        if out.status.code() != Some(2) {
            failures.push(format!("{name}: exit {:?}:\n{stderr}", out.status.code()));
            continue;
        }
        for f in fragments
            .iter()
            .map(String::as_str)
            .chain(["pre-flight", "--no-preflight"])
        {
            if !stderr.contains(f) {
                failures.push(format!("{name}: missing {f:?} in:\n{stderr}"));
            }
        }
        if dir.path().join("results").exists() || stderr.contains("starting on port") {
            failures.push(format!(
                "{name}: something was started or written:\n{stderr}"
            ));
        }
        // The plan shows the same problem and still exits 0.
        let plan = run_in(dir.path(), &["plan", "t.toml"]);
        let stdout = text(&plan.stdout);
        if plan.status.code() != Some(0)
            || !stdout.contains(fragments[fragments.len() - 1].as_str())
        {
            failures.push(format!(
                "{name}: plan exit {:?}:\n{stdout}",
                plan.status.code()
            ));
        }
    }
    drop(busy);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn preflight_passes_a_ready_host_and_can_be_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("ckpt")).expect("checkpoint dir");
    // A hub id is not a local path: it is left to the engine, never reported missing.
    let body = HOST_READY.replacen("./ckpt", "Org/Model-FP8", 1);
    std::fs::write(dir.path().join("t.toml"), &body).expect("write");
    let plan = run_in(dir.path(), &["plan", "t.toml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    assert_eq!(v["preflight"], serde_json::json!([]), "{v}");

    // With a missing program, --no-preflight starts anyway and the server fails at its start.
    let body = HOST_READY.replacen("{{ runner }} sim", "surely-not-installed-srv sim", 1);
    std::fs::write(dir.path().join("t.toml"), &body).expect("write");
    let out = run_in(dir.path(), &["t.toml", "--no-preflight"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("pre-flight") && stderr.contains("surely-not-installed-srv"),
        "{stderr}"
    );
}

#[test]
fn seed_campaign_fails_in_the_first_second_on_a_host_without_its_engines() {
    if runner::tool::find_program("vllm", None, None).is_some()
        || std::path::Path::new("/mnt/data/models").exists()
    {
        return; // a host with the campaign's engines or checkpoints: nothing to prove here
    }
    let started = std::time::Instant::now();
    let out = run_in(&crate::common::repo(), &["experiments/rtxpro6000.toml"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for fragment in [
        "program `vllm` is not on PATH",
        "engines.sglang.command",
        "checkpoint /mnt/data/models/Qwen_Qwen3-14B-FP8 does not exist",
        "checkpoint /mnt/data/models/Qwen2.5-72B-Instruct-fp8 does not exist",
    ] {
        assert!(stderr.contains(fragment), "missing {fragment:?}:\n{stderr}");
    }
    assert!(!stderr.contains("starting on port"), "{stderr}");
}
