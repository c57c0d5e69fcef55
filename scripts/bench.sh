#!/usr/bin/env bash
# Runs the anchor benchmarks (../shared/anchors: Redis Streams, PostgreSQL logical decoding, raw
# RocksDB) and topicfusion's own benchmark in the same run, and prints every `METRIC` line at the
# end. Compare ratios between lines of one run, never figures from different runs.
# Usage: scripts/bench.sh [anchor ...]   (default anchors: redis postgres rocksdb; "none" skips them)
# BENCH_FILTER="http_ consume_l1000" runs only topicfusion's metrics whose names contain a word.
# Also runs pgbench against topicfusion's PostgreSQL protocol the way the PostgreSQL anchor runs it
# against PostgreSQL (single-row INSERTs into a routed table, synced, 1 and 16 clients; skip with
# PGBENCH=0): `topicfusion.pgbench.*` lines beside `anchor.pg.sync_commit_on.insert_single_*`.
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

pgbench_topicfusion() {
  local dir log port secs="${SINGLE_SECS:-5}" server
  dir="$(mktemp -d)"
  log="$dir/serve.log"
  printf '[server]\nlisten = "127.0.0.1:0"\npg_listen = "127.0.0.1:0"\n[storage]\nsync_writes = true\n' > "$dir/tf.toml"
  TOPICFUSION_ROOT_PASSWORD=bench RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/topicfusion" serve \
    --config "$dir/tf.toml" --data-dir "$dir/data" > "$log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do grep -q '^listening on postgres://' "$log" && break; sleep 0.1; done
  port="$(sed -n 's|^listening on postgres://127.0.0.1:||p' "$log")"
  export PGPASSWORD=bench
  local conn=(-h 127.0.0.1 -p "$port" -U root)
  # Random 62-bit keys: a duplicate among a few hundred thousand rows has odds below 1e-8.
  printf '\\set id random(1, 4611686018427387904)\nINSERT INTO anchor_t (id, status, amount) VALUES (:id, '"'"'new'"'"', 42.5);\n' > "$dir/insert.sql"
  for c in 1 16; do
    psql "${conn[@]}" -d topicfusion -X -q -v ON_ERROR_STOP=1 \
      -c "DROP TOPIC IF EXISTS anchor_ev" -c "DROP TABLE IF EXISTS anchor_t" \
      -c "CREATE TABLE anchor_t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)" \
      -c "CREATE TOPIC anchor_ev" -c "ALTER TOPIC anchor_ev ADD SOURCE anchor_t ON INSERT"
    local tps
    tps="$(pgbench -n -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$secs" -f "$dir/insert.sql" "${conn[@]}" topicfusion 2>"$dir/pgbench.err" \
      | awk '/^tps = /{print $3; exit}')"
    [ -n "$tps" ] || { cat "$dir/pgbench.err" >&2; break; }
    echo "METRIC topicfusion.pgbench.insert_single_sync_c${c}_one_route $tps stmts/s"
  done
  kill "$server"; wait "$server" || true
  rm -rf "$dir"
}
if [ "${PGBENCH:-1}" != 0 ] && command -v pgbench >/dev/null 2>&1; then
  pgbench_topicfusion >> "$out"
fi
grep '^METRIC ' "$out"
