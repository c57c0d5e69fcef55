//! Three databases replicating through Raft in one process (each its own data dir, store, Raft
//! log and loopback transport): SQL written on the leader is readable on the followers, whose
//! in-memory catalog, routes and users are rebuilt from what they apply; a follower refuses
//! writes and names the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use topicfusion_cluster::NodeAddr;
use topicfusion_cluster::node::{Node, NodeConfig};
use topicfusion_engine::{Database, DatabaseOptions};

use crate::query;

struct Member {
    _dir: tempfile::TempDir,
    db: Arc<Database>,
    node: Node,
}

async fn start_three() -> Vec<Member> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<u64, NodeAddr> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let raft = l.local_addr().unwrap().to_string();
            (
                i as u64 + 1,
                NodeAddr { raft, http: format!("127.0.0.1:{}", 8100 + i), pg: format!("127.0.0.1:{}", 5500 + i) },
            )
        })
        .collect();
    let mut members = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let options = DatabaseOptions { retention_interval_ms: 0, ..Default::default() };
        let db = Arc::new(Database::open(&dir.path().join("data"), options).unwrap());
        let reloaded = Arc::clone(&db);
        let config = NodeConfig {
            id: i as u64 + 1,
            peers: peers.clone(),
            secret: "it-secret".into(),
            snapshot_every: 100_000,
            on_change: Some(Arc::new(move || {
                if let Err(e) = reloaded.reload_from_store() {
                    panic!("reload: {e}");
                }
            })),
        };
        let node = Node::start(config, &dir.path().join("raft"), Arc::clone(db.store()), listener).await.unwrap();
        members.push(Member { _dir: dir, db, node });
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_written_on_the_leader_is_read_on_every_follower() {
    let members = start_three().await;
    let leader_id = members[0].node.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let leader = members.iter().find(|m| m.node.id() == leader_id).unwrap();
    for sql in [
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)",
        "CREATE TOPIC ev PARTITIONS 2",
        "ALTER TOPIC ev ADD SOURCE t ON INSERT",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "UPDATE t SET v = 'bb' WHERE id = 2",
        "CREATE USER bob WITH PASSWORD 'pw' ROLE service",
    ] {
        leader.db.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let last = leader.db.store().last_applied().unwrap().index;
    let rows = query(&leader.db, "SELECT id, v FROM t ORDER BY id").await;
    let messages = query(&leader.db, "SELECT sum(message_count) FROM system.topic_partitions").await;
    assert_eq!(messages, vec![vec!["3".to_string()]]);
    for m in members.iter().filter(|m| m.node.id() != leader_id) {
        m.node
            .raft()
            .wait(Some(Duration::from_secs(20)))
            .applied_index_at_least(Some(last), "caught up")
            .await
            .unwrap();
        assert_eq!(query(&m.db, "SELECT id, v FROM t ORDER BY id").await, rows);
        assert_eq!(query(&m.db, "SELECT sum(message_count) FROM system.topic_partitions").await, messages);
        let users = query(&m.db, "SELECT name, role FROM system.users WHERE name = 'bob'").await;
        assert_eq!(users, vec![vec!["bob".to_string(), "service".to_string()]]);
        // Writes are the leader's: refused here, naming it.
        let refused = m.db.execute("INSERT INTO t VALUES (4, 'd')").await.unwrap_err().to_string();
        assert!(
            refused.contains("not the cluster's leader") && refused.contains(&format!("node {leader_id}")),
            "{refused}"
        );
        let refused = m.db.execute("CREATE TABLE u (id BIGINT PRIMARY KEY)").await.unwrap_err().to_string();
        assert!(refused.contains("not the cluster's leader"), "{refused}");
    }
    // The leader goes on writing; the followers follow (routes compiled from the applied
    // catalog: the new rows are routed by the leader, stored as messages everywhere).
    leader.db.execute("INSERT INTO t VALUES (4, 'd')").await.unwrap();
    let last = leader.db.store().last_applied().unwrap().index;
    for m in &members {
        m.node
            .raft()
            .wait(Some(Duration::from_secs(20)))
            .applied_index_at_least(Some(last), "caught up")
            .await
            .unwrap();
        assert_eq!(query(&m.db, "SELECT count(*) FROM t").await, vec![vec!["4".to_string()]]);
        assert_eq!(
            query(&m.db, "SELECT sum(message_count) FROM system.topic_partitions").await,
            vec![vec!["4".to_string()]]
        );
    }
    for m in members {
        m.node.shutdown().await;
    }
}
