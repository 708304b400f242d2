//! One request as it happened: the per-request record written as one JSONL line, and the error kinds
//! failed requests are counted by.
//!
//! Invariants: every time is in milliseconds since the load point's start instant (monotonic clock), so
//! records of one point compare directly; token counts come from the server's `usage` block only, and a
//! missing block stays `None` (unknown), never the requested count.

use serde::{Deserialize, Serialize};

/// Why a request failed. The key (`http_500`, `timeout`, ...) is what summaries count errors by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be made (server down, refused).
    Connect,
    /// The per-request timeout ran out (before the response or in the middle of the stream).
    Timeout,
    /// The server answered with a non-success status.
    Http(u16),
    /// The stream broke off: a body error, or the end of the body without `[DONE]` or a finish reason.
    StreamCut,
    /// The server sent an error event inside the stream.
    StreamError,
    /// A stream message was not the JSON we expect.
    BadResponse,
    /// The stream ended normally but carried no content at all.
    NoContent,
    /// Any other transport error.
    Request,
}

impl ErrorKind {
    pub fn key(self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Http(status) => format!("http_{status}"),
            ErrorKind::StreamCut => "stream_cut".into(),
            ErrorKind::StreamError => "stream_error".into(),
            ErrorKind::BadResponse => "bad_response".into(),
            ErrorKind::NoContent => "no_content".into(),
            ErrorKind::Request => "request".into(),
        }
    }
}

/// One request of a load point (warm-up included, marked). CONTRACT-like: one JSONL line per request in
/// `requests.jsonl`; every summary number can be recomputed from these lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Issue order within the point, warm-up requests first.
    pub index: u32,
    /// Warm-up requests are sent first and excluded from every statistic.
    pub warmup: bool,
    /// When the scheduler wanted to send it (rate mode: the Poisson arrival; closed loop: when a
    /// stream slot became free).
    pub intended_ms: f64,
    /// When the request left the client, after the optional in-flight gate.
    pub sent_ms: f64,
    /// Where latencies are measured from: `intended_ms` with a request rate (so a slow client cannot hide
    /// latency), `sent_ms` in closed loop (as vLLM does; the gate wait is reported as queue time).
    pub origin_ms: f64,
    /// Arrival of every content message (a message whose `choices` carry generated output), in order.
    pub chunk_ms: Vec<f64>,
    /// When the request ended (last byte, error or timeout).
    pub end_ms: f64,
    /// First content message − origin; `None` if none arrived.
    pub ttft_ms: Option<f64>,
    /// Last content message − origin (not the usage message, not `[DONE]`).
    pub e2e_ms: Option<f64>,
    /// Prompt length we sent, when it is known exactly (token-id prompts). The client's own count: it
    /// checks the server's, it never stands in for it.
    pub prompt_tokens_sent: Option<u32>,
    /// `usage.prompt_tokens` as the server reported it.
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens` as the server reported it.
    pub completion_tokens: Option<u32>,
    /// The last finish reason the server gave (`length`, `stop`, ...).
    pub finish_reason: Option<String>,
    /// HTTP status, once a response arrived.
    pub status: Option<u16>,
    /// Error kind key (see [`ErrorKind::key`]); `None` for a successful request.
    pub error: Option<String>,
    /// The server's or transport's message for a failed request (truncated).
    pub error_message: Option<String>,
    /// `usage.prompt_tokens` differs from the target input length.
    pub input_mismatch: bool,
    /// `usage.completion_tokens` differs from the target output length, or more content messages were
    /// streamed than the server says it generated.
    pub output_mismatch: bool,
    /// Times the request was sent again because a reused connection had been closed by the server before
    /// it answered (the server never saw those attempts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The request had to open a connection (none was idle, or the server had closed the idle one), so
    /// its latency includes a TCP connect. Never set when connections were opened before the measured
    /// phase and the server kept them; absent from the line when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_connection: bool,
}

/// Where a load point's records go, one by one, as requests finish (the store's `requests.jsonl`
/// writer, or memory in tests). Called from one thread, never from a request's task.
pub trait RecordSink: Send + 'static {
    fn write(&mut self, record: RequestRecord) -> std::io::Result<()>;
}

/// Keeps every record in memory, in the order they finished.
impl RecordSink for Vec<RequestRecord> {
    fn write(&mut self, record: RequestRecord) -> std::io::Result<()> {
        self.push(record);
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// TPOT as vLLM defines it: (E2E − TTFT) / (N − 1) with N from `usage`; only for N > 1.
    pub fn tpot_ms(&self) -> Option<f64> {
        let n = self.completion_tokens?;
        if n <= 1 {
            return None;
        }
        Some((self.e2e_ms? - self.ttft_ms?) / f64::from(n - 1))
    }

    /// Gaps between consecutive content messages.
    pub fn itl_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunk_ms.windows(2).map(|w| w[1] - w[0])
    }
}
