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

/// A position stuck below hundreds of thousands of acknowledged offsets (one message nobody
/// acknowledges): the acknowledged offsets, sent in scattered lists, are kept as ranges, survive a
/// reopen, are skipped by CONSUME, and the position jumps over all of them once the stuck
/// message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_position_below_many_acknowledged_offsets_stays_readable() {
    const N: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
    db.execute(&format!(
        "CREATE TABLE t (id BIGINT PRIMARY KEY); CREATE TOPIC ev PARTITIONS 1;
         ALTER TOPIC ev ADD SOURCE t ON INSERT WITH (payload = 'key');
         INSERT INTO t SELECT value FROM generate_series(1, {N})"
    ))
    .await
    .unwrap();
    let root = Principal::root();
    // Odd offsets first, then the even ones above 0, in lists of 10,000 from the top down.
    let mut offsets: Vec<u64> = (1..N).filter(|o| o % 2 == 1).collect();
    offsets.extend((2..N).rev().filter(|o| o % 2 == 0));
    for chunk in offsets.chunks(10_000) {
        db.ack_as(&root, "ev", "g", Some(0), &AckTarget::Offsets(chunk.to_vec())).await.unwrap();
    }
    let state = "SELECT position, acked_above, lag FROM system.topic_offsets WHERE group_id = 'g'";
    assert_eq!(query(&db, state).await, vec![vec!["0".to_owned(), (N - 1).to_string(), "1".to_owned()]]);
    drop(db);
    let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
    assert_eq!(query(&db, state).await, vec![vec!["0".to_owned(), (N - 1).to_string(), "1".to_owned()]]);
    let got = db.consume("ev", &group_request("g", 100, 0, 60_000)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0]);
    db.ack_as(&root, "ev", "g", Some(0), &AckTarget::Offsets(vec![0])).await.unwrap();
    assert_eq!(query(&db, state).await, vec![vec![N.to_string(), "0".to_owned(), "0".to_owned()]]);
}

/// DROP TOPIC while consumers create groups, claim and acknowledge on it: whichever way they
/// interleave, no group row outlives the topic, and the consumers get a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_topic_racing_consumers_leaves_no_group_rows() {
    use topicfusion_storage::{Durability as StoreDurability, Store, keys};

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), DatabaseOptions::default()).unwrap());
    db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
    let root = Principal::root();
    for round in 0..300u64 {
        db.execute(&format!(
            "CREATE TOPIC ev PARTITIONS 2; ALTER TOPIC ev ADD SOURCE t ON INSERT WITH (payload = 'key');
             INSERT INTO t SELECT value FROM generate_series({}, {})",
            round * 1000,
            round * 1000 + 199
        ))
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for c in 0..3 {
            let (db, root) = (Arc::clone(&db), root.clone());
            tasks.push(tokio::spawn(async move {
                for k in 0.. {
                    // A new group each time: each CONSUME loads and creates one.
                    let group = format!("g{c}_{k}");
                    let msgs = match db.consume("ev", &group_request(&group, 5, 0, 60_000)).await {
                        Ok(m) => m,
                        Err(e) => return e.to_string(),
                    };
                    for m in msgs {
                        let target = AckTarget::Offsets(vec![m.offset]);
                        if let Err(e) = db.ack_as(&root, "ev", &group, Some(m.partition), &target).await {
                            return e.to_string();
                        }
                    }
                }
                unreachable!()
            }));
        }
        tokio::time::sleep(Duration::from_micros(200 * (round % 20))).await;
        db.execute("DROP TOPIC ev").await.unwrap();
        for t in tasks {
            let err = t.await.unwrap();
            assert!(err.contains("does not exist") || err.contains("was dropped"), "{err}");
        }
    }
    drop(Arc::try_unwrap(db).ok().expect("the tasks ended"));
    let store = Store::open(dir.path(), StoreDurability::Process).unwrap();
    let prefix = keys::groups_prefix();
    let rows = store.scan(&prefix, &keys::prefix_end(&prefix), 10).unwrap();
    assert!(rows.is_empty(), "{} group row(s) outlived their topic", rows.len());
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
