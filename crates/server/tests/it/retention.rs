//! Retention with an injectable clock: by time, by bytes, both, none; across restarts; with
//! consumer groups behind the log start; with writers and consumers running during the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use topicfusion_engine::{Clock, ConsumeRequest, Database, DatabaseOptions, StartPosition};

use crate::query;

const HOUR_MS: i64 = 3_600_000;
const T0: i64 = 1_800_000_000_000;

/// A database whose clock is the returned cell; retention runs only when asked (or every
/// `interval_ms`).
fn open_at(dir: &std::path::Path, now: &Arc<AtomicI64>, interval_ms: u64) -> Database {
    let cell = Arc::clone(now);
    let options = DatabaseOptions {
        clock: Clock::from_fn(move || cell.load(Ordering::SeqCst)),
        retention_interval_ms: interval_ms,
        ..Default::default()
    };
    Database::open(dir, options).expect("open")
}

/// `(earliest_offset, next_offset, message_count, bytes)` of partition 0 of a topic.
async fn partition(db: &Database, topic: &str) -> (u64, u64, u64, u64) {
    let rows = query(
        db,
        &format!(
            "SELECT p.earliest_offset, p.next_offset, p.message_count, p.bytes FROM system.topic_partitions p JOIN system.topics t ON p.topic_id = t.topic_id WHERE t.name = 'public.{topic}' AND p.partition_id = 0"
        ),
    )
    .await;
    let n = |i: usize| rows[0][i].parse::<u64>().unwrap();
    (n(0), n(1), n(2), n(3))
}

async fn offsets(db: &Database, topic: &str, group: Option<&str>, limit: u64) -> Vec<u64> {
    let req = ConsumeRequest {
        group: group.map(str::to_owned),
        start: Some(StartPosition::Earliest),
        limit,
        ..Default::default()
    };
    db.consume(topic, &req).await.unwrap().iter().map(|m| m.offset).collect()
}

async fn insert(db: &Database, from: u64, n: u64) {
    db.execute(&format!("INSERT INTO t SELECT value, repeat('x', 50) FROM generate_series({from}, {})", from + n - 1))
        .await
        .unwrap();
}

async fn setup(db: &Database, options: &str) {
    db.execute(&format!(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev WITH ({options}); ALTER TOPIC ev ADD SOURCE t ON INSERT"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn time_retention_deletes_what_is_older_than_the_limit_and_keeps_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = open_at(dir.path(), &now, 0);
    setup(&db, "retention_seconds = 3600, retention_max_bytes = NULL").await;
    insert(&db, 0, 10).await;
    now.store(T0 + HOUR_MS / 2, Ordering::SeqCst);
    insert(&db, 10, 5).await;
    let (_, _, _, bytes_before) = partition(&db, "ev").await;
    // Nothing is old enough yet.
    query(&db, "RUN RETENTION ON ev").await;
    assert_eq!(partition(&db, "ev").await, (0, 15, 15, bytes_before));
    now.store(T0 + HOUR_MS + 1, Ordering::SeqCst);
    let status = query(&db, "RUN RETENTION ON ev").await;
    assert!(status[0][0].contains("deleted 10 messages"), "{status:?}");
    let (earliest, next, count, bytes) = partition(&db, "ev").await;
    assert_eq!((earliest, next, count), (10, 15, 5));
    assert!(bytes > 0 && bytes < bytes_before / 2, "{bytes} of {bytes_before}");
    assert_eq!(offsets(&db, "ev", None, 100).await, (10..15).collect::<Vec<_>>());
    // Offsets go on from the high watermark.
    insert(&db, 15, 1).await;
    assert_eq!(partition(&db, "ev").await.1, 16);
    // The run is recorded; the freed bytes are what the partition lost.
    let jobs =
        query(&db, "SELECT kind, topic, messages_deleted, bytes_freed, error FROM system.jobs ORDER BY job_id").await;
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1][..3], ["retention", "public.ev", "10"]);
    assert_eq!(jobs[1][3].parse::<u64>().unwrap(), bytes_before - bytes);
    assert_eq!(jobs[1][4], "NULL");
}

