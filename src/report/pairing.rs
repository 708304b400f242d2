//! Which servers a ratio table may compare: FP8 against NVFP4 (or one engine against another) only where
//! the two servers agree on everything that is not part of the precision's (or engine's) own setup.
//!
//! The rule, for a comparison across precisions (across engines: read "engine" for "precision" and the
//! other way round). Servers are grouped by model and engine; within a group, a server variable is
//! **tied to the precision** when
//! 1. an `[[matrix.include]]` entry that names a precision (and, if it names a model or an engine, this
//!    group's) sets it: the file says it belongs to that precision's setup; or
//! 2. its value is a function of the precision that is not constant: no two servers of the same precision
//!    differ in it (a missing variable counts as a value of its own), and two precisions do.
//!
//! Two servers of a group with different precisions pair when they agree on every variable that is not
//! tied. Tied variables are listed beside the table ("NVFP4：decode_step_ms=4；FP8：decode_step_ms=5"),
//! so the reader sees what else changed with the precision. A variable that varies within one precision
//! (e.g. two `gpu_memory_utilization` values) is never tied: servers pair only at equal values.
//!
//! Pure functions over plain data; the base of each group is its first precision (engine) in plan order.

/// What a comparison goes across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Across {
    Precision,
    Engine,
}

/// One server configuration, as pairing sees it.
#[derive(Debug, Clone)]
pub struct Server {
    pub model: String,
    pub precision: String,
    pub engine: String,
    /// Server variables other than model, precision and engine, `(name, value as printed)`.
    pub vars: Vec<(String, String)>,
}

/// An `[[matrix.include]]` entry: the axes it names and the variables it sets.
#[derive(Debug, Clone, Default)]
pub struct Include {
    pub model: Option<String>,
    pub precision: Option<String>,
    pub engine: Option<String>,
    /// Variables it sets (keys that are not matrix lists, which it would match on instead).
    pub sets: Vec<String>,
}

/// Two servers to compare (indices into the slice given to [`pairs`]) and the variables tied to the
/// compared axis that either of them has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub base: usize,
    pub other: usize,
    pub tied: Vec<String>,
}

impl Server {
    fn side(&self, across: Across) -> &str {
        match across {
            Across::Precision => &self.precision,
            Across::Engine => &self.engine,
        }
    }

