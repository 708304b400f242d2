//! What the GPUs and the server did during a load point: GPU samples (power, energy, utilization,
//! memory, SM clock, temperature, throttle reasons) and the server's metrics timeline (running and waiting
//! requests, KV-cache usage, preemptions), each sampled beside the load and summarized over its measured
//! phase.
//!
//! - [`source`]: where GPU samples come from (NVML, else `nvidia-smi`; a trait, so tests use fakes).
//! - [`gpuset`]: which GPUs a server holds.
//! - [`summary`]: GPU samples → the window's figures (energy, means, peaks, gaps).
//! - [`timeline`]: `/metrics` every second → peaks and preemptions.
//!
//! A [`Window`] is started just before a load point and finished just after it. The GPU sampler runs on a
//! thread of its own (NVML calls and pipe reads block; the load's runtime never waits for them) and the
//! timeline on a task; neither can fail the point. The summaries cover the measured phase only (first
//! measured request sent to last byte received, the interval the throughputs use), so energy per token
//! divides like for like.
//!
//! Invariants: no GPU telemetry means the fields are absent, with a note saying why, never zeros; every
//! sample keeps its time on the load point's clock (the one `requests.jsonl` uses), so the raw files
//! (`gpu.jsonl`, `server_metrics.jsonl`) line up with the requests.

pub mod gpuset;
mod nvml;
mod smi;
pub mod source;
pub mod summary;
pub mod timeline;

use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use gpuset::{GpuSet, GpusHeld};
pub use source::{Availability, DeviceInfo, GpuSource, SourceKind, availability};
pub use summary::{EnergyMethod, GpuFigures, GpuTelemetry};
pub use timeline::{MetricsEndpoint, ServerSample, ServerTimeline};

/// One GPU at one instant: a line of `gpu.jsonl`. A field the source could not read is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuSample {
    /// On the load point's clock (the one `requests.jsonl` uses), ms.
    pub t_ms: f64,
    /// The GPU's index (`nvidia-smi`'s and NVML's).
    pub gpu: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// NVML's energy counter, mJ since the driver loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub util_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_used_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_total_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// Throttle-reason bits (NVML's bitmask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<u64>,
    /// Why the GPU did not answer (lost, gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a load point's telemetry says, stored in `result.json` (`telemetry`). CONTRACT: read by the
/// report. Absent parts were not measured; the notes say why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Telemetry {
    /// The GPUs the server held (what a token's cost is charged for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpusHeld>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuTelemetry>,
    /// Why there is no GPU telemetry, or what went wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerTimeline>,
    /// Why there is no server timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_note: Option<String>,
}

/// What to watch during a load point.
#[derive(Debug, Clone)]
pub struct Subject {
    pub gpus: GpuSet,
    /// The server's metrics, if it has an endpoint.
    pub metrics: Option<MetricsEndpoint>,
}

/// Everything a finished window recorded: the summary for `result.json` and the raw samples.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub telemetry: Telemetry,
    pub gpu_samples: Vec<GpuSample>,
    pub server_samples: Vec<ServerSample>,
}

/// What the GPU sampling thread hands back.
struct GpuRun {
    kind: SourceKind,
    devices: Vec<DeviceInfo>,
    samples: Vec<(Instant, GpuSample)>,
    note: Option<String>,
}

