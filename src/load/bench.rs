//! The client benchmark (`runner bench-client`, hidden): measures exactly what users run. For each
//! concurrency it writes an experiment file whose engine is `runner sim` in fixed-timing mode (every
//! first token due a known time after the request arrived, every next one a known time later, with a
//! timing log of when each chunk was really handed out), runs `runner run` on it as a child process, and
//! compares the stored cell (`result.json`, `requests.jsonl`) with the truth and with the engine's log.
//!
//! So the benchmark covers the same warm-up, connection handling, scheduler, records and store as a
//! campaign; the engine is a separate process (its CPU is not the client's), and the client's CPU time
//! is the one the cell itself records for its measured phase.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::sim::{TimingRecord, read_log};
use crate::stats::{Dist, RequestRecord};
use crate::store::{REQUESTS_FILE, Store, id_path};

/// Knobs of the client benchmark; the defaults are the issue's setting.
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
    /// Measured requests per stream (at least 10 requests in all).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Warm-up requests (the `warmup` load setting; users' default is 1).
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Measure with `connections = "cold"` (connects inside the measured phase).
    #[arg(long)]
    pub cold: bool,
    /// Keep the experiment files, results and timing logs in this directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub concurrency: u32,
    pub requests: u64,
    pub succeeded: u64,
    pub peak_inflight: u32,
    /// Measured requests that opened a connection.
    pub new_connections: Option<u64>,
    /// Connections opened before the measured phase, and how long that took (ms).
    pub connections_warm: Option<u32>,
    pub connect_ms: Option<f64>,
    /// Measured TTFT − true TTFT, ms (mean, p99).
    pub ttft_err_mean: f64,
    pub ttft_err_p99: f64,
    /// Measured TPOT − true TPOT, ms (mean, p99).
    pub tpot_err_mean: f64,
    pub tpot_err_p99: f64,
    /// How late the engine handed out first chunks (its own share of the error), ms (mean, p99).
    pub engine_late_mean: f64,
    pub engine_late_p99: f64,
    /// The mean TTFT error split into its legs, ms: client send → engine has read the request head;
    /// engine hands out the first chunk → client has read it (means over the same requests, so no
    /// request matching is needed; both clocks are the machine's monotonic clock).
    pub send_to_engine_mean: f64,
    pub first_chunk_delivery_mean: f64,
    /// Engine hands out a chunk → client has read it, mean over every chunk, ms.
    pub chunk_delivery_mean: f64,
    /// The client's self-check, ms: read lag p99 and runtime lag p99.
    pub read_lag_p99: Option<f64>,
    pub lag_p99: Option<f64>,
    pub cpu_ms_per_1k_tokens: f64,
    pub saturated: bool,
}

pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?
        }
        None => scratch.path().to_path_buf(),
    };
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        crate::progress::say(format!("bench-client: concurrency {c}"));
        rows.push(level(&args, c, &dir.join(format!("c{c}")))?);
    }
    print!("{}", table(&args, &rows));
    Ok(())
}

/// TOML's quoting of a string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The experiment file of one concurrency: one server (`runner sim`, fixed timing, timing log) and one
/// load point, with the users' defaults except for the benchmark's knobs.
fn experiment(args: &BenchArgs, concurrency: u32, dir: &Path, timing_log: &Path) -> String {
    let command = format!(
        "{{{{ runner }}}} sim --port {{{{ port }}}} --max-model-len {{{{ max_model_len }}}} \
         --startup-delay 0 --fixed-timing --ttft-ms {} --itl-ms {} --eos-probability 0 --timing-log '{}'",
        args.ttft_ms,
        args.itl_ms,
        timing_log.display()
    );
    format!(
        r#"title = "bench-client c={concurrency}"
results_dir = {results}

[engines.sim]
preset = "sim"
command = {command}
stop_grace = "10s"

[models.bench]
input_tokens = {input}
output_tokens = {output}
token_id_range = [100, 150000]
[models.bench.precisions]
fixed = {{ path = "sim" }}

[matrix]
model = "bench"
precision = "fixed"
engine = "sim"
concurrency = [{concurrency}]

[load]
requests = {requests}
warmup = {warmup}
timeout = "5m"
connections = "{connections}"
"#,
        results = quoted(&dir.join("results").to_string_lossy()),
        command = quoted(&command),
        input = args.input_tokens,
        output = args.output_tokens,
        requests = (args.rounds * concurrency).max(10),
        warmup = args.warmup,
        connections = if args.cold { "cold" } else { "warm" },
    )
}

