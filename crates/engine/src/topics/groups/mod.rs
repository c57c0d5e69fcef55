//! Consumption: stateless reads, consumer groups, per-message and cumulative ACK, dead letters,
//! RESET, DROP CONSUMER GROUP, and long polling on the store's per-partition commit signal. SQL
//! and HTTP call the same functions.
//!
//! A group's state per partition (share-group semantics, as Kafka's KIP-932):
//! - `position`: the lowest offset not yet acknowledged (durable);
//! - `acked`: the acknowledged offsets above the position (durable, compacted into the position as
//!   it moves);
//! - claims (in memory): offsets handed to a consumer, invisible to the group's other consumers
//!   until their deadline, with a delivery count. A restart forgets them: only redelivery follows.
//!
//! CONSUME hands out offsets at or above the position that are neither acknowledged nor under a
//! live claim. Each group's state is cached in memory after its first use and guarded by its own
//! lock; every change is written to the store before the cache is updated (an ACK awaits its
//! fsync after releasing the lock; the others commit under it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

mod acked;

use acked::AckedRanges;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use datafusion::common::{Result, exec_err, plan_err};
pub use topicfusion_dialect::MAX_GROUP_NAME_BYTES;
use topicfusion_dialect::{AckTarget, StartPosition};
use topicfusion_storage::{Commit, Message, NewMessage, Store, keys};

use crate::catalog::{Topic, now_ms, storage_err};
use crate::core::Core;

/// The most messages one CONSUME returns.
pub const MAX_CONSUME_LIMIT: u64 = 10_000;
/// The default LIMIT of CONSUME.
pub const DEFAULT_CONSUME_LIMIT: u64 = 100;
/// The longest a CONSUME may wait (`timeout_ms`).
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// The longest claim (`visibility_timeout_ms`).
pub const MAX_VISIBILITY_TIMEOUT_MS: u64 = 43_200_000;
/// The most deliveries `max_deliveries` may allow.
pub const MAX_DELIVERIES: u64 = 1000;

/// A resolved CONSUME.
#[derive(Debug, Clone, Default)]
pub struct ConsumeRequest {
    pub group: Option<String>,
    /// `None`: every partition.
    pub partition: Option<u32>,
    /// Default LATEST.
    pub start: Option<StartPosition>,
    pub limit: u64,
    pub timeout_ms: u64,
    /// Default: the database's visibility timeout.
    pub visibility_timeout_ms: Option<u64>,
    /// A message delivered this many times without an ACK goes to `dead_letter_topic`.
    pub max_deliveries: Option<u64>,
    /// `[schema.]name` of the dead-letter topic (SQL name rules).
    pub dead_letter_topic: Option<String>,
    /// The most bytes of messages returned (at least one message); default
    /// [`DEFAULT_CONSUME_MAX_BYTES`].
    pub max_bytes: Option<u64>,
}

/// The default of a CONSUME's `max_bytes`: 16 MiB of messages.
pub const DEFAULT_CONSUME_MAX_BYTES: u64 = 16 << 20;
/// The largest `max_bytes`: 256 MiB (as the default `max_statement_bytes`).
pub const MAX_CONSUME_MAX_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Copy)]
struct Claim {
    deadline_ms: i64,
    deliveries: u32,
}

/// One partition of a group.
#[derive(Debug, Clone, Default)]
struct PartitionGroup {
    position: u64,
    acked: AckedRanges,
    claims: BTreeMap<u64, Claim>,
    updated_ms: i64,
}

impl PartitionGroup {
    /// Moves the position to at least `floor` (the log start: what is below it is gone) and over
    /// every acknowledged offset at it; drops what fell below.
    fn compact(&mut self, floor: u64) {
        self.position = self.position.max(floor);
        self.acked.drop_below(self.position);
        while let Some(end) = self.acked.take_run_at(self.position) {
            self.position = end;
        }
        self.claims = self.claims.split_off(&self.position);
    }

