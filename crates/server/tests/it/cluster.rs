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
            join: false,
        };
        let node = Node::start(config, &dir.path().join("raft"), Arc::clone(db.store()), listener).await.unwrap();
        members.push(Member { _dir: dir, db, node });
    }
    members
}

/// Waits until `m` has applied entry `last`.
async fn caught_up(m: &Member, last: u64) {
    m.node.raft().wait(Some(Duration::from_secs(20))).applied_index_at_least(Some(last), "caught up").await.unwrap();
}

/// `m`'s rows for `sql` once they are `want` (a follower reloads its memory on a thread of its
/// own after it applied entries: its catalog and users may lag its store a moment); fails with
/// the last rows seen after 20 s.
async fn eventually(m: &Member, sql: &str, want: &[Vec<String>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = match m.db.execute(sql).await {
            Ok(_) => query(&m.db, sql).await,
            Err(e) => vec![vec![format!("error: {e}")]],
        };
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "node {}: {sql} gives {got:?}, not {want:?}", m.node.id());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The elected leader, once it takes writes (it applied the terms before).
async fn writable_leader(members: &[Member]) -> &Member {
    let leader_id = members[0].node.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let leader = members.iter().find(|m| m.node.id() == leader_id).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !leader.node.is_writable() {
        assert!(std::time::Instant::now() < deadline, "the leader never takes writes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_written_on_the_leader_is_read_on_every_follower() {
    let members = start_three().await;
    let leader = writable_leader(&members).await;
    let leader_id = leader.node.id();
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
        caught_up(m, last).await;
        eventually(m, "SELECT id, v FROM t ORDER BY id", &rows).await;
        eventually(m, "SELECT sum(message_count) FROM system.topic_partitions", &messages).await;
        let bob = [vec!["bob".to_string(), "service".to_string()]];
        eventually(m, "SELECT name, role FROM system.users WHERE name = 'bob'", &bob).await;
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
        caught_up(m, last).await;
        eventually(m, "SELECT count(*) FROM t", &[vec!["4".to_string()]]).await;
        eventually(m, "SELECT sum(message_count) FROM system.topic_partitions", &[vec!["4".to_string()]]).await;
    }
    for m in members {
        m.node.shutdown().await;
    }
}

/// The next event of `sub` other than a progress position, within 20 s.
async fn next_event(sub: &mut topicfusion_engine::Subscription) -> topicfusion_engine::LiveEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("an event within 20 s");
        match event.expect("the subscription is open") {
            topicfusion_engine::LiveEvent::Progress { .. } => continue,
            other => return other,
        }
    }
}

/// `(position, id)` of each row `sub` delivers until it has `n`.
async fn live_rows(sub: &mut topicfusion_engine::Subscription, n: usize) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_event(sub).await {
            topicfusion_engine::LiveEvent::Rows(rows) => {
                for r in rows {
                    let topicfusion_storage::Value::Int64(id) = r.row[0] else { panic!("{:?}", r.row) };
                    out.push((r.position, id));
                }
            }
            topicfusion_engine::LiveEvent::Ready { .. } => {}
            other => panic!("expected rows, got {other:?}"),
        }
    }
    out
}

