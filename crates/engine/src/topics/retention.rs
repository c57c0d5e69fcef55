//! Retention: deletes the messages a topic's limits no longer keep, per partition, and records
//! each run in `system.jobs`.
//!
//! A partition keeps a message while it is younger than `retention_seconds` (by its commit time)
//! and the partition's bytes stay within `retention_max_bytes` (per partition, as Kafka's
//! `retention.bytes`); older ones go first. Deletes move the log start up in steps of at most
//! [`STEP_MESSAGES`] messages, each one commit of a `Truncate` (the store applies it only if the
//! log still starts where the step began, so byte counts stay exact); offsets never move back.
//! Deleted ranges are compacted afterwards so their tombstones do not slow reads.
//!
//! The executor is a thread owned by the `Database`: it runs every `interval` (and on
//! `RUN RETENTION`), compacts what CLEAR and DROP TOPIC deleted, and stops when the database is
//! dropped. The clock is the store's, which tests replace.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datafusion::common::Result;
use topicfusion_storage::{Commit, PartitionOp, StorageError, Store};

use crate::catalog::{TopicMeta, storage_err};
use crate::core::Core;

/// The most messages one truncate step deletes.
pub const STEP_MESSAGES: usize = 50_000;
/// How many job records `system.jobs` keeps.
pub const KEPT_JOBS: usize = 1000;

/// One run of a background job on one topic (kept in the store: `system.jobs` survives
/// restarts).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub job_id: u64,
    pub kind: String,
    pub topic: String,
    pub messages_deleted: u64,
    pub bytes_freed: u64,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// What the executor thread is asked to do.
#[derive(Debug, Default)]
struct Requests {
    stop: bool,
    /// Partitions whose messages CLEAR or DROP TOPIC deleted: compact their whole range.
    compactions: Vec<(u64, u32)>,
}

/// Job records and the executor's mailbox (in `Core`, so statements can reach them).
#[derive(Debug, Default)]
pub struct Jobs {
    next_id: AtomicU64,
    recent: Mutex<VecDeque<JobRecord>>,
    requests: Mutex<Requests>,
    wake: Condvar,
}

impl Jobs {
    /// The job records of a data dir (the last [`KEPT_JOBS`]).
    pub fn load(store: &Store) -> Result<Self> {
        let prefix = [topicfusion_storage::keys::JOB_PREFIX];
        let end = topicfusion_storage::keys::prefix_end(&prefix);
        let mut recent = VecDeque::new();
        let mut last = 0;
        for (k, v) in store.scan(&prefix, &end, usize::MAX).map_err(storage_err)? {
            last = topicfusion_storage::keys::decode_job_key(&k).map_err(storage_err)?;
            match serde_json::from_slice::<JobRecord>(&v) {
                Ok(r) => recent.push_back(r),
                // A record this version cannot read is skipped, not a reason to refuse the data dir.
                Err(e) => tracing::warn!(job_id = last, error = %e, "a job record is unreadable and skipped"),
            }
            if recent.len() > KEPT_JOBS {
                recent.pop_front();
            }
        }
        Ok(Self { next_id: AtomicU64::new(last), recent: Mutex::new(recent), ..Default::default() })
    }

    /// The recent runs, oldest first.
    pub fn recent(&self) -> Vec<JobRecord> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Keeps a run's record: in the store (one commit, which also drops the record
    /// [`KEPT_JOBS`] runs older) and in memory.
    fn record(&self, store: &Store, mut record: JobRecord) -> Result<()> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        record.job_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut commit = Commit::default();
        let json =
            serde_json::to_vec(&record).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        commit.batch.put(topicfusion_storage::keys::job_key(record.job_id), json);
        if let Some(old) = record.job_id.checked_sub(KEPT_JOBS as u64) {
            commit.batch.delete(topicfusion_storage::keys::job_key(old));
        }
        store.commit(commit).map_err(storage_err)?;
        if recent.len() >= KEPT_JOBS {
            recent.pop_front();
        }
        recent.push_back(record);
        Ok(())
    }

    /// Asks the executor to compact the message ranges of partitions whose messages were all
    /// deleted (CLEAR, DROP TOPIC).
    pub fn request_compaction(&self, topic_id: u64, partitions: impl Iterator<Item = u32>) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        r.compactions.extend(partitions.map(|p| (topic_id, p)));
        self.wake.notify_all();
    }
}

/// What one run on one topic did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub messages_deleted: u64,
    pub bytes_freed: u64,
}

