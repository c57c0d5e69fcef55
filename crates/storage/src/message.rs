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

/// Set in a batch header's count when the batch is in format 2 (the one written now; see
/// [`MessageBatches`]). Without it the batch is in format 1, as written before. A batch holds at
/// most about [`MAX_BATCH_BYTES`] of messages, so a real count never comes near this bit.
const FORMAT_2: u32 = 1 << 31;

/// Format 2: the low two bits of a message's tag byte are its op.
const TAG_OP: u8 = 0b0011;
/// Format 2: the message's source table follows its tag (else it is the previous message's).
const TAG_TABLE: u8 = 0b0100;
/// Format 2: the message's payload is its key, stored once.
const TAG_PAYLOAD_IS_KEY: u8 = 0b1000;

/// The bytes a message counts for in its partition's size (retention by bytes): what it took
/// stored alone under its own key in format 1 (a 21-byte key, an 8-byte timestamp, the op byte
/// and the three strings with `u32` lengths). So the accounting depends neither on how messages
/// were batched nor on the format, and partition sizes stay valid across the format change.
pub fn message_size(source_table: &str, key: &str, payload: &str) -> u64 {
    accounted_size(source_table.len() + key.len() + payload.len())
}

/// [`message_size`] of a message whose three strings take `strings` bytes.
fn accounted_size(strings: usize) -> u64 {
    (crate::keys::MESSAGE_KEY_LEN + 8 + 1 + 12 + strings) as u64
}

/// A batch is closed once its value reaches this size (RocksDB's block size here): a read
/// that starts inside a batch hops over at most about a block of messages, and a bulk
/// INSERT still writes one entry per ~100 small messages.
pub const MAX_BATCH_BYTES: usize = 16 * 1024;

/// The messages of one commit, built in their stored form: per partition, batch values (as
/// Kafka's record batches) of up to [`MAX_BATCH_BYTES`], stored under the key of their last
/// offset (so that a forward seek to an offset lands on the batch holding it). The router writes
/// each message's JSON straight into them, outside the commit lock; the commit path only fills
/// in each header and key. Value layout (format 2): `timestamp_ms:i64 count:u32` (the count with
/// its top bit set), then per message a tag byte (op in bits 0-1; bit 2: the source table
/// follows, else it is the previous message's; bit 3: the payload is the key), then the source
/// table if flagged, the key, and the payload unless it is the key, each as a LEB128 length and
/// UTF-8 bytes. So a batch names its source table once, and a `payload = 'key'` message stores
/// its key once: the bench's CONSUME messages take 16 bytes instead of 49 in format 1, where
/// every message had `op:u8` and the three strings with `u32` lengths (still read).
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
    /// Where the source table last written into `value` lies in it (empty before the first).
    table: std::ops::Range<usize>,
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
                self.batches.push(PendingBatch { topic_id, partition, count: 0, bytes: 0, value, table: 0..0 });
                match open {
                    Some(entry) => entry.2 = i,
                    None => self.open.push((topic_id, partition, i)),
                }
                i
            }
        };
        let batch = &mut self.batches[index];
        let out = &mut batch.value;
        let tag_at = out.len();
        let same_table = batch.count > 0 && out[batch.table.clone()] == *source_table.as_bytes();
        out.push(op.code() | if same_table { 0 } else { TAG_TABLE });
        if !same_table {
            batch.table = write_string(out, |out| out.extend_from_slice(source_table.as_bytes()));
        }
        let key = write_string(out, key);
        let payload = write_string(out, payload);
        let (key_len, payload_len) = (key.len(), payload.len());
        if out[payload.clone()] == out[key] {
            out.truncate(payload.start - varint_len(payload_len as u64));
            out[tag_at] |= TAG_PAYLOAD_IS_KEY;
        }
        batch.bytes += accounted_size(source_table.len() + key_len + payload_len);
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

