//! The local executor: units on this host.
//!
//! Without GPU slots (no `[executor.local] gpus`), one unit at a time in the plan's order, and the runner
//! leaves GPUs alone: exactly what every run did before executors existed. With GPU slots, a simple
//! pool: each unit takes `gpu_count` GPUs from the free set (the lowest free indexes), its server sees
//! only them (`CUDA_VISIBLE_DEVICES`), and gives them back when its teardown (GPU release wait included)
//! is done. Units start strictly in the plan's order: one that needs more GPUs than are free waits, and
//! the ones after it wait behind it (no overtaking, so a large unit is never starved).
//!
//! With `--fail-fast`, no unit starts after one failed; the units already running finish. A signal stops
//! every running unit (they share one [`crate::signals::Shutdown`]) and no further unit starts.

use std::collections::{BTreeMap, VecDeque};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::{Done, Unit};
use crate::progress::Reporter;
use crate::unit::{self, Placement};

/// How the local executor places units.
#[derive(Debug, Clone, PartialEq)]
pub enum Slots {
    /// One unit at a time, no GPU assignment.
    Serial,
    /// Units at once on disjoint sets of these GPU indexes.
    Gpus(Vec<u32>),
}

/// Runs every unit; returns when all that were started have finished.
pub async fn run(
    ctx: &unit::Context<'_>,
    reporter: &Reporter,
    units: Vec<Unit<'_>>,
    slots: &Slots,
    versions: &BTreeMap<String, Option<String>>,
    fail_fast: bool,
    done: &Done,
) {
    let node = crate::server::this_host();
    let total = units.len();
    let mut free: Vec<u32> = match slots {
        Slots::Serial => Vec::new(),
        Slots::Gpus(ids) => ids.clone(),
    };
    let mut queue: VecDeque<Unit<'_>> = units.into();
    let mut running = FuturesUnordered::new();
    let mut stop_starting = false;
    loop {
        while !stop_starting && !ctx.shutdown.stopping().is_cancelled() {
            let Some(next) = queue.front() else { break };
            let gpus = match slots {
                Slots::Serial if !running.is_empty() => break,
                Slots::Serial => None,
                Slots::Gpus(_) => {
                    let need = next.server.gpu_count.unwrap_or(1) as usize;
                    if need > free.len() {
                        break;
                    }
                    Some(free.drain(..need).collect::<Vec<u32>>())
                }
            };
            let Some(u) = queue.pop_front() else { break };
            let placement = Placement {
                executor: "local".into(),
                node: node.clone(),
                job_id: None,
                gpus: gpus
                    .as_ref()
                    .map(|g| g.iter().map(u32::to_string).collect()),
            };
            let version = versions.get(&u.server.engine).cloned().flatten();
            running.push(async move {
                let progress = reporter.unit(&u.server.id);
                let on = placement
                    .gpu_list()
                    .map(|g| format!(" on GPU {g}"))
                    .unwrap_or_default();
                progress.line(format!(
                    "[{}/{total}] {}: {} cell(s) to run{on}",
                    u.index + 1,
                    u.server.id,
                    u.pending.len()
                ));
                let result =
                    unit::run(ctx, &progress, u.server, &u.pending, version, &placement).await;
                (gpus, result)
            });
        }
        let Some((gpus, result)) = running.next().await else {
            break;
        };
        if let Some(gpus) = gpus {
            free.extend(gpus);
            free.sort_unstable();
        }
        if result.interrupted || (fail_fast && result.failed()) {
            stop_starting = true;
        }
        // The coordinator may have stopped listening (it never does before we return); nothing to do.
        let _ = done.send(result);
    }
}
