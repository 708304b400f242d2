//! `runner run FILE --rehearse`: the same campaign with every engine replaced by the simulated engine,
//! so that a real campaign file runs end to end, without GPUs, in minutes, before a night is spent on it.
//!
//! What stays: models, token counts, the matrix (so every id and every load point), load settings, the
//! executor, fixed ports and each engine's `env`. What changes: each engine becomes the `sim` preset (its
//! readiness, metrics, dialect and timeouts) started with [`REHEARSAL_COMMAND`]; `workdir` and `api_key`
//! go (they belong to the real servers); results go to `<results_dir>-rehearsal`, so a rehearsal never
//! mixes with the real results; the title says it is a rehearsal.
//!
//! The simulator's speed is fixed here rather than copied from a real engine: fast enough that a
//! campaign of 10 000-token prompts at concurrency 200 rehearses in minutes on a laptop (1 ms decode
//! steps, a million prefill tokens per second, 8 tokens per streamed chunk), with the sim's batching
//! model otherwise at its defaults. The numbers of a rehearsal say nothing about any hardware.

use super::{CommandTemplate, Engine, Experiment, Launch};
use crate::engine::Preset;

/// The command every engine runs in a rehearsal.
pub const REHEARSAL_COMMAND: &str = "{{ runner }} sim --port {{ port }} --max-model-len {{ max_model_len }} \
--startup-delay 500ms --decode-step-ms 1 --decode-step-ms-per-seq 0.01 --prefill-tokens-per-s 1000000 \
--tokens-per-chunk 8";

/// Appended to the results directory's name.
pub const RESULTS_SUFFIX: &str = "-rehearsal";

impl Experiment {
    /// The rehearsal of this experiment (see the module docs).
    pub fn rehearsal(&self) -> Experiment {
        let mut exp = self.clone();
        let mut dir = exp.results_dir.clone().into_os_string();
        dir.push(RESULTS_SUFFIX);
        exp.results_dir = dir.into();
        exp.title = format!("{}（演练：模拟引擎）", exp.title);
        for engine in exp.engines.values_mut() {
            *engine = rehearse(engine);
        }
        exp
    }
}

fn rehearse(real: &Engine) -> Engine {
    let d = Preset::Sim.defaults();
    let (env, port, mut originals) = match &real.launch {
        Launch::Spawn {
            command, env, port, ..
        } => (
            env.clone(),
            *port,
            command
                .parts()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        ),
        Launch::Attach { .. } => (Default::default(), None, Vec::new()),
    };
    originals.extend(real.version_command.clone());
    Engine {
        name: real.name.clone(),
        preset: Preset::Sim,
        launch: Launch::Spawn {
            command: CommandTemplate::Line(REHEARSAL_COMMAND.to_string()),
            shell: false,
            env,
            workdir: None,
            port,
        },
        ready_path: d.ready_path.to_string(),
        ready_timeout: d.ready_timeout,
        smoke_test: d.smoke_test,
        stop_grace: d.stop_grace,
        metrics_path: d.metrics_path.map(str::to_string),
        version_command: d.version_command.map(str::to_string),
        gpu_release_timeout: real.gpu_release_timeout,
        api_key: None,
        defaults: d,
        rehearsal_of: originals,
    }
}
