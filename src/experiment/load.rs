//! Load settings: how each load point is driven. They come in layers (`[load]`, then `[models.ID.load]`,
//! then matrix variables of the same name, which win) and are resolved per cell into a [`LoadSpec`].

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use super::expr::Expr;
use super::scalar::Scalar;

/// Keys allowed in `[load]`, `[models.ID.load]`, and as matrix variables that vary the load.
pub const LOAD_KEYS: &[&str] = &[
    "requests",
    "warmup",
    "max_inflight",
    "request_rate",
    "prompt",
    "shared_prefix_tokens",
    "timeout",
    "seed",
    "api",
    "slo_ttft",
    "slo_tpot",
    "slo_e2e",
    "save_prompts",
    "connections",
    "repeats",
];

/// Default for `requests`: three requests per concurrent stream, at least two (the seed campaign's rule).
pub const DEFAULT_REQUESTS: &str = "max(2, 3 * concurrency)";

/// Bounds that catch an extra digit before it becomes a week-long point: measured requests per point,
/// warm-up requests, the in-flight cap, and the Poisson rate (below the lowest rate, the gaps between
/// arrivals would outgrow any clock).
pub const MAX_REQUESTS: i64 = 1_000_000;
pub const MAX_WARMUP: i64 = 100_000;
pub const MAX_INFLIGHT: i64 = 100_000;
pub const RATE_RANGE: (f64, f64) = (0.001, 1_000_000.0);
/// The most times one load point may be measured (`repeats`).
pub const MAX_REPEATS: i64 = 100;
/// The longest duration any setting takes (timeouts included): a week.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything the load generator needs for one load point, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSpec {
    /// Closed-loop concurrency: this many requests in flight at once.
    pub concurrency: u32,
    /// Measured requests (warm-up excluded).
    pub requests: u32,
    /// Warm-up requests sent first and excluded from every statistic.
    pub warmup: u32,
    /// An explicit client-side cap on requests in flight (recorded; the seed once used 24).
    pub max_inflight: Option<u32>,
    /// Requests per second with Poisson arrivals; latency is then measured from the intended send time.
    pub request_rate: Option<f64>,
    pub prompt: PromptMode,
    pub input_tokens: u32,
    pub output_tokens: u32,
    #[serde(serialize_with = "human")]
    pub timeout: Duration,
    /// Seed of the prompt generator: the same seed sends the same prompts.
    pub seed: u64,
    pub api: Api,
    pub slo: Slo,
    /// Where prompt token ids come from.
    pub vocab: Vocab,
    /// Write every prompt of the point to `prompts.jsonl` beside its requests (left out of the settings
    /// when off, so turning it on changes no existing hash but its own cells').
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub save_prompts: bool,
    /// Whether the point's connections are opened before its measured phase (left out of the settings
    /// when warm, the default, so that adding the setting changed no existing hash).
    #[serde(skip_serializing_if = "Connections::is_warm")]
    pub connections: Connections,
    /// How many times the point is measured on the same warm server, each time with its own warm-up and
    /// prompts (1: once). Left out of the settings when 1, so a file without `repeats` keeps its hashes.
    #[serde(skip_serializing_if = "is_one")]
    pub repeats: u32,
    /// Which of those measurements this spec drives, from 1: 1 in a cell's plan, set per repeat by
    /// [`crate::plan::ServerPlan::repeat_of`]. Left out when 1, so the first repeat sends the prompts the
    /// point measured once sends; every later one salts its prompts with its number, so no repeat is
    /// served from the prefix cache an earlier one filled.
    #[serde(skip_serializing_if = "is_one")]
    pub repeat: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// When a load point opens its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connections {
    /// Before the measured phase, as many as it will use at once: no measured request pays for a
    /// connect (one that still has to is counted).
    #[default]
    Warm,
    /// When a request needs one and none is idle: connects are part of what is measured.
    Cold,
}

impl Connections {
    pub fn is_warm(&self) -> bool {
        *self == Connections::Warm
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum PromptMode {
    /// Every request's prompt is different from its first token on, so the prefix cache cannot serve it.
    Unique,
    /// Every request starts with the same `tokens` tokens (a common system prompt); the rest is unique.
    SharedPrefix { tokens: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    Completions,
    Chat,
}

/// Optional service-level objectives; a request meeting all that are set counts towards goodput.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Slo {
    #[serde(serialize_with = "human_opt")]
    pub ttft: Option<Duration>,
    #[serde(serialize_with = "human_opt")]
    pub tpot: Option<Duration>,
    #[serde(serialize_with = "human_opt")]
    pub e2e: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vocab {
    /// The model's `tokenizer.json`: ids are drawn from its vocabulary without special tokens.
    pub tokenizer: Option<PathBuf>,
    /// Otherwise ids are drawn uniformly from this half-open range.
    pub id_range: [u32; 2],
}

pub fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn human_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => human(d, s),
        None => s.serialize_none(),
    }
}

/// One layer's value for a load key, with the key path where it was written (for error positions).
#[derive(Debug, Clone)]
pub struct Layered {
    pub value: Scalar,
    pub origin: Vec<String>,
}

/// A problem with one load key: its origin path and the message.
pub type LoadProblem = (Vec<String>, String, Option<String>);

/// The per-model facts a load point needs.
pub struct Workload<'a> {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub vocab: &'a Vocab,
}

