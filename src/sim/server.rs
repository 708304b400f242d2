//! The HTTP face of the simulated engine: routes, request validation, vLLM's wire format, and the
//! per-request token streams fed by either timing mode.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, watch};

use super::batch::Submission;
use super::cache::{PrefixCache, block_hashes};
use super::metrics::{self, Counters};
use super::timing::{LogSender, MonoClock, RecordHead, Recorder};
use super::tokens::{self, Finish, OutputModel, OutputPlan, OutputRequest};
use super::{SimConfig, Timing};

/// Salts that keep the per-request fault draws independent of each other.
const SALT_FAIL: u64 = 0xfa11;
const SALT_CUT: u64 = 0xc07;
/// After the last chunk before a simulated cut, give the HTTP layer this long to flush it.
const CUT_FLUSH: Duration = Duration::from_millis(20);

/// Everything the handlers share.
pub struct Shared {
    pub cfg: SimConfig,
    pub model_name: String,
    pub ready_at: Instant,
    pub created: u64,
    pub counters: Arc<Counters>,
    pub cache: Arc<Mutex<PrefixCache>>,
    pub requests: AtomicU64,
    pub scheduler: Option<UnboundedSender<Submission>>,
    pub log: Option<LogSender>,
    pub clock: MonoClock,
    /// Turns true when the server starts shutting down: streams end with an error event.
    pub stop: watch::Receiver<bool>,
    /// Notified when `--crash-after-requests` is reached.
    pub crash: Notify,
}

impl Shared {
    fn is_ready(&self) -> bool {
        !self.cfg.faults.never_ready && Instant::now() >= self.ready_at
    }

    /// Starts generating `output_len` tokens for a prompt that arrived at `arrival`.
    fn start(&self, arrival: Instant, prompt: &[u32], output_len: usize) -> Source {
        let blocks = block_hashes(prompt, self.cfg.block_size);
        match self.cfg.timing {
            Timing::Batching => {
                let (tx, rx) = unbounded_channel();
                let sub = Submission {
                    arrival,
                    prompt_len: prompt.len(),
                    blocks,
                    output_len,
                    tx,
                };
                match &self.scheduler {
                    Some(s) if s.send(sub).is_ok() => Source::Batched(rx),
                    _ => Source::Gone,
                }
            }
            Timing::Fixed { ttft, itl } => {
                let cached = {
                    let mut cache = self.cache.lock().unwrap();
                    let cached = cache.lookup(&blocks, prompt.len());
                    cache.insert(&blocks);
                    cached
                };
                self.counters.admitted(prompt.len(), cached);
                self.counters.running.fetch_add(1, Relaxed);
                Source::Fixed {
                    first: arrival + ttft,
                    itl,
                    counters: self.counters.clone(),
                }
            }
        }
    }
}

/// Where a request's tokens come from.
enum Source {
    /// The batching scheduler sends each token's scheduled instant.
    Batched(UnboundedReceiver<Instant>),
    /// Token `i` is due at `first + i × itl`, whatever the load.
    Fixed {
        first: Instant,
        itl: Duration,
        counters: Arc<Counters>,
    },
    /// The scheduler is gone (shutting down).
    Gone,
}

impl Source {
    /// Waits until tokens `from..to` exist; returns when the last of them was due, `None` if generation
    /// stopped.
    async fn until(&mut self, from: usize, to: usize) -> Option<Instant> {
        match self {
            Source::Batched(rx) => {
                let mut last = None;
                for _ in from..to {
                    last = Some(rx.recv().await?);
                }
                last
            }
            Source::Fixed {
                first,
                itl,
                counters,
            } => {
                let due = *first + *itl * (to as u32 - 1);
                tokio::time::sleep_until(due.into()).await;
                counters.generated(to - from);
                Some(due)
            }
            Source::Gone => None,
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Fixed { counters, .. } = self {
            counters.running.fetch_sub(1, Relaxed);
        }
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_page))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_api_key,
        ))
        .layer(axum::middleware::from_fn(stamp_arrival))
        .with_state(shared)
}

/// With `--api-key`, the /v1 routes need `Authorization: Bearer KEY`, as vLLM's do.
async fn require_api_key(
    State(s): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(key) = &s.cfg.api_key
        && request.uri().path().starts_with("/v1")
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {key}").as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "AuthenticationError",
                message: "missing or wrong API key".into(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

async fn health(State(s): State<Arc<Shared>>) -> StatusCode {
    if s.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn version() -> Response {
    axum::Json(json!({ "version": concat!("runner-sim ", env!("CARGO_PKG_VERSION")) }))
        .into_response()
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_name,
            "object": "model",
            "created": s.created,
            "owned_by": "runner-sim",
            "root": s.model_name,
            "parent": null,
            "max_model_len": s.cfg.max_model_len,
        }],
    }))
    .into_response()
}

