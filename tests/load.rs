//! The load generator against the in-process simulated engine: exact counts, mismatch detection, errors
//! counted without crashing the point, timeouts, prefix-cache hit rates, cancellation, the load modes,
//! connections opened before the measured phase (counted on the server's side) or by it, and summaries
//! built as records stream out.
//!
//! Timing assertions are lower bounds or orderings only (a busy 2-core machine can make anything late,
//! never early). Each test's engine stops when its `SimHandle` drops, even if an assertion fails.

use std::time::{Duration, Instant};

use runner::engine::{CacheCounters, Preset};
use runner::experiment::load::{Api, LoadSpec, PromptMode, Slo, Vocab};
use runner::load::{LoadClient, LoadError, PointOutcome, Progress, Target, run_point};
use runner::sim::{SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

use crate::common::Guard;

/// Fixed timing (5 ms to first token, 1 ms per token), no loading time.
fn fast() -> SimConfig {
    SimConfig {
        startup_delay: Duration::ZERO,
        eos_probability: 0.0,
        ..SimConfig::fixed(Duration::from_millis(5), Duration::from_millis(1))
    }
}

pub(crate) fn spec(concurrency: u32, requests: u32, input: u32, output: u32) -> LoadSpec {
    LoadSpec {
        concurrency,
        requests,
        warmup: 1,
        max_inflight: None,
        request_rate: None,
        prompt: PromptMode::Unique,
        input_tokens: input,
        output_tokens: output,
        timeout: Duration::from_secs(30),
        seed: 1,
        api: Api::Completions,
        slo: Slo::default(),
        // Below the simulator's vocabulary size; its last id is end-of-sequence.
        vocab: Vocab {
            tokenizer: None,
            id_range: [100, 150_000],
        },
        save_prompts: false,
        connections: Default::default(),
        repeats: 1,
        repeat: 1,
    }
}

pub(crate) fn target(sim: &SimHandle) -> Target {
    Target {
        base_url: sim.url(),
        model: "sim".into(),
        dialect: Preset::Sim.defaults().dialect,
        metrics_url: Some(format!("{}/metrics", sim.url())),
        cache_counters: CacheCounters::Vllm,
        api_key: None,
    }
}

/// Runs a point into memory; records in issue order.
async fn run_with(target: &Target, spec: &LoadSpec) -> PointOutcome {
    let client = LoadClient::new().unwrap();
    let progress = Progress::default();
    let mut out = run_point(
        &client,
        target,
        spec,
        &progress,
        &CancellationToken::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(progress.done(), u64::from(spec.requests));
    out.records.sort_by_key(|r| r.index);
    out
}

async fn run(sim: &SimHandle, spec: &LoadSpec) -> PointOutcome {
    run_with(&target(sim), spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_and_records() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let out = run(&sim, &spec(4, 12, 64, 8)).await;
    let s = &out.summary;
    assert_eq!((s.requests, s.succeeded, s.failed), (12, 12, 0), "{s:#?}");
    assert_eq!((s.output_tokens.exact, s.input_tokens.exact), (12, 12));
    assert_eq!(s.output_tokens.mismatched + s.output_tokens.unknown, 0);
    assert_eq!(s.client.peak_inflight, 4);

    assert_eq!(out.records.len(), 13);
    assert!(out.records[0].warmup && !out.records[1].warmup);
    for r in &out.records {
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.chunk_ms.len(), 8, "one message per token");
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(64), Some(8)));
        assert!(!r.input_mismatch && !r.output_mismatch);
        // The engine's schedule is a lower bound: 5 ms to the first token, 7 more at 1 ms.
        assert!(
            r.ttft_ms.unwrap() >= 5.0 && r.e2e_ms.unwrap() >= 12.0,
            "{r:?}"
        );
        assert!(r.chunk_ms.windows(2).all(|w| w[1] >= w[0]));
        assert!(r.end_ms >= *r.chunk_ms.last().unwrap());
    }
    // No lower bound on TPOT: a late first token is followed by on-schedule ones (absolute deadlines).
    let count = |d: &Option<runner::stats::Dist>| d.as_ref().map(|d| d.count);
    assert_eq!(
        (count(&s.tpot_ms), count(&s.itl_ms)),
        (Some(12), Some(12 * 7))
    );
    let positive = |x: Option<f64>| x.is_some_and(|x| x > 0.0);
    assert!(positive(s.qps) && positive(s.decode_tps) && positive(s.prompt_tps));
    // One JSONL line per request, readable back.
    let line = serde_json::to_string(&out.records[1]).unwrap();
    let back: runner::load::RequestRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(back.chunk_ms.len(), 8);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(back.sent_ms, out.records[1].sent_ms));
    assert!(
        back.chunk_ms
            .iter()
            .zip(&out.records[1].chunk_ms)
            .all(|(a, b)| close(*a, *b))
    );
    assert_eq!(back.completion_tokens, Some(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outputs_are_flagged_not_assumed() {
    let mut config = fast();
    config.faults.emit_fewer = 3;
    let sim = SimHandle::start(config).await.unwrap();
    let out = run(&sim, &spec(2, 6, 32, 8)).await;
    let s = &out.summary;
    assert_eq!(
        s.succeeded, 6,
        "a short output is a measurement, flagged, not a failure"
    );
    assert_eq!((s.output_tokens.exact, s.output_tokens.mismatched), (0, 6));
    assert_eq!(
        (s.output_tokens.min, s.output_tokens.max),
        (Some(5), Some(5))
    );
    for r in out.records.iter().filter(|r| !r.warmup) {
        assert!(r.output_mismatch);
        assert_eq!(r.completion_tokens, Some(5));
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_counted() {
    let mut config = fast();
    config.faults.fail_rate = 0.5;
    let sim = SimHandle::start(config).await.unwrap();
    let out = run(&sim, &spec(4, 24, 16, 4)).await;
    let s = &out.summary;
    let http_500 = s.errors.get("http_500").copied().unwrap_or(0);
    assert!(http_500 > 0 && s.succeeded > 0, "{s:#?}");
    assert_eq!(s.failed, http_500);
    assert_eq!(s.succeeded + s.failed, 24);
    let failed = out.records.iter().find(|r| !r.ok()).unwrap();
    assert_eq!(failed.status, Some(500));
    assert!(
        failed
            .error_message
            .as_deref()
            .is_some_and(|m| !m.is_empty())
    );
    // Latency statistics cover successful requests only.
    assert_eq!(s.ttft_ms.as_ref().map(|d| d.count), Some(s.succeeded));
    // An error answer does not cost the next request a connect.
    assert_eq!(s.new_connections, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_streams_are_counted_with_what_arrived() {
    let mut config = fast();
    config.faults.cut_stream_after = Some(3);
    let sim = SimHandle::start(config).await.unwrap();
    let out = run(&sim, &spec(2, 5, 16, 8)).await;
    let s = &out.summary;
    assert_eq!(s.errors.get("stream_cut"), Some(&5), "{s:#?}");
    assert_eq!(s.succeeded, 0);
    for r in &out.records {
        assert_eq!(r.chunk_ms.len(), 3, "{r:?}");
        assert_eq!(r.completion_tokens, None, "no usage: unknown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_counted_and_end_the_request() {
    let config = SimConfig {
        startup_delay: Duration::ZERO,
        ..SimConfig::fixed(Duration::from_secs(20), Duration::from_millis(1))
    };
    let sim = SimHandle::start(config).await.unwrap();
    let mut spec = spec(3, 3, 16, 4);
    spec.warmup = 0;
    spec.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let out = run(&sim, &spec).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(out.summary.errors.get("timeout"), Some(&3));
    for r in &out.records {
        assert!(r.end_ms - r.sent_ms >= 300.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_hit_rate_unique_vs_shared() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let unique = run(&sim, &spec(2, 8, 512, 2)).await;
    let rate = unique.server_metrics.prefix_cache_hit_rate.unwrap();
    assert!(rate < 0.05, "unique prompts hit the cache: {rate}");
    assert!(
        unique
            .server_metrics
            .deltas
            .keys()
            .any(|k| k.starts_with("vllm:prefix_cache_queries_total"))
    );

    let mut shared = spec(2, 8, 512, 2);
    shared.prompt = PromptMode::SharedPrefix { tokens: 496 };
    let out = run(&sim, &shared).await;
    let rate = out.server_metrics.prefix_cache_hit_rate.unwrap();
    // The first request of the point fills the cache; the other 8 hit 496 of 512 tokens (86 %).
    assert!(rate > 0.8, "shared prefix barely hit: {rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_promptly() {
    let config = SimConfig {
        startup_delay: Duration::ZERO,
        ..SimConfig::fixed(Duration::from_secs(30), Duration::from_millis(1))
    };
    let sim = SimHandle::start(config).await.unwrap();
    let client = LoadClient::new().unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let result = run_point(
        &client,
        &target(&sim),
        &spec(4, 8, 16, 4),
        &Progress::default(),
        &cancel,
        Vec::new(),
    )
    .await;
    assert!(matches!(result, Err(LoadError::Interrupted)));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_and_rate_mode() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let mut capped = spec(8, 16, 16, 4);
    capped.max_inflight = Some(2);
    let out = run(&sim, &capped).await;
    assert!(out.summary.client.peak_inflight <= 2);
    assert!(
        out.summary.queue_ms.as_ref().is_some_and(|d| d.max > 0.0),
        "requests waited at the cap"
    );
    assert_eq!(out.summary.succeeded, 16);

    let mut paced = spec(4, 10, 16, 4);
    paced.request_rate = Some(100.0);
    let out = run(&sim, &paced).await;
    assert_eq!(out.summary.succeeded, 10);
    for r in out.records.iter().filter(|r| !r.warmup) {
        assert_eq!(
            r.origin_ms, r.intended_ms,
            "rate mode measures from the schedule"
        );
        assert!(r.sent_ms >= r.intended_ms);
    }
    let intended: Vec<f64> = out.records[1..].iter().map(|r| r.intended_ms).collect();
    assert!(intended.windows(2).all(|w| w[1] >= w[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_api_counts_output_and_reports_template_tokens() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let mut chat = spec(2, 4, 20, 6);
    chat.api = Api::Chat;
    let out = run(&sim, &chat).await;
    assert_eq!(out.summary.output_tokens.exact, 4, "{:#?}", out.summary);
    for r in &out.records {
        assert_eq!(r.chunk_ms.len(), 6, "{r:?}");
        assert_eq!(r.prompt_tokens_sent, None, "no tokenizer: length unknown");
        // The chat template adds tokens: reported from usage and flagged.
        assert!(r.prompt_tokens.unwrap() > 20 && r.input_mismatch);
    }
}

/// The target without a metrics endpoint: no scrape opens a connection of its own, so every connection
/// the simulator accepts is one the load opened.
fn target_without_metrics(sim: &SimHandle) -> Target {
    Target {
        metrics_url: None,
        ..target(sim)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_leave_the_measured_phase_without_a_connect() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let spec = spec(8, 40, 32, 4);
    let out = run_with(&target_without_metrics(&sim), &spec).await;
    let s = &out.summary;
    assert_eq!(s.succeeded, 40, "{s:#?}");
    // The warm-up request opened one connection; seven more were opened before the clock started.
    assert_eq!(s.client.connections_warm, Some(8));
    assert!(s.client.connect_ms.is_some_and(|ms| ms >= 0.0));
    assert_eq!(
        sim.connections_accepted(),
        8,
        "the server accepted exactly the connections opened before the measured phase"
    );
    assert_eq!(s.new_connections, Some(0));
    for r in out.records.iter().filter(|r| !r.warmup) {
        assert!(!r.new_connection, "{r:?}");
    }
    assert!(
        out.records[0].new_connection,
        "the warm-up request connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_connections_are_opened_by_measured_requests_and_counted() {
    let sim = SimHandle::start(fast()).await.unwrap();
    let mut spec = spec(8, 40, 32, 4);
    spec.connections = runner::experiment::load::Connections::Cold;
    let out = run_with(&target_without_metrics(&sim), &spec).await;
    let s = &out.summary;
    assert_eq!(s.succeeded, 40, "{s:#?}");
    assert_eq!(s.client.connections_warm, None);
    assert_eq!(s.client.connect_ms, None);
    // The first wave of 8 finds the warm-up's connection and opens 7; later requests reuse them.
    assert_eq!(sim.connections_accepted(), 8);
    assert_eq!(s.new_connections, Some(7));
    let flagged = out.records.iter().filter(|r| !r.warmup && r.new_connection);
    assert_eq!(flagged.count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_summary_equals_the_summary_of_the_same_records() {
    let mut config = fast();
    config.faults.fail_rate = 0.2; // errors too, counted by kind
    let sim = SimHandle::start(config).await.unwrap();
    let mut spec = spec(6, 60, 48, 6);
    spec.slo.ttft = Some(Duration::from_millis(50));
    let out = run(&sim, &spec).await;
    assert!(out.summary.failed > 0 && out.summary.succeeded > 0);
    // The records reached the sink one by one, as requests finished; the summary was built from them on
    // the way. It is exactly what summarising them all at once gives.
    let again = runner::stats::summarize(&out.records, &spec, out.summary.client.clone());
    assert_eq!(again, out.summary);
    // And from the JSON lines a cell stores (floats written and read back: equal to the last digits).
    let lines: Vec<String> = out
        .records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let back: Vec<runner::load::RequestRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reread = runner::stats::summarize(&back, &spec, out.summary.client.clone());
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (a, b) => a == b,
    };
    let mean = runner::stats::Dist::mean_of;
    assert!(close(mean(&reread.ttft_ms), mean(&out.summary.ttft_ms)));
    assert!(close(mean(&reread.itl_ms), mean(&out.summary.itl_ms)));
    assert!(close(reread.goodput_rps, out.summary.goodput_rps));
    assert_eq!(reread.errors, out.summary.errors);
}

#[test]
fn bench_client_prints_a_row_per_concurrency() {
    use std::io::Read;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "bench-client",
            "--concurrency",
            "1,3",
            "--input-tokens",
            "16",
        ])
        .args(["--output-tokens", "4", "--ttft-ms", "5", "--itl-ms", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "bench-client did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("| 1 | 10/10 | 1 |"), "{out}");
    assert!(out.contains("| 3 | 10/10 | 3 |"), "{out}");
}
