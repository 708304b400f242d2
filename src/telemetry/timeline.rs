//! The server's timeline during a load point: its `/metrics` scraped every second (running and waiting
//! requests, KV-cache usage, preemptions; see [`crate::scrape::Gauges`]), and the summary the report uses
//! to explain latency: the peaks inside the window and the preemptions during it.
//!
//! Sampling runs as a task beside the load (one small request a second); a failed scrape is a sample with
//! its error, not the end of the timeline.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::scrape::{self, Gauges};
use crate::secret::ApiKey;

/// How often the server's metrics are scraped.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Where the server's metrics are.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    pub http: reqwest::Client,
    pub url: String,
    pub api_key: Option<ApiKey>,
}

/// One scrape: a line of `server_metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSample {
    /// On the load point's clock (the one `requests.jsonl` uses), ms.
    pub t_ms: f64,
    #[serde(flatten)]
    pub gauges: Gauges,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The timeline's summary over the window, stored in `result.json`. CONTRACT: read by the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerTimeline {
    pub interval_s: f64,
    /// Successful scrapes inside the window.
    pub samples: u32,
    /// Failed scrapes inside the window.
    pub errors: u32,
    pub peak_running: Option<f64>,
    pub peak_waiting: Option<f64>,
    /// KV-cache usage, 0..1.
    pub peak_kv_usage: Option<f64>,
    pub mean_kv_usage: Option<f64>,
    /// Preemptions during the window (the counter's increase from the last scrape before the window to
    /// the first after it); `None` where the server exposes no such counter.
    pub preemptions: Option<f64>,
}

/// The running sampler.
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(Instant, ServerSample)>>,
}

impl Sampler {
    /// Starts scraping now and every [`INTERVAL`] (on the current tokio runtime).
    pub fn start(endpoint: MetricsEndpoint) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = token.cancelled() => break,
                }
                out.push(scrape_once(&endpoint).await);
            }
            // One more after the window, so that a counter's increase is bracketed.
            out.push(scrape_once(&endpoint).await);
            out
        });
        Sampler { stop, task }
    }

    /// Stops and returns every scrape with its instant.
    pub async fn finish(self) -> Vec<(Instant, ServerSample)> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn scrape_once(endpoint: &MetricsEndpoint) -> (Instant, ServerSample) {
    let at = Instant::now();
    let sample =
        match scrape::scrape(&endpoint.http, &endpoint.url, endpoint.api_key.as_ref()).await {
            Ok(samples) => ServerSample {
                gauges: Gauges::read(&samples),
                ..ServerSample::default()
            },
            Err(e) => ServerSample {
                error: Some(format!("{e:#}")),
                ..ServerSample::default()
            },
        };
    (at, sample)
}

/// The summary over `[a_ms, b_ms]` of samples on the same clock.
pub fn summarize(samples: &[ServerSample], (a_ms, b_ms): (f64, f64)) -> ServerTimeline {
    let inside: Vec<&ServerSample> = samples
        .iter()
        .filter(|s| (a_ms..=b_ms).contains(&s.t_ms))
        .collect();
    let ok: Vec<&Gauges> = inside
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| &s.gauges)
        .collect();
    let peak = |f: fn(&Gauges) -> Option<f64>| ok.iter().filter_map(|g| f(g)).reduce(f64::max);
    let kv: Vec<f64> = ok.iter().filter_map(|g| g.kv_usage).collect();
    // The counter just before the window and just after it.
    let counted = |s: &&ServerSample| s.error.is_none() && s.gauges.preemptions.is_some();
    let before = samples
        .iter()
        .filter(counted)
        .rfind(|s| s.t_ms <= a_ms)
        .or_else(|| samples.iter().find(counted));
    let after = samples
        .iter()
        .filter(counted)
        .find(|s| s.t_ms >= b_ms)
        .or_else(|| samples.iter().rfind(counted));
    let preemptions = before
        .and_then(|x| x.gauges.preemptions)
        .zip(after.and_then(|y| y.gauges.preemptions))
        .map(|(x, y)| (y - x).max(0.0));
    ServerTimeline {
        interval_s: INTERVAL.as_secs_f64(),
        samples: ok.len() as u32,
        errors: (inside.len() - ok.len()) as u32,
        peak_running: peak(|g| g.running),
        peak_waiting: peak(|g| g.waiting),
        peak_kv_usage: peak(|g| g.kv_usage),
        mean_kv_usage: (!kv.is_empty()).then(|| kv.iter().sum::<f64>() / kv.len() as f64),
        preemptions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_ms: f64, waiting: Option<f64>, kv: Option<f64>, pre: Option<f64>) -> ServerSample {
        ServerSample {
            t_ms,
            gauges: Gauges {
                running: Some(8.0),
                waiting,
                kv_usage: kv,
                preemptions: pre,
            },
            error: None,
        }
    }

    #[test]
    fn peaks_inside_the_window_and_preemptions_across_it() {
        let samples = [
            at(-500.0, Some(0.0), Some(0.0), Some(3.0)),
            at(500.0, Some(40.0), Some(0.5), Some(3.0)),
            at(1500.0, Some(143.0), Some(1.0), Some(7.0)),
            ServerSample {
                t_ms: 2500.0,
                error: Some("scraping: timeout".into()),
                ..ServerSample::default()
            },
            at(3500.0, Some(0.0), Some(0.0), Some(9.0)),
        ];
        let t = summarize(&samples, (0.0, 3000.0));
        assert_eq!(t.samples, 2);
        assert_eq!(t.errors, 1);
        assert_eq!(t.peak_waiting, Some(143.0));
        assert_eq!(t.peak_kv_usage, Some(1.0));
        assert_eq!(t.mean_kv_usage, Some(0.75));
        assert_eq!(t.preemptions, Some(6.0), "9 after the window − 3 before it");
    }

    #[test]
    fn gauges_a_server_lacks_stay_missing() {
        let t = summarize(&[at(100.0, None, None, None)], (0.0, 1000.0));
        assert_eq!(t.peak_running, Some(8.0));
        assert_eq!(
            (t.peak_waiting, t.peak_kv_usage, t.preemptions),
            (None, None, None)
        );
        let empty = summarize(&[], (0.0, 1000.0));
        assert_eq!((empty.samples, empty.peak_running), (0, None));
    }
}
