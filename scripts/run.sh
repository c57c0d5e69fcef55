#!/usr/bin/env bash
# Builds topicfusion (release) and runs it on the embedded data dir ./data.
# Extra arguments go to `topicfusion sql` (e.g. -c "SELECT 1").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -p topicfusion --bin topicfusion -- sql --data-dir ./data "$@"