    /// The group key: model and the axis not compared.
    fn group(&self, across: Across) -> (&str, &str) {
        match across {
            Across::Precision => (&self.model, &self.engine),
            Across::Engine => (&self.model, &self.precision),
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Include {
    /// Whether this entry is keyed on the compared axis and applies to `group`'s servers.
    fn keys_side_of(&self, across: Across, group: &Server) -> bool {
        let fits =
            |named: &Option<String>, value: &str| named.as_deref().is_none_or(|n| n == value);
        match across {
            Across::Precision => {
                self.precision.is_some()
                    && fits(&self.model, &group.model)
                    && fits(&self.engine, &group.engine)
            }
            Across::Engine => {
                self.engine.is_some()
                    && fits(&self.model, &group.model)
                    && fits(&self.precision, &group.precision)
            }
        }
    }
}

/// The variables of `group` (servers sharing model and the other axis) tied to the compared axis.
pub fn tied(group: &[&Server], across: Across, includes: &[Include]) -> Vec<String> {
    let Some(first) = group.first() else {
        return Vec::new();
    };
    let mut names: Vec<&str> = Vec::new();
    for s in group {
        for (k, _) in &s.vars {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    names
        .into_iter()
        .filter(|name| {
            let by_include = includes
                .iter()
                .any(|i| i.keys_side_of(across, first) && i.sets.iter().any(|s| s == name));
            by_include || function_of_side(group, across, name)
        })
        .map(str::to_string)
        .collect()
}

/// True when `name` has one value per side and not the same value on every side.
fn function_of_side(group: &[&Server], across: Across, name: &str) -> bool {
    let mut per_side: Vec<(&str, Option<&str>)> = Vec::new();
    for s in group {
        let value = s.var(name);
        match per_side.iter().find(|(side, _)| *side == s.side(across)) {
            Some((_, seen)) if *seen != value => return false,
            Some(_) => {}
            None => per_side.push((s.side(across), value)),
        }
    }
    per_side.iter().any(|(_, v)| *v != per_side[0].1)
}

/// Every pair to compare: within each group, each server of the group's first side against each server of
/// another side that agrees with it on all untied variables. In plan order.
pub fn pairs(servers: &[Server], across: Across, includes: &[Include]) -> Vec<Pair> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for s in servers {
        if !groups.contains(&s.group(across)) {
            groups.push(s.group(across));
        }
    }
    let mut out = Vec::new();
    for key in groups {
        let members: Vec<usize> = (0..servers.len())
            .filter(|&i| servers[i].group(across) == key)
            .collect();
        let group: Vec<&Server> = members.iter().map(|&i| &servers[i]).collect();
        let tied = tied(&group, across, includes);
        let base_side = group[0].side(across);
        let agrees = |a: &Server, b: &Server| {
            let mut names = a.vars.iter().chain(&b.vars).map(|(k, _)| k.as_str());
            names.all(|k| tied.iter().any(|t| t == k) || a.var(k) == b.var(k))
        };
        for &b in members
            .iter()
            .filter(|&&i| servers[i].side(across) == base_side)
        {
            for &o in members
                .iter()
                .filter(|&&i| servers[i].side(across) != base_side)
            {
                if agrees(&servers[b], &servers[o]) {
                    let listed = tied
                        .iter()
                        .filter(|t| servers[b].var(t).is_some() || servers[o].var(t).is_some())
                        .cloned()
                        .collect();
                    out.push(Pair {
                        base: b,
                        other: o,
                        tied: listed,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(model: &str, precision: &str, engine: &str, vars: &[(&str, &str)]) -> Server {
        Server {
            model: model.into(),
            precision: precision.into(),
            engine: engine.into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn include(precision: Option<&str>, engine: Option<&str>, sets: &[&str]) -> Include {
        Include {
            model: None,
            precision: precision.map(str::to_string),
            engine: engine.map(str::to_string),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The demo: each model × precision gets its own simulated speeds through an include.
    #[test]
    fn the_demo_speeds_are_tied_to_precision_and_the_servers_pair() {
        let servers = vec![
            server(
                "14b",
                "fp8",
                "sim",
                &[("decode_step_ms", "5"), ("prefill_tokens_per_s", "40000")],
            ),
            server(
                "14b",
                "nvfp4",
                "sim",
                &[("decode_step_ms", "4"), ("prefill_tokens_per_s", "50000")],
            ),
            server(
                "32b",
                "fp8",
                "sim",
                &[("decode_step_ms", "9"), ("prefill_tokens_per_s", "20000")],
            ),
            server(
                "32b",
                "nvfp4",
                "sim",
                &[("decode_step_ms", "7"), ("prefill_tokens_per_s", "26000")],
            ),
        ];
        let speeds = ["decode_step_ms", "prefill_tokens_per_s"];
        let tied_speeds = vec![speeds[0].to_string(), speeds[1].to_string()];
        // By the value rule alone (no include information)…
        let got = pairs(&servers, Across::Precision, &[]);
        assert_eq!(
            got,
            vec![
                Pair {
                    base: 0,
                    other: 1,
                    tied: tied_speeds.clone()
                },
                Pair {
                    base: 2,
                    other: 3,
                    tied: tied_speeds.clone()
                }
            ]
        );
        // …and by the include rule, which the demo's includes (model + precision) satisfy too.
        let includes: Vec<Include> = ["fp8", "nvfp4"]
            .iter()
            .map(|p| Include {
                model: Some("14b".into()),
                ..include(Some(p), None, &speeds)
            })
            .collect();
        let group: Vec<&Server> = servers[..2].iter().collect();
        assert_eq!(tied(&group, Across::Precision, &includes), tied_speeds);
        // One engine only: nothing to compare across engines.
        assert!(pairs(&servers, Across::Engine, &includes).is_empty());
    }

    /// The seed file's shape: SGLang's FP8 servers use an FP8 KV cache, set for engine × precision.
    #[test]
    fn a_variable_set_for_engine_and_precision_is_tied_to_both() {
        let servers = vec![
            server("14b", "fp8", "vllm", &[("gmu", "0.90")]),
            server("14b", "nvfp4", "vllm", &[("gmu", "0.90")]),
            server(
                "14b",
                "fp8",
                "sglang",
                &[("gmu", "0.90"), ("kv_cache_dtype", "fp8_e5m2")],
            ),
            server("14b", "nvfp4", "sglang", &[("gmu", "0.90")]),
        ];
        let includes = [include(Some("fp8"), Some("sglang"), &["kv_cache_dtype"])];
        for rules in [&includes[..], &[]] {
            let by_precision = pairs(&servers, Across::Precision, rules);
            assert_eq!(
                by_precision,
                vec![
                    Pair {
                        base: 0,
                        other: 1,
                        tied: vec![]
                    },
                    Pair {
                        base: 2,
                        other: 3,
                        tied: vec!["kv_cache_dtype".into()]
                    }
                ]
            );
            let by_engine = pairs(&servers, Across::Engine, rules);
            assert_eq!(
                by_engine,
                vec![
                    Pair {
                        base: 0,
                        other: 2,
                        tied: vec!["kv_cache_dtype".into()]
                    },
                    Pair {
                        base: 1,
                        other: 3,
                        tied: vec![]
                    }
                ]
            );
        }
    }

    #[test]
    fn a_variable_swept_within_a_precision_is_never_tied() {
        // FP8 at two memory fractions, NVFP4 at one: only the equal ones pair.
        let servers = vec![
            server("m", "fp8", "vllm", &[("gmu", "0.85")]),
            server("m", "fp8", "vllm", &[("gmu", "0.90")]),
            server("m", "nvfp4", "vllm", &[("gmu", "0.90")]),
        ];
        let got = pairs(&servers, Across::Precision, &[]);
        assert_eq!(
            got,
            vec![Pair {
                base: 1,
                other: 2,
                tied: vec![]
            }]
        );
        // Both precisions at both fractions: two pairs, each at equal values.
        let servers = vec![
            server("m", "fp8", "vllm", &[("gmu", "0.85")]),
            server("m", "fp8", "vllm", &[("gmu", "0.90")]),
            server("m", "nvfp4", "vllm", &[("gmu", "0.85")]),
            server("m", "nvfp4", "vllm", &[("gmu", "0.90")]),
        ];
        let got: Vec<(usize, usize)> = pairs(&servers, Across::Precision, &[])
            .into_iter()
            .map(|p| (p.base, p.other))
            .collect();
        assert_eq!(got, [(0, 2), (1, 3)]);
    }

    #[test]
    fn an_include_keyed_on_precision_ties_even_an_equal_or_varying_value() {
        // Both precisions get the same flag through their own includes: constant, yet part of each
        // precision's setup, so it is listed.
        let servers = vec![
            server("m", "fp8", "vllm", &[("flag", "x")]),
            server("m", "nvfp4", "vllm", &[("flag", "x")]),
        ];
        let includes = [
            include(Some("fp8"), None, &["flag"]),
            include(Some("nvfp4"), None, &["flag"]),
        ];
        assert_eq!(
            pairs(&servers, Across::Precision, &includes)[0].tied,
            ["flag"]
        );
        assert!(pairs(&servers, Across::Precision, &[])[0].tied.is_empty());
        // An include for another engine does not apply to this group.
        let other_engine = [include(Some("fp8"), Some("sglang"), &["flag"])];
        assert!(
            pairs(&servers, Across::Precision, &other_engine)[0]
                .tied
                .is_empty()
        );
        // A value that differs within a precision is not a function of it; an include can still tie it
        // (per-precision flags set alongside a swept list), and then servers pair on the list alone.
        let servers = vec![
            server("m", "fp8", "vllm", &[("seqs", "64"), ("flag", "a")]),
            server("m", "fp8", "vllm", &[("seqs", "128"), ("flag", "b")]),
            server("m", "nvfp4", "vllm", &[("seqs", "64"), ("flag", "c")]),
        ];
        assert!(pairs(&servers, Across::Precision, &[]).is_empty());
        let includes = [include(Some("fp8"), None, &["flag"])];
        assert_eq!(
            pairs(&servers, Across::Precision, &includes),
            vec![Pair {
                base: 0,
                other: 2,
                tied: vec!["flag".into()]
            }]
        );
    }
}
