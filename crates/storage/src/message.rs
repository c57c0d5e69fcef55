//! Topic messages: the batch value holding one commit's messages to one partition, and its codec.

use std::sync::Arc;

use crate::error::{Result, StorageError};

/// The kind of row change a message records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }

    fn code(self) -> u8 {
        match self {
            ChangeOp::Insert => 1,
            ChangeOp::Update => 2,
            ChangeOp::Delete => 3,
        }
    }

    fn from_code(c: u8) -> Result<Self> {
        Ok(match c {
            1 => ChangeOp::Insert,
            2 => ChangeOp::Update,
            3 => ChangeOp::Delete,
            _ => return Err(StorageError::Corrupt { what: "message: unknown op" }),
        })
    }
}

/// A message to append: the commit path assigns its offset and timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub topic_id: u64,
    pub partition: u32,
    pub op: ChangeOp,
    /// `schema.table` (shared by a statement's messages).
    pub source_table: Arc<str>,
    /// JSON object of the primary-key columns.
    pub key: String,
    /// JSON payload (see the payload modes in docs/sql-reference.md).
    pub payload: String,
}

/// A stored message, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic_id: u64,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub op: ChangeOp,
    pub source_table: String,
    pub key: String,
    pub payload: String,
}

/// Bytes of a batch value before its messages: `timestamp_ms:i64 count:u32`.
pub const BATCH_HEADER_LEN: usize = 12;

/// The bytes a message counts for in its partition's size (retention by bytes): what it took
/// stored alone under its own key (a 21-byte key, an 8-byte timestamp and its entry), so the
/// accounting does not depend on how messages were batched.
pub fn message_size(entry_len: usize) -> u64 {
    (crate::keys::MESSAGE_KEY_LEN + 8 + entry_len) as u64
}

/// Starts a batch value: messages of one commit to one partition, stored under the key of
/// their last offset (as Kafka's record batches; the last offset, so that a forward seek to an
/// offset lands on the batch holding it). Layout: `timestamp_ms:i64 count:u32`, then per
/// message `op:u8` and `source_table`, `key`, `payload`, each as `len:u32` + UTF-8 bytes.
/// [`finish_batch`] sets the count.
pub fn start_batch(out: &mut Vec<u8>, timestamp_ms: i64) {
    out.clear();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
}

/// Appends one message to a batch started by [`start_batch`]; returns its entry's length.
pub fn push_message(out: &mut Vec<u8>, m: &NewMessage) -> usize {
    let before = out.len();
    out.push(m.op.code());
    for s in [&*m.source_table, &m.key, &m.payload] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.len() - before
}

/// Writes the message count into a batch's header.
pub fn finish_batch(out: &mut [u8], count: u32) {
    out[8..BATCH_HEADER_LEN].copy_from_slice(&count.to_be_bytes());
}

/// One message of a stored batch, borrowed from the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    pub op: ChangeOp,
    pub source_table: &'a str,
    pub key: &'a str,
    pub payload: &'a str,
    /// Bytes of the entry in the batch (for [`message_size`]).
    pub len: usize,
}

/// A decoded batch value: the commit time and every message, checked against the count.
pub fn decode_batch(value: &[u8]) -> Result<(i64, Vec<Entry<'_>>)> {
    let bad = || StorageError::Corrupt { what: "message batch: truncated" };
    if value.len() < BATCH_HEADER_LEN {
        return Err(bad());
    }
    let timestamp_ms = i64::from_be_bytes(value[..8].try_into().expect("len checked"));
    let count = u32::from_be_bytes(value[8..BATCH_HEADER_LEN].try_into().expect("len checked"));
    if count == 0 {
        return Err(StorageError::Corrupt { what: "message batch: empty" });
    }
    let mut rest = &value[BATCH_HEADER_LEN..];
    // A message takes at least 13 bytes: a corrupt count cannot make this allocate more than
    // the value could hold.
    let mut entries = Vec::with_capacity((count as usize).min(rest.len() / 13));
    for _ in 0..count {
        let len_before = rest.len();
        let (&op, tail) = rest.split_first().ok_or_else(bad)?;
        rest = tail;
        let mut string = || -> Result<&str> {
            let len = rest.get(..4).ok_or_else(bad)?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            let bytes = rest.get(4..4 + len).ok_or_else(bad)?;
            rest = &rest[4 + len..];
            std::str::from_utf8(bytes).map_err(|_| StorageError::Corrupt { what: "message: invalid UTF-8" })
        };
        let (source_table, key, payload) = (string()?, string()?, string()?);
        let op = ChangeOp::from_code(op)?;
        entries.push(Entry { op, source_table, key, payload, len: len_before - rest.len() });
    }
    if !rest.is_empty() {
        return Err(StorageError::Corrupt { what: "message batch: bytes after its messages" });
    }
    Ok((timestamp_ms, entries))
}

