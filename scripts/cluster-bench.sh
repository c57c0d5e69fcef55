#!/usr/bin/env bash
# Benchmark of a three-node cluster on loopback against one node, through pgbench (the same
# client for both): single-row INSERTs into a table routed to a topic, $CLIENTS clients for $SECS
# s, one node with sync_writes = true (every commit fsynced, group commit) against three nodes
# (every commit in a majority's fsynced Raft logs). Then failover: $KILLS times, kill -9 the
# leader while a writer inserts, and time until an INSERT is acknowledged by the new leader;
# the killed node is restarted and caught up before the next round; at the end every
# acknowledged row must be on every node. Also bulk: one client INSERTing 1000 rows a statement
# (INSERT ... SELECT over generate_series), on one synced node and on the three. Prints
# `METRIC name value unit` lines.
#
# Usage: scripts/cluster-bench.sh   (env: SECS=10 CLIENTS=16 KILLS=5 BIN=target/release/topicfusion)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}; CLIENTS=${CLIENTS:-16}; KILLS=${KILLS:-5}  # COMMIT_THREADS: [storage] commit_threads of the nodes (0: the default)
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/topicfusion}
[ -x "$BIN" ] || cargo build --release --locked -p topicfusion --bin topicfusion
command -v pgbench >/dev/null || scripts/setup.sh --tests
export PGPASSWORD=bench TOPICFUSION_ROOT_PASSWORD=bench
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { echo "METRIC topicfusion.$1 $2 $3"; }
sql() { psql -h 127.0.0.1 -p "$1" -U root -d topicfusion -X -q -t -A -v ON_ERROR_STOP=1 -c "$2"; }
wait_pg() { for _ in $(seq 1 300); do sql "$1" "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "node on $1 did not start" >&2; return 1; }
insert_sql() { printf '\\set id random(1, 4611686018427387904)\nINSERT INTO bench_t (id, status, amount) VALUES (:id, '"'"'new'"'"', 42.5);\n' > "$dir/insert.sql"; }
setup_table() {
  sql "$1" "CREATE TABLE bench_t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)"
  sql "$1" "CREATE TOPIC bench_ev"
  sql "$1" "ALTER TOPIC bench_ev ADD SOURCE bench_t ON INSERT"
}
pgb() { pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -f "$dir/insert.sql" -h 127.0.0.1 -p "$1" -U root topicfusion 2>/dev/null | awk '/^tps = /{print $3}'; }
insert_sql
# 1000 rows a statement, ids from a random base (simple protocol: pgbench writes the base in).
printf '\\set base random(1, 4611686018427387904)\nINSERT INTO bench_t (id, status, amount) SELECT :base + value, '"'"'bulk'"'"', 42.5 FROM generate_series(1, 1000);\n' > "$dir/bulk.sql"
bulk_rows() { pgbench -n -M simple -c 1 -T "$SECS" -f "$dir/bulk.sql" -h 127.0.0.1 -p "$1" -U root topicfusion 2>/dev/null | awk '/^tps = /{printf "%.0f", $3 * 1000}'; }

# One node, every commit fsynced.
port=$(free_port)
printf '[server]\nlisten = "127.0.0.1:0"\npg_listen = "127.0.0.1:%s"\n[storage]\nsync_writes = true\n' "$port" > "$dir/single.toml"
RUST_LOG=warn "$BIN" serve --config "$dir/single.toml" --data-dir "$dir/single" > "$dir/single.log" 2>&1 &
single=$!; pids+=("$single")
wait_pg "$port"; setup_table "$port"
single_tps=$(pgb "$port")
metric "cluster_single_node_synced_insert_c$CLIENTS" "$single_tps" "stmts/s"
single_bulk=$(bulk_rows "$port")
metric "cluster_single_node_synced_bulk_b1000" "$single_bulk" "rows/s"
kill "$single"; wait "$single" 2>/dev/null || true

# Three nodes.
declare -A raft http pg
for n in 1 2 3; do raft[$n]=$(free_port); http[$n]=$(free_port); pg[$n]=$(free_port); done
peers=""
for n in 1 2 3; do peers+="  { id = $n, raft = \"127.0.0.1:${raft[$n]}\", http = \"127.0.0.1:${http[$n]}\", pg = \"127.0.0.1:${pg[$n]}\" },"$'\n'; done
declare -A node_pid
start_node() {
  local n=$1
  printf '[server]\nlisten = "127.0.0.1:%s"\npg_listen = "127.0.0.1:%s"\n[storage]\ncommit_threads = '"${COMMIT_THREADS:-0}"'\n[topics]\nretention_interval_ms = 0\n[cluster]\nnode_id = %s\nraft_listen = "127.0.0.1:%s"\nsecret = "cluster-bench-secret-0123"\npeers = [\n%s]\n' \
    "${http[$n]}" "${pg[$n]}" "$n" "${raft[$n]}" "$peers" > "$dir/node$n.toml"
  RUST_LOG=error "$BIN" serve --config "$dir/node$n.toml" --data-dir "$dir/node$n" >> "$dir/node$n.log" 2>&1 &
  node_pid[$n]=$!; pids+=("${node_pid[$n]}")
}
for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do wait_pg "${pg[$n]}"; done
leader_of() {
  for n in 1 2 3; do
    if kill -0 "${node_pid[$n]}" 2>/dev/null; then
      l=$(sql "${pg[$n]}" "SELECT node_id FROM system.cluster WHERE role = 'leader'" 2>/dev/null || true)
      [ -n "$l" ] && { echo "$l"; return; }
    fi
  done
}
leader=""; for _ in $(seq 1 100); do leader=$(leader_of); [ -n "$leader" ] && break; sleep 0.1; done
setup_table "${pg[$leader]}"
cluster_tps=$(pgb "${pg[$leader]}")
metric "cluster_r3_insert_c$CLIENTS" "$cluster_tps" "stmts/s"
metric "cluster_r3_vs_single_node_c$CLIENTS" "$(awk -v a="$cluster_tps" -v b="$single_tps" 'BEGIN{printf "%.2f", a/b}')" "x"
c1_tps=$(CLIENTS=1 pgb "${pg[$leader]}")
metric "cluster_r3_insert_c1" "$c1_tps" "stmts/s"
cluster_bulk=$(bulk_rows "${pg[$leader]}")
metric "cluster_r3_bulk_b1000" "$cluster_bulk" "rows/s"
metric "cluster_r3_vs_single_node_bulk_b1000" "$(awk -v a="$cluster_bulk" -v b="$single_bulk" 'BEGIN{printf "%.2f", a/b}')" "x"

# Failover: kill -9 the leader, time until the next INSERT is acknowledged on another node.
next_id=1
acked=()
gaps=()
for k in $(seq 1 "$KILLS"); do
  leader=$(leader_of)
  killed=$leader
  start=$(date +%s%N)
  kill -9 "${node_pid[$killed]}"; wait "${node_pid[$killed]}" 2>/dev/null || true
  done_at=""
  while [ -z "$done_at" ]; do
    for n in 1 2 3; do
      [ "$n" = "$killed" ] && continue
      if sql "${pg[$n]}" "INSERT INTO bench_t VALUES ($next_id, 'failover', 1.0)" >/dev/null 2>&1; then
        done_at=$(date +%s%N); acked+=("$next_id"); next_id=$((next_id + 1)); break
      fi
    done
    [ -n "$done_at" ] || sleep 0.02
    [ $(( ($(date +%s%N) - start) / 1000000000 )) -lt 60 ] || { echo "no leader 60 s after the kill" >&2; exit 1; }
  done
  gaps+=("$(( (done_at - start) / 1000000 ))")
  start_node "$killed"; wait_pg "${pg[$killed]}"
done
sorted=$(printf '%s\n' "${gaps[@]}" | sort -n)
metric cluster_r3_failover_median "$(echo "$sorted" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')" ms
metric cluster_r3_failover_max "$(echo "$sorted" | tail -1)" ms
# Every acknowledged failover INSERT on every node.
lost=0
for n in 1 2 3; do
  for _ in $(seq 1 100); do
    got=$(sql "${pg[$n]}" "SELECT count(*) FROM bench_t WHERE status = 'failover'" 2>/dev/null || echo 0)
    [ "$got" = "${#acked[@]}" ] && break; sleep 0.1
  done
  [ "$got" = "${#acked[@]}" ] || lost=$((lost + ${#acked[@]} - got))
done
metric cluster_r3_failover_acked_lost "$lost" rows
