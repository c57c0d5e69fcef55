//! The RocksDB store and its single commit path.
//!
//! [`Store::commit`] (= [`Store::write`] + [`Store::finish`]) is the only place that writes to
//! RocksDB (besides moving messages of an older layout at open). `write`, under one lock, gives
//! the commit's message batches (built by the caller, see [`MessageBatches`]) the next offsets
//! of their partitions and stores each under the key of its last offset, stamps the commit
//! time, persists the partitions' high watermarks in the same write batch as the caller's row
//! changes, and writes the batch (not fsynced). `finish` makes it durable — with
//! [`Durability::Sync`] through group commit: a WAL-sync thread fsyncs whenever commits wait,
//! and one fsync covers every commit written before it started, so concurrent writers share
//! fsyncs — and only then moves the partitions' visible watermarks and wakes their readers. Offsets are therefore gap-free, assigned in commit order,
//! never reused (the watermark is stored, not derived from the messages); a reader never sees
//! offset n+1 before offset n, nor a message before it is durable.
//!
//! `write` is two steps, separable for a replicated log: [`Store::prepare`] decides everything
//! (offsets, timestamp, keys, partition states) and returns a [`Command`]; [`Store::apply`], the
//! one apply path, writes a command with its log position in one batch, exactly once. A single
//! node does both under one lock with nothing encoded in between; a replica
//! ([`Store::replicate_through`]) prepares, hands the command to its [`Replicator`] and returns
//! once the log applied it, so every caller of `write` and `commit` replicates unchanged.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::StoreMetrics;

use rocksdb::{DB, DBRawIterator, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, watch};

use crate::command::{AppliedId, Command, PartitionChange};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::message::{
    BatchReader, Entry, Message, MessageBatches, batch_of_legacy_message, decode_batch_header, finish_batch,
};

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A replicated write waiting for its proposal, and where its outcome goes.
struct QueuedWrite {
    commit: Commit,
    on_written: Option<OnWritten>,
    done: std::sync::mpsc::SyncSender<Result<Committed>>,
}

/// Positions a replicated log entry spans ([`Store::position`] on a replica): the writes one
/// entry carries are at `index * POSITIONS_PER_ENTRY + i` (`i` their place in it), and
/// everything through the entry at [`entry_position`]. So positions are the same on every node
/// (they follow the log, not RocksDB's sequence numbers), and a JavaScript client holds them
/// exactly up to 2^37 entries.
pub const POSITIONS_PER_ENTRY: u64 = 1 << 16;

/// A replicated write's outcome, once a turn answered it. A turn that panicked after taking the
/// write dropped its answer: that is an error too (waiting for it would spin for ever).
fn answered(outcome: &std::sync::mpsc::Receiver<Result<Committed>>) -> Option<Result<Committed>> {
    match outcome.try_recv() {
        Ok(done) => Some(done),
        Err(std::sync::mpsc::TryRecvError::Empty) => None,
        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
            Some(Err(StorageError::Replication("the proposal carrying this write failed (see the log)".into())))
        }
    }
}

/// The longest a proposing turn waits for writers it expects ([`Store::gather`]).
const MAX_GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// The proposing turn of a replica. A writer waits for its turn or for its outcome, whichever
/// comes first: with a mutex as the turn, the writers a turn had answered could only see their
/// outcome once they got the mutex, and the next turn's holder, taking it first, kept them
/// waiting for its whole round trip (steady writers then split into two groups taking turns).
#[derive(Default)]
struct TurnGate {
    taken: Mutex<bool>,
    /// Signalled when a turn ends.
    ended: std::sync::Condvar,
}

/// A held turn; dropping it ends the turn.
struct Turn<'a>(&'a TurnGate);

impl TurnGate {
    fn take(&self) -> Turn<'_> {
        let Ok(turn) = self.take_unless(|| None::<std::convert::Infallible>);
        turn
    }

    /// The turn once free, unless `instead` returns something first (checked before each wait
    /// and after each turn ends).
    fn take_unless<T>(&self, mut instead: impl FnMut() -> Option<T>) -> std::result::Result<Turn<'_>, T> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(x) = instead() {
                return Err(x);
            }
            if !*taken {
                *taken = true;
                return Ok(Turn(self));
            }
            taken = self.ended.wait(taken).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.taken.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.ended.notify_all();
    }
}

/// What the last proposing turn saw ([`Store::gather`]).
#[derive(Default)]
struct Turns {
    /// The writes it proposed plus those queued when it ended: the writers the next turn
    /// expects.
    writers: usize,
    /// How long its proposal took (its round trip through the log).
    round_trip: std::time::Duration,
}

/// The position through log entry `index`: after each of its writes.
pub fn entry_position(index: u64) -> u64 {
    write_position(index, POSITIONS_PER_ENTRY - 1)
}

/// The position of the `i`th write log entry `index` carries.
fn write_position(index: u64, i: u64) -> u64 {
    index.saturating_mul(POSITIONS_PER_ENTRY).saturating_add(i)
}

/// The same replication failure, for each writer of a batch.
fn replication_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::NotLeader { leader } => StorageError::NotLeader { leader: leader.clone() },
        StorageError::Replication(why) => StorageError::Replication(why.clone()),
        other => StorageError::Replication(other.to_string()),
    }
}

/// Everything a store holds at one log position ([`Store::export`]).
pub struct Export {
    /// The log entry applied last when it was taken.
    pub applied: Option<AppliedId>,
    /// The membership applied last when it was taken ([`Store::applied_membership`]).
    pub membership: Option<Vec<u8>>,
    /// `TFEXPORT1`, then each key and value in key order, each as `len:u32` (big-endian) and bytes.
    pub bytes: Vec<u8>,
}

const EXPORT_MAGIC: &[u8] = b"TFEXPORT1";

/// An [`Export`]'s bytes, checked and ready for [`Store::import`].
pub struct Import {
    batch: WriteBatch,
}

impl Import {
    /// Checks an export's bytes: complete, keys of the store's keyspaces only, taken at log
    /// entry `expected`. Nothing is written: an export refused here changes no store.
    pub fn check(export: &[u8], expected: Option<AppliedId>) -> Result<Self> {
        let corrupt = || StorageError::Corrupt { what: "store export" };
        let mut rest = export.strip_prefix(EXPORT_MAGIC).ok_or_else(corrupt)?;
        let mut batch = WriteBatch::default();
        // Every key: keyspaces are named by a first byte from 01 to 09.
        batch.delete_range(EXPORT_KEYS.0, EXPORT_KEYS.1);
        let mut applied = None;
        fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let (part, tail) = tail.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            *rest = tail;
            Some(part)
        }
        while !rest.is_empty() {
            let (key, value) = (take(&mut rest).ok_or_else(corrupt)?, take(&mut rest).ok_or_else(corrupt)?);
            if !(EXPORT_KEYS.0..EXPORT_KEYS.1).contains(&key) {
                return Err(corrupt());
            }
            if key == keys::applied_key() {
                applied = Some(AppliedId::decode(value)?);
            }
            batch.put(key, value);
        }
        if applied != expected {
            return Err(StorageError::Corrupt { what: "store export (not at the log entry it was sent for)" });
        }
        Ok(Self { batch })
    }
}
/// The range of every key an export may hold (keyspace bytes 01 to 09, see [`keys`]).
const EXPORT_KEYS: (&[u8], &[u8]) = (&[0x01], &[0x0a]);

/// How far a commit is flushed before [`Store::commit`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Written to the WAL in the OS page cache: survives a process crash (`kill -9`), not a
    /// power loss. The default.
    #[default]
    Process,
    /// The WAL is fsynced on every commit: also survives power loss.
    Sync,
}

/// The log state of one topic partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionState {
    /// The offset the next message will get (the high watermark).
    pub next_offset: u64,
    /// The first offset still stored (moves up on CLEAR TOPIC and retention).
    pub log_start: u64,
    /// Bytes of the stored messages, each counted as [`crate::message::message_size`].
    pub bytes: u64,
}

impl PartitionState {
    fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.next_offset.to_be_bytes());
        out[8..16].copy_from_slice(&self.log_start.to_be_bytes());
        out[16..].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 24 {
            return Err(StorageError::Corrupt { what: "partition state: wrong length" });
        }
        let at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("len checked"));
        Ok(Self { next_offset: at(0), log_start: at(8), bytes: at(16) })
    }

    /// Messages currently stored.
    pub fn message_count(&self) -> u64 {
        self.next_offset - self.log_start
    }
}

/// A change to the set of partitions or to a partition's log, applied under the commit lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionOp {
    /// A new, empty partition starting at offset 0.
    Create { topic_id: u64, partition: u32 },
    /// Delete every message; the high watermark stays, so offsets are never reused.
    Clear { topic_id: u64, partition: u32 },
    /// Delete the partition, its messages and its watermark (DROP TOPIC).
    Drop { topic_id: u64, partition: u32 },
    /// Retention: delete the messages `[from, to)` holding `bytes` bytes (as
    /// [`Store::message_sizes`] reported them) and move the log start to `to`. Applies only if
    /// the log still starts at `from` (else a concurrent CLEAR or truncate won and this one is
    /// a no-op), so the byte count stays exact; the high watermark never moves.
    Truncate { topic_id: u64, partition: u32, from: u64, to: u64, bytes: u64 },
}

/// Where commit timestamps come from: the system clock, or a test's clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// Milliseconds since the Unix epoch from the system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)))
    }

    /// A clock that reads `f` (tests move time without sleeping).
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// [`Store::multi_get`] reads this many keys or fewer with one Get each.
const FEW_KEYS: usize = 16;

/// One atomic commit: the caller's puts and deletes plus the messages to append.
#[derive(Default)]
pub struct Commit {
    pub batch: WriteBatch,
    pub messages: MessageBatches,
    pub partition_ops: Vec<PartitionOp>,
    /// Called once the batch is written, still under the commit lock (so in commit order), with
    /// the commit's position ([`Store::position`] right after it): for live queries, which must
    /// see commits in the order they were made. Must be quick. On a replica it is called once
    /// the write's log entry is applied here, still in the proposing turn (so in log order, and
    /// before any snapshot of [`Store::scan_at_position`] can see the entry), with the write's
    /// position in the entry ([`POSITIONS_PER_ENTRY`]); a write that fails is never reported.
    pub on_written: Option<OnWritten>,
}

/// See [`Commit::on_written`].
pub type OnWritten = Box<dyn FnOnce(u64) + Send>;

/// What a commit assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub timestamp_ms: i64,
    /// The offset of each message, in the order of [`Commit::messages`].
    pub offsets: Vec<u64>,
}

/// The commit path's state, under the commit lock (held across the RocksDB write).
struct LogState {
    /// What the commit path assigns from: `next_offset` counts every written message.
    partitions: HashMap<(u64, u32), PartitionState>,
    last_timestamp_ms: i64,
    /// The replicated-log entry applied last (stored under [`keys::applied_key`]).
    last_applied: Option<AppliedId>,
}

/// What readers and the WAL-sync thread use, under its own lock, which is never held across I/O:
/// so neither waits behind a commit's RocksDB write. A commit updates it after its write, still
/// under the commit lock (lock order: commit lock, then this one).
struct ReadState {
    /// The partitions as readers see them: `next_offset` is the visible watermark, the offset
    /// below which every message is durable (behind the commit path's while a synced commit
    /// waits for its fsync).
    partitions: HashMap<(u64, u32), PartitionState>,
    signals: HashMap<(u64, u32), watch::Sender<u64>>,
    /// The sequence number of the last written commit.
    written_seq: u64,
    /// With [`Durability::Sync`]: the watermarks that written commits move up, in commit order,
    /// until the fsync that covers them publishes them.
    unpublished: VecDeque<(u64, Vec<Watermark>)>,
}

/// A partition (`(topic_id, partition)`) and its new high watermark.
type Watermark = ((u64, u32), u64);

/// Group commit with [`Durability::Sync`]: the WAL-sync thread and the commits waiting for it.
/// A writer asks for a sync through its commit's sequence number and waits; the thread fsyncs
/// everything written so far the moment it is asked (starting the next fsync as soon as one
/// ends while commits wait), publishes what it covered, then tells the waiters: async ones by
/// calling the callback each registered for its own commit (no thread per waiting statement,
/// and no wake-up of a statement whose commit the fsync did not cover), blocking ones through a
/// condvar.
struct WalSync {
    state: Mutex<SyncState>,
    /// Wakes the thread when a commit asks for a sync.
    work: std::sync::Condvar,
    /// Wakes blocking waiters when `synced` moves or the sync fails.
    done: std::sync::Condvar,
    /// How long each fsync takes (`topicfusion_wal_sync_duration_seconds`).
    fsync_seconds: prometheus::Histogram,
}

/// Called once a commit is durable, or with the error if its fsync failed.
type OnDurable = Box<dyn FnOnce(Result<()>) + Send>;

#[derive(Default)]
struct SyncState {
    /// The highest commit sequence number a writer waits for.
    requested: u64,
    /// Every commit up to this one is durable.
    synced: u64,
    /// Why an fsync failed. After that no commit is acknowledged again (the data an fsync
    /// failed to write may be lost from the page cache: retrying it could report a write
    /// durable that is not, as PostgreSQL learnt); the database must be restarted.
    failed: Option<String>,
    /// The thread is waiting for work (so a request must wake it).
    idle: bool,
    /// An fsync is running (on the WAL-sync thread, or on a writer's own thread through
    /// [`Store::sync_here`]): one at a time.
    syncing: bool,
    shutdown: bool,
    /// Async waiters ([`Store::when_durable`]) and the commit each waits for, in the order they
    /// came; each has asked for a sync through its commit, so the thread serves all of them
    /// before it stops.
    waiters: Vec<(u64, OnDurable)>,
}

impl WalSync {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the thread to sync through commit `seq`; returns the state, still locked.
    fn request(&self, seq: u64) -> Result<MutexGuard<'_, SyncState>> {
        let st = self.request_quietly(seq)?;
        if st.requested > st.synced && st.idle && !st.syncing {
            self.work.notify_one();
        }
        Ok(st)
    }

    /// [`WalSync::request`] without waking the thread (for a writer that may fsync itself).
    fn request_quietly(&self, seq: u64) -> Result<MutexGuard<'_, SyncState>> {
        let mut st = self.lock();
        if let Some(reason) = &st.failed {
            return Err(StorageError::WalSync(reason.clone()));
        }
        st.requested = st.requested.max(seq);
        Ok(st)
    }
}

