#!/usr/bin/env bash
# The crash-test harness: N cycles of writers (INSERT/UPDATE/DELETE on a routed table) and
# consumers (CONSUME + per-message ACK) killed with SIGKILL at a random moment, each followed by
# a reopen and checks (committed statements present, rows and messages agree, gap-free offsets,
# acknowledged offsets never return, positions never move back). See crates/server/src/bin/crash.rs.
# Usage: scripts/crash-test.sh [N=50] [--sync]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cycles="${1:-50}"
shift || true
cargo build --release --locked -p topicfusion --bin crash
exec "${CARGO_TARGET_DIR:-target}/release/crash" run --cycles "$cycles" "$@"
