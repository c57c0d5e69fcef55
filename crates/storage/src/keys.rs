//! The RocksDB key layout: the only place where key bytes are built or read.
//!
//! Everything lives in the default column family; the first byte names the keyspace.
//! Integers are fixed-width big-endian, so byte order is numeric order.
//!
//! | prefix | keyspace  | key                                                          | value                                  |
//! |--------|-----------|--------------------------------------------------------------|----------------------------------------|
//! | `0x01` | catalog   | `01 kind:u8 name` (kind 1 schema, 2 table, 3 topic, 4 user, 5 setting; tables and topics: `schema 00 name`) | JSON metadata |
//! | `0x02` | row       | `02 table_id:u64 pk:memcomparable`                           | row codec ([`crate::codec`])           |
//! | `0x04` | partition | `04 topic_id:u64 partition:u32`                              | `next_offset:u64 log_start:u64 bytes:u64` |
//! | `0x05` | group     | `05 topic_id:u64 group_len:u16 group:utf8 partition:u32`     | `position:u64 updated_ms:i64 (start:u64 end:u64)*` (acknowledged ranges above the position) |
//! | `0x06` | sequence  | `06 kind:u8 id:u64` (kind 1 table ids, 2 topic ids, 3 row ids of table `id`) | `next:u64`             |
//! | `0x07` | message batch | `07 topic_id:u64 partition:u32 last_offset:u64`         | the messages of one commit to one partition ([`crate::message`]) |
//! | `0x08` | job       | `08 job_id:u64`                                              | JSON record of a background job's run (the last 1000 are kept) |
//! | `0x09` | applied   | `09`, `09 01`                                                | `09`: `index:u64 term:u64 node:u64`, the replicated-log entry applied last ([`crate::command::AppliedId`]), written in the same batch as what it applied; `09 01`: the last applied membership (the cluster's bytes) |
//!
//! `0x03` held one message per key (`03 topic_id partition offset`) before message batches;
//! [`crate::store::Store::open`] moves such keys into `0x07` batches of one.

use std::fmt;

use crate::error::{Result, StorageError};

/// Catalog entries (schemas, tables, topics): JSON metadata.
pub const CATALOG_PREFIX: u8 = 0x01;
/// Table rows.
pub const ROW_PREFIX: u8 = 0x02;
/// Topic messages, one commit's messages to one partition per key.
pub const MESSAGE_PREFIX: u8 = 0x07;
/// Topic messages one per key, as stored before message batches (migrated at open).
pub const LEGACY_MESSAGE_PREFIX: u8 = 0x03;
/// Per-partition log state (high watermark, log start, bytes).
pub const PARTITION_PREFIX: u8 = 0x04;
/// Consumer-group positions.
pub const GROUP_PREFIX: u8 = 0x05;
/// Monotonic counters (ids).
pub const SEQUENCE_PREFIX: u8 = 0x06;
/// Records of background job runs (`system.jobs`).
pub const JOB_PREFIX: u8 = 0x08;
/// The last applied entry of the replicated log.
pub const APPLIED_PREFIX: u8 = 0x09;

/// Kinds of catalog entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CatalogKind {
    Schema = 1,
    Table = 2,
    Topic = 3,
    /// Users: name, role, argon2 password hash.
    User = 4,
    /// Server settings kept in the data dir (the token-signing secret).
    Setting = 5,
}

/// Kinds of sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SequenceKind {
    TableId = 1,
    TopicId = 2,
    RowId = 3,
}

/// The first key after every key that starts with `prefix`, or `None` when there is none (an
/// empty or all-`0xFF` prefix: the range is unbounded above). Key bounds built from user values
/// (a primary key at its type's maximum encodes as all `0xFF`) must use this.
pub fn try_prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The first key after every key that starts with `prefix` (for range scans and deletes of our
/// keyspaces, whose first byte is a keyspace prefix below `0xFF`).
///
/// # Panics
/// If `prefix` is empty or all `0xFF`; use [`try_prefix_end`] for bounds made of user values.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    try_prefix_end(prefix).expect("prefix_end of a keyspace prefix (never empty or all 0xFF)")
}

pub fn catalog_prefix(kind: CatalogKind) -> Vec<u8> {
    vec![CATALOG_PREFIX, kind as u8]
}

