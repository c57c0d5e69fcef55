//! Live queries: the engine's subscriptions (snapshot then changes in commit order, a filter's
//! enter/leave/update, resume from a position, a slow subscriber cut off, many subscriptions
//! indexed by equality, the end of a subscription whose table or user goes, clear errors), and
//! the real server's WebSocket (tokio-tungstenite) and SSE (reqwest) endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use topicfusion_engine::{
    Database, DatabaseOptions, LiveEvent, LiveGroup, LiveOp, LiveOptions, Principal, Subscription,
};
use topicfusion_storage::Value;

use crate::http::{ROOT_PASSWORD, Server, data_dir};

fn open(options: LiveOptions) -> (tempfile::TempDir, Arc<Database>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), DatabaseOptions { live: options, ..Default::default() }).unwrap();
    (dir, Arc::new(db))
}

async fn run(db: &Database, sql: &str) {
    db.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn subscribe(db: &Database, sql: &str) -> Subscription {
    db.subscribe(&Principal::root(), sql, None, None).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The next event within 10 s.
async fn next(sub: &mut Subscription) -> LiveEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is open")
}

/// One row as `(op, position, values, old values)`.
type Row = (LiveOp, u64, Vec<Value>, Option<Vec<Value>>);

/// The rows of the next event with rows (progress positions skipped).
async fn rows(sub: &mut Subscription) -> Vec<Row> {
    loop {
        match next(sub).await {
            LiveEvent::Rows(rows) => return rows.into_iter().map(|r| (r.op, r.position, r.row, r.old)).collect(),
            LiveEvent::Progress { .. } => continue,
            other => panic!("expected rows, got {other:?}"),
        }
    }
}

/// The snapshot's rows (up to the Ready event), checking they carry the subscription's position.
async fn snapshot(sub: &mut Subscription) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    loop {
        match next(sub).await {
            LiveEvent::Rows(rows) => {
                for r in rows {
                    assert_eq!((r.op, r.position), (LiveOp::Snapshot, sub.position));
                    out.push(r.row);
                }
            }
            LiveEvent::Ready { position } => {
                assert_eq!(position, sub.position);
                return out;
            }
            LiveEvent::End(end) => panic!("ended: {end:?}"),
            LiveEvent::Progress { .. } => panic!("progress during the snapshot"),
        }
    }
}

/// Asserts no rows (nor an end) arrive within 300 ms; progress positions may.
async fn quiet(sub: &mut Subscription) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(event) = tokio::time::timeout_at(deadline, sub.next()).await {
        if !matches!(event, Some(LiveEvent::Progress { .. })) {
            panic!("expected nothing, got {event:?}");
        }
    }
}

/// `statements` INSERTs into `t` of `per` rows each; row `i` (from 0) is `row(i)`.
async fn insert_many(db: &Database, statements: i64, per: i64, row: impl Fn(i64) -> String) {
    for s in 0..statements {
        let values: Vec<String> = (0..per).map(|j| row(s * per + j)).collect();
        run(db, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
}

/// `t`'s rows as `id -> n`.
async fn table_state(db: &Database) -> BTreeMap<i64, i64> {
    crate::query(db, "SELECT id, n FROM t")
        .await
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect()
}

fn int(n: i64) -> Value {
    Value::Int64(n)
}

fn text(s: &str) -> Value {
    Value::Utf8(s.to_owned())
}

#[tokio::test]
async fn a_live_query_gets_its_snapshot_then_each_change_as_it_moves_through_the_filter() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT, v TEXT)").await;
    run(&db, "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 1, 'c')").await;
    let mut sub = subscribe(&db, "SUBSCRIBE TO SELECT id, v FROM t WHERE user_id = 1").await;
    assert_eq!(sub.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "v"]);
    let mut snap = snapshot(&mut sub).await;
    snap.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(snap, [vec![int(1), text("a")], vec![int(3), text("c")]]);
    let start = sub.position;

    // One statement's changes arrive together, in its order; other users' rows not at all.
    run(&db, "INSERT INTO t VALUES (4, 1, 'd'), (5, 2, 'e'), (6, 1, 'f')").await;
    let got = rows(&mut sub).await;
    let p1 = got[0].1;
    assert!(p1 > start);
    assert_eq!(
        got,
        [(LiveOp::Insert, p1, vec![int(4), text("d")], None), (LiveOp::Insert, p1, vec![int(6), text("f")], None)]
    );
    run(&db, "INSERT INTO t VALUES (7, 2, 'g')").await;
    // Entering the filter is an insert, changing inside it an update (with the old row),
    // leaving it a delete (of the old row).
    run(&db, "UPDATE t SET user_id = 1 WHERE id = 2").await;
    let got = rows(&mut sub).await;
    let p2 = got[0].1;
    assert!(p2 > p1);
    assert_eq!(got, [(LiveOp::Insert, p2, vec![int(2), text("b")], None)]);
    run(&db, "UPDATE t SET v = 'A' WHERE id = 1").await;
    let got = rows(&mut sub).await;
    assert_eq!(got, [(LiveOp::Update, got[0].1, vec![int(1), text("A")], Some(vec![int(1), text("a")]))]);
    run(&db, "UPDATE t SET user_id = 2, v = 'gone' WHERE id = 3").await;
    let got = rows(&mut sub).await;
    assert_eq!(got, [(LiveOp::Delete, got[0].1, vec![int(3), text("c")], None)]);
    run(&db, "DELETE FROM t WHERE id IN (4, 5)").await;
    let got = rows(&mut sub).await;
    assert_eq!(got, [(LiveOp::Delete, got[0].1, vec![int(4), text("d")], None)]);
    // A primary-key change inside the filter is an update of the row (new key, old row).
    run(&db, "UPDATE t SET id = 40 WHERE id = 6").await;
    let got = rows(&mut sub).await;
    assert_eq!(got, [(LiveOp::Update, got[0].1, vec![int(40), text("f")], Some(vec![int(6), text("f")]))]);
    // A failed statement changes nothing and sends nothing.
    assert!(db.execute("INSERT INTO t VALUES (1, 1, 'dup')").await.is_err());
    quiet(&mut sub).await;

    // Without a snapshot: only what commits after the subscription.
    let mut later = db.subscribe(&Principal::root(), "SELECT * FROM t", Some(false), None).await.unwrap();
    run(&db, "INSERT INTO t VALUES (8, 3, 'h')").await;
    let got = rows(&mut later).await;
    assert_eq!(got[0].0, LiveOp::Insert);
    assert_eq!(got[0].2, [int(8), Value::Int32(3), text("h")]);
}

#[tokio::test]
async fn filters_without_an_equality_and_with_more_than_one_are_evaluated() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT, v TEXT)").await;
    let mut like = subscribe(&db, "SELECT id FROM t WHERE v LIKE 'a%'").await;
    let mut both = subscribe(&db, "SELECT id FROM t WHERE user_id = 1 AND v <> 'x'").await;
    let mut all = subscribe(&db, "SELECT v FROM t").await;
    for sub in [&mut like, &mut both, &mut all] {
        assert!(snapshot(sub).await.is_empty());
    }
    run(&db, "INSERT INTO t VALUES (1, 1, 'abc'), (2, 1, 'x'), (3, 2, 'ab'), (4, 2, NULL)").await;
    let ids = |rows: Vec<Row>| rows.into_iter().map(|r| r.2[0].clone()).collect::<Vec<_>>();
    assert_eq!(ids(rows(&mut like).await), [int(1), int(3)]);
    assert_eq!(ids(rows(&mut both).await), [int(1)]);
    assert_eq!(ids(rows(&mut all).await), [text("abc"), text("x"), text("ab"), Value::Null]);
    // Into the residual filter of `both`: an insert; out of it: a delete.
    run(&db, "UPDATE t SET v = 'y' WHERE id = 2").await;
    assert_eq!(rows(&mut both).await[0].0, LiveOp::Insert);
    run(&db, "UPDATE t SET v = 'x' WHERE id = 1").await;
    assert_eq!(rows(&mut both).await[0].0, LiveOp::Delete);
    assert_eq!(rows(&mut like).await[0].0, LiveOp::Delete);
}

