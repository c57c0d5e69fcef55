//! The cluster mode of the crash test: `crash cluster --kills N [--bin PATH] [--tamper]`. Three
//! `topicfusion serve` processes (the binary beside this one) on loopback; writers INSERT into a
//! table routed to a two-partition topic and a consumer group CONSUMEs and ACKs each message,
//! all over HTTP through whichever node is alive (followers forward to the leader). N times, after
//! one to three seconds of that load, the leader is killed with SIGKILL; the time until a write is
//! acknowledged again is recorded and the killed node restarted on its data. After the last
//! kill, once the nodes agree, every node is checked:
//! - every acknowledged INSERT is there, and no row but those (or ones whose answer was lost);
//! - per partition, offsets are 0..n-1 without gaps, the same messages (offset, key, timestamp)
//!   on every node, and each row has exactly one message;
//! - the group's position in each partition is at or past every position an ACK answered.
//!
//! `--tamper` deletes an acknowledged row before the checks, to show they catch a lost write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Rng, seed};

const NODES: u64 = 3;
const WRITERS: u64 = 4;
const PASSWORD: &str = "crash-cluster";

/// One server process of the cluster.
struct Node {
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    http: String,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .env("TOPICFUSION_ROOT_PASSWORD", PASSWORD)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the load saw acknowledged, for the checks at the end.
#[derive(Default)]
struct Seen {
    /// INSERTs answered 200.
    acked: BTreeSet<u64>,
    /// INSERTs whose answer was lost (no answer, 502): they may or may not have committed.
    unknown: BTreeSet<u64>,
    /// The highest position an ACK answered, per partition.
    positions: BTreeMap<u64, u64>,
}

/// The HTTP side: a client, a token, and the nodes' addresses with which are alive.
struct Api {
    client: reqwest::Client,
    token: String,
    http: Vec<String>,
    alive: Vec<AtomicBool>,
}

enum Outcome {
    Ok(Value),
    /// Refused before running (no connection, 421 not_leader, a 4xx statement error): nothing
    /// done.
    Refused(String),
    /// No answer, or a 5xx (the leader's answer lost: 502): it may have run.
    Unknown(String),
}

impl Api {
    async fn post(&self, node: usize, path: &str, body: &Value) -> Outcome {
        let sent = self
            .client
            .post(format!("http://{}{path}", self.http[node]))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Outcome::Refused(format!("node {}: {e}", node + 1)),
            Err(e) => return Outcome::Unknown(format!("node {}: {e}", node + 1)),
        };
        let status = resp.status();
        match resp.json::<Value>().await {
            Ok(v) if status.is_success() => Outcome::Ok(v),
            // A 502 (the leader died with a forwarded request) or another server error: a write
            // may have committed without its answer.
            Ok(v) if status.is_server_error() => Outcome::Unknown(format!("{status} {v}")),
            Ok(v) => Outcome::Refused(format!("{status} {v}")),
            Err(e) => Outcome::Unknown(format!("node {}: {status}, body lost: {e}", node + 1)),
        }
    }

    /// A node believed alive, chosen at random.
    fn pick(&self, rng: &mut Rng) -> usize {
        let alive: Vec<usize> = (0..self.alive.len()).filter(|&i| self.alive[i].load(Ordering::Acquire)).collect();
        if alive.is_empty() { 0 } else { alive[rng.below(alive.len() as u64) as usize] }
    }

    async fn sql(&self, node: usize, sql: &str) -> Result<Value, String> {
        match self.post(node, "/v1/api/sql", &json!({ "sql": sql })).await {
            Outcome::Ok(v) => Ok(v["results"][0]["rows"].clone()),
            Outcome::Refused(e) | Outcome::Unknown(e) => Err(e),
        }
    }

