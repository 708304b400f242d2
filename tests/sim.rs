//! The simulated engine (`runner sim`): wire format, behaviour model, prefix cache and fault knobs.
//!
//! Timing assertions are made robust for a busy 2-core machine in two ways: model times are read from the
//! simulator's timing log (what it *scheduled*, which does not depend on machine load), and client-side
//! times are only compared as orderings, generous ratios or lower bounds (a schedule can be late, never
//! early). Knobs that end the process are tested on the real binary, killed at the end of each test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use runner::sim::{BatchParams, SimConfig, SimExit, SimHandle, Timing, TimingRecord, read_log};
use serde_json::{Value, json};

/// A fast, quiet engine: no loading time, no early end-of-sequence.
fn quick() -> SimConfig {
    SimConfig {
        startup_delay: Duration::ZERO,
        eos_probability: 0.0,
        ..SimConfig::default()
    }
}

fn ids(start: u32, len: u32) -> Vec<u32> {
    (start..start + len).collect()
}

/// One streamed response, as a client sees it.
#[derive(Debug, Default)]
struct Streamed {
    status: u16,
    /// The JSON of each `data:` event except `[DONE]`, with when it arrived after the request was sent.
    events: Vec<(Value, Duration)>,
    done: bool,
    /// The body ended with a transport error (connection dropped).
    broken: bool,
}

impl Streamed {
    /// Content chunks: events with non-empty `choices`.
    fn content(&self) -> Vec<&Value> {
        self.events
            .iter()
            .map(|(v, _)| v)
            .filter(|v| v["choices"].as_array().is_some_and(|c| !c.is_empty()))
            .collect()
    }

