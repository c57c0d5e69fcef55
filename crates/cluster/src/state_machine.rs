//! The replicated state machine: openraft's [`RaftStateMachine`] over the store's one apply path
//! ([`Store::apply`]), and its snapshots.
//!
//! Applying an entry writes its command (or a membership, or nothing for a blank) together with
//! the entry's log id in one RocksDB write batch, so the store knows exactly which entries it
//! holds across a restart and an entry replayed by openraft is skipped. A command that does not
//! decode (which the leader checks before proposing) applies as nothing, on every node alike,
//! rather than stopping them all at every restart. The store's own writes need no fsync here: an
//! entry is applied only once it is committed, i.e. fsynced in a majority's Raft logs, and a store
//! that lost its last writes in a power loss applies them again from its log. So the log must
//! not forget an entry before the store holds it on disk: [`StateMachine::durable`] says up to
//! where it does (raised when the store's WAL is synced for a snapshot and when a snapshot is
//! installed), and the log purges no further (`LogStore::purge_only_durable`).
//!
//! A snapshot is everything the store holds at one applied entry ([`Store::export`]: one RocksDB
//! snapshot read under the commit lock — the same point-in-time view a RocksDB checkpoint gives,
//! without a memtable flush or files to clean up), kept as the node's `snapshot` file:
//! `meta_len:u32 meta(JSON) export`, replaced (fsynced, renamed) only by a newer one. A received
//! snapshot is checked, written to that file, then installed ([`Store::import`], one synced
//! batch); a node that stopped in between installs it from the file when it starts. It is held in
//! memory while built, sent or installed, which bounds the data set a node can be rebuilt from to
//! what fits in memory (streaming it from a checkpoint's files is the follow-up for larger ones).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;
use topicfusion_storage::{Applied, AppliedId, Command, Import, Payload, Store};

use crate::{ApplyOutcome, NodeAddr, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, NodeAddr>;
/// A snapshot's metadata and data, as its file holds them.
type StoredSnapshot = (SnapshotMeta<u64, NodeAddr>, Vec<u8>);

/// The state machine of one node: its store, and where its current snapshot is kept. Cheap to
/// clone (clones share both): the snapshot builder openraft asks for is a clone.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshot_path: PathBuf,
    /// The last log id of the snapshot file; held while the file is replaced (a build and an
    /// install may run at once).
    snapshot_file: Arc<std::sync::Mutex<Option<LogId<u64>>>>,
    durable: Arc<watch::Sender<u64>>,
    /// Told when the store changed under what this node keeps in memory.
    watcher: Arc<std::sync::OnceLock<ChangeWatch>>,
}

/// Who is told when the store changes under a node's in-memory state (its catalog, users,
/// cached groups): after entries another node (or this one in an earlier leadership) proposed
/// are applied, and after a snapshot is installed. A node's own entries of its current
/// leadership are not reported: its writer updated its memory itself.
#[derive(Clone)]
pub struct ChangeWatch {
    /// This node's id.
    pub node: u64,
    /// The term in which this node's store writes as leader (0: none): its own entries carry
    /// `(term, node)`. The proposer sets it once it may write, and clears it when a write fails.
    pub own_term: Arc<AtomicU64>,
    /// The first log index this node's writers may have proposed in `own_term`: set before it,
    /// past the entries already in the log then (a node restarted as leader of its old term
    /// keeps entries of that term that no writer of this process proposed).
    pub own_from: Arc<AtomicU64>,
    /// Called on the apply thread, with no store lock held: must not wait (the node's version
    /// asks its reload thread and returns).
    pub changed: Arc<dyn Fn() + Send + Sync>,
}

impl ChangeWatch {
    fn is_own(&self, id: &LogId<u64>) -> bool {
        id.leader_id.node_id == self.node
            && id.leader_id.term == self.own_term.load(Ordering::Acquire)
            && id.index >= self.own_from.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").field("store", &self.store).field("snapshot", &self.snapshot_path).finish()
    }
}

fn log_id(id: AppliedId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, id.node), id.index)
}