/// Resolves one cell's load settings from the merged layers. All problems are returned, not the first.
pub fn resolve(
    concurrency: u32,
    layers: &IndexMap<String, Layered>,
    workload: &Workload,
) -> Result<LoadSpec, Vec<LoadProblem>> {
    let mut problems: Vec<LoadProblem> = Vec::new();
    let mut bad = |l: &Layered, msg: String, help: Option<String>| {
        problems.push((l.origin.clone(), msg, help))
    };

    let int = |key: &str,
               (min, max): (i64, i64),
               bad: &mut dyn FnMut(&Layered, String, Option<String>)|
     -> Option<u32> {
        let l = layers.get(key)?;
        match &l.value {
            Scalar::Int(n) if (min..=max).contains(n) => u32::try_from(*n).ok(),
            Scalar::Int(n) => {
                bad(
                    l,
                    format!("{n} is out of range"),
                    Some(format!("use a whole number from {min} to {max}")),
                );
                None
            }
            other => {
                bad(
                    l,
                    format!("expected a whole number, found {}", other.kind()),
                    None,
                );
                None
            }
        }
    };
    let duration =
        |key: &str, bad: &mut dyn FnMut(&Layered, String, Option<String>)| -> Option<Duration> {
            let l = layers.get(key)?;
            match &l.value {
                Scalar::Str(s) => match parse_duration(s) {
                    Ok(d) if d.is_zero() => {
                        bad(l, "must be longer than zero".into(), None);
                        None
                    }
                    Ok(d) => Some(d),
                    Err((message, help)) => {
                        bad(l, message, help);
                        None
                    }
                },
                other => {
                    bad(
                        l,
                        format!("expected a duration string, found {}", other.kind()),
                        Some(DURATION_HELP.into()),
                    );
                    None
                }
            }
        };

    let requests = match layers.get("requests") {
        None => Some(Expr::parse(DEFAULT_REQUESTS).expect("default parses")),
        Some(l) => match &l.value {
            Scalar::Int(n) => Some(Expr::constant(*n)),
            Scalar::Str(s) => match Expr::parse(s) {
                Ok(e) => Some(e),
                Err(e) => {
                    bad(
                        l,
                        format!("`{s}` is not a valid expression: {e}"),
                        Some(format!(
                            "write a number or an expression such as \"{DEFAULT_REQUESTS}\""
                        )),
                    );
                    None
                }
            },
            other => {
                bad(
                    l,
                    format!(
                        "expected a number or an expression string, found {}",
                        other.kind()
                    ),
                    None,
                );
                None
            }
        },
    };
    let requests = requests.and_then(|e| match e.eval(concurrency) {
        Ok(n) if (1..=MAX_REQUESTS).contains(&n) => u32::try_from(n).ok(),
        Ok(n) => {
            if let Some(l) = layers.get("requests") {
                bad(
                    l,
                    format!("`{e}` gives {n} requests at concurrency {concurrency}"),
                    Some(format!("it must give from 1 to {MAX_REQUESTS}")),
                );
            }
            None
        }
        Err(err) => {
            if let Some(l) = layers.get("requests") {
                bad(
                    l,
                    format!("`{e}` fails at concurrency {concurrency}: {err}"),
                    None,
                );
            }
            None
        }
    });

    let warmup = int("warmup", (0, MAX_WARMUP), &mut bad).unwrap_or(1);
    let repeats = int("repeats", (1, MAX_REPEATS), &mut bad).unwrap_or(1);
    let max_inflight = int("max_inflight", (1, MAX_INFLIGHT), &mut bad);
    // 0 means no shared prefix, so a matrix can compare `shared_prefix_tokens = [0, 512]`; its upper bound
    // is the prompt length, checked below.
    let shared = int("shared_prefix_tokens", (0, i64::from(u32::MAX)), &mut bad).filter(|n| *n > 0);
    let seed = match layers.get("seed") {
        None => 0,
        Some(l) => match &l.value {
            Scalar::Int(n) if *n >= 0 => *n as u64,
            other => {
                bad(
                    l,
                    format!("expected a non-negative whole number, found {other}"),
                    None,
                );
                0
            }
        },
    };
    let request_rate = layers
        .get("request_rate")
        .and_then(|l| match l.value.as_f64() {
            Some(r) if (RATE_RANGE.0..=RATE_RANGE.1).contains(&r) => Some(r),
            _ => {
                bad(
                    l,
                    format!("expected requests per second, found {}", l.value),
                    Some(format!(
                        "write a number from {} to {} (or remove it for a closed loop)",
                        RATE_RANGE.0, RATE_RANGE.1
                    )),
                );
                None
            }
        });
    let prompt = match layers.get("prompt") {
        None if shared.is_some() => Some(PromptMode::SharedPrefix {
            tokens: shared.unwrap_or(0),
        }),
        None => Some(PromptMode::Unique),
        Some(l) => match l.value.as_str() {
            Some("unique") => Some(PromptMode::Unique),
            Some("shared_prefix") => match shared {
                Some(tokens) => Some(PromptMode::SharedPrefix { tokens }),
                None => {
                    bad(
                        l,
                        "`shared_prefix` needs the prefix length".into(),
                        Some("add `shared_prefix_tokens = N` with N ≥ 1".into()),
                    );
                    None
                }
            },
            _ => {
                bad(
                    l,
                    format!("unknown prompt mode {}", l.value),
                    Some("use \"unique\" (default) or \"shared_prefix\"".into()),
                );
                None
            }
        },
    };
    if let (Some(PromptMode::SharedPrefix { tokens }), Some(l)) =
        (&prompt, layers.get("shared_prefix_tokens"))
        && *tokens >= workload.input_tokens
    {
        bad(
            l,
            format!(
                "a shared prefix of {tokens} tokens leaves nothing unique in a {}-token prompt",
                workload.input_tokens
            ),
            Some("use fewer tokens than the model's input_tokens".into()),
        );
    }
    if let (Some(PromptMode::Unique), Some(l)) = (&prompt, layers.get("shared_prefix_tokens"))
        && layers.contains_key("prompt")
        && shared.is_some()
    {
        bad(
            l,
            "is set but prompt = \"unique\"".into(),
            Some("remove it or set prompt = \"shared_prefix\"".into()),
        );
    }
    let api = match layers.get("api") {
        None => Some(Api::Completions),
        Some(l) => match l.value.as_str() {
            Some("completions") => Some(Api::Completions),
            Some("chat") => Some(Api::Chat),
            _ => {
                bad(
                    l,
                    format!("unknown api {}", l.value),
                    Some("use \"completions\" (default) or \"chat\"".into()),
                );
                None
            }
        },
    };
    let timeout = duration("timeout", &mut bad).unwrap_or(Duration::from_secs(600));
    let save_prompts = match layers.get("save_prompts") {
        None => false,
        Some(l) => match l.value {
            Scalar::Bool(b) => b,
            ref other => {
                bad(l, format!("expected true or false, found {other}"), None);
                false
            }
        },
    };
    let connections = match layers.get("connections") {
        None => Connections::Warm,
        Some(l) => match l.value.as_str() {
            Some("warm") => Connections::Warm,
            Some("cold") => Connections::Cold,
            _ => {
                bad(
                    l,
                    format!("unknown connections mode {}", l.value),
                    Some(
                        "use \"warm\" (default: opened before the measured phase) or \"cold\""
                            .into(),
                    ),
                );
                Connections::Warm
            }
        },
    };
    let slo = Slo {
        ttft: duration("slo_ttft", &mut bad),
        tpot: duration("slo_tpot", &mut bad),
        e2e: duration("slo_e2e", &mut bad),
    };

    match (problems.is_empty(), requests, prompt, api) {
        (true, Some(requests), Some(prompt), Some(api)) => Ok(LoadSpec {
            concurrency,
            requests,
            warmup,
            max_inflight,
            request_rate,
            prompt,
            input_tokens: workload.input_tokens,
            output_tokens: workload.output_tokens,
            timeout,
            seed,
            api,
            slo,
            vocab: workload.vocab.clone(),
            save_prompts,
            connections,
            repeats,
            repeat: 1,
        }),
        _ => Err(problems),
    }
}

