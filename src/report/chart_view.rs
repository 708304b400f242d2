//! What the charts show, built from the plan and the measured cells: per model one [`ChartSet`] with a
//! line per precision × engine (and per server or load variable that tells lines of the same precision
//! and engine apart), and the links and captions the documents print with them.
//!
//! Invariants: only measured cells become points, with `None` where a figure was not measured, and
//! with error bars (the 95 % intervals of [`Metric::interval`]) where a cell was measured several times; the
//! interactivity chart's caption says how its axes are defined and where the GPU count came from (the
//! server's variables, or an assumed single GPU, said so).

use serde::Serialize;

use super::charts::{Bars, ChartSet, Point, Series};
use super::format;
use super::metric::Metric;
use super::view::{self, Done};
use crate::experiment::Experiment;
use crate::plan::{CellPlan, Plan, ServerPlan};

/// One model's charts and how the documents link them.
#[derive(Debug, Clone)]
pub struct ModelCharts {
    pub model_id: String,
    pub set: ChartSet,
    pub links: ChartLinks,
}

/// File names under `report/charts/` and the captions the documents print under them.
#[derive(Debug, Clone, Serialize)]
pub struct ChartLinks {
    pub by_concurrency: String,
    pub interactivity: String,
    pub by_concurrency_alt: String,
    pub interactivity_alt: String,
    /// How the interactivity chart's axes are defined, including how GPUs were counted.
    pub interactivity_caption: String,
    /// Some point of the model was measured several times and carries error bars.
    pub error_bars: bool,
}

/// Server variables that give the GPUs one server uses: tensor-parallel × pipeline-parallel size, or
/// an explicit GPU count.
const TP_VARS: &[&str] = &["tensor_parallel_size", "tp_size", "tp"];
const PP_VARS: &[&str] = &["pipeline_parallel_size", "pp_size", "pp"];
const GPU_VARS: &[&str] = &["gpus", "num_gpus", "gpu_count"];