fn applied_id(id: &LogId<u64>) -> AppliedId {
    AppliedId { index: id.index, term: id.leader_id.term, node: id.leader_id.node_id }
}

fn membership(bytes: Option<Vec<u8>>) -> std::result::Result<Membership, AnyError> {
    match bytes {
        Some(b) => serde_json::from_slice(&b).map_err(|e| AnyError::new(&e)),
        None => Ok(Membership::default()),
    }
}

/// Runs `f` (RocksDB reads and writes, which block) on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, AnyError> + Send + 'static,
) -> std::result::Result<T, AnyError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AnyError::error(format!("a store task did not run: {e}")))?
}

impl StateMachine {
    /// The state machine over `store`, keeping its snapshot in `dir`. Blocking (at start-up):
    /// fsyncs what the store holds, and installs the snapshot file if the store is behind it (a
    /// node stopped between receiving a snapshot and installing it).
    pub fn open(store: Arc<Store>, dir: &Path) -> std::result::Result<Self, AnyError> {
        let snapshot_path = dir.join("snapshot");
        store.sync_wal().map_err(|e| AnyError::new(&e))?;
        let stored = Self::read_snapshot(&snapshot_path)?;
        if let Some((meta, data)) = &stored
            && meta.last_log_id > store.last_applied().map(log_id)
        {
            let import =
                Import::check(data, meta.last_log_id.as_ref().map(applied_id)).map_err(|e| AnyError::new(&e))?;
            store.import(import).map_err(|e| AnyError::new(&e))?;
        }
        let applied = store.last_applied().map_or(0, |id| id.index);
        Ok(Self {
            store,
            snapshot_path,
            snapshot_file: Arc::new(std::sync::Mutex::new(stored.and_then(|(meta, _)| meta.last_log_id))),
            durable: Arc::new(watch::channel(applied).0),
            watcher: Arc::default(),
        })
    }

    /// The store this state machine applies to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The index of the last entry the store holds on its disk: the log may purge up to it.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Sets who is told of changes to the store under this node's memory (once).
    pub fn watch_changes(&self, watch: ChangeWatch) {
        let _ = self.watcher.set(watch);
    }