#[tokio::test]
async fn equality_filters_match_as_sql_compares_whether_or_not_they_are_indexed() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT, name TEXT, score DOUBLE)").await;
    // (filter, the ids of the rows below it must see)
    let cases: [(&str, &[i64]); 9] = [
        ("user_id = 42", &[1]),
        ("(42 = user_id)", &[1]),
        ("score > 1 AND (user_id = 42 AND id > 0)", &[1]),
        ("name = 'a'", &[2]),
        ("user_id = 42 OR user_id = 7", &[1, 3]),
        ("user_id = 1.5", &[]),
        ("user_id = 99999999999", &[]),
        ("score = 2", &[1]),
        ("user_id = id", &[4]),
    ];
    let mut subs = Vec::new();
    for (filter, _) in cases {
        let mut sub = subscribe(&db, &format!("SELECT id FROM t WHERE {filter}")).await;
        snapshot(&mut sub).await;
        subs.push(sub);
    }
    run(&db, "INSERT INTO t VALUES (1, 42, 'b', 2), (2, 1, 'a', 0.5), (3, 7, NULL, NULL), (4, 4, 'c', 0)").await;
    for ((filter, wanted), sub) in cases.iter().zip(&mut subs) {
        let got: Vec<Value> = if wanted.is_empty() {
            quiet(sub).await;
            Vec::new()
        } else {
            rows(sub).await.into_iter().map(|r| r.2[0].clone()).collect()
        };
        assert_eq!(got, wanted.iter().map(|&i| int(i)).collect::<Vec<_>>(), "{filter}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_changes_arrive_in_commit_order() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT)").await;
    let mut sub = subscribe(&db, "SELECT id, n FROM t").await;
    assert!(snapshot(&mut sub).await.is_empty());
    let writers: Vec<_> = (0..8i64)
        .map(|w| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                for i in 0..25i64 {
                    let id = w * 1000 + i;
                    run(&db, &format!("INSERT INTO t VALUES ({id}, 0)")).await;
                    // Also a row of the next writer's, when it exists: writers' updates interleave.
                    let other = (w + 1) % 8 * 1000 + i;
                    run(&db, &format!("UPDATE t SET n = n + 1 WHERE id = {id} OR id = {other}")).await;
                    if i % 5 == 4 {
                        run(&db, &format!("DELETE FROM t WHERE id = {}", id - 2)).await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // Replaying the changes in the order they arrived gives the table as it is.
    let expected = table_state(&db).await;
    let mut replayed: BTreeMap<i64, i64> = BTreeMap::new();
    let mut last = 0;
    while replayed != expected {
        // One event is one statement's commit: its rows share a position, and positions
        // strictly increase from event to event.
        let event = rows(&mut sub).await;
        let position = event[0].1;
        assert!(position > last, "position {position} after {last}");
        last = position;
        for (op, p, row, _) in event {
            assert_eq!(p, position);
            let (Value::Int64(id), Value::Int64(n)) = (&row[0], &row[1]) else { panic!("{row:?}") };
            match op {
                LiveOp::Insert | LiveOp::Update => replayed.insert(*id, *n),
                LiveOp::Delete => replayed.remove(id),
                LiveOp::Snapshot => panic!("snapshot row after the snapshot"),
            };
        }
    }
    quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_made_while_writers_run_see_a_snapshot_then_exactly_the_later_changes() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT)").await;
    // The table is watched (a subscription exists) before the writers start, and while they run
    // more subscriptions start with a snapshot.
    let mut subs = vec![subscribe(&db, "SELECT id, n FROM t").await];
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                for i in 0..60i64 {
                    let id = w * 1000 + i % 20;
                    let sql = match i / 20 {
                        0 => format!("INSERT INTO t VALUES ({id}, {i})"),
                        1 => format!("UPDATE t SET n = n + 1 WHERE id = {id}"),
                        _ => format!("DELETE FROM t WHERE id = {id} AND n % 2 = 0"),
                    };
                    run(&db, &sql).await;
                }
            })
        })
        .collect();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        subs.push(subscribe(&db, "SELECT id, n FROM t").await);
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected = table_state(&db).await;
    let pair = |row: &[Value]| match row {
        [Value::Int64(id), Value::Int64(n)] => (*id, *n),
        other => panic!("{other:?}"),
    };
    for mut sub in subs {
        // The snapshot, then each change applied on it must find the row as it says it was.
        let mut state: BTreeMap<i64, i64> = snapshot(&mut sub).await.iter().map(|r| pair(r)).collect();
        while state != expected {
            for (op, _, row, old) in rows(&mut sub).await {
                let (id, n) = pair(&row);
                match op {
                    LiveOp::Insert => assert_eq!(state.insert(id, n), None, "insert of a row the subscriber has: {id}"),
                    LiveOp::Update => {
                        let (old_id, old_n) = pair(old.as_deref().unwrap());
                        assert_eq!(state.remove(&old_id), Some(old_n), "update of a row not as it was: {old_id}");
                        state.insert(id, n);
                    }
                    LiveOp::Delete => assert_eq!(state.remove(&id), Some(n), "delete of a row not as it was: {id}"),
                    LiveOp::Snapshot => panic!("snapshot row after the snapshot"),
                }
            }
        }
        quiet(&mut sub).await;
    }
}

