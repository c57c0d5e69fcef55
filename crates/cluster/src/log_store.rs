//! The Raft log on disk: openraft's [`RaftLogStorage`] over a RocksDB instance of its own (the
//! node's `raft/log`), apart from the tables and topics, so that purging the log never
//! competes with their compactions and a snapshot of the state machine never copies the log.
//!
//! Every append, truncate, purge and vote is written with `sync = true`: a node acknowledges an
//! entry to the leader only once the entry is on its disk, so "held by a majority" means held on
//! a majority's disks, and a vote survives a power loss (a node that forgot its vote could vote
//! twice in one term). The writes run on tokio's blocking threads, so an fsync never holds one
//! of the runtime's workers (and with it heartbeats and election timers). One fsync per
//! `append` call: a follower gets a leader's entries in batches, but openraft 0.9's leader
//! appends each client write on its own, so proposals must be batched into entries by the
//! caller (as the single-node commit threads gather statements) to share fsyncs.
//!
//! Keys (one byte names the kind; integers big-endian):
//! | key | value |
//! | --- | --- |
//! | `01 index:u64` | an entry: `01 term:u64 node:u64 kind:u8` then nothing (kind 0, blank), the command's bytes (1, normal) or the membership as JSON (2) |
//! | `02` | the vote, as JSON |
//! | `03` | the last purged log id, as JSON |
//! | `04` | the last committed log id known, as JSON |

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::TypeConfig;

type Result<T> = std::result::Result<T, StorageError<u64>>;

const ENTRY: u8 = 0x01;
const VOTE: [u8; 1] = [0x02];
const PURGED: [u8; 1] = [0x03];
const COMMITTED: [u8; 1] = [0x04];
/// The first key after every entry.
const ENTRIES_END: [u8; 1] = [ENTRY + 1];
const ENTRY_VERSION: u8 = 1;

/// The Raft log of one node. Cheap to clone (clones share the instance): the log reader
/// openraft asks for is a clone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// The last entry the state machine holds on its disk, if purges wait for it.
    durable: Option<watch::Receiver<u64>>,
    /// Serializes purges (a deferred one may run beside a later one).
    purging: Arc<tokio::sync::Mutex<()>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("path", &self.db.path()).finish()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `path`.
    pub fn open(path: &Path) -> std::result::Result<Self, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // A log is appended at the end and deleted from the front: no compression of entries
        // that are read back soon (by followers catching up) and deleted soon after.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        Ok(Self { db: Arc::new(DB::open(&opts, path)?), durable: None, purging: Arc::default() })
    }

    /// Purges only entries the state machine holds on its disk (`durable`: the last such index):
    /// a purge beyond it is carried out once `durable` reaches it. openraft purges a follower's
    /// log up to a snapshot as soon as it has queued the snapshot's install; a crash before the
    /// install would leave a store behind a log that no longer holds what it lacks.
    pub fn purge_only_durable(mut self, durable: watch::Receiver<u64>) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Deletes the entries up to `log_id` and records it as the last purged one, unless a later
    /// purge got there first (the record never moves back).
    async fn purge_now(&self, log_id: LogId<u64>) -> std::result::Result<(), AnyError> {
        let _one_at_a_time = self.purging.lock().await;
        let purged: Option<LogId<u64>> = self.read_json(&PURGED)?;
        if purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put(PURGED, json(&log_id));
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range(entry_key(0), entry_key(end)),
            None => batch.delete_range(&entry_key(0)[..], &ENTRIES_END[..]),
        }
        self.write_synced(batch).await
    }

    /// Writes and fsyncs `batch` on a blocking thread.
    async fn write_synced(&self, batch: WriteBatch) -> std::result::Result<(), AnyError> {
        let db = Arc::clone(&self.db);
        let written = tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.write_opt(batch, &opts)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AnyError::new(&e)),
            Err(e) => Err(AnyError::error(format!("the Raft log write did not run: {e}"))),
        }
    }

    fn read_json<T: DeserializeOwned>(&self, key: &[u8]) -> std::result::Result<Option<T>, AnyError> {
        match self.db.get(key).map_err(|e| AnyError::new(&e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| AnyError::new(&e)),
        }
    }

    fn last_entry_id(&self) -> std::result::Result<Option<LogId<u64>>, AnyError> {
        // From the greatest possible entry key down (not from `ENTRIES_END`: that is the vote's
        // key, which a reverse seek would land on).
        let mut it = self.db.iterator(IteratorMode::From(&entry_key(u64::MAX), Direction::Reverse));
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(AnyError::new(&e)),
            Some(Ok((k, v))) if k.first() == Some(&ENTRY) => Ok(Some(decode_entry(&k, &v)?.log_id)),
            Some(Ok(_)) => Ok(None),
        }
    }
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [ENTRY; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("log ids, votes and memberships serialize")
}

fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => out.push(0),
        EntryPayload::Normal(command) => {
            out.push(1);
            out.extend_from_slice(command);
        }
        EntryPayload::Membership(m) => {
            out.push(2);
            out.extend_from_slice(&json(m));
        }
    }
    out
}

