//! Topic messages: the stored envelope and its codec.

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

/// Value layout: `timestamp_ms:i64 op:u8` then `source_table`, `key`, `payload`, each as
/// `len:u32` + UTF-8 bytes.
pub fn encode_message_value(m: &NewMessage, timestamp_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + m.source_table.len() + m.key.len() + m.payload.len());
    encode_message_value_into(m, timestamp_ms, &mut out);
    out
}

/// [`encode_message_value`] into a reused buffer (cleared first).
pub fn encode_message_value_into(m: &NewMessage, timestamp_ms: i64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.push(m.op.code());
    for s in [&*m.source_table, &m.key, &m.payload] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

/// Decodes a value written by [`encode_message_value`].
pub fn decode_message(topic_id: u64, partition: u32, offset: u64, value: &[u8]) -> Result<Message> {
    let bad = || StorageError::Corrupt { what: "message: truncated" };
    if value.len() < 9 {
        return Err(bad());
    }
    let timestamp_ms = i64::from_be_bytes(value[..8].try_into().expect("len checked"));
    let op = ChangeOp::from_code(value[8])?;
    let mut rest = &value[9..];
    let mut strings = Vec::with_capacity(3);
    for _ in 0..3 {
        if rest.len() < 4 {
            return Err(bad());
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("len checked")) as usize;
        if rest.len() < 4 + len {
            return Err(bad());
        }
        let s = std::str::from_utf8(&rest[4..4 + len])
            .map_err(|_| StorageError::Corrupt { what: "message: invalid UTF-8" })?;
        strings.push(s.to_owned());
        rest = &rest[4 + len..];
    }
    let payload = strings.pop().expect("three strings");
    let key = strings.pop().expect("three strings");
    let source_table = strings.pop().expect("three strings");
    Ok(Message { topic_id, partition, offset, timestamp_ms, op, source_table, key, payload })
}

/// Reads only the timestamp of a stored message (for seeks by time).
pub fn decode_message_timestamp(value: &[u8]) -> Result<i64> {
    value
        .get(..8)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or(StorageError::Corrupt { what: "message: truncated" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_and_truncations_fail() {
        let m = NewMessage {
            topic_id: 3,
            partition: 1,
            op: ChangeOp::Update,
            source_table: "app.orders".into(),
            key: r#"{"id":1}"#.into(),
            payload: r#"{"id":1,"s":"é"}"#.into(),
        };
        let v = encode_message_value(&m, 1_700_000_000_123);
        let back = decode_message(3, 1, 42, &v).unwrap();
        assert_eq!(back.offset, 42);
        assert_eq!(back.timestamp_ms, 1_700_000_000_123);
        assert_eq!((back.op, back.source_table.as_str()), (ChangeOp::Update, "app.orders"));
        assert_eq!((back.key.as_str(), back.payload.as_str()), (m.key.as_str(), m.payload.as_str()));
        assert_eq!(decode_message_timestamp(&v).unwrap(), 1_700_000_000_123);
        for len in 0..v.len() {
            assert!(decode_message(3, 1, 42, &v[..len]).is_err(), "len {len}");
        }
    }
}