#[tokio::test]
async fn resuming_from_a_position_replays_what_was_missed_within_the_kept_history() {
    let (_dir, db) = open(LiveOptions { history_rows: 50, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT)").await;
    let mut sub = subscribe(&db, "SELECT id FROM t WHERE user_id = 1").await;
    assert!(snapshot(&mut sub).await.is_empty());
    run(&db, "INSERT INTO t VALUES (1, 1)").await;
    let seen = rows(&mut sub).await[0].1;
    drop(sub);
    // Missed while disconnected (the table stays watched).
    run(&db, "INSERT INTO t VALUES (2, 1), (3, 2)").await;
    run(&db, "UPDATE t SET user_id = 2 WHERE id = 1").await;
    run(&db, "INSERT INTO t VALUES (9, 5)").await;
    let mut resumed =
        db.subscribe(&Principal::root(), "SELECT id FROM t WHERE user_id = 1", None, Some(seen)).await.unwrap();
    assert_eq!(resumed.position, seen);
    let got = rows(&mut resumed).await;
    assert_eq!((got[0].0, &got[0].2), (LiveOp::Insert, &vec![int(2)]));
    let got = rows(&mut resumed).await;
    assert_eq!((got[0].0, &got[0].2), (LiveOp::Delete, &vec![int(1)]));
    // A missed commit that did not concern it: once level, it is told it has seen it.
    let unrelated = db.store().position();
    loop {
        match next(&mut resumed).await {
            LiveEvent::Progress { position } if position >= unrelated => break,
            LiveEvent::Progress { .. } => {}
            other => panic!("expected progress, got {other:?}"),
        }
    }
    // Live changes follow the replay.
    run(&db, "INSERT INTO t VALUES (4, 1)").await;
    assert_eq!(rows(&mut resumed).await[0].2, [int(4)]);

    let error = |e: topicfusion_engine::ExecuteError| e.to_string();
    // A position this server never gave out.
    let ahead = db.subscribe(&Principal::root(), "SELECT id FROM t", Some(false), Some(u64::MAX)).await;
    assert!(error(ahead.err().unwrap()).contains("ahead of this server's last commit"));
    // Further back than the 50 kept rows.
    insert_many(&db, 10, 10, |i| format!("({}, 3)", 100 + i)).await;
    // (Evicted once the dispatch thread has handled those commits: it runs behind the writers.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let message = loop {
        match db.subscribe(&Principal::root(), "SELECT id FROM t", Some(false), Some(seen)).await {
            Err(e) => break error(e),
            Ok(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => panic!("position {seen} still accepted after 100 more rows"),
        }
    };
    assert!(message.contains("no longer kept") && message.contains("snapshot"), "{message}");
    // Before the table was watched at all.
    run(&db, "CREATE TABLE u (id BIGINT PRIMARY KEY)").await;
    let before = db.store().position();
    run(&db, "INSERT INTO u VALUES (1)").await;
    let unwatched = db.subscribe(&Principal::root(), "SELECT id FROM u", Some(false), Some(before)).await;
    assert!(error(unwatched.err().unwrap()).contains("no longer kept"));
    // Both a snapshot and a position: refused.
    let both = db.subscribe(&Principal::root(), "SELECT id FROM u", Some(true), Some(before)).await;
    assert!(error(both.err().unwrap()).contains("not both"));
}

#[tokio::test]
async fn an_idle_subscription_learns_its_resume_position_and_resumes_from_it_after_eviction() {
    let (_dir, db) = open(LiveOptions { history_rows: 20, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id INT)").await;
    let mut sub = subscribe(&db, "SELECT id FROM t WHERE user_id = 1").await;
    assert!(snapshot(&mut sub).await.is_empty());
    // 100 rows of other users: more than the history keeps.
    insert_many(&db, 10, 10, |i| format!("({i}, 2)")).await;
    let last = db.store().position();
    let progress = loop {
        match next(&mut sub).await {
            LiveEvent::Progress { position } if position >= last => break position,
            LiveEvent::Progress { .. } => continue,
            other => panic!("expected progress, got {other:?}"),
        }
    };
    let start = sub.position;
    drop(sub);
    run(&db, "INSERT INTO t VALUES (1000, 1)").await;
    // From where it started, the changes are gone from the history; from its progress, not.
    let old = db.subscribe(&Principal::root(), "SELECT id FROM t WHERE user_id = 1", None, Some(start)).await;
    assert!(old.err().unwrap().to_string().contains("no longer kept"));
    let mut resumed =
        db.subscribe(&Principal::root(), "SELECT id FROM t WHERE user_id = 1", None, Some(progress)).await.unwrap();
    let got = rows(&mut resumed).await;
    assert_eq!(got[0].2, [int(1000)]);
    let listed = crate::query(&db, "SELECT position, delivered FROM system.live_queries").await;
    assert_eq!(listed, [[got[0].1.to_string(), "1".to_owned()]]);
}

#[tokio::test]
async fn limits_a_large_commit_and_shutdown() {
    let (_dir, db) = open(LiveOptions { max_subscriptions: 2, max_queued_rows: 1000, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY)").await;
    let mut a = subscribe(&db, "SELECT id FROM t").await;
    let _b = subscribe(&db, "SELECT id FROM t WHERE id = 1").await;
    let third = db.subscribe(&Principal::root(), "SELECT id FROM t", None, None).await;
    assert!(third.err().unwrap().to_string().contains("2 live queries open, its limit"));
    snapshot(&mut a).await;
    // One commit larger than the dispatcher's queue bound is delivered whole, not dropped.
    run(&db, "INSERT INTO t SELECT value FROM generate_series(1, 5000)").await;
    let got = rows(&mut a).await;
    assert_eq!(got.len(), 5000);
    drop(got);
    // A server shutting down ends its subscriptions, and refuses new ones.
    db.begin_shutdown();
    match next(&mut a).await {
        LiveEvent::End(end) => assert_eq!(end.code, "shutting_down"),
        other => panic!("{other:?}"),
    }
    drop(a);
    let mut late = subscribe(&db, "SELECT id FROM t WHERE id = 5").await;
    loop {
        match next(&mut late).await {
            LiveEvent::End(end) => break assert_eq!(end.code, "shutting_down"),
            LiveEvent::Rows(_) | LiveEvent::Ready { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_too_far_behind_ends_every_subscription_and_forgets_the_dropped_positions() {
    // A queue of at most 100 changed rows: two 60-row commits queued before the dispatcher
    // takes them overflow it (8 writers' group commits queue several at once).
    let (_dir, db) = open(LiveOptions { max_queued_rows: 100, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, w BIGINT)").await;
    let mut sub = subscribe(&db, "SELECT id FROM t").await;
    snapshot(&mut sub).await;
    let start = sub.position;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8i64)
        .map(|w| {
            let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let base = w * 1_000_000_000 + i * 100;
                    run(&db, &format!("INSERT INTO t SELECT value + {base}, {w} FROM generate_series(0, 59)")).await;
                    i += 1;
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let ended = loop {
        match tokio::time::timeout_at(deadline, sub.next()).await.expect("server_overloaded within 60 s") {
            Some(LiveEvent::End(end)) => break end,
            Some(_) => {}
            None => panic!("the subscription stopped without an end"),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(ended.code, "server_overloaded", "{ended:?}");
    // The dropped changes are gone: resuming from before them is refused (subscribe again with
    // a snapshot), and a new subscription gets every change after its snapshot.
    let resumed = db.subscribe(&Principal::root(), "SELECT id FROM t", Some(false), Some(start)).await;
    let message = resumed.err().expect("resuming past dropped changes is refused").to_string();
    assert!(message.contains("no longer kept"), "{message}");
    let mut fresh = subscribe(&db, "SELECT id FROM t").await;
    assert!(!snapshot(&mut fresh).await.is_empty());
    run(&db, "INSERT INTO t VALUES (-1, -1)").await;
    let got = rows(&mut fresh).await;
    assert_eq!((got.len(), got[0].0, &got[0].2), (1, LiveOp::Insert, &vec![int(-1)]));
}

#[tokio::test]
async fn a_subscriber_too_slow_during_its_snapshot_gets_no_changes_and_is_told_to_snapshot_again() {
    let options = LiveOptions { buffer_rows: 100, ..LiveOptions::default() };
    let (_dir, db) = open(options);
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT)").await;
    run(&db, "INSERT INTO t SELECT value, 0 FROM generate_series(0, 49999)").await;
    let mut sub = subscribe(&db, "SELECT id, n FROM t").await;
    // Nothing read: the scan waits for room while changes queue behind it, past the limit.
    run(&db, "UPDATE t SET n = 1 WHERE id < 50").await;
    run(&db, "UPDATE t SET n = 2 WHERE id < 100").await;
    let end = loop {
        match next(&mut sub).await {
            LiveEvent::Rows(rows) => {
                assert!(rows.iter().all(|r| r.op == LiveOp::Snapshot), "a change before the snapshot was complete")
            }
            LiveEvent::End(end) => break end,
            other => panic!("expected the snapshot's rows then the end, got {other:?}"),
        }
    };
    assert_eq!(end.code, "subscriber_too_slow");
    assert!(end.message.contains("with a snapshot") && !end.message.contains("from_position"), "{}", end.message);
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn a_slow_subscriber_is_ended_while_writers_go_on_and_resumes_where_it_stopped() {
    let (_dir, db) = open(LiveOptions { buffer_rows: 100, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY)").await;
    let mut slow = subscribe(&db, "SELECT id FROM t").await;
    assert!(snapshot(&mut slow).await.is_empty());
    // The subscriber reads nothing while 1,000 rows commit: no write waits for it.
    insert_many(&db, 100, 10, |i| format!("({i})")).await;
    let mut ids = Vec::new();
    let mut last = slow.position;
    let end = loop {
        match next(&mut slow).await {
            LiveEvent::Rows(rows) => {
                for r in rows {
                    let Value::Int64(id) = r.row[0] else { panic!() };
                    ids.push(id);
                    last = r.position;
                }
            }
            LiveEvent::End(end) => break end,
            LiveEvent::Progress { .. } => {}
            LiveEvent::Ready { .. } => panic!("no second snapshot"),
        }
    };
    assert_eq!(end.code, "subscriber_too_slow");
    assert!(end.message.contains(&format!("from_position = {last}")), "{}", end.message);
    assert!(ids.len() <= 110 && !ids.is_empty(), "{} rows before the end", ids.len());
    assert!(slow.next().await.is_none());
    // Resuming from the last position it got gives exactly the rest.
    let mut resumed = db.subscribe(&Principal::root(), "SELECT id FROM t", Some(false), Some(last)).await.unwrap();
    while ids.len() < 1000 {
        for r in rows(&mut resumed).await {
            let Value::Int64(id) = r.2[0] else { panic!() };
            ids.push(id);
        }
    }
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    quiet(&mut resumed).await;
}

/// The rows of a FETCH from a cursor over a live query, as `(op, id)`.
async fn fetch(db: &Database, session: &mut topicfusion_engine::Session, sql: &str) -> Vec<(String, i64)> {
    use datafusion::arrow::array::{AsArray, StringArray};
    use datafusion::arrow::datatypes::Int64Type;
    let fetched = tokio::time::timeout(Duration::from_secs(10), db.execute_in(session, &Principal::root(), sql))
        .await
        .expect("a FETCH with rows to return answers at once");
    let result = fetched.unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0);
    let mut out = Vec::new();
    for b in &result.batches {
        let ops = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let ids = b.column(2).as_primitive::<Int64Type>();
        out.extend((0..b.num_rows()).map(|i| (ops.value(i).to_owned(), ids.value(i))));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_over_a_live_query_fetches_what_is_ready_and_fails_with_the_end() {
    use topicfusion_engine::{ErrorKind, Session};
    let stall = Duration::from_millis(300);
    let (_dir, db) = open(LiveOptions { buffer_rows: 100, snapshot_stall: stall, ..Default::default() });
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT)").await;
    run(&db, "INSERT INTO t VALUES (1, 0), (2, 0), (3, 1)").await;
    let mut session = Session::for_connection();
    let root = Principal::root();
    let e =
        db.execute_in(&mut session, &root, "DECLARE s SCROLL CURSOR WITH HOLD FOR SUBSCRIBE SELECT id FROM t").await;
    assert_eq!(e.unwrap_err().kind, ErrorKind::FeatureNotSupported);
    // Outside a transaction block only WITH HOLD, as in PostgreSQL.
    let e = db.execute_in(&mut session, &root, "DECLARE c CURSOR FOR SUBSCRIBE SELECT id FROM t").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoActiveTransaction, "{e}");
    db.execute_in(&mut session, &root, "DECLARE c CURSOR WITH HOLD FOR SUBSCRIBE SELECT id, k FROM t WHERE k = 0")
        .await
        .unwrap();
    // FETCH n waits for the first row only: the snapshot, then one commit's rows.
    assert_eq!(fetch(&db, &mut session, "FETCH 1 FROM c").await, [("snapshot".to_owned(), 1)]);
    assert_eq!(fetch(&db, &mut session, "FETCH 100 FROM c").await, [("snapshot".to_owned(), 2)]);
    run(&db, "INSERT INTO t VALUES (4, 0), (5, 1), (6, 0)").await;
    let inserted = [("insert".to_owned(), 4), ("insert".to_owned(), 6)];
    assert_eq!(fetch(&db, &mut session, "FETCH ALL FROM c").await, inserted);
    // With nothing to come, FETCH waits.
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), db.execute_in(&mut session, &root, "FETCH FORWARD 5 FROM c"));
    assert!(waiting.await.is_err(), "a FETCH returned with no change");
    // A reader that stops fetching is ended as too slow: FETCH returns the rows it had, then
    // fails with the end (SQLSTATE 53400 on the PostgreSQL protocol).
    insert_many(&db, 30, 10, |i| format!("({}, 0)", 100 + i)).await;
    let mut fetched = 0;
    let e = loop {
        match db.execute_in(&mut session, &root, "FETCH 1000 FROM c").await {
            Ok(mut r) => fetched += r.remove(0).batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::InsufficientResources, "{e}");
    assert!(e.to_string().contains("subscriber_too_slow") && e.to_string().contains("from_position"), "{e}");
    assert!(fetched > 0 && fetched < 300, "{fetched} rows before the end");
    // An ended cursor stays ended: never an empty FETCH, which a driver takes for the end.
    for sql in ["FETCH 10 FROM c", "MOVE ALL IN c"] {
        let again = db.execute_in(&mut session, &root, sql).await.unwrap_err();
        assert_eq!(again.kind, ErrorKind::InsufficientResources, "{sql}: {again}");
    }
    db.execute_in(&mut session, &root, "CLOSE c").await.unwrap();
    // A client that stops taking its snapshot is ended as too slow after `snapshot_stall`
    // (its scan's turn freed) instead of holding the scan. (Six chunks of rows: more than the
    // scan hands over before it waits for its reader.)
    insert_many(&db, 6, 1000, |i| format!("({}, 2)", 10_000 + i)).await;
    db.execute_in(&mut session, &root, "DECLARE big CURSOR WITH HOLD FOR SUBSCRIBE SELECT id, k FROM t").await.unwrap();
    assert_eq!(fetch(&db, &mut session, "FETCH 1 FROM big").await.len(), 1);
    tokio::time::sleep(stall * 3).await;
    let e = loop {
        let fetched = db.execute_in(&mut session, &root, "FETCH 1000 FROM big");
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), fetched).await.expect("the end, not a wait") {
            break e;
        }
    };
    assert_eq!(e.kind, ErrorKind::InsufficientResources, "{e}");
    assert!(e.to_string().contains("had no room to hand the client more rows"), "{e}");
    db.execute_in(&mut session, &root, "CLOSE big").await.unwrap();
    // A cursor whose table is dropped fails with table_changed (55000).
    db.execute_in(&mut session, &root, "BEGIN; DECLARE d CURSOR FOR SUBSCRIBE SELECT id FROM t WHERE k = 1")
        .await
        .unwrap();
    assert_eq!(
        fetch(&db, &mut session, "FETCH ALL FROM d").await,
        [("snapshot".to_owned(), 3), ("snapshot".to_owned(), 5)]
    );
    run(&db, "DROP TABLE t").await;
    let e = db.execute_in(&mut session, &root, "FETCH 1 FROM d").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ObjectNotInPrerequisiteState, "{e}");
    // COMMIT closes the cursor and ends its subscription.
    db.execute_in(&mut session, &root, "COMMIT").await.unwrap();
    assert_eq!(crate::query(&db, "SELECT count(*) FROM system.live_queries").await, [["0"]]);
}

/// Snapshots nobody reads (cursors that fetched one row) hold no turn among the 16 read at
/// once: more than 16 of them, and another user's subscription after them, all start at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_snapshots_do_not_hold_up_other_subscriptions() {
    use topicfusion_engine::Session;
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT); CREATE TABLE small (id BIGINT PRIMARY KEY)").await;
    run(&db, "INSERT INTO small VALUES (1)").await;
    insert_many(&db, 6, 1000, |i| format!("({i}, 0)")).await;
    let root = Principal::root();
    let mut session = Session::for_connection();
    for i in 0..20 {
        let declare = format!("DECLARE c{i} CURSOR WITH HOLD FOR SUBSCRIBE SELECT id, k FROM t; FETCH 1 FROM c{i}");
        let declared = tokio::time::timeout(Duration::from_secs(10), db.execute_in(&mut session, &root, &declare));
        declared.await.unwrap_or_else(|_| panic!("cursor {i} waited for a turn")).unwrap();
    }
    let mut other = tokio::time::timeout(Duration::from_secs(10), subscribe(&db, "SELECT id FROM small"))
        .await
        .expect("a subscription after 20 unread snapshots starts at once");
    assert_eq!(snapshot(&mut other).await, [[int(1)]]);
    // The unread ones are still whole: one reads all its rows.
    let mut read = 1;
    while read < 6000 {
        read += fetch(&db, &mut session, "FETCH ALL FROM c7").await.len();
    }
    assert_eq!(read, 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscriptions_by_key_each_get_their_rows() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id BIGINT, v TEXT)").await;
    let mut subs = Vec::new();
    for k in 0..1000 {
        let mut sub = subscribe(&db, &format!("SELECT id, v FROM t WHERE user_id = {k}")).await;
        assert!(snapshot(&mut sub).await.is_empty());
        subs.push(sub);
    }
    let values: Vec<String> = (0..2000).map(|i| format!("({i}, {}, 'v{i}')", i % 1000)).collect();
    run(&db, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    for (k, sub) in subs.iter_mut().enumerate() {
        let got: Vec<Vec<Value>> = rows(sub).await.into_iter().map(|r| r.2).collect();
        let k = k as i64;
        assert_eq!(got, [vec![int(k), text(&format!("v{k}"))], vec![int(k + 1000), text(&format!("v{}", k + 1000))]]);
    }
    // A key moving from one subscription to another: a delete for one, an insert for the other.
    run(&db, "UPDATE t SET user_id = 7 WHERE id = 3").await;
    assert_eq!(rows(&mut subs[3]).await[0].0, LiveOp::Delete);
    assert_eq!(rows(&mut subs[7]).await[0].0, LiveOp::Insert);
    quiet(&mut subs[5]).await;
    let listed = crate::query(&db, "SELECT count(*), sum(delivered) FROM system.live_queries").await;
    assert_eq!(listed, [["1000", "2002"]]);
    drop(subs);
    assert_eq!(crate::query(&db, "SELECT count(*) FROM system.live_queries").await, [["0"]]);
}

/// The keys a group names within 10 s, sorted and without repeats.
async fn ready_keys(group: &LiveGroup) -> Vec<u64> {
    let mut keys = tokio::time::timeout(Duration::from_secs(10), group.ready()).await.expect("a ring within 10 s");
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every event queued for a grouped subscription now (progress positions skipped), and whether
/// it ended.
fn drain(sub: &mut Subscription) -> (Vec<LiveEvent>, bool) {
    let mut events = Vec::new();
    loop {
        match sub.try_next() {
            std::task::Poll::Ready(Some(LiveEvent::Progress { .. })) => {}
            std::task::Poll::Ready(Some(event)) => events.push(event),
            std::task::Poll::Ready(None) => return (events, true),
            std::task::Poll::Pending => return (events, false),
        }
    }
}

#[tokio::test]
async fn grouped_subscriptions_are_named_by_their_group_and_read_without_waiting() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, user_id BIGINT, v TEXT)").await;
    run(&db, "INSERT INTO t VALUES (1, 1, 'before')").await;
    let group = LiveGroup::new();
    // With a snapshot, it may join only once the snapshot is read.
    let mut one = subscribe(&db, "SELECT id, v FROM t WHERE user_id = 1").await;
    assert!(!one.join(&group, 1), "joined during its snapshot");
    assert_eq!(snapshot(&mut one).await, [vec![int(1), text("before")]]);
    // A change queued for it before it joins is not lost: joining rings the group.
    run(&db, "INSERT INTO t VALUES (2, 1, 'early')").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::query(&db, "SELECT delivered FROM system.live_queries").await != [["1"]] {
        assert!(std::time::Instant::now() < deadline, "the change was not queued within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(one.join(&group, 1));
    assert!(!one.join(&group, 9), "joined a second time");
    let mut two =
        db.subscribe(&Principal::root(), "SELECT id FROM t WHERE user_id = 2", Some(false), None).await.unwrap();
    assert!(two.join(&group, 2));
    assert_eq!(ready_keys(&group).await, [1, 2]);
    let (events, ended) = drain(&mut one);
    assert!(!ended);
    assert!(matches!(&events[..], [LiveEvent::Rows(r)] if r[0].row == [int(2), text("early")]), "{events:?}");
    let (events, ended) = drain(&mut two);
    assert!(events.is_empty() && !ended, "{events:?}");

    // A commit reaching both names both, once each read, in commit order.
    run(&db, "INSERT INTO t VALUES (3, 2, 'a'), (4, 1, 'b'); INSERT INTO t VALUES (5, 2, 'c')").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        for key in ready_keys(&group).await {
            let sub = if key == 1 { &mut one } else { &mut two };
            for event in drain(sub).0 {
                if let LiveEvent::Rows(rows) = event {
                    seen.extend(rows.into_iter().map(|r| (key, r.row[0].clone())));
                }
            }
        }
    }
    seen.sort_by_key(|(key, _)| *key);
    assert_eq!(seen, [(1, int(4)), (2, int(3)), (2, int(5))]);

    // An end reaches the group too; after it the subscription is done.
    run(&db, "DROP TABLE t").await;
    let mut ends = BTreeMap::new();
    while ends.len() < 2 {
        for key in ready_keys(&group).await {
            let sub = if key == 1 { &mut one } else { &mut two };
            let (events, ended) = drain(sub);
            if let Some(LiveEvent::End(end)) = events.last() {
                assert!(ended, "{key}: more after its end");
                ends.insert(key, end.code.to_owned());
            }
        }
    }
    assert_eq!(ends, BTreeMap::from([(1, "table_changed".to_owned()), (2, "table_changed".to_owned())]));
    assert!(matches!(one.try_next(), std::task::Poll::Ready(None)));
}

#[tokio::test]
async fn a_subscription_ends_when_its_table_is_dropped_or_its_user_is() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY); CREATE USER ann WITH PASSWORD 'pw' ROLE user").await;
    let ann = db.principal("ann").unwrap();
    let mut mine = db.subscribe(&ann, "SELECT * FROM t", None, None).await.unwrap();
    let mut root = subscribe(&db, "SELECT id FROM t").await;
    snapshot(&mut mine).await;
    snapshot(&mut root).await;
    let listed = crate::query(&db, "SELECT id, \"user\", sql, position FROM system.live_queries ORDER BY id").await;
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0][1].as_str(), listed[0][2].as_str()), ("ann", "SELECT * FROM t"));
    assert_eq!(listed[0][3], mine.position.to_string());
    run(&db, "DROP USER ann").await;
    match next(&mut mine).await {
        LiveEvent::End(end) => {
            assert_eq!((end.code, end.message.as_str()), ("permission_denied", "user ann was dropped"))
        }
        other => panic!("{other:?}"),
    }
    assert!(mine.next().await.is_none());
    run(&db, "DROP TABLE t").await;
    match next(&mut root).await {
        LiveEvent::End(end) => assert_eq!(end.code, "table_changed", "{end:?}"),
        other => panic!("{other:?}"),
    }
    // A table of the same name is a new table: a new subscription sees it.
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY)").await;
    let mut again = subscribe(&db, "SELECT id FROM t").await;
    snapshot(&mut again).await;
    run(&db, "INSERT INTO t VALUES (1)").await;
    assert_eq!(rows(&mut again).await[0].2, [int(1)]);
}

