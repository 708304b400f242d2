//! A load point measured several times (`[load] repeats = N`): in which order a server's repeats run,
//! and the one cell result made of N repeat results. Pure functions over plain data; the unit runs the
//! repeats and the store keeps them.
//!
//! Order: repeats are interleaved across the points of one server (c1 r1, c4 r1, c16 r1, c1 r2, …), so
//! that a server that drifts (warms up, fragments its KV cache, heats its GPU) spreads the drift over
//! every point instead of loading it onto one.
//!
//! Combining follows one rule for every figure: what a repeat measures as a rate, a mean or a share is
//! the mean over repeats of each repeat's figure; what it counts (requests, energy, samples, time)
//! adds up; peaks are the highest over repeats; a figure one repeat lacks is missing for the cell. The
//! summary's rules are in [`crate::stats::repeats`]; this module applies the same rule to the server's
//! metrics and the telemetry.

use std::collections::BTreeMap;

use crate::scrape::ServerMetrics;
use crate::stats::repeats::{all, mean_of};
use crate::store::{CellResult, RepeatResult};
use crate::telemetry::summary::DeviceTelemetry;
use crate::telemetry::{EnergyMethod, GpuFigures, GpuTelemetry, ServerTimeline, Telemetry};

/// The order in which a server's measurements run: `todo[i]` lists the repeats point `i` still needs
/// (in the order they should run); round `j` runs every point's `j`-th needed repeat, points in their
/// plan order. Returns `(point index, repeat)` pairs.
pub fn interleave(todo: &[Vec<u32>]) -> Vec<(usize, u32)> {
    let rounds = todo.iter().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|j| {
            todo.iter()
                .enumerate()
                .filter_map(move |(i, repeats)| repeats.get(j).map(|k| (i, *k)))
        })
        .collect()
}

/// Makes `cell` the result of its `repeats` (sorted here by number): their combined summary, server
/// metrics and telemetry, the first start and the last finish, and every repeat kept beside them.
pub fn combine_into(cell: &mut CellResult, mut repeats: Vec<RepeatResult>) {
    repeats.sort_by_key(|r| r.repeat);
    let summaries: Vec<crate::stats::Summary> = repeats.iter().map(|r| r.summary.clone()).collect();
    if let Some(summary) = crate::stats::repeats::combine(&summaries) {
        cell.summary = summary;
    }
    cell.server_metrics = server_metrics(
        &repeats
            .iter()
            .map(|r| &r.server_metrics)
            .collect::<Vec<_>>(),
    );
    cell.telemetry = telemetry(&repeats.iter().map(|r| &r.telemetry).collect::<Vec<_>>());
    if let Some(first) = repeats.iter().map(|r| r.started_at.as_str()).min() {
        cell.started_at = first.to_string();
    }
    if let Some(last) = repeats.iter().map(|r| r.finished_at.as_str()).max() {
        cell.finished_at = last.to_string();
    }
    cell.repeats = repeats;
}

fn sum_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    all(values).map(|v| v.iter().sum())
}

fn max_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    all(values).and_then(|v| v.into_iter().reduce(f64::max))
}

/// Weighted mean of figures every part has (weights: each part's window or sample count).
fn weighted(values: impl IntoIterator<Item = (Option<f64>, f64)>) -> Option<f64> {
    let pairs = all(values.into_iter().map(|(v, w)| v.map(|v| (v, w))))?;
    let total: f64 = pairs.iter().map(|(_, w)| w).sum();
    (total > 0.0).then(|| pairs.iter().map(|(v, w)| v * w).sum::<f64>() / total)
}

/// The first of the notes, if any part has one.
fn first_note<'a>(notes: impl IntoIterator<Item = &'a Option<String>>) -> Option<String> {
    notes.into_iter().flatten().next().cloned()
}

/// The prefix-cache hit rate is the mean over repeats; the counters' deltas add up.
fn server_metrics(parts: &[&ServerMetrics]) -> ServerMetrics {
    let mut deltas: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in parts.iter().flat_map(|m| &m.deltas) {
        *deltas.entry(k.clone()).or_insert(0.0) += v;
    }
    let sources: Vec<&Option<String>> = parts.iter().map(|m| &m.prefix_cache_source).collect();
    ServerMetrics {
        prefix_cache_hit_rate: mean_of(parts.iter().map(|m| m.prefix_cache_hit_rate)),
        prefix_cache_source: sources
            .iter()
            .all(|s| *s == sources[0])
            .then(|| sources[0].clone())
            .flatten(),
        deltas,
        note: first_note(parts.iter().map(|m| &m.note)),
    }
}

