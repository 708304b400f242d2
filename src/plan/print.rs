//! `runner plan` output: a readable listing for people and `--json` for scripts. Both show exactly what
//! `runner run` will do, in the same order, with each cell's status (which the caller reads from the
//! results directory). Commands, environments and URLs are shown only through [`Rendered`]'s redacting
//! views: no secret reaches either output.

use std::io::{self, Write};

use serde::Serialize;

use super::Plan;
use super::{CellPlan, CellStatus};
use crate::experiment::Experiment;
use crate::experiment::load::PromptMode;

/// Where a server configuration will run, in words (the executor decides at run time; this is what
/// the file asks for).
pub fn runs_on(exp: &Experiment, server: &super::ServerPlan) -> String {
    use crate::experiment::executor::{ExecutorKind, GpuSet};
    let gpus = |n: u32| format!("{n} GPU{}", if n == 1 { "" } else { "s" });
    let count = server.gpu_count.unwrap_or(1);
    match exp.executor.kind {
        ExecutorKind::Local => match &exp.executor.local.gpus {
            None => "this host, one server configuration at a time".to_string(),
            Some(GpuSet::All) => format!(
                "this host, {} out of every GPU nvidia-smi lists (assigned when it starts)",
                gpus(count)
            ),
            Some(GpuSet::Ids(ids)) => {
                let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                format!(
                    "this host, {} out of GPUs {} (assigned when it starts; disjoint from the servers beside it)",
                    gpus(count),
                    list.join(",")
                )
            }
        },
        ExecutorKind::Slurm => {
            let s = &exp.executor.slurm;
            let mut text = format!(
                "a Slurm job on partition {}, {}",
                s.partition.as_deref().unwrap_or("(the cluster's default)"),
                gpus(count)
            );
            if let Some(limit) = s.time_limit {
                text.push_str(&format!(
                    ", time limit {}",
                    humantime::format_duration(limit)
                ));
            }
            text
        }
    }
}

/// `status` tells each cell's state (the store reads it from the results directory).
pub fn text(
    out: &mut impl Write,
    exp: &Experiment,
    plan: &Plan,
    status: &dyn Fn(&CellPlan) -> CellStatus,
) -> io::Result<()> {
    writeln!(out, "{} ({})", exp.title, exp.file.display())?;
    writeln!(out, "results: {}", exp.results_dir.display())?;
    writeln!(out, "executor: {}", exp.executor.kind.name())?;
    let mut counts = [0usize; 4];
    let n = plan.servers.len();
    for (i, server) in plan.servers.iter().enumerate() {
        let engine = &exp.engines[&server.engine];
        writeln!(out)?;
        writeln!(
            out,
            "server {}/{n}  {}  [{}]",
            i + 1,
            server.id,
            server.hash
        )?;
        if server.display.argv.is_empty() {
            writeln!(
                out,
                "  url:      {} (already running: not started or stopped)",
                server.display.shown_url()
            )?;
        } else {
            writeln!(out, "  command:  {}", server.display.command_line())?;
        }
        for (k, v) in server.display.shown_env() {
            writeln!(out, "  env:      {k}={v}")?;
        }
        if let Some(w) = server.display.shown_workdir() {
            writeln!(out, "  workdir:  {w}")?;
        }
        writeln!(
            out,
            "  ready:    GET {} within {}{}; metrics: {}",
            engine.ready_path,
            humantime::format_duration(engine.ready_timeout),
            if engine.smoke_test {
                ", then one smoke request"
            } else {
                ""
            },
            engine.metrics_path.as_deref().unwrap_or("none"),
        )?;
        writeln!(
            out,
            "  model:    {} (requests name it `{}`)",
            server.model, server.display.request_model
        )?;
        writeln!(out, "  runs on:  {}", runs_on(exp, server))?;
        for cell in &server.points {
            let status = status(cell);
            counts[status as usize] += 1;
            let l = &cell.load;
            let prompt = match l.prompt {
                PromptMode::Unique => "unique prompts".to_string(),
                PromptMode::SharedPrefix { tokens } => format!("shared prefix of {tokens} tokens"),
            };
            let mut extra = String::new();
            if let Some(m) = l.max_inflight {
                extra.push_str(&format!(", max in flight {m}"));
            }
            if let Some(r) = l.request_rate {
                extra.push_str(&format!(", Poisson {r} req/s"));
            }
            let repeats = if l.repeats > 1 {
                format!(" × {} repeats", l.repeats)
            } else {
                String::new()
            };
            writeln!(
                out,
                "    {:<28} {:>5} req + {} warm-up{repeats}, {} → {} tokens, {prompt}{extra}  {}",
                cell.id
                    .strip_prefix(&format!("{}/", server.id))
                    .unwrap_or(&cell.id),
                l.requests,
                l.warmup,
                l.input_tokens,
                l.output_tokens,
                status.label(),
            )?;
        }
    }
    let cells = plan.cell_count();
    writeln!(out)?;
    writeln!(
        out,
        "totals: {n} server{}, {cells} cell{}, {} requests; {} done, {} pending, {} failed, {} changed",
        if n == 1 { "" } else { "s" },
        if cells == 1 { "" } else { "s" },
        plan.request_count(),
        counts[CellStatus::Done as usize],
        counts[CellStatus::Pending as usize],
        counts[CellStatus::Failed as usize],
        counts[CellStatus::Changed as usize],
    )
}

