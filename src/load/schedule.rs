//! When requests are sent: warm-up, then (with `connections = "warm"`) the point's connections are
//! opened, then the measured phase runs in closed loop (a fixed number of streams, each sending its next
//! request as soon as the previous one ends) or at a Poisson request rate; an optional in-flight cap;
//! and the client's self-check while it runs.
//!
//! Invariants:
//! - One function, [`one`], sends every request; the two drivers only decide *when*.
//! - Closed loop: latency is measured from the send (after the in-flight gate), as vLLM does; the wait
//!   at the gate is the queue time. Rate mode: latency is measured from the intended (scheduled) send
//!   time, so a late client or a full gate shows up as latency instead of hiding it (coordinated
//!   omission). In rate mode `concurrency` (or `max_inflight`, if lower) caps requests in flight.
//! - The arrival schedule is deterministic from the seed.
//! - The measured phase starts with its connections open (warm) and its first bodies built; its peak
//!   in-flight count, lags and CPU time cover it alone.
//! - Records leave through the recorder the moment a request ends; memory does not grow with them.
//! - Self-check ([`super::health`]): the runtime's timer lag and the read lag of every read; a point is
//!   flagged `saturated` when the p99 of either exceeds [`health::SATURATION_P99_MS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::bodies::{Bodies, Built};
use super::client::{self, Call, ms_since};
use super::health::{self, Histogram};
use super::pool::{Dest, Pool};
use super::prompt::PromptSource;
use super::recorder::Recorder;
use super::{LoadError, Progress, Target};
use crate::engine::Dialect;
use crate::experiment::load::{Api, Connections, LoadSpec};
use crate::stats::{ClientCheck, RecordSink, RequestRecord, Summary};

/// What every request of a point shares.
struct Shared {
    pool: Arc<Pool>,
    uri: Uri,
    t0: Instant,
    timeout: Duration,
    input_tokens: u32,
    output_tokens: u32,
    gate: Option<Semaphore>,
    from_intended: bool,
    inflight: AtomicU32,
    peak: AtomicU32,
    progress: Progress,
    records: mpsc::Sender<RequestRecord>,
}

/// Builds request bodies: the prompt of an index in the engine's dialect.
#[derive(Clone)]
struct BodyMaker {
    prompts: PromptSource,
    model: String,
    chat: bool,
    output_tokens: u32,
    dialect: Dialect,
}

impl BodyMaker {
    fn make(&self, index: u32) -> Built {
        let prompt = self.prompts.prompt(index);
        let body = client::body(
            &self.model,
            &prompt,
            self.chat,
            self.output_tokens,
            self.dialect,
        );
        Built {
            index,
            body: Bytes::from(body),
            known_tokens: prompt.known_tokens(),
        }
    }

    /// The bodies of `range`, built ahead in a window sized for `streams`.
    fn window(&self, range: std::ops::Range<u32>, streams: u32, input_tokens: u32) -> Arc<Bodies> {
        // A token id is at most 6 digits and a comma.
        let estimate = input_tokens as usize * 7 + 512;
        let maker = self.clone();
        Arc::new(Bodies::start(
            range,
            Bodies::capacity(streams, estimate),
            move |i| maker.make(i),
        ))
    }
}

/// What a point's requests produced: the summary (records summarised as they finished) and the sink
/// that took the records.
pub struct Driven<S> {
    pub summary: Summary,
    /// The measured phase on the point's clock (see [`crate::stats::Accumulator::span`]).
    pub span: Option<(f64, f64)>,
    pub sink: S,
    /// The first error the sink returned.
    pub write_error: Option<std::io::Error>,
}