/// Appends the LEB128 length of the bytes `write` appends, then them; returns where they lie.
/// The bytes are written first behind a one-byte length, which a longer length then shifts.
fn write_string(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> std::ops::Range<usize> {
    let at = out.len();
    out.push(0);
    write(out);
    let len = (out.len() - at - 1) as u64;
    if len < 0x80 {
        out[at] = len as u8;
        return at + 1..out.len();
    }
    let mut prefix = [0u8; 10];
    let n = encode_varint(len, &mut prefix);
    out.splice(at..at + 1, prefix[..n].iter().copied());
    at + n..out.len()
}

/// Writes `v` as LEB128 into `out`; returns the bytes used.
fn encode_varint(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

/// Bytes of `v` as LEB128.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
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

/// Fills in the header of a batch [`MessageBatches`] built: its commit time and message count.
pub fn finish_batch(value: &mut [u8], timestamp_ms: i64, count: u32) {
    value[..8].copy_from_slice(&timestamp_ms.to_be_bytes());
    value[8..BATCH_HEADER_LEN].copy_from_slice(&(count | FORMAT_2).to_be_bytes());
}

/// One message of a stored batch, borrowed from the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    pub op: ChangeOp,
    pub source_table: &'a str,
    pub key: &'a str,
    pub payload: &'a str,
}

impl Entry<'_> {
    /// What the message counts for in its partition's size ([`message_size`]).
    pub fn size(&self) -> u64 {
        message_size(self.source_table, self.key, self.payload)
    }
}

/// A decoded batch value: the commit time and every message, checked against the count.
pub fn decode_batch(value: &[u8]) -> Result<(i64, Vec<Entry<'_>>)> {
    let (timestamp_ms, count, mut reader) = BatchReader::new(value)?;
    // A message takes at least 2 bytes: a corrupt count cannot make this allocate more than
    // the value could hold.
    let mut entries = Vec::with_capacity((count as usize).min(value.len() / 2));
    while let Some(e) = reader.next_entry()? {
        entries.push(e);
    }
    if !reader.rest.is_empty() {
        return Err(StorageError::Corrupt { what: "message batch: bytes after its messages" });
    }
    Ok((timestamp_ms, entries))
}

/// A message's bytes as stored, before UTF-8 checks.
struct RawEntry<'a> {
    op: ChangeOp,
    source_table: &'a [u8],
    key: &'a [u8],
    payload: &'a [u8],
}

/// Reads a batch value's messages one at a time, so that a read decodes only the messages it
/// returns: the header is checked first, each message when it is reached (lengths in bounds,
/// UTF-8), and [`BatchReader::skip`] hops over messages by their lengths alone.
pub struct BatchReader<'a> {
    rest: &'a [u8],
    /// Messages not yet read or skipped.
    left: u32,
    format_2: bool,
    /// Format 2: the source table of the last message read or skipped (not yet UTF-8 checked).
    table: Option<&'a [u8]>,
}

impl<'a> BatchReader<'a> {
    /// The batch's commit time, its message count and a reader at its first message.
    pub fn new(value: &'a [u8]) -> Result<(i64, u32, Self)> {
        let (timestamp_ms, count, format_2) = read_header(value)?;
        if count == 0 {
            return Err(StorageError::Corrupt { what: "message batch: empty" });
        }
        let reader = Self { rest: &value[BATCH_HEADER_LEN..], left: count, format_2, table: None };
        Ok((timestamp_ms, count, reader))
    }

