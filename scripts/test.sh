#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs): makes sure the CPU engines and the tiny
# model are installed in the cache outside the clone (the first time takes a while; afterwards seconds),
# starts the Slurm test cluster (scripts/slurm-up.sh, then two more nodes in network namespaces with
# scripts/slurm-two-hosts.sh, which runs slurm-up.sh again to include them; slurm-up.sh comes first
# because it installs Slurm, whose /etc/slurm the second script writes into; quick when they are up),
# then runs every test, the real-engine and Slurm tiers included: they are `#[ignore]`d so that a plain
# `cargo test` reports them as not run, and `--include-ignored` runs them here. Arguments go to
# `cargo test` (e.g. a test name filter; the test harness's own after a `--`, as with `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-engines.sh
scripts/slurm-up.sh
scripts/slurm-two-hosts.sh
# shellcheck disable=SC1091
source "${RUNNER_ENGINES_DIR:-$HOME/.cache/runner-engines}/env.sh"
# Arguments after a `--` are the test harness's, and `--include-ignored` goes first among them: appended
# after them, behind a second `--`, the harness would take it for a test name filter and run nothing.
cargo_args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  cargo_args+=("$1")
  shift
done
if [ $# -gt 0 ]; then shift; fi
cargo test "${cargo_args[@]}" -- --include-ignored "$@"