/// Runs warm-up, connection opening and the measured phase; every record goes to `sink` as it
/// finishes (times relative to `t0`).
pub async fn drive<S: RecordSink>(
    target: &Target,
    spec: &LoadSpec,
    prompts: PromptSource,
    progress: &Progress,
    t0: Instant,
    sink: S,
) -> Result<Driven<S>, LoadError> {
    let chat = spec.api == Api::Chat;
    let dest = Dest::resolve(&target.base_url)
        .await?
        .with_api_key(target.api_key.as_ref())?;
    let uri = dest.path(super::api_path(chat))?;
    let rate = spec.request_rate;
    let cap = match rate {
        Some(_) => Some(
            spec.max_inflight
                .map_or(spec.concurrency, |m| m.min(spec.concurrency)),
        ),
        None => spec.max_inflight.filter(|&m| m < spec.concurrency),
    };
    let read_lag = Arc::new(Histogram::default());
    let pool = Arc::new(Pool::new(dest, Arc::clone(&read_lag)));
    let recorder = Recorder::start(spec, sink);
    let maker = BodyMaker {
        prompts,
        model: target.model.clone(),
        chat,
        output_tokens: spec.output_tokens,
        dialect: target.dialect,
    };
    let warm = 0..spec.warmup;
    let measured = warm.end..warm.end + spec.requests;
    let warm_bodies = maker.window(warm.clone(), spec.concurrency, spec.input_tokens);
    let measured_bodies = maker.window(measured, spec.concurrency, spec.input_tokens);
    let shared = Arc::new(Shared {
        pool: Arc::clone(&pool),
        uri,
        t0,
        timeout: spec.timeout,
        input_tokens: spec.input_tokens,
        output_tokens: spec.output_tokens,
        gate: cap.map(|c| Semaphore::new(c as usize)),
        from_intended: rate.is_some(),
        inflight: AtomicU32::new(0),
        peak: AtomicU32::new(0),
        progress: progress.clone(),
        records: recorder.sender(),
    });

    // The monitor is a spawned task so that it runs on the worker threads that read the streams (the
    // caller may poll this future from a thread outside the pool, e.g. `block_on`). Dropping the guard
    // (cancellation) aborts it.
    let lags = Arc::new(Histogram::default());
    let monitor = AbortOnDrop(tokio::spawn(health::lag_monitor(Arc::clone(&lags))));

    closed_loop(
        &shared,
        &warm_bodies,
        spec.concurrency.min(spec.warmup),
        true,
    )
    .await;
    // As many connections as the measured phase has requests in flight at once.
    let streams = cap.unwrap_or(spec.concurrency).min(spec.requests);
    let warmed = match spec.connections {
        Connections::Warm => Some(pool.warm(streams, spec.timeout).await),
        Connections::Cold => None,
    };
    measured_bodies.full().await;

    // The measured phase: its own peak, lags and CPU time.
    shared.peak.store(0, Ordering::Relaxed);
    lags.clear();
    read_lag.clear();
    let cpu_before = health::cpu_time();
    match rate {
        None => closed_loop(&shared, &measured_bodies, spec.concurrency, false).await,
        Some(rate) => poisson(&shared, &measured_bodies, spec.requests, rate, spec.seed).await,
    }
    let cpu_s = health::cpu_time() - cpu_before;
    drop(monitor);
    let peak_inflight = shared.peak.load(Ordering::Relaxed);
    // Every request task has ended: this was the last sender besides the recorder's own.
    drop(shared);
    let recorded = recorder
        .finish()
        .await
        .ok_or_else(|| anyhow::anyhow!("the record writer stopped unexpectedly"))?;

    let (lag, read) = (lags.lag(), read_lag.lag());
    let check = ClientCheck {
        lag_ms_p50: lag.map(|l| l.p50_ms),
        lag_ms_p99: lag.map(|l| l.p99_ms),
        lag_ms_max: lag.map(|l| l.max_ms),
        read_lag_ms_p50: read.map(|l| l.p50_ms),
        read_lag_ms_p99: read.map(|l| l.p99_ms),
        read_lag_ms_max: read.map(|l| l.max_ms),
        peak_inflight,
        saturated: [lag, read].iter().flatten().any(health::Lag::saturated),
        cpu_s,
        connections_warm: warmed.map(|w| w.open),
        connect_ms: warmed.map(|w| w.ms),
        t0_mono_ns: Some(crate::sim::timing::MonoClock::now().ns(t0)),
    };
    Ok(Driven {
        span: recorded.summary.span(),
        summary: recorded.summary.finish(check),
        sink: recorded.sink,
        write_error: recorded.error,
    })
}

/// Sends one request (its body built ahead): the gate, then the timed request; the record goes to the
/// recorder.
async fn one(sh: &Shared, built: Built, warmup: bool, intended: Instant) {
    // A closed semaphore cannot happen (we never close it); without a permit we simply go ahead.
    let _permit = match &sh.gate {
        Some(gate) => gate.acquire().await.ok(),
        None => None,
    };
    let sent = Instant::now();
    let now_inflight = sh.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    sh.peak.fetch_max(now_inflight, Ordering::Relaxed);
    let (intended_ms, sent_ms) = (ms_since(sh.t0, intended), ms_since(sh.t0, sent));
    let mut rec = RequestRecord {
        index: built.index,
        warmup,
        intended_ms,
        sent_ms,
        origin_ms: if sh.from_intended {
            intended_ms
        } else {
            sent_ms
        },
        prompt_tokens_sent: built.known_tokens,
        ..RequestRecord::default()
    };
    let call = Call {
        pool: &sh.pool,
        uri: &sh.uri,
        t0: sh.t0,
        timeout: sh.timeout,
        input_tokens: sh.input_tokens,
        output_tokens: sh.output_tokens,
    };
    client::execute(&call, built.body, &mut rec).await;
    sh.inflight.fetch_sub(1, Ordering::Relaxed);
    if !warmup {
        sh.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    // The recorder outlives every request task; if it is gone the point is being torn down anyway.
    let _ = sh.records.send(rec);
}

/// `streams` tasks, each sending the next body of `bodies` as soon as its previous request ends.
async fn closed_loop(sh: &Arc<Shared>, bodies: &Arc<Bodies>, streams: u32, warmup: bool) {
    let mut set = JoinSet::new();
    for _ in 0..streams {
        let (sh, bodies) = (Arc::clone(sh), Arc::clone(bodies));
        set.spawn(async move {
            loop {
                // The slot is free now; waiting for a body (the builder behind) counts as queue time.
                let intended = Instant::now();
                let Some(built) = bodies.next().await else {
                    break;
                };
                one(&sh, built, warmup, intended).await;
            }
        });
    }
    join_all(set).await;
}

/// `count` requests at Poisson arrivals of `rate` per second (exponential gaps), the first at once.
async fn poisson(sh: &Arc<Shared>, bodies: &Bodies, count: u32, rate: f64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut at = 0.0f64;
    let mut set = JoinSet::new();
    for _ in 0..count {
        let intended = start + Duration::from_secs_f64(at);
        tokio::time::sleep_until(intended.into()).await;
        let Some(built) = bodies.next().await else {
            break;
        };
        let sh = Arc::clone(sh);
        set.spawn(async move { one(&sh, built, false, intended).await });
        // 1 − U lies in (0, 1], so the logarithm is finite.
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
    }
    join_all(set).await;
}

async fn join_all(mut set: JoinSet<()>) {
    while let Some(joined) = set.join_next().await {
        // A panic in a request task is a bug: surface it rather than lose records silently.
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Aborts a spawned task when dropped, so that cancellation leaves nothing running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