/// Reads only the commit time and message count of a stored batch.
pub fn decode_batch_header(value: &[u8]) -> Result<(i64, u32)> {
    let header = value.get(..BATCH_HEADER_LEN).ok_or(StorageError::Corrupt { what: "message batch: truncated" })?;
    let timestamp_ms = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(header[8..].try_into().expect("4 bytes"));
    Ok((timestamp_ms, count))
}

/// The batch of one message holding a message stored before batches (`timestamp_ms:i64 op:u8`
/// and the three strings): the same bytes with the count inserted after the timestamp.
pub fn batch_of_legacy_message(value: &[u8]) -> Result<Vec<u8>> {
    let bad = || StorageError::Corrupt { what: "message: truncated" };
    let (timestamp, entry) = (value.get(..8).ok_or_else(bad)?, &value[8..]);
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(timestamp);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(entry);
    decode_batch(&out)?;
    Ok(out)
}

impl Entry<'_> {
    /// The owned message at `offset` of a partition.
    pub fn to_message(&self, topic_id: u64, partition: u32, offset: u64, timestamp_ms: i64) -> Message {
        Message {
            topic_id,
            partition,
            offset,
            timestamp_ms,
            op: self.op,
            source_table: self.source_table.to_owned(),
            key: self.key.to_owned(),
            payload: self.payload.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(op: ChangeOp, payload: &str) -> NewMessage {
        NewMessage {
            topic_id: 3,
            partition: 1,
            op,
            source_table: "app.orders".into(),
            key: r#"{"id":1}"#.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn batches_round_trip_and_truncations_fail() {
        let messages =
            [msg(ChangeOp::Update, r#"{"id":1,"s":"é"}"#), msg(ChangeOp::Delete, ""), msg(ChangeOp::Insert, "{}")];
        let mut v = Vec::new();
        start_batch(&mut v, 1_700_000_000_123);
        let lens: Vec<usize> = messages.iter().map(|m| push_message(&mut v, m)).collect();
        finish_batch(&mut v, messages.len() as u32);
        let (ts, entries) = decode_batch(&v).unwrap();
        assert_eq!(ts, 1_700_000_000_123);
        assert_eq!(decode_batch_header(&v).unwrap(), (ts, 3));
        assert_eq!(entries.len(), 3);
        for ((e, m), len) in entries.iter().zip(&messages).zip(&lens) {
            assert_eq!(
                (e.op, e.source_table, e.key, e.payload, e.len),
                (m.op, "app.orders", m.key.as_str(), m.payload.as_str(), *len)
            );
        }
        assert_eq!(
            message_size(lens[0]),
            (21 + 8 + 1 + 12 + "app.orders".len() + 8 + r#"{"id":1,"s":"é"}"#.len()) as u64
        );
        let back = entries[0].to_message(3, 1, 42, ts);
        assert_eq!((back.offset, back.payload.as_str()), (42, messages[0].payload.as_str()));
        for len in 0..v.len() {
            assert!(decode_batch(&v[..len]).is_err(), "len {len}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err(), "a byte after the last message");
        finish_batch(&mut v, 4);
        assert!(decode_batch(&v).is_err(), "a count above the messages");
        finish_batch(&mut v, 0);
        assert!(decode_batch(&v).is_err(), "an empty batch");
        finish_batch(&mut v, u32::MAX);
        assert!(decode_batch(&v).is_err(), "a corrupt count is an error, not a huge allocation");
    }

    #[test]
    fn a_message_stored_before_batches_becomes_a_batch_of_one() {
        // The pre-batch value: `timestamp_ms:i64 op:u8` and the three strings.
        let m = msg(ChangeOp::Insert, r#"{"id":1}"#);
        let mut legacy = 1_700_000_000_000i64.to_be_bytes().to_vec();
        let mut entry = Vec::new();
        start_batch(&mut entry, 0);
        let len = push_message(&mut entry, &m);
        legacy.extend_from_slice(&entry[BATCH_HEADER_LEN..]);
        let batch = batch_of_legacy_message(&legacy).unwrap();
        let (ts, entries) = decode_batch(&batch).unwrap();
        assert_eq!(
            (ts, entries.len(), entries[0].payload, entries[0].len),
            (1_700_000_000_000, 1, m.payload.as_str(), len)
        );
        // The accounting is the old per-key size: key plus value.
        assert_eq!(message_size(len), (21 + legacy.len()) as u64);
        assert!(batch_of_legacy_message(&legacy[..legacy.len() - 1]).is_err());
        assert!(batch_of_legacy_message(&legacy[..7]).is_err());
    }
}