fn decode_entry(key: &[u8], value: &[u8]) -> std::result::Result<Entry<TypeConfig>, AnyError> {
    let corrupt = || AnyError::error(format!("corrupt Raft log entry under key {key:02x?}"));
    let index = key.get(1..9).ok_or_else(corrupt)?;
    let index = u64::from_be_bytes(index.try_into().map_err(|_| corrupt())?);
    if value.len() < 18 || value[0] != ENTRY_VERSION {
        return Err(corrupt());
    }
    let word = |i: usize| u64::from_be_bytes(value[i..i + 8].try_into().expect("8 bytes"));
    let log_id = LogId::new(CommittedLeaderId::new(word(1), word(9)), index);
    let payload = match value[17] {
        0 if value.len() == 18 => EntryPayload::Blank,
        1 => EntryPayload::Normal(value[18..].to_vec()),
        2 => EntryPayload::Membership(serde_json::from_slice(&value[18..]).map_err(|e| AnyError::new(&e))?),
        _ => return Err(corrupt()),
    };
    Ok(Entry { log_id, payload })
}

/// An entry as the transport carries it: `index:u64` then its stored value.
pub(crate) fn entry_to_wire(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut out = entry_key(entry.log_id.index)[1..].to_vec();
    out.extend_from_slice(&encode_entry(entry));
    out
}

/// The entry [`entry_to_wire`] wrote.
pub(crate) fn entry_from_wire(bytes: &[u8]) -> std::result::Result<Entry<TypeConfig>, AnyError> {
    let index = bytes.get(..8).ok_or_else(|| AnyError::error("a truncated Raft entry"))?;
    decode_entry(&[&[ENTRY][..], index].concat(), &bytes[8..])
}