/// Samples a source every [`source::INTERVAL`] until told to stop, then once more after the source's
/// settling time (so that the window's end is bracketed).
fn sample_until(mut source: Box<dyn GpuSource>, stop: mpsc::Receiver<()>) -> GpuRun {
    let mut samples = Vec::new();
    let mut note = None;
    loop {
        samples.extend(source.poll());
        if note.is_none() {
            note = source.ended();
        }
        match stop.recv_timeout(source::INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
    std::thread::sleep(source.settle());
    samples.extend(source.poll());
    GpuRun {
        kind: source.kind(),
        devices: source.devices(),
        samples,
        note: note.or_else(|| source.ended()),
    }
}

/// Telemetry around one load point. Start it just before the point, finish it just after.
pub struct Window {
    gpus: GpuSet,
    gpu: Result<(mpsc::Sender<()>, std::thread::JoinHandle<GpuRun>), String>,
    timeline: Option<timeline::Sampler>,
}

impl Window {
    /// Starts sampling (on the current tokio runtime and a thread of its own). Opening the GPU source
    /// happens on that thread too: loading NVML or asking `nvidia-smi` never delays the load.
    pub fn start(subject: &Subject) -> Window {
        Window::start_with(subject, source::open)
    }

    /// [`Window::start`] with another way to open the GPU source (tests pass a fake).
    pub fn start_with(
        subject: &Subject,
        open: impl FnOnce(&GpuSet) -> Result<Box<dyn GpuSource>, String> + Send + 'static,
    ) -> Window {
        let (tx, rx) = mpsc::channel();
        let set = subject.gpus.clone();
        let thread = std::thread::Builder::new()
            .name("gpu-telemetry".into())
            .spawn(move || match open(&set) {
                Ok(source) => sample_until(source, rx),
                Err(note) => GpuRun {
                    kind: SourceKind::Fake,
                    devices: Vec::new(),
                    samples: Vec::new(),
                    note: Some(note),
                },
            })
            .map_err(|e| format!("could not start the sampling thread: {e}"));
        Window {
            gpus: subject.gpus.clone(),
            gpu: thread.map(|t| (tx, t)),
            timeline: subject.metrics.clone().map(timeline::Sampler::start),
        }
    }

    /// Stops sampling and summarizes the measured phase of a load point: the instant its records' times
    /// count from, and the measured phase on that clock (ms; see `stats::Accumulator::span`). Nothing to
    /// summarize without a point (it failed or was interrupted) or without a measured request.
    pub async fn finish(self, point: Option<(Instant, Option<(f64, f64)>)>) -> Recorded {
        let gpu_run = match self.gpu {
            Ok((stop, thread)) => {
                let _ = stop.send(());
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|joined| joined.map_err(|_| "the sampling thread panicked".into()))
            }
            Err(e) => Err(e),
        };
        let server_run = match self.timeline {
            Some(sampler) => Some(sampler.finish().await),
            None => None,
        };
        let Some((t0, span)) = point else {
            return Recorded::default();
        };
        let on_clock = |at: Instant| match at.checked_duration_since(t0) {
            Some(d) => d.as_secs_f64() * 1000.0,
            None => -(t0.duration_since(at).as_secs_f64() * 1000.0),
        };
        let mut recorded = Recorded::default();
        let t = &mut recorded.telemetry;

        match gpu_run {
            Err(e) => t.gpu_note = Some(e),
            Ok(run) => {
                recorded.gpu_samples = run
                    .samples
                    .into_iter()
                    .map(|(at, s)| GpuSample {
                        t_ms: on_clock(at),
                        ..s
                    })
                    .collect();
                t.gpu_note = run.note;
                if !run.devices.is_empty() {
                    t.gpus = Some(GpusHeld {
                        count: run.devices.len() as u32,
                        ids: match &self.gpus.selection {
                            gpuset::Selection::Ids(ids) => ids.clone(),
                            _ => run.devices.iter().map(|d| d.index.to_string()).collect(),
                        },
                        from: self.gpus.origin().to_string(),
                    });
                    t.gpu = span.map(|span| {
                        summary::summarize(
                            run.kind,
                            source::INTERVAL.as_secs_f64() * 1000.0,
                            &run.devices,
                            &recorded.gpu_samples,
                            span,
                        )
                    });
                }
            }
        }
        // Without a source, the set is still known where the server's environment names it.
        if t.gpus.is_none()
            && let gpuset::Selection::Ids(ids) = &self.gpus.selection
        {
            t.gpus = Some(GpusHeld {
                count: ids.len() as u32,
                ids: ids.clone(),
                from: self.gpus.origin().to_string(),
            });
        }

        match server_run {
            None => t.server_note = Some("the server has no metrics endpoint".into()),
            Some(samples) => {
                recorded.server_samples = samples
                    .into_iter()
                    .map(|(at, s)| ServerSample {
                        t_ms: on_clock(at),
                        ..s
                    })
                    .collect();
                t.server = span.map(|span| timeline::summarize(&recorded.server_samples, span));
            }
        }
        recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A source that replays recorded readings, one per poll, stamped when polled.
    struct Fake {
        readings: std::vec::IntoIter<GpuSample>,
    }

    impl GpuSource for Fake {
        fn kind(&self) -> SourceKind {
            SourceKind::Fake
        }
        fn devices(&self) -> Vec<DeviceInfo> {
            vec![DeviceInfo {
                index: 0,
                uuid: Some("GPU-fake".into()),
                name: Some("Fake GPU".into()),
            }]
        }
        fn poll(&mut self) -> Vec<(Instant, GpuSample)> {
            self.readings
                .next()
                .map(|s| (Instant::now(), s))
                .into_iter()
                .collect()
        }
    }

    /// A measured phase from the point's start to `end_ms`.
    fn span(end_ms: f64) -> Option<(f64, f64)> {
        Some((0.0, end_ms))
    }

    #[tokio::test]
    async fn a_window_samples_a_source_on_its_own_thread() {
        // A counter rising 1 J per reading: its increase over the window is what the GPU used.
        let readings: Vec<GpuSample> = (0..1000)
            .map(|i| GpuSample {
                gpu: 0,
                power_w: Some(4.0),
                energy_mj: Some(1000 * i),
                ..GpuSample::default()
            })
            .collect();
        let subject = Subject {
            gpus: GpuSet::for_server(std::iter::empty(), "http://127.0.0.1:1"),
            metrics: None,
        };
        let window = Window::start_with(&subject, move |_| {
            Ok(Box::new(Fake {
                readings: readings.into_iter(),
            }) as Box<dyn GpuSource>)
        });
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let rec = window.finish(Some((t0, span(800.0)))).await;
        let gpu = rec.telemetry.gpu.expect("telemetry from the fake");
        assert_eq!(gpu.source, SourceKind::Fake);
        assert!(rec.gpu_samples.len() >= 4, "{}", rec.gpu_samples.len());
        assert!(gpu.total.energy_j.unwrap() > 0.0);
        assert_eq!(gpu.devices[0].name.as_deref(), Some("Fake GPU"));
        let held = rec.telemetry.gpus.unwrap();
        assert_eq!((held.count, held.ids), (1, vec!["0".to_string()]));
        assert!(rec.telemetry.server_note.is_some());
        assert!(rec.telemetry.server.is_none());
    }

    #[tokio::test]
    async fn no_source_means_absent_figures_and_a_note() {
        let env = [("CUDA_VISIBLE_DEVICES".to_string(), "0,1".to_string())];
        let subject = Subject {
            gpus: GpuSet::for_server(env.iter().map(|(k, v)| (k, v)), "http://127.0.0.1:1"),
            metrics: None,
        };
        let window = Window::start_with(&subject, |_| Err("no NVML and no nvidia-smi".into()));
        let t0 = Instant::now();
        let rec = window.finish(Some((t0, span(10.0)))).await;
        let t = &rec.telemetry;
        assert!(t.gpu.is_none());
        assert_eq!(t.gpu_note.as_deref(), Some("no NVML and no nvidia-smi"));
        assert_eq!(
            t.gpus.as_ref().map(|g| g.count),
            Some(2),
            "from CUDA_VISIBLE_DEVICES"
        );
        let json = serde_json::to_value(t).unwrap();
        assert!(json.get("gpu").is_none(), "absent, not zero: {json}");
    }
}