/// Live queries on a cluster: refused on a follower (naming the leader); on the leader the
/// snapshot, then each commit of concurrent writers once, in log order, with positions that
/// follow the log; a resume replays exactly what followed its position. When another node takes
/// the lead, the old leader's subscriptions end (`leader_changed`): they would miss the new
/// leader's commits. A resume from before the change is refused there; a new subscription works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_queries_run_on_the_leader_and_end_when_leadership_moves() {
    use topicfusion_engine::{ErrorKind, LiveEvent, Principal};
    use topicfusion_storage::store::POSITIONS_PER_ENTRY;
    let members = start_three().await;
    let leader = writable_leader(&members).await;
    let leader_id = leader.node.id();
    let root = Principal::root();
    leader.db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT); INSERT INTO t VALUES (1, 0)").await.unwrap();
    let last = leader.db.store().last_applied().unwrap().index;
    let followers: Vec<&Member> = members.iter().filter(|m| m.node.id() != leader_id).collect();
    for m in &followers {
        caught_up(m, last).await;
        eventually(m, "SELECT count(*) FROM t", &[vec!["1".to_string()]]).await;
        let e = m.db.subscribe(&root, "SELECT id FROM t", None, None).await.err().expect("refused on a follower");
        assert_eq!(e.kind, ErrorKind::ReadOnly, "{e}");
        assert!(e.to_string().contains(&format!("node {leader_id}")), "{e}");
    }
    let sql = "SELECT id FROM t WHERE k = 0";
    let mut sub = leader.db.subscribe(&root, sql, None, None).await.unwrap();
    assert_eq!(live_rows(&mut sub, 1).await, [(sub.position, 1)]);
    assert!(sub.position >= last * POSITIONS_PER_ENTRY, "{} is not a log position", sub.position);
    // Four writers at once (their statements share log entries): each matching row once. On
    // threads of their own: a small write proposes on its caller's thread and waits for Raft's
    // tasks, which share this test's runtime (a server runs them on another).
    let runtime = tokio::runtime::Handle::current();
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let (db, runtime) = (Arc::clone(&leader.db), runtime.clone());
            std::thread::spawn(move || {
                runtime.block_on(async {
                    for i in 0..25i64 {
                        let id = 100 + w * 100 + i;
                        db.execute(&format!("INSERT INTO t VALUES ({id}, 0), ({}, 1)", id + 50)).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let rows = live_rows(&mut sub, 100).await;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.1).collect();
    ids.sort_unstable();
    let want: Vec<i64> = (0..4).flat_map(|w| (0..25).map(move |i| 100 + w * 100 + i)).collect();
    assert_eq!(ids, want);
    // One row per statement here: each commit its own position, increasing, within the log.
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "positions not increasing: {rows:?}");
    let applied = leader.db.store().last_applied().unwrap().index;
    assert!(rows.iter().all(|r| r.0 > sub.position && r.0 / POSITIONS_PER_ENTRY <= applied), "{rows:?}");
    // Resuming from the middle replays exactly the rest.
    let mid = rows[49].0;
    let mut resumed = leader.db.subscribe(&root, sql, Some(false), Some(mid)).await.unwrap();
    assert_eq!(live_rows(&mut resumed, 50).await, rows[50..]);
    drop(resumed);
    // Another node takes the lead: the old leader applies the new term's entries, which its
    // subscriptions would not see; they end.
    // (A follower may refuse its vote while its leader's lease lasts: ask again until one of
    // them leads.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let new_leader = 'elected: loop {
        for candidate in &followers {
            candidate.node.raft().trigger().elect().await.unwrap();
            for _ in 0..100 {
                if let Some(m) = followers.iter().find(|m| m.node.is_writable()) {
                    break 'elected *m;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no other node takes the lead");
    };
    match next_event(&mut sub).await {
        LiveEvent::End(end) => assert_eq!(end.code, "leader_changed", "{end:?}"),
        other => panic!("expected the end, got {other:?}"),
    }
    let e = leader.db.subscribe(&root, sql, None, None).await.err().expect("the old leader refuses");
    assert_eq!(e.kind, ErrorKind::ReadOnly, "{e}");
    // The new leader has not kept the changes from before its term: resume with a snapshot.
    let e = new_leader.db.subscribe(&root, sql, Some(false), Some(rows[99].0)).await.err().expect("too old");
    assert!(e.to_string().contains("position_too_old"), "{e}");
    let mut fresh = new_leader.db.subscribe(&root, sql, None, None).await.unwrap();
    assert_eq!(live_rows(&mut fresh, 101).await.len(), 101);
    new_leader.db.execute("INSERT INTO t VALUES (7, 0)").await.unwrap();
    let after = live_rows(&mut fresh, 1).await;
    assert_eq!(after[0].1, 7);
    assert!(after[0].0 > fresh.position && after[0].0 > rows[99].0, "{after:?}");
    drop((sub, fresh));
    for m in members {
        m.node.shutdown().await;
    }
}

mod processes {
    //! Three `topicfusion serve` processes with `[cluster]` on loopback.

    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use reqwest::StatusCode;
    use serde_json::{Value, json};

    use crate::http::ROOT_PASSWORD;

    /// `n` ports free right now (bound, read, released).
    fn free_ports(n: usize) -> Vec<u16> {
        let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
    }

    struct Node {
        id: u64,
        config: PathBuf,
        data: PathBuf,
        raft: String,
        http: String,
        pg: String,
        child: Option<Child>,
        token: tokio::sync::OnceCell<String>,
    }

    impl Node {
        fn spawn(&mut self) {
            let child = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .arg("--data-dir")
                .arg(&self.data)
                .env("TOPICFUSION_ROOT_PASSWORD", ROOT_PASSWORD)
                .env("RUST_LOG", "error,openraft=off")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            self.child = Some(child);
        }

        /// Waits for the server's `listening on` lines (printed once it has the cluster's
        /// start-up state).
        fn wait_listening(&mut self) {
            let out = self.child.as_mut().unwrap().stdout.take().unwrap();
            let mut lines = BufReader::new(out).lines();
            for scheme in ["http", "postgres"] {
                let line = lines.next().unwrap_or_else(|| panic!("node {} exited", self.id)).unwrap();
                assert!(line.starts_with(&format!("listening on {scheme}://")), "node {}: {line}", self.id);
            }
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Sends `sql` as root, with a token this node issued at its first request (any node
        /// accepts it: the token secret is replicated; a password would cost argon2 each time).
        async fn post_sql(&self, http: &reqwest::Client, sql: &str) -> reqwest::Response {
            let token = self
                .token
                .get_or_init(|| async {
                    let login = json!({ "username": "root", "password": ROOT_PASSWORD });
                    let resp = http.post(format!("http://{}/v1/api/auth/login", self.http)).json(&login).send();
                    let body: Value = resp.await.unwrap().json().await.unwrap();
                    body["access_token"].as_str().unwrap().to_owned()
                })
                .await;
            http.post(format!("http://{}/v1/api/sql", self.http))
                .bearer_auth(token)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap()
        }

        async fn sql(&self, http: &reqwest::Client, sql: &str) -> (StatusCode, Value) {
            let resp = self.post_sql(http, sql).await;
            let status = resp.status();
            (status, resp.json().await.unwrap_or(Value::Null))
        }

        async fn count(&self, http: &reqwest::Client, sql: &str) -> Option<i64> {
            match self.sql(http, sql).await {
                (StatusCode::OK, body) => body["results"][0]["rows"][0][0].as_i64(),
                _ => None,
            }
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Polls until `node` answers `sql` with `want` (20 s at most).
    async fn until_count(node: &Node, http: &reqwest::Client, sql: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = node.count(http, sql).await;
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "node {}: {sql} gave {got:?}, not {want}", node.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes `sql` through whichever live node answers (a follower forwards to the leader; 421
    /// `not_leader` while none is known); returns the index in `nodes` of the leader that ran it.
    async fn write_on_leader(nodes: &[Node], http: &reqwest::Client, sql: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, n) in nodes.iter().enumerate().filter(|(_, n)| n.child.is_some()) {
                let resp = n.post_sql(http, sql).await;
                let status = resp.status();
                let answered_by =
                    resp.headers().get("x-topicfusion-answered-by").map(|v| v.to_str().unwrap().to_owned());
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                match status {
                    StatusCode::OK => {
                        return match answered_by {
                            Some(id) => nodes.iter().position(|n| n.id.to_string() == id).unwrap(),
                            None => i,
                        };
                    }
                    StatusCode::MISDIRECTED_REQUEST => assert_eq!(body["error"]["code"], "not_leader", "{body}"),
                    _ => panic!("node {}: {sql}: {status} {body}", n.id),
                }
            }
            assert!(Instant::now() < deadline, "no leader took {sql}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The configuration of node `id` in a cluster whose `peers` are nodes 1 to `peers`; node
    /// `n` listens on `ports[3(n-1)..3n]` (Raft, HTTP, PostgreSQL).
    fn config(id: u64, peers: u64, ports: &[u16], snapshot_every: u64) -> String {
        let port = |node: u64, kind: usize| ports[(node as usize - 1) * 3 + kind];
        let peers: Vec<String> = (1..=peers)
            .map(|n| {
                format!(
                    "  {{ id = {n}, raft = \"127.0.0.1:{}\", http = \"127.0.0.1:{}\", pg = \"127.0.0.1:{}\" }},",
                    port(n, 0),
                    port(n, 1),
                    port(n, 2)
                )
            })
            .collect();
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\npg_listen = \"127.0.0.1:{}\"\n[topics]\nretention_interval_ms = 0\n\
             [cluster]\nnode_id = {id}\nraft_listen = \"127.0.0.1:{}\"\nsecret = \"cluster-test-secret-0123\"\n\
             snapshot_every = {snapshot_every}\npeers = [\n{}\n]\n",
            port(id, 1),
            port(id, 2),
            port(id, 0),
            peers.join("\n")
        )
    }

    /// Starts three server processes with their data under `dir` and waits until they serve;
    /// also returns a fourth node, not started, configured to join them (`ALTER CLUSTER ADD NODE`).
    fn start_three(dir: &Path, snapshot_every: u64) -> (Vec<Node>, Node) {
        let ports = free_ports(12);
        let mut nodes: Vec<Node> = (1..=4u64)
            .map(|id| {
                let config = dir.join(format!("node{id}.toml"));
                let mut text = self::config(id, id.max(3), &ports, snapshot_every);
                if id == 4 {
                    // Added later: it must wait to be added, not form a cluster.
                    text.push_str("join = true\n");
                }
                std::fs::write(&config, text).unwrap();
                let base = (id as usize - 1) * 3;
                Node {
                    id,
                    config,
                    data: dir.join(format!("data{id}")),
                    raft: format!("127.0.0.1:{}", ports[base]),
                    http: format!("127.0.0.1:{}", ports[base + 1]),
                    pg: format!("127.0.0.1:{}", ports[base + 2]),
                    child: None,
                    token: Default::default(),
                }
            })
            .collect();
        let fourth = nodes.pop().unwrap();
        for n in &mut nodes {
            n.spawn();
        }
        for n in &mut nodes {
            n.wait_listening();
        }
        (nodes, fourth)
    }

    /// Three server processes: SQL on the leader is read on the followers; a follower forwards
    /// HTTP writes, group CONSUMEs and ACKs to the leader, and refuses writes over PostgreSQL
    /// naming the leader (SQLSTATE 25006); the leader
    /// killed with SIGKILL, the two others elect one and every acknowledged row is on both with
    /// the same topic offsets; the killed node restarts on its data and catches up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_server_processes_replicate_forward_or_refuse_follower_writes_and_fail_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut nodes, _) = start_three(dir.path(), 10_000);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let leader = write_on_leader(&nodes, &http, "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await;
        write_on_leader(&nodes, &http, "CREATE TOPIC ev PARTITIONS 2; ALTER TOPIC ev ADD SOURCE t ON INSERT").await;
        for i in 0..20 {
            write_on_leader(&nodes, &http, &format!("INSERT INTO t VALUES ({i}, 'v{i}')")).await;
        }
        for n in &nodes {
            until_count(n, &http, "SELECT count(*) FROM t", 20).await;
            until_count(n, &http, "SELECT sum(message_count) FROM system.topic_partitions", 20).await;
        }
        let follower = nodes.iter().position(|n| n.id != nodes[leader].id).unwrap();
        // system.cluster on a follower: every node, the leader as such, this node's positions.
        let (status, body) = nodes[follower]
            .sql(
                &http,
                "SELECT node_id, role, last_applied_index IS NOT NULL, pg_address FROM system.cluster ORDER BY node_id",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rows = body["results"][0]["rows"].as_array().unwrap().clone();
        let want: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let role = if n.id == nodes[leader].id { "leader" } else { "follower" };
                json!([n.id, role, n.id == nodes[follower].id, n.pg])
            })
            .collect();
        assert_eq!(rows, want);
        // /v1/api/health names each node's role and the leader.
        for n in [&nodes[leader], &nodes[follower]] {
            let health: Value =
                http.get(format!("http://{}/v1/api/health", n.http)).send().await.unwrap().json().await.unwrap();
            let role = if n.id == nodes[leader].id { "leader" } else { "follower" };
            assert_eq!(health["status"], "ok");
            assert_eq!(health["cluster"], json!({ "node_id": n.id, "role": role, "leader": nodes[leader].id }));
        }
        // Over HTTP a follower forwards what only the leader does, and answers with its answer.
        write_on_leader(&nodes, &http, "CREATE TABLE f (id BIGINT PRIMARY KEY)").await;
        let leader_id = nodes[leader].id.to_string();
        let resp = http
            .post(format!("http://{}/v1/api/sql", nodes[follower].http))
            .basic_auth("root", Some(ROOT_PASSWORD))
            .json(&json!({ "sql": "INSERT INTO f VALUES (1), (2)" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-topicfusion-answered-by"], leader_id.as_str());
        until_count(&nodes[leader], &http, "SELECT count(*) FROM f", 2).await;
        // Credentials are checked where the request arrives, before anything is forwarded.
        for auth in [None, Some("Bearer not-a-token")] {
            let mut request = http
                .post(format!("http://{}/v1/api/sql", nodes[follower].http))
                .json(&json!({ "sql": "INSERT INTO f VALUES (9)" }));
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert!(resp.headers().get("x-topicfusion-answered-by").is_none());
        }
        let token = http
            .post(format!("http://{}/v1/api/auth/login", nodes[follower].http))
            .json(&json!({ "username": "root", "password": ROOT_PASSWORD }))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let consume = |node: &Node, body: Value| {
            http.post(format!("http://{}/v1/api/topics/consume", node.http)).bearer_auth(&token).json(&body).send()
        };
        let resp = consume(
            &nodes[follower],
            json!({ "topic_id": "ev", "group_id": "web", "partition_id": 0, "start": "Earliest", "limit": 3 }),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-topicfusion-answered-by"], leader_id.as_str());
        let offsets: Vec<u64> = resp.json::<Value>().await.unwrap()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [0, 1, 2]);
        // The claims are the leader's: the same group gets the next messages, from any node.
        let other = nodes.iter().position(|n| n.id != nodes[leader].id && n.id != nodes[follower].id).unwrap();
        let resp =
            consume(&nodes[other], json!({ "topic_id": "ev", "group_id": "web", "partition_id": 0, "limit": 1 }))
                .await
                .unwrap();
        assert_eq!(resp.json::<Value>().await.unwrap()["messages"][0]["offset"], 3);
        let resp = http
            .post(format!("http://{}/v1/api/topics/ack", nodes[other].http))
            .bearer_auth(&token)
            .json(&json!({ "topic_id": "ev", "group_id": "web", "partition_id": 0, "offsets": [0, 1, 2] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({ "acknowledged_offset": 2, "position": 3 }));
        // Live queries run on the leader: a follower answers 421 naming it, the leader streams.
        let live = |node: &Node| {
            http.get(format!("http://{}/v1/api/live/sse", node.http))
                .bearer_auth(&token)
                .query(&[("sql", "SELECT id FROM f WHERE id = 2")])
                .send()
        };
        let resp = live(&nodes[follower]).await.unwrap();
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
        let body = resp.json::<Value>().await.unwrap();
        assert_eq!(body["error"]["code"], "not_leader", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(&nodes[leader].http), "{body}");
        let mut resp = live(&nodes[leader]).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut events = String::new();
        while !events.contains(r#""row":{"id":2}"#) {
            let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await.unwrap().unwrap();
            events.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on")));
        }
        drop(resp);
        // A request whose first statements ran here is not forwarded (the leader would run them
        // again): the client gets the refusal naming the leader, with what completed.
        let (status, body) = nodes[follower].sql(&http, "SELECT count(*) FROM f; INSERT INTO f VALUES (3)").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "not_leader");
        assert_eq!(body["results"][0]["rows"], json!([[2]]));
        assert!(
            body["error"]["message"].as_str().unwrap().starts_with("this node is not the cluster's leader"),
            "{body}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(&nodes[leader].pg), "{body}");
        let (host, port) = nodes[follower].pg.rsplit_once(':').unwrap();
        let (client, connection) = tokio_postgres::Config::new()
            .host(host)
            .port(port.parse().unwrap())
            .user("root")
            .password(ROOT_PASSWORD)
            .dbname("topicfusion")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let refused = client.simple_query("INSERT INTO t VALUES (101, 'y')").await.unwrap_err();
        let db_error = refused.as_db_error().expect("a server error");
        assert_eq!(db_error.code().code(), "25006");
        assert!(db_error.message().contains(&nodes[leader].pg), "{}", db_error.message());
        // A group's claims are the leader's: a group CONSUME is refused here, a read without a
        // group runs.
        let refused = client.simple_query("CONSUME FROM ev GROUP 'g' LIMIT 5").await.unwrap_err();
        assert_eq!(refused.as_db_error().expect("a server error").code().code(), "25006");
        let read = client.simple_query("CONSUME FROM ev FROM EARLIEST LIMIT 5").await.unwrap();
        assert!(read.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
        // COPY FROM is a write: refused before any row is sent (psql, as users run it).
        let (host, port) = nodes[follower].pg.rsplit_once(':').unwrap();
        let mut copy = std::process::Command::new("psql")
            .args(["-h", host, "-p", port, "-U", "root", "-d", "topicfusion", "-X", "-v", "VERBOSITY=verbose"])
            .args(["-c", "COPY t FROM STDIN"])
            .env("PGPASSWORD", ROOT_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let _ = copy.stdin.take().unwrap().write_all(b"200\tcopied\n\\.\n");
        }
        let out = copy.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("25006") && stderr.contains(&nodes[leader].pg), "{stderr}");
        let rows = client.simple_query("SELECT count(*) FROM t").await.unwrap();
        assert!(matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("20")));

        // SIGKILL the leader: the others elect one; writes go on there.
        let killed = leader;
        nodes[killed].kill();
        let stopped = Instant::now();
        write_on_leader(&nodes, &http, "INSERT INTO t VALUES (20, 'v20')").await;
        eprintln!("writes acknowledged again {:?} after the leader was killed", stopped.elapsed());
        for i in 21..30 {
            write_on_leader(&nodes, &http, &format!("INSERT INTO t VALUES ({i}, 'v{i}')")).await;
        }
        for n in nodes.iter().filter(|n| n.child.is_some()) {
            until_count(n, &http, "SELECT count(*) FROM t", 30).await;
            until_count(n, &http, "SELECT sum(message_count) FROM system.topic_partitions", 30).await;
            until_count(n, &http, "SELECT sum(next_offset) FROM system.topic_partitions", 30).await;
        }
        // The killed node restarts on its data and catches up.
        nodes[killed].spawn();
        nodes[killed].wait_listening();
        until_count(&nodes[killed], &http, "SELECT count(*) FROM t", 30).await;
        until_count(&nodes[killed], &http, "SELECT sum(next_offset) FROM system.topic_partitions", 30).await;
        let (status, body) = nodes[killed].sql(&http, "SELECT id FROM t WHERE id >= 20 ORDER BY id").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["rows"].as_array().unwrap().len(), 10);
    }

    /// Writes `sql` through `node` (forwarded if it no longer leads), again while it answers 421
    /// (an election is on), for 30 s at most.
    async fn write_through(node: &Node, http: &reqwest::Client, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match node.sql(http, sql).await {
                (StatusCode::OK, _) => return,
                (StatusCode::MISDIRECTED_REQUEST, _) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                (status, body) => panic!("node {}: {sql}: {status} {body}", node.id),
            }
        }
    }

    /// The table and topic [`STATE`] reads.
    const SCHEMA: &str = "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); CREATE TOPIC ev PARTITIONS 2; \
                          ALTER TOPIC ev ADD SOURCE t ON INSERT";

    /// `SELECT`s whose answers must be the same on every node once it caught up.
    const STATE: [&str; 3] = [
        "SELECT id, v FROM t ORDER BY id",
        "SELECT partition_id, next_offset, message_count FROM system.topic_partitions ORDER BY partition_id",
        "CONSUME FROM ev FROM EARLIEST LIMIT 10000",
    ];

    /// Polls until every live node answers [`STATE`] as the first does (30 s at most).
    async fn until_identical(nodes: &[Node], http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let live: Vec<&Node> = nodes.iter().filter(|n| n.child.is_some()).collect();
        for sql in STATE {
            loop {
                let mut answers = Vec::new();
                for n in &live {
                    let (status, body) = n.sql(http, sql).await;
                    answers.push((status, body["results"][0]["rows"].clone()));
                }
                if answers.iter().all(|a| a.0 == StatusCode::OK && a.1 == answers[0].1) {
                    break;
                }
                assert!(Instant::now() < deadline, "{sql}: nodes differ: {answers:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// A follower paused with SIGSTOP for 10 s while the others go on writing catches up when
    /// resumed; a follower whose data dir is wiped catches up from the leader (the log behind the
    /// leader's snapshot is purged: `snapshot_every` = 100 and 600 entries written); a fourth
    /// node added with ALTER CLUSTER catches up and votes, then is removed. Every node ends with
    /// the same rows, offsets and messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_a_wiped_and_an_added_node_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut nodes, mut fourth) = start_three(dir.path(), 100);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let leader = write_on_leader(&nodes, &http, SCHEMA).await;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let paused = followers[0];
        let pid = nodes[paused].child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
        let stopped_at = Instant::now();
        let mut next = 0;
        for _ in 0..300 {
            write_through(&nodes[leader], &http, &format!("INSERT INTO t VALUES ({next}, 'v{next}')")).await;
            next += 1;
        }
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped_at.elapsed())).await;
        assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
        eprintln!("paused: 300 writes in {:?}", stopped_at.elapsed());
        until_count(&nodes[paused], &http, "SELECT count(*) FROM t", next).await;
        until_identical(&nodes, &http).await;
        eprintln!("paused: caught up {:?} after the pause began", stopped_at.elapsed());

        // Wipe the other follower: killed, its data dir removed, started again.
        let wiped = followers[1];
        nodes[wiped].kill();
        for _ in 0..300 {
            write_on_leader(&nodes, &http, &format!("INSERT INTO t VALUES ({next}, 'v{next}')")).await;
            next += 1;
        }
        std::fs::remove_dir_all(&nodes[wiped].data).unwrap();
        nodes[wiped].spawn();
        nodes[wiped].wait_listening();
        until_count(&nodes[wiped], &http, "SELECT count(*) FROM t", next).await;
        write_on_leader(&nodes, &http, &format!("INSERT INTO t VALUES ({next}, 'last')")).await;
        next += 1;
        until_count(&nodes[wiped], &http, "SELECT count(*) FROM t", next).await;
        until_identical(&nodes, &http).await;
        eprintln!("wiped: caught up {:?} after the pause began", stopped_at.elapsed());

        // A fourth node joins with ALTER CLUSTER ADD NODE, sent to a follower (which forwards it):
        // the statement returns once the node has caught up and votes. Then it is removed.
        fourth.spawn();
        let add = format!("ALTER CLUSTER ADD NODE 4 '{}' HTTP '{}' PG '{}'", fourth.raft, fourth.http, fourth.pg);
        let (status, body) = nodes[followers[0]].sql(&http, &add).await;
        assert_eq!(
            (status, &body["results"][0]["rows"]),
            (StatusCode::OK, &json!([["node 4 added: it votes"]])),
            "{body}"
        );
        fourth.wait_listening();
        nodes.push(fourth);
        until_identical(&nodes, &http).await;
        let roles = "SELECT node_id, role FROM system.cluster ORDER BY node_id";
        let (_, body) = nodes[3].sql(&http, roles).await;
        let rows = body["results"][0]["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 4, "{body}");
        assert_eq!(rows[3], json!([4, "follower"]));
        let (status, body) = nodes[leader].sql(&http, &add).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["message"], "Execution error: node 4 is already a voting member of the cluster");
        let (status, body) = nodes[leader].sql(&http, "ALTER CLUSTER REMOVE NODE 4").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        nodes[3].kill();
        let (_, body) = nodes[leader].sql(&http, "SELECT count(*) FROM system.cluster").await;
        assert_eq!(body["results"][0]["rows"], json!([[3]]));
        // Three voters again: a majority of two of them commits.
        write_through(&nodes[leader], &http, &format!("INSERT INTO t VALUES ({next}, 'after')")).await;
        until_identical(&nodes, &http).await;
    }

    /// A leader stopped with a write in flight (its followers stopped first, then resumed: they
    /// usually take the entry from their socket buffers) comes back after one of them, elected,
    /// wrote 400 entries (snapshots every 100): the write is answered, as committed or with an
    /// error, the nodes agree on it, and the old leader takes part again. (A write pending on a
    /// node that catches up through a snapshot covering its entry may not be answered by
    /// openraft 0.9; this test does not force that path.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_in_flight_on_a_deposed_leader_caught_up_by_a_snapshot_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (nodes, _) = start_three(dir.path(), 100);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let leader = write_on_leader(&nodes, &http, SCHEMA).await;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let signal = |node: &Node, sig: &str| {
            let pid = node.child.as_ref().unwrap().id().to_string();
            assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
        };
        // With its followers stopped the leader's next write is proposed but cannot commit.
        let (status, _) = nodes[leader].sql(&http, "SELECT 1").await;
        assert_eq!(status, StatusCode::OK);
        for &f in &followers {
            signal(&nodes[f], "-STOP");
        }
        let (url, token) = (format!("http://{}/v1/api/sql", nodes[leader].http), nodes[leader].token.get().cloned());
        let pending = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
            let sent =
                http.post(url).bearer_auth(token.unwrap()).json(&json!({ "sql": "INSERT INTO t VALUES (-1, 'w')" }));
            let resp = sent.send().await.ok()?;
            Some((resp.status(), resp.json::<Value>().await.unwrap_or(Value::Null)))
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(&nodes[leader], "-STOP");
        for &f in &followers {
            signal(&nodes[f], "-CONT");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let new_leader = loop {
            let (_, body) =
                nodes[followers[0]].sql(&http, "SELECT node_id FROM system.cluster WHERE role = 'leader'").await;
            let id = body["results"][0]["rows"][0][0].as_u64();
            if let Some(f) = followers.iter().copied().find(|&f| Some(nodes[f].id) == id) {
                break f;
            }
            assert!(Instant::now() < deadline, "no new leader among the followers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for i in 0..400 {
            write_through(&nodes[new_leader], &http, &format!("INSERT INTO t VALUES ({i}, 'v{i}')")).await;
        }
        // Snapshots are built in the background, and the log purged behind them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal(&nodes[leader], "-CONT");
        let answer = tokio::time::timeout(Duration::from_secs(60), pending).await;
        let (status, body) = answer.expect("the write in flight is answered").unwrap().expect("an HTTP answer");
        assert!(status == StatusCode::OK || body["error"]["code"].is_string(), "{status} {body}");
        until_identical(&nodes, &http).await;
        if status == StatusCode::OK {
            until_count(&nodes[leader], &http, "SELECT count(*) FROM t WHERE id = -1", 1).await;
        }
        // The old leader takes part again: a write through it reaches the new leader.
        write_through(&nodes[leader], &http, "INSERT INTO t VALUES (1000, 'after')").await;
        until_identical(&nodes, &http).await;
    }

    /// A data dir that served a single node (a table in it) is refused as a cluster node's: its
    /// data is in no Raft log. An empty one starts (tested above).
    #[test]
    fn a_single_node_data_dir_is_refused_as_a_cluster_node() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data1");
        let made = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
            .args(["sql", "--data-dir"])
            .arg(&data)
            .args(["-c", "CREATE TABLE kept (id BIGINT PRIMARY KEY)"])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let ports = free_ports(12);
        let config = dir.path().join("node1.toml");
        std::fs::write(&config, self::config(1, 3, &ports, 10_000)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_topicfusion"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("TOPICFUSION_ROOT_PASSWORD", ROOT_PASSWORD)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("holds a single-node database (1 tables, topics or users besides root)"), "{stderr}");
        assert!(!data.join("raft").exists(), "nothing of a cluster was created");
    }
}