    /// `sql` on `node` again and again until it succeeds (30 s at most).
    async fn sql_until_ok(&self, node: usize, sql: &str) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.sql(node, sql).await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => return Err(format!("{sql}: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A write through whichever node takes it (each in turn), for 30 s at most.
    async fn write(&self, sql: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in (0..self.http.len()).cycle() {
            match self.sql(node, sql).await {
                Ok(_) => return Ok(()),
                // An earlier try ran, though its answer was lost (a 502).
                Err(e) if e.contains("already exists") => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(format!("{sql}: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        unreachable!("the nodes cycle")
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Runs the test; returns the report line, or the violation with the end of each node's log.
pub async fn run(bin: &Path, kills: u64, tamper: bool) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    test(bin, kills, tamper, dir.path()).await.map_err(|e| {
        let mut out = e;
        for n in 1..=NODES {
            let log = std::fs::read_to_string(dir.path().join(format!("node{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            out.push_str(&format!(
                "\n--- node {n}'s log, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    })
}

async fn test(bin: &Path, kills: u64, tamper: bool, dir: &Path) -> Result<String, String> {
    let ports: Vec<[u16; 3]> =
        (0..NODES).map(|_| Ok::<_, String>([free_port()?, free_port()?, free_port()?])).collect::<Result<_, _>>()?;
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, [raft, http, pg])| {
            format!(
                "  {{ id = {}, raft = \"127.0.0.1:{raft}\", http = \"127.0.0.1:{http}\", pg = \"127.0.0.1:{pg}\" }},\n",
                i + 1
            )
        })
        .collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, &[raft, http, pg]) in ports.iter().enumerate() {
        let config = dir.join(format!("node{}.toml", i + 1));
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{http}\"\npg_listen = \"127.0.0.1:{pg}\"\n[topics]\nretention_interval_ms = 0\n\
             [cluster]\nnode_id = {}\nraft_listen = \"127.0.0.1:{raft}\"\nsecret = \"crash-cluster-secret-0123\"\n\
             snapshot_every = 2000\npeers = [\n{peers}]\n",
            i + 1
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        nodes.push(Node {
            config,
            data: dir.join(format!("data{}", i + 1)),
            log: dir.join(format!("node{}.log", i + 1)),
            http: format!("127.0.0.1:{http}"),
            child: None,
        });
    }
    for n in &mut nodes {
        n.spawn(bin)?;
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let token = login(&client, &nodes).await?;
    let api = Arc::new(Api {
        client,
        token,
        http: nodes.iter().map(|n| n.http.clone()).collect(),
        alive: nodes.iter().map(|_| AtomicBool::new(true)).collect(),
    });
    api.write("CREATE TABLE t (id BIGINT PRIMARY KEY, w BIGINT, v TEXT)").await?;
    api.write("CREATE TOPIC ev PARTITIONS 2").await?;
    api.write("ALTER TOPIC ev ADD SOURCE t ON INSERT").await?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // When a write was last acknowledged (ms since `started`).
    let last_ack = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (api, seen, stop, last_ack) =
            (Arc::clone(&api), Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&last_ack));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed() ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut id = w * 1_000_000_000;
            while !stop.load(Ordering::Acquire) {
                id += 1;
                let sql = format!("INSERT INTO t VALUES ({id}, {w}, 'v{id}')");
                match api.post(api.pick(&mut rng), "/v1/api/sql", &json!({ "sql": sql })).await {
                    Outcome::Ok(_) => {
                        seen.lock().unwrap().acked.insert(id);
                        last_ack.fetch_max(started.elapsed().as_millis() as u64, Ordering::AcqRel);
                    }
                    Outcome::Unknown(_) => {
                        seen.lock().unwrap().unknown.insert(id);
                    }
                    Outcome::Refused(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    {
        let (api, seen, stop) = (Arc::clone(&api), Arc::clone(&seen), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move { consume(&api, &seen, &stop).await }));
    }

    let mut rng = Rng(seed());
    let mut gaps = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
        let (leader, term) = leader_of(&api).await.ok_or(format!("kill {}: no leader", k + 1))?;
        api.alive[leader].store(false, Ordering::Release);
        let killed_at = started.elapsed().as_millis() as u64;
        nodes[leader].kill();
        // Writes acknowledged again: one after the kill (the in-flight ones answer at once).
        let deadline = Instant::now() + Duration::from_secs(30);
        while last_ack.load(Ordering::Acquire) <= killed_at + 50 {
            if Instant::now() > deadline {
                return Err(format!("kill {}: no write acknowledged 30 s after node {} was killed", k + 1, leader + 1));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gaps.push(last_ack.load(Ordering::Acquire) - killed_at);
        // The node killed was the leader: writes went on under a newer term.
        match leader_of(&api).await {
            Some((now, t)) if t > term && now != leader => {}
            other => {
                return Err(format!(
                    "kill {}: node {} was not the leader of term {term}: {other:?}",
                    k + 1,
                    leader + 1
                ));
            }
        }
        nodes[leader].spawn(bin)?;
        until_healthy(&api.client, &nodes[leader].http).await?;
        api.alive[leader].store(true, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    if seen.positions.is_empty() || seen.acked.is_empty() {
        return Err(format!(
            "the load did nothing to check: {} acknowledged INSERTs, ACKs in {} partitions",
            seen.acked.len(),
            seen.positions.len()
        ));
    }
    if tamper {
        // An acknowledged row deleted through the log (so on every node): the checks must say so.
        let id = seen.acked.iter().next().ok_or("nothing was acknowledged")?;
        api.write(&format!("DELETE FROM t WHERE id = {id}")).await?;
    }
    check(&api, &seen).await?;
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(0);
    Ok(format!(
        "cluster crash test: {kills} leader kills, {} acknowledged INSERTs ({} with a lost answer), writes acknowledged again after a median {median} ms (max {} ms), 0 violations",
        seen.acked.len(),
        seen.unknown.len(),
        gaps.last().copied().unwrap_or(0),
    ))
}

async fn login(client: &reqwest::Client, nodes: &[Node]) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for n in nodes {
            let login = json!({ "username": "root", "password": PASSWORD });
            if let Ok(r) = client.post(format!("http://{}/v1/api/auth/login", n.http)).json(&login).send().await
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
                && let Some(t) = v["access_token"].as_str()
            {
                return Ok(t.to_owned());
            }
        }
        if Instant::now() > deadline {
            return Err("the cluster did not start within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_healthy(client: &reqwest::Client, http: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client.get(format!("http://{http}/v1/api/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the node on {http} did not come back within 60 s"))
}

/// The leader's index and term: of the leaders the live nodes name, the one of the highest term
/// (a restarted node may name itself leader of the term it had until it hears the new one).
async fn leader_of(api: &Api) -> Option<(usize, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut best: Option<(usize, u64)> = None;
        for i in (0..api.alive.len()).filter(|&i| api.alive[i].load(Ordering::Acquire)) {
            if let Ok(rows) = api.sql(i, "SELECT node_id, term FROM system.cluster WHERE role = 'leader'").await {
                for row in rows.as_array().into_iter().flatten() {
                    if let (Some(id @ 1..=NODES), Some(term)) = (row[0].as_u64(), row[1].as_u64())
                        && best.is_none_or(|(_, t)| term > t)
                    {
                        best = Some((id as usize - 1, term));
                    }
                }
            }
        }
        if best.is_some() {
            return best;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The group `g`: CONSUME (through any live node), then ACK each message on its own.
async fn consume(api: &Api, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let mut rng = Rng(seed());
    while !stop.load(Ordering::Acquire) {
        let request = json!({ "topic_id": "ev", "group_id": "g", "start": "Earliest", "limit": 50,
            "timeout_ms": 200, "visibility_timeout_ms": 2000 });
        let Outcome::Ok(v) = api.post(api.pick(&mut rng), "/v1/api/topics/consume", &request).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        for m in v["messages"].as_array().into_iter().flatten() {
            let (Some(partition), Some(offset)) = (m["partition_id"].as_u64(), m["offset"].as_u64()) else { continue };
            let ack = json!({ "topic_id": "ev", "group_id": "g", "partition_id": partition, "offsets": [offset] });
            if let Outcome::Ok(a) = api.post(api.pick(&mut rng), "/v1/api/topics/ack", &ack).await
                && let Some(position) = a["position"].as_u64()
            {
                let mut seen = seen.lock().unwrap();
                let p = seen.positions.entry(partition).or_default();
                *p = (*p).max(position);
            }
        }
    }
}

/// A node's messages of partition `p`: (offset, key, timestamp), read from offset 0.
async fn messages(api: &Api, node: usize, p: u64) -> Result<Vec<(u64, String, u64)>, String> {
    let mut out = Vec::new();
    loop {
        let request = json!({ "topic_id": "ev", "partition_id": p, "start": { "Offset": out.len() }, "limit": 5000,
            "timeout_ms": 0 });
        let Outcome::Ok(v) = api.post(node, "/v1/api/topics/consume", &request).await else {
            return Err(format!("node {}: cannot read partition {p}", node + 1));
        };
        let batch = v["messages"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return Ok(out);
        }
        for m in batch {
            let offset = m["offset"].as_u64().unwrap_or(u64::MAX);
            out.push((offset, m["key"].to_string(), m["timestamp_ms"].as_u64().unwrap_or(0)));
        }
    }
}

/// The checks of the module doc, once every node has what the others have (60 s at most).
async fn check(api: &Api, seen: &Seen) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = "SELECT (SELECT count(*) FROM t), (SELECT sum(next_offset) FROM system.topic_partitions)";
    loop {
        let mut answers = Vec::new();
        for node in 0..api.alive.len() {
            answers.push(api.sql(node, summary).await);
        }
        if answers.iter().all(|a| a.is_ok() && a == &answers[0]) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the nodes never agreed: {answers:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut first: Option<Vec<Vec<(u64, String, u64)>>> = None;
    for node in 0..api.alive.len() {
        let name = format!("node {}", node + 1);
        let rows = api.sql_until_ok(node, "SELECT id FROM t ORDER BY id").await?;
        let ids: BTreeSet<u64> = rows.as_array().into_iter().flatten().filter_map(|r| r[0].as_u64()).collect();
        if let Some(lost) = seen.acked.difference(&ids).next() {
            return Err(format!("{name}: acknowledged INSERT of id {lost} is missing"));
        }
        if let Some(extra) = ids.iter().find(|id| !seen.acked.contains(id) && !seen.unknown.contains(id)) {
            return Err(format!("{name}: row {extra} was never acknowledged nor in doubt"));
        }
        let mut partitions = Vec::new();
        let mut keys = BTreeSet::new();
        for p in 0..2 {
            let ms = messages(api, node, p).await?;
            for (i, (offset, key, _)) in ms.iter().enumerate() {
                if *offset != i as u64 {
                    return Err(format!("{name}: partition {p} has offset {offset} at position {i}"));
                }
                let id: Value = serde_json::from_str(key).map_err(|e| e.to_string())?;
                if !keys.insert(id["id"].as_u64().unwrap_or(u64::MAX)) {
                    return Err(format!("{name}: two messages for key {key}"));
                }
            }
            partitions.push(ms);
        }
        if keys != ids {
            return Err(format!("{name}: {} rows but {} messages with distinct keys", ids.len(), keys.len()));
        }
        match &first {
            None => first = Some(partitions),
            Some(f) if f != &partitions => return Err(format!("{name}: messages differ from node 1's")),
            Some(_) => {}
        }
        let offsets = api
            .sql_until_ok(node, "SELECT partition_id, position FROM system.topic_offsets WHERE group_id = 'g'")
            .await?;
        let positions: BTreeMap<u64, u64> =
            offsets.as_array().into_iter().flatten().filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?))).collect();
        for (p, acked) in &seen.positions {
            let at = positions.get(p).copied().unwrap_or(0);
            if at < *acked {
                return Err(format!("{name}: group g is at {at} in partition {p}, behind the acknowledged {acked}"));
            }
        }
    }
    Ok(())
}
