#!/usr/bin/env bash
# Runs the anchor benchmarks (../shared/anchors: Redis Streams, PostgreSQL logical decoding, raw
# RocksDB) and topicfusion's own benchmark in the same run, and prints every `METRIC` line at the
# end. Compare ratios between lines of one run, never figures from different runs.
# Usage: scripts/bench.sh [anchor ...]   (default anchors: redis postgres rocksdb; "none" skips them)
# BENCH_FILTER="http_ consume_l1000" runs only topicfusion's metrics whose names contain a word.
# Also runs the same pgbench script against topicfusion's PostgreSQL protocol and against a fresh
# PostgreSQL 15 with a logical slot (synced single-row INSERTs; 1, 16, 64 clients and 16 with
# -M prepared; skip with PGBENCH=0; needs PostgreSQL 15's server binaries, else skipped):
# `topicfusion.pgbench.*`, `postgres.pgbench.*` and `ratio.pgbench.*` lines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
anchors=("$@")
[ ${#anchors[@]} -gt 0 ] || anchors=(redis postgres rocksdb)
read -r -a BENCH_FILTER <<< "${BENCH_FILTER:-}"
out="$(mktemp)"
# The pgbench comparison's servers and data dirs, stopped and removed on any exit.
TF_SERVER="" PG_DATA="" BENCH_DIRS=()
cleanup() {
  [ -z "$TF_SERVER" ] || kill "$TF_SERVER" 2>/dev/null || true
  [ -z "$PG_DATA" ] || runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PG_DATA" -m immediate stop > /dev/null 2>&1 || true
  [ ${#BENCH_DIRS[@]} -eq 0 ] || rm -rf "${BENCH_DIRS[@]}"
  rm -f "$out"
}
trap cleanup EXIT
cargo build --release --locked -p topicfusion --bin bench --bin topicfusion
if [ "${anchors[0]}" != "none" ] && [ -x ../shared/anchors/run_all.sh ]; then
  ../shared/anchors/run_all.sh "${anchors[@]}" >> "$out" || echo "some anchors failed" >&2
fi
"${CARGO_TARGET_DIR:-target}/release/bench" "${BENCH_FILTER[@]}" >> "$out"

# The protocol comparison: the same pgbench script (a synced single-row INSERT into a table that
# feeds a topic / a logical slot, random 62-bit keys) against topicfusion and against a fresh
# PostgreSQL cluster (wal_level = logical, a test_decoding slot, fsync and synchronous_commit
# on), at 1, 16 and 64 clients and 16 clients with -M prepared. Prints each side's figure and
# topicfusion/PostgreSQL ratios.
PGBENCH_RUNS=("c1:1:simple" "c16:16:simple" "c64:64:simple" "c16_prepared:16:prepared")
# Both systems first write the same 4 x WARM_ROWS rows of about 200 bytes (then drop them), so
# that each runs in its steady state rather than on a new data dir: PostgreSQL on its
# preallocated WAL segments, topicfusion on WAL files RocksDB recycles after memtable flushes
# (a synced commit to a WAL file that grows costs an fdatasync of its size too: c1 ran 0.6x
# PostgreSQL on a fresh data dir, 0.77x once recycled). WARM_ROWS=0 measures fresh data dirs.
WARM_ROWS="${WARM_ROWS:-600000}"

# settle: waits (at most 120 s) until the machine is quiet for a second (under 5% of its CPU time
# busy, waiting for I/O counted as busy, time stolen by the hypervisor as neither), so that CPU
# and I/O work a warm-up or the run before left running in the background (RocksDB's flushes and
# compactions, PostgreSQL's checkpoint writes) is not measured as part of the next run: without
# it topicfusion's 1-client run, the first after its warm-up, ran 0.47-0.68x PostgreSQL in three
# runs (2026-12-06, docs/benchmarks-history.md). It checks before a run, not during one.
settle() {
  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is in user).
  local a b sample='/^cpu /{print $2+$3+$4+$6+$7+$8, $5}'
  for _ in $(seq 1 120); do
    read -r -a a < <(awk "$sample" /proc/stat)
    sleep 1
    read -r -a b < <(awk "$sample" /proc/stat)
    (( (b[0] - a[0]) * 20 < (b[0] - a[0]) + (b[1] - a[1]) )) && return 0
  done
  echo "settle: the machine is still busy after 120 s; measuring anyway" >&2
}

pgbench_script() {
  printf '\\set id random(1, 4611686018427387904)\nINSERT INTO anchor_t (id, status, amount) VALUES (:id, '"'"'new'"'"', 42.5);\n' > "$1"
}

# run_pgbench <label> <clients> <mode> <script> <psql connection args...>: prints tps.
run_pgbench() {
  local clients="$2" mode="$3" script="$4"
  shift 4
  # A failed pgbench (a client aborted) prints nothing: its metric reads 0 and the script goes on.
  { pgbench -n -M "$mode" -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -T "${SINGLE_SECS:-5}" -f "$script" "$@" 2>/dev/null \
    | awk '/^tps = /{print $3; exit}'; } || true
}

# Both servers run side by side, each idle while the other is measured, and the runs alternate
# (topicfusion c1, PostgreSQL c1, PostgreSQL c16, topicfusion c16, ...: the order flips every
# configuration), each after `settle`, so that a change in the shared VM's speed during the
# comparison hits both sides of a ratio (with each system's four runs in a block, five runs of
# one binary gave c1 from 0.47x to 1.05x and c64 from 1.30x to 2.71x: docs/benchmarks-history.md).
pgbench_compare() {
  local pgbin=/usr/lib/postgresql/15/bin
  [ -x "$pgbin/initdb" ] || { echo "PostgreSQL 15 is not installed: no pgbench comparison" >&2; return; }
  local tfdir pgdir log tfport pgport=5498 server
  tfdir="$(mktemp -d)"
  BENCH_DIRS+=("$tfdir")
  log="$tfdir/serve.log"
  printf '[server]\nlisten = "127.0.0.1:0"\npg_listen = "127.0.0.1:0"\n[storage]\nsync_writes = true\n' > "$tfdir/tf.toml"
  TOPICFUSION_ROOT_PASSWORD=bench RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/topicfusion" serve \
    --config "$tfdir/tf.toml" --data-dir "$tfdir/data" > "$log" 2>&1 &
  server=$!
  TF_SERVER=$server
  for _ in $(seq 1 100); do grep -q '^listening on postgres://' "$log" && break; sleep 0.1; done
  tfport="$(sed -n 's|^listening on postgres://127.0.0.1:||p' "$log")"
  export PGPASSWORD=bench
  local tf=(-h 127.0.0.1 -p "$tfport" -U root) pg=(-h 127.0.0.1 -p "$pgport" -U postgres)

  pgdir="$(mktemp -d /tmp/tf_pgbench.XXXXXX)"
  BENCH_DIRS+=("$pgdir")
  chown postgres:postgres "$pgdir"
  runuser -u postgres -- "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres -E UTF8 --no-locale > /dev/null
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nwal_level = logical\nfsync = on\nsynchronous_commit = on\nmax_replication_slots = 4\nmax_connections = 200\nclient_min_messages = warning\n" \
    "$pgport" "$pgdir" >> "$pgdir/data/postgresql.conf"
  PG_DATA="$pgdir/data"
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/pg.log" -w -t 60 start > /dev/null
  psql "${pg[@]}" -d postgres -X -q -v ON_ERROR_STOP=1 \
    -c "SELECT pg_create_logical_replication_slot('anchor_slot', 'test_decoding')" > /dev/null

  pgbench_script "$tfdir/insert.sql"
  # The warm-up (see WARM_ROWS), the same on both: each data dir reaches its steady state
  # (topicfusion's WAL files recycled; PostgreSQL writes into WAL segments it zero-fills before
  # use, and keeps them all: the slot is never advanced).
  # (generate_series's column is `value` in DataFusion, the alias `g` in PostgreSQL.)
  local tfwarm=(-c "CREATE TABLE warm (id BIGINT PRIMARY KEY, pad TEXT)") pgwarm i
  pgwarm=("${tfwarm[@]}")
  for i in 0 1 2 3; do
    tfwarm+=(-c "INSERT INTO warm SELECT value + $i * $WARM_ROWS, repeat('x', 200) FROM generate_series(1, $WARM_ROWS)")
    pgwarm+=(-c "INSERT INTO warm SELECT g + $i * $WARM_ROWS, repeat('x', 200) FROM generate_series(1, $WARM_ROWS) AS g")
  done
  psql "${tf[@]}" -d topicfusion -X -q -v ON_ERROR_STOP=1 "${tfwarm[@]}" -c "DROP TABLE warm"
  psql "${pg[@]}" -d postgres -X -q -v ON_ERROR_STOP=1 "${pgwarm[@]}" -c "DROP TABLE warm" -c "CHECKPOINT"
  # Every run starts on an idle machine (settle): neither system's background work after its
  # previous run (RocksDB's flushes and compactions, PostgreSQL's checkpoints) runs into the other's.
  local run label clients mode tps n=0
  for run in "${PGBENCH_RUNS[@]}"; do
    IFS=: read -r label clients mode <<< "$run"
    psql "${tf[@]}" -d topicfusion -X -q -v ON_ERROR_STOP=1 \
      -c "DROP TOPIC IF EXISTS anchor_ev" -c "DROP TABLE IF EXISTS anchor_t" \
      -c "CREATE TABLE anchor_t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)" \
      -c "CREATE TOPIC anchor_ev" -c "ALTER TOPIC anchor_ev ADD SOURCE anchor_t ON INSERT"
    psql "${pg[@]}" -d postgres -X -q -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS anchor_t" \
      -c "CREATE TABLE anchor_t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE PRECISION)"
    local sides=(topicfusion postgres) side
    (( n++ % 2 == 0 )) || sides=(postgres topicfusion)
    for side in "${sides[@]}"; do
      settle
      if [ "$side" = topicfusion ]; then
        tps="$(run_pgbench "$label" "$clients" "$mode" "$tfdir/insert.sql" "${tf[@]}" topicfusion)"
        echo "METRIC topicfusion.pgbench.insert_sync_$label ${tps:-0} stmts/s"
      else
        tps="$(run_pgbench "$label" "$clients" "$mode" "$tfdir/insert.sql" "${pg[@]}" postgres)"
        echo "METRIC postgres.pgbench.insert_sync_slot_$label ${tps:-0} stmts/s"
      fi
    done
  done
  kill "$server"; wait "$server" || true
  TF_SERVER=""
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop > /dev/null
  PG_DATA=""
  rm -rf "$tfdir" "$pgdir"
}

if [ "${PGBENCH:-1}" != 0 ] && command -v pgbench >/dev/null 2>&1; then
  pgbench_compare >> "$out"
  for run in "${PGBENCH_RUNS[@]}"; do
    label="${run%%:*}"
    awk -v l="$label" '
      $2 == "topicfusion.pgbench.insert_sync_" l { tf = $3 }
      $2 == "postgres.pgbench.insert_sync_slot_" l { pg = $3 }
      END { if (tf > 0 && pg > 0) printf "METRIC ratio.pgbench.insert_sync_%s %.2f topicfusion/postgres\n", l, tf / pg }' "$out" >> "$out"
  done
fi
grep '^METRIC ' "$out"
