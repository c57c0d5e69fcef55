//! Crash recovery: `kill -9` of a `topicfusion sql` process in the middle of a stream of writes.
//! Every write the process acknowledged (printed its result for) is in the table after the
//! restart, every row change has its message and no message lacks its change, and offsets
//! continue without a gap or a reuse.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::query;
use topicfusion_engine::{Database, DatabaseOptions};

/// Starts the CLI reading statements from stdin, feeds it INSERTs from `next_id`, and kills it
/// with SIGKILL after `acks` acknowledged inserts. Returns the acknowledged ids.
fn write_then_kill(dir: &std::path::Path, next_id: u64, acks: usize) -> Vec<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
        .args(["sql", "--format", "csv", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Queue many more statements than will be acknowledged, so the kill lands mid-stream.
    let writer = std::thread::spawn(move || {
        for id in next_id..next_id + 100_000 {
            if writeln!(stdin, "INSERT INTO t VALUES ({id}, 'v{id}');").is_err() {
                return;
            }
        }
    });
    let mut acked = Vec::new();
    let mut line = String::new();
    let mut id = next_id;
    while acked.len() < acks {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the process ended early");
        match line.trim() {
            "count" => {}
            "1" => {
                acked.push(id);
                id += 1;
            }
            other => panic!("unexpected output {other:?}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = writer.join();
    acked
}

#[tokio::test]
async fn acknowledged_writes_and_their_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        db.execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev PARTITIONS 3;
             ALTER TOPIC ev ADD SOURCE t ON INSERT WITH (payload = 'key')",
        )
        .await
        .unwrap();
    }
    let mut acknowledged = Vec::new();
    let mut next_id = 0;
    for round in 0..3 {
        let acked = write_then_kill(dir.path(), next_id, 200 + round * 50);
        acknowledged.extend(&acked);
        let db = Database::open(dir.path(), DatabaseOptions::default()).unwrap();
        let rows: Vec<u64> =
            query(&db, "SELECT id FROM t ORDER BY id").await.iter().map(|r| r[0].parse().unwrap()).collect();
        // Every acknowledged write is there; at most the writes in flight at the kill are extra.
        for id in &acknowledged {
            assert!(rows.binary_search(id).is_ok(), "acknowledged row {id} lost in round {round}");
        }
        // Messages: exactly one per row, offsets gap-free in every partition.
        let mut keys = Vec::new();
        for p in 0..3 {
            let msgs = query(&db, &format!("CONSUME FROM ev PARTITION {p} FROM EARLIEST LIMIT 10000")).await;
            let offsets: Vec<u64> = msgs.iter().map(|m| m[2].parse().unwrap()).collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "gap in partition {p}");
            for m in &msgs {
                let key: serde_json::Value = serde_json::from_str(&m[6]).unwrap();
                keys.push(key["id"].as_u64().unwrap());
            }
        }
        keys.sort_unstable();
        assert_eq!(keys, rows, "messages and row changes differ after round {round}");
        next_id = rows.last().map_or(0, |l| l + 1);
    }
}

/// The crash-test harness (`scripts/crash-test.sh N`): 3 cycles of writers and per-message
/// acknowledging consumers killed with SIGKILL, each checked; and a lost row is caught.
#[test]
fn crash_harness_three_cycles_and_it_catches_a_lost_write() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_crash")).arg("run").args(args).output().unwrap();
    let out = run(&["--cycles", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 cycles, 0 violations"), "{stdout}");
    let out = run(&["--cycles", "1", "--tamper"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("violation: cycle 1: table differs from the committed statements"), "{stderr}");
}

/// The harness's cluster mode (`scripts/crash-test.sh --cluster KILLS`): the leader of three
/// `serve` processes killed twice under HTTP writes and a consumer group, every node checked;
/// and an acknowledged row deleted before the checks is caught.
#[test]
fn crash_harness_cluster_mode_two_leader_kills_and_it_catches_a_lost_write() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_crash"))
            .args(["cluster", "--bin", env!("CARGO_BIN_EXE_topicfusion")])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--kills", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2 leader kills") && stdout.contains("0 violations"), "{stdout}");
    let out = run(&["--kills", "1", "--tamper"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("violation: node 1: acknowledged INSERT of id"), "{stderr}");
}
