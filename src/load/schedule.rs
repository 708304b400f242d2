//! When requests are sent: warm-up, then the measured phase in closed loop (a fixed number of streams,
//! each sending its next request as soon as the previous one ends) or at a Poisson request rate; an
//! optional in-flight cap; and the client's self-check while it runs.
//!
//! Invariants:
//! - One function, [`one`], sends every request; the two drivers only decide *when*.
//! - Closed loop: latency is measured from the send (after the in-flight gate), as vLLM does; the wait
//!   at the gate is the queue time. Rate mode: latency is measured from the intended (scheduled) send
//!   time, so a late client or a full gate shows up as latency instead of hiding it (coordinated
//!   omission). In rate mode `concurrency` (or `max_inflight`, if lower) caps requests in flight.
//! - The arrival schedule is deterministic from the seed.
//! - Self-check: a timer task wakes every [`LAG_PERIOD`] and records how late it ran. The runtime's
//!   timer has 1 ms resolution, so lag up to ~1 ms is normal; a point is flagged `saturated` when the
//!   p99 lag exceeds [`SATURATION_P99_MS`], i.e. when chunk reads may have been that late too.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{self, Call, LoadClient, ms_since};
use super::prompt::PromptSource;
use super::{Progress, Target};
use crate::engine::Dialect;
use crate::experiment::load::{Api, LoadSpec};
use crate::secret::ApiKey;
use crate::stats::RequestRecord;
use crate::stats::{ClientCheck, Dist};

/// How often the self-check timer wakes.
pub const LAG_PERIOD: Duration = Duration::from_millis(2);
/// Scheduling lag p99 (ms) above which a point is flagged: the client may have inflated TTFT/ITL.
pub const SATURATION_P99_MS: f64 = 5.0;

/// Request bodies are built before the point when all of them fit in this many bytes. Building a body
/// (prompt draws + JSON) costs tens of microseconds; in closed loop whole waves of streams resend at the
/// same instant, and building their bodies then would delay every send of the wave.
pub const PREBUILT_BODY_BUDGET: usize = 512 << 20;

/// What every request of a point shares.
struct Shared {
    http: reqwest::Client,
    fresh: reqwest::Client,
    url: String,
    api_key: Option<ApiKey>,
    model: String,
    dialect: Dialect,
    chat: bool,
    prompts: PromptSource,
    /// Request bodies built before the point starts, when they fit in [`PREBUILT_BODY_BUDGET`].
    prebuilt: Vec<(bytes::Bytes, Option<u32>)>,
    t0: Instant,
    timeout: Duration,
    input_tokens: u32,
    output_tokens: u32,
    gate: Option<Semaphore>,
    from_intended: bool,
    inflight: AtomicU32,
    peak: AtomicU32,
    progress: Progress,
}

/// Runs warm-up and the measured phase; returns every record (in issue order, times relative to `t0`)
/// and the self-check.
pub async fn drive(
    client: &LoadClient,
    target: &Target,
    spec: &LoadSpec,
    prompts: PromptSource,
    progress: &Progress,
    t0: Instant,
) -> (Vec<RequestRecord>, ClientCheck) {
    let chat = spec.api == Api::Chat;
    let rate = spec.request_rate;
    let cap = match rate {
        Some(_) => Some(
            spec.max_inflight
                .map_or(spec.concurrency, |m| m.min(spec.concurrency)),
        ),
        None => spec.max_inflight.filter(|&m| m < spec.concurrency),
    };
    // Building the prompts is part of what the client costs.
    let cpu_before = cpu_time();
    let total = spec.warmup + spec.requests;
    // A token id is at most 6 digits and a comma.
    let estimate = (spec.input_tokens as usize * 7 + 512) * total as usize;
    let build = |index: u32| {
        let prompt = prompts.prompt(index);
        let body = client::body(
            &target.model,
            &prompt,
            chat,
            spec.output_tokens,
            target.dialect,
        );
        (bytes::Bytes::from(body), prompt.known_tokens())
    };
    let prebuilt = if estimate <= PREBUILT_BODY_BUDGET {
        (0..total).map(build).collect()
    } else {
        Vec::new()
    };
    let shared = Arc::new(Shared {
        http: client.http().clone(),
        fresh: client.fresh().clone(),
        url: target.url(chat),
        api_key: target.api_key.clone(),
        model: target.model.clone(),
        dialect: target.dialect,
        chat,
        prompts,
        prebuilt,
        t0,
        timeout: spec.timeout,
        input_tokens: spec.input_tokens,
        output_tokens: spec.output_tokens,
        gate: cap.map(|c| Semaphore::new(c as usize)),
        from_intended: rate.is_some(),
        inflight: AtomicU32::new(0),
        peak: AtomicU32::new(0),
        progress: progress.clone(),
    });

    // The monitor is a spawned task so that it runs on the worker threads that read the streams (the
    // caller may poll this future from a thread outside the pool, e.g. `block_on`). Dropping the guard
    // (cancellation) aborts it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut monitor = AbortOnDrop(tokio::spawn(lag_monitor(Arc::clone(&stop))));
    let phases = async {
        let warm = 0..spec.warmup;
        let mut records = closed_loop(
            &shared,
            warm.clone(),
            spec.concurrency.min(spec.warmup),
            true,
        )
        .await;
        // Peak in-flight proves the offered load of the measured phase only.
        shared.peak.store(0, Ordering::Relaxed);
        let measured = warm.end..warm.end + spec.requests;
        records.extend(match rate {
            None => closed_loop(&shared, measured, spec.concurrency, false).await,
            Some(rate) => poisson(&shared, measured, rate, spec.seed).await,
        });
        stop.store(true, Ordering::Relaxed);
        records
    };
    let mut records = phases.await;
    // The monitor only ends by the stop flag; a join error would mean it was aborted: no samples.
    let lags: Vec<f64> = (&mut monitor.0).await.unwrap_or_default();
    let cpu_s = cpu_time() - cpu_before;
    records.sort_by_key(|r| r.index);

    let lag = Dist::of(lags);
    let lag_p99 = lag.as_ref().map(|d| d.p99);
    let check = ClientCheck {
        lag_ms_p50: lag.as_ref().map(|d| d.p50),
        lag_ms_p99: lag_p99,
        lag_ms_max: lag.as_ref().map(|d| d.max),
        peak_inflight: shared.peak.load(Ordering::Relaxed),
        saturated: lag_p99.is_some_and(|p99| p99 > SATURATION_P99_MS),
        cpu_s,
    };
    (records, check)
}

