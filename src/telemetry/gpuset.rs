//! Which GPUs a server holds: the ones its `CUDA_VISIBLE_DEVICES` names, or every GPU of this host when it
//! names none. A local GPU slot is set as `CUDA_VISIBLE_DEVICES` in the server's environment, and a Slurm
//! job's `--gres` GPUs are in the job's own (which the server inherits). A server given by `url` on
//! another host holds GPUs this host cannot see.
//!
//! Ids are taken as `nvidia-smi` and NVML number GPUs (PCI bus order). CUDA numbers them the same way
//! only with `CUDA_DEVICE_ORDER=PCI_BUS_ID`; UUIDs (`GPU-…`) mean the same thing everywhere.

use serde::{Deserialize, Serialize};

/// The variable CUDA (and every engine on it) reads.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No `CUDA_VISIBLE_DEVICES`: every GPU of this host.
    All,
    /// The ids `CUDA_VISIBLE_DEVICES` lists (indices, `GPU-…` or `MIG-…` UUIDs).
    Ids(Vec<String>),
    /// `CUDA_VISIBLE_DEVICES` hides every GPU (empty, or `-1`).
    None,
    /// The server runs elsewhere (its `url`).
    Remote(String),
}

/// The GPUs of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSet {
    pub selection: Selection,
}

impl GpuSet {
    /// From the server's environment and the URL the load goes to (an `url` engine on another host has
    /// no GPU here).
    pub fn for_server<'a>(
        env: impl IntoIterator<Item = (&'a String, &'a String)>,
        base_url: &str,
    ) -> GpuSet {
        if !is_local(base_url) {
            return GpuSet {
                selection: Selection::Remote(base_url.to_string()),
            };
        }
        let value = env
            .into_iter()
            .find(|(k, _)| k.as_str() == CUDA_VISIBLE_DEVICES)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(CUDA_VISIBLE_DEVICES).ok());
        GpuSet {
            selection: match value {
                None => Selection::All,
                Some(v) => {
                    let ids: Vec<String> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    // CUDA stops at the first invalid entry; `-1` first hides everything.
                    let ids: Vec<String> = ids.into_iter().take_while(|id| id != "-1").collect();
                    if ids.is_empty() {
                        Selection::None
                    } else {
                        Selection::Ids(ids)
                    }
                }
            },
        }
    }

    /// What this set is called in the record.
    pub fn origin(&self) -> &'static str {
        match self.selection {
            Selection::All => "all GPUs of the host",
            Selection::Ids(_) | Selection::None => CUDA_VISIBLE_DEVICES,
            Selection::Remote(_) => "remote",
        }
    }
}

/// Whether `id` (from `CUDA_VISIBLE_DEVICES`) names this GPU.
pub fn matches(id: &str, index: u32, uuid: Option<&str>) -> bool {
    match id.parse::<u32>() {
        Ok(i) => i == index,
        Err(_) => uuid.is_some_and(|u| u.eq_ignore_ascii_case(id)),
    }
}

fn is_local(base_url: &str) -> bool {
    let rest = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The GPUs a server held during a load point: what the cost of its tokens is charged for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpusHeld {
    pub count: u32,
    /// As `CUDA_VISIBLE_DEVICES` wrote them, or the indices the telemetry source listed.
    pub ids: Vec<String>,
    /// `CUDA_VISIBLE_DEVICES` or `all GPUs of the host`.
    pub from: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(env: &[(&str, &str)], url: &str) -> Selection {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GpuSet::for_server(env.iter().map(|(k, v)| (k, v)), url).selection
    }

    #[test]
    fn cuda_visible_devices_names_the_set() {
        let url = "http://127.0.0.1:8000";
        assert_eq!(
            set(&[("CUDA_VISIBLE_DEVICES", "0, 2")], url),
            Selection::Ids(vec!["0".into(), "2".into()])
        );
        assert_eq!(set(&[("CUDA_VISIBLE_DEVICES", "")], url), Selection::None);
        assert_eq!(set(&[("CUDA_VISIBLE_DEVICES", "-1")], url), Selection::None);
        assert_eq!(
            set(&[("CUDA_VISIBLE_DEVICES", "1,-1,2")], url),
            Selection::Ids(vec!["1".into()])
        );
        assert!(matches("2", 2, None));
        assert!(matches("GPU-abc", 5, Some("gpu-ABC")));
        assert!(!matches("GPU-abc", 5, None));
    }

    #[test]
    fn a_server_elsewhere_has_no_gpus_here() {
        assert_eq!(
            set(&[], "http://10.0.0.5:8000"),
            Selection::Remote("http://10.0.0.5:8000".into())
        );
        assert!(is_local("http://localhost:1/x"));
        assert!(is_local("http://[::1]:8000"));
        assert!(is_local("http://127.0.0.2:8000"));
    }
}