/// Runs `runner run` on the experiment file of one concurrency and compares what it stored with the
/// engine's timing log.
fn level(args: &BenchArgs, concurrency: u32, dir: &Path) -> anyhow::Result<Row> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("timing.jsonl");
    let file = dir.join("experiment.toml");
    std::fs::write(&file, experiment(args, concurrency, dir, &log))
        .with_context(|| format!("writing {}", file.display()))?;
    let exe = std::env::current_exe().context("finding the runner binary")?;
    let output = dir.join("runner.log");
    let stderr =
        std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
    let status = std::process::Command::new(exe)
        .arg("run")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .status()
        .context("running `runner run`")?;
    if !status.success() {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        bail!("`runner run {}` failed ({status}):\n{text}", file.display());
    }
    let store = Store::new(dir.join("results"));
    let cells = store.read_cells().context("reading the stored result")?;
    let [cell] = &cells.cells[..] else {
        bail!("expected one stored cell, found {}", cells.cells.len());
    };
    let records = read_records(
        &store
            .root
            .join("cells")
            .join(id_path(&cell.id))
            .join(REQUESTS_FILE),
    )?;
    let timing = read_log(&log)?;
    Ok(row(args, concurrency, &cell.summary, &records, &timing))
}

/// The measured records of a stored `requests.jsonl`, read line by line.
fn read_records(path: &Path) -> anyhow::Result<Vec<RequestRecord>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let record: RequestRecord = serde_json::from_str(&line)
            .with_context(|| format!("{}: bad record", path.display()))?;
        if !record.warmup {
            out.push(record);
        }
    }
    Ok(out)
}

