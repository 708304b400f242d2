//! The client benchmark (`runner bench-client`, hidden): measures exactly what users run. For each
//! concurrency it writes an experiment file whose engine is `runner sim` in fixed-timing mode (every
//! first token due a known time after the request arrived, every next one a known time later, with a
//! timing log of when each chunk was really handed out), runs `runner run` on it as a child process, and
//! compares the stored cell (`result.json`, `requests.jsonl`) with the truth and, request by request,
//! with the engine's log (matched by the prompt's first token, unique per request; the prompts are
//! regenerated from the experiment file exactly as the run made them).
//!
//! So the benchmark covers the same warm-up, connection handling, scheduler, records and store as a
//! campaign; the engine is a separate process (its CPU is not the client's), and the client's CPU time
//! is the one the cell itself records for its measured phase.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::prompt::PromptSource;
use super::prompt_salt;
use crate::sim::{TimingRecord, read_log};
use crate::stats::{Dist, RequestRecord};
use crate::store::{REQUESTS_FILE, Store};

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

/// One row of the result table. Errors are measured − true, ms; "true" is the nominal timing (TTFT and
/// TPOT the engine was told to keep), and the legs say where each request's error arose, from the
/// engine's timing log matched to the request by its prompt.
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
    pub ttft_err: Option<Dist>,
    /// The TTFT error's legs per request: client send → the engine read the request head; how late the
    /// engine handed out the first chunk; engine hand-over → the client read it (the client's own
    /// share on the way back).
    pub send_to_engine: Option<Dist>,
    pub engine_late: Option<Dist>,
    pub first_chunk_to_client: Option<Dist>,
    pub tpot_err: Option<Dist>,
    /// Client TPOT − the TPOT of the engine's actual hand-over times: the client's own share.
    pub tpot_client_err: Option<Dist>,
    /// Successful measured requests whose engine record was found.
    pub matched: usize,
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
    let records = read_records(&store.cell_dir_of(&cell.id).join(REQUESTS_FILE))?;
    let timing = read_log(&log)?;
    let firsts = first_prompt_tokens(&file, &records)?;
    Ok(row(
        args,
        concurrency,
        &cell.summary,
        &records,
        &firsts,
        &timing,
    ))
}

/// The first prompt token of each record (by index), regenerated from the experiment file exactly as the
/// run generated the prompts: with unique prompts it tells the requests apart in the engine's log.
fn first_prompt_tokens(
    file: &Path,
    records: &[RequestRecord],
) -> anyhow::Result<HashMap<u32, u32>> {
    let exp = crate::experiment::load(file).map_err(|d| anyhow::anyhow!("{d}"))?;
    let plan = crate::plan::expand(&exp).map_err(|d| anyhow::anyhow!("{d}"))?;
    let spec = &plan
        .servers
        .first()
        .and_then(|s| s.points.first())
        .context("the benchmark's plan has no load point")?
        .load;
    let prompts = PromptSource::new(spec, prompt_salt(spec), false)?;
    Ok(records
        .iter()
        .filter_map(|r| Some((r.index, *prompts.ids(r.index).first()?)))
        .collect())
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
    first_tokens: &HashMap<u32, u32>,
    timing: &[TimingRecord],
) -> Row {
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
    let by_token: HashMap<u32, &TimingRecord> = timing
        .iter()
        .filter(|t| !t.sent_us.is_empty())
        .filter_map(|t| Some((t.first_prompt_token?, t)))
        .collect();
    let pairs: Vec<(&RequestRecord, &TimingRecord)> = ok
        .iter()
        .filter_map(|r| Some((*r, *by_token.get(first_tokens.get(&r.index)?)?)))
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    let arrival = |t: &TimingRecord| t.arrival_mono_ns as f64 / 1e6;
    let leg = |f: &dyn Fn(&RequestRecord, &TimingRecord) -> Option<f64>| {
        Dist::of(pairs.iter().filter_map(|(r, t)| f(r, t)))
    };
    let send_to_engine = leg(&|r, t| Some(arrival(t) - (base + r.sent_ms)));
    let engine_late = leg(&|_, t| Some(ms(t.sent_us[0]) - ms(t.scheduled_us[0])));
    let first_chunk_to_client =
        leg(&|r, t| Some(base + r.chunk_ms.first()? - (arrival(t) + ms(t.sent_us[0]))));
    let tpot_client_err = leg(&|r, t| {
        let n = f64::from(r.completion_tokens?.checked_sub(1).filter(|n| *n > 0)?);
        let engine = (ms(*t.sent_us.last()?) - ms(t.sent_us[0])) / n;
        Some(r.tpot_ms()? - engine)
    });
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
        ttft_err,
        send_to_engine,
        engine_late,
        first_chunk_to_client,
        tpot_err,
        tpot_client_err,
        matched: pairs.len(),
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

/// The result as a Markdown table, with the setting it was measured in. A figure without samples is `—`.
pub fn table(args: &BenchArgs, rows: &[Row]) -> String {
    let opt =
        |x: Option<f64>, decimals: usize| x.map_or("—".into(), |x| format!("{x:.decimals$}"));
    let mean = |d: &Option<Dist>, decimals: usize| opt(d.as_ref().map(|d| d.mean), decimals);
    let p99 = |d: &Option<Dist>, decimals: usize| opt(d.as_ref().map(|d| d.p99), decimals);
    let mut t = format!(
        "`runner run`, {} → {} tokens, true TTFT {} ms, true TPOT {} ms, warmup {}, connections {}; \
         errors = measured − true, ms (legs: means per request, matched with the engine's timing log)\n\n",
        args.input_tokens,
        args.output_tokens,
        args.ttft_ms,
        args.itl_ms,
        args.warmup,
        if args.cold { "cold" } else { "warm" }
    );
    t.push_str(
        "| concurrency | ok/requests | peak in flight | warm connections (ms) | new connections | TTFT err mean | TTFT err p99 | = send→engine | + engine late | + first chunk→client | first chunk→client p99 | TPOT err mean | TPOT err p99 | client's TPOT err mean / p99 | read lag p99 | runtime lag p99 | CPU ms / 1k tokens | saturated |\n",
    );
    t.push_str(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n",
    );
    for r in rows {
        let warm = match (r.connections_warm, r.connect_ms) {
            (Some(n), Some(ms)) => format!("{n} ({ms:.0})"),
            _ => "—".into(),
        };
        let matched = if r.matched == r.succeeded as usize {
            String::new()
        } else {
            format!(" ({} matched)", r.matched)
        };
        t.push_str(&format!(
            "| {} | {}/{}{matched} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.2} | {} |\n",
            r.concurrency,
            r.succeeded,
            r.requests,
            r.peak_inflight,
            warm,
            r.new_connections.map_or("—".into(), |n| n.to_string()),
            mean(&r.ttft_err, 2),
            p99(&r.ttft_err, 2),
            mean(&r.send_to_engine, 2),
            mean(&r.engine_late, 2),
            mean(&r.first_chunk_to_client, 2),
            p99(&r.first_chunk_to_client, 2),
            mean(&r.tpot_err, 3),
            p99(&r.tpot_err, 3),
            mean(&r.tpot_client_err, 3),
            p99(&r.tpot_client_err, 3),
            opt(r.read_lag_p99, 2),
            opt(r.lag_p99, 2),
            r.cpu_ms_per_1k_tokens,
            if r.saturated { "yes" } else { "no" },
        ));
    }
    t
}