pub const DURATION_HELP: &str = "write a duration such as \"90s\", \"30m\" or \"1h 30m\"";

/// `text` as a duration of at most [`MAX_DURATION`], or what is wrong with it and the help to show.
pub fn parse_duration(text: &str) -> Result<Duration, (String, Option<String>)> {
    match humantime::parse_duration(text) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err((
            format!("`{text}` is longer than a week"),
            Some(format!(
                "write at most \"{}\"",
                humantime::format_duration(MAX_DURATION)
            )),
        )),
        Err(e) => Err((
            format!("`{text}` is not a duration ({e})"),
            Some(DURATION_HELP.into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(pairs: &[(&str, Scalar)]) -> IndexMap<String, Layered> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Layered {
                        value: v.clone(),
                        origin: vec!["load".into(), k.to_string()],
                    },
                )
            })
            .collect()
    }

    const VOCAB: Vocab = Vocab {
        tokenizer: None,
        id_range: [100, 30000],
    };

    fn workload(input_tokens: u32, output_tokens: u32) -> Workload<'static> {
        Workload {
            input_tokens,
            output_tokens,
            vocab: &VOCAB,
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let w = workload(10000, 800);
        let spec = resolve(40, &layers(&[]), &w).unwrap();
        assert_eq!(spec.requests, 120);
        assert_eq!(spec.warmup, 1);
        assert_eq!(spec.prompt, PromptMode::Unique);
        assert_eq!(spec.max_inflight, None);
        assert_eq!(resolve(1, &layers(&[]), &w).unwrap().requests, 3);
    }

    #[test]
    fn all_problems_reported() {
        let w = workload(100, 8);
        let l = layers(&[
            ("requests", Scalar::Str("3 * concurency".into())),
            ("timeout", Scalar::Str("10 minutes-ish".into())),
            ("prompt", Scalar::Str("shared".into())),
            ("warmup", Scalar::Int(-1)),
        ]);
        let problems = resolve(4, &l, &w).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.0[1].as_str()).collect();
        assert_eq!(keys, ["requests", "warmup", "prompt", "timeout"]);
    }

    #[test]
    fn connections_are_warm_unless_asked_cold() {
        let w = workload(100, 8);
        assert_eq!(
            resolve(4, &layers(&[]), &w).unwrap().connections,
            Connections::Warm
        );
        let cold = resolve(
            4,
            &layers(&[("connections", Scalar::Str("cold".into()))]),
            &w,
        );
        assert_eq!(cold.unwrap().connections, Connections::Cold);
        let bad = resolve(
            4,
            &layers(&[("connections", Scalar::Str("hot".into()))]),
            &w,
        );
        let problems = bad.unwrap_err();
        assert_eq!(problems[0].0, ["load", "connections"]);
        assert!(problems[0].2.as_deref().unwrap().contains("\"cold\""));
        // Warm, the default, is left out of the settings: existing hashes stay as they were.
        let json = serde_json::to_value(resolve(4, &layers(&[]), &w).unwrap()).unwrap();
        assert!(json.get("connections").is_none());
        let json = serde_json::to_value(
            resolve(
                4,
                &layers(&[("connections", Scalar::Str("cold".into()))]),
                &w,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["connections"], "cold");
    }

    #[test]
    fn repeats_default_to_one_and_are_bounded() {
        let w = workload(100, 8);
        let spec = resolve(4, &layers(&[]), &w).unwrap();
        assert_eq!((spec.repeats, spec.repeat), (1, 1));
        let json = serde_json::to_value(&spec).unwrap();
        assert!(
            json.get("repeats").is_none() && json.get("repeat").is_none(),
            "a file without repeats keeps its settings (and hashes): {json}"
        );
        let spec = resolve(4, &layers(&[("repeats", Scalar::Int(3))]), &w).unwrap();
        assert_eq!(spec.repeats, 3);
        assert_eq!(serde_json::to_value(&spec).unwrap()["repeats"], 3);
        for bad in [Scalar::Int(0), Scalar::Int(101), Scalar::Str("3".into())] {
            let problems = resolve(4, &layers(&[("repeats", bad.clone())]), &w).unwrap_err();
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(problems[0].0, ["load", "repeats"], "located at the key");
        }
        let problems = resolve(4, &layers(&[("repeats", Scalar::Int(0))]), &w).unwrap_err();
        assert_eq!(problems[0].1, "0 is out of range");
        assert_eq!(
            problems[0].2.as_deref(),
            Some("use a whole number from 1 to 100")
        );
    }

    #[test]
    fn shared_prefix_must_leave_room() {
        let w = workload(100, 8);
        let l = layers(&[
            ("prompt", Scalar::Str("shared_prefix".into())),
            ("shared_prefix_tokens", Scalar::Int(100)),
        ]);
        assert!(
            resolve(4, &l, &w).unwrap_err()[0]
                .1
                .contains("leaves nothing unique")
        );
        let l = layers(&[("shared_prefix_tokens", Scalar::Int(60))]);
        assert_eq!(
            resolve(4, &l, &w).unwrap().prompt,
            PromptMode::SharedPrefix { tokens: 60 }
        );
    }
}
