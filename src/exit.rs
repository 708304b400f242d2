//! The documented exit codes, and the one error type that carries them to `main`.

use std::fmt;

/// Every cell measured (or nothing to do).
pub const OK: i32 = 0;
/// The run finished but at least one cell or server configuration failed.
pub const CELLS_FAILED: i32 = 1;
/// Bad input or usage: nothing was started.
pub const BAD_INPUT: i32 = 2;
/// Interrupted by Ctrl-C / SIGTERM: finished cells are kept, the server was torn down.
pub const INTERRUPTED: i32 = 130;

/// An error that already knows how to present itself and which exit code it means.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Failure {
            code: BAD_INPUT,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Maps any error to an exit code: a [`Failure`] anywhere in the chain decides, everything else is a
/// runtime failure (1).
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>().map(|f| f.code))
        .unwrap_or(CELLS_FAILED)
}
