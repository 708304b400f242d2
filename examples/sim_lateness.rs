//! How late does the simulated engine send its tokens when 1000 streams are open at once?
//!
//! Starts the fixed-timing simulator in-process on its own multi-threaded runtime (as `runner sim` has),
//! opens N concurrent streaming completions from a client on a second runtime, and prints the simulator's
//! send lateness (actual hand-over to the HTTP layer minus the scheduled instant) from its timing log,
//! plus the client's own TTFT error (measured TTFT minus the true one) for comparison.
//!
//! ```text
//! cargo run --release --example sim_lateness -- --streams 1000
//! ```
//!
//! With `--url`, it drives an engine started separately instead, e.g. `runner sim --port 8000
//! --startup-delay 0 --fixed-timing --ttft-ms 50 --itl-ms 10 --timing-log /tmp/t.jsonl`, and reads that
//! engine's `--timing-log` (give the same path, truncated before each run).

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use runner::sim::{SimConfig, SimHandle, read_log};
use runner::stats::percentile;

#[derive(Parser)]
struct Opts {
    /// Concurrent streams, all opened at once.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 1000)]
    prompt_tokens: u32,
    #[arg(long, default_value_t = 200)]
    output_tokens: usize,
    #[arg(long, default_value_t = 50)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 10)]
    itl_ms: u64,
    /// Worker threads of the simulator's runtime (default: one per core, as `runner sim`).
    #[arg(long)]
    sim_threads: Option<usize>,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Drive this engine (e.g. `http://127.0.0.1:8000`) instead of one started in-process.
    #[arg(long, requires = "timing_log")]
    url: Option<String>,
    /// The external engine's timing log.
    #[arg(long)]
    timing_log: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    runner::limits::raise_open_files_limit(); // two thousand sockets in one process
    let dir = tempfile::tempdir()?;
    let log = o
        .timing_log
        .clone()
        .unwrap_or_else(|| dir.path().join("timing.jsonl"));
    let mut sim_rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = o.sim_threads {
        sim_rt.worker_threads(n);
    }
    let sim_rt = sim_rt.enable_all().build()?;
    let sim = match &o.url {
        Some(_) => None,
        None => {
            let config = SimConfig {
                startup_delay: Duration::ZERO,
                timing_log: Some(log.clone()),
                ..SimConfig::fixed(
                    Duration::from_millis(o.ttft_ms),
                    Duration::from_millis(o.itl_ms),
                )
            };
            Some(sim_rt.block_on(SimHandle::start(config))?)
        }
    };
    let base = o
        .url
        .clone()
        .or(sim.as_ref().map(SimHandle::url))
        .unwrap_or_default();
    let url = format!("{base}/v1/completions");

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let cpu_before = CpuTimes::now();
    let client_ttft: Vec<Result<Duration, String>> = client_rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(o.streams)
            .build()?;
        let prompt: Vec<u32> = (0..o.prompt_tokens).collect();
        let tasks: Vec<_> = (0..o.streams)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                // Unique prompts, as a benchmark would send.
                let mut prompt = prompt.clone();
                prompt[0] = i as u32;
                let body = serde_json::json!({
                    "prompt": prompt, "max_tokens": o.output_tokens, "min_tokens": o.output_tokens,
                    "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true},
                });
                tokio::spawn(async move { one_stream(&client, &url, &body).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await?);
        }
        anyhow::Ok(out)
    })?;
    let wall = started.elapsed();
    let cpu = CpuTimes::now().since(&cpu_before);
    match sim {
        Some(sim) => sim_rt.block_on(sim.stop())?,
        // The external engine writes its log when it catches up; give it a moment.
        None => std::thread::sleep(Duration::from_millis(500)),
    }

    let records = read_log(&log)?;
    let failed = client_ttft.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = client_ttft.iter().find(|r| r.is_err()) {
        eprintln!("first client error: {e}");
    }
    let mut all: Vec<f64> = records
        .iter()
        .flat_map(|r| r.lateness_us())
        .map(|u| u as f64 / 1000.0)
        .collect();
    let mut first: Vec<f64> = records
        .iter()
        .filter_map(|r| r.lateness_us().next())
        .map(|u| u as f64 / 1000.0)
        .collect();
    let true_ttft = o.ttft_ms as f64;
    let mut client_err: Vec<f64> = client_ttft
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0 - true_ttft)
        .collect();
    for v in [&mut all, &mut first, &mut client_err] {
        v.sort_by(f64::total_cmp);
    }
    // Peak overlap of the streams, from the log: +1 at arrival, -1 at the last chunk.
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for r in &records {
        let end = r.arrival_mono_ns + r.sent_us.last().copied().unwrap_or(0) * 1000;
        edges.extend([(r.arrival_mono_ns, 1), (end, -1)]);
    }
    edges.sort();
    let peak = edges.iter().scan(0, |n, (_, d)| {
        *n += d;
        Some(*n)
    });
    let peak = peak.max().unwrap_or(0);

    println!(
        "streams {} (failed {failed}), prompt {} tokens, {} tokens at {} ms after a {} ms TTFT; wall {:.2} s",
        o.streams,
        o.prompt_tokens,
        o.output_tokens,
        o.itl_ms,
        o.ttft_ms,
        wall.as_secs_f64()
    );
    println!("peak concurrent streams (timing log): {peak}");
    if let Some((own, others)) = cpu {
        // A shared machine inflates lateness: say how much CPU other processes took meanwhile.
        println!(
            "CPU during the streams: this process {own:.2} s, other processes {others:.2} s ({:.0}% of the machine)",
            100.0 * others
                / (wall.as_secs_f64()
                    * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64)
        );
    }
    println!("| measured | count | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [
        ("sim send lateness, all chunks", &all),
        ("sim send lateness, first chunk", &first),
        ("client TTFT error (measured − true)", &client_err),
    ] {
        let ms = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |x| format!("{x:.2}"));
        println!(
            "| {name} | {} | {} | {} | {} |",
            v.len(),
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(v.last().copied())
        );
    }
    Ok(())
}

/// Sends one streaming request and reads it to the end; returns the time to the first body bytes.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut stream = resp.bytes_stream();
    let mut ttft = None;
    let mut tail = Vec::new(); // the last bytes, wherever the chunks were split
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        ttft.get_or_insert_with(|| t0.elapsed());
        tail.extend_from_slice(&chunk);
        tail.drain(..tail.len().saturating_sub(32));
    }
    if !String::from_utf8_lossy(&tail).ends_with("data: [DONE]\n\n") {
        return Err("the stream ended without [DONE]".into());
    }
    ttft.ok_or_else(|| "empty stream".into())
}

/// Busy CPU time of the whole machine and of this process, in seconds (Linux `/proc`; `None` elsewhere).
struct CpuTimes(Option<(f64, f64)>);

impl CpuTimes {
    fn now() -> Self {
        let read = || -> Option<(f64, f64)> {
            let tick = 100.0; // USER_HZ
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let cpu: Vec<f64> = stat
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
            let busy = cpu.iter().take(8).sum::<f64>() - cpu.get(3)? - cpu.get(4)?;
            let own = std::fs::read_to_string("/proc/self/stat").ok()?;
            let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
            let own = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((busy / tick, own / tick))
        };
        CpuTimes(read())
    }

    /// (this process, other processes) since `before`.
    fn since(&self, before: &CpuTimes) -> Option<(f64, f64)> {
        let ((busy1, own1), (busy0, own0)) = (self.0?, before.0?);
        let own = own1 - own0;
        Some((own, (busy1 - busy0 - own).max(0.0)))
    }
}
