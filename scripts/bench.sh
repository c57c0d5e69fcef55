#!/usr/bin/env bash
# Runs the anchor benchmarks (../shared/anchors: Redis Streams, PostgreSQL logical decoding, raw
# RocksDB) and topicfusion's own benchmark in the same run, and prints every `METRIC` line at the
# end. Compare ratios between lines of one run, never figures from different runs.
# Usage: scripts/bench.sh [anchor ...]   (default anchors: redis postgres rocksdb; "none" skips them)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
anchors=("$@")
[ ${#anchors[@]} -gt 0 ] || anchors=(redis postgres rocksdb)
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo build --release --locked -p topicfusion --bin bench
if [ "${anchors[0]}" != "none" ] && [ -x ../shared/anchors/run_all.sh ]; then
  ../shared/anchors/run_all.sh "${anchors[@]}" >> "$out" || echo "some anchors failed" >&2
fi
"${CARGO_TARGET_DIR:-target}/release/bench" >> "$out"
grep '^METRIC ' "$out"