async fn metrics_page(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&s.counters, &s.model_name),
    )
        .into_response()
}

async fn reset_prefix_cache(State(s): State<Arc<Shared>>) -> StatusCode {
    s.cache.lock().unwrap().reset();
    StatusCode::OK
}

/// When a request's head was read, before its body: the instant the engine's clock starts for it. Taken
/// before the body is read so that, when a thousand requests arrive at once, the time spent reading and
/// queueing bodies counts as the engine's (it makes its first tokens late, which the timing log shows), not
/// as transfer time charged to the client under test.
#[derive(Clone, Copy)]
struct Arrival(Instant);

async fn stamp_arrival(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.extensions_mut().insert(Arrival(Instant::now()));
    next.run(request).await
}

async fn completions(
    State(s): State<Arc<Shared>>,
    axum::Extension(Arrival(arrival)): axum::Extension<Arrival>,
    body: Bytes,
) -> Response {
    generate(s, arrival, Endpoint::Completions, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(
    State(s): State<Arc<Shared>>,
    axum::Extension(Arrival(arrival)): axum::Extension<Arrival>,
    body: Bytes,
) -> Response {
    generate(s, arrival, Endpoint::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "InternalServerError",
            message: message.into(),
        }
    }
    fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: message.into(),
        }
    }
    fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// `prompt` in any of the shapes the completions API allows.
#[derive(Debug)]
enum Prompt {
    Text(String),
    Ids(Vec<i64>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<i64>>),
}

/// Read by hand rather than as an untagged enum, which buffers a thousand-id prompt into an intermediate
/// tree before trying each shape: that doubled the parse time, paid by the engine while a burst of
/// requests waits to be read (and counted as the client's error by the client benchmark). The first
/// element of an array decides its shape.
impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> serde::de::Visitor<'de> for PromptVisitor {
    type Value = Prompt;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(
            "a string, an array of token ids, an array of strings or an array of token-id arrays",
        )
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Prompt, E> {
        Ok(Prompt::Text(v.to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
        fn rest<'de, T: Deserialize<'de>, A: serde::de::SeqAccess<'de>>(
            first: T,
            seq: &mut A,
        ) -> Result<Vec<T>, A::Error> {
            let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0) + 1);
            all.push(first);
            while let Some(next) = seq.next_element()? {
                all.push(next);
            }
            Ok(all)
        }
        Ok(match seq.next_element::<PromptItem>()? {
            None => Prompt::Ids(Vec::new()),
            Some(PromptItem::Id(id)) => Prompt::Ids(rest(id, &mut seq)?),
            Some(PromptItem::Text(text)) => Prompt::Texts(rest(text, &mut seq)?),
            Some(PromptItem::Ids(ids)) => Prompt::IdLists(rest(ids, &mut seq)?),
        })
    }
}

/// The first element of a `prompt` array.
enum PromptItem {
    Id(i64),
    Text(String),
    Ids(Vec<i64>),
}

