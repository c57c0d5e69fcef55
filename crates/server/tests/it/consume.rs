//! Consumption under concurrency: disjoint claims within a group, synced acknowledgements by
//! competing consumers, redelivery of unacknowledged messages, and long polling on the commit
//! signal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use topicfusion_engine::{AckTarget, ConsumeRequest, Database, DatabaseOptions, Durability, Principal, StartPosition};

use crate::{open_temp, query};

fn group_request(group: &str, limit: u64, timeout_ms: u64, visibility_ms: u64) -> ConsumeRequest {
    ConsumeRequest {
        group: Some(group.into()),
        partition: None,
        start: Some(StartPosition::Earliest),
        limit,
        timeout_ms,
        visibility_timeout_ms: Some(visibility_ms),
        ..Default::default()
    }
}

async fn topic_with_rows(rows: u64, partitions: u32) -> (tempfile::TempDir, Arc<topicfusion_engine::Database>) {
    let (dir, db) = open_temp();
    db.execute(&format!(
        "CREATE TABLE t (id BIGINT PRIMARY KEY); CREATE TOPIC ev PARTITIONS {partitions};
         ALTER TOPIC ev ADD SOURCE t ON INSERT WITH (payload = 'key');
         INSERT INTO t SELECT value FROM generate_series(1, {rows})"
    ))
    .await
    .unwrap();
    (dir, Arc::new(db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_of_one_group_get_disjoint_messages_and_all_of_them() {
    let (_dir, db) = topic_with_rows(2000, 4).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let db = Arc::clone(&db);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let msgs = db.consume("ev", &group_request("g", 37, 0, 600_000)).await.unwrap();
                if msgs.is_empty() {
                    return got;
                }
                got.extend(msgs.iter().map(|m| (m.partition, m.offset)));
            }
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for m in t.await.unwrap() {
            assert!(all.insert(m), "message {m:?} was delivered to two consumers while claimed");
        }
    }
    assert_eq!(all.len(), 2000);
    let per_partition = query(&db, "SELECT partition_id, next_offset FROM system.topic_partitions ORDER BY 1").await;
    for row in per_partition {
        let (p, next): (u32, u64) = (row[0].parse().unwrap(), row[1].parse().unwrap());
        let got: Vec<u64> = all.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
        assert_eq!(got, (0..next).collect::<Vec<_>>());
    }
}

/// Competing consumers of one group on a synced database, each acknowledging every message it
/// gets (and every other one twice, so that a repeated ACK also runs beside the fsync of the
/// first): an ACK awaits its fsync without the group's lock, and whatever interleaving that
/// gives, each message is acknowledged once for the group and the reopened database has every
/// position at the partition's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synced_competing_consumers_acknowledge_everything_durably() {
    let dir = tempfile::tempdir().unwrap();
    let options = || DatabaseOptions { durability: Durability::Sync, ..Default::default() };
    let db = Arc::new(Database::open(dir.path(), options()).unwrap());
    db.execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY); CREATE TOPIC ev PARTITIONS 3;
         ALTER TOPIC ev ADD SOURCE t ON INSERT WITH (payload = 'key');
         INSERT INTO t SELECT value FROM generate_series(1, 600)",
    )
    .await
    .unwrap();
    let root = Principal::root();
    let mut tasks = Vec::new();
    for c in 0..6 {
        let (db, root) = (Arc::clone(&db), root.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let msgs = db.consume("ev", &group_request("g", 7, 0, 600_000)).await.unwrap();
                if msgs.is_empty() {
                    return got;
                }
                for (i, m) in msgs.iter().enumerate() {
                    let target = AckTarget::Offsets(vec![m.offset]);
                    let repeats = if (c + i) % 2 == 0 { 2 } else { 1 };
                    for _ in 0..repeats {
                        db.ack_as(&root, "ev", "g", Some(m.partition), &target).await.unwrap();
                    }
                    got.push((m.partition, m.offset));
                }
            }
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for m in t.await.unwrap() {
            assert!(all.insert(m), "message {m:?} was delivered twice though acknowledged");
        }
    }
    assert_eq!(all.len(), 600);
    drop(db);
    let db = Database::open(dir.path(), options()).unwrap();
    let rows = query(
        &db,
        "SELECT o.partition_id, o.position, p.next_offset FROM system.topic_offsets o
         JOIN system.topic_partitions p ON o.partition_id = p.partition_id ORDER BY 1",
    )
    .await;
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r[1], r[2], "partition {}: the position is not at the end after a reopen", r[0]);
    }
    assert!(db.consume("ev", &group_request("g", 100, 0, 600_000)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_redelivered_to_another_consumer() {
    let (_dir, db) = topic_with_rows(10, 1).await;
    // Consumer A claims five messages for 3 s and never acknowledges them.
    let first = db.consume("ev", &group_request("g", 5, 0, 3000)).await.unwrap();
    assert_eq!(first.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    // Consumer B gets the five others at once, then, waiting, the first five again.
    let second = db.consume("ev", &group_request("g", 10, 0, 60_000)).await.unwrap();
    assert_eq!(second.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    let third = db.consume("ev", &group_request("g", 10, 30_000, 60_000)).await.unwrap();
    assert_eq!(third.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert_eq!(third[0].payload, first[0].payload);
    let counts = query(&db, "SELECT delivery_count FROM system.topic_claims WHERE \"offset\" < 5").await;
    assert!(counts.iter().all(|r| r[0] == "2"), "{counts:?}");
    // After an ACK, nothing is delivered again.
    db.execute("ACK ev GROUP 'g' UPTO OFFSET 9").await.unwrap();
    let rest = db.consume("ev", &group_request("g", 10, 300, 1)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_the_message_committed_by_another_task() {
    let (_dir, db) = topic_with_rows(0, 2).await;
    let waiter = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let req = ConsumeRequest {
                group: None,
                partition: None,
                // Offset 0 of the empty topic: the result does not depend on whether the waiter
                // started before or after the INSERT; normally it is waiting by then.
                start: Some(StartPosition::Offset(0)),
                limit: 10,
                timeout_ms: 60_000,
                visibility_timeout_ms: None,
                ..Default::default()
            };
            db.consume("ev", &req).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    db.execute("INSERT INTO t VALUES (42)").await.unwrap();
    // Without a wake-up the waiter would return empty only after 60 s.
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, r#"{"id":42}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_empty_at_its_timeout_and_a_dropped_poll_ends() {
    let (_dir, db) = topic_with_rows(0, 1).await;
    let req = ConsumeRequest {
        group: Some("g".into()),
        partition: None,
        start: None,
        limit: 10,
        timeout_ms: 50,
        visibility_timeout_ms: None,
        ..Default::default()
    };
    assert!(db.consume("ev", &req).await.unwrap().is_empty());
    // Dropping a waiting CONSUME (a cancelled query) ends it; the group is unharmed.
    let long = ConsumeRequest { timeout_ms: 60_000, ..req.clone() };
    let cancelled = tokio::time::timeout(Duration::from_millis(50), db.consume("ev", &long)).await;
    assert!(cancelled.is_err());
    db.execute("INSERT INTO t VALUES (1)").await.unwrap();
    let got = db.consume("ev", &req).await.unwrap();
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0]);
}

#[tokio::test]
async fn consume_defaults_to_100_messages() {
    let (_dir, db) = topic_with_rows(150, 1).await;
    assert_eq!(query(&db, "CONSUME FROM ev FROM EARLIEST").await.len(), 100);
    assert_eq!(query(&db, "CONSUME FROM ev FROM OFFSET 120").await.len(), 30);
}

/// A waiting group CONSUME looks again when the group is reset or the topic gets partitions:
/// without the wake-up both polls below would return empty at their (long) timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_wake_on_reset_and_on_new_partitions() {
    let (_dir, db) = topic_with_rows(3, 1).await;
    // The group is at the end: nothing to read.
    let latest = ConsumeRequest { start: Some(StartPosition::Latest), ..group_request("r", 10, 0, 60_000) };
    assert!(db.consume("ev", &latest).await.unwrap().is_empty());
    let waiting = {
        let db = Arc::clone(&db);
        tokio::spawn(async move { db.consume("ev", &group_request("r", 10, 30_000, 60_000)).await.unwrap() })
    };
    while db.waiting_consumers() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    db.execute("RESET CONSUMER GROUP 'r' ON ev TO EARLIEST").await.unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 1, 2]);

    // New partitions: a poll of the whole topic reads them too.
    let drained = group_request("p", 100, 0, 60_000);
    assert_eq!(db.consume("ev", &drained).await.unwrap().len(), 3);
    let waiting = {
        let db = Arc::clone(&db);
        tokio::spawn(async move { db.consume("ev", &group_request("p", 100, 30_000, 60_000)).await.unwrap() })
    };
    while db.waiting_consumers() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    db.execute("ALTER TOPIC ev SET PARTITIONS 4").await.unwrap();
    // Rows until one lands in a new partition (keys hash over 4 partitions now).
    let mut id = 100;
    loop {
        db.execute(&format!("INSERT INTO t VALUES ({id})")).await.unwrap();
        let rows = query(&db, "SELECT sum(next_offset) FROM system.topic_partitions WHERE partition_id > 0").await;
        if rows[0][0] != "0" {
            break;
        }
        id += 1;
    }
    let got = waiting.await.unwrap();
    assert!(!got.is_empty(), "the poll returned nothing");
}