fn telemetry(parts: &[&Telemetry]) -> Telemetry {
    let gpu = all(parts.iter().map(|t| t.gpu.as_ref())).and_then(|g| gpu(&g));
    let lacking: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, t)| t.gpu.is_none())
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    let gpu_note = match first_note(parts.iter().map(|t| &t.gpu_note)) {
        Some(note) => Some(note),
        None if gpu.is_none() && !lacking.is_empty() && lacking.len() < parts.len() => {
            Some(format!(
                "GPU telemetry is missing in repeat(s) {} of {}",
                lacking.join(", "),
                parts.len()
            ))
        }
        None => None,
    };
    Telemetry {
        gpus: parts.iter().find_map(|t| t.gpus.clone()),
        gpu,
        gpu_note,
        server: all(parts.iter().map(|t| t.server.as_ref())).and_then(|s| timeline(&s)),
        server_note: first_note(parts.iter().map(|t| &t.server_note)),
    }
}

/// The GPUs over every repeat's window: energy adds up, mean power is the total energy over the total
/// window, utilization and clocks are window-weighted means, peaks the highest. Only GPUs every repeat
/// saw are kept.
fn gpu(parts: &[&GpuTelemetry]) -> Option<GpuTelemetry> {
    let first = parts.first()?;
    let windows: Vec<f64> = parts.iter().map(|g| g.window_s).collect();
    let window_s: f64 = windows.iter().sum();
    let devices = first
        .devices
        .iter()
        .filter_map(|d| {
            let figures: Vec<&GpuFigures> = parts
                .iter()
                .map(|g| {
                    g.devices
                        .iter()
                        .find(|o| o.index == d.index)
                        .map(|o| &o.figures)
                })
                .collect::<Option<_>>()?;
            Some(DeviceTelemetry {
                figures: figures_over(&figures, &windows),
                ..d.clone()
            })
        })
        .collect();
    let totals: Vec<&GpuFigures> = parts.iter().map(|g| &g.total).collect();
    Some(GpuTelemetry {
        source: first.source,
        interval_ms: first.interval_ms,
        window_s,
        total: figures_over(&totals, &windows),
        devices,
    })
}

