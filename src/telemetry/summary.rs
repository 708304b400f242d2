//! From raw GPU samples to the figures of one window (the measured phase of a load point): energy, power,
//! utilization, memory, SM clock, temperature and throttle reasons, per GPU and for the server's whole set.
//! A pure function of the samples, so it is tested on recorded series.
//!
//! Rules (each field is its own series, so a field that is missing or appears late never disturbs the
//! others):
//! - Energy: the energy counter's increase over the window, the counter read as a straight line between
//!   samples (and extended at the window's edges with the rate of the nearest interval). An interval in
//!   which the counter went backwards (a driver reset or a wrap) is integrated from power instead, and
//!   noted. Without a counter, power is integrated over the window (trapezoids, the first and last
//!   readings held to the edges) and the method says so. The integral is kept beside the counter's figure
//!   as a cross-check.
//! - Means (utilization, SM clock) are over the samples inside the window; maxima likewise. A window
//!   shorter than the sampling interval uses the samples just around it.
//! - Mean power is the window's energy over its duration, so the two always agree.
//! - Gaps: the longest stretch of the window (edges included) without a sample of a field that the GPU
//!   reports at all. Over [`MAX_GAP_S`] the GPU is flagged, as InferenceX rejects such a series. A GPU that
//!   stops answering shows as such a gap, and with the driver's reason where the source gave one.
//! - The set: energies, mean powers, memory add up; utilization and SM clock average over GPUs; peaks take
//!   the maximum. A figure one GPU lacks is missing for the set (a partial sum would look measured).

use serde::{Deserialize, Serialize};

use super::GpuSample;
use super::source::{DeviceInfo, SourceKind};

/// A series with a longer stretch than this without samples is flagged (InferenceX's rule).
pub const MAX_GAP_S: f64 = 3.0;

/// How a window's energy was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMethod {
    /// NVML's energy counter, read at both ends of the window.
    Counter,
    /// Power readings integrated over time (trapezoids).
    IntegratedPower,
}

/// The figures of one GPU or of a set, over one window. Missing is `None`, never 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuFigures {
    pub energy_j: Option<f64>,
    pub energy_method: Option<EnergyMethod>,
    /// Power integrated over the window: the cross-check of a counter's figure.
    pub integrated_energy_j: Option<f64>,
    /// Energy / window duration.
    pub power_mean_w: Option<f64>,
    /// The highest power reading (of any one GPU, for a set).
    pub power_max_w: Option<f64>,
    pub util_mean_pct: Option<f64>,
    pub mem_used_max_mib: Option<f64>,
    pub mem_total_mib: Option<f64>,
    pub sm_clock_mean_mhz: Option<f64>,
    pub temp_max_c: Option<f64>,
    /// Throttle reasons seen in any sample of the window (NVML's names, snake case).
    pub throttle_reasons: Vec<String>,
    /// Samples inside the window.
    pub samples: u32,
    /// The longest stretch of the window without a sample of a reported field, seconds.
    pub max_gap_s: Option<f64>,
    /// `max_gap_s` is over [`MAX_GAP_S`]: the series is not trusted as whole.
    pub gaps: bool,
    pub notes: Vec<String>,
}

/// One GPU of the set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceTelemetry {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    #[serde(flatten)]
    pub figures: GpuFigures,
}

/// GPU telemetry of one load point, stored in `result.json`. CONTRACT: read by the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    pub source: SourceKind,
    /// Sampling interval asked of the source, ms.
    pub interval_ms: f64,
    /// The window: the measured phase (first measured request sent to the last byte received), seconds.
    pub window_s: f64,
    /// The whole set.
    #[serde(flatten)]
    pub total: GpuFigures,
    pub devices: Vec<DeviceTelemetry>,
}