#[tokio::test]
async fn byte_retention_keeps_the_newest_messages_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = open_at(dir.path(), &now, 0);
    setup(&db, "retention_seconds = NULL, retention_max_bytes = 2000").await;
    insert(&db, 0, 100).await;
    let (_, _, _, all) = partition(&db, "ev").await;
    let per_message = all / 100;
    query(&db, "RUN RETENTION").await;
    let (earliest, next, count, bytes) = partition(&db, "ev").await;
    assert_eq!(next, 100);
    assert!(bytes <= 2000, "{bytes}");
    // Only as many as needed went: one more message would be over the limit.
    assert!(bytes + per_message > 2000, "{bytes} + {per_message}");
    assert_eq!(earliest + count, 100);
    assert_eq!(offsets(&db, "ev", None, 1000).await, (earliest..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn time_and_byte_limits_together_and_topics_without_limits() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = open_at(dir.path(), &now, 0);
    setup(&db, "retention_seconds = 3600, retention_max_bytes = 3000").await;
    db.execute("CREATE TOPIC forever WITH (retention_seconds = NULL, retention_max_bytes = NULL); ALTER TOPIC forever ADD SOURCE t ON INSERT; CREATE TOPIC weekly; ALTER TOPIC weekly ADD SOURCE t ON INSERT")
        .await
        .unwrap();
    insert(&db, 0, 20).await;
    now.store(T0 + 2 * HOUR_MS, Ordering::SeqCst);
    insert(&db, 20, 60).await;
    query(&db, "RUN RETENTION").await;
    // Time removed the first 20, bytes then more of the rest.
    let (earliest, next, _, bytes) = partition(&db, "ev").await;
    assert!(earliest > 20 && next == 80 && bytes <= 3000, "{earliest} {bytes}");
    // No limits: untouched even a year later; the default week keeps two-hour-old messages.
    assert_eq!(partition(&db, "weekly").await.0, 0);
    now.store(T0 + 365 * 24 * HOUR_MS, Ordering::SeqCst);
    query(&db, "RUN RETENTION").await;
    assert_eq!(partition(&db, "forever").await.0, 0);
    assert_eq!(partition(&db, "forever").await.2, 80);
    assert_eq!(partition(&db, "weekly").await.2, 0);
    assert_eq!(partition(&db, "ev").await, (80, 80, 0, 0));
}

#[tokio::test]
async fn retention_state_survives_restarts_with_exact_byte_counts() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    {
        let db = open_at(dir.path(), &now, 0);
        setup(&db, "retention_seconds = 3600").await;
        insert(&db, 0, 30).await;
        now.store(T0 + 2 * HOUR_MS, Ordering::SeqCst);
        insert(&db, 30, 30).await;
        query(&db, "RUN RETENTION").await;
        assert_eq!(partition(&db, "ev").await.0, 30);
    }
    let db = open_at(dir.path(), &now, 0);
    let (earliest, next, count, bytes) = partition(&db, "ev").await;
    assert_eq!((earliest, next, count), (30, 60, 30));
    insert(&db, 60, 10).await;
    assert_eq!(partition(&db, "ev").await.1, 70);
    now.store(T0 + 10 * HOUR_MS, Ordering::SeqCst);
    query(&db, "RUN RETENTION").await;
    // Every byte counted was freed: the count never drifts.
    assert_eq!(partition(&db, "ev").await, (70, 70, 0, 0));
    let freed: u64 = query(&db, "SELECT sum(bytes_freed) FROM system.jobs").await[0][0].parse().unwrap();
    assert!(freed > bytes, "{freed} {bytes}");
}

#[tokio::test]
async fn groups_behind_the_log_start_continue_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = open_at(dir.path(), &now, 0);
    setup(&db, "retention_seconds = 3600").await;
    insert(&db, 0, 10).await;
    // Group g: acknowledged 0..3, holds claims on 3..6.
    assert_eq!(offsets(&db, "ev", Some("g"), 3).await, [0, 1, 2]);
    db.execute("ACK ev GROUP 'g' UPTO OFFSET 2").await.unwrap();
    assert_eq!(offsets(&db, "ev", Some("g"), 3).await, [3, 4, 5]);
    now.store(T0 + 2 * HOUR_MS, Ordering::SeqCst);
    insert(&db, 10, 4).await;
    query(&db, "RUN RETENTION").await;
    assert_eq!(partition(&db, "ev").await.0, 10);
    // The group goes on from the log start; the claims below it are gone with the messages.
    assert_eq!(offsets(&db, "ev", Some("g"), 100).await, [10, 11, 12, 13]);
    // A new group from EARLIEST starts at the log start too.
    assert_eq!(offsets(&db, "ev", Some("h"), 100).await, [10, 11, 12, 13]);
    db.execute("ACK ev GROUP 'g' UPTO OFFSET 13").await.unwrap();
    let lag = query(&db, "SELECT position, lag FROM system.topic_offsets WHERE group_id = 'g'").await;
    assert_eq!(lag, [["14", "0"]]);
}

