//! Server metrics: scrape Prometheus `/metrics` before and after each load point and turn the counter
//! deltas into a prefix-cache hit rate (vLLM, SGLang and llama.cpp names), keeping the raw deltas; and
//! read the load gauges (running and waiting requests, KV-cache usage, preemptions) of one scrape for the
//! server timeline ([`Gauges`]).
//!
//! CONTRACT: [`ServerMetrics`] is stored in each cell's `result.json` and read by the report; [`Gauges`]
//! are the lines of `server_metrics.jsonl`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every field has a natural "nothing recorded" value, so a field missing from an older result reads as
/// that value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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

/// One scrape: every sample with a numeric value, keyed by `name{labels}` exactly as the server wrote
/// the labels (servers print label sets in a stable order, so keys match between scrapes).
pub type Samples = BTreeMap<String, f64>;

/// Parses the Prometheus text exposition format. Written here rather than with a parser crate because
/// metric names with colons (`vllm:...`, `sglang:...`, `llamacpp:...`) are the ones we need and the
/// common crates' name patterns reject them (`prometheus-parse` fails on them; it was tried and removed).
/// Comments, blank and malformed lines are ignored.
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The key ends after the closing brace of the label set (label values may contain spaces), or
        // at the first whitespace when there is none.
        let key_end = match (line.find('{'), line.find(char::is_whitespace)) {
            (Some(brace), Some(space)) if brace < space => match line.rfind('}') {
                Some(close) => close + 1,
                None => continue,
            },
            (_, Some(space)) => space,
            (_, None) => continue,
        };
        let (key, rest) = line.split_at(key_end);
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.insert(key.to_string(), value);
    }
    out
}