/// NVML's throttle-reason bits (the same bitmask `nvidia-smi` prints as hex).
const THROTTLE: &[(u64, &str)] = &[
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// The names of the bits set in `bits`; unknown bits are kept as hex.
pub fn throttle_names(bits: u64) -> Vec<String> {
    let mut names: Vec<String> = THROTTLE
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = THROTTLE.iter().fold(0, |acc, (bit, _)| acc | bit);
    if bits & !known != 0 {
        names.push(format!("0x{:x}", bits & !known));
    }
    names
}

/// Summarizes `samples` (times in ms on the load point's clock) over the window `[a_ms, b_ms]`.
pub fn summarize(
    source: SourceKind,
    interval_ms: f64,
    devices: &[DeviceInfo],
    samples: &[GpuSample],
    (a_ms, b_ms): (f64, f64),
) -> GpuTelemetry {
    let (a, b) = (a_ms / 1000.0, b_ms.max(a_ms) / 1000.0);
    let devices: Vec<DeviceTelemetry> = devices
        .iter()
        .map(|info| {
            let mut own: Vec<&GpuSample> = samples.iter().filter(|s| s.gpu == info.index).collect();
            own.sort_by(|x, y| x.t_ms.total_cmp(&y.t_ms));
            DeviceTelemetry {
                index: info.index,
                uuid: info.uuid.clone(),
                name: info.name.clone(),
                figures: device(&own, a, b),
            }
        })
        .collect();
    GpuTelemetry {
        source,
        interval_ms,
        window_s: b - a,
        total: combine(&devices),
        devices,
    }
}

/// `(t seconds, value)` of every sample that has the field.
type Series = Vec<(f64, f64)>;

fn series(samples: &[&GpuSample], field: impl Fn(&GpuSample) -> Option<f64>) -> Series {
    samples
        .iter()
        .filter_map(|s| Some((s.t_ms / 1000.0, field(s)?)))
        .collect()
}

/// The series' value at `t`: linear between samples, the first and last values held beyond them.
fn at(series: &Series, t: f64) -> f64 {
    let i = series.partition_point(|(ts, _)| *ts <= t);
    match (i.checked_sub(1).map(|j| series[j]), series.get(i)) {
        (Some((t0, v0)), Some(&(t1, v1))) if t1 > t0 => v0 + (v1 - v0) * (t - t0) / (t1 - t0),
        (Some((_, v0)), _) => v0,
        (None, Some(&(_, v1))) => v1,
        (None, None) => f64::NAN,
    }
}

/// ∫ of the series over `[lo, hi]` (exact for the piecewise-linear reading of [`at`]).
fn integral(series: &Series, lo: f64, hi: f64) -> Option<f64> {
    if series.is_empty() {
        return None;
    }
    if hi <= lo {
        return Some(0.0);
    }
    let mut points = vec![lo];
    points.extend(
        series
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t > lo && *t < hi),
    );
    points.push(hi);
    Some(
        points
            .windows(2)
            .map(|w| (at(series, w[0]) + at(series, w[1])) / 2.0 * (w[1] - w[0]))
            .sum(),
    )
}

/// Energy in J from a counter in mJ over `[a, b]`, and how many intervals inside the window went
/// backwards (integrated from `power` instead). `None` with fewer than two reads, or a backward interval
/// without power readings.
fn counter_energy(counter: &Series, power: &Series, a: f64, b: f64) -> Option<(f64, u32)> {
    let n = counter.len();
    if n < 2 {
        return None;
    }
    // Joules over `[lo, hi]` at the reading of interval `w` (also beyond its ends, for the edges).
    let part = |w: &[(f64, f64)], lo: f64, hi: f64| -> Option<f64> {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if hi <= lo || t1 <= t0 {
            Some(0.0)
        } else if c1 >= c0 {
            Some((c1 - c0) / 1000.0 / (t1 - t0) * (hi - lo))
        } else {
            integral(power, lo, hi)
        }
    };
    let mut joules = 0.0;
    for w in counter.windows(2) {
        joules += part(w, w[0].0.max(a), w[1].0.min(b))?;
    }
    let (first, last) = (counter[0].0, counter[n - 1].0);
    if a < first {
        joules += part(&counter[..2], a, first.min(b))?;
    }
    if b > last {
        joules += part(&counter[n - 2..], last.max(a), b)?;
    }
    let resets = counter
        .windows(2)
        .filter(|w| w[1].1 < w[0].1 && w[1].0 > a && w[0].0 < b)
        .count() as u32;
    Some((joules, resets))
}

/// Values inside the window, or those of the samples just around a window too short to hold one.
fn window_values(series: &Series, a: f64, b: f64) -> Vec<f64> {
    let inside: Vec<f64> = series
        .iter()
        .filter(|(t, _)| (a..=b).contains(t))
        .map(|(_, v)| *v)
        .collect();
    if !inside.is_empty() {
        return inside;
    }
    let before = series.iter().rev().find(|(t, _)| *t < a);
    let after = series.iter().find(|(t, _)| *t > b);
    before.into_iter().chain(after).map(|(_, v)| *v).collect()
}

