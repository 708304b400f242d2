//! The request side: the request body in the engine's dialect, and one streamed request turned into a
//! [`RequestRecord`]; plus the pooled HTTP client the run uses for everything that is not load
//! (metrics scrapes).
//!
//! Invariants: a chunk's arrival time is taken the moment its bytes are handed to us, before any parsing;
//! token counts come only from the server's `usage`; a failure of any kind ends up in the record (kind and
//! message), never as a panic or an early return that loses what was measured so far. Only the messages
//! that can change the record beyond "one more content message" are parsed as JSON ([`plain_content`]).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, Uri};
use serde::{Deserialize, Serialize};

use super::pool::{Conn, Pool};
use super::prompt::Prompt;
use crate::engine::Dialect;
use crate::stats::{ErrorKind, RequestRecord};

/// Error bodies and messages are kept to this many bytes in a record.
const MESSAGE_LIMIT: usize = 1024;
/// How long the body may take to end after `[DONE]`, and a finished connection to be ready again.
const AFTER_DONE_GRACE: Duration = Duration::from_secs(1);

/// One HTTP client for a whole run, for requests besides the load (metrics scrapes). The load itself
/// goes over each point's own connections ([`super::pool`]). It keeps no idle connection: llama.cpp
/// closes idle kept-alive connections, and a scrape that reuses one it just closed fails ("connection
/// closed before message completed"); one new connection per scrape (once a second) costs nothing.
#[derive(Clone)]
pub struct LoadClient {
    http: reqwest::Client,
}