    fn raise_durable(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            let raised = index > *d;
            *d = (*d).max(index);
            raised
        });
    }

    /// The current snapshot as stored, if any.
    fn read_snapshot(path: &Path) -> std::result::Result<Option<StoredSnapshot>, AnyError> {
        let mut bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AnyError::new(&e)),
        };
        let corrupt = || AnyError::error(format!("corrupt snapshot file {}", path.display()));
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(*len) as usize;
        let meta = rest.get(..len).ok_or_else(corrupt)?;
        let meta = serde_json::from_slice(meta).map_err(|e| AnyError::new(&e))?;
        bytes.drain(..4 + len);
        Ok(Some((meta, bytes)))
    }

    /// Makes `data` the snapshot file unless the file already holds one at least as new: a new
    /// file, fsynced, renamed over the old one.
    fn write_snapshot(&self, meta: &SnapshotMeta<u64, NodeAddr>, data: &[u8]) -> std::io::Result<()> {
        let mut current = self.snapshot_file.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_some() && *current >= meta.last_log_id {
            return Ok(());
        }
        let encoded = serde_json::to_vec(meta).expect("snapshot metadata serializes");
        let tmp = self.snapshot_path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&(encoded.len() as u32).to_be_bytes())?;
        file.write_all(&encoded)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        if let Some(dir) = self.snapshot_path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *current = meta.last_log_id;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let this = self.clone();
        let (meta, data) = blocking(move || {
            let store = &this.store;
            let export = store.export().map_err(|e| AnyError::new(&e))?;
            // openraft may purge the log up to this snapshot next: what it applied must be on
            // this store's disk first.
            store.sync_wal().map_err(|e| AnyError::new(&e))?;
            this.raise_durable(export.applied.map_or(0, |id| id.index));
            let last_log_id = export.applied.map(log_id);
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, store.clock().now_ms()),
                None => format!("empty-{}", store.clock().now_ms()),
            };
            let meta = SnapshotMeta { last_log_id, last_membership: membership(export.membership)?, snapshot_id };
            this.write_snapshot(&meta, &export.bytes).map_err(|e| AnyError::new(&e))?;
            Ok((meta, export.bytes))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership)> {
        let store = Arc::clone(&self.store);
        blocking(move || {
            // The membership is read after the position: a membership applied in between is at
            // most newer than the position, never older.
            let applied = store.last_applied().map(log_id);
            Ok((applied, membership(store.applied_membership().map_err(|e| AnyError::new(&e))?)?))
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else { return Ok(Vec::new()) };
        let store = Arc::clone(&self.store);
        let watcher = self.watcher.get().cloned();
        let outcomes = tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::with_capacity(entries.len());
            let mut changed = false;
            for entry in entries {
                let id = entry.log_id;
                let own = watcher.as_ref().is_some_and(|w| w.is_own(&id));
                changed |= matches!(entry.payload, EntryPayload::Normal(_)) && !own;
                let fail = |e: &dyn std::error::Error| {
                    Box::new(StorageError::from(StorageIOError::apply(id, AnyError::error(e.to_string()))))
                };
                let mut rejected = false;
                let payload = match entry.payload {
                    EntryPayload::Blank => Payload::Blank,
                    EntryPayload::Normal(bytes) => match Command::decode(&bytes) {
                        Ok(command) => Payload::Command(command),
                        Err(e) => {
                            tracing::error!("log entry {id} holds no valid command, applied as nothing: {e}");
                            rejected = true;
                            Payload::Blank
                        }
                    },
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(id), m);
                        Payload::Membership(serde_json::to_vec(&stored).map_err(|e| fail(&e))?)
                    }
                };
                // The proposing writer reports its own entry's changes to live queries; any
                // other entry's are reported as made elsewhere.
                let applied =
                    if own { store.apply_own(applied_id(&id), payload) } else { store.apply(applied_id(&id), payload) };
                outcomes.push(match applied.map_err(|e| fail(&e))? {
                    Applied::Written(pending) => {
                        store.finish(pending).map_err(|e| fail(&e))?;
                        if rejected { ApplyOutcome::Rejected } else { ApplyOutcome::Applied }
                    }
                    // openraft applies each committed entry once; a restart may replay some.
                    Applied::Skipped => ApplyOutcome::Applied,
                    Applied::Stale => ApplyOutcome::Stale,
                });
            }
            if changed && let Some(w) = watcher {
                (w.changed)();
            }
            Ok::<_, Box<StorageError<u64>>>(outcomes)
        })
        .await
        .map_err(|e| StorageIOError::apply(last, AnyError::error(format!("the apply task did not run: {e}"))))?
        .map_err(|e| *e)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let (this, meta) = (self.clone(), meta.clone());
        let signature = meta.signature();
        blocking(move || {
            let data = snapshot.into_inner();
            // Checked (nothing written if the data is not at the entry its metadata says), kept
            // as the snapshot file (a node stopped before the install below does it at start),
            // installed, and only then may the log forget what it covers.
            let import =
                Import::check(&data, meta.last_log_id.as_ref().map(applied_id)).map_err(|e| AnyError::new(&e))?;
            this.write_snapshot(&meta, &data).map_err(|e| AnyError::new(&e))?;
            this.store.import(import).map_err(|e| AnyError::new(&e))?;
            this.raise_durable(meta.last_log_id.map_or(0, |id| id.index));
            if let Some(w) = this.watcher.get() {
                (w.changed)();
            }
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let path = self.snapshot_path.clone();
        let stored =
            blocking(move || Self::read_snapshot(&path)).await.map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(stored.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::storage::RaftStateMachine;
    use openraft::testing::{StoreBuilder, Suite};
    use topicfusion_storage::Durability;

    use super::*;
    use crate::log_store::LogStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> std::result::Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("raft")).unwrap();
            let log = LogStore::open(&dir.path().join("raft")).unwrap();
            let store = Arc::new(Store::open(&dir.path().join("data"), Durability::Process).unwrap());
            let sm = StateMachine::open(store, &dir.path().join("raft")).unwrap();
            Ok((dir, log, sm))
        }
    }

    fn id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn open(dir: &Path) -> StateMachine {
        let store = Arc::new(Store::open(&dir.join("data"), Durability::Process).unwrap());
        StateMachine::open(store, dir).unwrap()
    }

    /// Every key and value of a store.
    fn everything(sm: &StateMachine) -> Vec<u8> {
        sm.store().export().unwrap().bytes
    }

    /// An entry that is no valid command applies as nothing on every node (its log id moves,
    /// nothing else), reported as rejected, instead of stopping the node at every restart.
    #[tokio::test]
    async fn an_entry_that_is_not_a_command_applies_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let create = topicfusion_storage::Commit {
            partition_ops: vec![topicfusion_storage::PartitionOp::Create { topic_id: 1, partition: 0 }],
            ..Default::default()
        };
        let command = sm.store().prepare(create).unwrap().encode();
        let entries = vec![
            openraft::Entry { log_id: id(1), payload: EntryPayload::Normal(command) },
            openraft::Entry { log_id: id(2), payload: EntryPayload::Normal(b"not a command".to_vec()) },
        ];
        assert_eq!(sm.apply(entries).await.unwrap(), vec![ApplyOutcome::Applied, ApplyOutcome::Rejected]);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(id(2)));
        assert!(sm.store().partition_state(1, 0).is_some());
    }

    /// A node stopped after it kept a received snapshot but before installing it installs it when
    /// it starts; a snapshot file older than the store is left alone; until then the log keeps
    /// what the store lacks (the durable index the log purges up to moves only with the store).
    #[tokio::test]
    async fn a_kept_snapshot_the_store_lacks_is_installed_at_start() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(a_dir.path());
        let mut commands = Vec::new();
        for i in 1..=3u32 {
            let create = topicfusion_storage::Commit {
                partition_ops: vec![topicfusion_storage::PartitionOp::Create { topic_id: 1, partition: i }],
                ..Default::default()
            };
            let command = a.store().prepare(create).unwrap().encode();
            commands.push(openraft::Entry { log_id: id(i as u64), payload: EntryPayload::Normal(command) });
            a.apply(vec![commands.last().unwrap().clone()]).await.unwrap();
        }
        assert_eq!(*a.durable().borrow(), 0, "applied entries are not fsynced in the store");
        let snapshot = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(id(3)));
        assert_eq!(*a.durable().borrow(), 3);

        // b kept a's snapshot file and stopped before installing it.
        std::fs::copy(a_dir.path().join("snapshot"), b_dir.path().join("snapshot")).unwrap();
        let mut b = open(b_dir.path());
        assert_eq!(b.applied_state().await.unwrap().0, Some(id(3)));
        assert_eq!(everything(&b), everything(&a));
        assert_eq!(*b.durable().borrow(), 3);
        let current = b.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(id(3)));

        // A store ahead of its snapshot file keeps its state.
        let c_dir = tempfile::tempdir().unwrap();
        let mut c = open(c_dir.path());
        c.apply(commands.clone()).await.unwrap();
        let create = topicfusion_storage::Commit {
            partition_ops: vec![topicfusion_storage::PartitionOp::Create { topic_id: 1, partition: 9 }],
            ..Default::default()
        };
        let command = c.store().prepare(create).unwrap().encode();
        c.apply(vec![openraft::Entry { log_id: id(4), payload: EntryPayload::Normal(command) }]).await.unwrap();
        let ahead = everything(&c);
        drop(c);
        std::fs::copy(a_dir.path().join("snapshot"), c_dir.path().join("snapshot")).unwrap();
        let c = open(c_dir.path());
        assert_eq!(everything(&c), ahead);
        assert_eq!(c.store().last_applied().map(super::log_id), Some(id(4)));
    }

    /// openraft's own conformance suite for a log store and state machine: initial state,
    /// membership from log and state machine, applying, snapshots built, transferred and
    /// installed.
    #[test]
    fn the_log_store_and_state_machine_pass_openraft_s_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
