//! Summaries computed from per-request records: the seed report's columns and vLLM `bench serve`
//! compatible statistics. Pure functions over plain data; every number here can be recomputed from a
//! cell's `requests.jsonl`.
//!
//! CONTRACT (other modules rely on these names): the load generator fills [`Summary`] through
//! [`summarize`]; the store writes it inside each cell's `result.json`; the report reads it. Fields may be
//! added; existing ones keep their meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Distribution of one metric over the successful measured requests, in milliseconds.
/// `std` is the population standard deviation; percentiles use linear interpolation (NumPy's default),
/// as vLLM does, so numbers compare with its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub count: u64,
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Whether the server really processed the token counts we asked for, from its own `usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenCheck {
    /// The requested count.
    pub expected: u32,
    /// Requests whose `usage` reported exactly `expected`.
    pub exact: u64,
    /// Requests whose `usage` reported another count.
    pub mismatched: u64,
    /// Requests without a `usage` block: unknown, never assumed.
    pub unknown: u64,
    /// Smallest / largest / mean reported count (over requests that reported one); `None` if none did.
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub mean: Option<f64>,
}

/// The client's own health during a load point: if it read chunks late, the numbers may be distorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientCheck {
    /// Scheduling lag of the client's runtime (how late a timer or read wake-up ran), ms.
    pub lag_ms_p50: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    /// Most requests in flight at once (proves the offered load).
    pub peak_inflight: u32,
    /// True when lag was high enough that TTFT/ITL may be inflated by the client; flagged in the report.
    pub saturated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Measured requests sent (warm-up excluded).
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed requests by kind (`http_500`, `timeout`, `stream_cut`, `connect`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured phase, seconds (first measured send to last measured completion).
    pub duration_s: f64,

    // The seed report's columns.
    /// Completed (successful) requests per second over the measured phase.
    pub qps: f64,
    /// Mean over requests of input tokens / TTFT (a per-request prefill speed), tokens/s.
    pub prompt_tps: f64,
    /// 1000 / mean TPOT in ms (a per-request decode speed), tokens/s.
    pub decode_tps: f64,

    // vLLM-compatible distributions (ms).
    pub ttft_ms: Dist,
    /// (E2E − TTFT) / (output tokens − 1), per request with more than one output token.
    pub tpot_ms: Dist,
    /// Gaps between consecutive content chunks, over all requests.
    pub itl_ms: Dist,
    pub e2e_ms: Dist,
    /// Time requests waited at the client's own concurrency gate before being sent.
    pub queue_ms: Dist,

    // Aggregate throughput over the measured phase.
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    /// Requests per second meeting every configured SLO; `None` without SLOs.
    pub goodput_rps: Option<f64>,

    pub input_tokens: TokenCheck,
    pub output_tokens: TokenCheck,
    pub client: ClientCheck,
}
