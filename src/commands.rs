//! One function per subcommand; each returns the exit code or an error for the printer in `cli`.

use std::path::Path;

use crate::cli::{PlanArgs, RunOptions};

pub fn run(_file: &Path, _options: &RunOptions) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}

pub fn plan(_args: &PlanArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}

pub fn report(_file: &Path) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}
