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
//! ([`WriteBatch::data`]), checked record by record when it is decoded.
//!
//! A command also carries the state each touched partition had when it was prepared: applying
//! it to a store whose partitions differ (a command prepared twice from one state, or by a
//! leader whose state another leader's commands have since changed) would reuse offsets, so
//! [`crate::store::Store::apply`] refuses it as stale instead, on every node alike.
//!
//! Encoding (version 1, integers big-endian, a state is `00 next_offset:u64 log_start:u64
//! bytes:u64` or `01` for none):
//! `01 timestamp_ms:i64 count:u32 (topic_id:u64 partition:u32 before:state after:state)* batch`,
//! the partitions sorted by id (the same command always encodes to the same bytes).

use rocksdb::WriteBatch;

use crate::error::{Result, StorageError};
use crate::store::PartitionState;

const VERSION: u8 = 1;

/// A prepared commit. Encode it with [`Command::encode`] to ship it; apply it with
/// [`crate::store::Store::apply`].
pub struct Command {
    /// The commit timestamp stamped on its message batches.
    pub(crate) timestamp_ms: i64,
    /// The partitions the commit changes, sorted by id.
    pub(crate) partitions: Vec<PartitionChange>,
    /// Every key the commit writes or deletes, the partition states' keys included.
    pub(crate) batch: WriteBatch,
}

/// One partition a command changes: its state when the command was prepared and after it
/// (`None`: it does not exist, before a create or after a drop). Absolute states, not
/// increments: applying sets `after`, and only where the partition is still `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionChange {
    pub id: (u64, u32),
    pub before: Option<PartitionState>,
    pub after: Option<PartitionState>,
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
    /// The command's bytes (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let data = self.batch.data();
        let mut out = Vec::with_capacity(13 + self.partitions.len() * 62 + data.len());
        out.push(VERSION);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_be_bytes());
        for change in &self.partitions {
            out.extend_from_slice(&change.id.0.to_be_bytes());
            out.extend_from_slice(&change.id.1.to_be_bytes());
            for state in [change.before, change.after] {
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
        }
        out.extend_from_slice(data);
        out
    }

    /// One command doing what `commands` do one after the other (each prepared from the state
    /// the previous one leaves): their write batches in order, each partition's state before
    /// the first and after the last that touch it, the latest timestamp.
    pub(crate) fn merge(mut commands: Vec<Command>) -> Command {
        if commands.len() == 1 {
            return commands.pop().expect("one command");
        }
        let mut partitions: std::collections::BTreeMap<(u64, u32), PartitionChange> = Default::default();
        let mut records = Vec::new();
        let mut count = 0u32;
        let mut timestamp_ms = i64::MIN;
        for c in &commands {
            timestamp_ms = timestamp_ms.max(c.timestamp_ms);
            for change in &c.partitions {
                partitions.entry(change.id).and_modify(|merged| merged.after = change.after).or_insert(*change);
            }
            let data = c.batch.data();
            count += u32::from_le_bytes(data[8..12].try_into().expect("a write batch has a 12-byte header"));
            records.extend_from_slice(&data[12..]);
        }
        // RocksDB's header: a sequence number (set by the write) and the record count.
        let mut data = vec![0u8; 12];
        data[8..].copy_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&records);
        Command { timestamp_ms, partitions: partitions.into_values().collect(), batch: WriteBatch::from_data(&data) }
    }

    /// Reads [`Command::encode`]'s bytes; anything else is [`StorageError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != VERSION {
            return Err(corrupt());
        }
        let timestamp_ms = i64::from_be_bytes(r.array()?);
        let count = u32::from_be_bytes(r.array()?) as usize;
        // Each partition takes at least 14 bytes: a count beyond that is corrupt, not a
        // reason to allocate.
        if count > r.0.len() / 14 {
            return Err(corrupt());
        }
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let id = (u64::from_be_bytes(r.array()?), u32::from_be_bytes(r.array()?));
            let before = r.state()?;
            let after = r.state()?;
            partitions.push(PartitionChange { id, before, after });
        }
        if !partitions.is_sorted_by(|a, b| a.id < b.id) {
            return Err(corrupt());
        }
        check_batch(r.0)?;
        Ok(Self { timestamp_ms, partitions, batch: WriteBatch::from_data(r.0) })
    }
}

