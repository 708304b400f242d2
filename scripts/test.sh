#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run runs): makes sure the CPU engines and the tiny
# model are installed in the cache outside the clone (the first time takes a while; afterwards seconds),
# then runs every test with them, the real-engine tier included: it is `#[ignore]`d so that a plain
# `cargo test` reports it as not run, and `--include-ignored` runs it here. Arguments go to `cargo test`
# (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-engines.sh
# shellcheck disable=SC1091
source "${RUNNER_ENGINES_DIR:-$HOME/.cache/runner-engines}/env.sh"
cargo test "$@" -- --include-ignored
