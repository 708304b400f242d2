//! The built-in simulated inference engine (`runner sim`): an OpenAI-compatible HTTP server with a
//! deterministic behaviour model and fault knobs, for rehearsals and tests. No GPU, no model weights.
//!
//! # Endpoints (vLLM's)
//! - `GET /health`: 503 while the simulated model loads (`--startup-delay`), then 200.
//! - `GET /v1/models`, `GET /version`.
//! - `POST /v1/completions`: `prompt` as text or token ids, `max_tokens` (default 16), `min_tokens`,
//!   `ignore_eos`, `stream`, `stream_options.include_usage`. Streams are SSE `data: {json}` events, one per
//!   chunk of `--tokens-per-chunk` tokens; the last content chunk carries `finish_reason` (`length`, or
//!   `stop` at a simulated end-of-sequence); with `include_usage` a final chunk has `"choices":[]` and the
//!   exact `usage`; then `data: [DONE]`.
//! - `POST /v1/chat/completions`: the same, with `delta.content` chunks (a role chunk comes with the first
//!   token) and `max_tokens`/`max_completion_tokens` (default: the rest of the context).
//! - `GET /metrics`: `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:prompt_tokens_total`,
//!   `vllm:generation_tokens_total`, `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`,
//!   and with the batching model `vllm:kv_cache_usage_perc`.
//! - `POST /reset_prefix_cache`.
//!
//! Errors are `{"error":{"message","type","param","code"}}`: 400 for bad input (unparsable body, empty
//! prompt, token id outside `--vocab-size`, `max_tokens` beyond `--max-model-len`, `min_tokens >
//! max_tokens`, `n > 1`, batched prompts), 404 for a model name other than `--served-model-name` (any name
//! is accepted when that is not set), 500 for `--fail-rate`, 503 while loading or shutting down.
//!
//! # The pseudo-tokenizer
//! One token per whitespace-separated word; see [`tokens`]. A chat request's prompt is its messages, each
//! wrapped as `<|im_start|> ROLE … <|im_end|>` (3 template tokens per message), plus `<|im_start|>
//! assistant` (2 tokens). Generated text is a space-separated pseudo-word per token, so it re-tokenizes to
//! the same count. The end-of-sequence token has no text but counts in `usage`, as in vLLM.
//!
//! # The behaviour model
//! Deterministic for a given `--seed`: a prompt's output (tokens, end-of-sequence position) depends only on
//! the seed and the prompt; fault draws only on the seed and the request's arrival number.
//! - Default, batching (`batch.rs`): continuous batching with at most `--max-num-seqs` running sequences
//!   and a FIFO waiting queue; chunked prefill within `--max-num-batched-tokens` per step; a step lasts
//!   `--decode-step-ms + --decode-step-ms-per-seq × sequences + prefill tokens / --prefill-tokens-per-s`.
//!   A request is admitted only when the KV cache (`--kv-cache-tokens`, in `--block-size` blocks) has
//!   room for its prompt and maximum output; it holds them until it ends, so the model never preempts.
//!   Only prompt tokens missing from the prefix cache (`cache.rs`: chained hashes of `--block-size`
//!   blocks, `--cache-blocks` capacity, least recently used out) are prefilled, so repeats get a faster
//!   time to first token. TTFT grows with prompt length and with queueing, per-request decode speed falls
//!   as the batch grows.
//! - `--fixed-timing`: each request's first token is due `--ttft-ms` after it arrived and each next one
//!   `--itl-ms` after the previous one's scheduled time, whatever the load (a ground truth for client
//!   benchmarks). The prefix cache still counts, it does not change timing.
//!
//! Tokens are scheduled on absolute deadlines: lateness does not accumulate. `--timing-log FILE` records
//! each chunk's scheduled and actual send instants ([`timing`]).
//!
//! With the defaults, a 1000-token prompt alone gets its first token after about 30 ms and then decodes at
//! 5.5 ms per token; 16 such requests together need about 0.4 s to all start and then decode at 13 ms per
//! token.
//!
//! # Fault knobs
//! `--fail-rate F` (that fraction of requests answer 500), `--cut-stream-after N` (streams drop the
//! connection after N tokens, without `[DONE]`; `--cut-stream-rate` picks the fraction of streams),
//! `--crash-after-requests N` (the process exits with status 1 when request N+1 arrives),
//! `--never-ready` (health stays 503, or nothing listens with `--refuse-until-ready`),
//! `--exit-at-start CODE`, `--ignore-sigterm`, `--emit-fewer N` (every output is N tokens shorter than it
//! should be, at least one, with `stop`). Otherwise SIGTERM and SIGINT shut down cleanly: in-flight streams
//! get an error event and `[DONE]`, the process exits 0.
//!
//! # In-process use
//! [`SimHandle::start`] serves a [`SimConfig`] on a free local port of the current tokio runtime (tests);
//! [`serve`] runs on any listener (best made by [`bind`]) until a shutdown future completes; [`main`] is
//! `runner sim`. The knobs that end the process ([`SimExit`]) make `serve` return an error instead.