    /// The next message, `None` after the last one.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let RawEntry { op, source_table, key, payload } = self.take_message()?;
        let utf8 = |b| std::str::from_utf8(b).map_err(|_| StorageError::Corrupt { what: "message: invalid UTF-8" });
        let key = utf8(key)?;
        // A payload stored as the key is the same bytes: checked once.
        let payload = if std::ptr::eq(payload, key.as_bytes()) { key } else { utf8(payload)? };
        Ok(Some(Entry { op, source_table: utf8(source_table)?, key, payload }))
    }

    /// Hops over the next `n` messages (at most the ones left) without decoding them.
    pub fn skip(&mut self, n: u64) -> Result<()> {
        for _ in 0..n.min(u64::from(self.left)) {
            self.take_message()?;
        }
        Ok(())
    }

    /// The next message, its lengths checked but not its UTF-8.
    fn take_message(&mut self) -> Result<RawEntry<'a>> {
        let tag = self.take(1)?[0];
        let message = if self.format_2 {
            if tag & !(TAG_OP | TAG_TABLE | TAG_PAYLOAD_IS_KEY) != 0 {
                return Err(StorageError::Corrupt { what: "message: unknown tag bits" });
            }
            if tag & TAG_TABLE != 0 {
                self.table = Some(self.take_string()?);
            }
            let table = self.table.ok_or(StorageError::Corrupt { what: "message batch: no source table" })?;
            let key = self.take_string()?;
            let payload = if tag & TAG_PAYLOAD_IS_KEY != 0 { key } else { self.take_string()? };
            RawEntry { op: ChangeOp::from_code(tag & TAG_OP)?, source_table: table, key, payload }
        } else {
            let op = ChangeOp::from_code(tag)?;
            let (source_table, key, payload) = (self.take_string_v1()?, self.take_string_v1()?, self.take_string_v1()?);
            RawEntry { op, source_table, key, payload }
        };
        self.left -= 1;
        Ok(message)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(StorageError::Corrupt { what: "message batch: truncated" });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Format 2: a LEB128 length and that many bytes.
    fn take_string(&mut self) -> Result<&'a [u8]> {
        let mut len = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            len |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return self.take(usize::try_from(len).unwrap_or(usize::MAX));
            }
        }
        Err(StorageError::Corrupt { what: "message: length too long" })
    }

    /// Format 1: `len:u32` and that many bytes.
    fn take_string_v1(&mut self) -> Result<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
}

/// Reads only the commit time and message count of a stored batch.
pub fn decode_batch_header(value: &[u8]) -> Result<(i64, u32)> {
    let (timestamp_ms, count, _) = read_header(value)?;
    Ok((timestamp_ms, count))
}

/// A batch's commit time, message count and whether it is in format 2.
fn read_header(value: &[u8]) -> Result<(i64, u32, bool)> {
    let header = value.get(..BATCH_HEADER_LEN).ok_or(StorageError::Corrupt { what: "message batch: truncated" })?;
    let timestamp_ms = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(header[8..].try_into().expect("4 bytes"));
    Ok((timestamp_ms, count & !FORMAT_2, count & FORMAT_2 != 0))
}

/// The batch of one message holding a message stored before batches (`timestamp_ms:i64 op:u8`
/// and the three strings): the same bytes with the count inserted after the timestamp, which is
/// a format-1 batch.
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

