//! Benchmarks of the write path, point reads and consumption. Prints `METRIC name value unit`
//! lines (the format of ../shared/anchors) so figures can be compared with the anchors of the
//! same run. Run it in release: `scripts/bench.sh` (anchors included) or
//! `cargo run --release -p topicfusion --bin bench`.
//!
//! `bench [FILTER ...]` runs only the sections that print a metric whose name contains one of the
//! filters (e.g. `bench http_` or `bench consume_l1000`).
//!
//! Knobs (environment): BENCH_ROWS (100000), BENCH_BATCH (1000), BENCH_REPS (41 runs of each bulk
//! INSERT, the median printed), BENCH_BIG (10000000 messages in the large topic), BENCH_DRAIN
//! (200000), BENCH_LAT_N (1000), BENCH_RETENTION (1000000 expired messages to delete),
//! BENCH_CONSUME_READS (200 reads of each topic; more to profile the read phase),
//! BENCH_CLUSTER_N (2000 replicated commits per `cluster_store_` phase), BENCH_LIVE_ROWS (200000
//! rows per `live_` fan-out run), BENCH_SCRAPE_ROUNDS (8 pairs of 2 s rounds of `metrics_scrape_`).
//!
//! The `http_` metrics start the real `topicfusion serve` (the binary next to this one) and talk
//! to it over loopback with reqwest, as a service would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use topicfusion_engine::{ConsumeRequest, Database, DatabaseOptions, Durability, StartPosition};

/// The server's allocator (see `main.rs`), so that figures match `topicfusion serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn metric(name: &str, value: f64, unit: &str) -> String {
    let line = if unit == "ms" {
        format!("METRIC topicfusion.{name} {value:.4} {unit}")
    } else {
        format!("METRIC topicfusion.{name} {value:.2} {unit}")
    };
    eprintln!("{line}");
    line
}

async fn exec(db: &Database, sql: &str) {
    if let Err(e) = db.execute(sql).await {
        panic!("benchmark statement failed: {e}\n{}", &sql[..sql.len().min(200)]);
    }
}

fn values(from: u64, n: u64) -> String {
    let rows: Vec<String> = (from..from + n)
        .map(|i| format!("({i}, '{}', {}.5)", if i % 3 == 0 { "paid" } else { "new" }, i % 1000))
        .collect();
    rows.join(",")
}