#[tokio::test]
async fn bad_live_queries_get_clear_errors() {
    let (_dir, db) = open(LiveOptions::default());
    run(&db, "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TABLE u (id BIGINT PRIMARY KEY)").await;
    run(&db, "CREATE USER ann WITH PASSWORD 'pw' ROLE user").await;
    let refused = |sql: &'static str, wanted: &'static str| {
        let db = Arc::clone(&db);
        async move {
            let e =
                db.subscribe(&Principal::root(), sql, None, None).await.err().unwrap_or_else(|| panic!("{sql} ran"));
            assert!(e.to_string().contains(wanted), "{sql}: {e}");
        }
    };
    refused("SELECT * FROM t JOIN u ON t.id = u.id", "joins").await;
    refused("SELECT * FROM t, u", "exactly one table").await;
    refused("SELECT v FROM t GROUP BY v", "GROUP BY").await;
    refused("SELECT id FROM t ORDER BY id", "ORDER BY").await;
    refused("SELECT id FROM t LIMIT 1", "LIMIT").await;
    refused("SELECT DISTINCT id FROM t", "DISTINCT").await;
    refused("SELECT id + 1 FROM t", "select columns by name").await;
    refused("SELECT id AS x FROM t", "select columns by name").await;
    refused("SELECT * FROM t AS x", "without an alias").await;
    refused("SELECT 1", "exactly one table").await;
    refused("SELECT * FROM nope", "table public.nope does not exist").await;
    refused("SELECT nope FROM t", "column nope does not exist").await;
    refused("SELECT * FROM t WHERE v + 1", "Cannot coerce arithmetic expression").await;
    refused("SELECT * FROM t WHERE id", "must be a boolean expression").await;
    refused("SELECT * FROM t WHERE 1/0 = 1", "cannot be evaluated").await;
    refused("SELECT * FROM system.topics", "is a system table").await;
    refused("SELECT * FROM t; SELECT * FROM u", "one SELECT or SUBSCRIBE").await;
    refused("INSERT INTO t VALUES (1, 'a')", "one SELECT or SUBSCRIBE").await;
    refused("SELECT * FROM t WHERE (((", "Expected").await;
    refused("SUBSCRIBE SELECT * FROM t WITH (snapshot = true, from_position = 1)", "not both").await;
    // Roles below dba see only their own live queries in system.live_queries (whatever the
    // query reads of it); dba and system see everyone's.
    run(&db, "CREATE USER bob WITH PASSWORD 'pw' ROLE service; CREATE USER dee WITH PASSWORD 'pw' ROLE dba").await;
    let ann = db.principal("ann").unwrap();
    let (bob, dee) = (db.principal("bob").unwrap(), db.principal("dee").unwrap());
    let _anns = db.subscribe(&ann, "SELECT id FROM t WHERE v = 'ann''s secret'", None, None).await.unwrap();
    let _bobs = db.subscribe(&bob, "SELECT id FROM t", None, None).await.unwrap();
    // (`user` is a keyword, CURRENT_USER: the column is written quoted.)
    let own = "SELECT \"user\", sql FROM system.live_queries";
    assert_eq!(crate::query_as(&db, &ann, own).await, [["ann", "SELECT id FROM t WHERE v = 'ann''s secret'"]]);
    assert_eq!(crate::query_as(&db, &bob, own).await, [["bob", "SELECT id FROM t"]]);
    for count in
        ["SELECT count(*) FROM system.live_queries", "SELECT count(*) FROM (SELECT sql FROM system.live_queries)"]
    {
        assert_eq!(crate::query_as(&db, &ann, count).await, [["1"]], "{count}");
        assert_eq!(crate::query_as(&db, &dee, count).await, [["2"]], "{count}");
    }
    let bobs = "SELECT count(*) FROM system.live_queries WHERE \"user\" = 'bob'";
    assert_eq!(crate::query_as(&db, &ann, bobs).await, [["0"]]);
    assert_eq!(crate::query_as(&db, &dee, bobs).await, [["1"]]);
    drop((_anns, _bobs));
    // Reading system.users needs dba; a live query on it is refused by role first.
    let e = db.subscribe(&ann, "SELECT * FROM system.users", None, None).await.err().unwrap();
    assert!(e.to_string().contains("permission denied"), "{e}");
    // SUBSCRIBE through a request/response interface says where it runs.
    let e = db.execute("SUBSCRIBE TO SELECT * FROM t").await.err().unwrap();
    assert_eq!(e.kind, topicfusion_engine::ErrorKind::FeatureNotSupported);
    assert!(e.to_string().contains("/v1/api/live"), "{e}");
    // So does a cursor over one (its FETCH would wait for changes; only a PostgreSQL connection
    // can wait and cancel).
    let e = db.execute("DECLARE c CURSOR WITH HOLD FOR SUBSCRIBE SELECT * FROM t").await.err().unwrap();
    assert_eq!(e.kind, topicfusion_engine::ErrorKind::FeatureNotSupported);
    assert!(e.to_string().contains("/v1/api/live"), "{e}");
    assert_eq!(crate::query(&db, "SELECT count(*) FROM system.live_queries").await, [["0"]]);
}

