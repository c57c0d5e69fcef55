#!/usr/bin/env bash
# The crash-test harness: N cycles of writers (INSERT/UPDATE/DELETE on a routed table) and
# consumers (CONSUME + per-message ACK) killed with SIGKILL at a random moment, each followed by
# a reopen and checks (committed statements present, rows and messages agree, gap-free offsets,
# acknowledged offsets never return, positions never move back). With --cluster: three
# `topicfusion serve` nodes under HTTP writes and a consumer group, the leader killed with
# SIGKILL KILLS times and restarted, then every acknowledged INSERT, gap-free identical offsets
# and group positions checked on every node. See crates/server/src/bin/crash/.
# Usage: scripts/crash-test.sh [N=50] [--sync]  |  scripts/crash-test.sh --cluster [KILLS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin="${CARGO_TARGET_DIR:-target}/release"
if [ "${1:-}" = "--cluster" ]; then
  kills="${2:-20}"
  cargo build --release --locked -p topicfusion --bin crash --bin topicfusion
  exec "$bin/crash" cluster --kills "$kills" --bin "$bin/topicfusion"
fi
cycles="${1:-50}"
shift || true
cargo build --release --locked -p topicfusion --bin crash
exec "$bin/crash" run --cycles "$cycles" "$@"