impl LoadClient {
    /// Raises the open-files limit (1000+ streams need as many sockets) and builds the client: no proxy
    /// (loopback benchmarks must never go through one found in the environment), no total timeout.
    pub fn new() -> anyhow::Result<LoadClient> {
        crate::limits::raise_open_files_limit();
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(LoadClient { http })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// The request body for either API. Optional fields are left out rather than sent as null: some servers
/// reject unknown or null sampling fields.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptField<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<[ChatMessage<'a>; 1]>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Ids(&'a [u32]),
    Text(&'a str),
}

/// The JSON body asking for exactly `output_tokens` tokens in `dialect`, streamed, with usage.
pub fn body(
    model: &str,
    prompt: &Prompt,
    chat: bool,
    output_tokens: u32,
    dialect: Dialect,
) -> Vec<u8> {
    let (prompt_field, messages) = match (prompt, chat) {
        (Prompt::Text { text, .. }, true) => (
            None,
            Some([ChatMessage {
                role: "user",
                content: text,
            }]),
        ),
        (Prompt::Text { text, .. }, false) => (Some(PromptField::Text(text)), None),
        // Chat needs text; the caller builds text prompts for chat, ids are sent as a completion.
        (Prompt::Ids(ids), _) => (Some(PromptField::Ids(ids)), None),
    };
    let body = Body {
        model,
        prompt: prompt_field,
        messages,
        max_tokens: output_tokens,
        min_tokens: dialect.min_tokens.then_some(output_tokens),
        ignore_eos: dialect.ignore_eos.then_some(true),
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
    };
    // Serialising plain structs of strings and integers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One SSE message of either API; unknown fields are ignored.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    /// Reasoning models stream their thinking here; it is generated output too.
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

/// What the stream said so far.
#[derive(Default)]
struct StreamState {
    done: bool,
    error: Option<(ErrorKind, String)>,
}

/// Everything one request needs besides its body.
pub struct Call<'a> {
    pub pool: &'a Pool,
    /// The API path, in origin form.
    pub uri: &'a Uri,
    /// The point's time origin: every time in the record is relative to it.
    pub t0: Instant,
    pub timeout: Duration,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// Milliseconds from `t0` to `t`, rounded to the microsecond: finer digits are noise at this scale and
/// would only lengthen every JSONL line.
pub fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_micros() as f64 / 1000.0
}

/// Sends one streamed request and fills `rec` (whose scheduling fields the caller has set). Never fails:
/// every problem becomes the record's error kind and message.
pub async fn execute(call: &Call<'_>, body: Bytes, rec: &mut RequestRecord) {
    let outcome = tokio::time::timeout(call.timeout, stream_into(call, body, rec)).await;
    let end = Instant::now();
    let error = match outcome {
        Err(_elapsed) => Some((
            ErrorKind::Timeout,
            format!("no complete response within {:?}", call.timeout),
        )),
        Ok(Err(e)) => Some(e),
        Ok(Ok(state)) => state.error.or_else(|| {
            if !state.done && rec.finish_reason.is_none() {
                Some((
                    ErrorKind::StreamCut,
                    "the stream ended without [DONE] or a finish reason".into(),
                ))
            } else if rec.chunk_ms.is_empty() {
                Some((ErrorKind::NoContent, "the stream carried no output".into()))
            } else {
                None
            }
        }),
    };
    rec.end_ms = ms_since(call.t0, end);
    if let Some((kind, message)) = error {
        rec.error = Some(kind.key());
        rec.error_message = Some(truncate(message));
    }
    rec.ttft_ms = rec.chunk_ms.first().map(|t| t - rec.origin_ms);
    rec.e2e_ms = rec.chunk_ms.last().map(|t| t - rec.origin_ms);
    rec.input_mismatch = rec.prompt_tokens.is_some_and(|n| n != call.input_tokens);
    // More content messages than generated tokens means `usage` is wrong; fewer is normal (a message
    // may carry several tokens).
    rec.output_mismatch = rec
        .completion_tokens
        .is_some_and(|n| n != call.output_tokens || rec.chunk_ms.len() > n as usize);
}

fn connect_error(e: anyhow::Error) -> (ErrorKind, String) {
    (ErrorKind::Connect, format!("{e:#}"))
}

async fn stream_into(
    call: &Call<'_>,
    body: Bytes,
    rec: &mut RequestRecord,
) -> Result<StreamState, (ErrorKind, String)> {
    let dest = call.pool.dest();
    let (mut conn, fresh) = call.pool.checkout().await.map_err(connect_error)?;
    rec.new_connection = fresh;
    let mut response = match conn
        .send(dest.request(Method::POST, call.uri, body.clone()))
        .await
    {
        // A kept-alive connection the server closed just as we reused it (llama.cpp's HTTP library does
        // this under load) fails before any response: the server never saw the request, so sending it once
        // more on a new connection is safe. It is recorded, never hidden.
        Err(e) if !fresh && closed_before_response(&e) => {
            rec.retries += 1;
            rec.new_connection = true;
            conn = call.pool.connect().await.map_err(connect_error)?;
            conn.send(dest.request(Method::POST, call.uri, body)).await
        }
        other => other,
    }
    .map_err(|e| (ErrorKind::Request, error_text(&e)))?;
    let status = response.status();
    rec.status = Some(status.as_u16());
    let body = response.body_mut();
    if !status.is_success() {
        let mut text = Vec::new();
        let ended = conn
            .read_to_end(body, |data| text.extend_from_slice(&data))
            .await
            .is_ok();
        // An error answer leaves the connection as good as a success does.
        if ended {
            give_back(call.pool, conn).await;
        }
        return Err((
            ErrorKind::Http(status.as_u16()),
            String::from_utf8_lossy(&text).into_owned(),
        ));
    }

    let mut parser = super::sse::SseParser::new();
    let mut state = StreamState::default();
    let ended = loop {
        let next = if state.done {
            // After `[DONE]` only the end of the body should follow; a server that holds the connection
            // open must not turn a complete response into a timeout.
            match tokio::time::timeout(AFTER_DONE_GRACE, conn.frame(body)).await {
                Ok(next) => next,
                Err(_) => break false,
            }
        } else {
            conn.frame(body).await
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            None => break true,
            Some(Err(_)) if state.done => break false,
            Some(Err(e)) => {
                return Err(state
                    .error
                    .take()
                    .unwrap_or((ErrorKind::StreamCut, error_text(&e))));
            }
        };
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        // The arrival time of every message in this read: taken before parsing.
        let at = ms_since(call.t0, Instant::now());
        parser.feed(&chunk, &mut |data| on_message(data, at, rec, &mut state));
    };
    parser.finish(&mut |data| on_message(data, at_now(call.t0), rec, &mut state));
    if ended {
        give_back(call.pool, conn).await;
    }
    Ok(state)
}

/// Returns a connection whose response ended to the pool, unless it does not get ready for another
/// request promptly.
async fn give_back(pool: &Pool, conn: Conn) {
    let _ = tokio::time::timeout(AFTER_DONE_GRACE, pool.checkin(conn)).await;
}

fn at_now(t0: Instant) -> f64 {
    ms_since(t0, Instant::now())
}

/// Applies one SSE message to the record.
fn on_message(data: &[u8], at: f64, rec: &mut RequestRecord, state: &mut StreamState) {
    if plain_content(data) {
        rec.chunk_ms.push(at);
    } else {
        parse_message(data, at, rec, state);
    }
}

/// Applies one SSE message to the record, reading all of it.
fn parse_message(data: &[u8], at: f64, rec: &mut RequestRecord, state: &mut StreamState) {
    if data == b"[DONE]" {
        state.done = true;
        return;
    }
    let msg: Message = match serde_json::from_slice(data) {
        Ok(m) => m,
        Err(e) => {
            state.error.get_or_insert((
                ErrorKind::BadResponse,
                format!("{e}: {}", String::from_utf8_lossy(data)),
            ));
            return;
        }
    };
    if let Some(err) = msg.error {
        state
            .error
            .get_or_insert((ErrorKind::StreamError, err.to_string()));
    }
    if let Some(usage) = msg.usage {
        rec.prompt_tokens = usage.prompt_tokens.or(rec.prompt_tokens);
        rec.completion_tokens = usage.completion_tokens.or(rec.completion_tokens);
    }
    let Some(choice) = msg.choices.first() else {
        return;
    };
    if let Some(reason) = &choice.finish_reason {
        rec.finish_reason = Some(reason.to_string());
    }
    let text_len = choice.text.as_deref().map_or(0, str::len)
        + choice.delta.as_ref().map_or(0, |d| {
            d.content.as_deref().map_or(0, str::len)
                + d.reasoning_content.as_deref().map_or(0, str::len)
        });
    let role_only = choice.delta.as_ref().is_some_and(|d| d.role.is_some());
    // A content message carries generated output. A token may decode to empty text (a partial UTF-8
    // sequence), so empty messages count too, except the two kinds that carry no token: the chat role
    // preamble and a bare finish marker (llama.cpp puts usage in one).
    if text_len > 0 || (choice.finish_reason.is_none() && !role_only) {
        rec.chunk_ms.push(at);
    }
}

/// Whether `data` is certainly a plain content message: a JSON object with a non-empty `choices`, no
/// `error`, no `role`, and `finish_reason` and `usage` absent or null. Such a message only adds one
/// arrival time to the record (what [`on_message`]'s full parse would conclude too), so it is not
/// parsed; everything else (the first role message, finish and usage messages, errors, anything
/// unexpected) is. One pass over the bytes that reads keys only: text inside string values, escaped
/// quotes included, is skipped, so generated text cannot fake or hide a key.
fn plain_content(data: &[u8]) -> bool {
    if data.first() != Some(&b'{') || data.last() != Some(&b'}') {
        return false;
    }
    let skip_ws = |mut j: usize| {
        while data.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        j
    };
    let mut choices = false;
    let mut i = 1;
    while i < data.len() {
        if data[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        i = start;
        while i < data.len() && data[i] != b'"' {
            i += if data[i] == b'\\' { 2 } else { 1 };
        }
        if i >= data.len() {
            return false; // an unterminated string: let the parser say what is wrong
        }
        let string = &data[start..i];
        i += 1;
        let colon = skip_ws(i);
        if data.get(colon) != Some(&b':') {
            continue; // a string value, not a key
        }
        let value = skip_ws(colon + 1);
        let rest = &data[value..];
        match string {
            b"finish_reason" | b"usage" if !rest.starts_with(b"null") => return false,
            b"error" | b"role" => return false,
            b"choices" => {
                if rest.first() != Some(&b'[') || data.get(skip_ws(value + 1)) != Some(&b'{') {
                    return false; // empty choices: a usage message
                }
                choices = true;
            }
            _ => {}
        }
        i = value;
    }
    choices
}

/// The connection closed before any response arrived ("connection closed before message completed"),
/// or it was found closed before the request could be written.
fn closed_before_response(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled()
}

/// The error with its causes (the top-level message alone rarely says what happened).
fn error_text(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn truncate(mut s: String) -> String {
    if s.len() > MESSAGE_LIMIT {
        let mut cut = MESSAGE_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(messages: &[&str]) -> (RequestRecord, StreamState) {
        let mut rec = RequestRecord::default();
        let mut state = StreamState::default();
        for (i, m) in messages.iter().enumerate() {
            on_message(m.as_bytes(), i as f64, &mut rec, &mut state);
        }
        (rec, state)
    }

    #[test]
    fn vllm_style_usage_in_a_separate_message() {
        let (rec, state) = apply(&[
            r#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":" b","finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":" c","finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}"#,
            "[DONE]",
        ]);
        // The empty first message is a token that decoded to no text: it counts.
        assert_eq!(rec.chunk_ms, [0.0, 1.0, 2.0]);
        assert_eq!(
            (rec.prompt_tokens, rec.completion_tokens),
            (Some(10), Some(3))
        );
        assert_eq!(rec.finish_reason.as_deref(), Some("length"));
        assert!(state.done && state.error.is_none());
    }

    #[test]
    fn llama_cpp_style_usage_in_the_finish_message() {
        let (rec, _) = apply(&[
            r#"{"choices":[{"index":0,"text":"a","finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#,
        ]);
        assert_eq!(rec.chunk_ms, [0.0], "a bare finish marker is not a token");
        assert_eq!(rec.completion_tokens, Some(1));
    }

    #[test]
    fn chat_role_preamble_is_not_a_token() {
        let (rec, _) = apply(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
        ]);
        assert_eq!(rec.chunk_ms, [1.0, 2.0]);
        assert_eq!(rec.completion_tokens, None, "no usage: unknown");
    }

    #[test]
    fn error_events_and_garbage_are_kept() {
        let (_, state) = apply(&[r#"{"error":{"message":"boom","code":500}}"#]);
        assert!(matches!(state.error, Some((ErrorKind::StreamError, ref m)) if m.contains("boom")));
        let (_, state) = apply(&["not json"]);
        assert!(matches!(state.error, Some((ErrorKind::BadResponse, _))));
    }

    #[test]
    fn only_plain_content_messages_skip_the_parser() {
        let plain = [
            // The simulator, vLLM (with null usage and stop reason), chat deltas, odd spacing.
            r#"{"id":"cmpl-sim-3","object":"text_completion","created":1,"model":"sim","choices":[{"index":0,"text":" ab","logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"x","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices" : [ {"delta":{"reasoning_content":"hm"}}]}"#,
            // Generated text that looks like keys is text: escaped quotes stay inside the string.
            r#"{"choices":[{"text":"\"error\": {\"finish_reason\":\"stop\"} \\","finish_reason":null}]}"#,
        ];
        for m in plain {
            assert!(plain_content(m.as_bytes()), "{m}");
            // What the full parse concludes from it: one more content message, nothing else.
            let mut rec = RequestRecord::default();
            let mut state = StreamState::default();
            parse_message(m.as_bytes(), 7.0, &mut rec, &mut state);
            assert_eq!(rec.chunk_ms, [7.0], "{m}");
            assert_eq!(
                rec,
                RequestRecord {
                    chunk_ms: vec![7.0],
                    ..RequestRecord::default()
                }
            );
            assert!(!state.done && state.error.is_none(), "{m}");
        }
        let parsed = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"text":" c","finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#,
            r#"{"choices":[{"text":"a","finish_reason":null}],"usage":{"completion_tokens":1}}"#,
            r#"{"error":{"message":"boom","code":500}}"#,
            r#"{"choices":[{"text":"a"}],"error":"late"}"#,
            r#"{"choices":[{"text":"unterminated}"#,
            "[DONE]",
            "not json",
            r#"{"choices":[{"text":"a"}]"#,
        ];
        for m in parsed {
            assert!(!plain_content(m.as_bytes()), "{m}");
        }
    }

    #[test]
    fn body_follows_the_dialect() {
        let strict = Dialect {
            min_tokens: true,
            ignore_eos: true,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body("m", &Prompt::Ids(vec![5, 6]), false, 8, strict)).unwrap();
        assert_eq!(v["prompt"], serde_json::json!([5, 6]));
        assert_eq!(
            (v["max_tokens"].as_u64(), v["min_tokens"].as_u64()),
            (Some(8), Some(8))
        );
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let llama = Dialect {
            min_tokens: false,
            ignore_eos: true,
        };
        let text = Prompt::Text {
            text: "hi".into(),
            tokens: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body("m", &text, true, 8, llama)).unwrap();
        assert!(v.get("min_tokens").is_none());
        assert!(v.get("prompt").is_none());
        assert_eq!(v["messages"][0]["content"], "hi");
    }
}
