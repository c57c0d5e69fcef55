#!/usr/bin/env bash
# The whole test suite: formatting, clippy, unit tests, the integration tests and the
# sqllogictest files. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
