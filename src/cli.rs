//! The command line: clap definitions, help texts, and the single place where errors are printed.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;

const AFTER_HELP: &str = "\
Examples:
  runner plan experiments/rtxpro6000.toml     show every server and load point, nothing is started
  runner experiments/rtxpro6000.toml          run the campaign (same as `runner run FILE`)
  runner run experiments/demo.toml --only model=demo-14b,concurrency=4
  runner report experiments/rtxpro6000.toml   re-render the report from stored results
  runner compare results/a results/b --fail-if 'output_tps < 0.95'
                                              run vs run: ratios B / A, settings that differ, a CI gate
  runner run experiments/rtxpro6000.toml --rehearse      the whole campaign on the simulated engine
  runner run experiments/demo.toml --executor slurm      one Slurm job per server configuration
  runner status experiments/demo.toml         every server configuration's and cell's state
  runner sim --port 8000                      start the built-in simulated engine

Exit codes:
  0    every cell measured
  1    the run finished but some cells or servers failed (compare: a --fail-if threshold was missed)
  2    bad input or usage; nothing was started
  130  interrupted (Ctrl-C / SIGTERM); finished cells are kept";

/// Benchmark campaigns of LLM inference servers, from an experiment file to the report.
#[derive(Debug, Parser)]
#[command(name = "runner", version, about, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The experiment file to run (same as `runner run FILE`).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunOptions,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every pending cell of an experiment file: start each server, load it, store results, report.
    Run(RunArgs),
    /// Show what a run would do: server configurations, rendered commands, load points and their status.
    Plan(PlanArgs),
    /// Render the report (summary, per-model records, charts, CSV) from stored results only.
    Report(ReportArgs),
    /// Compare run B with run A from stored results: ratios B / A of the headline figures per matched
    /// cell, the settings that differ, cells found on one side only; optional thresholds for CI.
    Compare(CompareArgs),
    /// Show every server configuration's and cell's state, from the results directory and Slurm.
    Status(StatusArgs),
    /// Serve the built-in simulated OpenAI-compatible engine (for rehearsals and tests; no GPU needed).
    Sim(crate::sim::SimArgs),
    /// Measure the load client itself against the simulated engine (measured − true TTFT/TPOT, CPU).
    #[command(hide = true, name = "bench-client")]
    BenchClient(crate::load::bench::BenchArgs),
    /// Run exactly one server configuration's pending cells here (what a Slurm job runs); writes cells
    /// and the server record, never the report.
    #[command(hide = true)]
    Unit(UnitArgs),
}

/// Which view of the experiment file: the executor (overriding `[executor] kind`) and the rehearsal.
#[derive(Debug, Args, Default, Clone)]
pub struct View {
    /// Where server configurations run: `local` (this host) or `slurm` (one batch job each); overrides
    /// `[executor] kind`.
    #[arg(long, value_name = "KIND", value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
    /// Replace every engine with the simulated engine (same models, token counts, load points and
    /// executor; results in `<results_dir>-rehearsal`).
    #[arg(long)]
    pub rehearse: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The experiment file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub view: View,
}

#[derive(Debug, Args)]
pub struct UnitArgs {
    /// The experiment file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The server configuration's id.
    #[arg(long)]
    pub server: String,
    /// Its settings hash when the job was submitted: a changed file is refused.
    #[arg(long)]
    pub server_hash: Option<String>,
    /// The cells to run (default: every cell not done).
    #[arg(long = "cell", value_name = "ID")]
    pub cells: Vec<String>,
    /// Run the cells even if they are done.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub view: View,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RunOptions {
    /// Stop at the first failed server configuration or cell instead of moving on.
    #[arg(long)]
    pub fail_fast: bool,
    /// Rerun selected cells even if a result with the same settings exists.
    #[arg(long)]
    pub force: bool,
    /// Only cells matching every KEY=VALUE (e.g. `--only model=qwen3-14b,concurrency=40`); repeatable.
    #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]")]
    pub only: Vec<String>,
    /// Start even when the pre-flight checks (programs, checkpoints, ports, disk space) find problems.
    #[arg(long)]
    pub no_preflight: bool,
    /// Slurm: submit the jobs and return at once (`runner status FILE` follows them).
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub view: View,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The experiment file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the plan as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Only cells matching every KEY=VALUE; repeatable.
    #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE]")]
    pub only: Vec<String>,
    #[command(flatten)]
    pub view: View,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The experiment file (TOML) whose results to render.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub view: View,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline run: an experiment file (its results_dir) or a results directory.
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The run compared with A, given the same way.
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Print JSON (for scripts) instead of the Chinese Markdown report.
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Exit 1 when B / A of a metric meets this in any matched cell (or cannot be computed there, or the
    /// cell failed on B); repeatable. Metrics: qps, prompt_tps, decode_tps, output_tps, ttft, e2e, tpot
    /// (latencies are means); operators: < <= > >=. E.g. "output_tps < 0.95", "ttft > 1.10".
    #[arg(long = "fail-if", value_name = "METRIC OP RATIO")]
    pub fail_if: Vec<String>,
}

/// Parses the command line, runs one command and returns the process exit code. Errors are printed here
/// and nowhere else.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::BAD_INPUT,
            };
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            print_error(&err);
            exit::code_of(&err)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match (cli.command, cli.file) {
        (Some(Command::Run(args)), _) => run(&args.file, &args.options),
        (Some(Command::Plan(args)), _) => {
            crate::commands::plan(&args.file, &args.only, &view(&args.view), args.json)
        }
        (Some(Command::Report(args)), _) => crate::commands::report(&args.file, &view(&args.view)),
        (Some(Command::Status(args)), _) => crate::commands::status(&args.file, &view(&args.view)),
        (Some(Command::Unit(args)), _) => crate::commands::unit(&crate::commands::UnitRequest {
            file: args.file,
            server: args.server,
            server_hash: args.server_hash,
            cells: args.cells,
            force: args.force,
            view: view(&args.view),
        }),
        (Some(Command::Compare(args)), _) => crate::commands::compare(
            (&args.a, &args.b),
            &args.fail_if,
            args.json,
            args.out.as_deref(),
        ),
        (Some(Command::Sim(args)), _) => crate::sim::main(args).map(|()| exit::OK),
        (Some(Command::BenchClient(args)), _) => {
            crate::load::bench::main(args).map(|()| exit::OK)
        }
        (None, Some(file)) => run(&file, &cli.run),
        (None, None) => Err(exit::Failure::bad_input(
            "no experiment file given\n  help: `runner FILE` runs an experiment; `runner --help` lists the commands",
        )
        .into()),
    }
}

fn view(v: &View) -> crate::commands::View {
    crate::commands::View {
        executor: v
            .executor
            .as_deref()
            .and_then(crate::experiment::executor::ExecutorKind::parse),
        rehearse: v.rehearse,
    }
}

fn run(file: &std::path::Path, options: &RunOptions) -> anyhow::Result<i32> {
    let policy = crate::run::Policy {
        fail_fast: options.fail_fast,
        force: options.force,
        detach: options.detach,
        unit_args: Vec::new(),
    };
    crate::commands::run(
        file,
        &options.only,
        &view(&options.view),
        policy,
        !options.no_preflight,
    )
}

/// The one error printer: the message, then each cause on its own line.
pub fn print_error(err: &anyhow::Error) {
    let mut text = format!("error: {err}");
    for cause in err.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    crate::progress::say(text);
}
