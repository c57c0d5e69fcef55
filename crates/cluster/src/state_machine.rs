//! The replicated state machine: openraft's [`RaftStateMachine`] over the store's one apply path
//! ([`Store::apply`]), and its snapshots.
//!
//! Applying an entry writes its command (or a membership, or nothing for a blank) together with
//! the entry's log id in one RocksDB write batch, so the store knows exactly which entries it
//! holds across a restart and an entry replayed by openraft is skipped. The store's own writes
//! need no fsync here: an entry is applied only once it is committed, i.e. fsynced in a majority's
//! Raft logs, and a store that lost its last writes in a power loss replays them from its log.
//! Two things must be on the store's disk before the log forgets them: a built snapshot (its
//! entries may be purged from the log next, so the WAL is fsynced first) and an installed one
//! (written in one synced batch, [`Store::import`]).
//!
//! A snapshot is everything the store holds at one applied entry ([`Store::export`]: one RocksDB
//! snapshot read under the commit lock — the same point-in-time view a RocksDB checkpoint gives,
//! without a memtable flush or files to clean up), kept as the data dir's `raft/snapshot` file:
//! `meta_len:u32 meta(JSON) export`. It is held in memory while built, sent or installed, which
//! bounds the data set a node can be rebuilt from to what fits in memory (streaming it from a
//! checkpoint's files is the follow-up for larger ones).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;
use topicfusion_storage::{Applied, AppliedId, Command, Payload, Store};

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
    applied: Arc<watch::Sender<Option<LogId<u64>>>>,
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
    /// The state machine over `store`, keeping its snapshot in `dir` (the Raft log's directory).
    pub fn new(store: Arc<Store>, dir: &Path) -> Self {
        let applied = Arc::new(watch::channel(store.last_applied().map(log_id)).0);
        Self { store, snapshot_path: dir.join("snapshot"), applied }
    }

    /// The store this state machine applies to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Changes to the last applied log id (after each applied batch of entries and each
    /// installed snapshot): to wait until this node has applied an entry.
    pub fn applied(&self) -> watch::Receiver<Option<LogId<u64>>> {
        self.applied.subscribe()
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

    /// Stores `data` as the current snapshot: a new file, fsynced, renamed over the old one.
    fn write_snapshot(path: &Path, meta: &SnapshotMeta<u64, NodeAddr>, data: &[u8]) -> std::io::Result<()> {
        let meta = serde_json::to_vec(meta).expect("snapshot metadata serializes");
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&(meta.len() as u32).to_be_bytes())?;
        file.write_all(&meta)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (store, path) = (Arc::clone(&self.store), self.snapshot_path.clone());
        let (meta, data) = blocking(move || {
            let export = store.export().map_err(|e| AnyError::new(&e))?;
            // openraft may purge the log up to this snapshot next: what it applied must be on
            // this store's disk first.
            store.sync_wal().map_err(|e| AnyError::new(&e))?;
            let last_log_id = export.applied.map(log_id);
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, store.clock().now_ms()),
                None => format!("empty-{}", store.clock().now_ms()),
            };
            let meta = SnapshotMeta { last_log_id, last_membership: membership(export.membership)?, snapshot_id };
            Self::write_snapshot(&path, &meta, &export.bytes).map_err(|e| AnyError::new(&e))?;
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
        let outcomes = tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                let id = entry.log_id;
                let fail = |e: &dyn std::error::Error| {
                    Box::new(StorageError::from(StorageIOError::apply(id, AnyError::error(e.to_string()))))
                };
                let payload = match entry.payload {
                    EntryPayload::Blank => Payload::Blank,
                    EntryPayload::Normal(bytes) => Payload::Command(Command::decode(&bytes).map_err(|e| fail(&e))?),
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(id), m);
                        Payload::Membership(serde_json::to_vec(&stored).map_err(|e| fail(&e))?)
                    }
                };
                outcomes.push(match store.apply(applied_id(&id), payload).map_err(|e| fail(&e))? {
                    Applied::Written(pending) => {
                        store.finish(pending).map_err(|e| fail(&e))?;
                        ApplyOutcome::Applied
                    }
                    // openraft applies each committed entry once; a restart may replay some.
                    Applied::Skipped => ApplyOutcome::Applied,
                    Applied::Stale => ApplyOutcome::Stale,
                });
            }
            Ok::<_, Box<StorageError<u64>>>(outcomes)
        })
        .await
        .map_err(|e| StorageIOError::apply(last, AnyError::error(format!("the apply task did not run: {e}"))))?
        .map_err(|e| *e)?;
        self.applied.send_replace(Some(last));
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
        let (store, path, meta) = (Arc::clone(&self.store), self.snapshot_path.clone(), meta.clone());
        let (signature, last_log_id) = (meta.signature(), meta.last_log_id);
        blocking(move || {
            let data = snapshot.into_inner();
            let applied = store.import(&data).map_err(|e| AnyError::new(&e))?;
            if applied.map(log_id) != meta.last_log_id {
                return Err(AnyError::error(format!(
                    "the snapshot's data is at log id {applied:?}, its metadata says {:?}",
                    meta.last_log_id
                )));
            }
            Self::write_snapshot(&path, &meta, &data).map_err(|e| AnyError::new(&e))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), e))?;
        self.applied.send_replace(last_log_id);
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
            let sm = StateMachine::new(store, &dir.path().join("raft"));
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for a log store and state machine: initial state,
    /// membership from log and state machine, applying, snapshots built, transferred and
    /// installed.
    #[test]
    fn the_log_store_and_state_machine_pass_openraft_s_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
