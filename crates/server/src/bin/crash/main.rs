//! The crash-test harness: `crash run --cycles N [--sync] [--data-dir DIR]` runs N cycles of a
//! worker process (writers doing INSERT/UPDATE/DELETE on a routed table, consumers doing group
//! CONSUME + per-message ACK, a flusher doing memtable flushes so that kills also land mid-flush
//! and on recycled WAL files), kills it with SIGKILL at a random moment, reopens the data dir and
//! checks:
//! - every statement the worker reported committed is there (the one in flight may or may not be);
//! - rows and messages agree: replaying each key's messages in offset order gives the table, and
//!   every committed change has exactly one message;
//! - per partition, offsets are 0..n-1 without gaps or duplicates;
//! - acknowledged offsets never come back, and group positions never move backwards.
//!
//! The worker (`crash worker ...`) appends what it has done to a journal file (plain writes, which
//! a SIGKILL does not lose) only after the database returned.
//!
//! `crash cluster --kills N` is the same idea for a three-node cluster: the leader is killed N
//! times under load (see `cluster.rs`).

mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use topicfusion_engine::{AckTarget, ConsumeRequest, Database, DatabaseOptions, Durability, StartPosition};

const WRITERS: u64 = 3;
const CONSUMERS: usize = 2;
const PARTITIONS: u32 = 3;

/// A small xorshift generator: the harness needs no statistical quality, only variety.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
}