/// The WAL-sync thread: fsyncs whenever commits wait and no writer is fsyncing on its own
/// thread ([`Store::sync_here`]). Returns on shutdown once no commit waits, or after a failed
/// fsync.
fn wal_sync_loop(db: &DB, read: &Mutex<ReadState>, sync: &WalSync) {
    loop {
        let mut st = sync.lock();
        loop {
            // After a failed fsync nothing is synced again (see `failed`).
            if st.failed.is_some() {
                return;
            }
            if st.requested > st.synced && !st.syncing {
                break;
            }
            if st.shutdown && st.requested <= st.synced && !st.syncing {
                return;
            }
            st.idle = true;
            st = sync.work.wait(st).unwrap_or_else(|e| e.into_inner());
            st.idle = false;
        }
        st.syncing = true;
        drop(st);
        if !sync_round(db, read, sync) {
            return;
        }
    }
}

/// One fsync covering every commit written so far (the caller has set `syncing`): publishes
/// the watermarks of the commits it covered (in commit order), then tells their writers.
/// Returns false if the fsync failed.
fn sync_round(db: &DB, read: &Mutex<ReadState>, sync: &WalSync) -> bool {
    // Every commit written before this read is covered by the fsync below.
    let target = read.lock().unwrap_or_else(|e| e.into_inner()).written_seq;
    let timer = sync.fsync_seconds.start_timer();
    let result = db.flush_wal(true);
    timer.observe_duration();
    if result.is_ok() {
        // Consumers wake right after the fsync, before the writers: they do not wait for
        // each writer to be scheduled again.
        let mut read = read.lock().unwrap_or_else(|e| e.into_inner());
        while read.unpublished.front().is_some_and(|(s, _)| *s <= target) {
            if let Some((_, appended)) = read.unpublished.pop_front() {
                publish(&mut read, &appended);
            }
        }
    }
    let mut st = sync.lock();
    match result {
        Ok(()) => st.synced = st.synced.max(target),
        Err(e) => st.failed = Some(e.to_string()),
    }
    st.syncing = false;
    let failed = st.failed.clone();
    let synced = st.synced;
    let (done, waiting) =
        std::mem::take(&mut st.waiters).into_iter().partition(|(seq, _)| failed.is_some() || *seq <= synced);
    st.waiters = waiting;
    sync.done.notify_all();
    // Commits that came during this fsync (or a shutdown): the thread takes them.
    if (st.requested > st.synced || st.shutdown) && st.idle {
        sync.work.notify_one();
    }
    drop(st);
    for (_, on_durable) in done {
        on_durable(match &failed {
            Some(reason) => Err(StorageError::WalSync(reason.clone())),
            None => Ok(()),
        });
    }
    failed.is_none()
}

/// A commit written to RocksDB but, with [`Durability::Sync`], not yet fsynced: pass it to
/// [`Store::finish`] or [`Store::durable`]. Holding it holds no lock.
#[must_use = "a written commit becomes durable and visible only through Store::finish or Store::durable"]
pub struct Pending {
    seq: u64,
    committed: Committed,
    /// When the commit started (for `topicfusion_commit_duration_seconds`); `None` for
    /// [`Store::written`], which commits nothing.
    started: Option<Instant>,
}

impl Pending {
    pub(crate) fn into_parts(self) -> (Committed, Option<Instant>) {
        (self.committed, self.started)
    }
}

/// What a replicated-log entry gives [`Store::apply`].
pub enum Payload {
    /// A prepared commit.
    Command(Command),
    /// A change of the cluster's membership, in the cluster's encoding: stored as it is.
    Membership(Vec<u8>),
    /// An entry with nothing for the store (Raft's blank entry of a new leader).
    Blank,
}

/// What [`Store::apply`] did with a log entry.
#[must_use = "a written entry becomes durable and visible only through Store::finish or Store::durable"]
pub enum Applied {
    /// Written: finish it like a [`Store::write`].
    Written(Pending),
    /// At or below the last applied index: nothing written.
    Skipped,
    /// Prepared from partition states the store no longer has: only the log position written.
    Stale,
}

/// Where a store's writes go when the store is one replica of a replicated log
/// ([`Store::replicate_through`]).
pub trait Replicator: Send + Sync + 'static {
    /// Returns once this replica may prepare a write: it leads, and its store has applied every
    /// entry committed before (else [`StorageError::NotLeader`]). Blocking.
    fn ready(&self) -> Result<()>;

    /// Proposes `command` (prepared from this store's applied state) and returns the index of
    /// its log entry once it is committed and applied to this store through [`Store::apply_own`],
    /// or why it is not (then nothing of it was applied). Blocking; called with no store lock
    /// held but one writer at a time.
    fn replicate(&self, command: Command) -> Result<u64>;
}

