#!/usr/bin/env bash
# Runs the anchor benchmarks (../shared/anchors: Redis Streams, PostgreSQL logical decoding, raw
# RocksDB) and topicfusion's own benchmark in the same run, and prints every `METRIC` line at the
# end. Compare ratios between lines of one run, never figures from different runs.
# Usage: scripts/bench.sh [anchor ...]   (default anchors: redis postgres rocksdb; "none" skips them)
# BENCH_FILTER="http_ consume_l1000" runs only topicfusion's metrics whose names contain a word.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
anchors=("$@")
[ ${#anchors[@]} -gt 0 ] || anchors=(redis postgres rocksdb)
read -r -a BENCH_FILTER <<< "${BENCH_FILTER:-}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo build --release --locked -p topicfusion --bin bench --bin topicfusion
if [ "${anchors[0]}" != "none" ] && [ -x ../shared/anchors/run_all.sh ]; then
  ../shared/anchors/run_all.sh "${anchors[@]}" >> "$out" || echo "some anchors failed" >&2
fi
"${CARGO_TARGET_DIR:-target}/release/bench" "${BENCH_FILTER[@]}" >> "$out"
grep '^METRIC ' "$out"