    /// The durable value: `position:u64 updated_ms:i64` then `(start:u64, end:u64)` ranges of
    /// acknowledged offsets above the position (end exclusive).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.position.to_be_bytes());
        v.extend_from_slice(&self.updated_ms.to_be_bytes());
        for (s, e) in self.acked.iter() {
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&e.to_be_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> Result<Self> {
        if v.len() < 16 || !(v.len() - 16).is_multiple_of(16) {
            return exec_err!("corrupt group position ({} bytes)", v.len());
        }
        let u = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        let mut acked = AckedRanges::default();
        for i in (16..v.len()).step_by(16) {
            let (s, e) = (u(i), u(i + 8));
            if e <= s {
                return exec_err!("corrupt group position: range {s}..{e}");
            }
            acked.insert_range(s, e);
        }
        Ok(Self { position: u(0), acked, claims: BTreeMap::new(), updated_ms: u(8) as i64 })
    }
}

/// A group on one topic: its partitions (empty: the group does not exist yet).
#[derive(Debug, Default)]
struct GroupState {
    partitions: BTreeMap<u32, PartitionGroup>,
    /// Set under this lock by DROP TOPIC / DROP SCHEMA before their commit: a caller that got the
    /// handle earlier must not write the group again (its rows would outlive the topic).
    dropped: bool,
}

/// The cached groups, and the topics dropped since the start (ids are never reused): a caller
/// that looked the topic up before the drop must not load and recreate one of its groups.
#[derive(Debug, Default)]
struct GroupMap {
    groups: HashMap<GroupKey, Arc<Mutex<GroupState>>>,
    dropped_topics: HashSet<u64>,
}

type GroupKey = (u64, String);

/// A row of `system.topic_offsets`.
#[derive(Debug, Clone)]
pub struct GroupPosition {
    pub topic_id: u64,
    pub group: String,
    pub partition: u32,
    /// The lowest offset not yet acknowledged.
    pub position: u64,
    /// Acknowledged offsets above the position.
    pub acked_above: u64,
    pub next_offset: u64,
    pub updated_at_ms: i64,
}

/// A row of `system.topic_claims`.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    pub topic_id: u64,
    pub group: String,
    pub partition: u32,
    pub offset: u64,
    pub deadline_ms: i64,
    pub deliveries: u32,
}

/// Consumer-group state: one lock per (topic, group), so groups never wait on each other.
#[derive(Debug)]
pub struct Groups {
    groups: Mutex<GroupMap>,
    pub default_visibility_timeout_ms: u64,
    /// Set when the database shuts down: long polls return what they have at once.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Bumped by RESET, DROP CONSUMER GROUP and topic changes: long polls look again.
    changes: tokio::sync::watch::Sender<u64>,
    /// Messages moved to a dead-letter topic since start, by (topic id, group)
    /// (`topicfusion_dead_letters_total`).
    dead_letters: Mutex<BTreeMap<(u64, String), u64>>,
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Result<i64> {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(e) => {
            let shown: String = text.chars().take(64).collect();
            plan_err!("invalid timestamp '{shown}' ({e}): expected RFC 3339, e.g. 2026-01-01T00:00:00Z")
        }
    }
}

/// The offset a start position means in one partition now. An offset beyond the high
/// watermark is an error (it would skip messages not written yet).
fn resolve_start(store: &Store, topic: &Topic, partition: u32, start: &StartPosition) -> Result<u64> {
    let Some(state) = store.partition_state(topic.meta.id, partition) else {
        return exec_err!("partition {partition} of topic {} does not exist", topic.meta.qualified_name());
    };
    Ok(match start {
        StartPosition::Earliest => state.log_start,
        StartPosition::Latest => state.next_offset,
        StartPosition::Offset(n) if *n > state.next_offset => {
            return plan_err!(
                "offset {n} is beyond the end of partition {partition} of topic {}: its next offset is {}",
                topic.meta.qualified_name(),
                state.next_offset
            );
        }
        StartPosition::Offset(n) => *n,
        StartPosition::Timestamp(t) => {
            store.offset_for_timestamp(topic.meta.id, partition, parse_timestamp(t)?).map_err(storage_err)?
        }
    })
}

/// Checks a PARTITION clause against the topic.
pub fn check_partition(topic: &Topic, partition: Option<u64>) -> Result<Option<u32>> {
    match partition {
        None => Ok(None),
        Some(p) if p < u64::from(topic.meta.partitions) => Ok(Some(p as u32)),
        Some(p) => plan_err!(
            "partition {p} does not exist: topic {} has {} partition(s), numbered from 0",
            topic.meta.qualified_name(),
            topic.meta.partitions
        ),
    }
}

/// The first offset a partition still holds (0 for one that is gone).
fn log_start(store: &Store, topic_id: u64, partition: u32) -> u64 {
    store.partition_state(topic_id, partition).map_or(0, |s| s.log_start)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State changes are applied only after their commit succeeded, so a poisoned lock is
    // still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks a group to change it, unless its topic was dropped since the caller looked it up.
fn lock_live(handle: &Mutex<GroupState>) -> Result<MutexGuard<'_, GroupState>> {
    let g = lock(handle);
    if g.dropped {
        return topic_dropped();
    }
    Ok(g)
}

fn topic_dropped<T>() -> Result<T> {
    plan_err!("the topic was dropped while this statement ran")
}

/// The groups' map, held by DROP TOPIC / DROP SCHEMA from staging the removal of their groups
/// until the commit.
pub struct TopicsForgotten<'a> {
    map: MutexGuard<'a, GroupMap>,
    topic_ids: Vec<u64>,
}

impl TopicsForgotten<'_> {
    /// The drop committed: no group of these topics is loaded or created again.
    pub fn committed(mut self) {
        let ids = std::mem::take(&mut self.topic_ids);
        self.map.dropped_topics.extend(ids);
    }
}

impl Groups {
    pub fn new(default_visibility_timeout_ms: u64) -> Self {
        Self {
            groups: Mutex::new(GroupMap::default()),
            default_visibility_timeout_ms,
            shutdown: tokio::sync::watch::channel(false).0,
            changes: tokio::sync::watch::channel(0).0,
            dead_letters: Mutex::default(),
        }
    }

