//! The NVML source: the driver's management library, loaded at run time through `nvml-wrapper` (a host
//! without the library simply cannot open it). Each poll reads every GPU of the set on the spot,
//! including the energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded) that
//! gives a window's energy exactly, unlike the ~1 s power averages.
//!
//! The library is initialised once per process and kept: `nvmlInit` can take seconds on a host without
//! persistence mode, which would otherwise eat into every load point's first samples.

use std::sync::OnceLock;
use std::time::Instant;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::GpuSample;
use super::gpuset::{Selection, matches};
use super::source::{DeviceInfo, GpuSource, SourceKind};

static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();

fn library() -> Result<&'static Nvml, String> {
    NVML.get_or_init(|| Nvml::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// `NVML (driver 550.54.15, 2 GPUs), energy from its counter`, or why it cannot load.
pub fn describe() -> Result<String, String> {
    let nvml = library()?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let driver = nvml
        .sys_driver_version()
        .map(|v| format!("driver {v}, "))
        .unwrap_or_default();
    Ok(format!(
        "NVML ({driver}{count} GPU{}) sampled every {} ms, energy from its counter",
        if count == 1 { "" } else { "s" },
        super::source::INTERVAL.as_millis()
    ))
}

pub struct NvmlSource {
    devices: Vec<(DeviceInfo, Device<'static>)>,
}

impl NvmlSource {
    pub fn open(selection: &Selection) -> Result<NvmlSource, String> {
        let nvml = library()?;
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
            let info = DeviceInfo {
                index,
                uuid: device.uuid().ok(),
                name: device.name().ok(),
            };
            all.push((info, device));
        }
        let devices: Vec<(DeviceInfo, Device<'static>)> = match selection {
            Selection::Ids(ids) => {
                let mut chosen = Vec::new();
                for id in ids {
                    match all
                        .iter()
                        .position(|(info, _)| matches(id, info.index, info.uuid.as_deref()))
                    {
                        Some(i) => chosen.push(all.swap_remove(i)),
                        None => {
                            return Err(format!(
                                "CUDA_VISIBLE_DEVICES names `{id}`, which NVML does not list (MIG instances cannot be sampled on their own)"
                            ));
                        }
                    }
                }
                chosen
            }
            _ => all,
        };
        if devices.is_empty() {
            return Err("NVML lists no GPU".into());
        }
        Ok(NvmlSource { devices })
    }
}

/// A reading that failed: `None`, and for a GPU that fell off the bus, the reason.
fn read<T>(r: Result<T, NvmlError>, lost: &mut Option<String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e @ (NvmlError::GpuLost | NvmlError::NotFound | NvmlError::Uninitialized)) => {
            lost.get_or_insert_with(|| e.to_string());
            None
        }
        Err(_) => None,
    }
}

impl GpuSource for NvmlSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Nvml
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|(info, _)| info.clone()).collect()
    }

    fn poll(&mut self) -> Vec<(Instant, GpuSample)> {
        const MIB: f64 = 1024.0 * 1024.0;
        self.devices
            .iter()
            .map(|(info, d)| {
                let at = Instant::now();
                let mut lost = None;
                let memory = read(d.memory_info(), &mut lost);
                let sample = GpuSample {
                    t_ms: 0.0,
                    gpu: info.index,
                    energy_mj: read(d.total_energy_consumption(), &mut lost),
                    power_w: read(d.power_usage(), &mut lost).map(|mw| f64::from(mw) / 1000.0),
                    util_pct: read(d.utilization_rates(), &mut lost).map(|u| f64::from(u.gpu)),
                    mem_used_mib: memory.as_ref().map(|m| m.used as f64 / MIB),
                    mem_total_mib: memory.as_ref().map(|m| m.total as f64 / MIB),
                    sm_clock_mhz: read(d.clock_info(Clock::SM), &mut lost).map(f64::from),
                    temp_c: read(d.temperature(TemperatureSensor::Gpu), &mut lost).map(f64::from),
                    throttle: read(d.current_throttle_reasons(), &mut lost).map(|r| r.bits()),
                    error: lost,
                };
                (at, sample)
            })
            .collect()
    }
}