/// Every model with at least one measured cell, in the experiment's order.
pub fn chart_sets(exp: &Experiment, plan: &Plan, done: &[Done]) -> Vec<ModelCharts> {
    let mut out = Vec::new();
    for model in exp.models.values() {
        let servers: Vec<&ServerPlan> = plan
            .servers
            .iter()
            .filter(|s| s.model == model.id)
            .collect();
        let several_engines = servers.iter().any(|s| s.engine != servers[0].engine);
        let mut series: Vec<Series> = Vec::new();
        let mut gpu_notes: Vec<String> = Vec::new();
        for server in &servers {
            let cells: Vec<Done> = done
                .iter()
                .filter(|(s, _, _)| s.id == server.id)
                .copied()
                .collect();
            if cells.is_empty() {
                continue;
            }
            let peers: Vec<&ServerPlan> = servers
                .iter()
                .filter(|o| o.precision == server.precision && o.engine == server.engine)
                .copied()
                .collect();
            let mut label = server.precision.to_uppercase();
            if several_engines {
                label.push_str(&format!(" · {}", server.engine));
            }
            for p in view::differing_vars(server, &peers) {
                label.push_str(&format!(" · {p}"));
            }
            let gpus = gpu_count(server);
            if let Some((n, how)) = &gpus {
                let note = format!("{label}：{how} → {n} 个 GPU");
                if !gpu_notes.contains(&note) {
                    gpu_notes.push(note);
                }
            }
            // Points at one concurrency that differ in a load variable (a swept setting) are separate
            // lines; a setting that only changes with the concurrency (fewer requests at c=1) is not.
            let mut lines: Vec<(String, Vec<Point>)> = Vec::new();
            let cell_peers: Vec<&CellPlan> = cells.iter().map(|(_, cell, _)| *cell).collect();
            for (_, cell, result) in &cells {
                let key: String = view::differing_point_vars(cell, &cell_peers)
                    .iter()
                    .map(|p| format!(" · {p}"))
                    .collect();
                let s = &result.summary;
                let bar = |m: Metric| m.interval(result).map(|i| (i.lo, i.hi));
                let point = Point {
                    concurrency: cell.load.concurrency,
                    output_tps: Metric::OutputTps.of(s),
                    ttft_ms: Metric::Ttft.of(s),
                    tpot_ms: Metric::Tpot.of(s),
                    decode_tps: Metric::DecodeTps.of(s),
                    bars: Bars {
                        output_tps: bar(Metric::OutputTps),
                        ttft_ms: bar(Metric::Ttft),
                        tpot_ms: bar(Metric::Tpot),
                        decode_tps: bar(Metric::DecodeTps),
                    },
                };
                match lines.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, points)) => points.push(point),
                    None => lines.push((key, vec![point])),
                }
            }
            for (key, mut points) in lines {
                points.sort_by_key(|p| p.concurrency);
                series.push(Series {
                    label: format!("{label}{key}"),
                    gpus: gpus.as_ref().map(|g| g.0),
                    points,
                });
            }
        }
        if series.is_empty() {
            continue;
        }
        let stem = view::file_stem(&model.id);
        let error_bars = series.iter().flat_map(|s| &s.points).any(|p| {
            let b = &p.bars;
            b.output_tps.is_some()
                || b.ttft_ms.is_some()
                || b.tpot_ms.is_some()
                || b.decode_tps.is_some()
        });
        let assumed = series.iter().any(|s| s.gpus.is_none());
        let gpu_text = match (gpu_notes.is_empty(), assumed) {
            (true, _) => "服务参数未给出 GPU 数（如 tensor_parallel_size），按每个服务 1 个 GPU 计"
                .to_string(),
            (false, false) => format!("取自服务参数（{}）", gpu_notes.join("；")),
            (false, true) => format!(
                "取自服务参数（{}）；其余服务未给出 GPU 数，按 1 个 GPU 计",
                gpu_notes.join("；")
            ),
        };
        let title = format!(
            "{}（{} → {}）",
            model.name,
            format::kilo(model.input_tokens),
            format::kilo(model.output_tokens)
        );
        out.push(ModelCharts {
            model_id: model.id.clone(),
            links: ChartLinks {
                by_concurrency: format!("{stem}-by-concurrency.svg"),
                interactivity: format!("{stem}-interactivity.svg"),
                by_concurrency_alt: format!("{}：吞吐与延迟随并发的变化", model.name),
                interactivity_alt: format!("{}：吞吐与交互性", model.name),
                interactivity_caption: format!(
                    "横轴为单用户解码速度 = 1000 / 平均 TPOT（tokens/s/用户，即表中的 Decode TPS），纵轴为每 GPU 输出吞吐 = 输出吞吐 / GPU 数（tokens/s/GPU）；GPU 数：{gpu_text}。点旁的 c=N 为并发数；灰色宽线为帕累托前沿：其上的点，没有别的点能在两个轴上同时更好。"
                ),
                error_bars,
            },
            set: ChartSet {
                title,
                by_concurrency: format!("{stem}-by-concurrency.svg"),
                interactivity: format!("{stem}-interactivity.svg"),
                series,
            },
        });
    }
    out
}

/// GPUs one server uses and how that is known (`tensor_parallel_size=2`), from its variables.
fn gpu_count(server: &ServerPlan) -> Option<(u32, String)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|k| {
            let v = server.vars.get(*k)?;
            let n = u32::try_from(v.as_f64()? as i64).ok().filter(|n| *n >= 1)?;
            Some((n, format!("{k}={v}")))
        })
    };
    match (find(TP_VARS), find(PP_VARS)) {
        (Some((tp, a)), Some((pp, b))) => Some((tp * pp, format!("{a} × {b}"))),
        (Some(one), None) | (None, Some(one)) => Some(one),
        (None, None) => find(GPU_VARS),
    }
}