// --- over HTTP, against the real server ---------------------------------------------------

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn token(server: &Server, user: &str, password: &str) -> String {
    let (status, body) =
        server.post("/v1/api/auth/login", None, json!({ "username": user, "password": password })).await;
    assert!(status.is_success(), "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn connect(server: &Server, token: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = server.url("/v1/api/live").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn send(socket: &mut Socket, frame: Json) {
    socket.send(tokio_tungstenite::tungstenite::Message::text(frame.to_string())).await.unwrap();
}

/// Subscribes `id` to `sql` without a snapshot and checks the `subscribed` answer.
async fn subscribe_now(socket: &mut Socket, id: &str, sql: &str) {
    send(socket, json!({ "type": "subscribe", "id": id, "sql": sql, "snapshot": false })).await;
    let answer = frame(socket).await;
    assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("subscribed"), Some(id)), "{answer}");
}

/// The next JSON text frame within 10 s, progress positions skipped.
async fn frame(socket: &mut Socket) -> Json {
    loop {
        let frame = any_frame(socket).await;
        if frame["type"] != "progress" {
            return frame;
        }
    }
}

/// The next JSON text frame within 10 s.
async fn any_frame(socket: &mut Socket) -> Json {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscriptions_snapshot_changes_errors_and_many_on_one_socket() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    crate::http::setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'one')").await;
    let root = token(&server, "root", ROOT_PASSWORD).await;
    let mut socket = connect(&server, &root).await;

    send(&mut socket, json!({ "type": "subscribe", "id": "a", "sql": "SELECT id, v FROM app.t" })).await;
    let subscribed = frame(&mut socket).await;
    assert_eq!((subscribed["type"].as_str(), subscribed["id"].as_str()), (Some("subscribed"), Some("a")));
    let position = subscribed["position"].as_u64().unwrap();
    let snap = frame(&mut socket).await;
    assert_eq!(
        snap,
        json!({ "type": "rows", "id": "a", "rows": [
        { "op": "snapshot", "position": position, "row": { "id": 1, "v": "one" } } ] })
    );
    assert_eq!(frame(&mut socket).await, json!({ "type": "ready", "id": "a", "position": position }));
    server.sql("INSERT INTO app.t VALUES (2, 'two'); UPDATE app.t SET v = 'uno' WHERE id = 1").await;
    let insert = frame(&mut socket).await;
    assert_eq!(insert["rows"][0]["op"], "insert");
    assert_eq!(insert["rows"][0]["row"], json!({ "id": 2, "v": "two" }));
    let update = frame(&mut socket).await;
    assert_eq!(update["rows"][0]["op"], "update");
    assert_eq!(update["rows"][0]["old"], json!({ "id": 1, "v": "one" }));
    let last_seen = update["rows"][0]["position"].as_u64().unwrap();
    assert!(last_seen > position);

    // Bad input: an error frame naming the subscription; the socket stays usable.
    send(&mut socket, json!({ "type": "subscribe", "id": "bad", "sql": "SELEC nonsense" })).await;
    let error = frame(&mut socket).await;
    assert_eq!((error["type"].as_str(), error["id"].as_str()), (Some("error"), Some("bad")));
    assert_eq!(error["error"]["code"], "syntax_error");
    send(&mut socket, json!({ "type": "subscribe", "id": "a", "sql": "SELECT id FROM app.t" })).await;
    assert_eq!(frame(&mut socket).await["error"]["message"], "a subscription with this id is open");
    socket.send(tokio_tungstenite::tungstenite::Message::text("{not json")).await.unwrap();
    assert_eq!(frame(&mut socket).await["error"]["code"], "bad_request");
    send(&mut socket, json!({ "type": "unsubscribe", "id": "a" })).await;
    assert_eq!(frame(&mut socket).await, json!({ "type": "unsubscribed", "id": "a" }));
    // Its id is free again, and the old subscription sends nothing more.
    subscribe_now(&mut socket, "a", "SELECT id FROM app.t WHERE id = 3").await;
    server.sql("INSERT INTO app.t VALUES (3, 'three'); INSERT INTO app.t VALUES (4, 'four')").await;
    let mine = frame(&mut socket).await;
    assert_eq!((mine["id"].as_str(), &mine["rows"][0]["row"]), (Some("a"), &json!({ "id": 3 })), "{mine}");
    assert_eq!(mine["rows"].as_array().unwrap().len(), 1, "{mine}");
    // A subscription that ends by itself (its table dropped) frees its id too.
    server.sql("CREATE TABLE app.gone (id INT PRIMARY KEY)").await;
    send(&mut socket, json!({ "type": "subscribe", "id": "g", "sql": "SELECT id FROM app.gone" })).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");
    assert_eq!(frame(&mut socket).await["type"], "ready");
    server.sql("DROP TABLE app.gone").await;
    let ended = frame(&mut socket).await;
    assert_eq!((ended["id"].as_str(), ended["error"]["code"].as_str()), (Some("g"), Some("table_changed")), "{ended}");
    send(&mut socket, json!({ "type": "subscribe", "id": "g", "sql": "SELECT id FROM app.t WHERE id = 4" })).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");
    assert_eq!(frame(&mut socket).await["rows"][0]["row"], json!({ "id": 4 }));
    let ready = frame(&mut socket).await;
    assert_eq!(ready["type"], "ready");
    // Where a client that saw everything so far would resume.
    let last_seen = ready["position"].as_u64().unwrap();
    for id in ["a", "g"] {
        send(&mut socket, json!({ "type": "unsubscribe", "id": id })).await;
        assert_eq!(frame(&mut socket).await, json!({ "type": "unsubscribed", "id": id }));
    }

    // 1,500 subscriptions on one socket, each on its own key: one commit readies more frames
    // than a socket writes in one turn (1024); the rest follow in the next.
    for k in 0..1500 {
        let sql = format!("SELECT v FROM app.t WHERE id = {}", 1000 + k);
        send(&mut socket, json!({ "type": "subscribe", "id": format!("k{k}"), "sql": sql, "snapshot": false })).await;
    }
    for _ in 0..1500 {
        assert_eq!(frame(&mut socket).await["type"], "subscribed");
    }
    let values: Vec<String> = (0..1500).map(|k| format!("({}, 'v{k}')", 1000 + k)).collect();
    server.sql(&format!("INSERT INTO app.t VALUES {}", values.join(", "))).await;
    let mut got = BTreeMap::new();
    for _ in 0..1500 {
        let f = frame(&mut socket).await;
        assert_eq!(f["rows"].as_array().unwrap().len(), 1, "{f}");
        got.insert(f["id"].as_str().unwrap().to_owned(), f["rows"][0]["row"]["v"].as_str().unwrap().to_owned());
    }
    assert_eq!(got.len(), 1500);
    assert!(got.iter().all(|(id, v)| id[1..] == v[1..]));
    let listed = server.sql("SELECT count(*) AS n FROM system.live_queries").await;
    assert_eq!(listed["results"][0]["rows"], json!([[1500]]));
    // Client frames sent together are answered together while the socket has more to write
    // than the connection holds (4,500 frames of 10 kB: a turn waits for the client to read):
    // no other subscription's frame between the answers (read one client frame per turn,
    // answers fell behind a busy socket's writes).
    for fill in ["x", "y", "z"] {
        server.sql(&format!("UPDATE app.t SET v = repeat('{fill}', 10000) WHERE id >= 1000")).await;
    }
    assert_eq!(frame(&mut socket).await["type"], "rows");
    let leaving: Vec<String> = (0..20).map(|k| format!("k{k}")).collect();
    for id in &leaving {
        let frame = json!({ "type": "unsubscribe", "id": id }).to_string();
        socket.feed(tokio_tungstenite::tungstenite::Message::text(frame)).await.unwrap();
    }
    socket.flush().await.unwrap();
    let (mut answered, mut between) = (Vec::new(), Vec::new());
    while answered.len() < leaving.len() {
        let f = frame(&mut socket).await;
        let id = f["id"].as_str().unwrap().to_owned();
        if f["type"] == "unsubscribed" {
            answered.push(id);
        } else if !answered.is_empty() && !leaving.contains(&id) {
            between.push(id);
        }
    }
    assert_eq!(answered, leaving);
    assert!(between.is_empty(), "frames of {} other subscriptions between the answers", between.len());
    drop(socket);

    // A user without the right to read system.users is refused; over a query-string token too.
    let user = token(&server, "u_user", "pw").await;
    let url = format!("{}?access_token={user}", server.url("/v1/api/live").replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut socket, json!({ "type": "subscribe", "id": "u", "sql": "SELECT * FROM system.users" })).await;
    assert_eq!(frame(&mut socket).await["error"]["code"], "forbidden");
    // Resume after a reconnect: what committed since the last position seen.
    send(&mut socket, json!({ "type": "subscribe", "id": "r", "sql": "SELECT id, v FROM app.t WHERE id < 1000", "from_position": last_seen })).await;
    assert_eq!(frame(&mut socket).await["position"], last_seen);
    server.sql("DELETE FROM app.t WHERE id = 2").await;
    let deleted = frame(&mut socket).await;
    assert_eq!(
        (deleted["rows"][0]["op"].as_str(), &deleted["rows"][0]["row"]),
        (Some("delete"), &json!({ "id": 2, "v": "two" }))
    );

    // An idle subscription is told how far it has seen, so it can resume from there.
    subscribe_now(&mut socket, "idle", "SELECT id FROM app.t WHERE id = -1").await;
    server.sql("INSERT INTO app.t VALUES (5, 'five')").await;
    let progress = loop {
        let f = any_frame(&mut socket).await;
        if f["type"] == "progress" && f["id"] == "idle" {
            break f["position"].as_u64().unwrap();
        }
    };
    assert!(progress > last_seen);

    // No credentials: 401 before any upgrade.
    let url = server.url("/v1/api/live").replacen("http://", "ws://", 1);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_snapshots_on_one_socket_all_complete_and_a_repeated_column_is_one_key() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    crate::http::setup(&server).await;
    server.sql("CREATE TABLE app.big (id INT PRIMARY KEY, v TEXT)").await;
    server.sql("INSERT INTO app.big SELECT value, concat('v', value) FROM generate_series(0, 7999)").await;
    let root = token(&server, "root", ROOT_PASSWORD).await;
    let mut socket = connect(&server, &root).await;
    // More snapshots than the server reads at once (16), each of 8 chunks (its channel holds
    // 2): every one completes, whole, on one socket.
    for k in 0..17 {
        send(&mut socket, json!({ "type": "subscribe", "id": format!("s{k}"), "sql": "SELECT id, v FROM app.big" }))
            .await;
    }
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    let (mut subscribed, mut ready) = (0, 0);
    while ready < 17 {
        let f = frame(&mut socket).await;
        match f["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            Some("rows") => {
                *rows.entry(f["id"].as_str().unwrap().to_owned()).or_default() += f["rows"].as_array().unwrap().len()
            }
            Some("ready") => ready += 1,
            _ => panic!("unexpected frame {f}"),
        }
    }
    assert_eq!(subscribed, 17);
    assert_eq!(rows.len(), 17);
    assert!(rows.values().all(|&n| n == 8000), "{rows:?}");

    // A column selected twice is one key of the row object (JSON objects have unique keys).
    send(&mut socket, json!({ "type": "subscribe", "id": "d", "sql": "SELECT id, v, id FROM app.big WHERE id = 7" }))
        .await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");
    // The text as sent (a parser would fold repeated keys into one).
    let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    let text = message.into_text().unwrap();
    assert!(text.contains(r#""row":{"id":7,"v":"v7"}}"#), "{text}");
}

/// Reads SSE events (`(event, id, data)`) from a response until `count` arrived.
async fn sse_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    count: usize,
) -> Vec<(String, String, Json)> {
    let mut events = Vec::new();
    while events.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = ("message".to_owned(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() && event != "progress" {
                events.push((event, id, serde_json::from_str(&data).unwrap()));
            }
        }
        if events.len() >= count {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.expect("data within 10 s");
        buffer.push_str(std::str::from_utf8(&chunk.unwrap().expect("the stream is open")).unwrap());
    }
    events
}

#[tokio::test]
async fn sse_streams_rows_and_resumes_with_last_event_id() {
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    crate::http::setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'one')").await;
    let client = reqwest::Client::new();
    let url = server.url("/v1/api/live/sse");
    let mut response = client
        .get(&url)
        .query(&[("sql", "SELECT id, v FROM app.t WHERE v <> 'skip'")])
        .basic_auth("u_user", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let events = sse_events(&mut response, &mut buffer, 3).await;
    let position = events[0].2["position"].as_u64().unwrap();
    assert_eq!((events[0].0.as_str(), events[0].1.as_str()), ("subscribed", ""));
    assert_eq!(
        events[1],
        (
            "message".into(),
            String::new(),
            json!({ "op": "snapshot", "position": position, "row": { "id": 1, "v": "one" } })
        )
    );
    assert_eq!((events[2].0.as_str(), events[2].1.clone()), ("ready", position.to_string()));
    server.sql("INSERT INTO app.t VALUES (2, 'two'), (3, 'skip'), (4, 'four')").await;
    let events = sse_events(&mut response, &mut buffer, 2).await;
    // One commit: the id (what a reconnect resumes after) only on its last row.
    assert_eq!((&events[0].1, &events[0].2["row"]), (&String::new(), &json!({ "id": 2, "v": "two" })));
    let last_id = events[1].1.clone();
    assert_eq!(events[1].2["row"], json!({ "id": 4, "v": "four" }));
    assert_eq!(last_id, events[1].2["position"].to_string());
    drop(response);
    // Reconnecting as EventSource does: Last-Event-ID resumes after it, no snapshot.
    server.sql("UPDATE app.t SET v = 'deux' WHERE id = 2").await;
    let mut response = client
        .get(&url)
        .query(&[("sql", "SELECT id, v FROM app.t WHERE v <> 'skip'")])
        .header("last-event-id", &last_id)
        .basic_auth("u_user", Some("pw"))
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let events = sse_events(&mut response, &mut buffer, 2).await;
    assert_eq!((events[0].0.as_str(), events[0].1.as_str()), ("subscribed", last_id.as_str()));
    assert_eq!((events[1].2["op"].as_str(), &events[1].2["row"]), (Some("update"), &json!({ "id": 2, "v": "deux" })));

    // Errors before the stream starts are the API's JSON errors.
    let bad =
        client.get(&url).query(&[("sql", "SELECT * FROM nope")]).basic_auth("u_user", Some("pw")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Json = bad.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");
    assert_eq!(body["error"]["code"], "statement_failed");
    let anonymous = client.get(&url).query(&[("sql", "SELECT * FROM app.t")]).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let missing = client.get(&url).basic_auth("u_user", Some("pw")).send().await.unwrap();
    assert_eq!(missing.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_over_the_postgresql_protocol_until_cancelled() {
    use tokio_postgres::SimpleQueryMessage;
    let (_tmp, data) = data_dir();
    let server = Server::start(&data, "");
    crate::http::setup(&server).await;
    server.sql("INSERT INTO app.t VALUES (1, 'one')").await;
    let (host, port) = server.pg.rsplit_once(':').unwrap();
    let (client, connection) = tokio_postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user("u_user")
        .password("pw")
        .dbname("topicfusion")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let stream = client.simple_query_raw("SUBSCRIBE TO SELECT id, v FROM app.t WHERE id < 100").await.unwrap();
    let mut stream = Box::pin(stream);
    let snapshot = next_row(&mut stream).await.unwrap();
    assert_eq!((snapshot[0].as_str(), &snapshot[2..]), ("snapshot", &["1".to_owned(), "one".to_owned()][..]));
    server.sql("INSERT INTO app.t VALUES (2, 'two'), (500, 'filtered'); DELETE FROM app.t WHERE id = 1").await;
    let insert = next_row(&mut stream).await.unwrap();
    assert_eq!((insert[0].as_str(), &insert[2..]), ("insert", &["2".to_owned(), "two".to_owned()][..]));
    assert!(insert[1].parse::<u64>().unwrap() > snapshot[1].parse::<u64>().unwrap());
    let delete = next_row(&mut stream).await.unwrap();
    assert_eq!((delete[0].as_str(), &delete[2..]), ("delete", &["1".to_owned(), "one".to_owned()][..]));
    // A cancel request ends it with 57014; the connection stays usable.
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    let error = next_row(&mut stream).await.unwrap_err();
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{error}");
    // Prepared (with a parameter or not): refused, naming where it runs.
    let prepared = client.query("SUBSCRIBE SELECT id FROM app.t WHERE id = $1", &[&1i64]).await.unwrap_err();
    assert_eq!(prepared.code(), Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED), "{prepared}");
    assert!(prepared.as_db_error().unwrap().message().contains("/v1/api/live"));
    let rows = client.simple_query("SELECT count(*) FROM system.live_queries").await.unwrap();
    let count = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("0"));

    // psql prints COPY (SUBSCRIBE ...) TO STDOUT as rows arrive (line by line when its output
    // is a pipe: through stdbuf, as on a terminal).
    let mut psql = std::process::Command::new("stdbuf")
        .args(["-oL", "psql", "-h", host, "-p", port, "-U", "root", "-d", "topicfusion", "-X", "-c"])
        .arg("COPY (SUBSCRIBE SELECT id, v FROM app.t WHERE id < 100 WITH (snapshot = false)) TO STDOUT WITH (FORMAT csv)")
        .env("PGPASSWORD", ROOT_PASSWORD)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql (Debian's postgresql-client; scripts/setup.sh installs it)");
    let stdout = psql.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Until the subscription is open, an insert may commit before it: insert until one shows.
    let mut line = None;
    for i in 0..50 {
        server.sql(&format!("INSERT INTO app.t VALUES ({}, 'copy')", 10 + i)).await;
        if let Ok(Ok(l)) = lines.recv_timeout(Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    let _ = psql.kill();
    let _ = psql.wait();
    let line = line.expect("a COPY row from psql");
    let fields: Vec<&str> = line.split(',').collect();
    assert_eq!((fields[0], fields[3]), ("insert", "copy"), "{line}");
    // The killed client's subscription ends with its connection, with no change to notice it by.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = server.sql("SELECT count(*) AS n FROM system.live_queries").await;
        if listed["results"][0]["rows"] == json!([[0]]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the killed client's subscription is open: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bad SQL: the error, not a stream.
    let out = std::process::Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "root", "-d", "topicfusion", "-X", "-c", "SUBSCRIBE SELECT * FROM nope"])
        .env("PGPASSWORD", ROOT_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// The next data row of a streaming simple query (cells as text), or its error.
async fn next_row(
    stream: &mut std::pin::Pin<Box<tokio_postgres::SimpleQueryStream>>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    use tokio_postgres::SimpleQueryMessage;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream is open");
        match message {
            Ok(SimpleQueryMessage::Row(row)) => {
                return Ok((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_owned()).collect());
            }
            Ok(SimpleQueryMessage::RowDescription(columns)) => {
                let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
                assert_eq!(names, ["op", "position", "id", "v"]);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn subscribe_and_copy_of_subscribe_are_recognized_in_simple_queries() {
    use topicfusion::pg::live::{LiveForm, live_form};
    use topicfusion_engine::CopyFormat;
    assert!(
        matches!(live_form(" subscribe select * from t ; "), Some(LiveForm::Rows(s)) if s == "subscribe select * from t")
    );
    let Some(LiveForm::Copy(q, options)) = live_form(
        "COPY (SUBSCRIBE SELECT a FROM t WHERE f(a) = ')' WITH (snapshot = false)) TO STDOUT WITH (FORMAT csv, HEADER)",
    ) else {
        panic!("not recognized");
    };
    assert_eq!(q, "SUBSCRIBE SELECT a FROM t WHERE f(a) = ')' WITH (snapshot = false)");
    assert_eq!((options.format, options.header), (Some(CopyFormat::Csv), Some(true)));
    assert!(live_form("SELECT 1").is_none());
    assert!(live_form("SUBSCRIBE SELECT * FROM t; SELECT 1").is_none());
    assert!(live_form("COPY (SELECT 1) TO STDOUT").is_none());
    assert!(live_form("COPY (SUBSCRIBE SELECT 1) TO '/tmp/x'").is_none());
    // Any text, whatever its first bytes (a prefix check must not cut a character).
    for text in ["SELECT 'é'", "SELECT 'über'", "é", "copé", "COPY (SELECT 'ü…') TO STDOUT", "subscribé", ""] {
        assert!(live_form(text).is_none(), "{text}");
    }
}