    /// Ends every long poll now and makes later ones return without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Forgets every group's cached state (each is loaded from the store again at its next use)
    /// and wakes every long poll: for a replica whose store changed under it. Claims are lost
    /// with it: their messages are delivered again.
    pub fn forget_cached(&self) {
        *lock(&self.groups) = GroupMap::default();
        self.notify_change();
    }

    /// Wakes every long poll so it looks again (groups reset or dropped, partitions added).
    pub fn notify_change(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The state of a group, loaded from the store at first use.
    fn group(&self, store: &Store, topic_id: u64, group: &str) -> Result<Arc<Mutex<GroupState>>> {
        let key = (topic_id, group.to_owned());
        {
            let map = lock(&self.groups);
            if map.dropped_topics.contains(&topic_id) {
                return topic_dropped();
            }
            if let Some(g) = map.groups.get(&key) {
                return Ok(Arc::clone(g));
            }
        }
        let prefix = keys::group_prefix(topic_id, group);
        let mut state = GroupState::default();
        for (k, v) in store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)? {
            let (_, _, p) = keys::decode_group_key(&k).map_err(storage_err)?;
            state.partitions.insert(p, PartitionGroup::decode(&v)?);
        }
        // Another caller may have loaded it meanwhile: keep the first. A drop that committed
        // meanwhile deleted what was read.
        let mut map = lock(&self.groups);
        if map.dropped_topics.contains(&topic_id) {
            return topic_dropped();
        }
        Ok(Arc::clone(map.groups.entry(key).or_insert_with(|| Arc::new(Mutex::new(state)))))
    }