fn figures_over(parts: &[&GpuFigures], windows: &[f64]) -> GpuFigures {
    let window: f64 = windows.iter().sum();
    let by_window = |f: fn(&GpuFigures) -> Option<f64>| {
        weighted(parts.iter().zip(windows).map(|(p, w)| (f(p), *w)))
    };
    let energy_j = sum_of(parts.iter().map(|p| p.energy_j));
    let methods: Option<Vec<EnergyMethod>> = all(parts.iter().map(|p| p.energy_method));
    let union = |lists: Vec<&Vec<String>>| {
        let mut out: Vec<String> = Vec::new();
        for item in lists.into_iter().flatten() {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        out
    };
    GpuFigures {
        energy_j,
        // Energy partly integrated from power is, as a whole, integrated power.
        energy_method: methods.map(|m| {
            if m.iter().all(|x| *x == EnergyMethod::Counter) {
                EnergyMethod::Counter
            } else {
                EnergyMethod::IntegratedPower
            }
        }),
        integrated_energy_j: sum_of(parts.iter().map(|p| p.integrated_energy_j)),
        power_mean_w: energy_j.filter(|_| window > 0.0).map(|e| e / window),
        power_max_w: max_of(parts.iter().map(|p| p.power_max_w)),
        util_mean_pct: by_window(|p| p.util_mean_pct),
        mem_used_max_mib: max_of(parts.iter().map(|p| p.mem_used_max_mib)),
        mem_total_mib: max_of(parts.iter().map(|p| p.mem_total_mib)),
        sm_clock_mean_mhz: by_window(|p| p.sm_clock_mean_mhz),
        temp_max_c: max_of(parts.iter().map(|p| p.temp_max_c)),
        throttle_reasons: union(parts.iter().map(|p| &p.throttle_reasons).collect()),
        samples: parts.iter().map(|p| p.samples).sum(),
        max_gap_s: max_of(parts.iter().map(|p| p.max_gap_s)),
        gaps: parts.iter().any(|p| p.gaps),
        notes: union(parts.iter().map(|p| &p.notes).collect()),
    }
}

/// The server's timeline over every repeat: peaks the highest, the mean KV-cache use weighted by
/// samples, preemptions and samples added up.
fn timeline(parts: &[&ServerTimeline]) -> Option<ServerTimeline> {
    let first = parts.first()?;
    let max = |f: fn(&ServerTimeline) -> Option<f64>| max_of(parts.iter().map(|p| f(p)));
    Some(ServerTimeline {
        interval_s: first.interval_s,
        samples: parts.iter().map(|p| p.samples).sum(),
        errors: parts.iter().map(|p| p.errors).sum(),
        peak_running: max(|p| p.peak_running),
        peak_waiting: max(|p| p.peak_waiting),
        peak_kv_usage: max(|p| p.peak_kv_usage),
        mean_kv_usage: weighted(
            parts
                .iter()
                .map(|p| (p.mean_kv_usage, f64::from(p.samples))),
        ),
        preemptions: sum_of(parts.iter().map(|p| p.preemptions)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SourceKind;

    #[test]
    fn repeats_interleave_across_points() {
        let fresh = vec![vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3]];
        assert_eq!(
            interleave(&fresh),
            [
                (0, 1),
                (1, 1),
                (2, 1),
                (0, 2),
                (1, 2),
                (2, 2),
                (0, 3),
                (1, 3),
                (2, 3)
            ]
        );
        // Resumed: each point's missing repeats, still spread over the rounds; a point measured once.
        let resumed = vec![vec![3], vec![1, 2, 3], vec![1]];
        assert_eq!(
            interleave(&resumed),
            [(0, 3), (1, 1), (2, 1), (1, 2), (1, 3)]
        );
        assert!(interleave(&[vec![], vec![]]).is_empty());
    }

    fn figures(energy: f64, util: f64, gaps: bool) -> GpuFigures {
        GpuFigures {
            energy_j: Some(energy),
            energy_method: Some(EnergyMethod::Counter),
            power_max_w: Some(energy / 10.0),
            util_mean_pct: Some(util),
            samples: 8,
            gaps,
            notes: vec![format!("n{energy}")],
            ..GpuFigures::default()
        }
    }

    fn gpu_telemetry(window: f64, energy: f64, util: f64) -> Telemetry {
        let total = figures(energy, util, energy > 250.0);
        Telemetry {
            gpu: Some(GpuTelemetry {
                source: SourceKind::Fake,
                interval_ms: 250.0,
                window_s: window,
                devices: vec![DeviceTelemetry {
                    index: 0,
                    figures: total.clone(),
                    ..DeviceTelemetry::default()
                }],
                total,
            }),
            server: Some(ServerTimeline {
                samples: 2,
                peak_waiting: Some(window),
                mean_kv_usage: Some(util / 100.0),
                preemptions: Some(1.0),
                ..ServerTimeline::default()
            }),
            ..Telemetry::default()
        }
    }

    #[test]
    fn energy_adds_up_and_power_is_over_the_whole_window() {
        let t = telemetry(&[
            &gpu_telemetry(1.0, 100.0, 50.0),
            &gpu_telemetry(3.0, 300.0, 90.0),
        ]);
        let g = t.gpu.unwrap();
        assert_eq!(g.window_s, 4.0);
        assert_eq!(g.total.energy_j, Some(400.0));
        assert_eq!(g.total.power_mean_w, Some(100.0));
        assert_eq!(g.total.power_max_w, Some(30.0));
        assert_eq!(
            g.total.util_mean_pct,
            Some(80.0),
            "weighted by window: (50 + 3·90) / 4"
        );
        assert_eq!(g.total.energy_method, Some(EnergyMethod::Counter));
        assert_eq!(g.total.samples, 16);
        assert!(g.total.gaps, "a gap in any repeat");
        assert_eq!(g.total.notes, ["n100", "n300"]);
        assert_eq!(g.devices.len(), 1);
        assert_eq!(g.devices[0].figures.energy_j, Some(400.0));
        let s = t.server.unwrap();
        assert_eq!(
            (s.samples, s.peak_waiting, s.preemptions),
            (4, Some(3.0), Some(2.0))
        );
        assert!((s.mean_kv_usage.unwrap() - 0.7).abs() < 1e-12);
    }

    #[test]
    fn telemetry_one_repeat_lacks_is_missing_with_a_note() {
        let t = telemetry(&[&gpu_telemetry(1.0, 100.0, 50.0), &Telemetry::default()]);
        assert_eq!(t.gpu, None);
        assert_eq!(t.server, None);
        assert_eq!(
            t.gpu_note.as_deref(),
            Some("GPU telemetry is missing in repeat(s) 2 of 2")
        );
        // Without GPUs anywhere the repeats' own note stands.
        let none = Telemetry {
            gpu_note: Some("no GPU telemetry on this host".into()),
            ..Telemetry::default()
        };
        let t = telemetry(&[&none, &none]);
        assert_eq!(t.gpu_note.as_deref(), Some("no GPU telemetry on this host"));
    }

    #[test]
    fn hit_rates_are_means_and_deltas_add_up() {
        let m = |rate: Option<f64>| ServerMetrics {
            prefix_cache_hit_rate: rate,
            prefix_cache_source: Some("h/q".into()),
            deltas: BTreeMap::from([("q".to_string(), 100.0)]),
            note: None,
        };
        let both = server_metrics(&[&m(Some(0.1)), &m(Some(0.3))]);
        assert!((both.prefix_cache_hit_rate.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(both.deltas["q"], 200.0);
        assert_eq!(both.prefix_cache_source.as_deref(), Some("h/q"));
        let one = server_metrics(&[&m(Some(0.1)), &m(None)]);
        assert_eq!(one.prefix_cache_hit_rate, None, "unknown in one repeat");
    }
}