    fn text(&self) -> String {
        self.content()
            .iter()
            .map(|v| {
                let c = &v["choices"][0];
                c["text"]
                    .as_str()
                    .or(c["delta"]["content"].as_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    fn usage(&self) -> &Value {
        &self
            .events
            .iter()
            .rev()
            .find(|(v, _)| v.get("usage").is_some())
            .expect("a usage chunk")
            .0["usage"]
    }

    fn finish_reason(&self) -> Option<&str> {
        self.content().last()?["choices"][0]["finish_reason"].as_str()
    }

    fn ttft(&self) -> Duration {
        self.events.first().expect("at least one event").1
    }
}

async fn stream(url: &str, path: &str, body: Value) -> Streamed {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let mut out = Streamed {
        status: resp.status().as_u16(),
        ..Streamed::default()
    };
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            out.broken = true;
            break;
        };
        let at = t0.elapsed();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data = event.trim().strip_prefix("data: ").expect("SSE data line");
            if data == "[DONE]" {
                out.done = true;
            } else {
                assert!(!out.done, "nothing after [DONE]");
                out.events
                    .push((serde_json::from_str(data).expect("JSON event"), at));
            }
        }
    }
    out
}

/// Streams all `bodies` to `/v1/completions` at once, each on its own task, and returns them in order.
async fn together(url: String, bodies: Vec<Value>) -> Vec<Streamed> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let url = url.clone();
            tokio::spawn(async move { stream(&url, "/v1/completions", body).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn completion(prompt: Value, max_tokens: usize) -> Value {
    json!({
        "model": "sim", "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
    })
}

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{url}{path}")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `/metrics` as name → value (labels dropped; the simulator has one series per name).
async fn metrics(url: &str) -> std::collections::HashMap<String, f64> {
    let (status, text) = get(url, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            (name.to_string(), value.parse::<f64>().unwrap())
        })
        .collect()
}

/// A server with a timing log in a temporary directory.
async fn with_log(config: SimConfig) -> (SimHandle, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timing.jsonl");
    let sim = SimHandle::start(SimConfig {
        timing_log: Some(path.clone()),
        ..config
    })
    .await
    .unwrap();
    (sim, path, dir)
}

/// Stops the server (completing its timing log) and reads the log, in request order.
async fn records(sim: SimHandle, path: &Path) -> Vec<TimingRecord> {
    sim.stop().await.unwrap();
    let mut r = read_log(path).unwrap();
    r.sort_by_key(|r| r.request);
    r
}

fn us(d: u64) -> Duration {
    Duration::from_micros(d)
}

/// The scheduled time per output token after the first, from a timing record (one token per chunk).
fn scheduled_tpot(r: &TimingRecord) -> Duration {
    let s = &r.scheduled_us;
    us(s[s.len() - 1] - s[0]) / (s.len() as u32 - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_exactly_the_requested_tokens_in_vllm_format() {
    let sim = SimHandle::start(quick()).await.unwrap();
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 37)), 23),
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(s.done && !s.broken);
    let content = s.content();
    assert_eq!(content.len(), 23, "one token per chunk");
    for (i, c) in content.iter().enumerate() {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["model"], "sim");
        assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
        assert!(c["created"].is_u64());
        assert_eq!(c["choices"][0]["index"], 0);
        assert!(c["choices"][0]["logprobs"].is_null());
        let text = c["choices"][0]["text"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), 1, "chunk {i}: {text:?}");
        let finish = &c["choices"][0]["finish_reason"];
        if i < 22 {
            assert!(finish.is_null())
        } else {
            assert_eq!(finish, "length")
        }
    }
    let (usage_chunk, _) = s.events.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 37, "completion_tokens": 23, "total_tokens": 60})
    );

    // Without include_usage there is no usage chunk.
    let mut body = completion(json!(ids(0, 5)), 4);
    body["stream_options"] = json!(null);
    let s = stream(&sim.url(), "/v1/completions", body).await;
    assert_eq!(s.events.len(), 4);
    assert!(s.events.iter().all(|(v, _)| v.get("usage").is_none()));
    assert!(s.done);
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_text_prompts_and_the_same_output_for_the_same_prompt() {
    let sim = SimHandle::start(quick()).await.unwrap();
    let body = json!({"prompt": "the cat sat on the mat", "max_tokens": 9, "ignore_eos": true});
    let (status, a) = post(&sim.url(), "/v1/completions", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        a["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 9, "total_tokens": 15})
    );
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    let text = a["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 9);
    let (_, b) = post(&sim.url(), "/v1/completions", body).await;
    assert_eq!(
        b["choices"][0]["text"], text,
        "deterministic for a seed and a prompt"
    );
    // The output re-tokenizes to its own length: feed it back as a prompt.
    let (_, c) = post(
        &sim.url(),
        "/v1/completions",
        json!({"prompt": text, "max_tokens": 1}),
    )
    .await;
    assert_eq!(c["usage"]["prompt_tokens"], 9);
    // A one-element batch is a single prompt; the default max_tokens is 16.
    let (_, d) = post(
        &sim.url(),
        "/v1/completions",
        json!({"prompt": [[1, 2, 3]], "ignore_eos": true}),
    )
    .await;
    assert_eq!(d["usage"]["prompt_tokens"], 3);
    assert_eq!(d["usage"]["completion_tokens"], 16);
    // Streaming and non-streaming agree.
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!("the cat sat on the mat"), 9),
    )
    .await;
    assert_eq!(s.text(), text);
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_chunks_still_count_tokens_exactly() {
    let sim = SimHandle::start(SimConfig {
        tokens_per_chunk: 4,
        ..quick()
    })
    .await
    .unwrap();
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 8)), 10),
    )
    .await;
    let words: Vec<usize> = s
        .content()
        .iter()
        .map(|c| {
            c["choices"][0]["text"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count()
        })
        .collect();
    assert_eq!(words, vec![4, 4, 2]);
    assert_eq!(s.usage()["completion_tokens"], 10);
    assert_eq!(s.finish_reason(), Some("length"));
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_deltas_and_counts_the_template() {
    let sim = SimHandle::start(quick()).await.unwrap();
    let body = json!({
        "model": "sim", "stream": true, "max_tokens": 7, "ignore_eos": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}],
    });
    let s = stream(&sim.url(), "/v1/chat/completions", body.clone()).await;
    assert!(s.done);
    let content = s.content();
    assert_eq!(
        content[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(content.len(), 8, "a role chunk and 7 tokens");
    assert!(
        content
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(s.text().split_whitespace().count(), 7);
    // 2 + 2 words, 3 template tokens per message, 2 for the assistant's turn.
    assert_eq!(s.usage()["prompt_tokens"], 12);
    assert_eq!(s.usage()["completion_tokens"], 7);
    assert_eq!(s.finish_reason(), Some("length"));
    let mut whole = body;
    whole["stream"] = json!(false);
    let (status, r) = post(&sim.url(), "/v1/chat/completions", whole).await;
    assert_eq!(status, 200);
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str().unwrap(),
        s.text()
    );
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ignore_eos_outputs_end_early_but_not_before_min_tokens() {
    let sim = SimHandle::start(SimConfig {
        eos_probability: 0.2,
        ..quick()
    })
    .await
    .unwrap();
    let url = sim.url();
    let mut early = 0;
    for p in 0..12u32 {
        let body = json!({"prompt": ids(p * 10, 10), "max_tokens": 40, "min_tokens": 5});
        let (_, a) = post(&url, "/v1/completions", body.clone()).await;
        let n = a["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((6..=40).contains(&n), "{n}");
        if n < 40 {
            early += 1;
            assert_eq!(a["choices"][0]["finish_reason"], "stop");
            // The end-of-sequence token counts but has no text.
            let words = a["choices"][0]["text"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count() as u64;
            assert_eq!(words, n - 1);
        }
        let (_, b) = post(&url, "/v1/completions", body.clone()).await;
        assert_eq!(
            b["usage"], a["usage"],
            "the same prompt stops at the same place"
        );
        let mut exact = body;
        exact["ignore_eos"] = json!(true);
        let (_, c) = post(&url, "/v1/completions", exact).await;
        assert_eq!(c["usage"]["completion_tokens"], 40);
    }
    assert!(
        early >= 9,
        "with p=0.2 per token nearly every request stops before 40 tokens, got {early}"
    );
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_token_grows_with_prompt_length() {
    let config = SimConfig {
        batch: BatchParams {
            prefill_tokens_per_s: 10_000.0,
            ..SimConfig::default().batch
        },
        ..quick()
    };
    let (sim, log, _dir) = with_log(config).await;
    let short = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 50)), 3),
    )
    .await;
    let long = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(100_000, 3000)), 3),
    )
    .await;
    assert!(
        long.ttft() >= Duration::from_millis(300),
        "3000 tokens at 10000/s: {:?}",
        long.ttft()
    );
    assert!(long.ttft() > short.ttft());
    let r = records(sim, &log).await;
    // An idle engine starts the step at arrival: step = 5 ms + 0.5 ms × 1 sequence + prefill.
    assert_eq!(r[0].scheduled_us[0], 5_500 + 5_000);
    assert_eq!(r[1].scheduled_us[0], 5_500 + 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_num_seqs_queue_and_wait_longer_for_their_first_token() {
    let config = SimConfig {
        batch: BatchParams {
            max_num_seqs: 2,
            decode_step: Duration::from_millis(10),
            decode_step_per_seq: Duration::ZERO,
            ..SimConfig::default().batch
        },
        ..quick()
    };
    let (sim, log, _dir) = with_log(config).await;
    let url = sim.url();
    let bodies = (0..4)
        .map(|i| completion(json!(ids(i * 100, 20)), 30))
        .collect();
    let wave = tokio::spawn(together(url.clone(), bodies));
    // While the first two decode, the other two are waiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&url).await;
        if m["vllm:num_requests_running"] == 2.0 && m["vllm:num_requests_waiting"] == 2.0 {
            break;
        }
        assert!(m["vllm:num_requests_running"] <= 2.0);
        assert!(
            Instant::now() < deadline,
            "never saw 2 running and 2 waiting: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut client_ttft = Vec::new();
    for s in wave.await.unwrap() {
        assert_eq!(s.usage()["completion_tokens"], 30);
        client_ttft.push(s.ttft());
    }
    let mut ttft: Vec<Duration> = records(sim, &log)
        .await
        .iter()
        .map(|r| us(r.scheduled_us[0]))
        .collect();
    ttft.sort();
    client_ttft.sort();
    // The first two start within a step or two; the others wait ~30 steps of 10 ms for a slot.
    assert!(ttft[1] <= Duration::from_millis(50), "{ttft:?}");
    assert!(ttft[2] >= Duration::from_millis(150), "{ttft:?}");
    assert!(
        client_ttft[2] >= Duration::from_millis(150),
        "{client_ttft:?}"
    );
    assert!(client_ttft[3] > client_ttft[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_decode_speed_falls_as_the_batch_grows() {
    let config = SimConfig {
        batch: BatchParams {
            decode_step: Duration::from_millis(2),
            decode_step_per_seq: Duration::from_millis(1),
            prefill_tokens_per_s: 1e6,
            ..SimConfig::default().batch
        },
        ..quick()
    };
    let (sim, log, _dir) = with_log(config).await;
    let url = sim.url();
    let alone = stream(&url, "/v1/completions", completion(json!(ids(0, 20)), 30)).await;
    let bodies = (1..=8)
        .map(|i| completion(json!(ids(i * 100, 20)), 30))
        .collect();
    let batch = together(url.clone(), bodies).await;
    let r = records(sim, &log).await;
    // Scheduled: 3 ms per step alone, 10 ms with 8 sequences (minus steps at the edges of the batch).
    let tpot_alone = scheduled_tpot(&r[0]);
    assert_eq!(tpot_alone, Duration::from_millis(3));
    let mean_batched = r[1..].iter().map(scheduled_tpot).sum::<Duration>() / 8;
    assert!(mean_batched >= Duration::from_millis(7), "{mean_batched:?}");
    // Seen by the client: per-request decode speed (1 / TPOT) falls.
    let client_tpot = |s: &Streamed| {
        let content: Vec<Duration> = s
            .events
            .iter()
            .filter(|(v, _)| v["choices"].as_array().is_some_and(|c| !c.is_empty()))
            .map(|e| e.1)
            .collect();
        (content[content.len() - 1] - content[0]) / (content.len() as u32 - 1)
    };
    let client_batched = batch.iter().map(client_tpot).sum::<Duration>() / 8;
    assert!(
        client_batched > client_tpot(&alone) * 3 / 2,
        "alone {:?}, batched {client_batched:?}",
        client_tpot(&alone)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prompts_hit_the_prefix_cache_in_counters_and_time_to_first_token() {
    let config = SimConfig {
        batch: BatchParams {
            prefill_tokens_per_s: 5_000.0,
            ..SimConfig::default().batch
        },
        ..quick()
    };
    let (sim, log, _dir) = with_log(config).await;
    let url = sim.url();
    let prompt = ids(1000, 400);
    let cold = stream(&url, "/v1/completions", completion(json!(prompt), 2)).await;
    let m = metrics(&url).await;
    assert_eq!(
        (
            m["vllm:prefix_cache_queries_total"],
            m["vllm:prefix_cache_hits_total"]
        ),
        (400.0, 0.0)
    );
    let warm = stream(&url, "/v1/completions", completion(json!(prompt), 2)).await;
    let m = metrics(&url).await;
    // 399 cacheable tokens = 24 full blocks of 16.
    assert_eq!(
        (
            m["vllm:prefix_cache_queries_total"],
            m["vllm:prefix_cache_hits_total"]
        ),
        (800.0, 384.0)
    );
    assert_eq!(
        m["vllm:prompt_tokens_total"], 800.0,
        "cached tokens count as prompt tokens"
    );
    assert_eq!(m["vllm:generation_tokens_total"], 4.0);
    assert!(
        warm.ttft() < cold.ttft(),
        "warm {:?} vs cold {:?}",
        warm.ttft(),
        cold.ttft()
    );
    // A prompt sharing the first 200 tokens hits 12 full blocks.
    let mut sibling = prompt[..200].to_vec();
    sibling.extend(ids(50_000, 200));
    stream(&url, "/v1/completions", completion(json!(sibling), 2)).await;
    assert_eq!(
        metrics(&url).await["vllm:prefix_cache_hits_total"],
        384.0 + 192.0
    );
    // After a reset the same prompt is cold again.
    let (status, _) = post(&url, "/reset_prefix_cache", json!({})).await;
    assert_eq!(status, 200);
    stream(&url, "/v1/completions", completion(json!(prompt), 2)).await;
    assert_eq!(metrics(&url).await["vllm:prefix_cache_hits_total"], 576.0);
    let r = records(sim, &log).await;
    let ttft: Vec<u64> = r.iter().map(|r| r.scheduled_us[0]).collect();
    // 5.5 ms of step plus 400, 16, 208 and 400 uncached tokens at 5000/s.
    assert_eq!(ttft, vec![85_500, 8_700, 47_100, 85_500]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_timing_is_exact_whatever_the_load_and_never_early() {
    let config = SimConfig {
        timing: Timing::Fixed {
            ttft: Duration::from_millis(40),
            itl: Duration::from_millis(5),
        },
        ..quick()
    };
    let (sim, log, _dir) = with_log(config).await;
    let url = sim.url();
    let bodies = (0..20).map(|i| completion(json!(ids(i, 50)), 10)).collect();
    for s in together(url.clone(), bodies).await {
        assert!(s.done);
        assert_eq!(s.usage()["completion_tokens"], 10);
        assert!(s.ttft() >= Duration::from_millis(40));
    }
    let m = metrics(&url).await;
    assert_eq!(m["vllm:generation_tokens_total"], 200.0);
    assert_eq!(m["vllm:num_requests_running"], 0.0);
    let r = records(sim, &log).await;
    assert_eq!(r.len(), 20);
    let expected: Vec<u64> = (0..10).map(|i| 40_000 + 5_000 * i).collect();
    for rec in &r {
        assert_eq!(rec.scheduled_us, expected);
        assert_eq!(
            (
                rec.mode.as_str(),
                rec.outcome.as_str(),
                rec.completion_tokens
            ),
            ("fixed", "done", 10)
        );
        assert!(
            rec.sent_us
                .iter()
                .zip(&rec.scheduled_us)
                .all(|(s, d)| s >= d),
            "a chunk was sent early"
        );
        assert!(rec.arrival_mono_ns > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_never_sends_a_token_before_its_step_ends() {
    let (sim, log, _dir) = with_log(quick()).await;
    let url = sim.url();
    let bodies = (0..6)
        .map(|i| completion(json!(ids(i * 64, 64)), 8))
        .collect();
    together(url.clone(), bodies).await;
    for rec in records(sim, &log).await {
        assert_eq!(rec.scheduled_us.len(), 8);
        assert!(rec.scheduled_us.windows(2).all(|w| w[0] < w[1]));
        assert!(
            rec.sent_us
                .iter()
                .zip(&rec.scheduled_us)
                .all(|(s, d)| s >= d)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_loading_then_200_and_models_are_listed() {
    let t0 = Instant::now();
    let sim = SimHandle::start(SimConfig {
        startup_delay: Duration::from_millis(1500),
        ..quick()
    })
    .await
    .unwrap();
    let url = sim.url();
    assert_eq!(get(&url, "/health").await.0, 503);
    let (status, err) = post(&url, "/v1/completions", json!({"prompt": "hi"})).await;
    assert_eq!((status, err["error"]["code"].as_u64()), (503, Some(503)));
    loop {
        if get(&url, "/health").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    let (status, models) = get(&url, "/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "sim");
    assert_eq!(models["data"][0]["max_model_len"], 32768);
    sim.stop().await.unwrap();

    let never = SimHandle::start(SimConfig {
        faults: runner::sim::Faults {
            never_ready: true,
            ..quick().faults
        },
        ..quick()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&never.url(), "/health").await.0, 503);
    never.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_vllm_errors() {
    let config = SimConfig {
        served_model_name: Some("qwen".into()),
        max_model_len: 100,
        vocab_size: 1000,
        ..quick()
    };
    let sim = SimHandle::start(config).await.unwrap();
    let url = sim.url();
    let cases = [
        (
            json!({"model": "qwen", "prompt": ids(0, 50), "max_tokens": 51}),
            400,
            "maximum context length is 100",
        ),
        (
            json!({"model": "qwen", "prompt": [1, 2, 1000]}),
            400,
            "Token id 1000 is out of vocabulary",
        ),
        (
            json!({"model": "qwen", "prompt": [1, -2]}),
            400,
            "Token id -2",
        ),
        (
            json!({"model": "llama", "prompt": [1]}),
            404,
            "The model `llama` does not exist.",
        ),
        (json!({"model": "qwen", "prompt": ""}), 400, "empty"),
        (
            json!({"model": "qwen", "prompt": [1], "max_tokens": 0}),
            400,
            "at least 1",
        ),
        (
            json!({"model": "qwen", "prompt": [1], "max_tokens": 2, "min_tokens": 3}),
            400,
            "min_tokens",
        ),
        (
            json!({"model": "qwen", "prompt": [[1], [2]]}),
            400,
            "batched",
        ),
        (json!({"model": "qwen"}), 400, "invalid request body"),
    ];
    for (body, status, message) in cases {
        let (got, err) = post(&url, "/v1/completions", body.clone()).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(err["error"]["code"], status, "{body}");
        assert!(err["error"]["type"].is_string());
        let text = err["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }
    let chat = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&url, "/v1/chat/completions", chat).await.0, 404);
    // The served name and an absent name are fine; the response names the model.
    let (status, ok) = post(
        &url,
        "/v1/completions",
        json!({"prompt": [1], "max_tokens": 1}),
    )
    .await;
    assert_eq!((status, ok["model"].as_str()), (200, Some("qwen")));
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_has_vllm_names_and_types() {
    let sim = SimHandle::start(quick()).await.unwrap();
    let (_, text) = get(&sim.url(), "/metrics").await;
    for (name, kind) in [
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:prompt_tokens_total", "counter"),
        ("vllm:generation_tokens_total", "counter"),
        ("vllm:prefix_cache_queries_total", "counter"),
        ("vllm:prefix_cache_hits_total", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        assert!(
            text.contains(&format!("{name}{{engine=\"0\",model_name=\"sim\"}} 0.0\n")),
            "{name}"
        );
    }
    sim.stop().await.unwrap();
}

fn faults(f: runner::sim::Faults) -> SimConfig {
    SimConfig {
        faults: f,
        ..quick()
    }
}

fn no_faults() -> runner::sim::Faults {
    quick().faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_rate_fails_that_fraction_with_500() {
    let sim = SimHandle::start(faults(runner::sim::Faults {
        fail_rate: 1.0,
        ..no_faults()
    }))
    .await
    .unwrap();
    let (status, err) = post(&sim.url(), "/v1/completions", json!({"prompt": [1]})).await;
    assert_eq!(
        (status, err["error"]["type"].as_str()),
        (500, Some("InternalServerError"))
    );
    sim.stop().await.unwrap();

    let sim = SimHandle::start(faults(runner::sim::Faults {
        fail_rate: 0.5,
        ..no_faults()
    }))
    .await
    .unwrap();
    let mut failed = 0;
    for _ in 0..40 {
        let (status, _) = post(
            &sim.url(),
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": 1}),
        )
        .await;
        assert!(status == 200 || status == 500);
        failed += usize::from(status == 500);
    }
    assert!(
        (8..=32).contains(&failed),
        "{failed} of 40 failed at rate 0.5"
    );
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stream_drops_the_connection_after_n_tokens_without_done() {
    let sim = SimHandle::start(faults(runner::sim::Faults {
        cut_stream_after: Some(5),
        ..no_faults()
    }))
    .await
    .unwrap();
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 10)), 20),
    )
    .await;
    assert_eq!(s.content().len(), 5);
    assert!(s.broken, "the body must end with a transport error");
    assert!(!s.done);
    // Shorter outputs than the cut are not affected, nor are non-streaming requests.
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 10)), 4),
    )
    .await;
    assert!(s.done && !s.broken);
    let (status, r) = post(
        &sim.url(),
        "/v1/completions",
        json!({"prompt": [1], "max_tokens": 20, "ignore_eos": true}),
    )
    .await;
    assert_eq!(
        (status, r["usage"]["completion_tokens"].as_u64()),
        (200, Some(20))
    );
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_fewer_returns_fewer_tokens_than_asked_even_with_ignore_eos() {
    let sim = SimHandle::start(faults(runner::sim::Faults {
        emit_fewer: 3,
        ..no_faults()
    }))
    .await
    .unwrap();
    let s = stream(
        &sim.url(),
        "/v1/completions",
        completion(json!(ids(0, 10)), 10),
    )
    .await;
    assert_eq!(s.content().len(), 7);
    assert_eq!(s.usage()["completion_tokens"], 7);
    assert_eq!(s.finish_reason(), Some("stop"));
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_requests_ends_the_server_in_process() {
    let sim = SimHandle::start(faults(runner::sim::Faults {
        crash_after_requests: Some(2),
        ..no_faults()
    }))
    .await
    .unwrap();
    let url = sim.url();
    for _ in 0..2 {
        assert_eq!(
            post(
                &url,
                "/v1/completions",
                json!({"prompt": [1], "max_tokens": 2})
            )
            .await
            .0,
            200
        );
    }
    let third = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/completions"))
            .json(&json!({"prompt": [1]}))
            .send()
            .await
    });
    let err = tokio::time::timeout(Duration::from_secs(5), sim.wait())
        .await
        .expect("crashed in time")
        .unwrap_err();
    assert_eq!(err.downcast_ref::<SimExit>(), Some(&SimExit::Crash(2)));
    third.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_in_flight_streams_with_an_error_event_and_done() {
    let config = SimConfig {
        timing: Timing::Fixed {
            ttft: Duration::from_millis(10),
            itl: Duration::from_millis(50),
        },
        ..quick()
    };
    let sim = SimHandle::start(config).await.unwrap();
    let url = sim.url();
    let task = tokio::spawn(async move {
        stream(&url, "/v1/completions", completion(json!([1, 2]), 200)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    sim.stop().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let s = task.await.unwrap();
    assert!(s.done);
    let (last, _) = s.events.last().unwrap();
    assert_eq!(last["error"]["code"], 503);
    assert!(s.content().len() < 200);
}

// ---- the real binary, for the knobs that end the process ----

/// A `runner sim` child process, killed when dropped.
struct SimProcess {
    child: Child,
    url: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl SimProcess {
    /// Starts `runner sim --port 0 --startup-delay 0 ARGS` and waits for its address (or its exit).
    fn start(args: &[&str]) -> SimProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["sim", "--port", "0", "--startup-delay", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runner starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("sim: listening on ") {
                    let _ = tx.send(url.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        SimProcess { child, url, stderr }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// The exit status, if the process ends within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr_has(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn binary_exit_at_start_exits_with_that_status() {
    let mut p = SimProcess::start(&["--exit-at-start", "7"]);
    assert!(p.url.is_empty(), "it must not listen");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(7));
}

#[test]
fn binary_bad_knob_is_usage_error() {
    let mut p = SimProcess::start(&["--fail-rate", "2"]);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(2));
    assert!(p.stderr_has("--fail-rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_crash_after_requests_exits_non_zero() {
    let mut p = SimProcess::start(&["--crash-after-requests", "2"]);
    for _ in 0..2 {
        assert_eq!(
            post(
                &p.url,
                "/v1/completions",
                json!({"prompt": [1], "max_tokens": 2})
            )
            .await
            .0,
            200
        );
    }
    let third = reqwest::Client::new()
        .post(format!("{}/v1/completions", p.url))
        .json(&json!({"prompt": [1]}))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        third.is_err(),
        "the third request gets no answer: {third:?}"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(p.stderr_has("simulated crash after 2 requests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_ignores_sigterm_when_told_and_stops_on_sigint() {
    let mut p = SimProcess::start(&["--ignore-sigterm"]);
    assert_eq!(get(&p.url, "/health").await.0, 200);
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        p.wait_exit(Duration::from_millis(500)),
        None,
        "SIGTERM must be ignored"
    );
    assert_eq!(get(&p.url, "/health").await.0, 200);
    assert!(p.stderr_has("ignoring SIGTERM"));
    p.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sigterm_mid_stream_shuts_down_cleanly() {
    let mut p = SimProcess::start(&["--fixed-timing", "--ttft-ms", "10", "--itl-ms", "50"]);
    let url = p.url.clone();
    let task = tokio::spawn(async move {
        stream(&url, "/v1/completions", completion(json!([1, 2, 3]), 200)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let s = task.await.unwrap();
    assert!(s.done, "the client gets [DONE]");
    assert_eq!(s.events.last().unwrap().0["error"]["code"], 503);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_connections_until_ready_when_told() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_arg = port.to_string();
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "sim",
            "--port",
            &port_arg,
            "--startup-delay",
            "1500ms",
            "--refuse-until-ready",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = reqwest::get(&url).await;
    let refused = early.as_ref().err().is_some_and(|e| e.is_connect());
    let mut ready = false;
    while t0.elapsed() < Duration::from_secs(10) && !ready {
        ready = reqwest::get(&url).await.is_ok_and(|r| r.status() == 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        refused,
        "connection must be refused while loading: {early:?}"
    );
    assert!(ready && t0.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_knobs_show_the_demo_shapes_quickly() {
    // The demo's cell shape: 1000-token prompts, 64 output tokens, concurrency 1 then 4.
    let t0 = Instant::now();
    let (sim, log, _dir) = with_log(quick()).await;
    let url = sim.url();
    stream(&url, "/v1/completions", completion(json!(ids(0, 1000)), 64)).await;
    let bodies = (1..=4)
        .map(|i| completion(json!(ids(i * 1000, 1000)), 64))
        .collect();
    for s in together(url.clone(), bodies).await {
        assert_eq!(s.usage()["completion_tokens"], 64);
    }
    let r = records(sim, &log).await;
    // Alone: 5 ms + 0.5 ms per sequence + 1000 tokens at 40000/s, then 5.5 ms per token.
    assert_eq!(us(r[0].scheduled_us[0]), Duration::from_micros(30_500));
    assert_eq!(scheduled_tpot(&r[0]), Duration::from_micros(5_500));
    let mean_ttft = r[1..]
        .iter()
        .map(|r| us(r.scheduled_us[0]))
        .sum::<Duration>()
        / 4;
    let mean_tpot = r[1..].iter().map(scheduled_tpot).sum::<Duration>() / 4;
    assert!(
        mean_ttft > Duration::from_millis(50),
        "TTFT rises with concurrency: {mean_ttft:?}"
    );
    assert!(
        mean_tpot > Duration::from_micros(6_000),
        "decode slows with the batch: {mean_tpot:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "a demo cell takes well under a second of model time"
    );
}
