//! The engine's counters and gauges, rendered as Prometheus text under vLLM's metric names.
//!
//! Counters are in tokens, as vLLM defines them: `prompt_tokens_total` counts every prompt token of an
//! admitted request (cached ones included), `prefix_cache_queries_total` the prompt tokens looked up in the
//! prefix cache, `prefix_cache_hits_total` those served from it (full blocks only), and
//! `generation_tokens_total` every generated token (end-of-sequence included). `kv_cache_usage_perc` (a
//! fraction, as in vLLM) is the block model's reserved share of the KV cache, exposed only when there is
//! a block model (not with fixed timing). The model never preempts, so no preemption counter is exposed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Counters {
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cache_queries: AtomicU64,
    pub cache_hits: AtomicU64,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// KV-cache blocks reserved by running sequences, and the cache's size (0: no block model, as with
    /// fixed timing; then the usage gauge is not exposed).
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
}

impl Counters {
    /// Books one prefix-cache lookup of a prompt at admission.
    pub fn admitted(&self, prompt_len: usize, cached: usize) {
        self.prompt_tokens.fetch_add(prompt_len as u64, Relaxed);
        self.cache_queries.fetch_add(prompt_len as u64, Relaxed);
        self.cache_hits.fetch_add(cached as u64, Relaxed);
    }

    pub fn generated(&self, tokens: usize) {
        self.generation_tokens.fetch_add(tokens as u64, Relaxed);
    }
}

const METRICS: &[(&str, &str, &str)] = &[
    (
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
    ),
    (
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
    ),
    (
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
    ),
    (
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    (
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
];

/// The `/metrics` page.
pub fn render(c: &Counters, model_name: &str) -> String {
    let values = [
        c.running.load(Relaxed),
        c.waiting.load(Relaxed),
        c.prompt_tokens.load(Relaxed),
        c.generation_tokens.load(Relaxed),
        c.cache_queries.load(Relaxed),
        c.cache_hits.load(Relaxed),
    ];
    let model_name = model_name.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(
            out,
            "{name}{{engine=\"0\",model_name=\"{model_name}\"}} {value}"
        );
    };
    for ((name, kind, help), value) in METRICS.iter().zip(values) {
        metric(name, kind, help, format!("{value}.0"));
    }
    let total = c.kv_blocks_total.load(Relaxed);
    if total > 0 {
        let used = c.kv_blocks_used.load(Relaxed);
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            format!("{:?}", used as f64 / total as f64),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_name_with_its_value() {
        let c = Counters::default();
        c.admitted(100, 48);
        c.generated(7);
        c.running.store(3, Relaxed);
        let text = render(&c, "m");
        for (name, _, _) in METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(
            text.contains("vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 100.0\n")
        );
        assert!(
            text.contains("vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 48.0\n")
        );
        assert!(text.contains("vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 100.0\n"));
        assert!(text.contains("vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} 7.0\n"));
        assert!(text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n"));
        assert!(!text.contains("kv_cache_usage"), "no block model, no gauge");
        c.kv_blocks_total.store(8, Relaxed);
        c.kv_blocks_used.store(2, Relaxed);
        assert!(
            render(&c, "m")
                .contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n")
        );
    }
}