fn row(
    args: &BenchArgs,
    concurrency: u32,
    s: &crate::stats::Summary,
    records: &[RequestRecord],
    timing: &[TimingRecord],
) -> Row {
    // A statistic without samples is NaN here: it prints as `NaN` in the table, never as a measured 0.
    let stat = |d: &Option<Dist>, f: fn(&Dist) -> f64| d.as_ref().map_or(f64::NAN, f);
    let mean = |v: Vec<f64>| stat(&Dist::of(v), |d| d.mean);
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let ttft_err = Dist::of(
        ok.iter()
            .filter_map(|r| r.ttft_ms)
            .map(|t| t - args.ttft_ms),
    );
    let tpot_err = Dist::of(
        ok.iter()
            .filter_map(|r| r.tpot_ms())
            .map(|t| t - args.itl_ms),
    );
    // Client times on the monotonic clock the engine's log uses, in ms.
    let base = s.client.t0_mono_ns.map_or(f64::NAN, |ns| ns as f64 / 1e6);
    // The engine's records of the measured phase: everything that arrived after its first send (the
    // smoke and warm-up requests had all ended by then).
    let first_send = records
        .iter()
        .map(|r| r.sent_ms)
        .fold(f64::INFINITY, f64::min);
    let arrival = |t: &TimingRecord| t.arrival_mono_ns as f64 / 1e6;
    let measured: Vec<&TimingRecord> = timing
        .iter()
        .filter(|t| arrival(t) >= base + first_send && !t.sent_us.is_empty())
        .collect();
    let engine_late = Dist::of(
        measured
            .iter()
            .map(|t| t.sent_us[0].saturating_sub(t.scheduled_us[0]) as f64 / 1000.0),
    );
    let send_to_engine_mean = mean(measured.iter().map(|t| arrival(t)).collect())
        - mean(ok.iter().map(|r| base + r.sent_ms).collect());
    let first_chunk_delivery_mean = mean(ok.iter().map(|r| base + r.chunk_ms[0]).collect())
        - mean(
            measured
                .iter()
                .map(|t| arrival(t) + t.sent_us[0] as f64 / 1000.0)
                .collect(),
        );
    let chunk_delivery_mean = mean(
        ok.iter()
            .flat_map(|r| r.chunk_ms.iter().map(|c| base + c))
            .collect(),
    ) - mean(
        measured
            .iter()
            .flat_map(|t| t.sent_us.iter().map(|us| arrival(t) + *us as f64 / 1000.0))
            .collect(),
    );
    let tokens: u64 = records
        .iter()
        .filter_map(|r| r.completion_tokens)
        .map(u64::from)
        .sum();
    Row {
        concurrency,
        requests: s.requests,
        succeeded: s.succeeded,
        peak_inflight: s.client.peak_inflight,
        new_connections: s.new_connections,
        connections_warm: s.client.connections_warm,
        connect_ms: s.client.connect_ms,
        ttft_err_mean: stat(&ttft_err, |d| d.mean),
        ttft_err_p99: stat(&ttft_err, |d| d.p99),
        tpot_err_mean: stat(&tpot_err, |d| d.mean),
        tpot_err_p99: stat(&tpot_err, |d| d.p99),
        engine_late_mean: stat(&engine_late, |d| d.mean),
        engine_late_p99: stat(&engine_late, |d| d.p99),
        send_to_engine_mean,
        first_chunk_delivery_mean,
        chunk_delivery_mean,
        read_lag_p99: s.client.read_lag_ms_p99,
        lag_p99: s.client.lag_ms_p99,
        cpu_ms_per_1k_tokens: if tokens > 0 {
            s.client.cpu_s * 1000.0 / (tokens as f64 / 1000.0)
        } else {
            f64::NAN
        },
        saturated: s.client.saturated,
    }
}

/// The result as a Markdown table, with the setting it was measured in.
pub fn table(args: &BenchArgs, rows: &[Row]) -> String {
    let opt =
        |x: Option<f64>, decimals: usize| x.map_or("—".into(), |x| format!("{x:.decimals$}"));
    let mut t = format!(
        "`runner run`, {} → {} tokens, true TTFT {} ms, true TPOT {} ms, warmup {}, connections {}; \
         errors = measured − true, ms\n\n",
        args.input_tokens,
        args.output_tokens,
        args.ttft_ms,
        args.itl_ms,
        args.warmup,
        if args.cold { "cold" } else { "warm" }
    );
    t.push_str(
        "| concurrency | ok/requests | peak in flight | warm connections (ms) | new connections | TTFT err mean | TTFT err p99 | = send→engine | + engine late | + first chunk→client | engine late p99 | chunk→client mean | TPOT err mean | TPOT err p99 | read lag p99 | runtime lag p99 | CPU ms / 1k tokens | saturated |\n",
    );
    t.push_str(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n",
    );
    for r in rows {
        let warm = match (r.connections_warm, r.connect_ms) {
            (Some(n), Some(ms)) => format!("{n} ({ms:.0})"),
            _ => "—".into(),
        };
        t.push_str(&format!(
            "| {} | {}/{} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {} | {} | {:.2} | {} |\n",
            r.concurrency,
            r.succeeded,
            r.requests,
            r.peak_inflight,
            warm,
            r.new_connections.map_or("—".into(), |n| n.to_string()),
            r.ttft_err_mean,
            r.ttft_err_p99,
            r.send_to_engine_mean,
            r.engine_late_mean,
            r.first_chunk_delivery_mean,
            r.engine_late_p99,
            r.chunk_delivery_mean,
            r.tpot_err_mean,
            r.tpot_err_p99,
            opt(r.read_lag_p99, 2),
            opt(r.lag_p99, 2),
            r.cpu_ms_per_1k_tokens,
            if r.saturated { "yes" } else { "no" },
        ));
    }
    t
}