mod batch;
mod cache;
mod metrics;
mod server;
pub mod timing;
pub mod tokens;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, oneshot, watch};

pub use batch::BatchParams;
pub use timing::{TimingRecord, read_log};

use crate::exit::Failure;

/// How long in-flight connections get to close after a shutdown signal before the server stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The listen backlog (the kernel caps it at `net.core.somaxconn`). The usual 128 overflows when a
/// client opens a thousand connections at once, and each dropped SYN costs that client a 1 s retransmit.
const LISTEN_BACKLOG: u32 = 4096;

/// Knobs of the simulated engine. Durations take units ("2s", "500ms") or a bare number of milliseconds.
#[derive(Debug, Args, Clone)]
#[command(after_help = SIM_AFTER_HELP)]
pub struct SimArgs {
    /// Port to listen on (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8000, help_heading = "Server")]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST), help_heading = "Server")]
    pub host: IpAddr,
    /// Seed of every random choice (outputs, end-of-sequence positions, fault draws).
    #[arg(long, default_value_t = 0, help_heading = "Server")]
    pub seed: u64,
    /// Simulated model loading: /health answers 503 (and generation requests 503) for this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Server")]
    pub startup_delay: Duration,
    /// Do not listen at all until the startup delay is over (connections are refused, like vLLM), instead
    /// of answering 503 (like SGLang and llama.cpp).
    #[arg(long, help_heading = "Server")]
    pub refuse_until_ready: bool,
    /// Write one JSON line per request with the scheduled and actual send instants of each chunk.
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub timing_log: Option<PathBuf>,
    /// Like vLLM's `--api-key`: requests to /v1/… without `Authorization: Bearer KEY` get 401
    /// (/health and /metrics stay open).
    #[arg(long, value_name = "KEY", help_heading = "Server")]
    pub api_key: Option<String>,

    /// The model name to serve; requests naming another model get 404 (unset: any name is accepted and
    /// /v1/models lists "sim").
    #[arg(long, value_name = "NAME", help_heading = "Model")]
    pub served_model_name: Option<String>,
    /// Maximum prompt + output tokens per request (longer requests get 400).
    #[arg(long, default_value_t = defaults::MAX_MODEL_LEN, help_heading = "Model", value_name = "TOKENS")]
    pub max_model_len: usize,
    /// Vocabulary size: token ids must be below it; the last id is the end-of-sequence token.
    #[arg(long, default_value_t = defaults::VOCAB_SIZE, help_heading = "Model", value_name = "N")]
    pub vocab_size: u32,
    /// Probability that each output token is the end-of-sequence token, from position `min_tokens` on,
    /// unless the request sets `ignore_eos`.
    #[arg(long, default_value_t = defaults::EOS_PROBABILITY, value_name = "P", help_heading = "Model")]
    pub eos_probability: f64,
    /// Output tokens per streamed chunk (vLLM packs several under load); usage still counts exactly.
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Model")]
    pub tokens_per_chunk: usize,

