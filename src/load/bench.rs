//! The client benchmark (`runner bench-client`, hidden): drives the simulated engine with exactly known
//! timing (fixed TTFT and inter-token time) at several concurrencies and prints how far the client's
//! measurements are from the truth, and what the client costs in CPU.
//!
//! The engine runs as a separate `runner sim` process so that the CPU time measured here (this process's
//! user + system time) is the client's alone. Its timing log says when each chunk was actually handed to
//! the network, which splits the error into the engine's own lateness and the client's share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{LoadClient, PointOutcome, Progress, Target, run_point};
use crate::engine::{CacheCounters, Preset};
use crate::experiment::load::{Api, LoadSpec, PromptMode, Slo, Vocab};
use crate::server::{self, RunningServer, ServerSpec};
use crate::sim::{TimingRecord, read_log};
use crate::stats::Dist;

/// Knobs of the client benchmark; the defaults are the setting.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Concurrencies to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,500,1000")]
    pub concurrency: Vec<u32>,
    /// Prompt length in tokens (token ids).
    #[arg(long, default_value_t = 1000)]
    pub input_tokens: u32,
    /// Output tokens per request.
    #[arg(long, default_value_t = 200)]
    pub output_tokens: u32,
    /// The engine's true time to first token, ms.
    #[arg(long, default_value_t = 50.0)]
    pub ttft_ms: f64,
    /// The engine's true time per output token, ms.
    #[arg(long, default_value_t = 10.0)]
    pub itl_ms: f64,
    /// Measured requests per stream (after one warm-up request per stream, which opens the connections).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Worker threads of the client's runtime (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Keep the engine's timing logs and the client's records in this directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub concurrency: u32,
    pub requests: u64,
    pub succeeded: u64,
    /// Measured TTFT − true TTFT, ms (mean, p99).
    pub ttft_err_mean: f64,
    pub ttft_err_p99: f64,
    /// Measured TPOT − true TPOT, ms (mean, p99).
    pub tpot_err_mean: f64,
    pub tpot_err_p99: f64,
    /// How late the engine handed out first chunks (its own share of the error), ms (mean, p99).
    pub engine_late_mean: f64,
    pub engine_late_p99: f64,
    /// The mean TTFT error split into its legs, ms: client send → engine has read the request;
    /// engine hands out the first chunk → client has read it (means over the same requests, so no
    /// request matching is needed; both clocks are the machine's monotonic clock).
    pub send_to_engine_mean: f64,
    pub first_chunk_delivery_mean: f64,
    /// Engine hands out a chunk → client has read it, mean over every chunk, ms: the client's read lag.
    pub chunk_delivery_mean: f64,
    pub lag_p99: f64,
    pub peak_inflight: u32,
    pub cpu_ms_per_1k_tokens: f64,
    pub saturated: bool,
}

pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().context("starting the client runtime")?;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    let client = LoadClient::new()?;
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        crate::progress::say(format!("bench-client: concurrency {c}"));
        let row = runtime.block_on(level(&client, &args, c, &dir))?;
        rows.push(row);
    }
    print!("{}", table(&args, &rows));
    Ok(())
}