/// Sends one request: prompt and body first (not timed), then the gate, then the timed request.
async fn one(sh: &Shared, index: u32, warmup: bool, intended: Instant) -> RequestRecord {
    let (body, known_tokens) = match sh.prebuilt.get(index as usize) {
        Some(built) => built.clone(),
        None => {
            let prompt = sh.prompts.prompt(index);
            let body = client::body(&sh.model, &prompt, sh.chat, sh.output_tokens, sh.dialect);
            (bytes::Bytes::from(body), prompt.known_tokens())
        }
    };
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
        index,
        warmup,
        intended_ms,
        sent_ms,
        origin_ms: if sh.from_intended {
            intended_ms
        } else {
            sent_ms
        },
        prompt_tokens_sent: known_tokens,
        ..RequestRecord::default()
    };
    let call = Call {
        http: &sh.http,
        fresh: &sh.fresh,
        url: &sh.url,
        api_key: sh.api_key.as_ref(),
        t0: sh.t0,
        timeout: sh.timeout,
        input_tokens: sh.input_tokens,
        output_tokens: sh.output_tokens,
    };
    client::execute(&call, body, &mut rec).await;
    sh.inflight.fetch_sub(1, Ordering::Relaxed);
    if !warmup {
        sh.progress.done.fetch_add(1, Ordering::Relaxed);
    }
    rec
}

/// `streams` tasks, each sending the next unsent request of `range` as soon as its previous one ends.
async fn closed_loop(
    sh: &Arc<Shared>,
    range: Range<u32>,
    streams: u32,
    warmup: bool,
) -> Vec<RequestRecord> {
    let next = Arc::new(AtomicU32::new(range.start));
    let mut set = JoinSet::new();
    for _ in 0..streams.min(range.len() as u32) {
        let (sh, next, end) = (Arc::clone(sh), Arc::clone(&next), range.end);
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    break out;
                }
                out.push(one(&sh, index, warmup, Instant::now()).await);
            }
        });
    }
    collect(set).await
}

/// Requests at Poisson arrivals of `rate` per second (exponential gaps), the first at once.
async fn poisson(sh: &Arc<Shared>, range: Range<u32>, rate: f64, seed: u64) -> Vec<RequestRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut at = 0.0f64;
    let mut set = JoinSet::new();
    for index in range {
        let intended = start + Duration::from_secs_f64(at);
        tokio::time::sleep_until(intended.into()).await;
        let sh = Arc::clone(sh);
        set.spawn(async move { vec![one(&sh, index, false, intended).await] });
        // 1 − U lies in (0, 1], so the logarithm is finite.
        at += -(1.0 - rng.random::<f64>()).ln() / rate;
    }
    collect(set).await
}

async fn collect(mut set: JoinSet<Vec<RequestRecord>>) -> Vec<RequestRecord> {
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(records) => all.extend(records),
            // A panic in a request task is a bug: surface it rather than lose records silently.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    all
}

/// Wakes every [`LAG_PERIOD`] until `stop`, returning how late each wake-up was (ms).
async fn lag_monitor(stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut lags = Vec::new();
    let mut next = Instant::now() + LAG_PERIOD;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        lags.push(now.saturating_duration_since(next).as_secs_f64() * 1000.0);
        // After a long stall, measure the next period from now rather than firing a burst of catch-ups.
        next = (next + LAG_PERIOD).max(now + LAG_PERIOD / 2);
    }
    lags
}

/// Aborts a spawned task when dropped, so that cancellation leaves nothing running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// User + system CPU time of this process, seconds.
pub fn cpu_time() -> f64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