    /// Most sequences running at once; more requests wait in a queue.
    #[arg(long, default_value_t = defaults::MAX_NUM_SEQS, help_heading = "Batching model", value_name = "N")]
    pub max_num_seqs: usize,
    /// Token budget of one engine step (decode tokens + prefill chunk).
    #[arg(long, default_value_t = defaults::MAX_NUM_BATCHED_TOKENS, help_heading = "Batching model", value_name = "TOKENS")]
    pub max_num_batched_tokens: usize,
    /// Prefill speed: uncached prompt tokens computed per second.
    #[arg(long, default_value_t = defaults::PREFILL_TOKENS_PER_S, value_name = "RATE", help_heading = "Batching model")]
    pub prefill_tokens_per_s: f64,
    /// Base duration of an engine step, in milliseconds.
    #[arg(long, default_value_t = defaults::DECODE_STEP_MS, value_name = "MS", help_heading = "Batching model")]
    pub decode_step_ms: f64,
    /// Extra step duration per sequence in the step, in milliseconds.
    #[arg(long, default_value_t = defaults::DECODE_STEP_MS_PER_SEQ, value_name = "MS", help_heading = "Batching model")]
    pub decode_step_ms_per_seq: f64,
    /// Prefix-cache block size in tokens; only full blocks are cached.
    #[arg(long, default_value_t = defaults::BLOCK_SIZE, help_heading = "Batching model", value_name = "TOKENS")]
    pub block_size: usize,
    /// KV-cache capacity in tokens (whole blocks of --block-size): a request is admitted only when its
    /// prompt and maximum output fit; the usage is exposed as vllm:kv_cache_usage_perc.
    #[arg(long, default_value_t = defaults::KV_CACHE_TOKENS, value_name = "TOKENS", help_heading = "Batching model")]
    pub kv_cache_tokens: usize,
    /// Prefix-cache capacity in blocks (0 disables prefix caching).
    #[arg(long, default_value_t = defaults::CACHE_BLOCKS, value_name = "N", help_heading = "Batching model")]
    pub cache_blocks: usize,

    /// Ignore the batching model: first token exactly --ttft-ms after arrival, then one every --itl-ms.
    #[arg(long, help_heading = "Fixed timing")]
    pub fixed_timing: bool,
    /// Time to first token with --fixed-timing, in milliseconds.
    #[arg(
        long,
        default_value_t = 50.0,
        value_name = "MS",
        help_heading = "Fixed timing"
    )]
    pub ttft_ms: f64,
    /// Time between tokens with --fixed-timing, in milliseconds.
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "MS",
        help_heading = "Fixed timing"
    )]
    pub itl_ms: f64,

    /// Boxed: the fault knobs would otherwise make `runner`'s command enum needlessly large.
    #[command(flatten)]
    pub faults: Box<FaultArgs>,
}

/// The fault knobs of `runner sim`, for reliability tests.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Faults")]
pub struct FaultArgs {
    /// Fraction of generation requests that fail with HTTP 500.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub fail_rate: f64,
    /// Streams drop the connection after N output tokens, without [DONE].
    #[arg(long, value_name = "N")]
    pub cut_stream_after: Option<usize>,
    /// Fraction of streams that --cut-stream-after applies to.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub cut_stream_rate: f64,
    /// Serve N generation requests, then exit with status 1 when the next one arrives.
    #[arg(long, value_name = "N")]
    pub crash_after_requests: Option<u64>,
    /// Never become ready: /health stays 503 (with --refuse-until-ready: never listen).
    #[arg(long)]
    pub never_ready: bool,
    /// Exit with this status at once, before listening.
    #[arg(long, value_name = "CODE")]
    pub exit_at_start: Option<i32>,
    /// Log and ignore SIGTERM (SIGINT still stops the server).
    #[arg(long)]
    pub ignore_sigterm: bool,
    /// Every output is N tokens shorter than it should be (at least one token), finishing with "stop".
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub emit_fewer: usize,
    /// Never send a `usage` block (streamed or not), like servers that ignore `stream_options`.
    #[arg(long)]
    pub no_usage: bool,
}

const SIM_AFTER_HELP: &str = "\
Endpoints: /health, /v1/models, /v1/completions, /v1/chat/completions, /metrics (vLLM's
names), /reset_prefix_cache, /version. Text prompts count one token per word.

Batching model (default): continuous batching with chunked prefill. A step lasts
  decode-step-ms + decode-step-ms-per-seq x sequences + uncached prompt tokens / prefill rate