/// Starts `runner sim` with fixed timing on a free port through the same supervision as any engine
/// ([`crate::server`]: own process group, log file, readiness, teardown) and waits until it is ready.
/// Stopping it (SIGTERM) makes it flush its timing log.
async fn start_engine(
    args: &BenchArgs,
    log: &Path,
    dir: &Path,
    concurrency: u32,
) -> anyhow::Result<RunningServer> {
    let port = server::pick_free_port().context("finding a free port")?;
    let exe = std::env::current_exe().context("finding the runner binary")?;
    let mut argv: Vec<String> = vec![exe.to_string_lossy().into_owned(), "sim".into()];
    let port_text = port.to_string();
    let ttft = args.ttft_ms.to_string();
    let itl = args.itl_ms.to_string();
    let max_len = (args.input_tokens + args.output_tokens + 16).to_string();
    let log_text = log.to_string_lossy();
    for word in [
        "--port",
        &port_text,
        "--startup-delay",
        "0",
        "--fixed-timing",
        "--ttft-ms",
        &ttft,
        "--itl-ms",
        &itl,
        "--eos-probability",
        "0",
        "--max-model-len",
        &max_len,
        "--timing-log",
        &log_text,
    ] {
        argv.push(word.to_string());
    }
    let spec = ServerSpec {
        id: format!("bench-client-c{concurrency}"),
        argv,
        shell: false,
        env: Vec::new(),
        workdir: None,
        port,
        base_url: format!("http://127.0.0.1:{port}"),
        ready_path: "/health".into(),
        ready_timeout: Duration::from_secs(60),
        smoke: None,
        stop_grace: Duration::from_secs(10),
        log_path: dir.join(format!("engine-c{concurrency}.log")),
        gpu_release_timeout: Duration::ZERO,
        secrets: Default::default(),
    };
    let mut engine = server::start(&spec, &dir.join("engine.pid"))
        .await
        .context("starting the simulated engine")?;
    if let Err(e) = engine.wait_ready(&CancellationToken::new()).await {
        engine.stop().await;
        bail!("the simulated engine did not get ready: {e}");
    }
    Ok(engine)
}

async fn level(
    client: &LoadClient,
    args: &BenchArgs,
    concurrency: u32,
    dir: &Path,
) -> anyhow::Result<Row> {
    let log = dir.join(format!("timing-c{concurrency}.jsonl"));
    let engine = start_engine(args, &log, dir, concurrency).await?;
    let url = engine.spec().base_url.clone();
    let spec = LoadSpec {
        concurrency,
        requests: (args.rounds * concurrency).max(10),
        warmup: concurrency,
        max_inflight: None,
        request_rate: None,
        prompt: PromptMode::Unique,
        input_tokens: args.input_tokens,
        output_tokens: args.output_tokens,
        timeout: Duration::from_secs(300),
        seed: 0,
        api: Api::Completions,
        slo: Slo::default(),
        vocab: Vocab {
            tokenizer: None,
            id_range: [100, 150_000],
        },
        save_prompts: false,
        repeats: 1,
        repeat: 1,
    };
    let target = Target {
        base_url: url,
        model: "sim".into(),
        dialect: Preset::Sim.defaults().dialect,
        metrics_url: None,
        cache_counters: CacheCounters::Vllm,
        api_key: None,
    };
    let out = run_point(
        client,
        &target,
        &spec,
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await;
    // SIGTERM makes the engine flush its timing log; stop it before looking at the outcome.
    engine.stop().await;
    let out = out.map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.keep.is_some() {
        let mut lines = Vec::new();
        for r in &out.records {
            serde_json::to_writer(&mut lines, r)?;
            lines.push(b'\n');
        }
        std::fs::write(dir.join(format!("requests-c{concurrency}.jsonl")), lines)?;
    }
    let timing = read_log(&log)?;
    Ok(row(
        args,
        concurrency,
        &out,
        &timing,
        u64::from(spec.warmup),
    ))
}

fn row(
    args: &BenchArgs,
    concurrency: u32,
    out: &PointOutcome,
    timing: &[TimingRecord],
    warmup: u64,
) -> Row {
    let s = &out.summary;
    // A statistic without samples is NaN here: it prints as `NaN` in the table, never as a measured 0.
    let stat = |d: &Option<Dist>, f: fn(&Dist) -> f64| d.as_ref().map_or(f64::NAN, f);
    let ttft_err = Dist::of(s_values(out, |r| r.ttft_ms).map(|t| t - args.ttft_ms));
    let tpot_err = Dist::of(s_values(out, |r| r.tpot_ms()).map(|t| t - args.itl_ms));
    // Warm-up requests reach the engine first (the measured phase starts after they all end).
    let measured: Vec<&TimingRecord> = timing
        .iter()
        .filter(|t| t.request >= warmup && !t.sent_us.is_empty())
        .collect();
    let engine_late = Dist::of(
        measured
            .iter()
            .map(|t| t.sent_us[0].saturating_sub(t.scheduled_us[0]) as f64 / 1000.0),
    );
    // Client times on the monotonic clock the engine's log uses, in ms.
    let base = crate::sim::timing::MonoClock::now().ns(out.t0) as f64 / 1e6;
    let ok: Vec<&super::RequestRecord> =
        out.records.iter().filter(|r| !r.warmup && r.ok()).collect();
    let mean =
        |v: &mut dyn Iterator<Item = f64>| stat(&Dist::of(v.collect::<Vec<_>>()), |d| d.mean);
    let arrival = |t: &TimingRecord| t.arrival_mono_ns as f64 / 1e6;
    let send_to_engine_mean = mean(&mut measured.iter().map(|t| arrival(t)))
        - mean(&mut ok.iter().map(|r| base + r.sent_ms));
    let first_chunk_delivery_mean = mean(&mut ok.iter().map(|r| base + r.chunk_ms[0]))
        - mean(
            &mut measured
                .iter()
                .map(|t| arrival(t) + t.sent_us[0] as f64 / 1000.0),
        );
    let chunk_delivery_mean =
        mean(&mut ok.iter().flat_map(|r| r.chunk_ms.iter().map(|c| base + c)))
            - mean(
                &mut measured
                    .iter()
                    .flat_map(|t| t.sent_us.iter().map(|s| arrival(t) + *s as f64 / 1000.0)),
            );
    let tokens: u64 = out
        .records
        .iter()
        .filter_map(|r| r.completion_tokens)
        .map(u64::from)
        .sum();
    Row {
        concurrency,
        requests: s.requests,
        succeeded: s.succeeded,
        ttft_err_mean: stat(&ttft_err, |d| d.mean),
        ttft_err_p99: stat(&ttft_err, |d| d.p99),
        tpot_err_mean: stat(&tpot_err, |d| d.mean),
        tpot_err_p99: stat(&tpot_err, |d| d.p99),
        engine_late_mean: stat(&engine_late, |d| d.mean),
        engine_late_p99: stat(&engine_late, |d| d.p99),
        send_to_engine_mean,
        first_chunk_delivery_mean,
        chunk_delivery_mean,
        lag_p99: s.client.lag_ms_p99.unwrap_or(f64::NAN),
        peak_inflight: s.client.peak_inflight,
        cpu_ms_per_1k_tokens: if tokens > 0 {
            s.client.cpu_s * 1000.0 / (tokens as f64 / 1000.0)
        } else {
            f64::NAN
        },
        saturated: s.client.saturated,
    }
}

/// A per-request value over the successful measured requests.
fn s_values<'a>(
    out: &'a PointOutcome,
    f: impl Fn(&super::RequestRecord) -> Option<f64> + 'a,
) -> impl Iterator<Item = f64> + 'a {
    out.records
        .iter()
        .filter(|r| !r.warmup && r.ok())
        .filter_map(f)
}