/// Bulk INSERT of `rows` rows in statements of `batch` rows into a table with `routes` routes.
async fn bulk_insert(dir: &std::path::Path, rows: u64, batch: u64, routes: &[&str]) -> f64 {
    let db = Database::open(dir, DatabaseOptions::default()).expect("open");
    exec(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
    for (i, payload) in routes.iter().enumerate() {
        exec(&db, &format!("CREATE TOPIC r{i}")).await;
        exec(&db, &format!("ALTER TOPIC r{i} ADD SOURCE t ON INSERT WITH (payload = '{payload}')")).await;
    }
    let statements: Vec<String> =
        (0..rows / batch).map(|b| format!("INSERT INTO t VALUES {}", values(b * batch, batch))).collect();
    let start = Instant::now();
    for s in &statements {
        exec(&db, s).await;
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

/// Opens a database in the state of a server that has run a while: a WAL file's worth of writes
/// flushed, so RocksDB keeps that file for reuse and the next WAL overwrites it instead of growing
/// a new file (as PostgreSQL's pre-zeroed, recycled WAL segments are overwritten). The synced
/// sections start here, so that their fsyncs are those of a running server, not of its first
/// minutes; the unsynced commit-to-consumer latency does too, to compare like with like.
async fn open_warm(dir: &std::path::Path, durability: Durability) -> Database {
    let db = Database::open(dir, DatabaseOptions { durability, ..Default::default() }).expect("open");
    exec(&db, "CREATE TABLE warmup (id BIGINT PRIMARY KEY, v TEXT)").await;
    for i in 0..8u64 {
        let sql = format!(
            "INSERT INTO warmup SELECT value, repeat('x', 1000) FROM generate_series({}, {})",
            i * 8192,
            i * 8192 + 8191
        );
        exec(&db, &sql).await;
    }
    // The first flush frees the first WAL (kept for reuse); the second switches to it.
    db.settle_storage().expect("flush");
    exec(&db, "INSERT INTO warmup VALUES (-1, 'x')").await;
    db.settle_storage().expect("flush");
    db
}

/// Latencies (sorted, ms) from before a producer's INSERT to a long-polling consumer holding the
/// message, with `writers` tasks doing single-row INSERTs into another routed table meanwhile
/// (and their rate).
async fn commit_to_consumer_latency(sync: bool, writers: u64, lat_n: u64) -> (Vec<f64>, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let durability = if sync { Durability::Sync } else { Durability::Process };
    let db = Arc::new(open_warm(dir.path(), durability).await);
    exec(&db, "CREATE TABLE k (id BIGINT PRIMARY KEY)").await;
    exec(&db, "CREATE TOPIC l").await;
    exec(&db, "ALTER TOPIC l ADD SOURCE k ON INSERT WITH (payload = 'key')").await;
    exec(&db, "CREATE TABLE w (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
    exec(&db, "CREATE TOPIC wt").await;
    exec(&db, "ALTER TOPIC wt ADD SOURCE w ON INSERT").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let write_start = Instant::now();
    let background: Vec<_> = (0..writers)
        .map(|c| {
            let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    exec(&db, &format!("INSERT INTO w VALUES ({}, 'new', 42.5)", c * 1_000_000_000 + n)).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let t0 = Instant::now();
    let consumer = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(lat_n as usize);
            let req = ConsumeRequest {
                group: Some("lat".into()),
                partition: None,
                start: Some(StartPosition::Earliest),
                limit: 100,
                timeout_ms: 2000,
                visibility_timeout_ms: None,
                ..Default::default()
            };
            while (seen.len() as u64) < lat_n {
                let msgs = db.consume("l", &req).await.expect("consume");
                let now = t0.elapsed().as_secs_f64() * 1000.0;
                for m in &msgs {
                    seen.push((m.offset, now));
                }
                if let Some(m) = msgs.last() {
                    let ack = format!("ACK l GROUP 'lat' UPTO OFFSET {}", m.offset);
                    db.execute(&ack).await.expect("ack");
                }
            }
            seen
        })
    };
    let mut sent = Vec::with_capacity(lat_n as usize);
    for i in 0..lat_n {
        sent.push(t0.elapsed().as_secs_f64() * 1000.0);
        exec(&db, &format!("INSERT INTO k VALUES ({i})")).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = consumer.await.expect("consumer");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for t in background {
        written += t.await.expect("writer");
    }
    let rate = written as f64 / write_start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = seen.iter().map(|&(o, t)| t - sent[o as usize]).collect();
    lat.sort_by(f64::total_cmp);
    (lat, rate)
}

/// Writers' rate while `during` runs (or for 3 s when it is `None`).
async fn writers_while(db: &Arc<Database>, first_key: u64, during: Option<tokio::task::JoinHandle<()>>) -> f64 {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..4u64)
        .map(|c| {
            let (db, stop) = (Arc::clone(db), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = first_key + c * 100_000_000 + n;
                    exec(&db, &format!("INSERT INTO w VALUES ({key}, 'new', 42.5)")).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    match during {
        Some(job) => job.await.expect("job"),
        None => tokio::time::sleep(Duration::from_secs(3)).await,
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Seconds to delete `n` expired messages, and the writers' rate without and during it.
async fn retention_bench(n: u64) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_800_000_000_000));
    let clock = {
        let now = Arc::clone(&now);
        topicfusion_engine::Clock::from_fn(move || now.load(std::sync::atomic::Ordering::SeqCst))
    };
    let options = DatabaseOptions { clock, retention_interval_ms: 0, ..Default::default() };
    let db = Arc::new(Database::open(dir.path(), options).expect("open"));
    exec(&db, "CREATE TABLE k (id BIGINT PRIMARY KEY, v TEXT)").await;
    exec(&db, "CREATE TOPIC old WITH (retention_seconds = 3600)").await;
    exec(&db, "ALTER TOPIC old ADD SOURCE k ON INSERT").await;
    exec(&db, "CREATE TABLE w (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
    exec(&db, "CREATE TOPIC wt").await;
    exec(&db, "ALTER TOPIC wt ADD SOURCE w ON INSERT").await;
    let mut done = 0;
    while done < n {
        let m = 200_000.min(n - done);
        exec(
            &db,
            &format!("INSERT INTO k SELECT value, repeat('x', 50) FROM generate_series({done}, {})", done + m - 1),
        )
        .await;
        done += m;
    }
    db.settle_storage().expect("settle");
    now.fetch_add(2 * 3_600_000, std::sync::atomic::Ordering::SeqCst);
    let alone = writers_while(&db, 0, None).await;
    let start = Instant::now();
    let job = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            exec(&db, "RUN RETENTION ON old").await;
        })
    };
    let during = writers_while(&db, 50_000_000_000, Some(job)).await;
    (start.elapsed().as_secs_f64(), alone, during)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let rows = env("BENCH_ROWS", 100_000);
    let batch = env("BENCH_BATCH", 1000);
    let big = env("BENCH_BIG", 10_000_000);
    let drain = env("BENCH_DRAIN", 200_000);
    let lat_n = env("BENCH_LAT_N", 1000);
    // 41: with 9, the route cost of full runs swung between 6% and 17% (docs/benchmarks.md).
    let reps = env("BENCH_REPS", 41).max(1);
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let wants =
        |names: &[&str]| filters.is_empty() || names.iter().any(|n| filters.iter().any(|f| n.contains(f.as_str())));
    let mut out = Vec::new();

    // 1. Write path: bulk INSERT with 0, 1 and 3 routes. The median of BENCH_REPS runs, each in
    //    a new database (the PostgreSQL anchor's method); the configurations take turns, so a
    //    slow phase of the VM hits them alike (their ratio is the route's cost).
    let configs: Vec<(String, &[&str])> =
        [("no_route", &[][..]), ("one_route", &["full"][..]), ("three_routes", &["full", "key", "diff"][..])]
            .into_iter()
            .map(|(name, routes)| (format!("insert_b{batch}_{name}"), routes))
            .filter(|(name, _)| wants(&[name]))
            .collect();
    let mut rates = vec![Vec::new(); configs.len()];
    for _ in 0..reps {
        for ((_, routes), rates) in configs.iter().zip(&mut rates) {
            let dir = tempfile::tempdir().expect("tempdir");
            rates.push(bulk_insert(dir.path(), rows, batch, routes).await);
        }
    }
    // The route's cost as the median of per-repetition ratios: each repetition's two runs are
    // neighbours in time, so this is steadier than the ratio of two medians on a noisy VM.
    if let (Some(none), Some(one)) = (
        configs.iter().position(|(n, _)| n.ends_with("_no_route")),
        configs.iter().position(|(n, _)| n.ends_with("_one_route")),
    ) {
        let mut costs: Vec<f64> = rates[none].iter().zip(&rates[one]).map(|(n, o)| (1.0 - o / n) * 100.0).collect();
        costs.sort_by(f64::total_cmp);
        out.push(metric(&format!("insert_b{batch}_one_route_cost_median"), percentile(&costs, 0.5), "%"));
    }
    for ((name, _), mut rates) in configs.into_iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        out.push(metric(&name, percentile(&rates, 0.5), "rows/s"));
    }

    // 2. Point SELECT on the primary key of a table of `rows` rows.
    if wants(&["point_select_"]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(dir.path(), DatabaseOptions::default()).expect("open");
        exec(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
        for b in 0..rows / batch {
            exec(&db, &format!("INSERT INTO t VALUES {}", values(b * batch, batch))).await;
        }
        let mut lat = Vec::new();
        let mut key = 12345u64;
        for _ in 0..5000 {
            key = key.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let sql = format!("SELECT * FROM t WHERE id = {}", (key >> 33) % rows);
            let start = Instant::now();
            let r = db.execute(&sql).await.expect("select");
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        }
        lat.sort_by(f64::total_cmp);
        out.push(metric(&format!("point_select_{rows}_rows_p50"), percentile(&lat, 0.5), "ms"));
        out.push(metric(&format!("point_select_{rows}_rows_p99"), percentile(&lat, 0.99), "ms"));
        drop(db);
    }

    // 3. Single-row autocommit INSERTs with the WAL fsynced (one route), like PostgreSQL's.
    if wants(&["insert_single_autocommit_sync_one_route"]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_warm(dir.path(), Durability::Sync).await;
        exec(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
        exec(&db, "CREATE TOPIC ev").await;
        exec(&db, "ALTER TOPIC ev ADD SOURCE t ON INSERT").await;
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(3) {
            exec(&db, &format!("INSERT INTO t VALUES ({n}, 'new', 42.5)")).await;
            n += 1;
        }
        out.push(metric(
            "insert_single_autocommit_sync_one_route",
            n as f64 / start.elapsed().as_secs_f64(),
            "stmts/s",
        ));
        drop(db);
    }

    // 3b. Concurrent synced single-row INSERTs of distinct keys into one routed table: 16 and 64
    //     tasks (group commit lets them share fsyncs).
    for clients in [16u64, 64] {
        let name = format!("insert_single_sync_c{clients}_one_route");
        if !wants(&[&name]) {
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(open_warm(dir.path(), Durability::Sync).await);
        exec(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
        exec(&db, "CREATE TOPIC ev").await;
        exec(&db, "ALTER TOPIC ev ADD SOURCE t ON INSERT").await;
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let db = Arc::clone(&db);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < Duration::from_secs(3) {
                        exec(&db, &format!("INSERT INTO t VALUES ({}, 'new', 42.5)", c * 1_000_000_000 + n)).await;
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("writer");
        }
        out.push(metric(&name, total as f64 / start.elapsed().as_secs_f64(), "stmts/s"));
    }

    // 4. CONSUME cost does not depend on the topic's size: LIMIT 1000 near the end of a topic of
    //    1k messages and of `big` messages. Reads of the two alternate, so that a slower phase of
    //    the machine weighs on both alike. The first pass reads each place of the big topic for
    //    the first time (its blocks come from the files); `_repeat_` is a second pass over the
    //    same places, with their blocks in RocksDB's block cache as the small topic's always are,
    //    which separates the cost of a first read from any cost of the topic's size.
    let sizes: Vec<u64> = [1000u64, big]
        .into_iter()
        .filter(|s| wants(&[&format!("consume_l1000_topic_{s}_p50"), &format!("consume_l1000_topic_{s}_repeat_p50")]))
        .collect();
    if !sizes.is_empty() {
        let mut topics = Vec::new();
        for &size in &sizes {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = Database::open(dir.path(), DatabaseOptions::default()).expect("open");
            exec(&db, "CREATE TABLE k (id BIGINT PRIMARY KEY)").await;
            exec(&db, "CREATE TOPIC big").await;
            exec(&db, "ALTER TOPIC big ADD SOURCE k ON INSERT WITH (payload = 'key')").await;
            let chunk = 200_000u64;
            let mut done = 0;
            let fill = Instant::now();
            while done < size {
                let n = chunk.min(size - done);
                exec(&db, &format!("INSERT INTO k SELECT value FROM generate_series({done}, {})", done + n - 1)).await;
                done += n;
            }
            eprintln!("filled a topic of {size} messages in {:.1}s", fill.elapsed().as_secs_f64());
            // Reads are measured once the write burst's flushes and compactions have settled.
            let settle = Instant::now();
            db.settle_storage().expect("settle");
            eprintln!("compactions settled in {:.1}s", settle.elapsed().as_secs_f64());
            topics.push((size, dir, db));
        }
        eprintln!("reading");
        for pass in ["", "_repeat"] {
            let mut lats = vec![Vec::new(); topics.len()];
            for i in 0..env("BENCH_CONSUME_READS", 200) {
                for ((size, _, db), lat) in topics.iter().zip(&mut lats) {
                    // Random positions in the last million messages.
                    let span = (*size - 1000).min(1_000_000);
                    let from = *size - 1000 - if span > 0 { (i * 7919) % span } else { 0 };
                    let start = Instant::now();
                    let r =
                        db.execute(&format!("CONSUME FROM big FROM OFFSET {from} LIMIT 1000")).await.expect("consume");
                    lat.push(start.elapsed().as_secs_f64() * 1000.0);
                    assert_eq!(r[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
                }
            }
            for ((size, _, _), mut lat) in topics.iter().zip(lats) {
                lat.sort_by(f64::total_cmp);
                out.push(metric(&format!("consume_l1000_topic_{size}{pass}_p50"), percentile(&lat, 0.5), "ms"));
            }
        }
    }

    // 5. Drain with a group: CONSUME LIMIT 1000 then ACK, until `drain` messages are read.
    if wants(&["consume_ack_drain_b1000"]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(dir.path(), DatabaseOptions::default()).expect("open");
        exec(&db, "CREATE TABLE k (id BIGINT PRIMARY KEY, v TEXT)").await;
        exec(&db, "CREATE TOPIC d").await;
        exec(&db, "ALTER TOPIC d ADD SOURCE k ON INSERT").await;
        exec(&db, &format!("INSERT INTO k SELECT value, repeat('x', 100) FROM generate_series(1, {drain})")).await;
        let start = Instant::now();
        let mut read = 0u64;
        loop {
            let r = db.execute("CONSUME FROM d GROUP 'g' FROM EARLIEST LIMIT 1000").await.expect("consume");
            let rows: usize = r[0].batches.iter().map(|b| b.num_rows()).sum();
            if rows == 0 {
                break;
            }
            read += rows as u64;
            let last = read - 1;
            exec(&db, &format!("ACK d GROUP 'g' UPTO OFFSET {last}")).await;
        }
        assert_eq!(read, drain);
        out.push(metric("consume_ack_drain_b1000", read as f64 / start.elapsed().as_secs_f64(), "msg/s"));
        drop(db);
    }

    // 6. Commit-to-consumer latency: a consumer long-polls (engine API) while a producer commits
    //    one row every 2 ms: with the WAL unsynced, synced, and synced beside 16 tasks doing
    //    synced single-row INSERTs into another routed table as fast as they can.
    for (name, sync, writers) in [
        ("commit_to_consumer_latency", false, 0u64),
        ("commit_to_consumer_latency_sync", true, 0),
        ("commit_to_consumer_latency_sync_beside_c16", true, 16),
    ] {
        if !wants(&[&format!("{name}_p")]) {
            continue;
        }
        let (lat, writes) = commit_to_consumer_latency(sync, writers, lat_n).await;
        out.push(metric(&format!("{name}_p50"), percentile(&lat, 0.5), "ms"));
        out.push(metric(&format!("{name}_p99"), percentile(&lat, 0.99), "ms"));
        if writers > 0 {
            out.push(metric(&format!("{name}_writers"), writes, "stmts/s"));
        }
    }

    // 7. Retention: time to delete 1M expired messages, and the rate of 4 writers (single-row
    //    INSERTs into another routed table) during it against without it.
    if wants(&["retention_"]) {
        let n = env("BENCH_RETENTION", 1_000_000);
        let (secs, alone, during) = retention_bench(n).await;
        out.push(metric(&format!("retention_delete_{n}_expired"), secs, "s"));
        out.push(metric("retention_writers_alone", alone, "stmts/s"));
        out.push(metric("retention_writers_during", during, "stmts/s"));
    }

    // 8. The HTTP sections, last: run first, their client workload (200k messages decoded from
    //    JSON) left the bulk INSERTs after them in this process about 3 points of route cost
    //    slower (15.3-16.4% in three runs, 12.9-13.1% without them).
    if wants(&["http_consume_ack_drain_b1000", "http_commit_to_consumer_latency"]) {
        http::run(drain, lat_n, &mut out).await;
    }

    // 9. Live queries over WebSocket against a real server (synced commits, as PostgreSQL's
    //    NOTIFY anchor): commit-to-subscriber latency, per-key fan-out and the writer's rate.
    if wants(&["live_"]) {
        live::run(env("BENCH_LIVE_ROWS", 200_000), lat_n, &mut out).await;
    }

    // 10. Scraping /metrics does not slow writers: 16 synced single-row INSERT clients over HTTP
    //     against a real server, in rounds with and without a scraper every 100 ms.
    if wants(&["metrics_scrape_"]) {
        metrics_scrape::run(&mut out).await;
    }

    // 11. Replication (issue #26, the store's layer only: the engine does not use the cluster
    //    yet): three in-process nodes on loopback, one-message commits through the leader.
    if wants(&["cluster_store_"]) {
        cluster::run(env("BENCH_CLUSTER_N", 2000), &mut out).await;
    }

    for line in out {
        println!("{line}");
    }
}

mod cluster {
    //! Three in-process nodes (each its own store and Raft log, the transport over loopback HTTP)
    //! against one store with `Durability::Sync`: the cost of a replicated commit and the time
    //! a leader's death leaves writes unacknowledged.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::net::TcpListener;
    use topicfusion_cluster::NodeAddr;
    use topicfusion_cluster::node::{Node, NodeConfig};
    use topicfusion_storage::{ChangeOp, Commit, Durability, NewMessage, PartitionOp, StorageError, Store};

    use super::{metric, percentile};

    fn message(i: u64) -> Commit {
        let m = NewMessage {
            topic_id: 1,
            partition: 0,
            op: ChangeOp::Insert,
            source_table: "s.t".into(),
            key: format!("{{\"id\":{i}}}"),
            payload: format!("{{\"id\":{i},\"status\":\"new\",\"amount\":{i}.5}}"),
        };
        let mut commit = Commit { messages: vec![m].into(), ..Default::default() };
        commit.batch.put(format!("\x02row-{i:012}"), b"a row of about forty bytes, like the bench's");
        commit
    }

    fn create() -> Commit {
        Commit { partition_ops: vec![PartitionOp::Create { topic_id: 1, partition: 0 }], ..Default::default() }
    }

    struct Cluster {
        peers: BTreeMap<u64, NodeAddr>,
        dirs: Vec<tempfile::TempDir>,
        nodes: Vec<Node>,
    }

    impl Cluster {
        async fn start() -> Self {
            let mut listeners = Vec::new();
            for _ in 0..3 {
                listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
            }
            let peers: BTreeMap<u64, NodeAddr> = listeners
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let raft = l.local_addr().expect("address").to_string();
                    (i as u64 + 1, NodeAddr { raft, http: String::new(), pg: String::new() })
                })
                .collect();
            let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
            let mut cluster = Self { peers, dirs, nodes: Vec::new() };
            for (i, listener) in listeners.into_iter().enumerate() {
                let node = cluster.node(i as u64 + 1, listener).await;
                cluster.nodes.push(node);
            }
            cluster
        }

        async fn node(&self, id: u64, listener: TcpListener) -> Node {
            let dir = self.dirs[id as usize - 1].path();
            let store = Arc::new(Store::open(&dir.join("data"), Durability::Process).expect("store"));
            let config = NodeConfig {
                id,
                peers: self.peers.clone(),
                secret: "bench".into(),
                snapshot_every: 100_000,
                on_change: None,
                join: false,
            };
            Node::start(config, &dir.join("raft"), store, listener).await.expect("node")
        }

        async fn leader(&self) -> &Node {
            loop {
                for n in &self.nodes {
                    if n.is_writable() {
                        return n;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    pub async fn run(n: u64, out: &mut Vec<String>) {
        // The baseline: one store, every commit fsynced (group commit across writers).
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), Durability::Sync).expect("store"));
        store.commit(create()).expect("create");
        let start = Instant::now();
        for i in 0..n {
            store.commit(message(i)).expect("commit");
        }
        out.push(metric("cluster_store_single_node_c1", n as f64 / start.elapsed().as_secs_f64(), "commits/s"));
        drop(store);

        let mut cluster = Cluster::start().await;
        cluster.leader().await.write(create()).await.expect("create");
        let mut lat = Vec::new();
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            cluster.leader().await.write(message(i)).await.expect("write");
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        out.push(metric("cluster_store_r3_c1", n as f64 / start.elapsed().as_secs_f64(), "commits/s"));
        lat.sort_by(f64::total_cmp);
        out.push(metric("cluster_store_r3_c1_p50", percentile(&lat, 0.5), "ms"));
        out.push(metric("cluster_store_r3_c1_p99", percentile(&lat, 0.99), "ms"));

        // 16 writers: commits that arrive while a proposal is in flight share the next one
        // (the store's group commit for replicated writes).
        let leader = cluster.leader().await;
        let start = Instant::now();
        let per = n / 16;
        let writers = (0..16u64).map(|w| async move {
            for i in 0..per {
                leader.write(message(n + w * per + i)).await.expect("write");
            }
        });
        futures::future::join_all(writers).await;
        out.push(metric("cluster_store_r3_c16", (per * 16) as f64 / start.elapsed().as_secs_f64(), "commits/s"));

        // Failover: the leader stopped, the time until a write is acknowledged again; then the
        // node restarts on its data and catches up before the next round.
        let mut gaps = Vec::new();
        let mut i = 10 * n;
        for _ in 0..5 {
            let leader_id = cluster.leader().await.id();
            let at = cluster.nodes.iter().position(|x| x.id() == leader_id).expect("leader");
            let raft_addr = cluster.peers[&leader_id].raft.clone();
            let stopped = Instant::now();
            cluster.nodes.remove(at).shutdown().await;
            loop {
                i += 1;
                let candidate = cluster.nodes.iter().find(|x| x.is_writable());
                let written = match candidate {
                    Some(node) => node.write(message(i)).await,
                    None => Err(StorageError::NotLeader { leader: None }),
                };
                if written.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            gaps.push(stopped.elapsed().as_secs_f64() * 1e3);
            let listener = loop {
                match TcpListener::bind(&raft_addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let node = cluster.node(leader_id, listener).await;
            let last = cluster.leader().await.raft().metrics().borrow().last_applied.map(|l| l.index);
            node.raft()
                .wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(last, "caught up")
                .await
                .expect("caught up");
            cluster.nodes.push(node);
        }
        gaps.sort_by(f64::total_cmp);
        out.push(metric("cluster_store_failover_median", percentile(&gaps, 0.5), "ms"));
        out.push(metric("cluster_store_failover_max", gaps[gaps.len() - 1], "ms"));
        for node in cluster.nodes {
            node.shutdown().await;
        }
    }
}

mod http {
    //! The HTTP benchmarks: a real server process, reqwest clients on loopback.

    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::{metric, percentile};

    pub(super) struct Server {
        child: Child,
        pub(super) base: String,
        client: reqwest::Client,
        pub(super) token: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Server {
        pub(super) async fn start(sync_writes: bool) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("bench.toml");
            let toml = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\npg_listen = \"\"\n[storage]\nsync_writes = {sync_writes}\n[topics]\nmax_consume_timeout_ms = 60000\n"
            );
            std::fs::write(&config, toml).expect("config");
            let exe = std::env::current_exe().expect("exe").with_file_name("topicfusion");
            let mut child = Command::new(&exe)
                .args(["serve", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .env("TOPICFUSION_ROOT_PASSWORD", "bench")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} (build it with --bin topicfusion): {e}", exe.display()));
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
            let base = line.trim().strip_prefix("listening on ").expect("address").to_owned();
            let client = reqwest::Client::new();
            let login: Value = client
                .post(format!("{base}/v1/api/auth/login"))
                .json(&json!({"username": "root", "password": "bench"}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("login body");
            let token = login["access_token"].as_str().expect("token").to_owned();
            Self { child, base, client, token, _dir: dir }
        }

        async fn post(&self, path: &str, body: &Value) -> Value {
            self.post_as(path, body).await
        }

        async fn post_as<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> T {
            let resp = self
                .client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .expect("request");
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            let bytes = resp.bytes().await.expect("body");
            serde_json::from_slice(&bytes).expect("json")
        }

        pub(super) async fn sql(&self, sql: &str) -> Value {
            self.post("/v1/api/sql", &json!({ "sql": sql })).await
        }
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Received {
        partition_id: u32,
        offset: u64,
        key: Box<serde_json::value::RawValue>,
        payload: Box<serde_json::value::RawValue>,
    }

    #[derive(serde::Deserialize)]
    struct Batch {
        messages: Vec<Received>,
    }

    pub async fn run(drain: u64, lat_n: u64, out: &mut Vec<String>) {
        // CONSUME 1000 + ACK over HTTP until `drain` messages (100-byte payloads) are read.
        let server = Server::start(false).await;
        server
            .sql("CREATE TABLE k (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC d; ALTER TOPIC d ADD SOURCE k ON INSERT")
            .await;
        server.sql(&format!("INSERT INTO k SELECT value, repeat('x', 100) FROM generate_series(1, {drain})")).await;
        let start = Instant::now();
        let mut read = 0u64;
        loop {
            // A client decodes the messages into its own type, keys and payloads as raw JSON.
            let body: Batch = server
                .post_as(
                    "/v1/api/topics/consume",
                    &json!({"topic_id": "d", "group_id": "g", "start": "Earliest", "limit": 1000}),
                )
                .await;
            let Some(last) = body.messages.last() else { break };
            read += body.messages.len() as u64;
            let upto = last.offset;
            server
                .post(
                    "/v1/api/topics/ack",
                    &json!({"topic_id": "d", "group_id": "g", "partition_id": 0, "upto_offset": upto}),
                )
                .await;
        }
        assert_eq!(read, drain);
        out.push(metric("http_consume_ack_drain_b1000", read as f64 / start.elapsed().as_secs_f64(), "msg/s"));
        drop(server);

        // INSERT over HTTP -> long-polling HTTP consumer, alone and beside 8 synced writers.
        for (name, sync_writers) in
            [("http_commit_to_consumer_latency", 0usize), ("http_commit_to_consumer_latency_sync_c8", 8)]
        {
            let server = Arc::new(Server::start(sync_writers > 0).await);
            server
                .sql("CREATE TABLE k (id BIGINT PRIMARY KEY); CREATE TOPIC l; ALTER TOPIC l ADD SOURCE k ON INSERT WITH (payload = 'key');
                      CREATE TABLE w (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC wt; ALTER TOPIC wt ADD SOURCE w ON INSERT")
                .await;
            let stop = Arc::new(AtomicBool::new(false));
            let written = Arc::new(AtomicU64::new(0));
            let writers: Vec<_> = (0..sync_writers as u64)
                .map(|w| {
                    let (server, stop, written) = (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&written));
                    tokio::spawn(async move {
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            server
                                .sql(&format!("INSERT INTO w VALUES ({}, 'writer {w}')", w * 1_000_000_000 + i))
                                .await;
                            i += 1;
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let t0 = Instant::now();
            let consumer = {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let mut seen = Vec::with_capacity(lat_n as usize);
                    while (seen.len() as u64) < lat_n {
                        let body = server
                            .post(
                                "/v1/api/topics/consume",
                                &json!({"topic_id": "l", "group_id": "lat", "start": "Earliest", "limit": 100, "timeout_ms": 2000}),
                            )
                            .await;
                        let now = t0.elapsed().as_secs_f64() * 1000.0;
                        let messages = body["messages"].as_array().expect("messages");
                        for m in messages {
                            seen.push((m["offset"].as_u64().expect("offset"), now));
                        }
                        if let Some(m) = messages.last() {
                            let upto = m["offset"].as_u64().expect("offset");
                            server
                                .post(
                                    "/v1/api/topics/ack",
                                    &json!({"topic_id": "l", "group_id": "lat", "upto_offset": upto}),
                                )
                                .await;
                        }
                    }
                    seen
                })
            };
            let write_start = Instant::now();
            let mut sent = Vec::with_capacity(lat_n as usize);
            for i in 0..lat_n {
                sent.push(t0.elapsed().as_secs_f64() * 1000.0);
                server.sql(&format!("INSERT INTO k VALUES ({i})")).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let seen = consumer.await.expect("consumer");
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                w.await.expect("writer");
            }
            let mut lat: Vec<f64> = seen.iter().map(|&(o, t)| t - sent[o as usize]).collect();
            lat.sort_by(f64::total_cmp);
            out.push(metric(&format!("{name}_p50"), percentile(&lat, 0.5), "ms"));
            out.push(metric(&format!("{name}_p99"), percentile(&lat, 0.99), "ms"));
            if sync_writers > 0 {
                let rate = written.load(Ordering::Relaxed) as f64 / write_start.elapsed().as_secs_f64();
                out.push(metric("http_insert_single_sync_c8_beside_consumer", rate, "stmts/s"));
            }
        }
    }
}

mod live {
    //! Live queries over WebSocket (tokio-tungstenite) against the real server with synced
    //! commits, measured as `../shared/anchors/pg_notify_live.sh` measures PostgreSQL's
    //! trigger + NOTIFY: (a) one subscriber of `user_id = 0`, a single-row INSERT every 2 ms,
    //! latency = receipt - the time taken before the INSERT (carried in the row), beside the INSERT's own answer time; (b) N
    //! subscriptions `WHERE user_id = k` (k < N, over 8 sockets read on a runtime of their own) while one writer inserts
    //! 1000-row statements whose user_id cycles over 0..N: deliveries/s (every row reaches exactly
    //! one subscription), and the writer's rows/s against the same writer on a table nobody
    //! watches, in four pairs of alternating rounds after a warm-up (medians; the readers count rows without
    //! keeping them, as the anchor's listeners count notifications: they share the writer's two
    //! cores); (c) 1,000 subscriptions of every row while 5,000 rows are inserted in 1000-row
    //! statements (5 million deliveries), as the anchor's bcast_n1000.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::http::Server;
    use super::{metric, percentile};

    type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    fn now_us() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as u64
    }

    async fn connect(base: &str, token: &str) -> Socket {
        let url = format!("{base}/v1/api/live").replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        tokio_tungstenite::connect_async(request).await.expect("websocket").0
    }

    async fn subscribe(socket: &mut Socket, id: &str, sql: &str) {
        let frame = json!({ "type": "subscribe", "id": id, "sql": sql, "snapshot": false });
        socket.send(Message::text(frame.to_string())).await.expect("send");
    }

    /// Reads frames until `subscribed` came `count` times.
    async fn await_subscribed(socket: &mut Socket, count: usize) {
        let mut seen = 0;
        while seen < count {
            let Some(Ok(Message::Text(text))) = socket.next().await else { panic!("socket closed") };
            let frame: Value = serde_json::from_str(text.as_str()).expect("json");
            match frame["type"].as_str() {
                Some("subscribed") => seen += 1,
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }

    fn insert(from: u64, n: u64, users: u64) -> String {
        let rows: Vec<String> =
            (from..from + n).map(|i| format!("({i}, {}, {}, 'new', {i}.5)", i % users, now_us())).collect();
        format!("INSERT INTO {{table}} VALUES {}", rows.join(","))
    }

    /// Inserts `rows` rows (ids from `first`) in 1000-row statements into `table`; returns
    /// rows/s.
    async fn write(server: &Server, table: &str, first: u64, rows: u64, users: u64) -> f64 {
        let statements: Vec<String> = (0..rows.div_ceil(1000))
            .map(|b| insert(first + b * 1000, 1000.min(rows - b * 1000), users).replace("{table}", table))
            .collect();
        let start = Instant::now();
        for s in &statements {
            server.sql(s).await;
        }
        rows as f64 / start.elapsed().as_secs_f64()
    }

    pub async fn run(rows: u64, lat_n: u64, out: &mut Vec<String>) {
        let server = Server::start(true).await;
        let table = |name: &str| {
            format!(
                "CREATE TABLE {name} (id BIGINT PRIMARY KEY, user_id BIGINT, ts BIGINT, status TEXT, amount DOUBLE)"
            )
        };
        // (a) Latency: one subscriber, one row every 2 ms.
        server.sql(&table("lat")).await;
        let mut socket = connect(&server.base, &server.token).await;
        subscribe(&mut socket, "l", "SELECT id, ts FROM lat WHERE user_id = 0").await;
        await_subscribed(&mut socket, 1).await;
        let reader = tokio::spawn(async move {
            let mut latencies = Vec::new();
            while latencies.len() < lat_n as usize {
                let Ok(Some(Ok(Message::Text(text)))) =
                    tokio::time::timeout(Duration::from_secs(10), socket.next()).await
                else {
                    break;
                };
                let at = now_us();
                let frame: Value = serde_json::from_str(text.as_str()).expect("json");
                for row in frame["rows"].as_array().into_iter().flatten() {
                    latencies.push((at - row["row"]["ts"].as_u64().expect("ts")) as f64 / 1000.0);
                }
            }
            latencies
        });
        let mut inserts = Vec::with_capacity(lat_n as usize);
        for i in 0..lat_n {
            let sent = Instant::now();
            server.sql(&format!("INSERT INTO lat VALUES ({i}, 0, {}, 'new', 1.5)", now_us())).await;
            inserts.push(sent.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut latencies = reader.await.expect("reader");
        inserts.sort_by(f64::total_cmp);
        assert_eq!(latencies.len() as u64, lat_n, "every row reached the subscriber");
        latencies.sort_by(f64::total_cmp);
        out.push(metric("live_commit_to_ws_p50", percentile(&latencies, 0.5), "ms"));
        out.push(metric("live_commit_to_ws_p99", percentile(&latencies, 0.99), "ms"));
        // The writer's own synced INSERT over HTTP, answered (part of the latency above, whose
        // time is taken before the INSERT is sent).
        out.push(metric("live_insert_answered_p50", percentile(&inserts, 0.5), "ms"));
        out.push(metric("live_insert_answered_p99", percentile(&inserts, 0.99), "ms"));

        // (b) Per-key fan-out: rounds on the watched table alternate with the same writer on a
        // table nobody watches (a ratio against one earlier run swung with what the machine
        // was doing then: a flush, the previous phase's compaction).
        for n in [1000u64, 10_000] {
            let (name, base) = (format!("key{n}"), format!("base{n}"));
            server.sql(&table(&name)).await;
            server.sql(&table(&base)).await;
            let key = |name: &str, k| format!("SELECT id, ts FROM {name} WHERE user_id = {k}");
            let r = fan_out(&server, &name, n, key, (rows, n, rows), Some(&base)).await;
            out.push(metric(&format!("live_key_n{n}_deliveries"), r.deliveries, "deliveries/s"));
            out.push(metric(&format!("live_key_n{n}_writer"), r.writer, "rows/s"));
            out.push(metric(&format!("live_key_n{n}_writer_alone"), r.alone, "rows/s"));
            out.push(metric(&format!("live_key_n{n}_writer_ratio"), r.ratio, "x"));
        }
        // (c) Broadcast: 1,000 subscriptions matching every row (no equality to index: each
        // filter evaluated), 5,000 rows in 1000-row statements, as the anchor's bcast_n1000.
        server.sql(&table("bcast")).await;
        let every = |name: &str, _| format!("SELECT id, ts FROM {name}");
        let r = fan_out(&server, "bcast", 1000, every, (5000, 1000, 5000 * 1000), None).await;
        out.push(metric("live_bcast_n1000_deliveries", r.deliveries, "deliveries/s"));
        out.push(metric("live_bcast_n1000_writer", r.writer, "rows/s"));
    }

    /// Rounds of the watched writer, each paired with one on an unwatched table (even: each
    /// order as often).
    const PAIRS: u64 = 4;

    /// What [`fan_out`] measured: medians over its rounds.
    struct FanOut {
        /// Rows delivered per second, from a round's first statement to its last row's arrival.
        deliveries: f64,
        /// The writer's rows/s on the watched table.
        writer: f64,
        /// The same writer on the unwatched table (0 without one).
        alone: f64,
        /// The median of each pair's watched / unwatched rates.
        ratio: f64,
    }

    /// A server frame as the fan-out readers read it: its type and how many rows it carries
    /// (each row checked to be JSON, not kept).
    #[derive(serde::Deserialize)]
    struct Counted<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        #[serde(default)]
        rows: Vec<serde::de::IgnoredAny>,
    }

    /// `n` subscriptions (`sql(table, k)` for k < n) over 8 sockets read on a runtime of their
    /// own (as the anchor's listeners run in processes of their own: on the writer's runtime, its
    /// next statement waited behind them). A round: one writer inserts `rows` rows whose user_id
    /// cycles over 0..users, then waits until `expected` more rows were delivered. With `alone`
    /// (a table nobody watches), a warm-up round on it, then [`PAIRS`] rounds, each paired with
    /// the same writer on `alone`, in alternating order; else one round.
    async fn fan_out(
        server: &Server,
        name: &str,
        n: u64,
        sql: fn(&str, u64) -> String,
        (rows, users, expected): (u64, u64, u64),
        alone: Option<&str>,
    ) -> FanOut {
        let readers_rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let delivered = Arc::new(AtomicU64::new(0));
        let last_us = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for s in 0..8u64 {
            let (base, token) = (server.base.clone(), server.token.clone());
            let (delivered, last_us, name) = (Arc::clone(&delivered), Arc::clone(&last_us), name.to_owned());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            readers.push(readers_rt.spawn(async move {
                let mut socket = connect(&base, &token).await;
                let mine: Vec<u64> = (0..n).filter(|k| k % 8 == s).collect();
                for &k in &mine {
                    subscribe(&mut socket, &k.to_string(), &sql(&name, k)).await;
                }
                await_subscribed(&mut socket, mine.len()).await;
                let _ = ready_tx.send(());
                while let Ok(Some(Ok(Message::Text(text)))) =
                    tokio::time::timeout(Duration::from_secs(15), socket.next()).await
                {
                    // Counted, not built into a tree (as the anchor's listeners count
                    // notifications without parsing them): the readers share the writer's cores.
                    let frame: Counted = serde_json::from_str(text.as_str()).expect("json");
                    if frame.kind == "progress" {
                        continue;
                    }
                    assert_eq!(frame.kind, "rows", "{text}");
                    let got = frame.rows.len() as u64;
                    last_us.fetch_max(now_us(), Ordering::Relaxed);
                    delivered.fetch_add(got, Ordering::Relaxed);
                }
            }));
            ready_rx.await.expect("subscribed");
        }
        let (mut deliveries, mut writer, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut target = 0;
        if let Some(alone) = alone {
            // Warm-up, not counted: the first writes after a quiet spell were the slowest.
            write(server, alone, PAIRS * rows, rows, users).await;
        }
        for p in 0..if alone.is_some() { PAIRS } else { 1 } {
            let (first, mut pair) = (p * rows, [0.0; 2]);
            for watched in if p % 2 == 0 { [true, false] } else { [false, true] } {
                if !watched {
                    if let Some(alone) = alone {
                        pair[0] = write(server, alone, first, rows, users).await;
                    }
                    continue;
                }
                target += expected;
                let start_us = now_us();
                pair[1] = write(server, name, first, rows, users).await;
                let deadline = Instant::now() + Duration::from_secs(120);
                while delivered.load(Ordering::Relaxed) < target && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let got = delivered.load(Ordering::Relaxed);
                if got < target {
                    eprintln!("{name}: only {got} of {target} rows delivered");
                }
                let secs = (last_us.load(Ordering::Relaxed).saturating_sub(start_us)) as f64 / 1e6;
                deliveries.push((got + expected - target) as f64 / secs.max(1e-9));
            }
            writer.push(pair[1]);
            without.push(pair[0]);
            ratios.push(pair[1] / pair[0]);
        }
        for r in readers {
            r.abort();
        }
        readers_rt.shutdown_background();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        FanOut { deliveries: median(deliveries), writer: median(writer), alone: median(without), ratio: median(ratios) }
    }
}

mod metrics_scrape {
    //! The cost of `GET /metrics` to writers: 16 clients send synced single-row INSERTs through
    //! `/v1/api/sql` of a real server without pause; rounds of 2 s take turns with and without a
    //! scraper that GETs `/metrics` every 100 ms (150 times as often as Prometheus' default 15 s).
    //! The server holds 21 topics of 4 partitions and 2 consumer groups, so a scrape has figures
    //! to read. Printed: each mode's median rate, the median of the per-pair ratios, and the
    //! scrape's own time and size.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::{env, metric, percentile};

    const CLIENTS: u64 = 16;
    const ROUND: Duration = Duration::from_secs(2);

    pub(super) async fn run(out: &mut Vec<String>) {
        let server = Arc::new(super::http::Server::start(true).await);
        server.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
        server.sql("CREATE TOPIC ev PARTITIONS 4; ALTER TOPIC ev ADD SOURCE t ON INSERT").await;
        for i in 0..20 {
            server.sql(&format!("CREATE TOPIC idle{i} PARTITIONS 4")).await;
        }
        for g in ["a", "b"] {
            server.sql(&format!("CONSUME FROM ev GROUP '{g}' FROM EARLIEST LIMIT 1")).await;
        }
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (server, written, stop) = (Arc::clone(&server), Arc::clone(&written), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let sql = format!("INSERT INTO t VALUES ({}, 'new', 42.5)", c * 1_000_000_000 + n);
                        server.sql(&sql).await;
                        written.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                })
            })
            .collect();
        let scraping = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(std::sync::Mutex::new((Vec::new(), 0usize)));
        let scraper = {
            let (server, scraping, stop, scrapes) =
                (Arc::clone(&server), Arc::clone(&scraping), Arc::clone(&stop), Arc::clone(&scrapes));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if !scraping.load(Ordering::Relaxed) {
                        continue;
                    }
                    let start = Instant::now();
                    let resp = client
                        .get(format!("{}/metrics", server.base))
                        .bearer_auth(&server.token)
                        .send()
                        .await
                        .expect("scrape");
                    assert!(resp.status().is_success(), "/metrics: {}", resp.status());
                    let body = resp.bytes().await.expect("scrape body");
                    let mut s = scrapes.lock().expect("scrapes");
                    s.0.push(start.elapsed().as_secs_f64() * 1000.0);
                    s.1 = body.len();
                }
            })
        };
        // A round of warm-up, then pairs in alternating order (without first, then with first).
        tokio::time::sleep(ROUND).await;
        let rounds = env("BENCH_SCRAPE_ROUNDS", 8).max(1);
        let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let mut pair = [0.0; 2];
            let order = if r % 2 == 0 { [false, true] } else { [true, false] };
            for on in order {
                scraping.store(on, Ordering::Relaxed);
                let (before, start) = (written.load(Ordering::Relaxed), Instant::now());
                tokio::time::sleep(ROUND).await;
                pair[on as usize] = (written.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
            }
            without.push(pair[0]);
            with.push(pair[1]);
            ratios.push(pair[1] / pair[0]);
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("writer");
        }
        scraper.await.expect("scraper");
        for v in [&mut without, &mut with, &mut ratios] {
            v.sort_by(f64::total_cmp);
        }
        out.push(metric("metrics_scrape_writer_c16_without", percentile(&without, 0.5), "stmts/s"));
        out.push(metric("metrics_scrape_writer_c16_with_scraper", percentile(&with, 0.5), "stmts/s"));
        // In %: the two decimals of `metric` would round 0.976 to 0.98.
        out.push(metric("metrics_scrape_writer_ratio_pct", percentile(&ratios, 0.5) * 100.0, "%"));
        out.push(metric("metrics_scrape_writer_ratio_pct_min", ratios[0] * 100.0, "%"));
        let (mut took, size) = std::mem::take(&mut *scrapes.lock().expect("scrapes"));
        took.sort_by(f64::total_cmp);
        if !took.is_empty() {
            out.push(metric("metrics_scrape_p50", percentile(&took, 0.5), "ms"));
            out.push(metric("metrics_scrape_p99", percentile(&took, 0.99), "ms"));
        }
        out.push(metric("metrics_scrape_bytes", size as f64, "bytes"));
    }
}