and gives every running sequence one token. Repeated prompts hit the prefix cache.

Examples:
  runner sim --port 8000                       demo engine, ready after 1 s
  runner sim --port 8001 --fixed-timing --ttft-ms 50 --itl-ms 10 --timing-log t.jsonl
  runner sim --port 8002 --fail-rate 0.1 --cut-stream-after 20 --cut-stream-rate 0.1";

/// The default knobs, shared by the command line and [`SimConfig::default`].
pub mod defaults {
    pub const MAX_MODEL_LEN: usize = 32768;
    pub const VOCAB_SIZE: u32 = 151_936;
    pub const EOS_PROBABILITY: f64 = 0.01;
    pub const MAX_NUM_SEQS: usize = 256;
    pub const MAX_NUM_BATCHED_TOKENS: usize = 8192;
    pub const PREFILL_TOKENS_PER_S: f64 = 40_000.0;
    pub const DECODE_STEP_MS: f64 = 5.0;
    pub const DECODE_STEP_MS_PER_SEQ: f64 = 0.5;
    pub const BLOCK_SIZE: usize = 16;
    pub const CACHE_BLOCKS: usize = 8192;
    /// 4M tokens: large enough that only a campaign that asks for it is limited by the KV cache.
    pub const KV_CACHE_TOKENS: usize = 1 << 22;
}

/// A duration with units ("2s", "1m 30s", "250ms") or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(v) = s.trim().parse::<f64>() {
        if v.is_finite() && v >= 0.0 {
            return Ok(ms(v));
        }
        return Err(format!("`{s}` is not a duration"));
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration: {e}"))
}

/// How token times are decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// The continuous-batching model.
    Batching,
    /// First token `ttft` after arrival, then one every `itl`, regardless of load.
    Fixed { ttft: Duration, itl: Duration },
}

/// The fault knobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    pub fail_rate: f64,
    pub cut_stream_after: Option<usize>,
    pub cut_stream_rate: f64,
    pub crash_after_requests: Option<u64>,
    pub never_ready: bool,
    pub exit_at_start: Option<i32>,
    /// Only [`main`] acts on it (signals are the process's business).
    pub ignore_sigterm: bool,
    pub emit_fewer: usize,
    pub no_usage: bool,
}

/// Everything [`serve`] needs: plain data, validated by [`SimConfig::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    pub startup_delay: Duration,
    pub served_model_name: Option<String>,
    pub max_model_len: usize,
    pub vocab_size: u32,
    pub eos_probability: f64,
    pub tokens_per_chunk: usize,
    pub batch: BatchParams,
    pub block_size: usize,
    pub cache_blocks: usize,
    pub timing: Timing,
    pub timing_log: Option<PathBuf>,
    /// Required as a bearer token on /v1/… routes.
    pub api_key: Option<String>,
    pub faults: Faults,
}

/// Milliseconds to a duration, rounded to the nanosecond (so that 0.5 ms is exactly 500 µs).
fn ms(v: f64) -> Duration {
    Duration::from_nanos((v.max(0.0) * 1e6).round() as u64)
}

impl Default for SimConfig {
    /// The command line's defaults.
    fn default() -> Self {
        use defaults::*;
        SimConfig {
            seed: 0,
            startup_delay: Duration::from_secs(1),
            served_model_name: None,
            max_model_len: MAX_MODEL_LEN,
            vocab_size: VOCAB_SIZE,
            eos_probability: EOS_PROBABILITY,
            tokens_per_chunk: 1,
            batch: BatchParams {
                max_num_seqs: MAX_NUM_SEQS,
                max_num_batched_tokens: MAX_NUM_BATCHED_TOKENS,
                prefill_tokens_per_s: PREFILL_TOKENS_PER_S,
                decode_step: ms(DECODE_STEP_MS),
                decode_step_per_seq: ms(DECODE_STEP_MS_PER_SEQ),
                kv_cache_tokens: KV_CACHE_TOKENS,
            },
            block_size: BLOCK_SIZE,
            cache_blocks: CACHE_BLOCKS,
            timing: Timing::Batching,
            timing_log: None,
            api_key: None,
            faults: Faults {
                cut_stream_rate: 1.0,
                ..Faults::default()
            },
        }
    }
}