impl<'de> Deserialize<'de> for PromptItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> serde::de::Visitor<'de> for ItemVisitor {
            type Value = PromptItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token id, a string or an array of token ids")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PromptItem, E> {
                Ok(PromptItem::Id(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PromptItem, E> {
                i64::try_from(v)
                    .map(PromptItem::Id)
                    .map_err(|_| E::custom(format!("token id {v} is out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PromptItem, E> {
                Ok(PromptItem::Text(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PromptItem, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element()? {
                    ids.push(id);
                }
                Ok(PromptItem::Ids(ids))
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Prompt,
    max_tokens: Option<usize>,
    min_tokens: Option<usize>,
    ignore_eos: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChatContent {
    Text(String),
    Parts(Vec<ChatPart>),
}

#[derive(Debug, Deserialize)]
struct ChatPart {
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<ChatContent>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    min_tokens: Option<usize>,
    ignore_eos: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

/// A validated generation request.
#[derive(Debug)]
struct Job {
    model: String,
    prompt: Vec<u32>,
    max_tokens: usize,
    min_tokens: usize,
    ignore_eos: bool,
    stream: bool,
    include_usage: bool,
}

/// The fields both endpoints share, before validation.
struct Common {
    model: Option<String>,
    max_tokens: Option<usize>,
    min_tokens: Option<usize>,
    ignore_eos: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

fn parse_job(s: &Shared, endpoint: Endpoint, body: &[u8]) -> Result<Job, ApiError> {
    let vocab = s.cfg.vocab_size;
    let (prompt, common) = match endpoint {
        Endpoint::Completions => {
            let r: CompletionRequest = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
            let prompt = match r.prompt {
                Prompt::Text(t) => tokens::tokenize(&t, vocab),
                Prompt::Ids(ids) => check_ids(&ids, vocab)?,
                Prompt::Texts(mut v) if v.len() == 1 => {
                    tokens::tokenize(&v.pop().unwrap_or_default(), vocab)
                }
                Prompt::IdLists(v) if v.len() == 1 => check_ids(&v[0], vocab)?,
                Prompt::Texts(_) | Prompt::IdLists(_) => {
                    return Err(ApiError::bad_request(
                        "batched prompts are not supported by the simulated engine",
                    ));
                }
            };
            let common = Common {
                model: r.model,
                max_tokens: Some(r.max_tokens.unwrap_or(16)),
                min_tokens: r.min_tokens,
                ignore_eos: r.ignore_eos,
                stream: r.stream,
                stream_options: r.stream_options,
                n: r.n,
            };
            (prompt, common)
        }
        Endpoint::Chat => {
            let r: ChatRequest = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
            let mut text = String::new();
            for m in &r.messages {
                text.push_str(" <|im_start|> ");
                text.push_str(&m.role);
                text.push(' ');
                match &m.content {
                    Some(ChatContent::Text(t)) => text.push_str(t),
                    Some(ChatContent::Parts(parts)) => {
                        for p in parts.iter().filter_map(|p| p.text.as_deref()) {
                            text.push(' ');
                            text.push_str(p);
                        }
                    }
                    None => {}
                }
                text.push_str(" <|im_end|>");
            }
            if r.messages.is_empty() {
                return Err(ApiError::bad_request("messages cannot be empty"));
            }
            text.push_str(" <|im_start|> assistant");
            let common = Common {
                model: r.model,
                max_tokens: r.max_completion_tokens.or(r.max_tokens),
                min_tokens: r.min_tokens,
                ignore_eos: r.ignore_eos,
                stream: r.stream,
                stream_options: r.stream_options,
                n: r.n,
            };
            (tokens::tokenize(&text, vocab), common)
        }
    };
    let model = match (&common.model, &s.cfg.served_model_name) {
        (Some(asked), Some(served)) if asked != served => {
            return Err(ApiError::not_found(format!(
                "The model `{asked}` does not exist."
            )));
        }
        (Some(asked), _) => asked.clone(),
        (None, _) => s.model_name.clone(),
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt cannot be empty"));
    }
    if common.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request(
            "n other than 1 is not supported by the simulated engine",
        ));
    }
    let max_len = s.cfg.max_model_len;
    let max_tokens = common
        .max_tokens
        .unwrap_or(max_len.saturating_sub(prompt.len()));
    if max_tokens == 0 {
        return Err(ApiError::bad_request(format!(
            "max_tokens must be at least 1 (the prompt has {} tokens, the model's maximum context length is {max_len})",
            prompt.len()
        )));
    }
    if prompt.len() + max_tokens > max_len {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, you requested {} tokens ({} in \
             the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            prompt.len() + max_tokens,
            prompt.len()
        )));
    }
    let min_tokens = common.min_tokens.unwrap_or(0);
    if min_tokens > max_tokens {
        return Err(ApiError::bad_request(format!(
            "min_tokens ({min_tokens}) must be less than or equal to max_tokens ({max_tokens})"
        )));
    }
    Ok(Job {
        model,
        prompt,
        max_tokens,
        min_tokens,
        ignore_eos: common.ignore_eos.unwrap_or(false),
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

fn check_ids(ids: &[i64], vocab: u32) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t).ok().filter(|&t| t < vocab).ok_or_else(|| {
                ApiError::bad_request(format!("Token id {t} is out of vocabulary (size {vocab})"))
            })
        })
        .collect()
}

async fn generate(
    s: Arc<Shared>,
    arrival: Instant,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !s.is_ready() {
        return Err(ApiError::unavailable("the model is still loading"));
    }
    let index = s.requests.fetch_add(1, Relaxed);
    if s.cfg
        .faults
        .crash_after_requests
        .is_some_and(|n| index >= n)
    {
        s.crash.notify_one();
        // The process is going down; this request never gets an answer.
        std::future::pending::<()>().await;
    }
    let job = parse_job(&s, endpoint, &body)?;
    let faults = &s.cfg.faults;
    if faults.fail_rate > 0.0 && tokens::unit_draw(s.cfg.seed, index, SALT_FAIL) < faults.fail_rate
    {
        return Err(ApiError::internal("simulated failure (--fail-rate)"));
    }
    let model = OutputModel {
        seed: s.cfg.seed,
        vocab_size: s.cfg.vocab_size,
        eos_probability: s.cfg.eos_probability,
        emit_fewer: faults.emit_fewer,
    };
    let req = OutputRequest {
        max_tokens: job.max_tokens,
        min_tokens: job.min_tokens,
        ignore_eos: job.ignore_eos,
    };
    let plan = tokens::plan_output(&model, &job.prompt, &req);
    let cut = faults
        .cut_stream_after
        .filter(|_| {
            job.stream && tokens::unit_draw(s.cfg.seed, index, SALT_CUT) < faults.cut_stream_rate
        })
        .filter(|&c| c < plan.tokens.len());
    let source = s.start(arrival, &job.prompt, plan.tokens.len());
    let recorder = Recorder::new(
        s.log.clone(),
        RecordHead {
            request: index,
            endpoint: match endpoint {
                Endpoint::Completions => "completions",
                Endpoint::Chat => "chat",
            },
            mode: match s.cfg.timing {
                Timing::Batching => "batching",
                Timing::Fixed { .. } => "fixed",
            },
            stream: job.stream,
            arrival,
            arrival_mono_ns: s.clock.ns(arrival),
            prompt_tokens: job.prompt.len(),
            first_prompt_token: job.prompt.first().copied(),
        },
    );
    let wire = Wire::new(endpoint, index, s.created, &job.model);
    let stream = TokenStream {
        wire,
        prompt_len: job.prompt.len(),
        plan,
        source,
        next: 0,
        per_chunk: s.cfg.tokens_per_chunk,
        cut,
        include_usage: job.include_usage,
        no_usage: faults.no_usage,
        stop: s.stop.clone(),
        rec: recorder,
        phase: if cut == Some(0) {
            Phase::Cut
        } else {
            Phase::Tokens
        },
    };
    drop(s);
    if job.stream {
        Ok(stream.into_response())
    } else {
        stream.complete().await
    }
}

/// Formats vLLM's JSON for one request.
struct Wire {
    endpoint: Endpoint,
    /// `{"id":…,"object":…,"created":…,"model":…` without the closing brace.
    envelope: String,
    id: String,
    created: u64,
    model: String,
}

impl Wire {
    fn new(endpoint: Endpoint, index: u64, created: u64, model: &str) -> Self {
        let (id, object) = match endpoint {
            Endpoint::Completions => (format!("cmpl-sim-{index}"), "text_completion"),
            Endpoint::Chat => (format!("chatcmpl-sim-{index}"), "chat.completion.chunk"),
        };
        let envelope = format!(
            r#"{{"id":"{id}","object":"{object}","created":{created},"model":{}"#,
            serde_json::to_string(model).unwrap_or_default()
        );
        Wire {
            endpoint,
            envelope,
            id,
            created,
            model: model.to_string(),
        }
    }

    fn role(&self, out: &mut String) {
        if self.endpoint == Endpoint::Chat {
            out.push_str("data: ");
            out.push_str(&self.envelope);
            out.push_str(r#","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#);
            out.push_str("\n\n");
        }
    }

    fn content(&self, out: &mut String, text: &str, finish: Option<Finish>) {
        let text = serde_json::to_string(text).unwrap_or_default();
        out.push_str("data: ");
        out.push_str(&self.envelope);
        match self.endpoint {
            Endpoint::Completions => {
                out.push_str(r#","choices":[{"index":0,"text":"#);
                out.push_str(&text);
            }
            Endpoint::Chat => {
                out.push_str(r#","choices":[{"index":0,"delta":{"content":"#);
                out.push_str(&text);
                out.push('}');
            }
        }
        out.push_str(r#","logprobs":null,"finish_reason":"#);
        match finish {
            Some(f) => {
                out.push('"');
                out.push_str(f.as_str());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str("}]}\n\n");
    }

    fn usage(&self, out: &mut String, prompt: usize, completion: usize) {
        out.push_str("data: ");
        out.push_str(&self.envelope);
        out.push_str(&format!(
            r#","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
            prompt + completion
        ));
        out.push_str("\n\n");
    }

    fn shutdown_event(out: &mut String) {
        out.push_str(
            r#"data: {"error":{"message":"the server is shutting down","type":"ServiceUnavailableError","param":null,"code":503}}"#,
        );
        out.push_str("\n\ndata: [DONE]\n\n");
    }

    /// The non-streaming response.
    fn whole(&self, plan: &OutputPlan, prompt: usize) -> serde_json::Value {
        let n = plan.tokens.len();
        let text = plan.text(0..n);
        let usage =
            json!({ "prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n });
        let finish = plan.finish.as_str();
        match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
                "usage": usage,
            }),
            Endpoint::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": text },
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    /// `--cut-stream-after`: drop the connection without `[DONE]`.
    Cut,
    End,
}

/// One request's output, chunk by chunk.
struct TokenStream {
    wire: Wire,
    prompt_len: usize,
    plan: OutputPlan,
    source: Source,
    next: usize,
    per_chunk: usize,
    cut: Option<usize>,
    include_usage: bool,
    /// `--no-usage`: no usage block at all, whatever the request asked for.
    no_usage: bool,
    stop: watch::Receiver<bool>,
    rec: Recorder,
    phase: Phase,
}

impl TokenStream {
    fn into_response(self) -> Response {
        let body = futures_util::stream::unfold(self, |mut st| async move {
            let item = st.next_chunk().await?;
            Some((item, st))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    /// Waits until tokens `from..to` are due, unless the server shuts down first.
    async fn wait(&mut self, from: usize, to: usize) -> Option<Instant> {
        let TokenStream { source, stop, .. } = self;
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => None,
            due = source.until(from, to) => due,
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        match self.phase {
            Phase::End => None,
            Phase::Cut => {
                tokio::time::sleep(CUT_FLUSH).await;
                self.rec.finish("cut");
                self.phase = Phase::End;
                Some(Err(io::Error::other("simulated cut (--cut-stream-after)")))
            }
            Phase::Tokens => {
                let n = self.plan.tokens.len();
                let limit = self.cut.unwrap_or(n);
                let (from, to) = (self.next, (self.next + self.per_chunk).min(limit));
                let mut out = String::new();
                let Some(due) = self.wait(from, to).await else {
                    Wire::shutdown_event(&mut out);
                    self.phase = Phase::End;
                    self.rec.finish("shutdown");
                    return Some(Ok(Bytes::from(out)));
                };
                if from == 0 {
                    self.wire.role(&mut out);
                }
                let last = to == n;
                self.wire.content(
                    &mut out,
                    &self.plan.text(from..to),
                    last.then_some(self.plan.finish),
                );
                if last {
                    if self.include_usage && !self.no_usage {
                        self.wire.usage(&mut out, self.prompt_len, n);
                    }
                    out.push_str("data: [DONE]\n\n");
                    self.phase = Phase::End;
                } else if to == limit {
                    self.phase = Phase::Cut;
                }
                self.next = to;
                self.rec.chunk(to - from, due, Instant::now());
                if last {
                    self.rec.finish("done");
                }
                Some(Ok(Bytes::from(out)))
            }
        }
    }

    /// The non-streaming answer, once the last token is due.
    async fn complete(mut self) -> Result<Response, ApiError> {
        let n = self.plan.tokens.len();
        let Some(due) = self.wait(0, n).await else {
            self.rec.finish("shutdown");
            return Err(ApiError::unavailable("the server is shutting down"));
        };
        let mut whole = self.wire.whole(&self.plan, self.prompt_len);
        if self.no_usage {
            whole.as_object_mut().map(|o| o.remove("usage"));
        }
        let response = axum::Json(whole).into_response();
        self.rec.chunk(n, due, Instant::now());
        self.rec.finish("done");
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(json: &str) -> Result<Prompt, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn prompt_shapes() {
        assert!(matches!(prompt(r#""a b""#), Ok(Prompt::Text(t)) if t == "a b"));
        assert!(matches!(prompt("[5, 6, 7]"), Ok(Prompt::Ids(v)) if v == [5, 6, 7]));
        assert!(matches!(prompt("[]"), Ok(Prompt::Ids(v)) if v.is_empty()));
        assert!(matches!(prompt(r#"["a", "b"]"#), Ok(Prompt::Texts(v)) if v == ["a", "b"]));
        assert!(
            matches!(prompt("[[1, 2], [3]]"), Ok(Prompt::IdLists(v)) if v == [vec![1, 2], vec![3]])
        );
        for bad in [
            "[1, \"a\"]",
            "[\"a\", 1]",
            "{}",
            "7",
            "[1.5]",
            "[18446744073709551615]",
        ] {
            assert!(prompt(bad).is_err(), "{bad}");
        }
    }
}