/// The longest stretch of `[a, b]` without a sample of the series (edges included).
fn max_gap(series: &Series, a: f64, b: f64) -> f64 {
    let mut times = vec![a];
    times.extend(series.iter().map(|(t, _)| *t).filter(|t| *t > a && *t < b));
    times.push(b);
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

fn device(samples: &[&GpuSample], a: f64, b: f64) -> GpuFigures {
    let window = b - a;
    let power = series(samples, |s| s.power_w);
    let counter = series(samples, |s| s.energy_mj.map(|e| e as f64));
    let util = series(samples, |s| s.util_pct);
    let mem_used = series(samples, |s| s.mem_used_mib);
    let mem_total = series(samples, |s| s.mem_total_mib);
    let clock = series(samples, |s| s.sm_clock_mhz);
    let temp = series(samples, |s| s.temp_c);
    let mut f = GpuFigures {
        samples: samples
            .iter()
            .filter(|s| (a..=b).contains(&(s.t_ms / 1000.0)))
            .count() as u32,
        ..GpuFigures::default()
    };
    if samples.is_empty() {
        f.notes.push("no sample from this GPU".into());
        return f;
    }

    f.integrated_energy_j = integral(&power, a, b);
    match counter_energy(&counter, &power, a, b) {
        Some((joules, resets)) => {
            f.energy_j = Some(joules);
            f.energy_method = Some(EnergyMethod::Counter);
            if resets > 0 {
                f.notes.push(format!(
                    "the energy counter went backwards {resets} time(s) (driver reset or wrap): those intervals are integrated from power"
                ));
            }
        }
        None => {
            f.energy_j = f.integrated_energy_j;
            f.energy_method = f.energy_j.map(|_| EnergyMethod::IntegratedPower);
        }
    }
    f.power_mean_w = f.energy_j.filter(|_| window > 0.0).map(|e| e / window);
    f.power_max_w = max(&window_values(&power, a, b));
    f.util_mean_pct = mean(&window_values(&util, a, b));
    f.mem_used_max_mib = max(&window_values(&mem_used, a, b));
    f.mem_total_mib = max(&window_values(&mem_total, a, b));
    f.sm_clock_mean_mhz = mean(&window_values(&clock, a, b));
    f.temp_max_c = max(&window_values(&temp, a, b));
    let mut bits = 0;
    for s in samples {
        let t = s.t_ms / 1000.0;
        if (a..=b).contains(&t) {
            bits |= s.throttle.unwrap_or(0);
        }
    }
    f.throttle_reasons = throttle_names(bits);

    let fields = [
        ("power", &power),
        ("energy counter", &counter),
        ("utilization", &util),
        ("memory used", &mem_used),
        ("SM clock", &clock),
        ("temperature", &temp),
    ];
    let mut worst: Option<(f64, &str)> = None;
    for (name, s) in fields.iter().filter(|(_, s)| !s.is_empty()) {
        let gap = max_gap(s, a, b);
        if worst.is_none_or(|(w, _)| gap > w) {
            worst = Some((gap, name));
        }
    }
    if let Some((gap, name)) = worst {
        f.max_gap_s = Some(gap);
        f.gaps = gap > MAX_GAP_S;
        if f.gaps {
            f.notes.push(format!(
                "{name}: {gap:.1} s without a sample (more than {MAX_GAP_S} s)"
            ));
        }
    }
    if let Some(lost) = samples
        .iter()
        .find(|s| s.error.is_some() && s.t_ms / 1000.0 <= b)
    {
        f.notes.push(format!(
            "at {:.1} s: {}",
            lost.t_ms / 1000.0,
            lost.error.as_deref().unwrap_or_default()
        ));
    }
    f
}

/// The set's figures from its GPUs' (see the module's rules).
fn combine(devices: &[DeviceTelemetry]) -> GpuFigures {
    let all = |field: fn(&GpuFigures) -> Option<f64>| -> Vec<Option<f64>> {
        devices.iter().map(|d| field(&d.figures)).collect()
    };
    let sum = |field: fn(&GpuFigures) -> Option<f64>| -> Option<f64> {
        if devices.is_empty() {
            return None;
        }
        all(field).into_iter().sum()
    };
    let present = |field: fn(&GpuFigures) -> Option<f64>| -> Vec<f64> {
        all(field).into_iter().flatten().collect()
    };
    let methods: Vec<Option<EnergyMethod>> =
        devices.iter().map(|d| d.figures.energy_method).collect();
    let mut reasons: Vec<String> = devices
        .iter()
        .flat_map(|d| d.figures.throttle_reasons.clone())
        .collect();
    reasons.sort();
    reasons.dedup();
    let energy_j = sum(|f| f.energy_j);
    GpuFigures {
        energy_j,
        energy_method: energy_j.map(|_| {
            if methods.iter().all(|m| *m == Some(EnergyMethod::Counter)) {
                EnergyMethod::Counter
            } else {
                EnergyMethod::IntegratedPower
            }
        }),
        integrated_energy_j: sum(|f| f.integrated_energy_j),
        power_mean_w: sum(|f| f.power_mean_w),
        power_max_w: max(&present(|f| f.power_max_w)),
        util_mean_pct: if present(|f| f.util_mean_pct).len() == devices.len() {
            mean(&present(|f| f.util_mean_pct))
        } else {
            None
        },
        mem_used_max_mib: sum(|f| f.mem_used_max_mib),
        mem_total_mib: sum(|f| f.mem_total_mib),
        sm_clock_mean_mhz: if present(|f| f.sm_clock_mean_mhz).len() == devices.len() {
            mean(&present(|f| f.sm_clock_mean_mhz))
        } else {
            None
        },
        temp_max_c: max(&present(|f| f.temp_max_c)),
        throttle_reasons: reasons,
        samples: devices.iter().map(|d| d.figures.samples).sum(),
        max_gap_s: max(&present(|f| f.max_gap_s)),
        gaps: devices.iter().any(|d| d.figures.gaps),
        notes: devices
            .iter()
            .flat_map(|d| {
                d.figures
                    .notes
                    .iter()
                    .map(move |n| format!("GPU {}: {n}", d.index))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u32) -> DeviceInfo {
        DeviceInfo {
            index,
            ..DeviceInfo::default()
        }
    }

    /// A sample of GPU `gpu` at `t` seconds with power `w` and counter `mj`.
    fn s(gpu: u32, t: f64, w: Option<f64>, mj: Option<u64>) -> GpuSample {
        GpuSample {
            t_ms: t * 1000.0,
            gpu,
            power_w: w,
            energy_mj: mj,
            util_pct: Some(50.0),
            mem_used_mib: Some(1000.0),
            mem_total_mib: Some(80000.0),
            sm_clock_mhz: Some(1500.0),
            temp_c: Some(60.0),
            ..GpuSample::default()
        }
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a value");
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn counter_energy_is_read_at_the_window_edges() {
        // 200 W steady: the counter gains 50 000 mJ per 0.25 s.
        let samples: Vec<GpuSample> = (0..=20)
            .map(|i| {
                let t = f64::from(i) * 0.25;
                s(
                    0,
                    t,
                    Some(200.0),
                    Some(1_000_000 + u64::from(i as u32) * 50_000),
                )
            })
            .collect();
        let g = summarize(
            SourceKind::Fake,
            250.0,
            &[info(0)],
            &samples,
            (1100.0, 3600.0),
        );
        assert_eq!(g.total.energy_method, Some(EnergyMethod::Counter));
        close(g.total.energy_j, 200.0 * 2.5);
        close(g.total.integrated_energy_j, 200.0 * 2.5);
        close(g.total.power_mean_w, 200.0);
        assert_eq!(g.total.samples, 10, "1.25 s … 3.5 s");
        assert!(!g.total.gaps);
        close(g.window_s.into(), 2.5);
    }

    #[test]
    fn without_a_counter_power_is_integrated_with_trapezoids() {
        // Power ramps 100 → 300 W over 2 s: the mean is 200 W, the energy 400 J.
        let samples = [
            s(0, 0.0, Some(100.0), None),
            s(0, 1.0, Some(200.0), None),
            s(0, 2.0, Some(300.0), None),
        ];
        let g = summarize(
            SourceKind::NvidiaSmi,
            250.0,
            &[info(0)],
            &samples,
            (0.0, 2000.0),
        );
        assert_eq!(g.total.energy_method, Some(EnergyMethod::IntegratedPower));
        close(g.total.energy_j, 400.0);
        close(g.total.power_max_w, 300.0);
        // Held at the edges: a window reaching past the last reading adds 300 W × 0.5 s.
        let g = summarize(
            SourceKind::NvidiaSmi,
            250.0,
            &[info(0)],
            &samples,
            (0.0, 2500.0),
        );
        close(g.total.energy_j, 550.0);
    }

    #[test]
    fn a_counter_that_wraps_is_bridged_by_power() {
        let samples = [
            s(0, 0.0, Some(100.0), Some(u64::MAX - 50_000)),
            s(0, 1.0, Some(100.0), Some(50_000)), // went backwards: integrate 100 W × 1 s
            s(0, 2.0, Some(100.0), Some(150_000)), // +100 J
        ];
        let g = summarize(SourceKind::Fake, 250.0, &[info(0)], &samples, (0.0, 2000.0));
        close(g.total.energy_j, 200.0);
        assert_eq!(g.total.energy_method, Some(EnergyMethod::Counter));
        assert!(
            g.total.notes[0].contains("backwards 1 time"),
            "{:?}",
            g.total.notes
        );
    }

    #[test]
    fn a_field_that_appears_late_is_used_from_then_on_and_flagged() {
        // Power shows up only at 4 s: everything else is unaffected; the power series has a 4 s gap.
        let samples: Vec<GpuSample> = (0..=24)
            .map(|i| {
                let t = f64::from(i) * 0.25;
                s(0, t, (t >= 4.0).then_some(300.0), None)
            })
            .collect();
        let g = summarize(
            SourceKind::NvidiaSmi,
            250.0,
            &[info(0)],
            &samples,
            (0.0, 6000.0),
        );
        close(g.total.util_mean_pct, 50.0);
        close(g.total.power_max_w, 300.0);
        assert!(g.total.gaps);
        close(g.total.max_gap_s, 4.0);
        assert!(
            g.total.notes[0].contains("power: 4.0 s"),
            "{:?}",
            g.total.notes
        );
        // Missing fields stay missing: no throttle reasons, no counter.
        assert!(g.total.throttle_reasons.is_empty());
    }

    #[test]
    fn a_gap_and_a_vanishing_gpu_are_flagged_and_spoil_the_set() {
        let mut samples = Vec::new();
        for i in 0..=40 {
            let t = f64::from(i) * 0.25;
            // GPU 0 skips 2.0 … 6.0 s; GPU 1 is lost after 3 s.
            if !(2.0 < t && t < 6.0) {
                samples.push(s(0, t, Some(100.0), None));
            }
            if t <= 3.0 {
                samples.push(s(1, t, Some(100.0), None));
            } else if t == 3.25 {
                let mut lost = GpuSample {
                    t_ms: 3250.0,
                    gpu: 1,
                    ..GpuSample::default()
                };
                lost.error = Some("GPU is lost".into());
                samples.push(lost);
            }
        }
        samples.push(GpuSample {
            throttle: Some(0x4 | 0x40),
            ..s(0, 9.9, Some(100.0), None)
        });
        let g = summarize(
            SourceKind::Fake,
            250.0,
            &[info(0), info(1)],
            &samples,
            (0.0, 10_000.0),
        );
        let (d0, d1) = (&g.devices[0].figures, &g.devices[1].figures);
        assert!(d0.gaps && d1.gaps);
        close(d0.max_gap_s, 4.0);
        close(d1.max_gap_s, 7.0);
        assert!(
            d1.notes.iter().any(|n| n.contains("GPU is lost")),
            "{:?}",
            d1.notes
        );
        assert!(g.total.gaps);
        assert_eq!(
            g.total.throttle_reasons,
            ["hw_thermal_slowdown", "sw_power_cap"]
        );
        // Energy is still a figure (held readings), flagged through `gaps`.
        assert!(g.total.energy_j.is_some());
    }

    #[test]
    fn a_gpu_without_samples_leaves_the_set_without_totals() {
        let samples = [s(0, 0.0, Some(100.0), None), s(0, 1.0, Some(100.0), None)];
        let g = summarize(
            SourceKind::Fake,
            250.0,
            &[info(0), info(7)],
            &samples,
            (0.0, 1000.0),
        );
        close(g.devices[0].figures.energy_j, 100.0);
        assert_eq!(g.devices[1].figures.energy_j, None);
        assert_eq!(
            g.total.energy_j, None,
            "a partial sum is not the set's energy"
        );
        assert_eq!(g.total.util_mean_pct, None);
        close(g.total.power_max_w, 100.0);
    }

    #[test]
    fn a_window_shorter_than_the_interval_uses_the_samples_around_it() {
        let samples = [
            s(0, 0.0, Some(100.0), Some(0)),
            s(0, 0.25, Some(300.0), Some(50_000)),
        ];
        let g = summarize(
            SourceKind::Fake,
            250.0,
            &[info(0)],
            &samples,
            (100.0, 200.0),
        );
        assert_eq!(g.total.samples, 0);
        close(g.total.energy_j, 20.0); // 200 J/s × 0.1 s from the counter
        close(g.total.power_max_w, 300.0);
    }

    #[test]
    fn throttle_bits_have_names() {
        assert_eq!(throttle_names(0x4), ["sw_power_cap"]);
        assert_eq!(throttle_names(0x1000 | 0x1), ["gpu_idle", "0x1000"]);
        assert!(throttle_names(0).is_empty());
    }
}