/// Checks a write batch in RocksDB's serialization (`db/write_batch.cc`: a 12-byte header of
/// sequence number and little-endian record count, then records of a type byte and
/// varint32-length-prefixed keys and values): only puts (`0x01`), deletes (`0x00`) and range
/// deletes (`0x0F`, begin not after end) of the default column family — all the commit path
/// writes — exactly as many as the header counts, nothing after them. RocksDB itself would take
/// any record from the bytes, and one it cannot parse or apply (a range that ends before it
/// begins, a merge without a merge operator) fails the write half-way, after the WAL, as a fatal
/// error that stops every later write — and again at every reopen, when the WAL is replayed.
fn check_batch(data: &[u8]) -> Result<()> {
    let (header, mut rest) = data.split_at_checked(12).ok_or_else(corrupt)?;
    let count = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
    let mut records = 0u32;
    while let Some((&kind, tail)) = rest.split_first() {
        let (first, tail) = slice(tail)?;
        rest = match kind {
            0x00 => tail,
            0x01 => slice(tail)?.1,
            0x0F => {
                let (end, tail) = slice(tail)?;
                if first > end {
                    return Err(corrupt());
                }
                tail
            }
            _ => return Err(corrupt()),
        };
        records = records.checked_add(1).ok_or_else(corrupt)?;
    }
    if records != count {
        return Err(corrupt());
    }
    Ok(())
}

/// One varint32-length-prefixed slice, and the bytes after it.
fn slice(b: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut len = 0u64;
    for (i, &byte) in b.iter().take(5).enumerate() {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            let rest = &b[i + 1..];
            return usize::try_from(len).ok().and_then(|len| rest.split_at_checked(len)).ok_or_else(corrupt);
        }
    }
    Err(corrupt())
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

    fn state(&mut self) -> Result<Option<PartitionState>> {
        Ok(match self.take(1)?[0] {
            1 => None,
            0 => Some(PartitionState {
                next_offset: u64::from_be_bytes(self.array()?),
                log_start: u64::from_be_bytes(self.array()?),
                bytes: u64::from_be_bytes(self.array()?),
            }),
            _ => return Err(corrupt()),
        })
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

    fn state(next_offset: u64) -> Option<PartitionState> {
        Some(PartitionState { next_offset, log_start: 2, bytes: 99 })
    }

    fn sample() -> Command {
        let mut batch = WriteBatch::default();
        batch.put(b"k", b"v");
        batch.delete(b"gone");
        batch.delete_range(b"a", b"b");
        Command {
            timestamp_ms: -5,
            partitions: vec![
                PartitionChange { id: (1, 0), before: state(5), after: state(7) },
                PartitionChange { id: (1, 1), before: state(3), after: None },
                PartitionChange { id: (2, 0), before: None, after: Some(PartitionState::default()) },
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
        assert_eq!(back.batch.len(), 3);
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn every_truncation_and_a_bad_version_tag_order_or_count_is_corrupt_not_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
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
        let mut bad_tag = bytes.clone();
        bad_tag[25] = 7;
        assert!(Command::decode(&bad_tag).is_err());
        let mut trailing = bytes;
        trailing.push(0);
        assert!(Command::decode(&trailing).is_err());
    }

    /// Only puts, deletes and range deletes pass: a merge, a single delete or a record of
    /// another column family (which RocksDB would accept, or fail half-way) is corrupt.
    #[test]
    fn a_batch_with_other_records_or_a_wrong_count_is_corrupt() {
        let header = |count: u32| {
            let mut h = vec![0u8; 8];
            h.extend_from_slice(&count.to_le_bytes());
            h
        };
        let with = |records: &[u8], count: u32| {
            let mut c = sample();
            let mut data = header(count);
            data.extend_from_slice(records);
            c.batch = WriteBatch::from_data(&data);
            Command::decode(&c.encode())
        };
        assert!(with(&[0x01, 1, b'k', 1, b'v', 0x00, 1, b'k', 0x0F, 1, b'a', 1, b'b'], 3).is_ok());
        assert!(with(&[], 0).is_ok());
        assert!(with(&[0x01, 1, b'k', 1, b'v'], 2).is_err());
        assert!(with(&[0x01, 1, b'k', 1, b'v'], 0).is_err());
        assert!(with(&[0x02, 1, b'k', 1, b'v'], 1).is_err(), "merge");
        assert!(with(&[0x07, 1, b'k'], 1).is_err(), "single delete");
        assert!(with(&[0x05, 1, 1, b'k', 1, b'v'], 1).is_err(), "another column family");
        assert!(with(&[0x01, 5, b'k', 1, b'v'], 1).is_err(), "a key longer than the batch");
        assert!(with(&[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 1).is_err(), "a varint of more than 5 bytes");
        assert!(with(&[0x0F, 1, b'a', 1, b'a'], 1).is_ok(), "an empty range");
        assert!(with(&[0x0F, 1, b'b', 1, b'a'], 1).is_err(), "a range that ends before it begins");
        assert!(with(&[0x0F, 2, b'a', b'b', 1, b'a'], 1).is_err(), "a range that ends before it begins");
    }

    #[test]
    fn an_applied_id_round_trips() {
        let id = AppliedId { index: u64::MAX, term: 3, node: 1 };
        assert_eq!(AppliedId::decode(&id.encode()).unwrap(), id);
        assert!(AppliedId::decode(&[0; 23]).is_err());
    }
}