fn start_of(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let Some(start) = start_of(&range) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(&entry_key(start), Direction::Forward)) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            let Some(index) = k.get(1..9).filter(|_| k[0] == ENTRY && k.len() == 9) else { break };
            let index = u64::from_be_bytes(index.try_into().expect("8 bytes"));
            if !range.contains(&index) {
                break;
            }
            out.push(decode_entry(&k, &v).map_err(|e| StorageIOError::read_log_at_index(index, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.read_json(&PURGED).map_err(StorageIOError::read_logs)?;
        let last_log_id = self.last_entry_id().map_err(StorageIOError::read_logs)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(VOTE, json(vote));
        self.write_synced(batch).await.map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        Ok(self.read_json(&VOTE).map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        // Not synced: openraft reads it back only to apply sooner after a restart; losing it
        // costs waiting for the leader to say again what is committed.
        let result = match committed {
            Some(id) => self.db.put(COMMITTED, json(&id)),
            None => self.db.delete(COMMITTED),
        };
        result.map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self.read_json(&COMMITTED).map_err(StorageIOError::read)?)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put(entry_key(entry.log_id.index), encode_entry(&entry));
        }
        // The entries are on disk when this returns: the callback says so at once.
        let result = self.write_synced(batch).await;
        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
        result.map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range(&entry_key(log_id.index)[..], &ENTRIES_END[..]);
        self.write_synced(batch).await.map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        if let Some(durable) = &self.durable
            && *durable.borrow() < log_id.index
        {
            // The state machine does not hold these entries on its disk yet (a follower's
            // snapshot is purged for before it is installed): purge once it does.
            let (mut durable, log) = (durable.clone(), self.clone());
            tokio::spawn(async move {
                if durable.wait_for(|d| *d >= log_id.index).await.is_ok()
                    && let Err(e) = log.purge_now(log_id).await
                {
                    tracing::error!("purging the Raft log up to {log_id}: {e}");
                }
            });
            return Ok(());
        }
        self.purge_now(log_id).await.map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;
    use openraft::storage::RaftLogStorageExt;

    use super::*;
    use crate::NodeAddr;

    fn id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership<u64, NodeAddr> {
        let node = |i: u64| NodeAddr {
            raft: format!("127.0.0.1:{}", 7000 + i),
            http: format!("127.0.0.1:{}", 8000 + i),
            pg: format!("127.0.0.1:{}", 5400 + i),
        };
        let nodes: BTreeMap<u64, NodeAddr> = (1..=3).map(|i| (i, node(i))).collect();
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
    }

    /// Entries 0..=10 of term 1 (node 1), `entries()[i]` at index `i`: the membership that
    /// initializes a cluster (openraft writes it at index 0), a blank, then commands.
    fn entries() -> Vec<Entry<TypeConfig>> {
        (0..=10)
            .map(|i| {
                let payload = match i {
                    0 => EntryPayload::Membership(membership()),
                    1 => EntryPayload::Blank,
                    _ => EntryPayload::Normal(format!("command {i}").into_bytes()),
                };
                Entry { log_id: id(1, 1, i), payload }
            })
            .collect()
    }

    async fn all(store: &mut LogStore) -> Vec<Entry<TypeConfig>> {
        store.try_get_log_entries(..).await.unwrap()
    }

    #[tokio::test]
    async fn entries_votes_truncation_and_purges_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
            assert_eq!(store.read_vote().await.unwrap(), None);

            store.blocking_append(entries()).await.unwrap();
            assert_eq!(all(&mut store).await, entries());
            assert_eq!(store.try_get_log_entries(3..6).await.unwrap(), entries()[3..6].to_vec());
            assert_eq!(store.try_get_log_entries(9..).await.unwrap(), entries()[9..].to_vec());
            assert_eq!(store.try_get_log_entries(..=0).await.unwrap(), entries()[..1].to_vec());
            assert!(store.try_get_log_entries(11..20).await.unwrap().is_empty());
            assert!(store.try_get_log_entries((Bound::Included(6), Bound::Excluded(3))).await.unwrap().is_empty());
            assert!(store.try_get_log_entries((Bound::Excluded(u64::MAX), Bound::Unbounded)).await.unwrap().is_empty());
            assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(id(1, 1, 10)));
            // Saved before the truncate and purge, which must not reach them.
            store.save_vote(&Vote::new(2, 3)).await.unwrap();
            store.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
            store.save_committed(Some(id(1, 1, 6))).await.unwrap();

            // A new leader of term 2 overwrites the uncommitted tail from index 8 on.
            store.truncate(id(1, 1, 8)).await.unwrap();
            assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(id(1, 1, 7)));
            let tail = Entry { log_id: id(2, 3, 8), payload: EntryPayload::Normal(b"from node 3".to_vec()) };
            store.blocking_append([tail.clone()]).await.unwrap();

            store.purge(id(1, 1, 3)).await.unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(1, 1, 3)), Some(id(2, 3, 8))));
        let mut expected = entries()[4..8].to_vec();
        expected.push(Entry { log_id: id(2, 3, 8), payload: EntryPayload::Normal(b"from node 3".to_vec()) });
        assert_eq!(all(&mut store).await, expected);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(2, 3)));
        assert_eq!(store.read_committed().await.unwrap(), Some(id(1, 1, 6)));
        // The log reader sees what the store holds.
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(4..=4).await.unwrap(), entries()[4..5].to_vec());
    }

    #[tokio::test]
    async fn a_log_truncated_to_its_start_is_empty_and_entries_at_the_last_index_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries()).await.unwrap();
        store.truncate(id(1, 1, 0)).await.unwrap();
        assert!(all(&mut store).await.is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
        let last = Entry { log_id: id(9, 2, u64::MAX), payload: EntryPayload::Normal(b"last".to_vec()) };
        store.blocking_append([last.clone()]).await.unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(id(9, 2, u64::MAX)));
        assert_eq!(store.try_get_log_entries(u64::MAX..).await.unwrap(), vec![last]);
        store.save_vote(&Vote::new(9, 2)).await.unwrap();
        store.purge(id(9, 2, u64::MAX)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(9, 2, u64::MAX)), Some(id(9, 2, u64::MAX))));
        assert!(all(&mut store).await.is_empty());
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(9, 2)));
    }

    #[tokio::test]
    async fn a_log_purged_to_its_end_reports_the_purged_id_as_its_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries()).await.unwrap();
        store.purge(id(1, 1, 10)).await.unwrap();
        assert!(all(&mut store).await.is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(1, 1, 10)), Some(id(1, 1, 10))));
        store.blocking_append([Entry { log_id: id(1, 1, 11), payload: EntryPayload::Blank }]).await.unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(id(1, 1, 11)));
    }

    /// A purge beyond what the state machine holds on its disk waits for it (the entries stay
    /// readable and the record of the last purged id stays) and happens once it does; a purge
    /// that comes after a later one does not move the record back.
    #[tokio::test]
    async fn a_purge_waits_until_the_state_machine_holds_the_entries_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (durable, watched) = watch::channel(4);
        let mut store = LogStore::open(dir.path()).unwrap().purge_only_durable(watched);
        store.blocking_append(entries()).await.unwrap();
        store.purge(id(1, 1, 3)).await.unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(id(1, 1, 3)));
        store.purge(id(1, 1, 8)).await.unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(id(1, 1, 3)));
        assert_eq!(all(&mut store).await, entries()[4..].to_vec());
        durable.send_replace(8);
        for _ in 0..500 {
            if store.get_log_state().await.unwrap().last_purged_log_id == Some(id(1, 1, 8)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(id(1, 1, 8)));
        assert_eq!(all(&mut store).await, entries()[9..].to_vec());
        store.purge(id(1, 1, 5)).await.unwrap();
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(id(1, 1, 8)));
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_a_storage_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries()).await.unwrap();
        for bad in
            [&b""[..], &[9; 18], &[ENTRY_VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 7], b"\x01short"]
        {
            store.db.put(entry_key(5), bad).unwrap();
            assert!(store.try_get_log_entries(..).await.is_err());
        }
        let mut membership = encode_entry(&entries()[0]);
        membership.truncate(membership.len() - 1);
        store.db.put(entry_key(5), membership).unwrap();
        assert!(store.try_get_log_entries(5..6).await.is_err());
        store.db.put(entry_key(10), b"").unwrap();
        assert!(store.get_log_state().await.is_err());
    }
}
