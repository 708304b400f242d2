//! The one integration-test binary (see STYLE: one binary, helper modules), one module per area.

mod common;
mod compare;
mod cpu_engines;
mod executor;
mod experiment;
mod layout;
mod load;
mod repeats;
mod report;
mod run;
mod secrets;
mod server;
mod sim;
mod slurm;
mod telemetry;