impl SimConfig {
    /// Fixed timing with these first-token and inter-token times, other knobs at their defaults.
    pub fn fixed(ttft: Duration, itl: Duration) -> Self {
        SimConfig {
            timing: Timing::Fixed { ttft, itl },
            ..SimConfig::default()
        }
    }

    /// Checks the knobs' ranges; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.batch;
        let f = &self.faults;
        let rate = |v: f64| (0.0..=1.0).contains(&v);
        let bs = self.block_size.max(1);
        let checks: [(bool, &str); 13] = [
            (self.vocab_size >= 2, "--vocab-size must be at least 2"),
            (
                self.max_model_len >= 2,
                "--max-model-len must be at least 2",
            ),
            (
                rate(self.eos_probability),
                "--eos-probability must be between 0 and 1",
            ),
            (
                self.tokens_per_chunk >= 1,
                "--tokens-per-chunk must be at least 1",
            ),
            (b.max_num_seqs >= 1, "--max-num-seqs must be at least 1"),
            (
                b.max_num_batched_tokens >= b.max_num_seqs,
                "--max-num-batched-tokens must be at least --max-num-seqs (every running sequence decodes each step)",
            ),
            (
                b.prefill_tokens_per_s.is_finite() && b.prefill_tokens_per_s > 0.0,
                "--prefill-tokens-per-s must be positive",
            ),
            (self.block_size >= 1, "--block-size must be at least 1"),
            (
                self.max_model_len.div_ceil(bs) <= b.kv_cache_tokens / bs,
                "--kv-cache-tokens must hold at least one sequence of --max-model-len tokens (in whole --block-size blocks)",
            ),
            (rate(f.fail_rate), "--fail-rate must be between 0 and 1"),
            (
                rate(f.cut_stream_rate),
                "--cut-stream-rate must be between 0 and 1",
            ),
            (
                !matches!(self.timing, Timing::Fixed { itl, .. } if itl.is_zero()),
                "--itl-ms must be positive with --fixed-timing",
            ),
            (
                u32::try_from(self.max_model_len).is_ok(),
                "--max-model-len is too large",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err((*message).to_string()),
            None => Ok(()),
        }
    }
}

impl TryFrom<&SimArgs> for SimConfig {
    type Error = anyhow::Error;

    fn try_from(a: &SimArgs) -> anyhow::Result<Self> {
        let finite = |v: f64, flag: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(Failure::bad_input(format!(
                    "{flag} must be a non-negative number"
                )))
            }
        };
        let config = SimConfig {
            seed: a.seed,
            startup_delay: a.startup_delay,
            served_model_name: a.served_model_name.clone(),
            max_model_len: a.max_model_len,
            vocab_size: a.vocab_size,
            eos_probability: a.eos_probability,
            tokens_per_chunk: a.tokens_per_chunk,
            batch: BatchParams {
                max_num_seqs: a.max_num_seqs,
                max_num_batched_tokens: a.max_num_batched_tokens,
                prefill_tokens_per_s: a.prefill_tokens_per_s,
                decode_step: ms(finite(a.decode_step_ms, "--decode-step-ms")?),
                decode_step_per_seq: ms(finite(
                    a.decode_step_ms_per_seq,
                    "--decode-step-ms-per-seq",
                )?),
                kv_cache_tokens: a.kv_cache_tokens,
            },
            block_size: a.block_size,
            cache_blocks: a.cache_blocks,
            timing: if a.fixed_timing {
                Timing::Fixed {
                    ttft: ms(finite(a.ttft_ms, "--ttft-ms")?),
                    itl: ms(finite(a.itl_ms, "--itl-ms")?),
                }
            } else {
                Timing::Batching
            },
            timing_log: a.timing_log.clone(),
            api_key: a.api_key.clone(),
            faults: Faults {
                fail_rate: a.faults.fail_rate,
                cut_stream_after: a.faults.cut_stream_after,
                cut_stream_rate: a.faults.cut_stream_rate,
                crash_after_requests: a.faults.crash_after_requests,
                never_ready: a.faults.never_ready,
                exit_at_start: a.faults.exit_at_start,
                ignore_sigterm: a.faults.ignore_sigterm,
                emit_fewer: a.faults.emit_fewer,
                no_usage: a.faults.no_usage,
            },
        };
        config.validate().map_err(Failure::bad_input)?;
        Ok(config)
    }
}

