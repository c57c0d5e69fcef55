//! Topic messages: the batch values holding a commit's messages to one partition, how they are
//! built in place ([`MessageBatches`]) and read ([`BatchReader`], [`decode_batch`]).

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

/// A batch is closed once its value reaches this size (RocksDB's block size here): a read
/// that starts inside a batch hops over at most about a block of messages, and a bulk
/// INSERT still writes one entry per ~100 small messages.
pub const MAX_BATCH_BYTES: usize = 16 * 1024;

/// The messages of one commit, built in their stored form: per partition, batch values (as
/// Kafka's record batches) of up to [`MAX_BATCH_BYTES`], stored under the key of their last
/// offset (so that a forward seek to an offset lands on the batch holding it). The router writes
/// each message's JSON straight into them, outside the commit lock; the commit path only fills
/// in each header and key. Value layout: `timestamp_ms:i64 count:u32`, then per message `op:u8`
/// and `source_table`, `key`, `payload`, each as `len:u32` + UTF-8 bytes.
#[derive(Debug, Default)]
pub struct MessageBatches {
    pub(crate) batches: Vec<PendingBatch>,
    /// The open (last) batch of each partition written to: `(topic_id, partition, index)`.
    open: Vec<(u64, u32, usize)>,
    /// The batch of each message, in push order (for [`crate::Committed::offsets`]).
    pub(crate) order: Vec<u32>,
}

/// Messages of a commit to one partition, before the commit assigns their offsets.
#[derive(Debug)]
pub(crate) struct PendingBatch {
    pub topic_id: u64,
    pub partition: u32,
    pub count: u32,
    /// What the messages count for in the partition's size ([`message_size`]).
    pub bytes: u64,
    /// The value, its header still zero ([`finish_batch`]).
    pub value: Vec<u8>,
}

impl MessageBatches {
    /// Appends a message whose key and payload JSON `key` and `payload` write (valid UTF-8; a
    /// reader refuses anything else as corrupt). Messages of one partition keep their push order.
    pub fn push_with(
        &mut self,
        topic_id: u64,
        partition: u32,
        op: ChangeOp,
        source_table: &str,
        key: impl FnOnce(&mut Vec<u8>),
        payload: impl FnOnce(&mut Vec<u8>),
    ) {
        let open = self.open.iter_mut().find(|(t, p, _)| (*t, *p) == (topic_id, partition));
        let index = match open {
            Some((_, _, i)) if self.batches[*i].value.len() < MAX_BATCH_BYTES => *i,
            open => {
                let i = self.batches.len();
                let mut value = Vec::with_capacity(4096);
                value.extend_from_slice(&[0; BATCH_HEADER_LEN]);
                self.batches.push(PendingBatch { topic_id, partition, count: 0, bytes: 0, value });
                match open {
                    Some(entry) => entry.2 = i,
                    None => self.open.push((topic_id, partition, i)),
                }
                i
            }
        };
        let batch = &mut self.batches[index];
        let out = &mut batch.value;
        let before = out.len();
        out.push(op.code());
        write_string(out, |out| out.extend_from_slice(source_table.as_bytes()));
        write_string(out, key);
        write_string(out, payload);
        batch.bytes += message_size(out.len() - before);
        batch.count += 1;
        self.order.push(index as u32);
    }

    /// Appends a message.
    pub fn push(&mut self, m: &NewMessage) {
        let (key, payload) = (m.key.as_bytes(), m.payload.as_bytes());
        self.push_with(
            m.topic_id,
            m.partition,
            m.op,
            &m.source_table,
            |out| out.extend_from_slice(key),
            |out| out.extend_from_slice(payload),
        );
    }

