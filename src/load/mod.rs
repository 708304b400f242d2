//! The load generator: drives one load point against an OpenAI-compatible server and returns its
//! per-request records, their summary and the server's metric deltas.
//!
//! - [`prompt`]: exact-length prompts, deterministic from the seed.
//! - [`bodies`]: request bodies built in a bounded window ahead of the scheduler.
//! - [`net`], [`pool`]: the point's TCP connections (kernel-timestamped reads) and HTTP/1.1 keep-alive
//!   connections, opened before the measured phase and counted.
//! - [`client`]: request dialects, streamed requests into records.
//! - [`sse`]: incremental SSE parsing.
//! - [`schedule`]: warm-up, connection opening, closed loop, in-flight cap, Poisson rate.
//! - [`recorder`]: records leave as requests finish, summarised on the way.
//! - [`health`]: the client's self-check (runtime lag, read lag, CPU).
//! - [`bench`]: the client benchmark (`runner bench-client`): `runner run` against the simulated engine.
//!
//! Invariants: a point never fails because requests fail (they are counted by kind); only setup problems,
//! a failed record write and cancellation end it early. Warm-up requests are recorded but marked and
//! excluded from statistics. Memory does not grow with the number of requests beyond a few numbers per
//! request (see [`crate::stats::Accumulator`]).

pub mod bench;
pub mod bodies;
pub mod client;
pub mod health;
pub mod net;
pub mod pool;
pub mod prompt;
pub mod recorder;
pub mod schedule;
pub mod sse;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use crate::stats::{ErrorKind, RequestRecord};
pub use client::LoadClient;

use crate::engine::{CacheCounters, Dialect};
use crate::experiment::load::LoadSpec;
use crate::scrape::{self, ServerMetrics};
use crate::secret::ApiKey;
use crate::stats::{RecordSink, Summary};

/// The server under load.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `http://127.0.0.1:8000` (the API paths are appended).
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    pub dialect: Dialect,
    /// Full URL of the Prometheus endpoint, if the server has one.
    pub metrics_url: Option<String>,
    pub cache_counters: CacheCounters,
    /// Sent as `Authorization: Bearer …` with every request and scrape (servers started with
    /// `--api-key`, endpoints behind a gateway).
    pub api_key: Option<ApiKey>,
}

/// The API path of a request: completions, or chat completions.
pub fn api_path(chat: bool) -> &'static str {
    if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    }
}

/// Shared counters a progress bar can read while a point runs (measured requests only).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub done: Arc<AtomicU64>,
    pub total: Arc<AtomicU64>,
}

impl Progress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Everything one load point produced.
#[derive(Debug, Clone)]
pub struct PointOutcome<S = Vec<RequestRecord>> {
    /// The sink every record went to, in the order requests finished (warm-up included, marked).
    pub records: S,
    pub summary: Summary,
    pub server_metrics: ServerMetrics,
    /// The instant every time in `records` is relative to (lets a caller line records up with other
    /// monotonic timestamps, e.g. an engine's timing log).
    pub t0: std::time::Instant,
    /// The measured phase, ms since `t0` (first intended send to last end); `None` without measured
    /// requests.
    pub span: Option<(f64, f64)>,
    /// Every prompt sent, when the load settings ask for them to be saved.
    pub prompts: Option<Vec<SavedPrompt>>,
}

/// One line of `prompts.jsonl`: exactly what request `index` sent as its prompt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedPrompt {
    pub index: u32,
    pub warmup: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The prompts of a point, regenerated from the same deterministic source the requests used.
fn saved_prompts(spec: &LoadSpec, chat: bool) -> Result<Vec<SavedPrompt>, LoadError> {
    let source = prompt::PromptSource::new(spec, prompt_salt(spec), chat)?;
    Ok((0..spec.warmup + spec.requests)
        .map(|index| {
            let (token_ids, text) = match source.prompt(index) {
                prompt::Prompt::Ids(ids) => (Some(ids), None),
                prompt::Prompt::Text { text, .. } => (None, Some(text)),
            };
            SavedPrompt {
                index,
                warmup: index < spec.warmup,
                token_ids,
                text,
            }
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The cancellation token fired; in-flight requests were dropped.
    #[error("interrupted")]
    Interrupted,
    /// The point could not be set up (tokenizer unreadable, bad vocabulary range, ...).
    #[error(transparent)]
    Setup(#[from] anyhow::Error),
    /// A record could not be written; the point's records are incomplete.
    #[error("writing the requests' records: {0}")]
    Record(std::io::Error),
}

/// Separates load points that share a seed, so two points on one server never send the same prompt.
/// Derived from the resolved settings, so rerunning the same point sends the same prompts.
/// Whether the prompts are saved does not change them.
pub fn prompt_salt(spec: &LoadSpec) -> u64 {
    let json = serde_json::to_vec(&LoadSpec {
        save_prompts: false,
        ..spec.clone()
    })
    .unwrap_or_default();
    let digest = Sha256::digest(&json);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// Runs one load point: scrape before, warm-up, connections, measured phase, scrape after, summary.
/// Every record goes to `sink` as its request finishes.
pub async fn run_point<S: RecordSink>(
    client: &LoadClient,
    target: &Target,
    spec: &LoadSpec,
    progress: &Progress,
    cancel: &CancellationToken,
    sink: S,
) -> Result<PointOutcome<S>, LoadError> {
    let chat = spec.api == crate::experiment::load::Api::Chat;
    let prompts = prompt::PromptSource::new(spec, prompt_salt(spec), chat)?;
    progress.done.store(0, Ordering::Relaxed);
    progress
        .total
        .store(u64::from(spec.requests), Ordering::Relaxed);

    let before = match &target.metrics_url {
        Some(url) => Some(scrape::scrape(client.http(), url, target.api_key.as_ref()).await),
        None => None,
    };

    let t0 = std::time::Instant::now();
    let drive = schedule::drive(target, spec, prompts, progress, t0, sink);
    let driven = tokio::select! {
        out = drive => out?,
        () = cancel.cancelled() => return Err(LoadError::Interrupted),
    };
    if let Some(e) = driven.write_error {
        return Err(LoadError::Record(e));
    }

    let server_metrics = match (&target.metrics_url, before) {
        (None, _) => ServerMetrics::missing("the server has no metrics endpoint"),
        (Some(_), Some(Err(e))) => ServerMetrics::missing(format!("{e:#}")),
        (Some(url), Some(Ok(before))) => {
            match scrape::scrape(client.http(), url, target.api_key.as_ref()).await {
                Ok(after) => ServerMetrics::between(&before, &after, target.cache_counters),
                Err(e) => ServerMetrics::missing(format!("{e:#}")),
            }
        }
        (Some(_), None) => ServerMetrics::missing("not scraped"),
    };
    let prompts = if spec.save_prompts {
        Some(saved_prompts(spec, chat)?)
    } else {
        None
    };
    Ok(PointOutcome {
        prompts,
        records: driven.sink,
        summary: driven.summary,
        span: driven.span,
        server_metrics,
        t0,
    })
}
