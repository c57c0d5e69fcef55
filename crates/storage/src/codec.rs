//! Value encodings: the row codec (stored row values) and the memcomparable key codec (primary
//! keys, whose byte order must equal the order of the values they encode).

use crate::error::{Result, StorageError};

/// One column value, as stored. The engine maps Arrow types to these one to one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Unscaled value; precision and scale come from the column type.
    Decimal128(i128),
    Utf8(String),
    Binary(Vec<u8>),
    /// Days since 1970-01-01.
    Date32(i32),
    /// Microseconds since the Unix epoch, UTC.
    TimestampMicros(i64),
}

impl Value {
    fn tag(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Boolean(_) => 1,
            Value::Int16(_) => 2,
            Value::Int32(_) => 3,
            Value::Int64(_) => 4,
            Value::Float32(_) => 5,
            Value::Float64(_) => 6,
            Value::Decimal128(_) => 7,
            Value::Utf8(_) => 8,
            Value::Binary(_) => 9,
            Value::Date32(_) => 10,
            Value::TimestampMicros(_) => 11,
        }
    }
}

/// Encodes a row: per column a tag byte, then a fixed-width big-endian value or a
/// `u32`-length-prefixed byte string.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    for v in values {
        out.push(v.tag());
        match v {
            Value::Null => {}
            Value::Boolean(b) => out.push(u8::from(*b)),
            Value::Int16(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Int32(x) | Value::Date32(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Int64(x) | Value::TimestampMicros(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Float32(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Float64(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Decimal128(x) => out.extend_from_slice(&x.to_be_bytes()),
            Value::Utf8(s) => put_bytes(out, s.as_bytes()),
            Value::Binary(b) => put_bytes(out, b),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Decodes a row written by [`encode_row`].
pub fn decode_row(mut b: &[u8]) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        let v = match tag {
            0 => Value::Null,
            1 => Value::Boolean(take::<1>(&mut b)?[0] != 0),
            2 => Value::Int16(i16::from_be_bytes(take(&mut b)?)),
            3 => Value::Int32(i32::from_be_bytes(take(&mut b)?)),
            4 => Value::Int64(i64::from_be_bytes(take(&mut b)?)),
            5 => Value::Float32(f32::from_be_bytes(take(&mut b)?)),
            6 => Value::Float64(f64::from_be_bytes(take(&mut b)?)),
            7 => Value::Decimal128(i128::from_be_bytes(take(&mut b)?)),
            8 => {
                let bytes = take_bytes(&mut b)?;
                Value::Utf8(String::from_utf8(bytes).map_err(|_| corrupt("row: invalid UTF-8"))?)
            }
            9 => Value::Binary(take_bytes(&mut b)?),
            10 => Value::Date32(i32::from_be_bytes(take(&mut b)?)),
            11 => Value::TimestampMicros(i64::from_be_bytes(take(&mut b)?)),
            _ => return Err(corrupt("row: unknown value tag")),
        };
        values.push(v);
    }
    Ok(values)
}

fn take<const N: usize>(b: &mut &[u8]) -> Result<[u8; N]> {
    if b.len() < N {
        return Err(corrupt("row: truncated value"));
    }
    let (head, rest) = b.split_at(N);
    *b = rest;
    Ok(head.try_into().expect("split at N"))
}

fn take_bytes(b: &mut &[u8]) -> Result<Vec<u8>> {
    let len = u32::from_be_bytes(take(b)?) as usize;
    if b.len() < len {
        return Err(corrupt("row: truncated byte string"));
    }
    let (head, rest) = b.split_at(len);
    *b = rest;
    Ok(head.to_vec())
}

fn corrupt(what: &'static str) -> StorageError {
    StorageError::Corrupt { what }
}

/// Appends the memcomparable encoding of one key value: integers with the sign bit flipped,
/// floats in IEEE total order, byte strings with `00` escaped as `00 FF` and ended by `00 00`.
/// Each encoding is self-delimiting, so a composite key is the concatenation of its parts and
/// compares column by column.
///
/// # Errors
/// A NULL cannot be part of a key.
pub fn encode_key_value(v: &Value, out: &mut Vec<u8>) -> Result<()> {
    match v {
        Value::Null => return Err(StorageError::NullKey),
        Value::Boolean(b) => out.push(u8::from(*b)),
        Value::Int16(x) => out.extend_from_slice(&((*x as u16) ^ 0x8000).to_be_bytes()),
        Value::Int32(x) | Value::Date32(x) => out.extend_from_slice(&((*x as u32) ^ 0x8000_0000).to_be_bytes()),
        Value::Int64(x) | Value::TimestampMicros(x) => out.extend_from_slice(&((*x as u64) ^ (1 << 63)).to_be_bytes()),
        Value::Decimal128(x) => out.extend_from_slice(&((*x as u128) ^ (1 << 127)).to_be_bytes()),
        Value::Float32(x) => {
            let bits = x.to_bits();
            let ordered = if bits >> 31 == 1 { !bits } else { bits | (1 << 31) };
            out.extend_from_slice(&ordered.to_be_bytes())
        }
        Value::Float64(x) => {
            let bits = x.to_bits();
            let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
            out.extend_from_slice(&ordered.to_be_bytes())
        }
        Value::Utf8(s) => escape_bytes(s.as_bytes(), out),
        Value::Binary(b) => escape_bytes(b, out),
    }
    Ok(())
}

fn escape_bytes(b: &[u8], out: &mut Vec<u8>) {
    for &byte in b {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            encode_key_value(v, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn row_round_trips_every_type() {
        let row = vec![
            Value::Null,
            Value::Boolean(true),
            Value::Int16(-3),
            Value::Int32(i32::MIN),
            Value::Int64(i64::MAX),
            Value::Float32(1.5),
            Value::Float64(-0.25),
            Value::Decimal128(-12345678901234567890123),
            Value::Utf8("héllo".into()),
            Value::Binary(vec![0, 1, 255]),
            Value::Date32(19000),
            Value::TimestampMicros(1_700_000_000_000_000),
            Value::Utf8(String::new()),
        ];
        let mut b = Vec::new();
        encode_row(&row, &mut b);
        assert_eq!(decode_row(&b).unwrap(), row);
    }

    #[test]
    fn every_truncation_of_a_row_is_an_error() {
        let row = vec![Value::Int64(7), Value::Utf8("abc".into()), Value::Decimal128(5)];
        let mut b = Vec::new();
        encode_row(&row, &mut b);
        for len in 1..b.len() {
            // A cut exactly between two values decodes to a shorter row, which is not the row.
            if let Ok(v) = decode_row(&b[..len]) {
                assert_ne!(v, row, "len {len}");
            }
        }
        assert!(decode_row(&[42]).is_err());
    }

    #[test]
    fn key_order_matches_value_order() {
        let ordered: Vec<Vec<Value>> = vec![
            vec![Value::Int64(i64::MIN)],
            vec![Value::Int64(-1)],
            vec![Value::Int64(0)],
            vec![Value::Int64(9)],
            vec![Value::Int64(10)],
            vec![Value::Int64(i64::MAX)],
        ];
        for w in ordered.windows(2) {
            assert!(key(&w[0]) < key(&w[1]), "{:?} < {:?}", w[0], w[1]);
        }
        let floats = [f64::NEG_INFINITY, -2.5, -0.0, 0.0, 1e-9, 3.0, f64::INFINITY];
        for w in floats.windows(2) {
            assert!(key(&[Value::Float64(w[0])]) <= key(&[Value::Float64(w[1])]));
        }
        let strings = ["", "a", "a\0", "a\0b", "ab", "b"];
        for w in strings.windows(2) {
            assert!(key(&[Value::Utf8(w[0].into())]) < key(&[Value::Utf8(w[1].into())]));
        }
        // Composite keys compare column by column.
        let a = key(&[Value::Utf8("a".into()), Value::Int32(9)]);
        let b = key(&[Value::Utf8("a".into()), Value::Int32(10)]);
        let c = key(&[Value::Utf8("ab".into()), Value::Int32(0)]);
        assert!(a < b && b < c);
        assert!(key(&[Value::Decimal128(-5)]) < key(&[Value::Decimal128(3)]));
    }

    #[test]
    fn null_is_not_a_key() {
        assert!(encode_key_value(&Value::Null, &mut Vec::new()).is_err());
    }
}
