#!/usr/bin/env bash
# Builds topicfusion (release) and runs the server on the embedded data dir ./data, listening on
# http://127.0.0.1:8080 and postgres://127.0.0.1:5433. Extra arguments go to `topicfusion serve`
# (e.g. --config FILE, --listen 0.0.0.0:8080, --data-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -p topicfusion --bin topicfusion -- serve "$@"