/// A large expired backlog goes in several steps while writers insert and a group consumes:
/// every new message keeps its offset, nothing is delivered twice, and offsets stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_and_consumers_run_during_retention() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = Arc::new(open_at(dir.path(), &now, 0));
    setup(&db, "retention_seconds = 3600").await;
    let backlog = topicfusion_engine::topics::retention::STEP_MESSAGES as u64 * 2 + 7;
    insert(&db, 0, backlog).await;
    now.store(T0 + 2 * HOUR_MS, Ordering::SeqCst);
    let writer = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            for i in 0..200u64 {
                db.execute(&format!("INSERT INTO t VALUES ({}, 'new')", 10_000_000 + i)).await.unwrap();
            }
        })
    };
    let consumer = {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            for _ in 0..200 {
                let got = offsets(&db, "ev", Some("c"), 500).await;
                if let Some(&last) = got.last() {
                    db.execute(&format!("ACK ev GROUP 'c' UPTO OFFSET {last}")).await.unwrap();
                }
                seen.extend(got);
            }
            seen
        })
    };
    let status = query(&db, "RUN RETENTION ON ev").await;
    writer.await.unwrap();
    let seen = consumer.await.unwrap();
    assert!(status[0][0].contains(&format!("deleted {backlog} messages")), "{status:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "a message was delivered twice or out of order");
    let (earliest, next, count, _) = partition(&db, "ev").await;
    assert_eq!((earliest, next, count), (backlog, backlog + 200, 200));
    assert_eq!(offsets(&db, "ev", None, 1000).await, (backlog..backlog + 200).collect::<Vec<_>>());
    let steps = query(&db, "SELECT messages_deleted FROM system.jobs").await;
    assert_eq!(steps, [[backlog.to_string()]]);
}

/// The background executor runs on its interval (the test waits for its effect, bounded).
#[tokio::test]
async fn the_background_job_enforces_retention_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let db = open_at(dir.path(), &now, 20);
    setup(&db, "retention_seconds = 3600").await;
    insert(&db, 0, 5).await;
    now.store(T0 + 2 * HOUR_MS, Ordering::SeqCst);
    for _ in 0..500 {
        // A run is recorded after its truncations and their compaction: wait for the record.
        let jobs = query(&db, "SELECT kind, messages_deleted FROM system.jobs").await;
        if !jobs.is_empty() {
            assert_eq!(jobs, [["retention", "5"]]);
            assert_eq!(partition(&db, "ev").await.0, 5);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the background job did not run within 10 s");
}

/// `system.jobs` keeps the last 1000 runs, in the store: the oldest go as new ones come, and a
/// reopened database shows the same records and goes on numbering after them.
#[tokio::test]
async fn job_records_are_durable_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    {
        let db = open_at(dir.path(), &now, 0);
        setup(&db, "retention_seconds = 3600").await;
        for _ in 0..1003 {
            db.execute("RUN RETENTION ON ev").await.unwrap();
        }
        assert_eq!(
            query(&db, "SELECT count(*), min(job_id), max(job_id) FROM system.jobs").await,
            [["1000", "4", "1003"]]
        );
    }
    let db = open_at(dir.path(), &now, 0);
    assert_eq!(query(&db, "SELECT count(*), min(job_id), max(job_id) FROM system.jobs").await, [["1000", "4", "1003"]]);
    db.execute("RUN RETENTION ON ev").await.unwrap();
    assert_eq!(query(&db, "SELECT count(*), min(job_id), max(job_id) FROM system.jobs").await, [["1000", "5", "1004"]]);
}
