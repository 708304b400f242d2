//! The experiment file exactly as written: serde types with every field optional, so that one pass can
//! collect all problems before [`super::validate`] turns them into domain types. Nothing outside
//! `experiment` sees these types.

use indexmap::IndexMap;
use serde::Deserialize;

/// Keys of each table, for unknown-key detection with "did you mean". Keep in step with the structs.
pub const TOP_KEYS: &[&str] = &[
    "title",
    "results_dir",
    "hardware",
    "environment",
    "engines",
    "models",
    "matrix",
    "load",
    "report",
    "cost",
    "executor",
];
pub const ENGINE_KEYS: &[&str] = &[
    "preset",
    "command",
    "shell",
    "env",
    "workdir",
    "port",
    "url",
    "ready_path",
    "ready_timeout",
    "smoke_test",
    "stop_grace",
    "metrics_path",
    "version_command",
    "gpu_release_timeout",
    "api_key",
];
pub const MODEL_KEYS: &[&str] = &[
    "name",
    "input_tokens",
    "output_tokens",
    "tokenizer",
    "token_id_range",
    "served_model_name",
    "context_headroom",
    "precisions",
    "load",
];
pub const PRECISION_KEYS: &[&str] = &["path", "name"];
pub const REPORT_KEYS: &[&str] = &[
    "summary_template",
    "record_template",
    "prefix_cache_warn_above",
];

#[derive(Debug, Deserialize, Default)]
pub struct RawExperiment {
    pub title: Option<String>,
    pub results_dir: Option<String>,
    pub hardware: Option<toml::Table>,
    pub environment: Option<toml::Table>,
    #[serde(default)]
    pub engines: IndexMap<String, RawEngine>,
    #[serde(default)]
    pub models: IndexMap<String, RawModel>,
    /// Axes (`model = [...]`, any variable) plus the `include` and `exclude` arrays.
    pub matrix: Option<IndexMap<String, toml::Value>>,
    /// Load settings; checked key by key in `load_settings`, because matrix variables can override them.
    pub load: Option<IndexMap<String, toml::Value>>,
    pub report: Option<RawReport>,
    pub cost: Option<super::cost::RawCost>,
    pub executor: Option<super::executor::RawExecutor>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawEngine {
    pub preset: Option<String>,
    pub command: Option<RawCommand>,
    pub shell: Option<bool>,
    pub env: Option<IndexMap<String, String>>,
    pub workdir: Option<String>,
    pub port: Option<u16>,
    pub url: Option<String>,
    pub ready_path: Option<String>,
    pub ready_timeout: Option<String>,
    pub smoke_test: Option<bool>,
    pub stop_grace: Option<String>,
    pub metrics_path: Option<String>,
    pub version_command: Option<String>,
    pub gpu_release_timeout: Option<String>,
    pub api_key: Option<String>,
}

/// A command is one string (split like a shell would, without running one) or an argv array.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawCommand {
    Line(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
pub struct RawModel {
    pub name: Option<String>,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub tokenizer: Option<String>,
    pub token_id_range: Option<[u32; 2]>,
    pub served_model_name: Option<String>,
    pub context_headroom: Option<u32>,
    #[serde(default)]
    pub precisions: IndexMap<String, RawPrecision>,
    pub load: Option<IndexMap<String, toml::Value>>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawPrecision {
    pub path: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawReport {
    pub summary_template: Option<String>,
    pub record_template: Option<String>,
    pub prefix_cache_warn_above: Option<f64>,
}