/// The result as a Markdown table, with the setting it was measured in.
pub fn table(args: &BenchArgs, rows: &[Row]) -> String {
    let mut t = format!(
        "{} → {} tokens, true TTFT {} ms, true TPOT {} ms; errors = measured − true, ms\n\n",
        args.input_tokens, args.output_tokens, args.ttft_ms, args.itl_ms
    );
    t.push_str(
        "| concurrency | ok/requests | peak in flight | TTFT err mean | TTFT err p99 | = send→engine | + engine late | + first chunk→client | engine late p99 | chunk→client mean | TPOT err mean | TPOT err p99 | client lag p99 | CPU ms / 1k tokens | saturated |\n",
    );
    t.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n");
    for r in rows {
        t.push_str(&format!(
            "| {} | {}/{} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {:.2} | {:.2} | {} |\n",
            r.concurrency,
            r.succeeded,
            r.requests,
            r.peak_inflight,
            r.ttft_err_mean,
            r.ttft_err_p99,
            r.send_to_engine_mean,
            r.engine_late_mean,
            r.first_chunk_delivery_mean,
            r.engine_late_p99,
            r.chunk_delivery_mean,
            r.tpot_err_mean,
            r.tpot_err_p99,
            r.lag_p99,
            r.cpu_ms_per_1k_tokens,
            if r.saturated { "yes" } else { "no" },
        ));
    }
    t
}