    /// Reads (CONSUME). Waits up to `timeout_ms` on the partitions' commit signals when nothing
    /// is available; dropping the future ends the wait.
    pub async fn consume(&self, core: &Core, topic: &Topic, req: &ConsumeRequest) -> Result<Vec<Message>> {
        let store = &core.store;
        if req.limit > MAX_CONSUME_LIMIT {
            return plan_err!("LIMIT {} is above the maximum of {MAX_CONSUME_LIMIT}", req.limit);
        }
        if req.timeout_ms > MAX_TIMEOUT_MS {
            return plan_err!("timeout_ms {} is above the maximum of {MAX_TIMEOUT_MS}", req.timeout_ms);
        }
        let max_bytes = req.max_bytes.unwrap_or(DEFAULT_CONSUME_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_CONSUME_MAX_BYTES {
            return plan_err!("max_bytes must be between 1 and {MAX_CONSUME_MAX_BYTES}, got {max_bytes}");
        }
        // A group's claims live in the leader's memory: on a cluster node that does not lead, a
        // group CONSUME is refused like a write (a read without a group runs anywhere).
        if req.group.is_some() {
            crate::core::blocking(|| store.ensure_writable()).map_err(storage_err)?;
        }
        let visibility = req.visibility_timeout_ms.unwrap_or(self.default_visibility_timeout_ms);
        if visibility == 0 || visibility > MAX_VISIBILITY_TIMEOUT_MS {
            return plan_err!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_TIMEOUT_MS}, got {visibility}"
            );
        }
        let dead_letter = self.dead_letter(core, topic, req)?;
        let mut partitions: Vec<u32> = match req.partition {
            Some(p) => vec![p],
            None => (0..topic.meta.partitions).collect(),
        };
        let start = req.start.clone().unwrap_or(StartPosition::Latest);
        let topic_id = topic.meta.id;
        // A stateless read resolves its start once, so a long poll FROM LATEST sees what
        // arrives while it waits.
        let stateless_from: Option<Vec<u64>> = match &req.group {
            None => Some(partitions.iter().map(|&p| resolve_start(store, topic, p, &start)).collect::<Result<_>>()?),
            Some(_) => None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms);
        let mut shutdown = self.shutdown.subscribe();
        let mut changes = self.changes.subscribe();
        let mut topic_changed = false;
        loop {
            if std::mem::take(&mut topic_changed) && req.group.is_some() && req.partition.is_none() {
                // ALTER TOPIC ... SET PARTITIONS: a group read covers the new partitions too.
                let count =
                    core.catalog.read().topics.values().find(|t| t.meta.id == topic_id).map(|t| t.meta.partitions);
                match count {
                    Some(n) => partitions = (0..n).collect(),
                    None => return exec_err!("topic {} was dropped", topic.meta.qualified_name()),
                }
            }
            // Subscribe before reading, so a commit between the read and the wait is not missed.
            let mut signals = Vec::with_capacity(partitions.len());
            for &p in &partitions {
                match store.subscribe(topic_id, p) {
                    Some(rx) => signals.push(rx),
                    None => return exec_err!("topic {} was dropped", topic.meta.qualified_name()),
                }
            }
            let (messages, next_expiry_ms) = match (&req.group, &stateless_from) {
                (Some(group), _) => {
                    let claim = ClaimRequest {
                        group,
                        partitions: &partitions,
                        named_partition: req.partition,
                        start: &start,
                        limit: req.limit,
                        max_bytes,
                        visibility_ms: visibility,
                        dead_letter: dead_letter.as_ref(),
                    };
                    crate::core::blocking(|| self.claim(store, topic, &claim))?
                }
                (None, Some(from)) => (
                    crate::core::blocking(|| read_from(store, topic_id, &partitions, from, req.limit, max_bytes))?,
                    None,
                ),
                (None, None) => unreachable!("stateless reads resolve their start"),
            };
            let now = tokio::time::Instant::now();
            if !messages.is_empty() || req.limit == 0 || now >= deadline || *shutdown.borrow() {
                return Ok(messages);
            }
            let mut wake = deadline;
            if let Some(expiry) = next_expiry_ms {
                let in_ms = (expiry - now_ms()).max(0) as u64;
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            let changed = futures::future::select_all(
                signals.into_iter().map(|mut rx| Box::pin(async move { rx.changed().await })),
            );
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed() => {}
                _ = changes.changed() => topic_changed = true,
            }
        }
    }

    /// Resolves and checks the dead-letter options of a request.
    fn dead_letter(&self, core: &Core, topic: &Topic, req: &ConsumeRequest) -> Result<Option<DeadLetter>> {
        match (req.max_deliveries, &req.dead_letter_topic) {
            (None, None) => Ok(None),
            (Some(_), None) | (None, Some(_)) => {
                plan_err!("max_deliveries and dead_letter_topic go together: give both or neither")
            }
            (Some(_), Some(_)) if req.group.is_none() => {
                plan_err!("max_deliveries and dead_letter_topic need a GROUP (a stateless read claims nothing)")
            }
            (Some(n), _) if n == 0 || n > MAX_DELIVERIES => {
                plan_err!("max_deliveries must be between 1 and {MAX_DELIVERIES}, got {n}")
            }
            (Some(n), Some(name)) => {
                let parsed = topicfusion_dialect::sqlparser::parser::Parser::new(
                    &topicfusion_dialect::sqlparser::dialect::GenericDialect {},
                )
                .try_with_sql(name)
                .and_then(|mut p| {
                    // The whole text is the name: `'dlq junk'` is not topic dlq.
                    let object = p.parse_object_name(false)?;
                    p.expect_token(&topicfusion_dialect::sqlparser::tokenizer::Token::EOF)?;
                    Ok(object)
                });
                let Ok(object) = parsed else {
                    return plan_err!("invalid dead_letter_topic '{name}'");
                };
                let dlq = crate::topics::ddl::find_topic(&core.catalog.read(), &object)?;
                if dlq.meta.id == topic.meta.id {
                    return plan_err!("the dead-letter topic cannot be the topic being consumed");
                }
                Ok(Some(DeadLetter { max_deliveries: n as u32, topic: dlq }))
            }
        }
    }

    /// One attempt of a group read: creates the group if needed, then claims up to `limit`
    /// messages above the group's positions that are neither acknowledged nor claimed. Messages
    /// that reached `max_deliveries` move to the dead-letter topic instead. Returns the messages
    /// and the earliest deadline of the live claims it skipped.
    fn claim(&self, store: &Store, topic: &Topic, req: &ClaimRequest<'_>) -> Result<(Vec<Message>, Option<i64>)> {
        let topic_id = topic.meta.id;
        let group = self.group(store, topic_id, req.group)?;
        let mut g = lock_live(&group)?;
        self.ensure_group(store, topic, req.group, &mut g, req.named_partition, req.start, &StartPosition::Latest)?;
        let now = now_ms();
        let mut next_expiry: Option<i64> = None;
        let mut dead: Vec<(u32, Message, u32)> = Vec::new();
        // Where the next read of each partition continues (fair_fill reads a partition twice).
        let mut resume: Vec<u64> = vec![0; req.partitions.len()];
        let messages = fair_fill(req.partitions, req.limit, req.max_bytes, |i, want, bytes| {
            let p = req.partitions[i];
            let Some(state) = store.partition_state(topic_id, p) else { return Ok(Vec::new()) };
            let pg = g
                .partitions
                .entry(p)
                .or_insert_with(|| PartitionGroup { position: state.log_start, ..Default::default() });
            pg.compact(state.log_start);
            // Offsets not to hand out: acknowledged (ranges), or claimed and the claim still
            // live; in order, as ranges.
            let mut blocked: Vec<(u64, u64)> = pg.acked.iter().collect();
            for (&o, c) in &pg.claims {
                if c.deadline_ms > now {
                    blocked.push((o, o + 1));
                    next_expiry = Some(next_expiry.map_or(c.deadline_ms, |e| e.min(c.deadline_ms)));
                }
            }
            blocked.sort_unstable();
            let mut from = pg.position.max(resume[i]);
            let mut got: Vec<Message> = Vec::new();
            for (offset, end) in blocked.into_iter().chain(std::iter::once((u64::MAX, u64::MAX))) {
                if got.len() >= want {
                    break;
                }
                if offset > from {
                    let left = bytes.saturating_sub(got.iter().map(message_bytes).sum());
                    if left == 0 && !got.is_empty() {
                        break;
                    }
                    let more = store
                        .read_messages_within(topic_id, p, from, offset, want - got.len(), left.max(1))
                        .map_err(storage_err)?;
                    if let Some(last) = more.last() {
                        resume[i] = last.offset + 1;
                    }
                    for m in more {
                        let deliveries = pg.claims.get(&m.offset).map_or(0, |c| c.deliveries);
                        match req.dead_letter {
                            Some(d) if deliveries >= d.max_deliveries => dead.push((p, m, deliveries)),
                            _ => got.push(m),
                        }
                    }
                }
                from = from.max(end).max(resume[i]);
            }
            Ok(got)
        })?;
        if !dead.is_empty() {
            self.dead_letter_commit(
                store,
                topic,
                req.group,
                &mut g,
                dead,
                req.dead_letter.expect("dead only with DLQ"),
            )?;
        }
        // Claims are recorded only now that every read (and the dead-letter commit) succeeded.
        for m in &messages {
            let pg = g.partitions.get_mut(&m.partition).expect("read partitions exist");
            let c = pg.claims.entry(m.offset).or_insert(Claim { deadline_ms: 0, deliveries: 0 });
            c.deadline_ms = now + req.visibility_ms as i64;
            c.deliveries = c.deliveries.saturating_add(1);
        }
        Ok((messages, next_expiry))
    }

    /// Appends messages that reached `max_deliveries` to the dead-letter topic and acknowledges
    /// them, in one commit.
    fn dead_letter_commit(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        g: &mut GroupState,
        dead: Vec<(u32, Message, u32)>,
        dlq: &DeadLetter,
    ) -> Result<()> {
        let mut commit = Commit::default();
        let mut next = g.partitions.clone();
        let now = now_ms();
        for (p, m, deliveries) in &dead {
            let payload = serde_json::json!({
                "topic": topic.meta.qualified_name(),
                "group": group,
                "partition": p,
                "offset": m.offset,
                "delivery_count": deliveries,
                "timestamp_ms": m.timestamp_ms,
                "op": m.op.as_str(),
                "key": serde_json::from_str::<serde_json::Value>(&m.key).unwrap_or(serde_json::Value::Null),
                "payload": serde_json::from_str::<serde_json::Value>(&m.payload).unwrap_or(serde_json::Value::Null),
            });
            commit.messages.push(&NewMessage {
                topic_id: dlq.topic.meta.id,
                partition: p % dlq.topic.meta.partitions,
                op: m.op,
                source_table: m.source_table.as_str().into(),
                key: m.key.clone(),
                payload: payload.to_string(),
            });
            let pg = next.get_mut(p).expect("read partitions exist");
            pg.acked.insert(m.offset);
            pg.claims.remove(&m.offset);
        }
        let log_starts = self.touched_log_starts(store, topic.meta.id, dead.iter().map(|(p, _, _)| *p));
        for (p, floor) in log_starts {
            let pg = next.get_mut(&p).expect("read partitions exist");
            pg.compact(floor);
            pg.updated_ms = now;
            commit.batch.put(keys::group_key(topic.meta.id, group, p), pg.encode());
        }
        crate::core::blocking(|| store.commit(commit)).map_err(storage_err)?;
        g.partitions = next;
        *lock(&self.dead_letters).entry((topic.meta.id, group.to_owned())).or_default() += dead.len() as u64;
        Ok(())
    }

    fn touched_log_starts(&self, store: &Store, topic_id: u64, ps: impl Iterator<Item = u32>) -> Vec<(u32, u64)> {
        let set: BTreeSet<u32> = ps.collect();
        set.into_iter().map(|p| (p, store.partition_state(topic_id, p).map_or(0, |s| s.log_start))).collect()
    }

    /// Creates the group if it has no stored positions: `start` for the named partition (or for
    /// all when none is named), `default_start` for the others. Partitions added to the topic
    /// after the group was created start at their log start. The caller holds the group's lock.
    #[allow(clippy::too_many_arguments)]
    fn ensure_group(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        g: &mut GroupState,
        named_partition: Option<u32>,
        start: &StartPosition,
        default_start: &StartPosition,
    ) -> Result<()> {
        if !g.partitions.is_empty() {
            return Ok(());
        }
        let mut commit = Commit::default();
        let mut partitions = BTreeMap::new();
        let now = now_ms();
        for p in 0..topic.meta.partitions {
            let from = if named_partition.is_none_or(|n| n == p) { start } else { default_start };
            let pg = PartitionGroup {
                position: resolve_start(store, topic, p, from)?,
                updated_ms: now,
                ..Default::default()
            };
            commit.batch.put(keys::group_key(topic.meta.id, group, p), pg.encode());
            partitions.insert(p, pg);
        }
        crate::core::blocking(|| store.commit(commit)).map_err(storage_err)?;
        g.partitions = partitions;
        Ok(())
    }

    /// ACK. `UPTO OFFSET n`: the position becomes `n + 1` unless it is past it already.
    /// `OFFSETS (...)`: exactly those messages are done; the position moves over every
    /// acknowledged offset at it. Idempotent. Returns the group's position in the partition once
    /// the acknowledgement is durable.
    ///
    /// The change is written and applied to the group under its lock; the fsync is awaited
    /// after the lock is released, so the group's other consumers never wait on it. They see the
    /// acknowledgement from its write on: an OS crash before the fsync can lose an ACK that had
    /// not returned yet, and its messages are delivered again (at-least-once).
    pub async fn ack(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        partition: Option<u32>,
        target: &AckTarget,
    ) -> Result<u64> {
        let partition = match partition {
            Some(p) => p,
            None if topic.meta.partitions == 1 => 0,
            None => {
                return plan_err!(
                    "topic {} has {} partitions: ACK needs PARTITION <n>",
                    topic.meta.qualified_name(),
                    topic.meta.partitions
                );
            }
        };
        let Some(state) = store.partition_state(topic.meta.id, partition) else {
            return exec_err!("partition {partition} does not exist");
        };
        let highest = match target {
            AckTarget::Upto(n) => *n,
            AckTarget::Offsets(list) => list.iter().copied().max().unwrap_or(0),
        };
        if highest >= state.next_offset {
            return plan_err!(
                "cannot ACK offset {highest}: partition {partition} of topic {} has {}",
                topic.meta.qualified_name(),
                if state.next_offset == 0 {
                    "no messages yet".to_owned()
                } else {
                    format!("offsets up to {} only", state.next_offset - 1)
                }
            );
        }
        let handle = self.group(store, topic.meta.id, group)?;
        // Under the group's lock: write the new state (if it changes) and apply it. The fsync is
        // awaited after the lock is released.
        let (position, pending) = {
            let mut g = lock_live(&handle)?;
            // A group an ACK creates starts at EARLIEST: nothing is skipped unacknowledged.
            let earliest = &StartPosition::Earliest;
            self.ensure_group(store, topic, group, &mut g, None, earliest, earliest)?;
            let exists = g.partitions.contains_key(&partition);
            let pg = g
                .partitions
                .entry(partition)
                .or_insert_with(|| PartitionGroup { position: state.log_start, ..Default::default() });
            // The new position and acknowledged ranges, written before the cache changes (the
            // claims stay where they are: only the acknowledged offsets' claims go).
            let mut next = PartitionGroup {
                position: pg.position,
                acked: pg.acked.clone(),
                claims: BTreeMap::new(),
                updated_ms: pg.updated_ms,
            };
            let mut changed = match target {
                AckTarget::Upto(n) => {
                    let moved = n.saturating_add(1) > next.position;
                    next.position = next.position.max(n.saturating_add(1));
                    moved
                }
                AckTarget::Offsets(list) => {
                    let mut added = false;
                    for &o in list.iter().filter(|&&o| o >= next.position) {
                        added |= next.acked.insert(o);
                    }
                    added
                }
            };
            next.compact(state.log_start);
            changed |= next.position != pg.position;
            let pending = if !exists || changed {
                next.updated_ms = now_ms();
                let mut commit = Commit::default();
                commit.batch.put(keys::group_key(topic.meta.id, group, partition), next.encode());
                let pending = crate::core::blocking(|| store.write(commit));
                if pending.is_err() && !exists {
                    g.partitions.remove(&partition);
                }
                pending.map_err(storage_err)?
            } else {
                // Nothing to write, but what this ACK repeats may be another ACK's write still
                // waiting for its fsync: it returns once that is durable too.
                store.written()
            };
            let pg = g.partitions.get_mut(&partition).expect("inserted above");
            pg.position = next.position;
            pg.acked = next.acked;
            pg.updated_ms = next.updated_ms;
            pg.claims = pg.claims.split_off(&pg.position);
            if let AckTarget::Offsets(list) = target {
                for o in list {
                    pg.claims.remove(o);
                }
            }
            (pg.position, pending)
        };
        store.durable(pending).await.map_err(storage_err)?;
        Ok(position)
    }

    /// RESET CONSUMER GROUP: sets the positions of one or all partitions; forgets their
    /// acknowledged offsets and claims.
    pub fn reset(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        partition: Option<u32>,
        to: &StartPosition,
    ) -> Result<()> {
        let handle = self.group(store, topic.meta.id, group)?;
        let mut g = lock_live(&handle)?;
        let partitions: Vec<u32> = match partition {
            Some(p) => vec![p],
            None => (0..topic.meta.partitions).collect(),
        };
        let mut next = g.partitions.clone();
        let mut commit = Commit::default();
        let now = now_ms();
        let created = next.is_empty();
        for p in 0..topic.meta.partitions {
            let target = partitions.contains(&p);
            if !target && !created {
                continue;
            }
            // A RESET that creates the group starts its other partitions at LATEST.
            let from = if target { to } else { &StartPosition::Latest };
            let pg = PartitionGroup {
                position: resolve_start(store, topic, p, from)?,
                updated_ms: now,
                ..Default::default()
            };
            commit.batch.put(keys::group_key(topic.meta.id, group, p), pg.encode());
            next.insert(p, pg);
        }
        crate::core::blocking(|| store.commit(commit)).map_err(storage_err)?;
        g.partitions = next;
        drop(g);
        self.notify_change();
        Ok(())
    }

    /// DROP CONSUMER GROUP.
    pub fn drop_group(&self, store: &Store, topic: &Topic, group: &str) -> Result<()> {
        let handle = self.group(store, topic.meta.id, group)?;
        let mut g = lock_live(&handle)?;
        if g.partitions.is_empty() {
            return plan_err!("consumer group '{group}' does not exist on topic {}", topic.meta.qualified_name());
        }
        let prefix = keys::group_prefix(topic.meta.id, group);
        let mut commit = Commit::default();
        commit.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
        crate::core::blocking(|| store.commit(commit)).map_err(storage_err)?;
        g.partitions.clear();
        drop(g);
        lock(&self.dead_letters).remove(&(topic.meta.id, group.to_owned()));
        self.notify_change();
        Ok(())
    }

    /// Stages the removal of every group of these topics (DROP TOPIC, DROP SCHEMA) and forgets
    /// their cached state. Each cached group is marked dropped under its own lock, so a write
    /// already under way (an ACK, a CONSUME creating its group) is staged before this commit and
    /// deleted by it, and a later one fails. The returned guard holds the groups' map until the
    /// caller commits; [`TopicsForgotten::committed`] then refuses the topics for good.
    #[must_use = "hold the guard until the commit"]
    pub fn forget_topics(&self, commit: &mut Commit, topic_ids: &[u64]) -> TopicsForgotten<'_> {
        let mut map = lock(&self.groups);
        for &topic_id in topic_ids {
            let prefix = keys::topic_groups_prefix(topic_id);
            commit.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
        }
        map.groups.retain(|(t, _), handle| {
            let keep = !topic_ids.contains(t);
            if !keep {
                lock(handle).dropped = true;
            }
            keep
        });
        self.notify_change();
        TopicsForgotten { map, topic_ids: topic_ids.to_vec() }
    }

    /// Every group's position in every partition of its topic (for `system.topic_offsets`):
    /// the stored ones, positions below the log start (after CLEAR TOPIC or retention) shown as
    /// the log start; a partition added to the topic after the group stored its positions shows
    /// at its log start, where the group starts reading it.
    pub fn positions(&self, core: &Core) -> Result<Vec<GroupPosition>> {
        let mut rows = self.stored_positions(core)?;
        let partitions: HashMap<u64, u32> =
            core.catalog.read().topics.values().map(|t| (t.meta.id, t.meta.partitions)).collect();
        let mut seen: BTreeMap<(u64, String), BTreeSet<u32>> = BTreeMap::new();
        for r in &rows {
            seen.entry((r.topic_id, r.group.clone())).or_default().insert(r.partition);
        }
        for ((topic_id, group), stored) in seen {
            for partition in 0..partitions.get(&topic_id).copied().unwrap_or(0) {
                if stored.contains(&partition) {
                    continue;
                }
                let state = core.store.partition_state(topic_id, partition).unwrap_or_default();
                rows.push(GroupPosition {
                    topic_id,
                    group: group.clone(),
                    partition,
                    position: state.log_start,
                    acked_above: 0,
                    next_offset: state.next_offset,
                    updated_at_ms: 0,
                });
            }
        }
        rows.sort_by(|a, b| (a.topic_id, &a.group, a.partition).cmp(&(b.topic_id, &b.group, b.partition)));
        Ok(rows)
    }

    fn stored_positions(&self, core: &Core) -> Result<Vec<GroupPosition>> {
        let prefix = keys::groups_prefix();
        let rows = core.store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)?;
        rows.into_iter()
            .map(|(k, v)| {
                let (topic_id, group, partition) = keys::decode_group_key(&k).map_err(storage_err)?;
                let mut pg = PartitionGroup::decode(&v)?;
                let state = core.store.partition_state(topic_id, partition).unwrap_or_default();
                pg.compact(state.log_start);
                Ok(GroupPosition {
                    topic_id,
                    group,
                    partition,
                    position: pg.position,
                    acked_above: pg.acked.count(),
                    next_offset: state.next_offset,
                    updated_at_ms: pg.updated_ms,
                })
            })
            .collect()
    }

    /// Messages moved to dead-letter topics since start, by (topic id, group).
    pub fn dead_letter_counts(&self) -> Vec<((u64, String), u64)> {
        lock(&self.dead_letters).iter().map(|(k, &n)| (k.clone(), n)).collect()
    }

    /// How many claims each (topic id, group) holds (what [`Groups::claims`] lists, counted).
    pub fn claim_counts(&self, store: &Store) -> Vec<((u64, String), u64)> {
        let handles: Vec<(GroupKey, Arc<Mutex<GroupState>>)> =
            lock(&self.groups).groups.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        let mut out = Vec::new();
        for (key, handle) in handles {
            let g = lock(&handle);
            let n: usize = g
                .partitions
                .iter()
                .map(|(&p, pg)| {
                    let floor = pg.position.max(log_start(store, key.0, p));
                    pg.claims.range(floor..).filter(|&(&o, _)| !pg.acked.contains(o)).count()
                })
                .sum();
            drop(g);
            if n > 0 {
                out.push((key, n as u64));
            }
        }
        out
    }

    /// Every live or expired-but-unacknowledged claim of a message that still exists (for
    /// `system.topic_claims`; claims of messages retention or CLEAR TOPIC deleted are left out).
    pub fn claims(&self, store: &Store) -> Vec<ClaimRow> {
        let handles: Vec<(GroupKey, Arc<Mutex<GroupState>>)> =
            lock(&self.groups).groups.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        let mut rows = Vec::new();
        for ((topic_id, group), handle) in handles {
            let g = lock(&handle);
            for (&partition, pg) in &g.partitions {
                let floor = pg.position.max(log_start(store, topic_id, partition));
                for (&offset, c) in pg.claims.range(floor..) {
                    if pg.acked.contains(offset) {
                        continue;
                    }
                    rows.push(ClaimRow {
                        topic_id,
                        group: group.clone(),
                        partition,
                        offset,
                        deadline_ms: c.deadline_ms,
                        deliveries: c.deliveries,
                    });
                }
            }
        }
        rows.sort_by(|a, b| {
            (a.topic_id, &a.group, a.partition, a.offset).cmp(&(b.topic_id, &b.group, b.partition, b.offset))
        });
        rows
    }
}