/// Why [`serve`] stopped on purpose before a shutdown signal: a fault knob that ends the process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimExit {
    #[error("simulated crash after {0} requests (--crash-after-requests)")]
    Crash(u64),
    #[error("simulated failure at start (--exit-at-start {0})")]
    AtStart(i32),
}

impl SimExit {
    /// The process exit status this stands for.
    pub fn code(&self) -> i32 {
        match self {
            SimExit::Crash(_) => 1,
            SimExit::AtStart(code) => *code,
        }
    }
}

/// Serves the simulated engine on `listener` (best made by [`bind`]) until `shutdown` completes, then lets in-flight streams end
/// with an error event and waits (at most a few seconds) for connections to close. Returns a [`SimExit`]
/// error for the fault knobs that end the process, without waiting for anything.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_counting(listener, config, shutdown, Arc::default()).await
}

/// [`serve`], counting every accepted connection in `accepted` (tests prove with it how many
/// connections a client opened).
async fn serve_counting(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    accepted: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    config.validate().map_err(Failure::bad_input)?;
    if let Some(code) = config.faults.exit_at_start {
        return Err(SimExit::AtStart(code).into());
    }
    let log = config
        .timing_log
        .as_deref()
        .map(timing::TimingLog::create)
        .transpose()?;
    let counters = Arc::new(metrics::Counters::default());
    let cache = Arc::new(Mutex::new(cache::PrefixCache::new(
        config.block_size,
        config.cache_blocks,
    )));
    let scheduler = match config.timing {
        Timing::Batching => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(batch::run(
                config.batch,
                config.block_size,
                rx,
                cache.clone(),
                counters.clone(),
            ));
            Some((tx, task))
        }
        Timing::Fixed { .. } => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let now = Instant::now();
    let shared = Arc::new(server::Shared {
        model_name: config
            .served_model_name
            .clone()
            .unwrap_or_else(|| "sim".into()),
        ready_at: now + config.startup_delay,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        counters,
        cache,
        requests: AtomicU64::new(0),
        scheduler: scheduler.as_ref().map(|(tx, _)| tx.clone()),
        log: log.as_ref().map(timing::TimingLog::sender),
        clock: timing::MonoClock::now(),
        stop: stop_rx.clone(),
        crash: Notify::new(),
        cfg: config,
    });
    let app = server::router(shared.clone());
    let listener = listener.tap_io(move |tcp| {
        // Small SSE chunks must leave at once, not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopping = stop_rx;
    let result = tokio::select! {
        r = server.into_future() => r.context("serving the simulated engine"),
        () = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
        () = shared.crash.notified() => {
            Err(SimExit::Crash(shared.cfg.faults.crash_after_requests.unwrap_or(0)).into())
        }
    };
    if let Some((_, task)) = scheduler {
        task.abort();
    }
    if let Some(log) = log {
        log.close()?;
    }
    result
}

/// Binds a listener for [`serve`] with a backlog deep enough for a thousand simultaneous connects.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// An in-process simulated engine on a free local port, for tests and rehearsals. Dropping it shuts the
/// server down in the background; [`SimHandle::stop`] waits for that.
pub struct SimHandle {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl SimHandle {
    /// Binds 127.0.0.1 on a free port and serves `config` on the current tokio runtime.
    pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        config.validate().map_err(Failure::bad_input)?;
        let listener = bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve_counting(
            listener,
            config,
            async move {
                let _ = stopped.await;
            },
            Arc::clone(&accepted),
        ));
        Ok(SimHandle {
            addr,
            accepted,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Connections the server has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends the shutdown signal and waits until the server has stopped (and the timing log is complete).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("the simulated engine panicked")?,
            None => Ok(()),
        }
    }

    /// Waits until the server stops by itself (a [`SimExit`] fault), without signalling it.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        match self.task.take() {
            Some(task) => task.await.context("the simulated engine panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `runner sim`: serves until SIGTERM/SIGINT on its own multi-threaded runtime.
pub fn main(args: SimArgs) -> anyhow::Result<()> {
    let mut config = SimConfig::try_from(&args)?;
    if let Some(code) = config.faults.exit_at_start {
        eprintln!("sim: {}", SimExit::AtStart(code));
        std::process::exit(code);
    }
    crate::limits::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Signal handlers first, so that a signal during loading already follows the knobs.
        let mut shutdown = Box::pin(shutdown_signal(config.faults.ignore_sigterm)?);
        if args.refuse_until_ready {
            // Never ready means never listening, like an engine stuck loading its weights.
            let never = config.faults.never_ready;
            eprintln!(
                "sim: loading the model for {:?} (not listening yet)",
                config.startup_delay
            );
            let loading = async {
                if never {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(config.startup_delay).await;
            };
            tokio::select! {
                () = loading => {}
                () = &mut shutdown => return Ok(()),
            }
            config.startup_delay = Duration::ZERO;
        }
        let listener = bind((args.host, args.port).into())
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!("sim: listening on http://{addr}");
        if !config.faults.never_ready {
            let delay = config.startup_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                eprintln!("sim: ready");
            });
        }
        match serve(listener, config, shutdown).await {
            Err(err) => match err.downcast_ref::<SimExit>() {
                Some(exit) => {
                    eprintln!("sim: {exit}");
                    std::process::exit(exit.code());
                }
                None => Err(err),
            },
            Ok(()) => {
                eprintln!("sim: stopped");
                Ok(())
            }
        }
    })
}

/// Completes on SIGINT, or on SIGTERM unless it is to be ignored.
fn shutdown_signal(
    ignore_sigterm: bool,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_sigterm {
                        eprintln!("sim: ignoring SIGTERM (--ignore-sigterm)");
                        continue;
                    }
                    eprintln!("sim: SIGTERM, shutting down");
                }
                _ = int.recv() => eprintln!("sim: SIGINT, shutting down"),
            }
            break;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<SimConfig> {
        let cli = Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))?;
        SimConfig::try_from(&cli.sim)
    }

    #[test]
    fn command_line_defaults_are_the_config_defaults() {
        assert_eq!(parse(&[]).unwrap(), SimConfig::default());
    }

    #[test]
    fn durations_take_units_or_milliseconds() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_micros(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3").is_err());
        assert_eq!(
            parse(&["--startup-delay", "300ms"]).unwrap().startup_delay,
            Duration::from_millis(300)
        );
    }

    #[test]
    fn knobs_map_to_the_config() {
        let c = parse(&[
            "--fixed-timing",
            "--ttft-ms",
            "20",
            "--itl-ms",
            "2.5",
            "--fail-rate",
            "0.25",
        ])
        .unwrap();
        assert_eq!(
            c.timing,
            Timing::Fixed {
                ttft: Duration::from_millis(20),
                itl: Duration::from_micros(2500)
            }
        );
        assert_eq!(c.faults.fail_rate, 0.25);
        let c = parse(&[
            "--decode-step-ms",
            "2",
            "--decode-step-ms-per-seq",
            "0.1",
            "--max-num-seqs",
            "8",
        ])
        .unwrap();
        assert_eq!(c.batch.decode_step, Duration::from_millis(2));
        assert_eq!(c.batch.decode_step_per_seq, Duration::from_micros(100));
        assert_eq!(c.batch.max_num_seqs, 8);
    }

    #[test]
    fn bad_knobs_are_bad_input() {
        for args in [
            &["--fail-rate", "1.5"][..],
            &["--max-num-seqs", "0"],
            &["--max-num-seqs", "10000"],
            &["--prefill-tokens-per-s", "0"],
            &["--tokens-per-chunk", "0"],
            &["--fixed-timing", "--itl-ms", "0"],
            &["--decode-step-ms", "NaN"],
            &["--kv-cache-tokens", "1000"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should be refused"));
            assert_eq!(
                crate::exit::code_of(&err),
                crate::exit::BAD_INPUT,
                "{args:?}: {err}"
            );
        }
    }
}