/// Enforces the retention of every topic (or of `only`), recording a job per topic that had
/// limits. Blocking.
pub fn run(core: &Core, only: Option<u64>) -> Vec<JobRecord> {
    let topics: Vec<TopicMeta> = core
        .catalog
        .read()
        .topics
        .values()
        .filter(|t| only.is_none_or(|id| t.meta.id == id))
        .filter(|t| t.meta.retention_seconds.is_some() || t.meta.retention_max_bytes.is_some())
        .map(|t| t.meta.clone())
        .collect();
    let mut out = Vec::new();
    for topic in topics {
        let started_at_ms = core.store.clock().now_ms();
        let start = Instant::now();
        let result = enforce_topic(&core.store, &topic, started_at_ms);
        // A cluster node that is not the leader: the leader's retention deletes, through the log.
        if let Err(e) = &result
            && crate::error::ErrorKind::of(e) == crate::error::ErrorKind::ReadOnly
        {
            continue;
        }
        let (outcome, error) = match result {
            Ok(o) => (o, None),
            Err(e) => (Outcome::default(), Some(crate::error::one_line(&e.to_string(), 500))),
        };
        if outcome.messages_deleted > 0 {
            core.metrics.retention_deleted(topic.id, outcome.messages_deleted);
        }
        let record = JobRecord {
            job_id: 0,
            kind: "retention".to_owned(),
            topic: topic.qualified_name(),
            messages_deleted: outcome.messages_deleted,
            bytes_freed: outcome.bytes_freed,
            started_at_ms,
            duration_ms: start.elapsed().as_millis() as u64,
            error,
        };
        // The background runs record only what did something; RUN RETENTION records every topic.
        if (only.is_some() || record.messages_deleted > 0 || record.error.is_some())
            && let Err(e) = core.jobs.record(&core.store, record.clone())
        {
            // The run itself is done; only its record is lost.
            tracing::warn!(error = %e, "cannot keep the record of a retention run");
        }
        out.push(record);
    }
    out
}

/// Enforces one topic's limits on each of its partitions.
pub fn enforce_topic(store: &Store, topic: &TopicMeta, now_ms: i64) -> Result<Outcome> {
    let mut total = Outcome::default();
    for p in 0..topic.partitions {
        let o = enforce_partition(store, topic, p, now_ms)?;
        total.messages_deleted += o.messages_deleted;
        total.bytes_freed += o.bytes_freed;
    }
    Ok(total)
}

fn enforce_partition(store: &Store, topic: &TopicMeta, partition: u32, now_ms: i64) -> Result<Outcome> {
    let cutoff_ms = topic.retention_seconds.map(|s| now_ms.saturating_sub((s as i64).saturating_mul(1000)));
    let max_bytes = topic.retention_max_bytes;
    let mut outcome = Outcome::default();
    // The topic may be dropped or cleared meanwhile: then there is nothing (more) to do.
    while let Some(state) = store.partition_state(topic.id, partition) {
        if state.log_start >= state.next_offset {
            break;
        }
        let sizes = store.message_sizes(topic.id, partition, state.log_start, STEP_MESSAGES).map_err(storage_err)?;
        let (mut to, mut freed, mut left) = (state.log_start, 0u64, state.bytes);
        for (offset, timestamp_ms, size) in sizes {
            let expired = cutoff_ms.is_some_and(|c| timestamp_ms < c);
            let over = max_bytes.is_some_and(|m| left > m);
            if offset != to || !(expired || over) {
                break;
            }
            to = offset + 1;
            freed += size;
            left -= size.min(left);
        }
        if to == state.log_start {
            break;
        }
        let op = PartitionOp::Truncate { topic_id: topic.id, partition, from: state.log_start, to, bytes: freed };
        match store.commit(Commit { partition_ops: vec![op], ..Default::default() }) {
            Ok(_) => {}
            Err(StorageError::UnknownPartition { .. }) => break,
            Err(e) => return Err(storage_err(e)),
        }
        if store.partition_state(topic.id, partition).is_none_or(|s| s.log_start != to) {
            // A concurrent CLEAR or DROP won; this step did nothing.
            break;
        }
        outcome.messages_deleted += to - state.log_start;
        outcome.bytes_freed += freed;
    }
    if outcome.messages_deleted > 0
        && let Some(state) = store.partition_state(topic.id, partition)
    {
        store.compact_messages(topic.id, partition, Some(state.log_start));
    }
    Ok(outcome)
}

/// The background thread: runs retention every `interval` and the compactions CLEAR and DROP
/// TOPIC request; stopped and joined on drop.
#[derive(Debug)]
pub struct Executor {
    core: Arc<Core>,
    thread: Option<JoinHandle<()>>,
}

impl Executor {
    /// Starts the thread; `interval` zero runs no periodic retention (compactions still run).
    pub fn start(core: Arc<Core>, interval: Duration) -> std::io::Result<Self> {
        let worker = Arc::clone(&core);
        let thread = std::thread::Builder::new().name("tf-retention".into()).spawn(move || {
            let mut next_run = Instant::now() + interval;
            loop {
                let compactions = {
                    let jobs = &worker.jobs;
                    let mut r = jobs.requests.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if r.stop {
                            return;
                        }
                        if !r.compactions.is_empty() || (!interval.is_zero() && Instant::now() >= next_run) {
                            break;
                        }
                        let wait = if interval.is_zero() {
                            Duration::from_secs(3600)
                        } else {
                            next_run.saturating_duration_since(Instant::now())
                        };
                        r = jobs.wake.wait_timeout(r, wait).unwrap_or_else(|e| e.into_inner()).0;
                    }
                    std::mem::take(&mut r.compactions)
                };
                for (topic_id, partition) in compactions {
                    worker.store.compact_messages(topic_id, partition, None);
                }
                if !interval.is_zero() && Instant::now() >= next_run {
                    run(&worker, None);
                    next_run = Instant::now() + interval;
                }
            }
        })?;
        Ok(Self { core, thread: Some(thread) })
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        {
            let mut r = self.core.jobs.requests.lock().unwrap_or_else(|e| e.into_inner());
            r.stop = true;
            self.core.jobs.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