fn read_from(
    store: &Store,
    topic_id: u64,
    partitions: &[u32],
    from: &[u64],
    limit: u64,
    max_bytes: u64,
) -> Result<Vec<Message>> {
    let mut next: Vec<u64> = from.to_vec();
    fair_fill(partitions, limit, max_bytes, |i, want, bytes| {
        let got =
            store.read_messages_within(topic_id, partitions[i], next[i], u64::MAX, want, bytes).map_err(storage_err)?;
        if let Some(last) = got.last() {
            next[i] = last.offset + 1;
        }
        Ok(got)
    })
}

/// The bytes a message counts for in a CONSUME's `max_bytes` (as in its partition's size).
fn message_bytes(m: &Message) -> u64 {
    topicfusion_storage::message::message_size(&m.source_table, &m.key, &m.payload)
}

/// Shares `limit` messages and `max_bytes` bytes between partitions so that none starves:
/// first each partition gets up to `max(limit / partitions, 1)` messages, then what is left is
/// filled in partition order; the bytes stop it early (after one message at least). A message
/// that does not fit the bytes left ends its partition's share: nothing after it in that
/// partition is read, so no message overtakes an earlier one of its partition.
/// `read(i, want, bytes)` returns up to `want` further messages of partition `i` of about
/// `bytes` (later calls continue after earlier ones). The result is ordered by partition, then
/// offset.
fn fair_fill(
    partitions: &[u32],
    limit: u64,
    max_bytes: u64,
    mut read: impl FnMut(usize, usize, u64) -> Result<Vec<Message>>,
) -> Result<Vec<Message>> {
    let limit = limit as usize;
    let quota = (limit / partitions.len().max(1)).max(1);
    let mut per_partition: Vec<Vec<Message>> = vec![Vec::new(); partitions.len()];
    // Partitions whose read returned a message that did not fit: read no further.
    let mut ended = vec![false; partitions.len()];
    let (mut total, mut bytes) = (0, 0u64);
    for cap in [quota, limit] {
        for (i, got) in per_partition.iter_mut().enumerate() {
            let want = (limit - total).min(cap.saturating_sub(got.len()));
            if want == 0 || ended[i] || (bytes >= max_bytes && total > 0) {
                continue;
            }
            let more = read(i, want, if total == 0 { max_bytes } else { max_bytes.saturating_sub(bytes).max(1) })?;
            // A partition past the budget (its first message alone) still counts.
            let more: Vec<Message> = if total > 0 {
                let read = more.len();
                let mut left = max_bytes.saturating_sub(bytes);
                let fitting: Vec<Message> = more
                    .into_iter()
                    .take_while(|m| {
                        let b = message_bytes(m);
                        let fits = b <= left;
                        left = left.saturating_sub(b);
                        fits
                    })
                    .collect();
                ended[i] = fitting.len() < read;
                fitting
            } else {
                more
            };
            total += more.len();
            bytes += more.iter().map(message_bytes).sum::<u64>();
            got.extend(more);
        }
    }
    Ok(per_partition.into_iter().flatten().collect())
}

/// What a group read needs besides the topic.
struct ClaimRequest<'a> {
    group: &'a str,
    partitions: &'a [u32],
    named_partition: Option<u32>,
    start: &'a StartPosition,
    limit: u64,
    max_bytes: u64,
    visibility_ms: u64,
    dead_letter: Option<&'a DeadLetter>,
}

/// A resolved dead-letter setting.
#[derive(Debug)]
struct DeadLetter {
    max_deliveries: u32,
    topic: Arc<Topic>,
}