/// Fetches and parses `url`, with the engine's API key when it has one (llama.cpp's `--api-key` guards
/// `/metrics` too). Errors carry the URL. Callers pass a client that opens a new connection per request
/// (`LoadClient`): a kept-alive connection the engine closed while idle would fail the scrape.
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&crate::secret::ApiKey>,
) -> anyhow::Result<Samples> {
    use anyhow::Context;
    let mut request = client.get(url).timeout(std::time::Duration::from_secs(10));
    if let Some(key) = api_key {
        request = request.header(reqwest::header::AUTHORIZATION, key.bearer());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("scraping {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "scraping {url}: HTTP {status}");
    let text = response
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(parse(&text))
}

/// Sum over every label set of the metric `name` (vLLM labels its counters by model and engine).
fn total(samples: &Samples, name: &str) -> Option<f64> {
    let mut found = None;
    for (key, value) in samples.range(name.to_string()..) {
        let base = key.split('{').next().unwrap_or(key);
        if !key.starts_with(name) {
            break;
        }
        if base == name {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Largest value over every label set of the metric `name` (a ratio per engine: the fullest one counts).
fn largest(samples: &Samples, name: &str) -> Option<f64> {
    samples
        .range(name.to_string()..)
        .take_while(|(key, _)| key.starts_with(name))
        .filter(|(key, _)| key.split('{').next() == Some(name))
        .map(|(_, v)| *v)
        .reduce(f64::max)
}

/// The server's load at one scrape, under whichever engine's names it exposes. A gauge the server does
/// not expose is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gauges {
    /// Requests being processed (in the running batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<f64>,
    /// Requests queued in the server, not yet scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<f64>,
    /// KV-cache usage, 0..1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_usage: Option<f64>,
    /// Preemptions since the server started (a counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preemptions: Option<f64>,
}

/// The names each gauge goes by, in order of preference: vLLM (the newer name first), SGLang (with
/// `--enable-metrics`), llama.cpp (with `--metrics`). Every one of them is a count or a 0..1 ratio.
const RUNNING: &[&str] = &[
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "llamacpp:requests_processing",
];
const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "llamacpp:requests_deferred",
];
const KV_USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
];
const PREEMPTIONS: &[&str] = &["vllm:num_preemptions_total"];

impl Gauges {
    /// Counts add up over label sets (one per engine of a data-parallel server); usage takes the fullest.
    pub fn read(samples: &Samples) -> Gauges {
        let first = |names: &[&str], f: fn(&Samples, &str) -> Option<f64>| {
            names.iter().find_map(|n| f(samples, n))
        };
        Gauges {
            running: first(RUNNING, total),
            waiting: first(WAITING, total),
            kv_usage: first(KV_USAGE, largest),
            preemptions: first(PREEMPTIONS, total),
        }
    }
}

/// How one engine family's counters give a hit rate: hits / (queries [+ hits]).
struct CacheRule {
    hits: &'static str,
    queries: &'static str,
    /// llama.cpp's prompt counter excludes cached tokens, so the denominator is hits + that counter.
    queries_exclude_hits: bool,
}

const VLLM: CacheRule = CacheRule {
    hits: "vllm:prefix_cache_hits_total",
    queries: "vllm:prefix_cache_queries_total",
    queries_exclude_hits: false,
};
const SGLANG: CacheRule = CacheRule {
    hits: "sglang:cached_tokens_total",
    queries: "sglang:prompt_tokens_total",
    queries_exclude_hits: false,
};
const LLAMA_CPP: CacheRule = CacheRule {
    hits: "llamacpp:prompt_tokens_cached_total",
    queries: "llamacpp:prompt_tokens_total",
    queries_exclude_hits: true,
};

fn rules(counters: crate::engine::CacheCounters) -> &'static [CacheRule] {
    use crate::engine::CacheCounters as C;
    match counters {
        C::Vllm => std::slice::from_ref(&VLLM),
        C::Sglang => std::slice::from_ref(&SGLANG),
        C::LlamaCpp => std::slice::from_ref(&LLAMA_CPP),
        C::Any => &[VLLM, SGLANG, LLAMA_CPP],
    }
}

impl ServerMetrics {
    /// Deltas between two scrapes and the prefix-cache hit rate of the interval. The first rule whose
    /// counters exist in both scrapes decides; a rule whose denominator did not move gives no rate
    /// (nothing was prefilled, so there is no rate to report) and says so in `note`.
    pub fn between(
        before: &Samples,
        after: &Samples,
        counters: crate::engine::CacheCounters,
    ) -> ServerMetrics {
        let mut metrics = ServerMetrics::default();
        for (key, a) in after {
            if let Some(b) = before.get(key) {
                let d = a - b;
                if d != 0.0 && d.is_finite() {
                    metrics.deltas.insert(key.clone(), d);
                }
            }
        }
        let delta = |name| Some(total(after, name)? - total(before, name)?);
        for rule in rules(counters) {
            let (Some(hits), Some(queries)) = (delta(rule.hits), delta(rule.queries)) else {
                continue;
            };
            let denominator = if rule.queries_exclude_hits {
                hits + queries
            } else {
                queries
            };
            let source = if rule.queries_exclude_hits {
                format!("{0}/({0}+{1})", rule.hits, rule.queries)
            } else {
                format!("{}/{}", rule.hits, rule.queries)
            };
            metrics.prefix_cache_source = Some(source);
            if denominator > 0.0 {
                metrics.prefix_cache_hit_rate = Some((hits / denominator).clamp(0.0, 1.0));
            } else {
                metrics.note =
                    Some("the prompt-token counter did not move during the point".into());
            }
            return metrics;
        }
        metrics.note = Some("the server exposes no prefix-cache counters we know".into());
        metrics
    }

    /// Metrics that could not be taken, with the reason.
    pub fn missing(note: impl Into<String>) -> ServerMetrics {
        ServerMetrics {
            note: Some(note.into()),
            ..ServerMetrics::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CacheCounters;

    const VLLM_BEFORE: &str = r#"# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 100.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a b"} 3
"#;
    const VLLM_AFTER: &str = r#"vllm:prefix_cache_queries_total{engine="0",model_name="m"} 5000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 3100.0
vllm:prefix_cache_hits_total_other 7
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a b"} 7
"#;

    #[test]
    fn parses_names_with_colons_and_labels_with_spaces() {
        let s = parse(VLLM_BEFORE);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[r#"vllm:prefix_cache_hits_total{engine="0",model_name="m"}"#],
            100.0
        );
        assert_eq!(
            s[r#"vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a b"}"#],
            3.0
        );
        assert_eq!(parse("x 1 1700000000\nbad line\ny NaNish")["x"], 1.0);
    }

    #[test]
    fn vllm_hit_rate_from_deltas_not_totals() {
        let m =
            ServerMetrics::between(&parse(VLLM_BEFORE), &parse(VLLM_AFTER), CacheCounters::Vllm);
        // (3100 - 100) / (5000 - 1000), not 3100 / 5000.
        assert_eq!(m.prefix_cache_hit_rate, Some(0.75));
        assert!(m.prefix_cache_source.unwrap().starts_with("vllm:"));
        // Unchanged series are left out; changed ones are kept raw.
        assert_eq!(m.deltas.len(), 3);
        assert!(!m.deltas.keys().any(|k| k.contains("running")));
        // `Any` finds the vLLM counters too.
        let any =
            ServerMetrics::between(&parse(VLLM_BEFORE), &parse(VLLM_AFTER), CacheCounters::Any);
        assert_eq!(any.prefix_cache_hit_rate, Some(0.75));
    }

    #[test]
    fn llama_cpp_denominator_adds_cached_tokens() {
        let before =
            parse("llamacpp:prompt_tokens_total 0\nllamacpp:prompt_tokens_cached_total 0\n");
        let after =
            parse("llamacpp:prompt_tokens_total 300\nllamacpp:prompt_tokens_cached_total 100\n");
        let m = ServerMetrics::between(&before, &after, CacheCounters::Any);
        assert_eq!(m.prefix_cache_hit_rate, Some(0.25));
    }

    #[test]
    fn gauges_under_each_engines_names() {
        let vllm = parse(
            "vllm:num_requests_running{engine=\"0\"} 3\nvllm:num_requests_running{engine=\"1\"} 2\n\
             vllm:num_requests_waiting{engine=\"0\"} 7\nvllm:gpu_cache_usage_perc{engine=\"0\"} 0.5\n\
             vllm:gpu_cache_usage_perc{engine=\"1\"} 0.9\nvllm:num_preemptions_total 4\n",
        );
        assert_eq!(
            Gauges::read(&vllm),
            Gauges {
                running: Some(5.0),
                waiting: Some(7.0),
                kv_usage: Some(0.9),
                preemptions: Some(4.0),
            }
        );
        let sglang =
            parse("sglang:num_running_reqs 1\nsglang:num_queue_reqs 0\nsglang:token_usage 0.25\n");
        let g = Gauges::read(&sglang);
        assert_eq!(
            (g.running, g.waiting, g.kv_usage),
            (Some(1.0), Some(0.0), Some(0.25))
        );
        assert_eq!(g.preemptions, None, "not exposed: absent, not 0");
        let llama = parse("llamacpp:requests_processing 2\nllamacpp:kv_cache_usage_ratio 0.1\n");
        let g = Gauges::read(&llama);
        assert_eq!(
            (g.running, g.waiting, g.kv_usage),
            (Some(2.0), None, Some(0.1))
        );
    }

    #[test]
    fn sglang_and_absent_counters() {
        let before = parse("sglang:cached_tokens_total 10\nsglang:prompt_tokens_total 100\n");
        let after = parse("sglang:cached_tokens_total 10\nsglang:prompt_tokens_total 100\n");
        let idle = ServerMetrics::between(&before, &after, CacheCounters::Sglang);
        assert_eq!(idle.prefix_cache_hit_rate, None);
        assert!(idle.note.is_some());
        let none = ServerMetrics::between(&before, &after, CacheCounters::Vllm);
        assert_eq!(none.prefix_cache_source, None);
        assert!(none.note.unwrap().contains("no prefix-cache counters"));
    }
}
