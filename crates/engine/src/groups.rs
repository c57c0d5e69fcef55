//! Consumption: stateless reads, consumer groups (durable positions, in-memory claims with a
//! visibility timeout), ACK, RESET, DROP CONSUMER GROUP, and long polling on the store's
//! per-partition commit signal. SQL and (later) HTTP call the same functions.
//!
//! A group's position per partition is the next offset it has not acknowledged; it is stored
//! under the group keyspace and moves forward only by ACK, or anywhere by RESET. Claims are
//! kept in memory (lost on restart, which only causes redelivery).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use datafusion::common::{Result, exec_err, plan_err};
pub use topicfusion_dialect::MAX_GROUP_NAME_BYTES;
use topicfusion_dialect::StartPosition;
use topicfusion_storage::{Commit, Message, Store, keys};

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

/// A resolved CONSUME.
#[derive(Debug, Clone)]
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
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    deadline_ms: i64,
    deliveries: u32,
}

/// A row of `system.topic_offsets`.
#[derive(Debug, Clone)]
pub struct GroupPosition {
    pub topic_id: u64,
    pub group: String,
    pub partition: u32,
    pub position: u64,
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

type ClaimKey = (u64, String, u32);

/// Consumer-group state. One lock serializes every group read-modify-write (claims and
/// positions), so concurrent consumers of a group get disjoint messages.
#[derive(Debug)]
pub struct Groups {
    claims: Mutex<HashMap<ClaimKey, BTreeMap<u64, Claim>>>,
    pub default_visibility_timeout_ms: u64,
    /// Set when the database shuts down: long polls return what they have at once.
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn encode_position(position: u64, updated_ms: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&position.to_be_bytes());
    v[8..].copy_from_slice(&updated_ms.to_be_bytes());
    v
}

fn decode_position(v: &[u8]) -> Result<(u64, i64)> {
    if v.len() != 16 {
        return exec_err!("corrupt group position");
    }
    Ok((u64::from_be_bytes(v[..8].try_into().expect("8")), i64::from_be_bytes(v[8..].try_into().expect("8"))))
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Result<i64> {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(e) => plan_err!("invalid timestamp '{text}' ({e}): expected RFC 3339, e.g. 2026-01-01T00:00:00Z"),
    }
}

/// The offset a start position means in one partition now.
fn resolve_start(store: &Store, topic_id: u64, partition: u32, start: &StartPosition) -> Result<u64> {
    let Some(state) = store.partition_state(topic_id, partition) else {
        return exec_err!("partition {partition} of topic id {topic_id} does not exist");
    };
    Ok(match start {
        StartPosition::Earliest => state.log_start,
        StartPosition::Latest => state.next_offset,
        StartPosition::Offset(n) => *n,
        StartPosition::Timestamp(t) => {
            store.offset_for_timestamp(topic_id, partition, parse_timestamp(t)?).map_err(storage_err)?
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

impl Groups {
    pub fn new(default_visibility_timeout_ms: u64) -> Self {
        Self {
            claims: Mutex::new(HashMap::new()),
            default_visibility_timeout_ms,
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every long poll now and makes later ones return without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClaimKey, BTreeMap<u64, Claim>>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads (CONSUME). Waits up to `timeout_ms` on the partitions' commit signals when nothing
    /// is available; dropping the future ends the wait.
    pub async fn consume(&self, store: &Store, topic: &Topic, req: &ConsumeRequest) -> Result<Vec<Message>> {
        if req.limit > MAX_CONSUME_LIMIT {
            return plan_err!("LIMIT {} is above the maximum of {MAX_CONSUME_LIMIT}", req.limit);
        }
        if req.timeout_ms > MAX_TIMEOUT_MS {
            return plan_err!("timeout_ms {} is above the maximum of {MAX_TIMEOUT_MS}", req.timeout_ms);
        }
        let visibility = req.visibility_timeout_ms.unwrap_or(self.default_visibility_timeout_ms);
        if visibility == 0 || visibility > MAX_VISIBILITY_TIMEOUT_MS {
            return plan_err!(
                "visibility_timeout_ms must be between 1 and {MAX_VISIBILITY_TIMEOUT_MS}, got {visibility}"
            );
        }
        let partitions: Vec<u32> = match req.partition {
            Some(p) => vec![p],
            None => (0..topic.meta.partitions).collect(),
        };
        let start = req.start.clone().unwrap_or(StartPosition::Latest);
        let topic_id = topic.meta.id;
        // A stateless read resolves its start once, so a long poll FROM LATEST sees what
        // arrives while it waits.
        let stateless_from: Option<Vec<u64>> = match &req.group {
            None => Some(partitions.iter().map(|&p| resolve_start(store, topic_id, p, &start)).collect::<Result<_>>()?),
            Some(_) => None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms);
        let mut shutdown = self.shutdown.subscribe();
        loop {
            // Subscribe before reading, so a commit between the read and the wait is not missed.
            let mut signals = Vec::with_capacity(partitions.len());
            for &p in &partitions {
                match store.subscribe(topic_id, p) {
                    Some(rx) => signals.push(rx),
                    None => return exec_err!("topic {} was dropped", topic.meta.qualified_name()),
                }
            }
            let (messages, next_expiry_ms) = match (&req.group, &stateless_from) {
                (Some(group), _) => self.claim(store, topic, group, &partitions, &start, req.limit, visibility)?,
                (None, Some(from)) => (read_from(store, topic_id, &partitions, from, req.limit)?, None),
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
            }
        }
    }

    /// One attempt of a group read: creates the group if needed, then claims up to `limit`
    /// unclaimed messages above the group's positions. Returns the messages and the earliest
    /// deadline of the live claims it skipped (when one expires, messages become available).
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        partitions: &[u32],
        start: &StartPosition,
        limit: u64,
        visibility_ms: u64,
    ) -> Result<(Vec<Message>, Option<i64>)> {
        let mut claims = self.lock();
        let topic_id = topic.meta.id;
        let positions = self.ensure_group(store, topic, group, start)?;
        let now = now_ms();
        let mut next_expiry: Option<i64> = None;
        let messages = fair_fill(partitions, limit, |i, want| {
            let p = partitions[i];
            let Some(state) = store.partition_state(topic_id, p) else { return Ok(Vec::new()) };
            let position = positions.get(&p).copied().unwrap_or(state.log_start).max(state.log_start);
            let map = claims.entry((topic_id, group.to_owned(), p)).or_default();
            // Claims at or below the position were acknowledged.
            *map = map.split_off(&position);
            // Read the runs of offsets between live claims.
            let mut from = position;
            let mut got: Vec<Message> = Vec::new();
            let live: Vec<(u64, i64)> =
                map.iter().filter(|(_, c)| c.deadline_ms > now).map(|(&o, c)| (o, c.deadline_ms)).collect();
            for (offset, deadline) in live.into_iter().chain(std::iter::once((u64::MAX, 0))) {
                if got.len() >= want {
                    break;
                }
                if offset != u64::MAX {
                    next_expiry = Some(next_expiry.map_or(deadline, |e| e.min(deadline)));
                }
                if offset > from {
                    got.extend(store.read_messages(topic_id, p, from, offset, want - got.len()).map_err(storage_err)?);
                }
                from = offset.saturating_add(1);
            }
            for m in &got {
                let c = map.entry(m.offset).or_insert(Claim { deadline_ms: 0, deliveries: 0 });
                c.deadline_ms = now + visibility_ms as i64;
                c.deliveries += 1;
            }
            Ok(got)
        })?;
        Ok((messages, next_expiry))
    }

    /// The stored positions of a group on a topic; creates the group (positions resolved from
    /// `start` and committed) if it has none. Partitions added after the group was created start
    /// at their log start. The caller holds the claims lock.
    fn ensure_group(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        start: &StartPosition,
    ) -> Result<HashMap<u32, u64>> {
        let stored = read_positions(store, topic.meta.id, group)?;
        if !stored.is_empty() {
            return Ok(stored.into_iter().map(|(p, (pos, _))| (p, pos)).collect());
        }
        let mut commit = Commit::default();
        let mut positions = HashMap::new();
        let now = now_ms();
        for p in 0..topic.meta.partitions {
            let pos = resolve_start(store, topic.meta.id, p, start)?;
            commit.batch.put(keys::group_key(topic.meta.id, group, p), encode_position(pos, now));
            positions.insert(p, pos);
        }
        store.commit(commit).map_err(storage_err)?;
        Ok(positions)
    }

    /// ACK: the group's position in the partition becomes `upto + 1` unless it is already past
    /// it. Returns the position.
    pub fn ack(&self, store: &Store, topic: &Topic, group: &str, partition: Option<u32>, upto: u64) -> Result<u64> {
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
        let mut claims = self.lock();
        let Some(state) = store.partition_state(topic.meta.id, partition) else {
            return exec_err!("partition {partition} does not exist");
        };
        if upto >= state.next_offset {
            return plan_err!(
                "cannot ACK offset {upto}: partition {partition} of topic {} has {}",
                topic.meta.qualified_name(),
                if state.next_offset == 0 {
                    "no messages yet".to_owned()
                } else {
                    format!("offsets up to {} only", state.next_offset - 1)
                }
            );
        }
        // A group an ACK creates starts at EARLIEST elsewhere: nothing is skipped unacknowledged.
        let positions = self.ensure_group(store, topic, group, &StartPosition::Earliest)?;
        let current = positions.get(&partition).copied().unwrap_or(0);
        let position = current.max(upto + 1);
        if position != current || !positions.contains_key(&partition) {
            let mut commit = Commit::default();
            commit.batch.put(keys::group_key(topic.meta.id, group, partition), encode_position(position, now_ms()));
            store.commit(commit).map_err(storage_err)?;
        }
        if let Some(map) = claims.get_mut(&(topic.meta.id, group.to_owned(), partition)) {
            *map = map.split_off(&position);
        }
        Ok(position)
    }

    /// RESET CONSUMER GROUP: sets the positions of one or all partitions; drops their claims.
    pub fn reset(
        &self,
        store: &Store,
        topic: &Topic,
        group: &str,
        partition: Option<u32>,
        to: &StartPosition,
    ) -> Result<()> {
        let mut claims = self.lock();
        let partitions: Vec<u32> = match partition {
            Some(p) => vec![p],
            None => (0..topic.meta.partitions).collect(),
        };
        self.ensure_group(store, topic, group, to)?;
        let mut commit = Commit::default();
        let now = now_ms();
        for &p in &partitions {
            let pos = resolve_start(store, topic.meta.id, p, to)?;
            commit.batch.put(keys::group_key(topic.meta.id, group, p), encode_position(pos, now));
            claims.remove(&(topic.meta.id, group.to_owned(), p));
        }
        store.commit(commit).map_err(storage_err)?;
        Ok(())
    }

    /// DROP CONSUMER GROUP.
    pub fn drop_group(&self, store: &Store, topic: &Topic, group: &str) -> Result<()> {
        let mut claims = self.lock();
        if read_positions(store, topic.meta.id, group)?.is_empty() {
            return plan_err!("consumer group '{group}' does not exist on topic {}", topic.meta.qualified_name());
        }
        let prefix = keys::group_prefix(topic.meta.id, group);
        let mut commit = Commit::default();
        commit.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
        store.commit(commit).map_err(storage_err)?;
        claims.retain(|(t, g, _), _| !(*t == topic.meta.id && g == group));
        Ok(())
    }

    /// Stages the removal of every group of these topics (CLEAR TOPIC, DROP TOPIC) and forgets
    /// their claims; returns the lock guard, so the caller commits before any group call runs.
    #[must_use = "hold the guard until the commit"]
    pub fn forget_topics(&self, commit: &mut Commit, topic_ids: &[u64]) -> impl Drop + '_ {
        let mut claims = self.lock();
        for &topic_id in topic_ids {
            let prefix = keys::topic_groups_prefix(topic_id);
            commit.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
        }
        claims.retain(|(t, _, _), _| !topic_ids.contains(t));
        claims
    }

    /// Every stored group position (for `system.topic_offsets`).
    pub fn positions(&self, core: &Core) -> Result<Vec<GroupPosition>> {
        let prefix = keys::groups_prefix();
        let rows = core.store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)?;
        rows.into_iter()
            .map(|(k, v)| {
                let (topic_id, group, partition) = keys::decode_group_key(&k).map_err(storage_err)?;
                let (position, updated_at_ms) = decode_position(&v)?;
                let next_offset = core.store.partition_state(topic_id, partition).map_or(0, |s| s.next_offset);
                Ok(GroupPosition { topic_id, group, partition, position, next_offset, updated_at_ms })
            })
            .collect()
    }

    /// Every live or expired-but-unacknowledged claim (for `system.topic_claims`).
    pub fn claims(&self) -> Vec<ClaimRow> {
        let claims = self.lock();
        let mut rows: Vec<ClaimRow> = claims
            .iter()
            .flat_map(|((topic_id, group, partition), map)| {
                map.iter().map(move |(&offset, c)| ClaimRow {
                    topic_id: *topic_id,
                    group: group.clone(),
                    partition: *partition,
                    offset,
                    deadline_ms: c.deadline_ms,
                    deliveries: c.deliveries,
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.topic_id, &a.group, a.partition, a.offset).cmp(&(b.topic_id, &b.group, b.partition, b.offset))
        });
        rows
    }
}

fn read_positions(store: &Store, topic_id: u64, group: &str) -> Result<HashMap<u32, (u64, i64)>> {
    let prefix = keys::group_prefix(topic_id, group);
    let rows = store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).map_err(storage_err)?;
    rows.into_iter()
        .map(|(k, v)| {
            let (_, _, p) = keys::decode_group_key(&k).map_err(storage_err)?;
            Ok((p, decode_position(&v)?))
        })
        .collect()
}

fn read_from(store: &Store, topic_id: u64, partitions: &[u32], from: &[u64], limit: u64) -> Result<Vec<Message>> {
    let mut next: Vec<u64> = from.to_vec();
    fair_fill(partitions, limit, |i, want| {
        let got = store.read_messages(topic_id, partitions[i], next[i], u64::MAX, want).map_err(storage_err)?;
        if let Some(last) = got.last() {
            next[i] = last.offset + 1;
        }
        Ok(got)
    })
}

/// Shares `limit` between partitions so that none starves: first each partition gets up to
/// `max(limit / partitions, 1)` messages, then what is left of the limit is filled in partition
/// order. `read(i, want)` returns up to `want` further messages of partition `i` (later calls
/// continue after earlier ones). The result is ordered by partition, then offset.
fn fair_fill(
    partitions: &[u32],
    limit: u64,
    mut read: impl FnMut(usize, usize) -> Result<Vec<Message>>,
) -> Result<Vec<Message>> {
    let limit = limit as usize;
    let quota = (limit / partitions.len().max(1)).max(1);
    let mut per_partition: Vec<Vec<Message>> = vec![Vec::new(); partitions.len()];
    let mut total = 0;
    for cap in [quota, limit] {
        for (i, got) in per_partition.iter_mut().enumerate() {
            let want = (limit - total).min(cap.saturating_sub(got.len()));
            if want == 0 {
                continue;
            }
            let more = read(i, want)?;
            total += more.len();
            got.extend(more);
        }
    }
    Ok(per_partition.into_iter().flatten().collect())
}