/// What `runner plan` says about telemetry on this host: which GPU source a run would use (or why none),
/// and which engines get a server timeline.
pub fn telemetry_text(
    out: &mut impl Write,
    exp: &Experiment,
    gpu: &crate::telemetry::Availability,
) -> io::Result<()> {
    writeln!(out)?;
    match gpu.source {
        Some(_) => writeln!(out, "telemetry: GPU: {}", gpu.detail)?,
        None => writeln!(
            out,
            "telemetry: GPU: none on this host ({}); the report will say 无 GPU 遥测",
            gpu.detail
        )?,
    }
    let (with, without): (Vec<&crate::experiment::Engine>, Vec<_>) =
        exp.engines.values().partition(|e| e.metrics_path.is_some());
    let names = |v: &[&crate::experiment::Engine]| {
        v.iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let every = crate::telemetry::timeline::INTERVAL.as_secs();
    match (with.is_empty(), without.is_empty()) {
        (false, true) => writeln!(out, "           server timeline: /metrics every {every} s")?,
        (true, _) => writeln!(
            out,
            "           server timeline: none (no engine has a metrics_path)"
        )?,
        (false, false) => writeln!(
            out,
            "           server timeline: /metrics every {every} s for {}; none for {} (no metrics_path)",
            names(&with),
            names(&without)
        )?,
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    title: &'a str,
    file: String,
    results_dir: String,
    servers: Vec<JsonServer<'a>>,
    totals: JsonTotals,
}

#[derive(Serialize)]
struct JsonServer<'a> {
    id: &'a str,
    hash: &'a str,
    engine: &'a str,
    model: &'a str,
    precision: &'a str,
    vars: &'a indexmap::IndexMap<String, crate::experiment::Scalar>,
    command: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    base_url: String,
    runs_on: String,
    gpu_count: Option<u32>,
    cells: Vec<JsonCell<'a>>,
}

#[derive(Serialize)]
struct JsonCell<'a> {
    id: &'a str,
    hash: &'a str,
    status: CellStatus,
    vars: &'a indexmap::IndexMap<String, crate::experiment::Scalar>,
    /// How many times the point is measured (also in `load` when more than once).
    repeats: u32,
    load: &'a crate::experiment::load::LoadSpec,
}

#[derive(Serialize)]
struct JsonTotals {
    servers: usize,
    cells: usize,
    requests: u64,
}

/// The plan for scripts, as a JSON document the caller may extend (`runner plan --json` adds the
/// pre-flight findings).
pub fn json_value(
    exp: &Experiment,
    plan: &Plan,
    status: &dyn Fn(&CellPlan) -> CellStatus,
) -> serde_json::Result<serde_json::Value> {
    let doc = JsonPlan {
        title: &exp.title,
        file: exp.file.display().to_string(),
        results_dir: exp.results_dir.display().to_string(),
        servers: plan
            .servers
            .iter()
            .map(|s| JsonServer {
                id: &s.id,
                hash: &s.hash,
                engine: &s.engine,
                model: &s.model,
                precision: &s.precision,
                vars: &s.vars,
                command: s.display.command_line(),
                argv: s.display.shown_argv(),
                env: s.display.shown_env(),
                base_url: s.display.shown_url(),
                runs_on: runs_on(exp, s),
                gpu_count: s.gpu_count,
                cells: s
                    .points
                    .iter()
                    .map(|c| JsonCell {
                        id: &c.id,
                        hash: &c.hash,
                        status: status(c),
                        vars: &c.vars,
                        repeats: c.load.repeats,
                        load: &c.load,
                    })
                    .collect(),
            })
            .collect(),
        totals: JsonTotals {
            servers: plan.servers.len(),
            cells: plan.cell_count(),
            requests: plan.request_count(),
        },
    };
    serde_json::to_value(&doc)
}