    /// How many messages were pushed.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Appends `len:u32` and the bytes `write` appends.
fn write_string(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

impl From<Vec<NewMessage>> for MessageBatches {
    fn from(messages: Vec<NewMessage>) -> Self {
        let mut out = Self::default();
        for m in &messages {
            out.push(m);
        }
        out
    }
}

/// Fills in a batch's header: its commit time and message count.
pub fn finish_batch(value: &mut [u8], timestamp_ms: i64, count: u32) {
    value[..8].copy_from_slice(&timestamp_ms.to_be_bytes());
    value[8..BATCH_HEADER_LEN].copy_from_slice(&count.to_be_bytes());
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
    let (timestamp_ms, count, mut reader) = BatchReader::new(value)?;
    // A message takes at least 13 bytes: a corrupt count cannot make this allocate more than
    // the value could hold.
    let mut entries = Vec::with_capacity((count as usize).min(value.len() / 13));
    while let Some(e) = reader.next_entry()? {
        entries.push(e);
    }
    if !reader.rest.is_empty() {
        return Err(StorageError::Corrupt { what: "message batch: bytes after its messages" });
    }
    Ok((timestamp_ms, entries))
}

/// Reads a batch value's messages one at a time, so that a read decodes only the messages it
/// returns: the header is checked first, each message when it is reached (lengths in bounds,
/// UTF-8), and [`BatchReader::skip`] hops over messages by their lengths alone.
pub struct BatchReader<'a> {
    rest: &'a [u8],
    /// Messages not yet read or skipped.
    left: u32,
}

impl<'a> BatchReader<'a> {
    /// The batch's commit time, its message count and a reader at its first message.
    pub fn new(value: &'a [u8]) -> Result<(i64, u32, Self)> {
        let (timestamp_ms, count) = decode_batch_header(value)?;
        if count == 0 {
            return Err(StorageError::Corrupt { what: "message batch: empty" });
        }
        Ok((timestamp_ms, count, Self { rest: &value[BATCH_HEADER_LEN..], left: count }))
    }

    /// The next message, `None` after the last one.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let before = self.rest;
        let op = ChangeOp::from_code(*self.take(1)?.first().expect("one byte"))?;
        let mut string = || {
            std::str::from_utf8(self.take_string()?)
                .map_err(|_| StorageError::Corrupt { what: "message: invalid UTF-8" })
        };
        let (source_table, key, payload) = (string()?, string()?, string()?);
        self.left -= 1;
        Ok(Some(Entry { op, source_table, key, payload, len: before.len() - self.rest.len() }))
    }