fn options(sync: bool) -> DatabaseOptions {
    DatabaseOptions {
        durability: if sync { Durability::Sync } else { Durability::Process },
        ..DatabaseOptions::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let sync = flag("--sync");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match args.first().map(String::as_str) {
        Some("worker") => {
            let dir = PathBuf::from(value("--data-dir").expect("--data-dir"));
            let journal = PathBuf::from(value("--journal").expect("--journal"));
            let cycle: u64 = value("--cycle").and_then(|c| c.parse().ok()).expect("--cycle");
            rt.block_on(worker(&dir, &journal, cycle, sync));
            ExitCode::SUCCESS
        }
        Some("run") => {
            let cycles: u64 = value("--cycles").and_then(|c| c.parse().ok()).unwrap_or(3);
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = value("--data-dir").map_or_else(|| tmp.path().join("data"), PathBuf::from);
            // --tamper: delete a row behind the engine's back after the last kill, to show the
            // checks catch a lost write.
            match rt.block_on(run(&dir, cycles, sync, flag("--tamper"))) {
                Ok(()) => {
                    println!(
                        "crash test: {cycles} cycles, 0 violations ({})",
                        if sync { "--sync" } else { "default durability" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("crash test: violation: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("cluster") => {
            let kills: u64 = value("--kills").and_then(|c| c.parse().ok()).unwrap_or(20);
            let bin = value("--bin").map_or_else(
                || std::env::current_exe().expect("own path").with_file_name("topicfusion"),
                PathBuf::from,
            );
            match rt.block_on(cluster::run(&bin, kills, flag("--tamper"))) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cluster crash test: violation: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: crash run --cycles N [--sync] [--data-dir DIR] | crash cluster --kills N [--bin PATH]");
            ExitCode::FAILURE
        }
    }
}

/// Appends lines to the journal; each line reaches the OS before the call returns.
#[derive(Clone)]
struct Journal(Arc<Mutex<std::fs::File>>);

impl Journal {
    fn line(&self, text: String) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(format!("{text}\n").as_bytes()).expect("journal write");
    }
}

async fn worker(dir: &Path, journal: &Path, cycle: u64, sync: bool) {
    let db = Arc::new(Database::open(dir, options(sync)).expect("open"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(journal).expect("journal");
    let journal = Journal(Arc::new(Mutex::new(file)));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (db, journal) = (Arc::clone(&db), journal.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed() ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let base = cycle * 1_000_000 + w * 100_000;
            let mut live: Vec<u64> = Vec::new();
            let mut next_key = base;
            for seq in 0.. {
                let v = rng.below(1_000_000) as i64;
                let choice = rng.below(10);
                let (op, key, sql) = if live.is_empty() || choice < 5 {
                    next_key += 1;
                    ("I", next_key, format!("INSERT INTO w VALUES ({next_key}, {v})"))
                } else if choice < 8 {
                    let k = live[rng.below(live.len() as u64) as usize];
                    ("U", k, format!("UPDATE w SET v = {v} WHERE id = {k}"))
                } else {
                    let k = live.swap_remove(rng.below(live.len() as u64) as usize);
                    ("D", k, format!("DELETE FROM w WHERE id = {k}"))
                };
                // Intent first: the statement may commit even if the process dies before the
                // confirmation line.
                journal.line(format!("I {cycle} {w} {seq} {op} {key} {v}"));
                db.execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                journal.line(format!("C {cycle} {w} {seq}"));
                if op == "I" {
                    live.push(key);
                }
            }
        }));
    }
    for c in 0..CONSUMERS {
        let (db, journal) = (Arc::clone(&db), journal.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed() ^ (c as u64 + 101));
            loop {
                let req = ConsumeRequest {
                    group: Some("g".into()),
                    start: Some(StartPosition::Earliest),
                    limit: 20,
                    timeout_ms: 100,
                    visibility_timeout_ms: Some(2000),
                    ..Default::default()
                };
                let messages = db.consume("cdc", &req).await.expect("consume");
                for m in messages {
                    // Leave some unacknowledged: they must come back, not be lost.
                    if rng.below(10) == 0 {
                        continue;
                    }
                    let target = AckTarget::Offsets(vec![m.offset]);
                    let principal = topicfusion_engine::Principal::root();
                    let position = db.ack_as(&principal, "cdc", "g", Some(m.partition), &target).await.expect("ack");
                    journal.line(format!("A {} {} {position}", m.partition, m.offset));
                }
            }
        }));
    }
    // Memtable flushes at random moments: the kill then also lands mid-flush, and on WAL files
    // that RocksDB recycled (overwritten in place, old records of their last use after the new
    // ones), which recovery must neither replay nor stop short at.
    let flusher = Arc::clone(&db);
    tasks.push(tokio::spawn(async move {
        let mut rng = Rng(seed() ^ 0xF1);
        loop {
            tokio::time::sleep(Duration::from_millis(20 + rng.below(150))).await;
            let db = Arc::clone(&flusher);
            tokio::task::spawn_blocking(move || db.settle_storage()).await.expect("flush task").expect("flush");
        }
    }));
    for t in tasks {
        let _ = t.await;
    }
}

/// A message as the check read it: (partition, offset, op, value).
type SeenMessage = (u32, u64, String, Option<i64>);

/// One journaled statement.
#[derive(Debug, Clone)]
struct Intent {
    op: String,
    key: u64,
    value: i64,
}

async fn run(dir: &Path, cycles: u64, sync: bool, tamper: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let journal = dir.with_extension("journal");
    let _ = std::fs::remove_file(&journal);
    {
        let db = Database::open(dir, options(sync)).map_err(|e| e.to_string())?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS w (id BIGINT PRIMARY KEY, v BIGINT);
             CREATE TOPIC IF NOT EXISTS cdc PARTITIONS 3",
        )
        .await
        .map_err(|e| e.to_string())?;
        for op in ["INSERT", "UPDATE", "DELETE"] {
            // A data dir from an earlier run already has the sources; any other error is fatal
            // (a missing route would show up as a false violation).
            if let Err(e) = db.execute(&format!("ALTER TOPIC cdc ADD SOURCE w ON {op} WITH (payload = 'full')")).await
                && !e.to_string().contains("already has a source")
            {
                return Err(format!("set-up: {e}"));
            }
        }
    }
    let mut rng = Rng(seed());
    let mut max_positions: HashMap<u32, u64> = HashMap::new();
    let started = Instant::now();
    for cycle in 1..=cycles {
        let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["worker", "--cycle", &cycle.to_string(), "--data-dir"])
            .arg(dir)
            .arg("--journal")
            .arg(&journal)
            .args(if sync { &["--sync"][..] } else { &[][..] })
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1500))).await;
        if tamper && cycle == cycles {
            // The tampered cycle needs rows to lose: on a loaded machine the worker may not have
            // committed anything yet in the random interval (bounded wait).
            let deadline = Instant::now() + Duration::from_secs(60);
            while confirmed_statements(&journal) < 10 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("cycle {cycle}: the worker exited by itself ({status})"));
        }
        child.kill().map_err(|e| e.to_string())?;
        child.wait().map_err(|e| e.to_string())?;
        drop_cut_line(&journal)?;
        if tamper && cycle == cycles {
            lose_a_row(dir, &journal)?;
        }
        let stats = check(dir, &journal, sync, &mut max_positions).await.map_err(|e| format!("cycle {cycle}: {e}"))?;
        eprintln!("cycle {cycle}: ok, {stats} ({:.1}s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

async fn rows(db: &Database, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let results = db.execute(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    let mut out = Vec::new();
    for batch in &results.last().ok_or("no result")?.batches {
        let options = datafusion::arrow::util::display::FormatOptions::default().with_null("NULL");
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| datafusion::arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for r in 0..batch.num_rows() {
            out.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Ok(out)
}

/// Removes a last line the kill cut short: its step counts as not journaled (a statement whose
/// intent is cut never ran; one whose confirmation is cut stays in flight). Without this, a cut
/// number would read as another number, and the next cycle's first line would be glued to it.
fn drop_cut_line(journal: &Path) -> Result<(), String> {
    let text = std::fs::read(journal).unwrap_or_default();
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        let file = std::fs::OpenOptions::new().write(true).open(journal).map_err(|e| e.to_string())?;
        file.set_len(whole as u64).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How many statements the journal confirms so far.
fn confirmed_statements(journal: &Path) -> usize {
    std::fs::read_to_string(journal).map_or(0, |t| t.lines().filter(|l| l.starts_with("C ")).count())
}

/// What the journal says: statements per writer (`(cycle, writer)` → seq → intent), in order;
/// the confirmed ones (`(cycle, writer, seq)`; the last intent without a confirmation is in
/// flight); and the acknowledgements `(partition, offset, group position)`.
struct Journaled {
    intents: BTreeMap<(u64, u64), BTreeMap<u64, Intent>>,
    confirmed: HashSet<(u64, u64, u64)>,
    acks: Vec<(u32, u64, u64)>,
}

impl Journaled {
    /// The keys of the statements in flight at the kill.
    fn keys_in_flight(&self) -> HashSet<u64> {
        let mut keys = HashSet::new();
        for ((c, w), stmts) in &self.intents {
            for (seq, intent) in stmts {
                if !self.confirmed.contains(&(*c, *w, *seq)) {
                    keys.insert(intent.key);
                }
            }
        }
        keys
    }
}

/// Reads the journal (none yet: the worker was killed before it opened it, a slow start under
/// load).
fn read_journal(journal: &Path) -> Result<Journaled, String> {
    let text = match std::fs::read_to_string(journal) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        other => other.map_err(|e| format!("journal: {e}"))?,
    };
    let mut out = Journaled { intents: BTreeMap::new(), confirmed: HashSet::new(), acks: Vec::new() };
    for line in text.lines() {
        let n = |s: &str| s.parse::<u64>().map_err(|e| format!("journal {line}: {e}"));
        match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["I", c, w, seq, op, key, v] => {
                let intent =
                    Intent { op: op.to_string(), key: n(key)?, value: v.parse().map_err(|_| "journal value")? };
                out.intents.entry((n(c)?, n(w)?)).or_default().insert(n(seq)?, intent);
            }
            ["C", c, w, seq] => {
                out.confirmed.insert((n(c)?, n(w)?, n(seq)?));
            }
            ["A", p, o, pos] => {
                let p: u32 = p.parse().map_err(|_| "journal partition")?;
                out.acks.push((p, n(o)?, n(pos)?));
            }
            _ => return Err(format!("journal line not understood: {line}")),
        }
    }
    Ok(out)
}

/// Deletes the first row of table `w` directly in RocksDB (no message, no journal). Not a row
/// whose key a statement in flight touched: a lost row there looks like that statement's DELETE
/// having committed, and the check would catch the loss by its messages instead of by the table.
fn lose_a_row(dir: &Path, journal: &Path) -> Result<(), String> {
    use topicfusion_storage::{Commit, Store, Value, codec, keys};
    let mut in_flight = HashSet::new();
    for id in read_journal(journal)?.keys_in_flight() {
        let mut pk = Vec::new();
        codec::encode_key_value(&Value::Int64(id as i64), &mut pk).map_err(|e| e.to_string())?;
        in_flight.insert(keys::row_key(0, &pk));
    }
    let store = Store::open(dir, Durability::Process).map_err(|e| e.to_string())?;
    let prefix = keys::table_prefix(0);
    let first = store.scan(&prefix, &keys::prefix_end(&prefix), in_flight.len() + 1).map_err(|e| e.to_string())?;
    let (key, _) = first.into_iter().find(|(k, _)| !in_flight.contains(k)).ok_or("no row to lose")?;
    let mut c = Commit::default();
    c.batch.delete(key);
    store.commit(c).map_err(|e| e.to_string())?;
    Ok(())
}

async fn check(
    dir: &Path,
    journal: &Path,
    sync: bool,
    max_positions: &mut HashMap<u32, u64>,
) -> Result<String, String> {
    let db = Database::open(dir, options(sync)).map_err(|e| format!("reopen: {e}"))?;
    let Journaled { intents, confirmed, acks } = read_journal(journal)?;
    let mut acked: HashSet<(u32, u64)> = HashSet::new();
    for (p, offset, position) in acks {
        acked.insert((p, offset));
        let m = max_positions.entry(p).or_insert(0);
        *m = (*m).max(position);
    }
    // The table.
    let table: HashMap<u64, i64> = rows(&db, "SELECT id, v FROM w")
        .await?
        .into_iter()
        .map(|r| (r[0].parse().unwrap_or(0), r[1].parse().unwrap_or(0)))
        .collect();
    // Expected per writer: confirmed statements applied in order; the in-flight one may or may
    // not have committed.
    let mut expected: HashMap<u64, i64> = HashMap::new();
    let mut maybe: Vec<Intent> = Vec::new();
    let mut committed_changes = 0u64;
    for ((c, w), stmts) in &intents {
        for (seq, intent) in stmts {
            if confirmed.contains(&(*c, *w, *seq)) {
                committed_changes += 1;
                match intent.op.as_str() {
                    "D" => {
                        expected.remove(&intent.key);
                    }
                    _ => {
                        expected.insert(intent.key, intent.value);
                    }
                }
            } else {
                maybe.push(intent.clone());
            }
        }
    }
    for intent in &maybe {
        // Did the statement in flight commit? The table tells (an UPDATE to the same value
        // looks the same either way, and changes nothing).
        let committed = match intent.op.as_str() {
            "D" => !table.contains_key(&intent.key),
            _ => table.get(&intent.key) == Some(&intent.value),
        };
        if committed {
            if intent.op == "D" {
                expected.remove(&intent.key);
            } else {
                expected.insert(intent.key, intent.value);
            }
        }
    }
    if table != expected {
        let missing: Vec<_> = expected.iter().filter(|(k, v)| table.get(k) != Some(v)).take(5).collect();
        let unexpected: Vec<_> = table.iter().filter(|(k, v)| expected.get(k) != Some(v)).take(5).collect();
        return Err(format!(
            "table differs from the committed statements: missing {missing:?}, unexpected {unexpected:?}"
        ));
    }
    // Messages: offsets 0..n-1 per partition; replayed per key they give the table.
    let mut replay: HashMap<u64, i64> = HashMap::new();
    // Each key's messages, for the report of a mismatch: (partition, offset, op, value).
    let mut history: HashMap<u64, Vec<SeenMessage>> = HashMap::new();
    let mut messages = 0u64;
    for p in 0..PARTITIONS {
        let next: u64 = rows(&db, &format!("SELECT next_offset FROM system.topic_partitions WHERE partition_id = {p}"))
            .await?[0][0]
            .parse()
            .map_err(|_| "next_offset")?;
        let mut expect_offset = 0u64;
        while expect_offset < next {
            let got =
                rows(&db, &format!("CONSUME FROM cdc PARTITION {p} FROM OFFSET {expect_offset} LIMIT 10000")).await?;
            if got.is_empty() {
                return Err(format!("partition {p}: offsets stop at {expect_offset}, the high watermark is {next}"));
            }
            for r in got {
                let offset: u64 = r[2].parse().map_err(|_| "offset")?;
                if offset != expect_offset {
                    return Err(format!(
                        "partition {p}: offset {offset} where {expect_offset} was due (gap or duplicate)"
                    ));
                }
                expect_offset += 1;
                messages += 1;
                let payload: serde_json::Value = serde_json::from_str(&r[7]).map_err(|e| e.to_string())?;
                let key = payload["id"].as_u64().ok_or("payload without id")?;
                history.entry(key).or_default().push((p, offset, r[4].clone(), payload["v"].as_i64()));
                match r[4].as_str() {
                    "delete" => {
                        replay.remove(&key);
                    }
                    _ => {
                        replay.insert(key, payload["v"].as_i64().ok_or("payload without v")?);
                    }
                }
            }
        }
    }
    if replay != table {
        let keys: HashSet<u64> = replay.keys().chain(table.keys()).copied().collect();
        let differing: Vec<String> = keys
            .into_iter()
            .filter(|k| replay.get(k) != table.get(k))
            .take(5)
            .map(|k| {
                let journaled: Vec<String> = intents
                    .iter()
                    .flat_map(|((c, w), stmts)| stmts.iter().map(move |(seq, i)| (c, w, seq, i)))
                    .filter(|(_, _, _, i)| i.key == k)
                    .map(|(c, w, seq, i)| {
                        let state = if confirmed.contains(&(*c, *w, *seq)) { "confirmed" } else { "in flight" };
                        format!("{} {} ({state})", i.op, i.value)
                    })
                    .collect();
                format!(
                    "key {k}: table {:?}, replay {:?}, messages (partition, offset, op, v) {:?}, statements {journaled:?}",
                    table.get(&k),
                    replay.get(&k),
                    history.get(&k)
                )
            })
            .collect();
        return Err(format!(
            "replaying the messages does not give the table (a change without its message, or the reverse): {}",
            differing.join("; ")
        ));
    }
    // Each statement changes one row and has one message.
    if messages < committed_changes || messages > committed_changes + maybe.len() as u64 {
        return Err(format!(
            "{messages} messages for {committed_changes} committed changes (+{} possibly in flight)",
            maybe.len()
        ));
    }
    // Group positions never move backwards; acknowledged offsets never come back.
    for r in rows(&db, "SELECT partition_id, position FROM system.topic_offsets WHERE group_id = 'g'").await? {
        let (p, pos): (u32, u64) = (r[0].parse().unwrap_or(0), r[1].parse().unwrap_or(0));
        if let Some(&max) = max_positions.get(&p)
            && pos < max
        {
            return Err(format!("group g partition {p}: position {pos} is behind {max}, acknowledged before"));
        }
        max_positions.insert(p, pos.max(max_positions.get(&p).copied().unwrap_or(0)));
    }
    let req = ConsumeRequest {
        group: Some("g".into()),
        start: Some(StartPosition::Earliest),
        limit: 10_000,
        // Claims from before the crash are gone with the process: nothing is hidden now.
        visibility_timeout_ms: Some(1),
        ..Default::default()
    };
    let redelivered = db.consume("cdc", &req).await.map_err(|e| e.to_string())?;
    for m in &redelivered {
        if acked.contains(&(m.partition, m.offset)) {
            return Err(format!("acknowledged offset {} of partition {} was delivered again", m.offset, m.partition));
        }
    }
    Ok(format!(
        "{} rows, {messages} messages, {committed_changes} committed statements (+{} in flight), {} acknowledged",
        table.len(),
        maybe.len(),
        acked.len()
    ))
}
