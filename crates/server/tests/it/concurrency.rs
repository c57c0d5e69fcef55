//! Concurrent writers and change capture: offsets stay gap-free per partition and every
//! committed row change has exactly one message per matching route; the commit threads those
//! writers' statements run on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use topicfusion_engine::{Database, DatabaseOptions, Durability};

use crate::{open_temp, query};

const TABLES: [&str; 3] = ["a", "b", "c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_into_one_partitioned_topic() {
    let (_dir, db) = open_temp();
    concurrent_writers(db).await;
}

/// The same with every commit fsynced: statements wait for the WAL-sync thread's group commit
/// without holding a thread, and a reopened database has every acknowledged row and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_synced_writers_into_one_partitioned_topic() {
    let dir = tempfile::tempdir().unwrap();
    let options = || DatabaseOptions { durability: Durability::Sync, ..Default::default() };
    let db = Database::open(dir.path(), options()).unwrap();
    let acknowledged = concurrent_writers(db).await;
    let db = Database::open(dir.path(), options()).unwrap();
    let total = query(&db, "SELECT SUM(next_offset) FROM system.topic_partitions").await;
    assert_eq!(total[0][0], acknowledged.to_string());
}

/// 12 writers into 3 tables routed to one 4-partition topic; checks every message and the
/// offsets, and returns the number of messages.
async fn concurrent_writers(db: Database) -> usize {
    let db = Arc::new(db);
    db.execute("CREATE TOPIC ev PARTITIONS 4").await.unwrap();
    for t in TABLES {
        db.execute(&format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v TEXT)")).await.unwrap();
        db.execute(&format!("ALTER TOPIC ev ADD SOURCE {t} ON INSERT WITH (payload = 'key')")).await.unwrap();
        // Only updates of rows whose id is even are routed.
        db.execute(&format!("ALTER TOPIC ev ADD SOURCE {t} ON UPDATE WHERE id % 2 = 0 WITH (payload = 'key')"))
            .await
            .unwrap();
    }
    // Each writer owns a key range of every table; some of its statements fail on purpose.
    let writers = 12;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let db = Arc::clone(&db);
        tasks.push(tokio::spawn(async move {
            let table = TABLES[w % 3];
            let base = (w as i64) * 10_000;
            let mut committed_inserts = Vec::new();
            let mut committed_updates = Vec::new();
            for s in 0..20i64 {
                let ids: Vec<i64> = (0..5).map(|i| base + s * 5 + i).collect();
                let values: Vec<String> = ids.iter().map(|id| format!("({id}, 'x')")).collect();
                db.execute(&format!("INSERT INTO {table} VALUES {}", values.join(","))).await.unwrap();
                committed_inserts.extend(ids.iter().copied());
                // A duplicate key fails the whole statement: no rows, no messages.
                let dup = format!("INSERT INTO {table} VALUES ({}, 'new'), ({}, 'dup')", base + 9_000 + s, ids[0]);
                assert!(db.execute(&dup).await.is_err());
                if s % 4 == 0 {
                    let sql = format!("UPDATE {table} SET v = 'u{s}' WHERE id >= {} AND id < {}", ids[0], ids[0] + 5);
                    db.execute(&sql).await.unwrap();
                    committed_updates.extend(ids.iter().copied().filter(|id| id % 2 == 0));
                }
            }
            (table, committed_inserts, committed_updates)
        }));
    }
    let mut expected: BTreeSet<(String, String, i64)> = BTreeSet::new();
    for t in tasks {
        let (table, inserts, updates) = t.await.unwrap();
        for id in inserts {
            assert!(expected.insert((format!("public.{table}"), "insert".into(), id)));
        }
        for id in updates {
            expected.insert((format!("public.{table}"), "update".into(), id));
        }
    }

    let mut seen: BTreeSet<(String, String, i64)> = BTreeSet::new();
    let mut partition_of_key: BTreeMap<(String, i64), String> = BTreeMap::new();
    for p in 0..4 {
        let mut offsets = Vec::new();
        let mut from = 0;
        loop {
            let rows = query(&db, &format!("CONSUME FROM ev PARTITION {p} FROM OFFSET {from} LIMIT 1000")).await;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                // topic_id, partition_id, offset, timestamp_ms, op, source_table, key, payload
                let offset: u64 = r[2].parse().unwrap();
                offsets.push(offset);
                let key: serde_json::Value = serde_json::from_str(&r[6]).unwrap();
                let id = key["id"].as_i64().unwrap();
                assert!(seen.insert((r[5].clone(), r[4].clone(), id)), "duplicate message {r:?}");
                let previous = partition_of_key.insert((r[5].clone(), id), r[1].clone());
                assert!(previous.is_none_or(|p| p == r[1]), "key {id} moved partitions");
            }
            from = offsets.last().unwrap() + 1;
        }
        let expected_offsets: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected_offsets, "partition {p} has a gap or a duplicate");
        let next =
            query(&db, &format!("SELECT next_offset FROM system.topic_partitions WHERE partition_id = {p}")).await;
        assert_eq!(next[0][0], offsets.len().to_string());
    }
    assert_eq!(seen, expected);
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_of_one_row_lose_nothing() {
    let (_dir, db) = open_temp();
    let db = Arc::new(db);
    db.execute("CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)").await.unwrap();
    db.execute("INSERT INTO counters VALUES (1, 0)").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = Arc::clone(&db);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                db.execute("UPDATE counters SET n = n + 1 WHERE id = 1").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(query(&db, "SELECT n FROM counters").await, vec![vec!["200".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_of_one_key_commit_exactly_once() {
    let (_dir, db) = open_temp();
    let db = Arc::new(db);
    db.execute("CREATE TABLE t (id INT PRIMARY KEY, who INT)").await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let db = Arc::clone(&db);
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for id in 0..50 {
                if db.execute(&format!("INSERT INTO t VALUES ({id}, {w})")).await.is_ok() {
                    won += 1;
                }
            }
            won
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 50);
    assert_eq!(query(&db, "SELECT count(*) FROM t").await, vec![vec!["50".to_string()]]);
}

/// The commit threads (where DML statements write): one thread takes jobs in arrival order, a
/// job whose caller stopped waiting still runs, a panicking job fails only its caller, and
/// dropping them runs what is queued before the threads stop.
#[tokio::test]
async fn commit_threads_run_every_queued_job_in_order_even_without_its_caller() {
    use std::sync::Mutex;
    use topicfusion_engine::write::commit_threads::CommitThreads;

    let threads = CommitThreads::start(1).unwrap();
    // The first job holds the only thread until released, so the next ones queue.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let mut first = Box::pin(threads.run(move || wait.recv().is_ok()));
    // (`run` queues its job when first polled.)
    assert!(futures::poll!(&mut first).is_pending());
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&order);
    let abandoned = threads.run(move || o.lock().unwrap().push("abandoned"));
    // Polled once (queued), then dropped: its caller stops waiting.
    assert!(futures::poll!(Box::pin(abandoned)).is_pending());
    let o = Arc::clone(&order);
    let last = threads.run(move || o.lock().unwrap().push("last"));
    release.send(()).unwrap();
    let (first, last) = tokio::join!(first, last);
    assert!(first.unwrap());
    last.unwrap();
    assert_eq!(*order.lock().unwrap(), ["abandoned", "last"]);

    let err = threads.run(|| panic!("boom in a job")).await.unwrap_err();
    assert!(err.to_string().contains("a commit thread stopped"), "{err}");
    assert_eq!(threads.run(|| 41 + 1).await.unwrap(), 42);

    // Queued behind a slow job, then the threads are dropped: it still runs, before the drop
    // returns.
    let slow = threads.run(|| std::thread::sleep(std::time::Duration::from_millis(50)));
    assert!(futures::poll!(Box::pin(slow)).is_pending());
    let o = Arc::clone(&order);
    let queued = threads.run(move || o.lock().unwrap().push("queued at drop"));
    assert!(futures::poll!(Box::pin(queued)).is_pending());
    drop(threads);
    assert_eq!(*order.lock().unwrap(), ["abandoned", "last", "queued at drop"]);
}

/// Many callers at once on the default threads (one per core, at least 2) each get their own
/// job's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_threads_give_each_of_many_concurrent_callers_its_result() {
    let threads = Arc::new(topicfusion_engine::write::commit_threads::CommitThreads::start(0).unwrap());
    let tasks: Vec<_> = (0..256u64)
        .map(|i| {
            let threads = Arc::clone(&threads);
            tokio::spawn(async move { threads.run(move || i * i).await.unwrap() })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (i * i) as u64);
    }
}
