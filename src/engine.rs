//! Engine presets: what each inference server needs from us. The ready and metrics endpoints, the default
//! command, how long it may take to load, how to ask for an exact output length (its request dialect) and
//! which prefix-cache counters it exposes. An experiment file can override every field but the dialect.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Vllm,
    Sglang,
    LlamaCpp,
    Sim,
    /// No preset: a generic OpenAI-compatible server that is ready on `/health`.
    Generic,
}

/// How a server must be asked for exactly N output tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dialect {
    /// Send `min_tokens` = N (vLLM, SGLang); llama.cpp ignores it.
    pub min_tokens: bool,
    /// Send `ignore_eos: true`.
    pub ignore_eos: bool,
}

/// Which Prometheus counters give the prefix-cache hit rate of a load point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheCounters {
    /// `vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total` (tokens).
    Vllm,
    /// `sglang:cached_tokens_total` / `sglang:prompt_tokens_total`.
    Sglang,
    /// `llamacpp:prompt_tokens_cached_total` / (that + `llamacpp:prompt_tokens_total`).
    LlamaCpp,
    /// Try all of the above, in that order.
    Any,
}

/// Defaults a preset supplies; every field can be overridden in `[engines.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub command: Option<&'static str>,
    pub ready_path: &'static str,
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    pub metrics_path: Option<&'static str>,
    pub version_command: Option<&'static str>,
    pub smoke_test: bool,
    pub dialect: Dialect,
    pub cache_counters: CacheCounters,
}

const MIN: u64 = 60;

impl Preset {
    pub const NAMES: &'static [&'static str] = &["vllm", "sglang", "llama-cpp", "sim"];

    pub fn parse(name: &str) -> Option<Preset> {
        Some(match name {
            "vllm" => Preset::Vllm,
            "sglang" => Preset::Sglang,
            "llama-cpp" => Preset::LlamaCpp,
            "sim" => Preset::Sim,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Vllm => "vllm",
            Preset::Sglang => "sglang",
            Preset::LlamaCpp => "llama-cpp",
            Preset::Sim => "sim",
            Preset::Generic => "generic",
        }
    }

    pub fn defaults(self) -> Defaults {
        let strict = Dialect {
            min_tokens: true,
            ignore_eos: true,
        };
        match self {
            // vLLM only listens once weights are loaded and graphs captured: model loads take many minutes.
            Preset::Vllm => Defaults {
                command: Some(
                    "vllm serve {{ model.path }} --host 127.0.0.1 --port {{ port }} --max-model-len {{ max_model_len }}",
                ),
                ready_path: "/health",
                ready_timeout: Duration::from_secs(40 * MIN),
                stop_grace: Duration::from_secs(60),
                metrics_path: Some("/metrics"),
                version_command: Some("vllm --version"),
                smoke_test: true,
                dialect: strict,
                cache_counters: CacheCounters::Vllm,
            },
            // SGLang: /health is 503 until its warm-up generation succeeds (/v1/models answers earlier, so
            // never use it); /metrics exists only with --enable-metrics; SIGTERM drains without a bound.
            Preset::Sglang => Defaults {
                command: Some(
                    "python3 -m sglang.launch_server --model-path {{ model.path }} --host 127.0.0.1 --port {{ port }} --context-length {{ max_model_len }} --enable-metrics",
                ),
                ready_path: "/health",
                ready_timeout: Duration::from_secs(40 * MIN),
                stop_grace: Duration::from_secs(60),
                metrics_path: Some("/metrics"),
                version_command: Some("python3 -c \"import sglang; print(sglang.__version__)\""),
                smoke_test: true,
                dialect: strict,
                cache_counters: CacheCounters::Sglang,
            },
            // llama.cpp ignores min_tokens: ignore_eos alone fixes the length.
            Preset::LlamaCpp => Defaults {
                command: Some(
                    "llama-server -m {{ model.path }} --host 127.0.0.1 --port {{ port }} --ctx-size {{ max_model_len }} --metrics",
                ),
                ready_path: "/health",
                ready_timeout: Duration::from_secs(10 * MIN),
                stop_grace: Duration::from_secs(10),
                metrics_path: Some("/metrics"),
                version_command: Some("llama-server --version"),
                smoke_test: true,
                dialect: Dialect {
                    min_tokens: false,
                    ignore_eos: true,
                },
                cache_counters: CacheCounters::LlamaCpp,
            },
            Preset::Sim => Defaults {
                command: Some(
                    "{{ runner }} sim --port {{ port }} --max-model-len {{ max_model_len }}",
                ),
                ready_path: "/health",
                ready_timeout: Duration::from_secs(MIN),
                stop_grace: Duration::from_secs(5),
                metrics_path: Some("/metrics"),
                version_command: Some("{{ runner }} --version"),
                smoke_test: true,
                dialect: strict,
                cache_counters: CacheCounters::Vllm,
            },
            Preset::Generic => Defaults {
                command: None,
                ready_path: "/health",
                ready_timeout: Duration::from_secs(30 * MIN),
                stop_grace: Duration::from_secs(30),
                metrics_path: None,
                version_command: None,
                smoke_test: false,
                dialect: strict,
                cache_counters: CacheCounters::Any,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Preset::NAMES {
            assert_eq!(Preset::parse(name).unwrap().name(), *name);
        }
        assert_eq!(Preset::parse("vLLM"), None);
    }

    #[test]
    fn sglang_default_command_enables_metrics() {
        let d = Preset::Sglang.defaults();
        assert!(d.command.unwrap().contains("--enable-metrics"));
        assert_eq!(d.ready_path, "/health");
    }

    #[test]
    fn llama_cpp_does_not_rely_on_min_tokens() {
        assert!(!Preset::LlamaCpp.defaults().dialect.min_tokens);
        assert!(Preset::LlamaCpp.defaults().dialect.ignore_eos);
    }
}
