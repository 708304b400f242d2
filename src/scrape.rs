//! Server metrics: scrape Prometheus `/metrics` before and after each load point and turn the counter
//! deltas into a prefix-cache hit rate (vLLM, SGLang and llama.cpp names), keeping the raw deltas.
//!
//! CONTRACT: [`ServerMetrics`] is stored in each cell's `result.json` and read by the report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    /// Δhits / Δqueries over the load point (0..1); `None` when the server exposes no usable counters.
    pub prefix_cache_hit_rate: Option<f64>,
    /// Which counters gave the rate, e.g. `vllm:prefix_cache_hits_total/vllm:prefix_cache_queries_total`.
    pub prefix_cache_source: Option<String>,
    /// Every counter that changed between the scrapes (name with labels → after − before).
    pub deltas: BTreeMap<String, f64>,
    /// Why metrics are missing, if they are (scrape failed, no metrics path, ...).
    pub note: Option<String>,
}