/// The key of a catalog entry named by one name (schema, user, setting).
pub fn catalog_key(kind: CatalogKind, name: &str) -> Vec<u8> {
    let mut k = catalog_prefix(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The key of a catalog entry named by schema and name (table, topic): `schema 00 name`. Names
/// never contain `00` (the engine refuses them), so `"a.b".c` and `a."b.c"` get different keys.
pub fn qualified_catalog_key(kind: CatalogKind, schema: &str, name: &str) -> Vec<u8> {
    let mut k = catalog_prefix(kind);
    k.extend_from_slice(schema.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn table_prefix(table_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ROW_PREFIX);
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

/// The key of one row: the table prefix followed by the memcomparable primary key.
pub fn row_key(table_id: u64, pk: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + pk.len());
    k.push(ROW_PREFIX);
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(pk);
    k
}

/// Strips the table prefix from a row key, returning the primary-key bytes.
pub fn decode_row_key(key: &[u8]) -> Result<(u64, &[u8])> {
    if key.len() < 9 || key[0] != ROW_PREFIX {
        return Err(StorageError::BadKey { what: "row", key: Hex(key.to_vec()) });
    }
    Ok((u64_at(key, 1), &key[9..]))
}

pub fn topic_messages_prefix(topic_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(MESSAGE_PREFIX);
    k.extend_from_slice(&topic_id.to_be_bytes());
    k
}

pub fn partition_messages_prefix(topic_id: u64, partition: u32) -> Vec<u8> {
    let mut k = topic_messages_prefix(topic_id);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The length of a message key: prefix, topic id, partition, offset.
pub const MESSAGE_KEY_LEN: usize = 21;

/// The key of the message batch whose last offset is `offset` (also the seek key of a read
/// from `offset`): fixed width, built without allocating.
pub fn message_key(topic_id: u64, partition: u32, offset: u64) -> [u8; MESSAGE_KEY_LEN] {
    let mut k = [0u8; MESSAGE_KEY_LEN];
    k[0] = MESSAGE_PREFIX;
    k[1..9].copy_from_slice(&topic_id.to_be_bytes());
    k[9..13].copy_from_slice(&partition.to_be_bytes());
    k[13..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Returns `(topic_id, partition, last_offset)` of a message batch key.
pub fn decode_message_key(key: &[u8]) -> Result<(u64, u32, u64)> {
    decode_message_key_with(MESSAGE_PREFIX, key)
}

/// Returns `(topic_id, partition, offset)` of a pre-batch message key (`0x03`).
pub fn decode_legacy_message_key(key: &[u8]) -> Result<(u64, u32, u64)> {
    decode_message_key_with(LEGACY_MESSAGE_PREFIX, key)
}

fn decode_message_key_with(prefix: u8, key: &[u8]) -> Result<(u64, u32, u64)> {
    if key.len() != MESSAGE_KEY_LEN || key[0] != prefix {
        return Err(StorageError::BadKey { what: "message", key: Hex(key.to_vec()) });
    }
    Ok((u64_at(key, 1), u32_at(key, 9), u64_at(key, 13)))
}

pub fn partition_state_prefix() -> Vec<u8> {
    vec![PARTITION_PREFIX]
}

pub fn partition_state_key(topic_id: u64, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(PARTITION_PREFIX);
    k.extend_from_slice(&topic_id.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Returns `(topic_id, partition)`.
pub fn decode_partition_state_key(key: &[u8]) -> Result<(u64, u32)> {
    if key.len() != 13 || key[0] != PARTITION_PREFIX {
        return Err(StorageError::BadKey { what: "partition state", key: Hex(key.to_vec()) });
    }
    Ok((u64_at(key, 1), u32_at(key, 9)))
}

pub fn groups_prefix() -> Vec<u8> {
    vec![GROUP_PREFIX]
}

pub fn topic_groups_prefix(topic_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(GROUP_PREFIX);
    k.extend_from_slice(&topic_id.to_be_bytes());
    k
}

/// All partitions of one group on one topic.
///
/// # Panics
/// If the group name is longer than `u16::MAX` bytes (the engine rejects such names first).
pub fn group_prefix(topic_id: u64, group: &str) -> Vec<u8> {
    let len = u16::try_from(group.len()).expect("group name length checked by the engine");
    let mut k = topic_groups_prefix(topic_id);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k
}

pub fn group_key(topic_id: u64, group: &str, partition: u32) -> Vec<u8> {
    let mut k = group_prefix(topic_id, group);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Returns `(topic_id, group, partition)`.
pub fn decode_group_key(key: &[u8]) -> Result<(u64, String, u32)> {
    let bad = || StorageError::BadKey { what: "group", key: Hex(key.to_vec()) };
    if key.len() < 15 || key[0] != GROUP_PREFIX {
        return Err(bad());
    }
    let len = u16::from_be_bytes([key[9], key[10]]) as usize;
    if key.len() != 11 + len + 4 {
        return Err(bad());
    }
    let group = std::str::from_utf8(&key[11..11 + len]).map_err(|_| bad())?;
    Ok((u64_at(key, 1), group.to_owned(), u32_at(key, 11 + len)))
}

/// The key of the last applied log entry (one key: the keyspace's prefix).
pub fn applied_key() -> [u8; 1] {
    [APPLIED_PREFIX]
}

/// The key of the last applied membership of the replicated log.
pub fn applied_membership_key() -> [u8; 2] {
    [APPLIED_PREFIX, 0x01]
}

/// The key of a job record.
pub fn job_key(job_id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = JOB_PREFIX;
    k[1..].copy_from_slice(&job_id.to_be_bytes());
    k
}

/// The job id of a job record's key.
pub fn decode_job_key(key: &[u8]) -> Result<u64> {
    if key.len() != 9 || key[0] != JOB_PREFIX {
        return Err(StorageError::BadKey { what: "job", key: Hex(key.to_vec()) });
    }
    Ok(u64_at(key, 1))
}

pub fn sequence_key(kind: SequenceKind, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(SEQUENCE_PREFIX);
    k.push(kind as u8);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("length checked by caller"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("length checked by caller"))
}

/// Prints bytes as hex in errors and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_keys_round_trip_in_id_order_and_refuse_malformed_ones() {
        for id in [0, 1, 999, u64::MAX] {
            assert_eq!(decode_job_key(&job_key(id)).unwrap(), id);
        }
        assert!(job_key(9) < job_key(10));
        assert!(job_key(u64::MAX).as_slice() < prefix_end(&[JOB_PREFIX]).as_slice());
        for bad in [&job_key(1)[..8], &[SEQUENCE_PREFIX, 0, 0, 0, 0, 0, 0, 0, 1][..], &[][..]] {
            assert!(decode_job_key(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn qualified_catalog_keys_are_unambiguous() {
        let a = qualified_catalog_key(CatalogKind::Table, "a.b", "c");
        let b = qualified_catalog_key(CatalogKind::Table, "a", "b.c");
        assert_ne!(a, b);
        assert_eq!(b, [&[CATALOG_PREFIX, 2][..], b"a\0b.c"].concat());
    }

    #[test]
    fn prefix_end_of_all_ff_is_unbounded() {
        assert_eq!(try_prefix_end(&[0x01, 0xFF]), Some(vec![0x02]));
        assert_eq!(try_prefix_end(&[0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(try_prefix_end(&[]), None);
        assert_eq!(prefix_end(&[0x02, 0x00, 0xFF]), vec![0x02, 0x01]);
    }

    #[test]
    fn message_key_round_trips() {
        for (t, p, o) in [(0, 0, 0), (1, 1, 1), (u64::MAX, u32::MAX, u64::MAX)] {
            assert_eq!(decode_message_key(&message_key(t, p, o)).unwrap(), (t, p, o));
        }
    }

    #[test]
    fn message_keys_order_by_partition_then_offset() {
        let cases = [
            ((1, 0, 9), (1, 0, 10)),
            ((1, 0, 255), (1, 0, 256)),
            ((1, 0, u64::MAX), (1, 1, 0)),
            ((1, 3, 5), (2, 0, 0)),
        ];
        for (a, b) in cases {
            assert!(message_key(a.0, a.1, a.2) < message_key(b.0, b.1, b.2), "{a:?} < {b:?}");
        }
    }

    #[test]
    fn group_key_round_trips_and_rejects_malformed() {
        let k = group_key(7, "billing", 3);
        assert_eq!(decode_group_key(&k).unwrap(), (7, "billing".to_owned(), 3));
        assert_eq!(decode_group_key(&group_key(0, "", 0)).unwrap(), (0, String::new(), 0));
        assert!(decode_group_key(&k[..k.len() - 1]).is_err());
        let mut wrong = k.clone();
        wrong[0] = ROW_PREFIX;
        assert!(decode_group_key(&wrong).is_err());
    }

    #[test]
    fn partition_state_key_round_trips() {
        let k = partition_state_key(u64::MAX, 7);
        assert_eq!(decode_partition_state_key(&k).unwrap(), (u64::MAX, 7));
        assert!(decode_partition_state_key(&k[..12]).is_err());
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert!(decode_message_key(&[]).is_err());
        assert!(decode_message_key(&message_key(1, 2, 3)[..20]).is_err());
        let mut legacy = message_key(1, 2, 3);
        legacy[0] = LEGACY_MESSAGE_PREFIX;
        assert_eq!(decode_legacy_message_key(&legacy).unwrap(), (1, 2, 3));
        assert!(decode_message_key(&legacy).is_err());
        assert!(decode_row_key(&[ROW_PREFIX, 0, 0]).is_err());
        let key = row_key(5, b"abc");
        let (t, pk) = decode_row_key(&key).unwrap();
        assert_eq!((t, pk), (5, &b"abc"[..]));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
        let p = table_prefix(9);
        assert!(row_key(9, &[0xFF; 8]) < prefix_end(&p));
        assert!(row_key(10, &[]) >= prefix_end(&p));
    }

    #[test]
    fn hex_prints_bytes() {
        assert_eq!(Hex(vec![0, 0xAB, 0x10]).to_string(), "00ab10");
    }
}
