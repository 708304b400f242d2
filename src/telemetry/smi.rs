//! The `nvidia-smi` source, for hosts where NVML cannot load but the tool runs: one long-running
//! `nvidia-smi --query-gpu=… -lms 250` (started through [`crate::gpu`]) whose CSV lines become samples.
//! It has no energy counter: a window's energy is then its power integrated over time.
//!
//! Each line carries the tool's own timestamp; where it parses and agrees with the time the line was read
//! (within [`CLOCK_SLACK`]), it places the sample, so output the tool buffered is still timed right.
//! Values it prints as `[N/A]` or `[Not Supported]` are `None`. Older tools that do not know the
//! throttle-reasons field are asked without it.

use std::time::{Duration, Instant, SystemTime};

use super::GpuSample;
use super::gpuset::{Selection, matches};
use super::source::{DeviceInfo, GpuSource, INTERVAL, SourceKind};
use crate::gpu::{Smi, SmiStream};

/// The fields asked for, in this order.
pub const FIELDS: &[&str] = &[
    "timestamp",
    "index",
    "uuid",
    "power.draw",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "clocks.sm",
    "temperature.gpu",
    "clocks_throttle_reasons.active",
];

/// How far the tool's timestamp may be from the time its line was read and still be trusted.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

pub struct SmiSource {
    stream: SmiStream,
    fields: &'static [&'static str],
    devices: Vec<DeviceInfo>,
    /// Wall clock and monotonic clock read together, to place the tool's timestamps.
    wall0: SystemTime,
    mono0: Instant,
}

