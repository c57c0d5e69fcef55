//! Benchmarks of the write path, point reads and consumption. Prints `METRIC name value unit`
//! lines (the format of ../shared/anchors) so figures can be compared with the anchors of the
//! same run. Run it in release: `scripts/bench.sh` (anchors included) or
//! `cargo run --release -p topicfusion --bin bench`.
//!
//! Knobs (environment): BENCH_ROWS (100000), BENCH_BATCH (1000), BENCH_BIG (10000000 messages
//! in the large topic), BENCH_DRAIN (200000), BENCH_LAT_N (1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use topicfusion_engine::{ConsumeRequest, Database, DatabaseOptions, Durability, StartPosition};

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
    let mut out = Vec::new();

    // 1. Write path: bulk INSERT with 0, 1 and 3 routes.
    for (name, routes) in
        [("no_route", &[][..]), ("one_route", &["full"][..]), ("three_routes", &["full", "key", "diff"][..])]
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let rate = bulk_insert(dir.path(), rows, batch, routes).await;
        out.push(metric(&format!("insert_b{batch}_{name}"), rate, "rows/s"));
    }

    // 2. Point SELECT on the primary key of a table of `rows` rows.
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

    // 3. Single-row autocommit INSERTs with the WAL fsynced (one route), like PostgreSQL's.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path(), DatabaseOptions { durability: Durability::Sync, ..Default::default() })
        .expect("open");
    exec(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, status TEXT, amount DOUBLE)").await;
    exec(&db, "CREATE TOPIC ev").await;
    exec(&db, "ALTER TOPIC ev ADD SOURCE t ON INSERT").await;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(3) {
        exec(&db, &format!("INSERT INTO t VALUES ({n}, 'new', 42.5)")).await;
        n += 1;
    }
    out.push(metric("insert_single_autocommit_sync_one_route", n as f64 / start.elapsed().as_secs_f64(), "stmts/s"));
    drop(db);

    // 4. CONSUME cost does not depend on the topic's size: LIMIT 1000 near the end of a topic of
    //    1k messages and of `big` messages.
    for size in [1000u64, big] {
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
        let mut lat = Vec::new();
        for i in 0..200u64 {
            // Random positions in the last million messages.
            let span = (size - 1000).min(1_000_000);
            let from = size - 1000 - if span > 0 { (i * 7919) % span } else { 0 };
            let start = Instant::now();
            let r = db.execute(&format!("CONSUME FROM big FROM OFFSET {from} LIMIT 1000")).await.expect("consume");
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r[0].batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        }
        lat.sort_by(f64::total_cmp);
        out.push(metric(&format!("consume_l1000_topic_{size}_p50"), percentile(&lat, 0.5), "ms"));
    }

    // 5. Drain with a group: CONSUME LIMIT 1000 then ACK, until `drain` messages are read.
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

    // 6. Commit-to-consumer latency: a consumer long-polls (engine API) while a producer commits
    //    one row every 2 ms.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).expect("open"));
    exec(&db, "CREATE TABLE k (id BIGINT PRIMARY KEY)").await;
    exec(&db, "CREATE TOPIC l").await;
    exec(&db, "ALTER TOPIC l ADD SOURCE k ON INSERT WITH (payload = 'key')").await;
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
    let mut lat: Vec<f64> = seen.iter().map(|&(o, t)| t - sent[o as usize]).collect();
    lat.sort_by(f64::total_cmp);
    out.push(metric("commit_to_consumer_latency_p50", percentile(&lat, 0.5), "ms"));
    out.push(metric("commit_to_consumer_latency_p99", percentile(&lat, 0.99), "ms"));

    for line in out {
        println!("{line}");
    }
}
