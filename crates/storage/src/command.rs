//! A commit with every decision made: what [`crate::store::Store::apply`] writes, byte for byte,
//! on every node that applies it.
//!
//! [`crate::store::Store::prepare`] turns a caller's [`crate::store::Commit`] into a [`Command`]:
//! the message batches get their offsets, header and key, the commit its timestamp, and the
//! partition changes (create, CLEAR, truncate, DROP) their range deletes and new states. Nothing
//! in a command depends on the node that applies it — the caller's puts and deletes (rows,
//! catalog, group positions, row-id sequences) were decided before the commit was built — so a
//! command is what a replicated log carries (the leader prepares, every node applies; CockroachDB
//! calls this proposer-evaluated). The write batch travels as RocksDB's own serialization
//! ([`WriteBatch::data`]).
//!
//! Encoding (version 1, integers big-endian):
//! `01 timestamp_ms:i64 count:u32 (topic_id:u64 partition:u32 dropped:u8 [next_offset:u64
//! log_start:u64 bytes:u64])* batch`, the partitions sorted by id (the same command always
//! encodes to the same bytes).

use rocksdb::WriteBatch;

use crate::error::{Result, StorageError};
use crate::store::PartitionState;

const VERSION: u8 = 1;

/// A prepared commit. Encode it with [`Command::encode`] to ship it; apply it with
/// [`crate::store::Store::apply`].
pub struct Command {
    /// The commit timestamp stamped on its message batches.
    pub(crate) timestamp_ms: i64,
    /// The partitions the commit changes, sorted by id: the new state, or `None` if dropped.
    /// Absolute states, not increments: applying sets them.
    pub(crate) partitions: Vec<((u64, u32), Option<PartitionState>)>,
    /// Every key the commit writes or deletes, the partition states' keys included.
    pub(crate) batch: WriteBatch,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("timestamp_ms", &self.timestamp_ms)
            .field("partitions", &self.partitions)
            .field("writes", &self.batch.len())
            .finish()
    }
}

impl Command {
    /// The commit timestamp.
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// How many puts and deletes the command writes.
    pub fn writes(&self) -> usize {
        self.batch.len()
    }

    /// The command's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let data = self.batch.data();
        let mut out = Vec::with_capacity(13 + self.partitions.len() * 37 + data.len());
        out.push(VERSION);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_be_bytes());
        for &((topic_id, partition), state) in &self.partitions {
            out.extend_from_slice(&topic_id.to_be_bytes());
            out.extend_from_slice(&partition.to_be_bytes());
            match state {
                None => out.push(1),
                Some(s) => {
                    out.push(0);
                    out.extend_from_slice(&s.next_offset.to_be_bytes());
                    out.extend_from_slice(&s.log_start.to_be_bytes());
                    out.extend_from_slice(&s.bytes.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(data);
        out
    }

    /// Reads [`Command::encode`]'s bytes; anything else is [`StorageError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != VERSION {
            return Err(corrupt());
        }
        let timestamp_ms = i64::from_be_bytes(r.array()?);
        let count = u32::from_be_bytes(r.array()?) as usize;
        // Each partition takes at least 13 bytes: a count beyond that is corrupt, not a
        // reason to allocate.
        if count > r.0.len() / 13 {
            return Err(corrupt());
        }
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let id = (u64::from_be_bytes(r.array()?), u32::from_be_bytes(r.array()?));
            let state = match r.take(1)?[0] {
                1 => None,
                0 => Some(PartitionState {
                    next_offset: u64::from_be_bytes(r.array()?),
                    log_start: u64::from_be_bytes(r.array()?),
                    bytes: u64::from_be_bytes(r.array()?),
                }),
                _ => return Err(corrupt()),
            };
            partitions.push((id, state));
        }
        if !partitions.is_sorted_by(|a, b| a.0 < b.0) {
            return Err(corrupt());
        }
        // RocksDB's batch format: an 8-byte sequence number and a 4-byte count, then records.
        // `WriteBatch::from_data` takes any bytes; the header is checked here and the records
        // by RocksDB when the batch is written (a malformed one fails the write).
        if r.0.len() < 12 {
            return Err(corrupt());
        }
        Ok(Self { timestamp_ms, partitions, batch: WriteBatch::from_data(r.0) })
    }
}

fn corrupt() -> StorageError {
    StorageError::Corrupt { what: "replicated command" }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
}

/// The position of a command in a replicated log, stored with what it applied (in the same
/// write batch), so that a restart resumes applying after it and never applies one twice.
/// Raft's log id: the entry's index and the term and node of the leader that proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppliedId {
    pub index: u64,
    pub term: u64,
    pub node: u64,
}

impl AppliedId {
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.index.to_be_bytes());
        out[8..16].copy_from_slice(&self.term.to_be_bytes());
        out[16..].copy_from_slice(&self.node.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let b: &[u8; 24] = b.try_into().map_err(|_| StorageError::Corrupt { what: "applied log id" })?;
        let word = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self { index: word(0), term: word(8), node: word(16) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        let mut batch = WriteBatch::default();
        batch.put(b"k", b"v");
        batch.delete_range(b"a", b"b");
        Command {
            timestamp_ms: -5,
            partitions: vec![
                ((1, 0), Some(PartitionState { next_offset: 7, log_start: 2, bytes: 99 })),
                ((1, 1), None),
                ((2, 0), Some(PartitionState::default())),
            ],
            batch,
        }
    }

    #[test]
    fn a_command_round_trips_and_encodes_to_the_same_bytes() {
        let bytes = sample().encode();
        let back = Command::decode(&bytes).unwrap();
        assert_eq!(back.timestamp_ms, -5);
        assert_eq!(back.partitions, sample().partitions);
        assert_eq!(back.batch.len(), 2);
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn every_truncation_and_a_bad_version_or_order_is_corrupt_not_a_panic() {
        let bytes = sample().encode();
        // The batch header is the last 12+ bytes: any cut before the batch's records is caught
        // here (RocksDB checks the records themselves when the batch is written).
        let batch_len = sample().batch.data().len();
        for cut in 0..bytes.len() - batch_len + 12 {
            assert!(Command::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[0] = 2;
        assert!(Command::decode(&wrong).is_err());
        let mut unsorted = sample();
        unsorted.partitions.swap(0, 2);
        assert!(Command::decode(&unsorted.encode()).is_err());
        let mut huge = bytes.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Command::decode(&huge).is_err());
        let mut bad_tag = bytes;
        bad_tag[25] = 7;
        assert!(Command::decode(&bad_tag).is_err());
    }

    #[test]
    fn an_applied_id_round_trips() {
        let id = AppliedId { index: u64::MAX, term: 3, node: 1 };
        assert_eq!(AppliedId::decode(&id.encode()).unwrap(), id);
        assert!(AppliedId::decode(&[0; 23]).is_err());
    }
}