    /// Hops over the next `n` messages (at most the ones left) without decoding them.
    pub fn skip(&mut self, n: u64) -> Result<()> {
        for _ in 0..n.min(u64::from(self.left)) {
            self.take(1)?;
            for _ in 0..3 {
                self.take_string()?;
            }
            self.left -= 1;
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(StorageError::Corrupt { what: "message batch: truncated" });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// `len:u32` and that many bytes.
    fn take_string(&mut self) -> Result<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
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

    /// The values `batches` would store with commit time `timestamp_ms`.
    fn sealed(batches: MessageBatches, timestamp_ms: i64) -> Vec<Vec<u8>> {
        batches
            .batches
            .into_iter()
            .map(|mut b| {
                finish_batch(&mut b.value, timestamp_ms, b.count);
                b.value
            })
            .collect()
    }

    #[test]
    fn batches_round_trip_and_truncations_fail() {
        let messages =
            [msg(ChangeOp::Update, r#"{"id":1,"s":"é"}"#), msg(ChangeOp::Delete, ""), msg(ChangeOp::Insert, "{}")];
        let batches = MessageBatches::from(messages.to_vec());
        assert_eq!((batches.len(), batches.batches.len()), (3, 1));
        let sizes: Vec<u64> = messages.iter().map(|m| MessageBatches::from(vec![m.clone()]).batches[0].bytes).collect();
        assert_eq!(batches.batches[0].bytes, sizes.iter().sum::<u64>());
        let mut v = sealed(batches, 1_700_000_000_123).remove(0);
        let (ts, entries) = decode_batch(&v).unwrap();
        assert_eq!(ts, 1_700_000_000_123);
        assert_eq!(decode_batch_header(&v).unwrap(), (ts, 3));
        assert_eq!(entries.len(), 3);
        for ((e, m), size) in entries.iter().zip(&messages).zip(&sizes) {
            assert_eq!(
                (e.op, e.source_table, e.key, e.payload, message_size(e.len)),
                (m.op, "app.orders", m.key.as_str(), m.payload.as_str(), *size)
            );
        }
        assert_eq!(sizes[0], (21 + 8 + 1 + 12 + "app.orders".len() + 8 + r#"{"id":1,"s":"é"}"#.len()) as u64);
        let back = entries[0].to_message(3, 1, 42, ts);
        assert_eq!((back.offset, back.payload.as_str()), (42, messages[0].payload.as_str()));
        for len in 0..v.len() {
            assert!(decode_batch(&v[..len]).is_err(), "len {len}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err(), "a byte after the last message");
        for (count, what) in [(4, "a count above the messages"), (0, "an empty batch"), (u32::MAX, "a huge count")] {
            finish_batch(&mut v, ts, count);
            assert!(decode_batch(&v).is_err(), "{what}: an error, not a panic or a huge allocation");
        }
    }

    #[test]
    fn a_reader_hops_over_messages_and_decodes_only_those_it_reaches() {
        let messages: Vec<NewMessage> = (0..5).map(|i| msg(ChangeOp::Insert, &format!("{{\"n\":{i}}}"))).collect();
        let v = sealed(MessageBatches::from(messages), 9).remove(0);
        let (_, all) = decode_batch(&v).unwrap();
        let (ts, count, mut reader) = BatchReader::new(&v).unwrap();
        assert_eq!((ts, count), (9, 5));
        reader.skip(3).unwrap();
        assert_eq!(reader.next_entry().unwrap(), Some(all[3]));
        reader.skip(10).unwrap();
        assert_eq!(reader.next_entry().unwrap(), None);
        // A value cut inside the third message: hopping over two is fine, over three is an error.
        let cut = &v[..v.len() - all[4].len - all[3].len - 3];
        let (_, _, mut reader) = BatchReader::new(cut).unwrap();
        reader.skip(2).unwrap();
        assert!(reader.next_entry().is_err());
        let (_, _, mut reader) = BatchReader::new(cut).unwrap();
        assert!(reader.skip(3).is_err());
        // An invalid UTF-8 payload is found when the message is read, not when it is hopped over.
        let mut bad = v.clone();
        let at = bad.len() - 2;
        bad[at] = 0xFF;
        let (_, _, mut reader) = BatchReader::new(&bad).unwrap();
        reader.skip(4).unwrap();
        assert!(reader.next_entry().is_err());
        assert!(decode_batch(&bad).is_err());
    }

    #[test]
    fn writers_build_the_same_entries_and_partitions_close_their_own_batches() {
        let mut direct = MessageBatches::default();
        let mut copied = MessageBatches::default();
        let big = "x".repeat(MAX_BATCH_BYTES / 3);
        // Partition 0 gets big messages (several batches), partition 1 small ones in between.
        for i in 0..10u32 {
            let (partition, payload) = if i % 2 == 0 { (0, big.as_str()) } else { (1, "{}") };
            let key = format!(r#"{{"id":{i}}}"#);
            direct.push_with(
                3,
                partition,
                ChangeOp::Insert,
                "app.orders",
                |o| o.extend_from_slice(key.as_bytes()),
                |o| o.extend_from_slice(payload.as_bytes()),
            );
            copied.push(&NewMessage { partition, key, payload: payload.into(), ..msg(ChangeOp::Insert, "") });
        }
        assert_eq!(direct.order, copied.order);
        let partitions: Vec<(u32, u32)> = direct.batches.iter().map(|b| (b.partition, b.count)).collect();
        // Partition 0's first batch closes once past MAX_BATCH_BYTES (three messages of a third
        // each); partition 1's one stays open.
        assert_eq!(partitions, [(0, 3), (1, 5), (0, 2)]);
        assert_eq!(direct.order, [0, 1, 0, 1, 0, 1, 2, 1, 2, 1]);
        assert_eq!(sealed(direct, 7), sealed(copied, 7));
    }

    #[test]
    fn a_message_stored_before_batches_becomes_a_batch_of_one() {
        // The pre-batch value: `timestamp_ms:i64 op:u8` and the three strings.
        let m = msg(ChangeOp::Insert, r#"{"id":1}"#);
        let mut legacy = 1_700_000_000_000i64.to_be_bytes().to_vec();
        let entry = sealed(MessageBatches::from(vec![m.clone()]), 0).remove(0);
        let len = entry.len() - BATCH_HEADER_LEN;
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