/// A format-1 batch of `messages` (as written before format 2), for tests of old data.
#[cfg(test)]
pub(crate) fn format_1_batch(messages: &[NewMessage], timestamp_ms: i64) -> Vec<u8> {
    let mut out = timestamp_ms.to_be_bytes().to_vec();
    out.extend_from_slice(&(messages.len() as u32).to_be_bytes());
    for m in messages {
        out.push(m.op.code());
        for s in [&*m.source_table, &m.key, &m.payload] {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
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

    fn fields<'a>(e: &Entry<'a>) -> (ChangeOp, &'a str, &'a str, &'a str) {
        (e.op, e.source_table, e.key, e.payload)
    }

    #[test]
    fn batches_round_trip_and_truncations_fail() {
        let messages = [
            msg(ChangeOp::Update, r#"{"id":1,"s":"é"}"#),
            msg(ChangeOp::Delete, ""),
            msg(ChangeOp::Insert, r#"{"id":1}"#),
            NewMessage { source_table: "app.other".into(), ..msg(ChangeOp::Insert, "{}") },
            msg(ChangeOp::Insert, "{}"),
        ];
        let batches = MessageBatches::from(messages.to_vec());
        assert_eq!((batches.len(), batches.batches.len()), (5, 1));
        let sizes: Vec<u64> = messages.iter().map(|m| MessageBatches::from(vec![m.clone()]).batches[0].bytes).collect();
        assert_eq!(batches.batches[0].bytes, sizes.iter().sum::<u64>());
        let mut v = sealed(batches, 1_700_000_000_123).remove(0);
        let (ts, entries) = decode_batch(&v).unwrap();
        assert_eq!(ts, 1_700_000_000_123);
        assert_eq!(decode_batch_header(&v).unwrap(), (ts, 5));
        assert_eq!(entries.len(), 5);
        for ((e, m), size) in entries.iter().zip(&messages).zip(&sizes) {
            assert_eq!(fields(e), (m.op, &*m.source_table, m.key.as_str(), m.payload.as_str()));
            assert_eq!(e.size(), *size);
        }
        // The size is the format-1 size: key, timestamp, op, three u32 lengths and the strings.
        assert_eq!(sizes[0], (21 + 8 + 1 + 12 + "app.orders".len() + 8 + r#"{"id":1,"s":"é"}"#.len()) as u64);
        // Format 2 names a source table only when it changes, and stores a payload equal to the
        // key once: tag, table, key, payload; tag, key, payload; tag, key (payload = key);
        // tag, the other table, key, payload; tag, the first table again, key, payload.
        let lens = [1 + 11 + 9 + 18, 1 + 9 + 1, 1 + 9, 1 + 10 + 9 + 3, 1 + 11 + 9 + 3];
        assert_eq!(v.len(), BATCH_HEADER_LEN + lens.iter().sum::<usize>());
        let back = entries[0].to_message(3, 1, 42, ts);
        assert_eq!((back.offset, back.payload.as_str()), (42, messages[0].payload.as_str()));
        for len in 0..v.len() {
            assert!(decode_batch(&v[..len]).is_err(), "len {len}");
        }
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err(), "a byte after the last message");
        for (count, what) in [(6, "a count above the messages"), (0, "an empty batch"), (u32::MAX >> 1, "a huge count")]
        {
            finish_batch(&mut v, ts, count);
            assert!(decode_batch(&v).is_err(), "{what}: an error, not a panic or a huge allocation");
        }
    }

    #[test]
    fn lengths_round_trip_across_the_varint_boundaries() {
        for len in [0, 1, 127, 128, 129, 16_383, 16_384, 70_000, (1 << 21) + 5] {
            let payload = "p".repeat(len);
            let key = "k".repeat(len.min(200));
            let m = NewMessage { key: key.clone(), ..msg(ChangeOp::Insert, &payload) };
            // A payload past MAX_BATCH_BYTES closes its batch: two batches of one then.
            let values = sealed(MessageBatches::from(vec![m.clone(), m]), 5);
            let entries: Vec<Entry<'_>> = values.iter().flat_map(|v| decode_batch(v).unwrap().1).collect();
            assert_eq!(entries.len(), 2);
            for e in entries {
                assert_eq!((e.key, e.payload.len(), e.payload), (key.as_str(), len, payload.as_str()), "len {len}");
            }
            let (_, count, mut reader) = BatchReader::new(&values[0]).unwrap();
            reader.skip(u64::from(count) - 1).unwrap();
            assert_eq!(reader.next_entry().unwrap().map(|e| e.payload.len()), Some(len));
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0; 10];
            let n = encode_varint(v, &mut buf);
            assert_eq!(n, varint_len(v), "{v}");
        }
    }

    #[test]
    fn corrupt_format_2_messages_are_errors() {
        let v = sealed(MessageBatches::from(vec![msg(ChangeOp::Insert, "{}")]), 1).remove(0);
        const TAG_AT: usize = BATCH_HEADER_LEN;
        let corrupt = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bad = v.clone();
            edit(&mut bad);
            decode_batch(&bad).err()
        };
        assert!(corrupt(&|_| ()).is_none());
        type Edit = dyn Fn(&mut Vec<u8>);
        let cases: [(&str, &Edit); 5] = [
            ("unknown tag bits", &|b| b[TAG_AT] |= 0x10),
            ("no source table in the first message", &|b| b[TAG_AT] &= !TAG_TABLE),
            ("op 0", &|b| b[TAG_AT] &= !TAG_OP),
            ("a length that never ends", &|b| {
                b.truncate(TAG_AT + 1);
                b.extend_from_slice(&[0xFF; 11]);
            }),
            ("a length past the value", &|b| {
                b.truncate(TAG_AT + 1);
                b.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, b'x']);
            }),
        ];
        for (what, edit) in cases {
            assert!(matches!(corrupt(edit), Some(StorageError::Corrupt { .. })), "{what}");
        }
    }

    #[test]
    fn format_1_batches_written_before_are_still_read() {
        let messages = [
            msg(ChangeOp::Update, r#"{"id":1,"s":"é"}"#),
            NewMessage { source_table: "app.other".into(), ..msg(ChangeOp::Delete, "") },
            msg(ChangeOp::Insert, r#"{"id":1}"#),
        ];
        let old = format_1_batch(&messages, 77);
        let new = sealed(MessageBatches::from(messages.to_vec()), 77).remove(0);
        assert!(new.len() < old.len());
        let (old_ts, old_entries) = decode_batch(&old).unwrap();
        assert_eq!((old_ts, decode_batch_header(&old).unwrap()), (77, (77, 3)));
        assert_eq!(old_entries, decode_batch(&new).unwrap().1);
        let sizes: Vec<u64> = old_entries.iter().map(Entry::size).collect();
        let entry_lens: Vec<usize> =
            messages.iter().map(|m| format_1_batch(std::slice::from_ref(m), 0).len() - BATCH_HEADER_LEN).collect();
        assert_eq!(sizes, entry_lens.iter().map(|l| (21 + 8 + l) as u64).collect::<Vec<_>>());
        let (_, _, mut reader) = BatchReader::new(&old).unwrap();
        reader.skip(2).unwrap();
        assert_eq!(reader.next_entry().unwrap(), Some(old_entries[2]));
        assert!(decode_batch(&old[..old.len() - 1]).is_err());
    }

    #[test]
    fn a_reader_hops_over_messages_and_decodes_only_those_it_reaches() {
        // Every other message names another table, so hops cross table changes.
        let messages: Vec<NewMessage> = (0..5)
            .map(|i| NewMessage {
                source_table: if i % 2 == 0 { "app.orders" } else { "app.lines" }.into(),
                ..msg(ChangeOp::Insert, &format!("{{\"n\":{i}}}"))
            })
            .collect();
        let v = sealed(MessageBatches::from(messages.clone()), 9).remove(0);
        let (_, all) = decode_batch(&v).unwrap();
        for (e, m) in all.iter().zip(&messages) {
            assert_eq!(e.source_table, &*m.source_table);
        }
        let (ts, count, mut reader) = BatchReader::new(&v).unwrap();
        assert_eq!((ts, count), (9, 5));
        reader.skip(3).unwrap();
        assert_eq!(reader.next_entry().unwrap(), Some(all[3]));
        reader.skip(10).unwrap();
        assert_eq!(reader.next_entry().unwrap(), None);
        // A value cut inside the third message: hopping over two is fine, over three is an error.
        let two = sealed(MessageBatches::from(messages[..2].to_vec()), 9).remove(0).len();
        let cut = &v[..two + 3];
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
        // So is one in a source table that a later message inherits.
        let mut bad =
            sealed(MessageBatches::from(vec![msg(ChangeOp::Insert, "1"), msg(ChangeOp::Insert, "2")]), 9).remove(0);
        bad[BATCH_HEADER_LEN + 2] = 0xFF;
        let (_, _, mut reader) = BatchReader::new(&bad).unwrap();
        reader.skip(1).unwrap();
        assert!(reader.next_entry().is_err());
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
        let values = sealed(direct, 7);
        assert_eq!(values, sealed(copied, 7));
        // Each batch names its source table, also one that starts after another closed.
        for v in &values {
            assert!(decode_batch(v).unwrap().1.iter().all(|e| e.source_table == "app.orders"));
        }
    }

    #[test]
    fn a_message_stored_before_batches_becomes_a_batch_of_one() {
        // The pre-batch value: `timestamp_ms:i64 op:u8` and the three strings.
        let m = msg(ChangeOp::Insert, r#"{"id":1}"#);
        let mut legacy = 1_700_000_000_000i64.to_be_bytes().to_vec();
        legacy.extend_from_slice(&format_1_batch(std::slice::from_ref(&m), 0)[BATCH_HEADER_LEN..]);
        let batch = batch_of_legacy_message(&legacy).unwrap();
        let (ts, entries) = decode_batch(&batch).unwrap();
        assert_eq!((ts, entries.len(), entries[0].payload), (1_700_000_000_000, 1, m.payload.as_str()));
        // The accounting is the old per-key size: key plus value.
        assert_eq!(entries[0].size(), (21 + legacy.len()) as u64);
        assert!(batch_of_legacy_message(&legacy[..legacy.len() - 1]).is_err());
        assert!(batch_of_legacy_message(&legacy[..7]).is_err());
    }
}
