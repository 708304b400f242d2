//! Executors: where and when units ([`crate::unit`]) run. The coordinator ([`crate::run`]) hands an
//! executor the units that have pending cells, in the plan's order; the executor places them and tells
//! the coordinator, through a channel, each time one has finished, so that the coordinator (the only
//! writer of `cells.csv` and the report) re-renders them.
//!
//! - [`local`]: this host. Without GPU slots, one unit at a time (the behaviour of every earlier
//!   version); with `[executor.local] gpus`, units at once on disjoint GPU sets.
//! - [`slurm`]: one `sbatch` job per unit; the job runs this binary (`runner unit`) for exactly that unit
//!   on its node, writing cells and the server record into the shared results directory.

pub mod local;
pub mod slurm;

use crate::plan::{CellPlan, ServerPlan};
use crate::unit::UnitResult;

/// A server configuration with cells to run, and its place in the plan (for `[i/n]`).
#[derive(Debug, Clone)]
pub struct Unit<'p> {
    pub index: usize,
    pub server: &'p ServerPlan,
    pub pending: Vec<&'p CellPlan>,
}

/// Where executors report each finished unit's outcome (whatever it is).
pub type Done = tokio::sync::mpsc::UnboundedSender<UnitResult>;