/// The RocksDB store. `Send + Sync`; share it with an `Arc`.
pub struct Store {
    db: Arc<DB>,
    durability: Durability,
    clock: Clock,
    /// Set on a replica: [`Store::write`] proposes through it instead of applying.
    replicator: std::sync::OnceLock<Arc<dyn Replicator>>,
    /// The proposing turn, held by a replicated write from its wait for more writes
    /// ([`Store::gather`]) until applied, so each is prepared from the state the previous one
    /// left; also by [`Store::at_position`] and [`Store::scan_at_position`].
    turn: TurnGate,
    /// What the last proposing turn saw, for the next one's wait (only its holder touches it).
    last_turn: Mutex<Turns>,
    /// Replicated writes waiting for the next proposal (see [`Store::write_replicated`]).
    replication_queue: Mutex<Vec<QueuedWrite>>,
    /// Signalled when a replicated write joins the queue (a turn may wait for it, see
    /// [`Store::gather`]).
    replication_arrived: std::sync::Condvar,
    /// Told, in log order, the position of each applied entry this node's writers did not
    /// propose in their current leadership (their [`Commit::on_written`] never ran here): see
    /// [`Store::on_foreign_entries`].
    on_foreign: std::sync::OnceLock<Arc<dyn Fn(u64) + Send + Sync>>,
    /// The position through the last applied log entry ([`entry_position`]); 0: none yet.
    /// Changed under the commit lock; read without it by [`Store::position`].
    applied_position: std::sync::atomic::AtomicU64,
    /// The commit lock.
    log: Mutex<LogState>,
    read: Arc<Mutex<ReadState>>,
    wal_sync: Arc<WalSync>,
    /// The WAL-sync thread ([`Durability::Sync`] only), stopped and joined on drop.
    wal_sync_thread: Option<std::thread::JoinHandle<()>>,
    metrics: StoreMetrics,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(thread) = self.wal_sync_thread.take() {
            self.wal_sync.lock().shutdown = true;
            self.wal_sync.work.notify_one();
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).field("durability", &self.durability).finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `path` and loads the partition watermarks.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        Self::open_with_clock(path, durability, Clock::system())
    }

    /// [`Store::open`] with the clock that stamps commits.
    pub fn open_with_clock(path: &Path, durability: Durability, clock: Clock) -> Result<Self> {
        let metrics = StoreMetrics::new();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Consumers mostly read messages soon after they are written, from the upper levels:
        // those stay uncompressed and are read through mmap, so the first read of a block is a
        // page-cache access, with no copy, decompression or block-cache insert (a CONSUME at the
        // tail of a 10M-message topic then costs what one of a 1k-message topic does; LZ4 on
        // every level cost 40% more on a first read, see docs/benchmarks.md). The bottommost
        // level, where older data settles, is LZ4-compressed (RocksDB's tuning guide: light or
        // no compression above, stronger at the bottom). With mmap, an I/O error reading a
        // table file stops the process (SIGBUS) instead of failing the read; nothing is lost.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_allow_mmap_reads(true);
        opts.set_max_background_jobs(2);
        // Key checks of INSERTs look up keys that mostly do not exist yet: whole-key bloom filters
        // in the memtable and in every table file answer those without searching.
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.set_memtable_whole_key_filtering(true);
        // Reuse WAL files freed by flushes: writes then overwrite blocks of an old file instead of
        // growing a new one, so a synced commit's fdatasync has no file-size change to journal
        // (cheaper and steadier on ext4; see docs/benchmarks.md). RocksDB recovers recycled WALs
        // with point-in-time recovery, our mode, since 9.1; we never write with the WAL off.
        opts.set_recycle_log_file_num(2);
        // 16 KiB blocks (consumers read runs of messages) and a 64 MiB block cache.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_size(16 * 1024);
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(64 << 20));
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let db = Arc::new(DB::open(&opts, path)?);
        migrate_legacy_messages(&db)?;
        let log = load_log_state(&db)?;
        let applied_position = log.last_applied.map_or(0, |id| entry_position(id.index));
        let read = ReadState {
            partitions: log.partitions.clone(),
            signals: HashMap::new(),
            written_seq: 0,
            unpublished: VecDeque::new(),
        };
        let log = Mutex::new(log);
        let read = Arc::new(Mutex::new(read));
        let wal_sync = Arc::new(WalSync {
            state: Mutex::new(SyncState::default()),
            work: std::sync::Condvar::new(),
            done: std::sync::Condvar::new(),
            fsync_seconds: metrics.wal_sync.clone(),
        });
        let wal_sync_thread = match durability {
            Durability::Process => None,
            Durability::Sync => {
                let (db, read, sync) = (Arc::clone(&db), Arc::clone(&read), Arc::clone(&wal_sync));
                Some(
                    std::thread::Builder::new()
                        .name("topicfusion-wal-sync".into())
                        .spawn(move || wal_sync_loop(&db, &read, &sync))
                        .map_err(|e| StorageError::WalSync(format!("cannot start the WAL-sync thread: {e}")))?,
                )
            }
        };
        Ok(Self {
            db,
            durability,
            clock,
            replicator: std::sync::OnceLock::new(),
            turn: TurnGate::default(),
            last_turn: Mutex::new(Turns::default()),
            replication_queue: Mutex::new(Vec::new()),
            replication_arrived: std::sync::Condvar::new(),
            on_foreign: std::sync::OnceLock::new(),
            applied_position: std::sync::atomic::AtomicU64::new(applied_position),
            log,
            read,
            wal_sync,
            wal_sync_thread,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave it half-updated: state changes are applied
        // only after the write succeeded, so a poisoned lock is still consistent.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_state(&self) -> MutexGuard<'_, ReadState> {
        // The same holds here: it changes only after a successful write or fsync.
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The one commit path: [`Store::write`] then [`Store::finish`].
    pub fn commit(&self, commit: Commit) -> Result<Committed> {
        let pending = self.write(commit)?;
        self.finish(pending)
    }

    /// Writes a commit (see the module doc) without waiting for its fsync: offsets are
    /// assigned and the batch is in RocksDB, but readers do not see its messages until
    /// [`Store::finish`]. A caller holding locks for the write can release them before the
    /// (slow) finish, so that concurrent commits share one fsync. The single-node path:
    /// [`Store::prepare`] and [`Store::apply`] in one step under the commit lock, with no
    /// encoding in between and no log position stored.
    pub fn write(&self, mut commit: Commit) -> Result<Pending> {
        let started = Instant::now();
        self.check_wal_sync()?;
        let on_written = commit.on_written.take();
        let pending = match self.replicator.get() {
            Some(replicator) => self.write_replicated(replicator.as_ref(), commit, on_written),
            None => {
                let log = self.lock();
                let (command, offsets) = prepare(&log, self.clock.now_ms(), commit)?;
                self.apply_locked(log, None, command, offsets, on_written)
            }
        }?;
        Ok(Pending { started: Some(started), ..pending })
    }

    /// Makes this store a replica: from now on [`Store::write`] (and so [`Store::commit`])
    /// prepares each commit, hands the command to `replicator` and returns once it is applied
    /// (blocking for the replication's round trip), or fails with the replicator's error
    /// ([`StorageError::NotLeader`] on a replica that does not take writes). The replicated log
    /// applies through [`Store::apply`]. Set once; a second call is refused.
    pub fn replicate_through(&self, replicator: Arc<dyn Replicator>) -> Result<()> {
        self.replicator
            .set(replicator)
            .map_err(|_| StorageError::Replication("the store already replicates through another log".into()))
    }

    /// Whether writes go through a replicated log ([`Store::replicate_through`]): each then
    /// blocks its thread for a round trip through the log.
    pub fn replicates(&self) -> bool {
        self.replicator.get().is_some()
    }

    /// Whether this store takes writes now: always alone; on a replica, once its replicator
    /// says it leads ([`StorageError::NotLeader`] otherwise). For what is not a write but may
    /// run only where writes do (a consumer group's claims, kept in the leader's memory).
    pub fn ensure_writable(&self) -> Result<()> {
        match self.replicator.get() {
            Some(r) => r.ready(),
            None => Ok(()),
        }
    }

    /// [`Store::write`] on a replica, with group commit: a write joins the queue, then waits for
    /// the proposing turn or its outcome; whoever holds the turn takes the writes queued (see
    /// [`Store::gather`] for how long it waits for more), prepares them one
    /// after the other (each from the state the previous one leaves), proposes them as one
    /// command and hands each writer its outcome. While one proposal is in flight the next
    /// writes gather, so concurrent writers share a log entry, its round trip and its fsyncs.
    fn write_replicated(
        &self,
        replicator: &dyn Replicator,
        commit: Commit,
        on_written: Option<OnWritten>,
    ) -> Result<Pending> {
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        let queued = QueuedWrite { commit, on_written, done };
        self.replication_queue.lock().unwrap_or_else(|e| e.into_inner()).push(queued);
        self.replication_arrived.notify_one();
        loop {
            {
                // The turn, unless an earlier turn took this write: then its outcome is waiting
                // (the writes queued since are taken by their own writers' turns).
                let _turn = match self.turn.take_unless(|| answered(&outcome)) {
                    Ok(turn) => turn,
                    Err(done) => {
                        let committed = done?;
                        return Ok(Pending { seq: self.read_state().written_seq, committed, started: None });
                    }
                };
                let mut turns = self.last_turn.lock().unwrap_or_else(|e| e.into_inner());
                let batch = self.gather(&turns);
                if !batch.is_empty() {
                    let (proposed, started) = (batch.len(), Instant::now());
                    self.propose_batch(replicator, batch);
                    let queued = self.replication_queue.lock().unwrap_or_else(|e| e.into_inner()).len();
                    *turns = Turns { writers: proposed + queued, round_trip: started.elapsed() };
                }
            }
            // Answered in this turn, or left queued by the cap (then: another turn).
            if let Some(done) = answered(&outcome) {
                let committed = done?;
                // Applied (and, as the apply wrote it, counted as written): finishing it waits
                // for what this store's durability asks, as for any write.
                return Ok(Pending { seq: self.read_state().written_seq, committed, started: None });
            }
        }
    }

    /// Takes the queued writes for a proposing turn: at most one position per write in the entry
    /// (the rest waits for the next turn; its writer takes another if its own write is among
    /// them).
    ///
    /// Group commit across round trips (PostgreSQL's `commit_delay`, made adaptive): the
    /// writers a turn answered come back with their next writes within a fraction of a round
    /// trip. A turn that set off without them left them a whole round trip behind, so steady
    /// writers split into two groups taking turns, each write waiting two round trips (16
    /// pgbench clients: 8 writes an entry). So a turn waits until as many writes are queued as
    /// the last turn proposed plus those queued when it ended, for at most the last turn's
    /// round trip (and [`MAX_GATHER_WAIT`]): never longer than the turn it might save. A steady
    /// lone writer never waits (it expects itself); writers that went away cost one wait, after
    /// which the next turn expects only those that came.
    fn gather(&self, turns: &Turns) -> Vec<QueuedWrite> {
        let cap = POSITIONS_PER_ENTRY as usize - 1;
        let mut queue = self.replication_queue.lock().unwrap_or_else(|e| e.into_inner());
        let want = turns.writers.min(cap);
        if queue.len() < want {
            let wait = turns.round_trip.min(MAX_GATHER_WAIT);
            queue = self
                .replication_arrived
                .wait_timeout_while(queue, wait, |q| q.len() < want)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let n = queue.len().min(cap);
        queue.drain(..n).collect()
    }

    /// Prepares, proposes and answers one batch of queued writes (under the proposing turn).
    fn propose_batch(&self, replicator: &dyn Replicator, batch: Vec<QueuedWrite>) {
        if let Err(e) = replicator.ready() {
            for w in batch {
                let _ = w.done.send(Err(replication_error(&e)));
            }
            return;
        }
        let mut state = {
            let log = self.lock();
            LogState {
                partitions: log.partitions.clone(),
                last_timestamp_ms: log.last_timestamp_ms,
                last_applied: log.last_applied,
            }
        };
        let now = self.clock.now_ms();
        let mut commands = Vec::with_capacity(batch.len());
        let mut prepared = Vec::with_capacity(batch.len());
        for QueuedWrite { commit, on_written, done } in batch {
            match prepare(&state, now, commit) {
                Ok((command, offsets)) => {
                    // The next write is prepared from the state this one leaves.
                    state.last_timestamp_ms = state.last_timestamp_ms.max(command.timestamp_ms);
                    for change in &command.partitions {
                        match change.after {
                            Some(after) => state.partitions.insert(change.id, after),
                            None => state.partitions.remove(&change.id),
                        };
                    }
                    prepared.push((done, on_written, Committed { timestamp_ms: command.timestamp_ms, offsets }));
                    commands.push(command);
                }
                // Refused alone (an unknown partition, ...): the others go on.
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        }
        if commands.is_empty() {
            return;
        }
        match replicator.replicate(Command::merge(commands)) {
            Ok(index) => {
                // Applied here: reported in the turn, so in log order and before any later
                // snapshot's position (those wait for the turn).
                for (i, (done, on_written, committed)) in prepared.into_iter().enumerate() {
                    if let Some(f) = on_written {
                        f(write_position(index, i as u64));
                    }
                    let _ = done.send(Ok(committed));
                }
            }
            Err(e) => {
                for (done, _, _) in prepared {
                    let _ = done.send(Err(replication_error(&e)));
                }
            }
        }
    }

    /// Decides everything `commit` leaves open (its messages' offsets, header and key, its
    /// timestamp, the partitions' new states and the range deletes of CLEAR, truncate and DROP)
    /// from the store's current state, and returns the result as a [`Command`] that any store
    /// in the same state applies to the same bytes. Writes and changes nothing: until the
    /// command is applied, the next `prepare` decides from the same state (the same offsets),
    /// so apply or drop each command before preparing the next.
    pub fn prepare(&self, commit: Commit) -> Result<Command> {
        let log = self.lock();
        Ok(prepare(&log, self.clock.now_ms(), commit)?.0)
    }

    /// Applies entry `id` of the replicated log: writes its command (or, for a membership entry,
    /// the membership's bytes, read back by [`Store::applied_membership`]) together with `id` in
    /// one write batch, then updates the partitions' states as [`Store::write`] does. Exactly once: an
    /// entry at or below the last applied index is skipped ([`Applied::Skipped`], nothing
    /// written), also after a restart ([`Store::last_applied`] is read back at open). A command
    /// whose partitions are no longer in the state it was prepared from is [`Applied::Stale`]:
    /// only `id` is written (every node decides alike, so they stay identical) and the proposer
    /// must prepare its commit again. Like [`Store::write`], what it writes is visible after
    /// [`Store::finish`] (or [`Store::durable`]) of the returned commit, which carries no offsets
    /// (they are in the command's messages).
    ///
    /// This is for an entry this node's writers did not propose in their current leadership:
    /// the hook of [`Store::on_foreign_entries`] is told its position. [`Store::apply_own`]
    /// applies the proposing writer's own entries.
    pub fn apply(&self, id: AppliedId, payload: Payload) -> Result<Applied> {
        self.apply_entry(id, payload, false)
    }

    /// [`Store::apply`] of an entry this node's writer proposed in its current leadership
    /// (its proposer reports the writes' positions itself, [`Commit::on_written`]).
    pub fn apply_own(&self, id: AppliedId, payload: Payload) -> Result<Applied> {
        self.apply_entry(id, payload, true)
    }

    /// Calls `hook` under the commit lock, in log order, with the position through each applied
    /// entry ([`entry_position`]) this node's writers did not propose in their current
    /// leadership: another leader's, this node's from an earlier leadership, the blank entry a
    /// new leader starts its term with. Live queries, whose changes only the proposing writers
    /// report, learn there that changes were made they never saw. Must be quick. Set once.
    pub fn on_foreign_entries(&self, hook: Arc<dyn Fn(u64) + Send + Sync>) {
        let _ = self.on_foreign.set(hook);
    }

    fn apply_entry(&self, id: AppliedId, payload: Payload, own: bool) -> Result<Applied> {
        self.check_wal_sync()?;
        let log = self.lock();
        if log.last_applied.is_some_and(|last| last.index >= id.index) {
            return Ok(Applied::Skipped);
        }
        let blank =
            || Command { timestamp_ms: log.last_timestamp_ms, partitions: Vec::new(), batch: WriteBatch::default() };
        let (command, stale) = match payload {
            Payload::Command(c) if c.partitions.iter().any(|p| log.partitions.get(&p.id).copied() != p.before) => {
                (blank(), true)
            }
            Payload::Command(c) => (c, false),
            Payload::Membership(bytes) => {
                let mut c = blank();
                c.batch.put(keys::applied_membership_key(), bytes);
                (c, false)
            }
            Payload::Blank => (blank(), false),
        };
        let on_foreign = match (own, self.on_foreign.get()) {
            (false, Some(hook)) => {
                let hook = Arc::clone(hook);
                Some(Box::new(move |position| hook(position)) as OnWritten)
            }
            _ => None,
        };
        let pending = self.apply_locked(log, Some(id), command, Vec::new(), on_foreign)?;
        Ok(if stale { Applied::Stale } else { Applied::Written(pending) })
    }

    /// The replicated-log entry applied last, if any.
    pub fn last_applied(&self) -> Option<AppliedId> {
        self.lock().last_applied
    }

    /// The bytes of the last applied membership entry, if any (the cluster's encoding).
    pub fn applied_membership(&self) -> Result<Option<Vec<u8>>> {
        self.get(&keys::applied_membership_key())
    }

    /// Everything the store holds, as of the last applied command: every key and value, read
    /// from one RocksDB snapshot taken under the commit lock (so no command is half in it), for
    /// a replica too far behind to catch up from the log ([`Store::import`] installs it). The
    /// result holds the whole store in memory.
    pub fn export(&self) -> Result<Export> {
        let log = self.lock();
        let snapshot = self.db.snapshot();
        let applied = log.last_applied;
        drop(log);
        let membership = snapshot.get(keys::applied_membership_key())?;
        let mut bytes = EXPORT_MAGIC.to_vec();
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        for item in snapshot.iterator_opt(IteratorMode::Start, opts) {
            let (k, v) = item?;
            for part in [&k, &v] {
                let len = u32::try_from(part.len())
                    .map_err(|_| StorageError::Corrupt { what: "a key or value over 4 GiB" })?;
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(part);
            }
        }
        Ok(Export { applied, membership, bytes })
    }

    /// Replaces everything the store holds by a checked export ([`Import::check`]) in one synced
    /// write batch (a crash leaves the old state or the new one), then reloads the partitions'
    /// states from it and wakes their readers. The caller reloads whatever it keeps in memory
    /// (catalog, users, groups). Tells the hook of [`Store::on_foreign_entries`] the position
    /// through the snapshot: its entries were applied without this node's writers.
    pub fn import(&self, import: Import) -> Result<()> {
        let mut log = self.lock();
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.db.write_opt(import.batch, &synced)?;
        let loaded = load_log_state(&self.db)?;
        log.partitions = loaded.partitions;
        log.last_timestamp_ms = log.last_timestamp_ms.max(loaded.last_timestamp_ms);
        log.last_applied = loaded.last_applied;
        let applied = loaded.last_applied.map_or(0, |id| entry_position(id.index));
        self.applied_position.store(applied, std::sync::atomic::Ordering::Release);
        let mut read = self.read_state();
        read.written_seq += 1;
        // The synced write made every earlier one durable: nothing is left to publish.
        read.unpublished.clear();
        read.partitions = log.partitions.clone();
        let ReadState { partitions, signals, .. } = &mut *read;
        signals.retain(|id, signal| match partitions.get(id) {
            Some(state) => {
                signal.send_replace(state.next_offset);
                true
            }
            // Dropping the sender wakes the waiters; they find the partition gone.
            None => false,
        });
        drop(read);
        // Entries nobody here reported came with the snapshot (still under the commit lock).
        if let Some(hook) = self.on_foreign.get() {
            hook(applied);
        }
        Ok(())
    }

    fn check_wal_sync(&self) -> Result<()> {
        if self.durability == Durability::Sync
            && let Some(reason) = self.wal_sync.lock().failed.clone()
        {
            return Err(StorageError::WalSync(reason));
        }
        Ok(())
    }

    /// The one apply path: writes the command's batch (with the log position, if any) and
    /// updates the commit path's and the readers' partition states to the command's.
    fn apply_locked(
        &self,
        mut log: MutexGuard<'_, LogState>,
        id: Option<AppliedId>,
        command: Command,
        offsets: Vec<u64>,
        on_written: Option<OnWritten>,
    ) -> Result<Pending> {
        let Command { timestamp_ms, partitions, mut batch } = command;
        if let Some(id) = id {
            batch.put(keys::applied_key(), id.encode());
        }
        // Never synced here: durability comes from `finish`, one fsync for every commit
        // written before it started.
        self.db.write_opt(batch, &WriteOptions::default())?;
        let position = on_written.is_some().then(|| match id {
            Some(id) => entry_position(id.index),
            None => self.db.latest_sequence_number(),
        });

        log.last_timestamp_ms = log.last_timestamp_ms.max(timestamp_ms);
        if let Some(id) = id {
            log.last_applied = Some(id);
            self.applied_position.store(entry_position(id.index), std::sync::atomic::Ordering::Release);
        }
        let mut read = self.read_state();
        read.written_seq += 1;
        let seq = read.written_seq;
        let mut appended = Vec::new();
        for PartitionChange { id, after, .. } in partitions {
            match after {
                Some(state) => {
                    // Readers see the new log start and size now, the new messages once visible.
                    let start = state.next_offset.min(state.log_start);
                    let seen = read.partitions.entry(id).or_insert(PartitionState { next_offset: start, ..state });
                    let visible = seen.next_offset.max(state.log_start);
                    *seen = PartitionState { next_offset: visible, ..state };
                    if state.next_offset > visible {
                        appended.push((id, state.next_offset));
                    }
                    log.partitions.insert(id, state);
                }
                None => {
                    log.partitions.remove(&id);
                    read.partitions.remove(&id);
                    // Dropping the sender wakes every waiter; they find the partition gone.
                    read.signals.remove(&id);
                    // Nor may a watermark of the dropped partition reach one created later.
                    for (_, watermarks) in &mut read.unpublished {
                        watermarks.retain(|(w, _)| *w != id);
                    }
                }
            }
        }
        match (on_written, position) {
            (Some(f), Some(position)) => {
                // After `written_seq` moved (whoever sees what `f` queued and then waits for
                // everything written waits for this commit too) and outside the readers' lock,
                // but still under the commit lock: in commit order.
                self.publish_written(&mut read, seq, appended);
                drop(read);
                f(position);
                drop(log);
            }
            _ => {
                drop(log);
                self.publish_written(&mut read, seq, appended);
            }
        }
        Ok(Pending { seq, committed: Committed { timestamp_ms, offsets }, started: None })
    }

    /// Moves the watermarks a written commit appended: at once with [`Durability::Process`],
    /// else with the fsync that covers it.
    fn publish_written(&self, read: &mut ReadState, seq: u64, appended: Vec<Watermark>) {
        match self.durability {
            Durability::Process => publish(read, &appended),
            Durability::Sync if !appended.is_empty() => read.unpublished.push_back((seq, appended)),
            Durability::Sync => {}
        }
    }

    /// Makes a written commit durable (with [`Durability::Sync`]: waits until the WAL-sync
    /// thread's fsync covers it) and visible to readers, waking the partitions' waiters. Blocks:
    /// call it off async workers, or use [`Store::durable`].
    pub fn finish(&self, pending: Pending) -> Result<Committed> {
        if self.durability == Durability::Sync {
            let mut st = self.wal_sync.request(pending.seq)?;
            while st.synced < pending.seq && st.failed.is_none() {
                st = self.wal_sync.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(reason) = &st.failed {
                return Err(StorageError::WalSync(reason.clone()));
            }
        }
        Ok(self.metrics.committed(pending))
    }

    /// Every commit written so far, as one pending commit: [`Store::durable`] or [`Store::finish`]
    /// of it returns once all of them are durable. For a call that writes nothing but must not
    /// return before what it found is durable (a repeated ACK).
    pub fn written(&self) -> Pending {
        let seq = self.read_state().written_seq;
        Pending { seq, committed: Committed { timestamp_ms: 0, offsets: Vec::new() }, started: None }
    }

    /// Asks for the fsync that makes a written commit durable without waiting for it, so that it
    /// runs while the caller releases its locks; [`Store::durable`] or [`Store::finish`] waits.
    pub fn start_sync(&self, pending: &Pending) {
        if self.durability == Durability::Sync {
            // A failed sync is reported by the wait.
            drop(self.wal_sync.request(pending.seq));
        }
    }

    /// [`Store::finish`] for async callers: waits without holding a thread. If the future is
    /// dropped, the commit still becomes durable and visible with the next fsync.
    pub async fn durable(&self, pending: Pending) -> Result<Committed> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.when_durable(pending, move |result| {
            let _ = tx.send(result);
        });
        rx.await.unwrap_or_else(|_| Err(StorageError::WalSync("the store was closed".to_owned())))
    }

    /// The short path of a lone writer: makes a written commit durable on the calling thread
    /// when no fsync is running (it runs the fsync itself, covering every commit written so
    /// far, instead of handing it to the WAL-sync thread and waiting to be woken). Returns
    /// the commit back when an fsync is already running: wait for it with [`Store::durable`]
    /// (this call has asked for the next one). Blocks for one fsync: call it where a short
    /// block is acceptable.
    pub fn sync_here(&self, pending: Pending) -> std::result::Result<Result<Committed>, Pending> {
        if self.durability == Durability::Process {
            return Ok(Ok(self.metrics.committed(pending)));
        }
        let mut st = match self.wal_sync.request_quietly(pending.seq) {
            Ok(st) => st,
            Err(e) => return Ok(Err(e)),
        };
        if st.synced >= pending.seq {
            drop(st);
            return Ok(Ok(self.metrics.committed(pending)));
        }
        if st.syncing {
            // The running fsync's end hands this request to the thread.
            return Err(pending);
        }
        st.syncing = true;
        drop(st);
        if sync_round(&self.db, &self.read, &self.wal_sync) {
            return Ok(Ok(self.metrics.committed(pending)));
        }
        let reason = self.wal_sync.lock().failed.clone().unwrap_or_default();
        Ok(Err(StorageError::WalSync(reason)))
    }

    /// Calls `on_durable` once the written commit is durable and visible (at once with
    /// [`Durability::Process`] or when it already is; else from the WAL-sync thread right after
    /// the fsync that covers it), or with the error if that fsync failed. `on_durable` must be
    /// quick (a wake-up): the WAL-sync thread calls the callbacks of one fsync in a row.
    pub fn when_durable(&self, pending: Pending, on_durable: impl FnOnce(Result<Committed>) + Send + 'static) {
        if self.durability == Durability::Sync {
            match self.wal_sync.request(pending.seq) {
                Err(e) => return on_durable(Err(e)),
                Ok(mut st) if st.synced < pending.seq => {
                    let (seq, metrics) = (pending.seq, self.metrics.clone());
                    st.waiters
                        .push((seq, Box::new(move |result| on_durable(result.map(|()| metrics.committed(pending))))));
                    return;
                }
                Ok(_) => {}
            }
        }
        on_durable(Ok(self.metrics.committed(pending)))
    }

    /// The state of one partition as readers see it (its `next_offset` is the durable, visible
    /// high watermark), or `None` if it does not exist.
    pub fn partition_state(&self, topic_id: u64, partition: u32) -> Option<PartitionState> {
        self.read_state().partitions.get(&(topic_id, partition)).copied()
    }

    /// Every partition's state as readers see it, read under one lock (for `/metrics`).
    pub fn partition_states(&self) -> HashMap<(u64, u32), PartitionState> {
        self.read_state().partitions.clone()
    }

    /// A receiver that changes after every commit that appends to the partition (its value is
    /// the new high watermark), and closes when the partition is dropped.
    pub fn subscribe(&self, topic_id: u64, partition: u32) -> Option<watch::Receiver<u64>> {
        let mut read = self.read_state();
        let next = read.partitions.get(&(topic_id, partition))?.next_offset;
        let sender = read.signals.entry((topic_id, partition)).or_insert_with(|| watch::channel(next).0);
        Some(sender.subscribe())
    }

    /// The store's commit and fsync histograms (registered by whoever exports metrics).
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// RocksDB's own figures that predict trouble, read now ([`crate::metrics::ROCKSDB_PROPERTIES`]
    /// names them): `(name, value)`, a property RocksDB does not answer left out.
    pub fn rocksdb_properties(&self) -> Vec<(&'static str, u64)> {
        crate::metrics::ROCKSDB_PROPERTIES
            .iter()
            .filter_map(|p| Some((p.property, self.db.property_int_value(p.property).ok()??)))
            .collect()
    }

    /// fsyncs the write-ahead log.
    pub fn sync_wal(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Flushes the memtable and waits until RocksDB has no compaction pending or running (for
    /// benchmarks that measure reads once a write burst has settled). Blocking.
    pub fn settle(&self) -> Result<()> {
        self.db.flush()?;
        loop {
            let pending = self.db.property_int_value("rocksdb.compaction-pending")?.unwrap_or(0);
            let running = self.db.property_int_value("rocksdb.num-running-compactions")?.unwrap_or(0);
            let flushes = self.db.property_int_value("rocksdb.num-running-flushes")?.unwrap_or(0);
            if pending == 0 && running == 0 && flushes == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The clock that stamps commits.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `(offset, commit timestamp, stored bytes)` of up to `limit` messages of a partition from
    /// offset `from` on, for retention: the bytes are what the partition's count holds for them.
    pub fn message_sizes(
        &self,
        topic_id: u64,
        partition: u32,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, i64, u64)>> {
        self.scan_messages(topic_id, partition, from, u64::MAX, limit, |offset, timestamp_ms, e| {
            Some((offset, timestamp_ms, e.size()))
        })
    }

    /// `map` of up to `limit` stored messages of a partition with offsets in `[from, until)`, in
    /// offset order, until `map` answers `None`: the one walk over message batches (a batch
    /// holding `from` is entered at it).
    fn scan_messages<T>(
        &self,
        topic_id: u64,
        partition: u32,
        from: u64,
        until: u64,
        limit: usize,
        mut map: impl FnMut(u64, i64, &Entry<'_>) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(limit.min(until.saturating_sub(from) as usize).min(4096));
        // No fixed readahead: a CONSUME of 1000 messages reads a few compressed blocks, and a
        // 256 KiB readahead buffer copied mostly unneeded bytes on every call (a fifth of its
        // time on a 3M-message topic). RocksDB's own readahead still grows on long scans.
        let mut it = partition_iterator(&self.db, topic_id, partition);
        it.seek(keys::message_key(topic_id, partition, from));
        while it.valid() && out.len() < limit {
            let (k, v) = it.item().expect("valid iterator has an item");
            let (first, timestamp_ms, mut reader) = decode_stored_batch(k, v)?;
            if first >= until {
                break;
            }
            // Only the messages returned are decoded: those before `from` are hopped over, and
            // the read stops at `until` or `limit` inside the batch.
            reader.skip(from.saturating_sub(first))?;
            let mut offset = first.max(from);
            while offset < until && out.len() < limit {
                let Some(e) = reader.next_entry()? else { break };
                let Some(item) = map(offset, timestamp_ms, &e) else { return Ok(out) };
                out.push(item);
                offset += 1;
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Flushes the memtable and compacts `[start, end)`, so that overwritten and deleted values
    /// of the range leave the files (and, with the flush, the write-ahead log). Blocking.
    pub fn purge_old_versions(&self, start: &[u8], end: &[u8]) -> Result<()> {
        self.db.flush()?;
        self.db.compact_range(Some(start), Some(end));
        Ok(())
    }

    /// Compacts the stored range of a partition's messages below `to` (after a truncate, CLEAR
    /// or DROP) so that the deleted keys and their range tombstones leave the files. Blocking.
    pub fn compact_messages(&self, topic_id: u64, partition: u32, to: Option<u64>) {
        let prefix = keys::partition_messages_prefix(topic_id, partition);
        let end = match to {
            Some(to) => keys::message_key(topic_id, partition, to).to_vec(),
            None => keys::prefix_end(&prefix),
        };
        self.db.compact_range(Some(prefix.as_slice()), Some(end.as_slice()));
    }

    /// How many receivers of commit signals exist now (long polls waiting, one per partition).
    pub fn waiters(&self) -> usize {
        self.read_state().signals.values().map(|s| s.receiver_count()).sum()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }

    /// The values of `keys`. Up to [`FEW_KEYS`] keys are read one by one: RocksDB's MultiGet
    /// skips the memtable's bloom filter while the memtable holds a range deletion (a dropped
    /// table or topic, a retention run), so an INSERT's key check, a key that mostly does not
    /// exist, searched the whole memtable (5-9% of a single-row INSERT's CPU over pgwire);
    /// Get keeps using the filter.
    /// The keys are read as of one moment (MultiGet's implicit snapshot; one snapshot for the
    /// Gets), so no commit is seen half-applied.
    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if let [key] = keys {
            return Ok(vec![self.get(key)?]);
        }
        if keys.len() <= FEW_KEYS {
            let snapshot = self.db.snapshot();
            return keys.iter().map(|k| snapshot.get(k).map_err(StorageError::from)).collect();
        }
        self.db.multi_get(keys).into_iter().map(|r| r.map_err(StorageError::from)).collect()
    }

    /// Every key-value pair in `[start, end)`, at most `limit`, read synchronously (for small
    /// ranges: catalog entries, group positions).
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(read_opts);
        it.seek(start);
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let (k, v) = it.item().expect("valid iterator has an item");
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The position of the last commit: alone, RocksDB's sequence number, which every commit
    /// moves up and which survives a restart (with [`Durability::Sync`], every acknowledged
    /// commit's); on a replica, the position through the last applied entry ([`entry_position`],
    /// the same on every node; 0 before the first).
    pub fn position(&self) -> u64 {
        match self.applied_position.load(std::sync::atomic::Ordering::Acquire) {
            0 if self.replicator.get().is_none() => self.db.latest_sequence_number(),
            applied => applied,
        }
    }

    /// Calls `f` with the position of the last commit, under the commit lock (and on a replica
    /// in the proposing turn): every commit whose [`Commit::on_written`] ran is at or before
    /// it, every later one after it.
    pub fn at_position<T>(&self, f: impl FnOnce(u64) -> T) -> T {
        let _turn = self.replicator.get().map(|_| self.turn.take());
        let _log = self.lock();
        f(self.position())
    }

    /// Reads `[start, end)` from one snapshot taken under the commit lock, where `at_snapshot`
    /// is called with the snapshot's position: every commit whose [`Commit::on_written`] ran
    /// before is in the snapshot, none after. Hands the pairs to `on_chunk` in chunks of
    /// `chunk` (stops when it returns false). Blocking: call it from a blocking thread.
    pub fn scan_at_position(
        &self,
        start: &[u8],
        end: &[u8],
        chunk: usize,
        at_snapshot: impl FnOnce(u64),
        on_chunk: impl FnMut(Vec<KeyValue>) -> bool,
    ) -> Result<()> {
        let snapshot = {
            let _turn = self.replicator.get().map(|_| self.turn.take());
            let _log = self.lock();
            let snapshot = self.db.snapshot();
            at_snapshot(self.position());
            snapshot
        };
        read_chunks(&snapshot, start, end, chunk, on_chunk)
    }

    /// Streams `[start, end)` from one consistent snapshot, in chunks of `chunk` pairs, from a
    /// blocking task. Dropping the receiver stops the scan.
    ///
    /// # Panics
    /// If called outside a tokio runtime.
    pub fn scan_chunks(&self, start: Vec<u8>, end: Vec<u8>, chunk: usize) -> mpsc::Receiver<Result<Vec<KeyValue>>> {
        let (tx, rx) = mpsc::channel(2);
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // A panic in the scan must reach the reader as an error, never as a short result.
            let panic_tx = tx.clone();
            let scan = std::panic::AssertUnwindSafe(move || scan_into(&db, start, end, chunk, &tx));
            if let Err(panic) = std::panic::catch_unwind(scan) {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_owned());
                let _ = panic_tx.blocking_send(Err(StorageError::ScanTask(what)));
            }
        });
        rx
    }
}

/// The body of [`Store::scan_chunks`].
fn scan_into(db: &DB, start: Vec<u8>, end: Vec<u8>, chunk: usize, tx: &mpsc::Sender<Result<Vec<KeyValue>>>) {
    let sent = read_chunks(&db.snapshot(), &start, &end, chunk, |rows| tx.blocking_send(Ok(rows)).is_ok());
    if let Err(e) = sent {
        let _ = tx.blocking_send(Err(e));
    }
}

/// Reads `[start, end)` of `snapshot` in chunks of `chunk` pairs, each handed to `on_chunk`
/// until it returns false.
fn read_chunks(
    snapshot: &rocksdb::Snapshot<'_>,
    start: &[u8],
    end: &[u8],
    chunk: usize,
    mut on_chunk: impl FnMut(Vec<KeyValue>) -> bool,
) -> Result<()> {
    let mut read_opts = ReadOptions::default();
    read_opts.set_iterate_upper_bound(end.to_vec());
    let mut it = snapshot.raw_iterator_opt(read_opts);
    it.seek(start);
    loop {
        let mut rows = Vec::with_capacity(chunk);
        while it.valid() && rows.len() < chunk {
            let (k, v) = it.item().expect("valid iterator has an item");
            rows.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        let done = rows.len() < chunk;
        if (!rows.is_empty() && !on_chunk(rows)) || done {
            return Ok(());
        }
    }
}

impl Store {
    /// Up to `limit` messages of one partition with offsets in `[from, until)` (offsets below the
    /// log start are skipped), never beyond the committed high watermark.
    pub fn read_messages(
        &self,
        topic_id: u64,
        partition: u32,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        self.read_messages_within(topic_id, partition, from, until, limit, u64::MAX)
    }

    /// [`Store::read_messages`], also stopping before the messages' sizes ([`message_size`],
    /// what a partition's byte count holds) pass `max_bytes`; the first message is read
    /// whatever its size, so that a large message can always be consumed.
    pub fn read_messages_within(
        &self,
        topic_id: u64,
        partition: u32,
        from: u64,
        until: u64,
        limit: usize,
        max_bytes: u64,
    ) -> Result<Vec<Message>> {
        let Some(state) = self.partition_state(topic_id, partition) else {
            return Err(StorageError::UnknownPartition { topic_id, partition });
        };
        let from = from.max(state.log_start);
        let until = until.min(state.next_offset);
        if from >= until || limit == 0 {
            return Ok(Vec::new());
        }
        let mut bytes = 0u64;
        self.scan_messages(topic_id, partition, from, until, limit, |offset, timestamp_ms, e| {
            let first = bytes == 0;
            bytes = bytes.saturating_add(e.size());
            (first || bytes <= max_bytes).then(|| e.to_message(topic_id, partition, offset, timestamp_ms))
        })
    }

    /// The first offset whose commit time is at or after `timestamp_ms` (the high watermark if
    /// none is). Commit times never decrease within a partition, so this is a binary search.
    pub fn offset_for_timestamp(&self, topic_id: u64, partition: u32, timestamp_ms: i64) -> Result<u64> {
        let Some(state) = self.partition_state(topic_id, partition) else {
            return Err(StorageError::UnknownPartition { topic_id, partition });
        };
        let (mut lo, mut hi) = (state.log_start, state.next_offset);
        let mut it = partition_iterator(&self.db, topic_id, partition);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            it.seek(keys::message_key(topic_id, partition, mid));
            let ts = match it.value() {
                Some(v) => decode_batch_header(v)?.0,
                // Deleted by a concurrent clear: treat as older than anything.
                None => i64::MIN,
            };
            it.status()?;
            if ts < timestamp_ms { lo = mid + 1 } else { hi = mid }
        }
        Ok(lo)
    }
}

/// An iterator over one partition's message batches. Batches are keyed by their last offset,
/// so `seek(message_key(.., offset))` lands on the batch holding `offset` (batches of a
/// partition are contiguous), or on the first one after it.
fn partition_iterator(db: &DB, topic_id: u64, partition: u32) -> DBRawIterator<'_> {
    let prefix = keys::partition_messages_prefix(topic_id, partition);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
    db.raw_iterator_opt(opts)
}

/// A stored batch as `(first offset, commit time, a reader of its messages)`, from its key (the
/// last offset) and value.
fn decode_stored_batch<'v>(key: &[u8], value: &'v [u8]) -> Result<(u64, i64, BatchReader<'v>)> {
    let (_, _, last) = keys::decode_message_key(key)?;
    // `BatchReader::new` refuses empty batches.
    let (timestamp_ms, count, reader) = BatchReader::new(value)?;
    let first = last
        .checked_sub(u64::from(count) - 1)
        .ok_or(StorageError::Corrupt { what: "message batch: more messages than offsets" })?;
    Ok((first, timestamp_ms, reader))
}

/// Moves messages stored one per key before message batches (`0x03` keys) into batches of one,
/// in chunks that each commit the new keys and the deletion of the old ones together (a crash
/// between chunks leaves the rest for the next open). Offsets, timestamps and sizes are kept.
fn migrate_legacy_messages(db: &DB) -> Result<()> {
    const CHUNK: usize = 10_000;
    let prefix = [keys::LEGACY_MESSAGE_PREFIX];
    loop {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut it = db.raw_iterator_opt(opts);
        it.seek(prefix);
        let mut batch = WriteBatch::default();
        let mut last = None;
        for _ in 0..CHUNK {
            let Some((k, v)) = it.item() else { break };
            let (topic_id, partition, offset) = keys::decode_legacy_message_key(k)?;
            batch.put(keys::message_key(topic_id, partition, offset), batch_of_legacy_message(v)?);
            last = Some(k.to_vec());
            it.next();
        }
        it.status()?;
        let Some(mut end) = last else { return Ok(()) };
        // The first key after the chunk's last.
        end.push(0);
        batch.delete_range(prefix.as_slice(), end.as_slice());
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)?;
    }
}

/// Moves the visible watermarks up (never down) and wakes the partitions' waiters.
/// The commit path's state as stored: each partition's state, the newest commit timestamp (of
/// each partition's last message batch) and the last applied log entry.
fn load_log_state(db: &DB) -> Result<LogState> {
    let mut partitions = HashMap::new();
    let mut last_timestamp_ms = 0;
    let prefix = keys::partition_state_prefix();
    for item in db.iterator(IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        let id = keys::decode_partition_state_key(&k)?;
        let state = PartitionState::decode(&v)?;
        if state.next_offset > state.log_start {
            let mut it = partition_iterator(db, id.0, id.1);
            it.seek(keys::message_key(id.0, id.1, state.next_offset - 1));
            if let Some(v) = it.value() {
                last_timestamp_ms = last_timestamp_ms.max(decode_batch_header(v)?.0);
            }
            it.status()?;
        }
        partitions.insert(id, state);
    }
    let last_applied = db.get(keys::applied_key())?.map(|v| AppliedId::decode(&v)).transpose()?;
    Ok(LogState { partitions, last_timestamp_ms, last_applied })
}

fn publish(read: &mut ReadState, appended: &[Watermark]) {
    for &(id, next) in appended {
        let Some(seen) = read.partitions.get_mut(&id) else { continue };
        if next > seen.next_offset {
            seen.next_offset = next;
            if let Some(signal) = read.signals.get(&id) {
                signal.send_replace(next);
            }
        }
    }
}

/// [`Store::prepare`] under the commit lock, at time `now`; also returns the offset of each
/// message, in the order of [`Commit::messages`].
fn prepare(log: &LogState, now: i64, commit: Commit) -> Result<(Command, Vec<u64>)> {
    let Commit { mut batch, messages, partition_ops, on_written: _ } = commit;
    let timestamp_ms = now.max(log.last_timestamp_ms);
    // Partition states this commit changes; `None` means dropped.
    let mut touched: HashMap<(u64, u32), Option<PartitionState>> = HashMap::new();
    for op in partition_ops {
        match op {
            PartitionOp::Create { topic_id, partition } => {
                let id = (topic_id, partition);
                let exists = match touched.get(&id) {
                    Some(s) => s.is_some(),
                    None => log.partitions.contains_key(&id),
                };
                if exists {
                    return Err(StorageError::PartitionExists { topic_id, partition });
                }
                touched.insert(id, Some(PartitionState::default()));
            }
            PartitionOp::Clear { topic_id, partition } => {
                let state = current(log, &mut touched, topic_id, partition)?;
                state.log_start = state.next_offset;
                state.bytes = 0;
                let prefix = keys::partition_messages_prefix(topic_id, partition);
                batch.delete_range(&prefix, &keys::prefix_end(&prefix));
            }
            PartitionOp::Truncate { topic_id, partition, from, to, bytes } => {
                let state = current(log, &mut touched, topic_id, partition)?;
                if state.log_start != from || to <= from || to > state.next_offset || bytes > state.bytes {
                    continue;
                }
                state.log_start = to;
                state.bytes -= bytes;
                // Whole batches only (those whose last offset is below `to`): the one holding
                // `to` stays until the log start passes its end, and readers skip its messages
                // below the log start.
                batch.delete_range(
                    keys::message_key(topic_id, partition, 0),
                    keys::message_key(topic_id, partition, to),
                );
            }
            PartitionOp::Drop { topic_id, partition } => {
                current(log, &mut touched, topic_id, partition)?;
                let prefix = keys::partition_messages_prefix(topic_id, partition);
                batch.delete_range(&prefix, &keys::prefix_end(&prefix));
                batch.delete(keys::partition_state_key(topic_id, partition));
                touched.insert((topic_id, partition), None);
            }
        }
    }
    // The commit's message batches, built by the caller, get their offsets (each partition's
    // batches are in offset order in `messages`), header and key.
    let mut firsts = Vec::with_capacity(messages.batches.len());
    for mut b in messages.batches {
        let state = current(log, &mut touched, b.topic_id, b.partition)?;
        let first = state.next_offset;
        state.next_offset += u64::from(b.count);
        state.bytes += b.bytes;
        finish_batch(&mut b.value, timestamp_ms, b.count);
        batch.put(keys::message_key(b.topic_id, b.partition, first + u64::from(b.count) - 1), b.value);
        firsts.push(first);
    }
    let offsets = messages
        .order
        .iter()
        .map(|&i| {
            let next = &mut firsts[i as usize];
            *next += 1;
            *next - 1
        })
        .collect();
    let mut partitions: Vec<_> = touched
        .into_iter()
        .map(|(id, after)| PartitionChange { id, before: log.partitions.get(&id).copied(), after })
        .collect();
    partitions.sort_unstable_by_key(|p| p.id);
    for p in &partitions {
        if let Some(state) = p.after {
            batch.put(keys::partition_state_key(p.id.0, p.id.1), state.encode());
        }
    }
    Ok((Command { timestamp_ms, partitions, batch }, offsets))
}

fn current<'a>(
    log: &LogState,
    touched: &'a mut HashMap<(u64, u32), Option<PartitionState>>,
    topic_id: u64,
    partition: u32,
) -> Result<&'a mut PartitionState> {
    touched
        .entry((topic_id, partition))
        .or_insert_with(|| log.partitions.get(&(topic_id, partition)).copied())
        .as_mut()
        .ok_or(StorageError::UnknownPartition { topic_id, partition })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ChangeOp, MAX_BATCH_BYTES, NewMessage};

    fn msg(topic_id: u64, partition: u32, payload: &str) -> NewMessage {
        NewMessage {
            topic_id,
            partition,
            op: ChangeOp::Insert,
            source_table: "s.t".into(),
            key: "{}".into(),
            payload: payload.into(),
        }
    }

    /// A commit clock the test sets, and the time it reads.
    fn settable_clock(start: i64) -> (Arc<std::sync::atomic::AtomicI64>, Clock) {
        let now = Arc::new(std::sync::atomic::AtomicI64::new(start));
        let read = Arc::clone(&now);
        (now, Clock::from_fn(move || read.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// A retention step of topic 1, partition 0.
    fn truncate(from: u64, to: u64, bytes: u64) -> Commit {
        Commit {
            partition_ops: vec![PartitionOp::Truncate { topic_id: 1, partition: 0, from, to, bytes }],
            ..Default::default()
        }
    }

    /// Every key and value of a store, in key order.
    fn everything(store: &Store) -> Vec<KeyValue> {
        store.scan(&[], &[0xff], usize::MAX).unwrap()
    }

    #[test]
    fn a_command_prepared_by_one_store_applies_to_the_same_bytes_on_another_exactly_once() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The follower's clock is far off: timestamps come from the command, not its clock.
        let (a_now, a_clock) = settable_clock(1_000);
        let a = Store::open_with_clock(a_dir.path(), Durability::Process, a_clock).unwrap();
        let b = Store::open_with_clock(b_dir.path(), Durability::Sync, settable_clock(5).1).unwrap();
        let ops = |ops: Vec<PartitionOp>| Commit { partition_ops: ops, ..Default::default() };
        let create = |p| PartitionOp::Create { topic_id: 1, partition: p };
        let mut rows =
            Commit { messages: vec![msg(1, 0, "a"), msg(1, 1, "b"), msg(1, 0, "c")].into(), ..Default::default() };
        rows.batch.put(b"\x02row-1", b"v1");
        rows.batch.delete(b"\x02row-0");
        let mut index = 0;
        let mut step = |commit: Commit| {
            a_now.fetch_add(7, std::sync::atomic::Ordering::SeqCst);
            let command = a.prepare(commit).unwrap();
            let bytes = command.encode();
            index += 1;
            let id = AppliedId { index, term: 2, node: 1 };
            let Applied::Written(pending) = a.apply(id, Payload::Command(command)).unwrap() else {
                panic!("not written")
            };
            a.finish(pending).unwrap();
            let Applied::Written(pending) = b.apply(id, Payload::Command(Command::decode(&bytes).unwrap())).unwrap()
            else {
                panic!("not written on the follower")
            };
            b.finish(pending).unwrap();
            id
        };
        step(ops(vec![create(0), create(1)]));
        step(rows);
        for i in 0..5 {
            step(Commit { messages: vec![msg(1, 0, &format!("m{i}"))].into(), ..Default::default() });
        }
        let freed: u64 = a.message_sizes(1, 0, 0, 3).unwrap().iter().map(|s| s.2).sum();
        step(ops(vec![PartitionOp::Truncate { topic_id: 1, partition: 0, from: 0, to: 3, bytes: freed }]));
        step(ops(vec![PartitionOp::Clear { topic_id: 1, partition: 1 }]));
        step(Commit { messages: vec![msg(1, 1, "after clear")].into(), ..Default::default() });
        step(ops(vec![PartitionOp::Drop { topic_id: 1, partition: 1 }, create(2)]));
        let last = step(Commit { messages: vec![msg(1, 2, "z")].into(), ..Default::default() });

        assert_eq!(everything(&a), everything(&b));
        for p in 0..3 {
            assert_eq!(a.partition_state(1, p), b.partition_state(1, p));
            let read = |s: &Store| s.read_messages(1, p, 0, u64::MAX, 100).unwrap_or_default();
            assert_eq!(read(&a), read(&b));
        }
        assert_eq!(b.partition_state(1, 0).map(|s| (s.log_start, s.next_offset)), Some((3, 7)));
        // Stamped by the leader's clock (1,000 and up), not the follower's (5).
        assert!(b.read_messages(1, 0, 0, u64::MAX, 100).unwrap().iter().all(|m| m.timestamp_ms > 1_000));
        assert_eq!(b.last_applied(), Some(last));

        // An entry applied again (a restart that replays the log from an older point) is
        // skipped: nothing written, before and after reopening.
        let before = everything(&b);
        let replay = || {
            let replayed = Commit { messages: vec![msg(1, 0, "again")].into(), ..Default::default() };
            Command::decode(&a.prepare(replayed).unwrap().encode()).unwrap()
        };
        assert!(matches!(
            b.apply(AppliedId { index: 2, term: 2, node: 1 }, Payload::Command(replay())).unwrap(),
            Applied::Skipped
        ));
        assert_eq!(everything(&b), before);
        drop(b);
        let b = Store::open(b_dir.path(), Durability::Process).unwrap();
        assert_eq!(b.last_applied(), Some(last));
        assert_eq!(everything(&b), before);
        assert!(matches!(b.apply(last, Payload::Command(replay())).unwrap(), Applied::Skipped));
        assert_eq!(everything(&b), before);
        // An entry without a command (a Raft blank or membership entry) moves only the position,
        // and the next command's offsets follow the applied state.
        let blank = AppliedId { index: last.index + 1, term: 3, node: 2 };
        assert!(matches!(b.apply(blank, Payload::Blank).unwrap(), Applied::Written(_)));
        assert_eq!(b.last_applied(), Some(blank));
        let without_position = |kvs: Vec<KeyValue>| -> Vec<KeyValue> {
            kvs.into_iter().filter(|(k, _)| k[..] != keys::applied_key()).collect()
        };
        assert_eq!(without_position(everything(&b)), without_position(before));
        let next = Commit { messages: vec![msg(1, 0, "next")].into(), ..Default::default() };
        assert_eq!(b.commit(next).unwrap().offsets, vec![7]);
    }

    /// A membership entry stores its bytes with its log id, in one batch: read back after a
    /// reopen, kept by later entries, replaced by the next membership entry, and skipped like any
    /// entry applied again.
    #[test]
    fn the_last_applied_membership_is_stored_with_its_log_id() {
        let dir = tempfile::tempdir().unwrap();
        let id = |index| AppliedId { index, term: 1, node: 1 };
        {
            let store = Store::open(dir.path(), Durability::Sync).unwrap();
            assert_eq!(store.applied_membership().unwrap(), None);
            assert!(matches!(
                store.apply(id(1), Payload::Membership(b"{1,2,3}".to_vec())).unwrap(),
                Applied::Written(_)
            ));
            assert!(matches!(store.apply(id(2), Payload::Blank).unwrap(), Applied::Written(_)));
            assert!(matches!(store.apply(id(1), Payload::Membership(b"{9}".to_vec())).unwrap(), Applied::Skipped));
            let Applied::Written(pending) = store.apply(id(3), Payload::Blank).unwrap() else { panic!() };
            store.finish(pending).unwrap();
        }
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        assert_eq!(store.applied_membership().unwrap().as_deref(), Some(&b"{1,2,3}"[..]));
        assert_eq!(store.last_applied(), Some(id(3)));
        assert!(matches!(store.apply(id(4), Payload::Membership(b"{1,2}".to_vec())).unwrap(), Applied::Written(_)));
        assert_eq!(store.applied_membership().unwrap().as_deref(), Some(&b"{1,2}"[..]));
    }

    /// A log of two stores in one process: each proposal is applied to the proposing store and a
    /// follower under the next index (slowly, so that writers pile up behind it).
    struct TwoStores {
        leader: std::sync::Weak<Store>,
        follower: Arc<Store>,
        proposals: std::sync::atomic::AtomicU64,
    }

    impl Replicator for TwoStores {
        fn ready(&self) -> Result<()> {
            Ok(())
        }

        fn replicate(&self, command: Command) -> Result<u64> {
            std::thread::sleep(std::time::Duration::from_millis(3));
            let index = self.proposals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let id = AppliedId { index, term: 1, node: 1 };
            let bytes = command.encode();
            let leader = self.leader.upgrade().expect("the leader store");
            for (own, store, command) in [(true, &leader, command), (false, &self.follower, Command::decode(&bytes)?)] {
                let applied = if own {
                    store.apply_own(id, Payload::Command(command))
                } else {
                    store.apply(id, Payload::Command(command))
                };
                match applied? {
                    Applied::Written(p) => drop(store.finish(p)?),
                    _ => return Err(StorageError::Replication("not applied".into())),
                }
            }
            Ok(index)
        }
    }

    /// Concurrent writers on a replica share proposals (fewer log entries than writes), each
    /// gets its own gap-free offsets as on a single node, a write refused while prepared (an
    /// unknown partition) fails alone, and the follower applying the merged commands holds
    /// the same bytes. Each write is reported (`on_written`) once, at its own position in its
    /// entry, in log order; the follower's foreign-entry hook is told each entry, the leader's
    /// never (its writers report their own).
    #[test]
    fn concurrent_replicated_writes_share_proposals_and_keep_offsets_gap_free() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = Arc::new(Store::open(a_dir.path(), Durability::Process).unwrap());
        let follower = Arc::new(Store::open(b_dir.path(), Durability::Process).unwrap());
        let log = Arc::new(TwoStores {
            leader: Arc::downgrade(&leader),
            follower: Arc::clone(&follower),
            proposals: Default::default(),
        });
        leader.replicate_through(Arc::clone(&log) as Arc<dyn Replicator>).unwrap();
        assert!(leader.replicate_through(Arc::clone(&log) as Arc<dyn Replicator>).is_err());
        let reported = Arc::new(Mutex::new(Vec::new()));
        let (foreign_here, foreign_there) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        for (store, seen) in [(&leader, &foreign_here), (&follower, &foreign_there)] {
            let seen = Arc::clone(seen);
            store.on_foreign_entries(Arc::new(move |p| seen.lock().unwrap().push(p)));
        }
        leader
            .commit(Commit {
                partition_ops: vec![PartitionOp::Create { topic_id: 1, partition: 0 }],
                ..Default::default()
            })
            .unwrap();
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (leader, reported) = (Arc::clone(&leader), Arc::clone(&reported));
                std::thread::spawn(move || {
                    let mut offsets = Vec::new();
                    for i in 0..20 {
                        let reported = Arc::clone(&reported);
                        let mut commit = Commit {
                            messages: vec![msg(1, 0, &format!("{w}-{i}")), msg(1, 0, "second")].into(),
                            on_written: Some(Box::new(move |p| reported.lock().unwrap().push(p))),
                            ..Default::default()
                        };
                        commit.batch.put(format!("\x02w{w}-{i}"), b"row");
                        offsets.extend(leader.commit(commit).unwrap().offsets);
                        if i == 10 {
                            let unknown = Commit { messages: vec![msg(1, 7, "nowhere")].into(), ..Default::default() };
                            assert!(matches!(leader.commit(unknown), Err(StorageError::UnknownPartition { .. })));
                        }
                    }
                    offsets
                })
            })
            .collect();
        let mut offsets: Vec<u64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..640).collect::<Vec<_>>());
        let proposals = log.proposals.load(std::sync::atomic::Ordering::SeqCst);
        assert!(proposals < 321, "{proposals} proposals for 321 writes");
        assert_eq!(leader.partition_state(1, 0).unwrap().next_offset, 640);
        assert_eq!(everything(&leader), everything(&follower));
        let read = leader.read_messages(1, 0, 0, u64::MAX, 1000).unwrap();
        assert_eq!(read.iter().map(|m| m.offset).collect::<Vec<_>>(), (0..640).collect::<Vec<_>>());
        // Reported in log order, each at its place in its entry (entry 1 created the partition).
        let reported = reported.lock().unwrap().clone();
        assert_eq!(reported.len(), 320);
        assert!(reported.windows(2).all(|w| w[0] < w[1]), "{reported:?}");
        assert!(reported.iter().all(|p| (2..=proposals).contains(&(p / POSITIONS_PER_ENTRY))), "{reported:?}");
        assert!(foreign_here.lock().unwrap().is_empty());
        let entries: Vec<u64> = (1..=proposals).map(entry_position).collect();
        assert_eq!(*foreign_there.lock().unwrap(), entries);
        assert_eq!((leader.position(), follower.position()), (entry_position(proposals), entry_position(proposals)));
    }

    /// A writer waiting for the proposing turn returns once a turn answered it, even when the
    /// next turn was taken before it woke: it never waits out a round trip its write is not in.
    /// (With the turn checked before the answer, it either took the next turn or waited for it.)
    #[test]
    fn a_writer_answered_by_a_turn_does_not_wait_for_the_next_turn() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let gate = Arc::new(TurnGate::default());
        let answered = Arc::new(AtomicBool::new(false));
        let first = gate.take();
        let (checked_tx, checked) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let (gate, answered) = (Arc::clone(&gate), Arc::clone(&answered));
            std::thread::spawn(move || {
                let answered_instead = gate
                    .take_unless(|| {
                        let _ = checked_tx.send(());
                        answered.load(SeqCst).then_some(())
                    })
                    .is_err();
                tx.send(answered_instead).unwrap();
            })
        };
        // Its first look (under the gate's lock) found nothing: it is waiting once this thread
        // gets the lock back to end the turn. The first turn answers it and ends; the next
        // turn starts at once.
        checked.recv().unwrap();
        answered.store(true, SeqCst);
        drop(first);
        let _next = gate.take();
        let answered_instead = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(answered_instead, Ok(true), "the answered writer returned while the next turn was held");
        waiter.join().unwrap();
    }

    /// A store that receives another's export holds exactly the other's keys and values (its own
    /// are gone), its partitions' states and last applied entry, across a reopen; its readers
    /// are woken (a dropped partition's waiters see it closed); its next commit continues the
    /// exported offsets; and a cut or tampered export, or one not at the entry it is said to be
    /// at, is refused with nothing changed.
    #[test]
    fn an_export_installed_on_another_store_replaces_everything_it_held() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Store::open(a_dir.path(), Durability::Process).unwrap();
        let b = Store::open(b_dir.path(), Durability::Sync).unwrap();
        let create = |topic_id, partition| Commit {
            partition_ops: vec![PartitionOp::Create { topic_id, partition }],
            ..Default::default()
        };
        let id = |index| AppliedId { index, term: 1, node: 1 };
        for (i, commit) in
            [create(1, 0), Commit { messages: vec![msg(1, 0, "x"), msg(1, 0, "y")].into(), ..Default::default() }]
                .into_iter()
                .enumerate()
        {
            let command = a.prepare(commit).unwrap();
            let Applied::Written(p) = a.apply(id(i as u64 + 1), Payload::Command(command)).unwrap() else { panic!() };
            a.finish(p).unwrap();
        }
        // b has a partition a lacks, with a waiter, a key of its own and a later-numbered topic.
        b.commit(create(2, 0)).unwrap();
        b.commit(create(1, 0)).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b"\x02only-on-b", b"1");
        b.commit(Commit { batch, ..Default::default() }).unwrap();
        let gone = b.subscribe(2, 0).unwrap();
        let mut moved = b.subscribe(1, 0).unwrap();

        let export = a.export().unwrap();
        assert_eq!(export.applied, Some(id(2)));
        for broken in [&export.bytes[..export.bytes.len() - 1], &export.bytes[1..], b"TFEXPORT1\0\0\0\x01\x0a\0\0\0\0"]
        {
            assert!(Import::check(broken, export.applied).is_err());
        }
        // Not at the entry it is said to be at.
        assert!(Import::check(&export.bytes, Some(id(3))).is_err());
        assert!(Import::check(&export.bytes, None).is_err());
        assert!(b.partition_state(2, 0).is_some());
        let told = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&told);
        b.on_foreign_entries(Arc::new(move |p| seen.lock().unwrap().push(p)));
        b.import(Import::check(&export.bytes, export.applied).unwrap()).unwrap();
        // The entries came without this node's writers: live queries are told (through entry 2).
        assert_eq!(*told.lock().unwrap(), [entry_position(2)]);
        assert_eq!(b.position(), entry_position(2));
        assert_eq!(everything(&b), everything(&a));
        assert_eq!(b.last_applied(), Some(id(2)));
        assert_eq!(b.partition_state(2, 0), None);
        assert_eq!(b.partition_state(1, 0), a.partition_state(1, 0));
        assert!(gone.has_changed().is_err(), "the dropped partition's waiters are told");
        assert!(moved.has_changed().unwrap());
        assert_eq!(*moved.borrow_and_update(), 2);
        assert_eq!(b.read_messages(1, 0, 0, u64::MAX, 10).unwrap(), a.read_messages(1, 0, 0, u64::MAX, 10).unwrap());
        drop(b);
        let b = Store::open(b_dir.path(), Durability::Sync).unwrap();
        assert_eq!(everything(&b), everything(&a));
        assert_eq!(b.last_applied(), Some(id(2)));
        let next = Commit { messages: vec![msg(1, 0, "z")].into(), ..Default::default() };
        assert_eq!(b.commit(next).unwrap().offsets, vec![2]);
    }

    /// A command prepared from a state the store has left (two prepares from one state, or a
    /// write between prepare and apply) would reuse offsets: it is refused as stale, with only
    /// its log position written, and the offsets stay gap-free and unique.
    #[test]
    fn a_command_prepared_from_an_older_state_is_stale_and_reuses_no_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        create_partition(&store);
        let commit = |payload: &str| Commit { messages: vec![msg(1, 0, payload)].into(), ..Default::default() };
        let first = store.prepare(commit("first")).unwrap();
        let second = store.prepare(commit("second")).unwrap();
        let id = |index| AppliedId { index, term: 1, node: 1 };
        assert!(matches!(store.apply(id(1), Payload::Command(first)).unwrap(), Applied::Written(_)));
        let before = everything(&store);
        assert!(matches!(store.apply(id(2), Payload::Command(second)).unwrap(), Applied::Stale));
        assert_eq!(store.last_applied(), Some(id(2)));
        let unchanged: Vec<_> = everything(&store).into_iter().filter(|(k, _)| k[..] != keys::applied_key()).collect();
        assert_eq!(unchanged, before.into_iter().filter(|(k, _)| k[..] != keys::applied_key()).collect::<Vec<_>>());
        // A write between a prepare and its apply makes it stale the same way.
        let third = store.prepare(commit("third")).unwrap();
        assert_eq!(store.commit(commit("written")).unwrap().offsets, vec![1]);
        assert!(matches!(store.apply(id(3), Payload::Command(third)).unwrap(), Applied::Stale));
        let payloads: Vec<_> =
            store.read_messages(1, 0, 0, u64::MAX, 10).unwrap().into_iter().map(|m| (m.offset, m.payload)).collect();
        assert_eq!(payloads, [(0, "first".to_owned()), (1, "written".to_owned())]);
        // Prepared again from the current state, it applies.
        let again = store.prepare(commit("third")).unwrap();
        assert!(matches!(store.apply(id(4), Payload::Command(again)).unwrap(), Applied::Written(_)));
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 3);
    }

    /// Every single-byte change of a command's batch is either refused when it is decoded or
    /// applies as a well-formed batch: RocksDB never meets a record it cannot parse (which would
    /// fail the write half-way and stop every later write), and the store keeps committing.
    #[test]
    fn a_mutated_command_is_refused_or_applies_and_the_store_keeps_committing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let mut c = Commit::default();
        c.batch.put(b"\x02key", b"value");
        c.batch.delete(b"\x02old");
        c.batch.delete_range(b"\x02a", b"\x02b");
        let command = store.prepare(c).unwrap();
        let batch_len = command.batch.data().len();
        let bytes = command.encode();
        let batch_start = bytes.len() - batch_len;
        let mut index = 0;
        for at in batch_start..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[at] ^= flip;
                if let Ok(command) = Command::decode(&mutated) {
                    index += 1;
                    let applied =
                        store.apply(AppliedId { index, term: 1, node: 1 }, Payload::Command(command)).unwrap();
                    assert!(matches!(applied, Applied::Written(_)), "byte {at} ^ {flip:#x}");
                }
            }
        }
        assert!(index > 0, "some mutations (of keys and values) stay well-formed");
        let mut ok = Commit::default();
        ok.batch.put(b"\x02after", b"v");
        store.commit(ok).unwrap();
        assert_eq!(store.get(b"\x02after").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn multi_get_sees_range_deletions_in_the_memtable_one_key_or_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let key = |i: u32| format!("k{i:04}").into_bytes();
        let mut c = Commit::default();
        (0..40).for_each(|i| c.batch.put(key(i), b"v"));
        store.commit(c).unwrap();
        // Keys 10..30 go by one range deletion, which stays in the memtable.
        let mut c = Commit::default();
        c.batch.delete_range(key(10), key(30));
        store.commit(c).unwrap();
        for count in [1, FEW_KEYS, FEW_KEYS + 1, 40] {
            let keys: Vec<Vec<u8>> = (0..count as u32).map(|i| key(i * 40 / count as u32)).collect();
            let got = store.multi_get(&keys).unwrap();
            for (k, v) in keys.iter().zip(got) {
                let i: u32 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
                assert_eq!(v.is_some(), !(10..30).contains(&i), "{count} keys: key {i}");
            }
        }
        assert_eq!(store.multi_get(&[key(10), key(99), key(9)]).unwrap(), [None, None, Some(b"v".to_vec())]);
    }

    #[test]
    fn offsets_are_gap_free_and_survive_clear_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Process).unwrap();
            create_partition(&store);
            let c = Commit { messages: vec![msg(1, 0, "a"), msg(1, 0, "b")].into(), ..Default::default() };
            assert_eq!(store.commit(c).unwrap().offsets, vec![0, 1]);
            let got = store.read_messages(1, 0, 0, u64::MAX, 10).unwrap();
            assert_eq!(got.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(), ["a", "b"]);
            let c =
                Commit { partition_ops: vec![PartitionOp::Clear { topic_id: 1, partition: 0 }], ..Default::default() };
            store.commit(c).unwrap();
            assert!(store.read_messages(1, 0, 0, u64::MAX, 10).unwrap().is_empty());
        }
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let state = store.partition_state(1, 0).unwrap();
        assert_eq!((state.next_offset, state.log_start, state.bytes), (2, 2, 0));
        let c = Commit { messages: vec![msg(1, 0, "c")].into(), ..Default::default() };
        assert_eq!(store.commit(c).unwrap().offsets, vec![2]);
        assert_eq!(store.read_messages(1, 0, 0, u64::MAX, 10).unwrap()[0].offset, 2);
    }

    #[test]
    fn truncate_moves_the_log_start_with_exact_bytes_and_never_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (now, clock) = settable_clock(1_000);
        {
            let store = Store::open_with_clock(dir.path(), Durability::Process, clock.clone()).unwrap();
            create_partition(&store);
            for i in 0..10 {
                now.store(1_000 + i * 100, std::sync::atomic::Ordering::SeqCst);
                let c = Commit { messages: vec![msg(1, 0, &"x".repeat(i as usize))].into(), ..Default::default() };
                store.commit(c).unwrap();
            }
            let sizes = store.message_sizes(1, 0, 0, 100).unwrap();
            assert_eq!(sizes.len(), 10);
            assert_eq!(sizes.iter().map(|s| s.2).sum::<u64>(), store.partition_state(1, 0).unwrap().bytes);
            assert_eq!(
                sizes.iter().map(|s| s.1).collect::<Vec<_>>(),
                (0..10).map(|i| 1_000 + i * 100).collect::<Vec<_>>()
            );
            let freed: u64 = sizes[..4].iter().map(|s| s.2).sum();
            store.commit(truncate(0, 4, freed)).unwrap();
            // A stale truncate (the log no longer starts at 0) changes nothing.
            store.commit(truncate(0, 6, 1)).unwrap();
            let state = store.partition_state(1, 0).unwrap();
            assert_eq!((state.log_start, state.next_offset), (4, 10));
            assert_eq!(state.bytes, sizes[4..].iter().map(|s| s.2).sum::<u64>());
            assert_eq!(store.read_messages(1, 0, 0, u64::MAX, 100).unwrap()[0].offset, 4);
            store.compact_messages(1, 0, Some(4));
        }
        let store = Store::open_with_clock(dir.path(), Durability::Process, clock).unwrap();
        let state = store.partition_state(1, 0).unwrap();
        assert_eq!((state.log_start, state.next_offset), (4, 10));
        assert_eq!(state.bytes, store.message_sizes(1, 0, 0, 100).unwrap().iter().map(|s| s.2).sum::<u64>());
        let c = Commit { messages: vec![msg(1, 0, "new")].into(), ..Default::default() };
        assert_eq!(store.commit(c).unwrap().offsets, vec![10]);
        // Truncating everything leaves the watermark: the next offset is still 11.
        let all: u64 = store.message_sizes(1, 0, 4, 100).unwrap().iter().map(|s| s.2).sum();
        store.commit(truncate(4, 11, all)).unwrap();
        let state = store.partition_state(1, 0).unwrap();
        assert_eq!((state.log_start, state.next_offset, state.bytes), (11, 11, 0));
    }

    fn payloads(messages: &[Message]) -> Vec<(u64, &str)> {
        messages.iter().map(|m| (m.offset, m.payload.as_str())).collect()
    }

    /// Creates partition 0 of topic 1.
    fn create_partition(store: &Store) {
        let c = Commit { partition_ops: vec![PartitionOp::Create { topic_id: 1, partition: 0 }], ..Default::default() };
        store.commit(c).unwrap();
    }

    /// The message to append that `m` was.
    fn new_message(m: &Message) -> NewMessage {
        NewMessage {
            topic_id: m.topic_id,
            partition: m.partition,
            op: m.op,
            source_table: m.source_table.as_str().into(),
            key: m.key.clone(),
            payload: m.payload.clone(),
        }
    }

    #[test]
    fn format_1_batches_written_before_are_read_with_the_format_2_ones_after_them() {
        use crate::message::{decode_batch_header, format_1_batch};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        create_partition(&store);
        // Three commits; the first two's batches are then rewritten in format 1, as an older
        // version stored them (same keys, same messages).
        let messages = |n: usize, from: usize| -> Vec<NewMessage> {
            (from..from + n)
                .map(|i| NewMessage {
                    key: format!("{{\"id\":{i}}}"),
                    op: ChangeOp::Update,
                    ..msg(1, 0, &"v".repeat(i % 300))
                })
                .collect()
        };
        for (n, from) in [(500, 0), (3, 500), (400, 503)] {
            store.commit(Commit { messages: messages(n, from).into(), ..Default::default() }).unwrap();
        }
        let written = store.read_messages(1, 0, 0, u64::MAX, usize::MAX).unwrap();
        let sizes = store.message_sizes(1, 0, 0, usize::MAX).unwrap();
        let bytes = store.partition_state(1, 0).unwrap().bytes;
        let prefix = keys::partition_messages_prefix(1, 0);
        let stored = store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).unwrap();
        let mut wb = WriteBatch::default();
        let mut rewritten = 0;
        for (k, v) in &stored {
            let (_, _, last) = keys::decode_message_key(k).unwrap();
            if last < 503 {
                let (ts, count) = decode_batch_header(v).unwrap();
                let first = (last + 1 - u64::from(count)) as usize;
                let old: Vec<NewMessage> = written[first..=last as usize].iter().map(new_message).collect();
                wb.put(k, format_1_batch(&old, ts));
                rewritten += 1;
            }
        }
        assert!(rewritten >= 3, "{rewritten} batches rewritten");
        store.db.write(wb).unwrap();
        drop(store);
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        assert_eq!(store.read_messages(1, 0, 0, u64::MAX, usize::MAX).unwrap(), written);
        assert_eq!(store.message_sizes(1, 0, 0, usize::MAX).unwrap(), sizes);
        assert_eq!(store.partition_state(1, 0).unwrap().bytes, bytes);
        // Reads starting inside a format-1 batch, across the change and inside a format-2 one.
        for from in [0, 7, 499, 500, 502, 503, 700] {
            assert_eq!(
                store.read_messages(1, 0, from, u64::MAX, 20).unwrap(),
                written[from as usize..][..20],
                "from {from}"
            );
        }
        let next = store.commit(Commit { messages: messages(1, 903).into(), ..Default::default() }).unwrap();
        assert_eq!(next.offsets, vec![903]);
    }

    fn batch_keys(store: &Store, topic_id: u64, partition: u32) -> Vec<u64> {
        let prefix = keys::partition_messages_prefix(topic_id, partition);
        let stored = store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).unwrap();
        stored.iter().map(|(k, _)| keys::decode_message_key(k).unwrap().2).collect()
    }

    #[test]
    fn a_commits_messages_to_a_partition_are_one_batch_read_and_truncated_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (now, clock) = settable_clock(100);
        {
            let store = Store::open_with_clock(dir.path(), Durability::Process, clock.clone()).unwrap();
            let mut c = Commit::default();
            for partition in [0, 1] {
                c.partition_ops.push(PartitionOp::Create { topic_id: 1, partition });
            }
            store.commit(c).unwrap();
            // Interleaved partitions: offsets follow the order within each partition.
            let c = Commit {
                messages: vec![msg(1, 0, "a"), msg(1, 1, "x"), msg(1, 0, "b"), msg(1, 0, "c"), msg(1, 1, "y")].into(),
                ..Default::default()
            };
            assert_eq!(store.commit(c).unwrap().offsets, vec![0, 0, 1, 2, 1]);
            now.store(200, std::sync::atomic::Ordering::SeqCst);
            let c = Commit { messages: vec![msg(1, 0, "d"), msg(1, 0, "e")].into(), ..Default::default() };
            assert_eq!(store.commit(c).unwrap().offsets, vec![3, 4]);
            // Keyed by their last offsets.
            assert_eq!(batch_keys(&store, 1, 0), [2, 4]);
            assert_eq!(batch_keys(&store, 1, 1), [1]);

            let read = |from, until, limit| store.read_messages(1, 0, from, until, limit).unwrap();
            assert_eq!(payloads(&read(1, u64::MAX, 10)), [(1, "b"), (2, "c"), (3, "d"), (4, "e")]);
            assert_eq!(payloads(&read(1, 4, 2)), [(1, "b"), (2, "c")]);
            assert_eq!(payloads(&read(2, u64::MAX, 2)), [(2, "c"), (3, "d")], "across batches");
            assert_eq!(payloads(&read(0, 1, 10)), [(0, "a")], "until inside a batch");
            assert!(read(5, u64::MAX, 10).is_empty());
            assert_eq!(payloads(&store.read_messages(1, 1, 1, u64::MAX, 10).unwrap()), [(1, "y")]);
            assert_eq!(read(3, u64::MAX, 1)[0].timestamp_ms, 200);
            for (t, offset) in [(50, 0), (100, 0), (101, 3), (200, 3), (201, 5)] {
                assert_eq!(store.offset_for_timestamp(1, 0, t).unwrap(), offset, "at {t}");
            }

            let sizes = store.message_sizes(1, 0, 0, 100).unwrap();
            assert_eq!(sizes.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
            assert_eq!(sizes.iter().map(|s| s.2).sum::<u64>(), store.partition_state(1, 0).unwrap().bytes);
            assert_eq!(store.message_sizes(1, 0, 2, 2).unwrap(), sizes[2..4]);

            // Into the first batch: its messages below the log start are no longer read, and the
            // batch stays until the log start passes its end.
            store.commit(truncate(0, 2, sizes[0].2 + sizes[1].2)).unwrap();
            assert_eq!(payloads(&read(0, u64::MAX, 10)), [(2, "c"), (3, "d"), (4, "e")]);
            assert_eq!(batch_keys(&store, 1, 0), [2, 4]);
            assert_eq!(store.offset_for_timestamp(1, 0, 50).unwrap(), 2);
            let state = store.partition_state(1, 0).unwrap();
            assert_eq!(state.bytes, store.message_sizes(1, 0, 2, 100).unwrap().iter().map(|s| s.2).sum::<u64>());
            // Into the second: the first goes.
            store.commit(truncate(2, 4, sizes[2].2 + sizes[3].2)).unwrap();
            assert_eq!(payloads(&read(0, u64::MAX, 10)), [(4, "e")]);
            assert_eq!(batch_keys(&store, 1, 0), [4]);
            assert_eq!(store.partition_state(1, 0).unwrap().bytes, sizes[4].2);
        }
        let store = Store::open_with_clock(dir.path(), Durability::Process, clock).unwrap();
        let state = store.partition_state(1, 0).unwrap();
        assert_eq!(
            (state.log_start, state.next_offset, state.bytes),
            (4, 5, store.message_sizes(1, 0, 4, 9).unwrap()[0].2)
        );
        assert_eq!(payloads(&store.read_messages(1, 0, 0, u64::MAX, 10).unwrap()), [(4, "e")]);
        let c = Commit { messages: vec![msg(1, 0, "f")].into(), ..Default::default() };
        assert_eq!(store.commit(c).unwrap().offsets, vec![5]);
        // Everything: the batch holding the watermark's predecessor goes too.
        let all: u64 = store.message_sizes(1, 0, 4, 100).unwrap().iter().map(|s| s.2).sum();
        store.commit(truncate(4, 6, all)).unwrap();
        assert!(batch_keys(&store, 1, 0).is_empty());
        assert_eq!(store.partition_state(1, 0).unwrap().bytes, 0);
    }

    #[test]
    fn a_large_commit_is_split_into_batches_of_about_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let mut c = Commit::default();
        for partition in [0, 1] {
            c.partition_ops.push(PartitionOp::Create { topic_id: 1, partition });
        }
        store.commit(c).unwrap();
        let payload = "x".repeat(100);
        let messages = (0..3000).map(|i| msg(1, i % 2, &format!("{i}{payload}"))).collect::<Vec<_>>();
        let offsets = store.commit(Commit { messages: messages.into(), ..Default::default() }).unwrap().offsets;
        assert_eq!(offsets, (0..3000u64).map(|i| i / 2).collect::<Vec<_>>());
        for p in [0, 1] {
            let lasts = batch_keys(&store, 1, p);
            assert!(lasts.len() >= 10, "{} batches", lasts.len());
            assert_eq!(lasts.last(), Some(&1499));
            let prefix = keys::partition_messages_prefix(1, p);
            for (k, v) in store.scan(&prefix, &keys::prefix_end(&prefix), usize::MAX).unwrap() {
                assert!(v.len() < MAX_BATCH_BYTES + 200, "{} bytes", v.len());
                let (first, _, _) = decode_stored_batch(&k, &v).unwrap();
                assert!(first == 0 || lasts.contains(&(first - 1)), "batches of partition {p} are contiguous");
            }
            let all = store.read_messages(1, p, 0, u64::MAX, usize::MAX).unwrap();
            assert_eq!(all.iter().map(|m| m.offset).collect::<Vec<_>>(), (0..1500).collect::<Vec<_>>());
            let some = store.read_messages(1, p, 537, u64::MAX, 10).unwrap();
            let expected: Vec<String> = (537..547).map(|o| format!("{}{payload}", o * 2 + u64::from(p))).collect();
            assert_eq!(some.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), expected);
        }
        let sizes: u64 = store.message_sizes(1, 0, 0, usize::MAX).unwrap().iter().map(|s| s.2).sum();
        assert_eq!(sizes, store.partition_state(1, 0).unwrap().bytes);
        // A batch key whose last offset is below its message count is corrupt: an error, not a
        // panic.
        let prefix = keys::partition_messages_prefix(1, 0);
        let (_, v) = store.scan(&prefix, &keys::prefix_end(&prefix), 1).unwrap().remove(0);
        assert!(matches!(decode_stored_batch(&keys::message_key(1, 0, 0), &v), Err(StorageError::Corrupt { .. })));
    }

    #[test]
    fn messages_stored_one_per_key_are_moved_into_batches_at_open() {
        use crate::message::{BATCH_HEADER_LEN, decode_batch, format_1_batch};
        let dir = tempfile::tempdir().unwrap();
        // More messages than one migration chunk, in two partitions.
        let n = 10_007u64;
        let (original, bytes) = {
            let store = Store::open(dir.path(), Durability::Process).unwrap();
            let mut c = Commit::default();
            for partition in [0, 1] {
                c.partition_ops.push(PartitionOp::Create { topic_id: 1, partition });
            }
            store.commit(c).unwrap();
            let messages = (0..n).map(|i| msg(1, (i % 7 == 0) as u32, &i.to_string())).collect::<Vec<_>>();
            store.commit(Commit { messages: messages.into(), ..Default::default() }).unwrap();
            let all = |p| store.read_messages(1, p, 0, u64::MAX, usize::MAX).unwrap();
            ([all(0), all(1)], [0, 1].map(|p| store.partition_state(1, p).unwrap().bytes))
        };
        // Rewrite the batches as the store kept messages before: one key each, `03 topic
        // partition offset` -> `timestamp_ms op source_table key payload`.
        {
            let db = DB::open_default(dir.path()).unwrap();
            let mut wb = WriteBatch::default();
            for m in original.iter().flatten() {
                let mut key = keys::message_key(m.topic_id, m.partition, m.offset);
                key[0] = keys::LEGACY_MESSAGE_PREFIX;
                let entry = format_1_batch(&[new_message(m)], 0);
                let legacy = [&m.timestamp_ms.to_be_bytes()[..], &entry[BATCH_HEADER_LEN..]].concat();
                wb.put(key, legacy);
            }
            let prefix = [keys::MESSAGE_PREFIX];
            wb.delete_range(prefix.as_slice(), keys::prefix_end(&prefix).as_slice());
            db.write(wb).unwrap();
        }
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        for p in [0u32, 1] {
            let read = store.read_messages(1, p, 0, u64::MAX, usize::MAX).unwrap();
            assert_eq!(read, original[p as usize], "partition {p}");
            assert_eq!(batch_keys(&store, 1, p).len(), read.len(), "batches of one");
            let state = store.partition_state(1, p).unwrap();
            let sizes: u64 = store.message_sizes(1, p, 0, usize::MAX).unwrap().iter().map(|s| s.2).sum();
            assert_eq!((state.bytes, sizes), (bytes[p as usize], bytes[p as usize]), "sizes kept");
        }
        let legacy = [keys::LEGACY_MESSAGE_PREFIX];
        assert!(store.scan(&legacy, &keys::prefix_end(&legacy), 1).unwrap().is_empty());
        let (_, entries) = {
            let prefix = keys::partition_messages_prefix(1, 0);
            let first = store.scan(&prefix, &keys::prefix_end(&prefix), 1).unwrap().remove(0);
            let v = first.1;
            let (ts, e) = decode_batch(&v).unwrap();
            (ts, e.len())
        };
        assert_eq!(entries, 1);
        let c = Commit { messages: vec![msg(1, 1, "next")].into(), ..Default::default() };
        assert_eq!(store.commit(c).unwrap().offsets, vec![original[1].len() as u64]);
    }

    #[test]
    fn a_message_for_an_unknown_partition_fails_the_whole_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        let mut c = Commit::default();
        c.batch.put(b"\x02row", b"v");
        c.messages.push(&msg(9, 0, "x"));
        assert!(matches!(store.commit(c), Err(StorageError::UnknownPartition { .. })));
        assert_eq!(store.get(b"\x02row").unwrap(), None);
    }

    #[test]
    fn offset_for_timestamp_finds_the_first_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        create_partition(&store);
        let mut times = Vec::new();
        for i in 0..5 {
            let c = Commit { messages: vec![msg(1, 0, &i.to_string())].into(), ..Default::default() };
            times.push(store.commit(c).unwrap().timestamp_ms);
        }
        assert_eq!(store.offset_for_timestamp(1, 0, i64::MIN).unwrap(), 0);
        assert_eq!(store.offset_for_timestamp(1, 0, times[4] + 1).unwrap(), 5);
        let t = times[2];
        let first = times.iter().position(|&x| x >= t).unwrap() as u64;
        assert_eq!(store.offset_for_timestamp(1, 0, t).unwrap(), first);
    }

    #[test]
    fn concurrent_commits_get_unique_gap_free_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Process).unwrap());
        create_partition(&store);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..100 {
                        let msgs = (0..(i % 3 + 1)).map(|_| msg(1, 0, &t.to_string())).collect::<Vec<_>>();
                        mine.extend(
                            store.commit(Commit { messages: msgs.into(), ..Default::default() }).unwrap().offsets,
                        );
                    }
                    mine
                })
            })
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..all.len() as u64).collect::<Vec<_>>());
        let stored = store.read_messages(1, 0, 0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(stored.iter().map(|m| m.offset).collect::<Vec<_>>(), all);
        assert!(stored.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    }

    #[test]
    fn a_synced_commit_is_invisible_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        create_partition(&store);
        let pending = store.write(Commit { messages: vec![msg(1, 0, "a")].into(), ..Default::default() }).unwrap();
        // Written, offset assigned, not yet durable: readers do not see it.
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 0);
        assert!(store.read_messages(1, 0, 0, u64::MAX, 10).unwrap().is_empty());
        // A second commit gets the next offset meanwhile.
        let second = store.write(Commit { messages: vec![msg(1, 0, "b")].into(), ..Default::default() }).unwrap();
        assert_eq!(store.finish(second).unwrap().offsets, vec![1]);
        // Its fsync covered the first one too: both are visible, in offset order.
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 2);
        assert_eq!(store.finish(pending).unwrap().offsets, vec![0]);
        let got = store.read_messages(1, 0, 0, u64::MAX, 10).unwrap();
        assert_eq!(got.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // `written` waits for every commit written before it, here one nobody finished.
        let third = store.write(Commit { messages: vec![msg(1, 0, "c")].into(), ..Default::default() }).unwrap();
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 2);
        assert!(store.finish(store.written()).unwrap().offsets.is_empty());
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 3);
        drop(third);
    }

    #[test]
    fn concurrent_synced_commits_share_fsyncs_and_stay_gap_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Sync).unwrap());
        create_partition(&store);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..25)
                        .flat_map(|_| {
                            let offsets = store
                                .commit(Commit { messages: vec![msg(1, 0, "x")].into(), ..Default::default() })
                                .unwrap()
                                .offsets;
                            // Whichever thread's fsync covered it, a finished commit is visible.
                            let o = offsets[0];
                            assert!(store.partition_state(1, 0).unwrap().next_offset > o);
                            assert_eq!(store.read_messages(1, 0, o, o + 1, 1).unwrap().len(), 1);
                            offsets
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn synced_commits_awaited_by_tasks_share_fsyncs_and_stay_gap_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Sync).unwrap());
        create_partition(&store);
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut offsets = Vec::new();
                    for i in 0..20 {
                        let writer = Arc::clone(&store);
                        let pending = tokio::task::spawn_blocking(move || {
                            let c =
                                Commit { messages: vec![msg(1, 0, &format!("{t}.{i}"))].into(), ..Default::default() };
                            let pending = writer.write(c).unwrap();
                            // Every other commit asks for its fsync before the wait.
                            if i % 2 == 0 {
                                writer.start_sync(&pending);
                            }
                            pending
                        })
                        .await
                        .unwrap();
                        let o = store.durable(pending).await.unwrap().offsets[0];
                        // Durable means visible, whichever fsync covered it.
                        assert!(store.partition_state(1, 0).unwrap().next_offset > o);
                        assert_eq!(store.read_messages(1, 0, o, o + 1, 1).unwrap()[0].payload, format!("{t}.{i}"));
                        offsets.push(o);
                    }
                    offsets
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            let offsets = t.await.unwrap();
            // One writer's commits get increasing offsets.
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            all.extend(offsets);
        }
        all.sort_unstable();
        assert_eq!(all, (0..320).collect::<Vec<_>>());
        // A cancelled wait does not cancel the commit: the next fsync makes it visible.
        let pending = store.write(Commit { messages: vec![msg(1, 0, "late")].into(), ..Default::default() }).unwrap();
        drop(store.durable(pending));
        store.commit(Commit { messages: vec![msg(1, 0, "after")].into(), ..Default::default() }).unwrap();
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 322);
    }

    #[test]
    fn when_durable_calls_back_once_per_commit_after_its_fsync_or_at_once_when_nothing_waits() {
        type Call = (std::thread::ThreadId, Result<Vec<u64>>);
        let callback = |tx: &std::sync::mpsc::Sender<Call>| {
            let tx = tx.clone();
            move |r: Result<Committed>| tx.send((std::thread::current().id(), r.map(|c| c.offsets))).unwrap()
        };
        let me = std::thread::current().id();
        for durability in [Durability::Sync, Durability::Process] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), durability).unwrap();
            create_partition(&store);
            let (tx, rx) = std::sync::mpsc::channel();
            for p in ["a", "b", "c"] {
                let pending =
                    store.write(Commit { messages: vec![msg(1, 0, p)].into(), ..Default::default() }).unwrap();
                // Asks for the fsync itself: no start_sync.
                store.when_durable(pending, callback(&tx));
            }
            let mut offsets = Vec::new();
            for _ in 0..3 {
                let (thread, r) = rx.recv().unwrap();
                // Synced: called by the WAL-sync thread; otherwise at once, by the caller.
                assert_eq!(thread == me, durability == Durability::Process);
                offsets.extend(r.unwrap());
            }
            offsets.sort_unstable();
            assert_eq!(offsets, [0, 1, 2]);
            // Durable means visible.
            assert_eq!(store.partition_state(1, 0).unwrap().next_offset, 3);
            // Nothing waits for a commit that is already durable.
            store.when_durable(store.written(), callback(&tx));
            assert_eq!(rx.recv().unwrap().0, me);
            drop(tx);
            drop(store);
            // Each commit was answered once.
            assert!(rx.recv().is_err());
        }
    }

    #[test]
    fn dropping_a_synced_store_stops_its_wal_sync_thread_and_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Sync).unwrap();
            create_partition(&store);
            store.commit(Commit { messages: vec![msg(1, 0, "a")].into(), ..Default::default() }).unwrap();
            let pending = store.write(Commit { messages: vec![msg(1, 0, "b")].into(), ..Default::default() }).unwrap();
            store.start_sync(&pending);
            // Dropped with a sync asked for: the thread finishes it, then ends (the drop joins it,
            // which is what lets RocksDB's lock go for the reopen below).
        }
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        let got = store.read_messages(1, 0, 0, u64::MAX, 10).unwrap();
        assert_eq!(got.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    /// Writers that fsync on their own thread (`sync_here`) and writers that wait for the WAL-sync
    /// thread, interleaved: every commit is acknowledged once, durable and visible in offset
    /// order, and the store still closes.
    #[test]
    fn writers_syncing_on_their_own_threads_and_through_the_wal_sync_thread_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Sync).unwrap());
        create_partition(&store);
        let (threads, per_thread) = (8u64, 150u64);
        let acknowledged: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let store = Arc::clone(&store);
                    scope.spawn(move || {
                        let mut offsets = Vec::new();
                        for i in 0..per_thread {
                            let commit =
                                Commit { messages: vec![msg(1, 0, &format!("{t}-{i}"))].into(), ..Default::default() };
                            let pending = store.write(commit).unwrap();
                            let committed = if (t + i) % 2 == 0 {
                                match store.sync_here(pending) {
                                    Ok(done) => done.unwrap(),
                                    Err(pending) => store.finish(pending).unwrap(),
                                }
                            } else {
                                store.finish(pending).unwrap()
                            };
                            // Acknowledged means visible to readers.
                            let offset = committed.offsets[0];
                            assert!(store.partition_state(1, 0).unwrap().next_offset > offset);
                            offsets.push(offset);
                        }
                        offsets
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = acknowledged.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..threads * per_thread).collect::<Vec<_>>(), "gap-free, each offset once");
        assert_eq!(store.read_messages(1, 0, 0, u64::MAX, 10_000).unwrap().len() as u64, threads * per_thread);
        let Ok(store) = Arc::try_unwrap(store) else { panic!("the only reference") };
        drop(store);
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, threads * per_thread);
    }

    #[test]
    fn messages_in_a_recycled_wal_are_recovered_without_its_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let payload = |i: u64| format!("{i:0>200}");
        let mut written = 0u64;
        {
            let store = Store::open(dir.path(), Durability::Sync).unwrap();
            create_partition(&store);
            let mut write = |n: u64| {
                for _ in 0..n.div_ceil(100) {
                    let messages: Vec<_> = (written..written + 100).map(|i| msg(1, 0, &payload(i))).collect();
                    store.commit(Commit { messages: messages.into(), ..Default::default() }).unwrap();
                    written += 100;
                }
            };
            // The first WAL gets about 450 KB; the flush frees it and RocksDB keeps it for reuse.
            write(2000);
            store.settle().unwrap();
            // The next flush switches to that file: what follows overwrites its start, and
            // records of its first use remain after the new ones.
            write(100);
            store.settle().unwrap();
            write(500);
        }
        // (Closing does not flush: the last 500 messages are recovered from the recycled WAL.)
        let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
        assert!(log.contains("reusing log"), "no WAL file was recycled");
        let store = Store::open(dir.path(), Durability::Sync).unwrap();
        let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
        assert!(log.contains("Recovering log #"), "the reopen replayed no WAL");
        assert_eq!(store.partition_state(1, 0).unwrap().next_offset, written);
        let got = store.read_messages(1, 0, 0, u64::MAX, 10_000).unwrap();
        assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), (0..written).collect::<Vec<_>>());
        assert!(got.iter().all(|m| m.payload == payload(m.offset)));
        // New commits continue the offsets.
        let c = Commit { messages: vec![msg(1, 0, "next")].into(), ..Default::default() };
        assert_eq!(store.commit(c).unwrap().offsets, vec![written]);
    }

    #[tokio::test]
    async fn subscribers_wake_on_commit_and_close_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Process).unwrap();
        create_partition(&store);
        let mut rx = store.subscribe(1, 0).unwrap();
        store.commit(Commit { messages: vec![msg(1, 0, "a")].into(), ..Default::default() }).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
        let c = Commit { partition_ops: vec![PartitionOp::Drop { topic_id: 1, partition: 0 }], ..Default::default() };
        store.commit(c).unwrap();
        assert!(rx.changed().await.is_err());
        assert!(store.subscribe(1, 0).is_none());
    }
}
