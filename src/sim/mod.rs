//! The built-in simulated inference engine (`runner sim`): an OpenAI-compatible HTTP server with a
//! deterministic behaviour model and fault knobs, for rehearsals and tests.

use clap::Args;

/// Knobs of the simulated engine.
#[derive(Debug, Args, Clone)]
pub struct SimArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
}

/// Serves until SIGTERM/SIGINT.
pub fn main(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulated engine is not built yet")
}
