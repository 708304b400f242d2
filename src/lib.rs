//! `runner` turns an experiment file into a benchmark campaign of LLM inference servers and renders the
//! report from what was measured. The data flow (see the README):
//!
//! experiment file → [`experiment`] (validated) → [`plan`] (servers × load points) → [`run`] (the
//! coordinator: units with pending cells to an [`executor`], the report after each) → [`unit`] (for each
//! server configuration, wherever it runs: [`server`] start/ready/stop, [`load`] per point, [`scrape`]
//! before/after, [`store`] each cell) → [`report`] from the store alone.

pub mod cli;
pub mod commands;
pub mod engine;
pub mod envinfo;
pub mod executor;
pub mod exit;
pub mod experiment;
pub mod gpu;
pub mod limits;
pub mod load;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod repeat;
pub mod report;
pub mod run;
pub mod scrape;
pub mod secret;
pub mod server;
pub mod shell;
pub mod signals;
pub mod sim;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod tool;
pub mod unit;