impl SmiSource {
    pub fn open(smi: Smi, selection: &Selection) -> Result<SmiSource, String> {
        // One query first: it lists the GPUs and proves the tool knows every field.
        let (fields, text) = match smi.query_gpu(FIELDS) {
            Ok(text) => (FIELDS, text),
            Err(first) => {
                let basic = &FIELDS[..FIELDS.len() - 1];
                match smi.query_gpu(basic) {
                    Ok(text) => (basic, text),
                    Err(_) => return Err(first.0),
                }
            }
        };
        let listed: Vec<DeviceInfo> = text
            .lines()
            .filter_map(|l| parse_line(fields, l))
            .map(|(_, s, uuid)| DeviceInfo {
                index: s.gpu,
                uuid,
                name: None,
            })
            .collect();
        let devices: Vec<DeviceInfo> = match selection {
            Selection::Ids(ids) => ids
                .iter()
                .map(|id| {
                    listed
                        .iter()
                        .find(|d| matches(id, d.index, d.uuid.as_deref()))
                        .cloned()
                        .ok_or_else(|| {
                            format!(
                                "CUDA_VISIBLE_DEVICES names `{id}`, which nvidia-smi does not list"
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => listed,
        };
        if devices.is_empty() {
            return Err("nvidia-smi lists no GPU".into());
        }
        let stream = smi.stream(fields, INTERVAL).map_err(|e| e.0)?;
        Ok(SmiSource {
            stream,
            fields,
            devices,
            wall0: SystemTime::now(),
            mono0: Instant::now(),
        })
    }

    /// Where a line belongs in time: the tool's timestamp, if it is believable, else when it was read.
    fn place(&self, read: Instant, stamp: Option<SystemTime>) -> Instant {
        let Some(stamp) = stamp else { return read };
        let read_wall = self.wall0 + read.saturating_duration_since(self.mono0);
        let (ahead, behind) = (
            stamp.duration_since(read_wall).ok(),
            read_wall.duration_since(stamp).ok(),
        );
        match (ahead, behind) {
            (Some(d), _) if d <= CLOCK_SLACK => read + d,
            (_, Some(d)) if d <= CLOCK_SLACK => read.checked_sub(d).unwrap_or(read),
            _ => read,
        }
    }
}

impl GpuSource for SmiSource {
    fn kind(&self) -> SourceKind {
        SourceKind::NvidiaSmi
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }

    fn poll(&mut self) -> Vec<(Instant, GpuSample)> {
        self.stream
            .take()
            .into_iter()
            .filter_map(|(read, line)| {
                let (stamp, sample, _) = parse_line(self.fields, &line)?;
                self.devices
                    .iter()
                    .any(|d| d.index == sample.gpu)
                    .then(|| (self.place(read, stamp), sample))
            })
            .collect()
    }

    fn settle(&self) -> Duration {
        // The line that brackets the window's end comes up to one interval later.
        INTERVAL + Duration::from_millis(50)
    }

    fn ended(&mut self) -> Option<String> {
        self.stream.ended()
    }
}

/// A value as `nvidia-smi` prints it with `nounits`; `[N/A]`, `[Not Supported]` and the like are `None`.
fn number(text: &str) -> Option<f64> {
    let v: f64 = text.trim().parse().ok()?;
    v.is_finite().then_some(v)
}

/// One CSV line of `fields`: the tool's timestamp, the sample and the GPU's UUID. `None` for a line that
/// is not one (a warning the tool printed, a short line).
pub fn parse_line(
    fields: &[&str],
    line: &str,
) -> Option<(Option<SystemTime>, GpuSample, Option<String>)> {
    let values: Vec<&str> = line.split(',').map(str::trim).collect();
    if values.len() != fields.len() {
        return None;
    }
    let get = |name: &str| fields.iter().position(|f| *f == name).map(|i| values[i]);
    let gpu: u32 = get("index")?.parse().ok()?;
    let stamp = get("timestamp").and_then(|t| {
        let naive = chrono::NaiveDateTime::parse_from_str(t, "%Y/%m/%d %H:%M:%S%.f").ok()?;
        let local = naive.and_local_timezone(chrono::Local).single()?;
        Some(SystemTime::from(local))
    });
    let uuid = get("uuid")
        .filter(|u| u.starts_with("GPU-") || u.starts_with("MIG-"))
        .map(str::to_string);
    let throttle = get("clocks_throttle_reasons.active").and_then(|t| {
        let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
        u64::from_str_radix(hex, 16).ok()
    });
    let sample = GpuSample {
        t_ms: 0.0,
        gpu,
        power_w: get("power.draw").and_then(number),
        energy_mj: None,
        util_pct: get("utilization.gpu").and_then(number),
        mem_used_mib: get("memory.used").and_then(number),
        mem_total_mib: get("memory.total").and_then(number),
        sm_clock_mhz: get("clocks.sm").and_then(number),
        temp_c: get("temperature.gpu").and_then(number),
        throttle,
        error: None,
    };
    Some((stamp, sample, uuid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The fake `nvidia-smi` (see `crate::gpu`'s tests), printing `lines` with the current timestamp.
    fn fake(dir: &Path, lines: &str) -> Smi {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-nvidia-smi");
        let link = dir.join("nvidia-smi");
        std::os::unix::fs::symlink(script, &link).unwrap();
        std::fs::write(dir.join("lms"), lines).unwrap();
        Smi::with_program(link)
    }

    const TWO_GPUS: &str = "TS, 0, GPU-aaa, 150, 80, 1000, 81559, 1900, 55, 0x0000000000000000\n\
                            TS, 1, GPU-bbb, 250, 95, 2000, 81559, 1950, 65, 0x0000000000000004\n";

    #[test]
    fn the_source_streams_the_servers_gpus_with_their_own_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let smi = fake(dir.path(), TWO_GPUS);
        let set = Selection::Ids(vec!["GPU-bbb".into()]);
        let mut source = SmiSource::open(smi, &set).unwrap();
        assert_eq!(source.devices().len(), 1);
        assert_eq!(source.devices()[0].index, 1, "the UUID picks GPU 1");
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(800));
        let samples = source.poll();
        assert!(samples.len() >= 2, "{samples:?}");
        assert!(
            samples
                .iter()
                .all(|(_, s)| s.gpu == 1 && s.power_w == Some(250.0))
        );
        // Placed by the tool's own (millisecond) timestamps, which agree with the read times.
        for (at, _) in &samples {
            let since = at.saturating_duration_since(start);
            assert!(since < Duration::from_secs(2), "{since:?}");
        }
        assert_eq!(source.ended(), None);
    }

    #[test]
    fn a_gpu_it_does_not_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let smi = fake(dir.path(), TWO_GPUS);
        let err = SmiSource::open(smi, &Selection::Ids(vec!["7".into()]))
            .err()
            .unwrap();
        assert!(err.contains("names `7`"), "{err}");
    }

    #[test]
    fn lines_parse_with_missing_values() {
        let line = "2026/11/27 10:00:01.250, 1, GPU-1234, 250.50, 87, 40000, 81559, 1980, 61, 0x0000000000000004";
        let (stamp, s, uuid) = parse_line(FIELDS, line).unwrap();
        assert!(stamp.is_some());
        assert_eq!(uuid.as_deref(), Some("GPU-1234"));
        assert_eq!(s.gpu, 1);
        assert_eq!(s.power_w, Some(250.5));
        assert_eq!(s.util_pct, Some(87.0));
        assert_eq!(s.mem_total_mib, Some(81559.0));
        assert_eq!(s.throttle, Some(4));
        assert_eq!(s.energy_mj, None, "nvidia-smi has no energy counter");

        let na =
            "2026/11/27 10:00:01.250, 0, GPU-1, [N/A], [Not Supported], 1, 2, 3, 4, Not Active";
        let (_, s, _) = parse_line(FIELDS, na).unwrap();
        assert_eq!((s.power_w, s.util_pct, s.throttle), (None, None, None));
        assert!(parse_line(FIELDS, "No devices were found").is_none());
        // The basic field list (no throttle reasons) parses too.
        let basic = &FIELDS[..FIELDS.len() - 1];
        let (_, s, _) = parse_line(
            basic,
            "2026/11/27 10:00:01.250, 0, GPU-1, 100, 5, 1, 2, 3, 4",
        )
        .unwrap();
        assert_eq!((s.power_w, s.throttle), (Some(100.0), None));
    }
}
