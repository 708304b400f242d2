//! Where GPU samples come from: NVML (the driver's library, loaded at run time) or, where it cannot load,
//! a streaming `nvidia-smi`. Both sit behind [`GpuSource`], so the sampler and its tests do not care
//! which one (the tests use a recorded fake).
//!
//! Which source a run uses is decided here once per window, the same way `runner plan` reports it
//! ([`availability`]): `RUNNER_TELEMETRY` may force one (`nvml`, `nvidia-smi`) or turn telemetry off
//! (`off`); by default (`auto`) NVML is preferred for its energy counter, and `nvidia-smi` is used only
//! when NVML cannot load. A forced source that is missing is a note, never a silent switch to the other.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::GpuSample;
use super::gpuset::{GpuSet, Selection};

/// How often GPUs are sampled (4 Hz: NVML and `nvidia-smi` power readings are ~1 s averages, so faster
/// adds nothing; slower would blur short load points).
pub const INTERVAL: Duration = Duration::from_millis(250);

/// The environment variable that forces or disables a source.
pub const OVERRIDE_VAR: &str = "RUNNER_TELEMETRY";

/// Which tool delivered the samples (stored with them: energy from NVML's counter and from integrated
/// `nvidia-smi` power are not equally exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Nvml,
    NvidiaSmi,
    /// Recorded samples (tests).
    Fake,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::Nvml => "NVML",
            SourceKind::NvidiaSmi => "nvidia-smi",
            SourceKind::Fake => "fake",
        }
    }
}

/// One GPU a source samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The index `nvidia-smi` and NVML give it.
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
}

/// A source of GPU samples. Every call blocks its thread (NVML calls and pipe reads do): the sampler runs
/// it on a thread of its own, never on the async runtime.
pub trait GpuSource: Send {
    fn kind(&self) -> SourceKind;
    /// The GPUs it samples (the server's set, resolved on this host).
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Samples taken now (NVML) or printed since the last call (`nvidia-smi`), each with its instant.
    fn poll(&mut self) -> Vec<(Instant, GpuSample)>;
    /// How long after the window's end the source still needs to deliver its last sample (`nvidia-smi`
    /// prints one per interval; NVML is read on the spot).
    fn settle(&self) -> Duration {
        Duration::ZERO
    }
    /// Why the source stopped delivering, once it has.
    fn ended(&mut self) -> Option<String> {
        None
    }
}

/// What `RUNNER_TELEMETRY` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Auto,
    Nvml,
    Smi,
    Off,
}

fn choice() -> Result<Choice, String> {
    match std::env::var(OVERRIDE_VAR).ok().as_deref().map(str::trim) {
        None | Some("" | "auto") => Ok(Choice::Auto),
        Some("nvml") => Ok(Choice::Nvml),
        Some("nvidia-smi") => Ok(Choice::Smi),
        Some("off") => Ok(Choice::Off),
        Some(other) => Err(format!(
            "{OVERRIDE_VAR}={other} is not one of auto, nvml, nvidia-smi, off: no GPU telemetry"
        )),
    }
}

/// Which source a window would use on this host, in words for `runner plan`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Availability {
    /// `None`: no GPU telemetry.
    pub source: Option<SourceKind>,
    /// `NVML 12.550 (2 GPUs), energy from its counter`, or why there is none.
    pub detail: String,
}

/// Probes this host the way [`open`] will (NVML is loaded at most once per process).
pub fn availability() -> Availability {
    let none = |detail: String| Availability {
        source: None,
        detail,
    };
    let choice = match choice() {
        Ok(c) => c,
        Err(e) => return none(e),
    };
    if choice == Choice::Off {
        return none(format!("turned off ({OVERRIDE_VAR}=off)"));
    }
    let nvml = if choice == Choice::Smi {
        Err(format!("not tried ({OVERRIDE_VAR}=nvidia-smi)"))
    } else {
        super::nvml::describe()
    };
    match nvml {
        Ok(detail) => Availability {
            source: Some(SourceKind::Nvml),
            detail,
        },
        Err(e) if choice == Choice::Nvml => none(format!(
            "NVML was asked for ({OVERRIDE_VAR}=nvml) but cannot load: {e}"
        )),
        Err(e) => match crate::gpu::Smi::find(None) {
            Some(_) => Availability {
                source: Some(SourceKind::NvidiaSmi),
                detail: format!(
                    "nvidia-smi sampled every {} ms, energy integrated from power (NVML: {e})",
                    INTERVAL.as_millis()
                ),
            },
            None => none(format!("no NVML ({e}) and no nvidia-smi on PATH")),
        },
    }
}

/// Opens the source [`availability`] names, for the GPUs of `set`. `Err` says why there is none, in words
/// for the result's note.
pub fn open(set: &GpuSet) -> Result<Box<dyn GpuSource>, String> {
    let selection = match &set.selection {
        Selection::Remote(url) => {
            return Err(format!(
                "the server runs on another host ({url}): its GPUs cannot be sampled here"
            ));
        }
        Selection::None => return Err("the server was given no GPU (CUDA_VISIBLE_DEVICES)".into()),
        other => other.clone(),
    };
    let choice = choice()?;
    if choice == Choice::Off {
        return Err(format!("GPU telemetry is turned off ({OVERRIDE_VAR}=off)"));
    }
    let nvml_error = if choice == Choice::Smi {
        format!("not tried ({OVERRIDE_VAR}=nvidia-smi)")
    } else {
        match super::nvml::NvmlSource::open(&selection) {
            Ok(source) => return Ok(Box::new(source)),
            Err(e) if choice == Choice::Nvml => {
                return Err(format!("NVML ({OVERRIDE_VAR}=nvml) cannot be used: {e}"));
            }
            Err(e) => e,
        }
    };
    match crate::gpu::Smi::find(None) {
        Some(smi) => super::smi::SmiSource::open(smi, &selection).map(|s| Box::new(s) as _),
        None => Err(format!(
            "no GPU telemetry on this host: no NVML ({nvml_error}) and no nvidia-smi"
        )),
    }
}
