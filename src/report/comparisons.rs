//! The report's comparison tables: each precision of a model against its first precision on the same
//! engine (精度对比), and each engine against the first engine that ran the same model and precision
//! (引擎对比). Which servers pair is [`super::pairing`]'s decision; each row is [`super::ratio::row`] of
//! two cells at the same concurrency.
//!
//! Invariants: a table exists only where both sides have at least one measured cell at a common
//! concurrency; the variables tied to the compared axis are listed with the table (its `setup`), and
//! every variable the two servers share is in its heading.

use super::caveat;
use super::format;
use super::pairing::{self, Across, Include};
use super::ratio::{self, RatioRow, Side};
use super::view::{self, Done, RatioTable};
use crate::experiment::{AXES, Experiment};
use crate::plan::{CellPlan, Plan, ServerPlan};

/// The ratio tables across `across`, in plan order.
pub fn tables(exp: &Experiment, plan: &Plan, done: &[Done], across: Across) -> Vec<RatioTable> {
    let servers: Vec<&ServerPlan> = plan
        .servers
        .iter()
        .filter(|s| exp.models.contains_key(&s.model))
        .collect();
    let plain: Vec<pairing::Server> = servers.iter().map(|s| plain(s)).collect();
    let mut out = Vec::new();
    for pair in pairing::pairs(&plain, across, &includes(exp)) {
        let (base, other) = (servers[pair.base], servers[pair.other]);
        let Some(model) = exp.models.get(&base.model) else {
            continue;
        };
        let label = |s: &ServerPlan| match across {
            Across::Precision => s.precision.to_uppercase(),
            Across::Engine => s.engine.clone(),
        };
        let (num, den) = (label(other), label(base));
        let rows = rows(exp, done, base, other, (&num, &den));
        if rows.is_empty() {
            continue;
        }
        let shared: Vec<String> = base
            .vars
            .iter()
            .filter(|(k, _)| !AXES.contains(&k.as_str()) && !pair.tied.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let heading = match across {
            Across::Precision => {
                let mut within = vec![base.engine.clone()];
                within.extend(shared);
                format!("{}：{num} / {den}（{}）", model.name, within.join("，"))
            }
            Across::Engine => {
                let precision = format::precision_labels(&base.precision).1;
                let within = if shared.is_empty() {
                    String::new()
                } else {
                    format!("（{}）", shared.join("，"))
                };
                format!("{} · {precision}：{num} / {den}{within}", model.name)
            }
        };
        let setup = if pair.tied.is_empty() {
            String::new()
        } else {
            [(other, &num), (base, &den)]
                .iter()
                .map(|(s, label)| format!("{label}：{}", tied_values(s, &pair.tied)))
                .collect::<Vec<_>>()
                .join("；")
        };
        out.push(RatioTable {
            model_id: model.id.clone(),
            heading,
            numerator: num,
            denominator: den,
            setup,
            rows,
        });
    }
    out
}

/// One row per concurrency of the base server that both servers measured. Several points at one
/// concurrency (a swept load setting) pair by equal load variables; a lone point at that concurrency on
/// the other side pairs anyway and the row says the load differs.
fn rows(
    exp: &Experiment,
    done: &[Done],
    base: &ServerPlan,
    other: &ServerPlan,
    (num, den): (&str, &str),
) -> Vec<RatioRow> {
    let threshold = exp.report.prefix_cache_warn_above;
    let measured = |server: &ServerPlan| -> Vec<Done> {
        done.iter()
            .filter(|(s, _, _)| s.id == server.id)
            .copied()
            .collect()
    };
    let (base_cells, other_cells) = (measured(base), measured(other));
    let mut ordered = base_cells.clone();
    ordered.sort_by_key(|(_, c, _)| c.load.concurrency);
    let mut out = Vec::new();
    for d in ordered {
        let c = d.1.load.concurrency;
        let same_c: Vec<Done> = other_cells
            .iter()
            .filter(|(_, cell, _)| cell.load.concurrency == c)
            .copied()
            .collect();
        let matched =
            same_c
                .iter()
                .find(|(_, cell, _)| same_vars(cell, d.1))
                .or(if same_c.len() == 1 {
                    same_c.first()
                } else {
                    None
                });
        let Some(&n) = matched else {
            continue;
        };
        let mut label = c.to_string();
        let base_peers: Vec<&CellPlan> = base_cells.iter().map(|(_, cell, _)| *cell).collect();
        for p in super::view::differing_point_vars(d.1, &base_peers) {
            label.push_str(&format!(" · {p}"));
        }
        let mut row = ratio::row(label, &side(num, n, threshold), &side(den, d, threshold));
        row.cost_out = super::cost::cost_ratio(n.2, d.2, exp.cost.as_ref());
        out.push(row);
    }
    out
}

fn side<'a>(label: &str, (_, cell, result): Done<'a>, threshold: f64) -> Side<'a> {
    Side {
        label: label.to_string(),
        result,
        caveats: caveat::of_cell(result, &view::caveat_context(cell, threshold)),
        load: view::load_remarks(cell, None).split_off(1),
    }
}

fn same_vars(a: &CellPlan, b: &CellPlan) -> bool {
    let text = |c: &CellPlan| {
        c.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    text(a) == text(b)
}

/// `decode_step_ms=4，prefill_tokens_per_s=50000` (a tied variable the server lacks: `kv_cache_dtype 未设置`).
fn tied_values(server: &ServerPlan, tied: &[String]) -> String {
    tied.iter()
        .map(|k| match server.vars.get(k) {
            Some(v) => format!("{k}={v}"),
            None => format!("{k} 未设置"),
        })
        .collect::<Vec<_>>()
        .join("，")
}

fn plain(s: &ServerPlan) -> pairing::Server {
    pairing::Server {
        model: s.model.clone(),
        precision: s.precision.clone(),
        engine: s.engine.clone(),
        vars: s
            .vars
            .iter()
            .filter(|(k, _)| !AXES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    }
}

/// The `[[matrix.include]]` entries as pairing reads them: the axes they name, the variables they set
/// (keys that are not matrix lists; a list key is one they match on).
fn includes(exp: &Experiment) -> Vec<Include> {
    let m = &exp.matrix;
    m.include
        .iter()
        .map(|entry| {
            let named = |k: &str| entry.get(k).map(|v| v.to_string());
            Include {
                model: named("model"),
                precision: named("precision"),
                engine: named("engine"),
                sets: entry
                    .keys()
                    .filter(|k| !AXES.contains(&k.as_str()) && !m.axes.contains_key(*k))
                    .cloned()
                    .collect(),
            }
        })
        .collect()
}
