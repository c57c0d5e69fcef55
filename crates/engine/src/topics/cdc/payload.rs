//! How row values become JSON in message keys and payloads.
//!
//! Integers are JSON numbers with every digit (a 64-bit value is never rounded through a double);
//! DECIMAL is a string with its exact digits and scale (`"12.30"`); REAL and DOUBLE are numbers,
//! except NaN and the infinities, which are the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
//! DATE is `"YYYY-MM-DD"`; TIMESTAMP is RFC 3339 in UTC (`"2026-01-02T03:04:05.123456Z"`);
//! BYTEA is standard base64; NULL is `null`.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat};
use serde_json::{Map, Number, Value as Json};
use topicfusion_storage::Value;

use crate::catalog::types::{ColumnMeta, ColumnType};

/// The JSON form of one value of a column.
pub fn json_value(v: &Value, ty: ColumnType) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int16(x) => Json::from(*x),
        Value::Int32(x) => Json::from(*x),
        Value::Int64(x) => Json::from(*x),
        Value::Float32(x) => float(x.to_string().parse().unwrap_or(f64::NAN), x.is_nan()),
        Value::Float64(x) => float(*x, x.is_nan()),
        Value::Decimal128(x) => {
            let scale = match ty {
                ColumnType::Decimal { scale, .. } => scale,
                _ => 0,
            };
            Json::String(decimal_string(*x, scale))
        }
        Value::Utf8(s) => Json::String(s.clone()),
        Value::Binary(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Date32(days) => Json::String(
            days.checked_add(719_163)
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .map_or_else(|| days.to_string(), |d| d.format("%Y-%m-%d").to_string()),
        ),
        Value::TimestampMicros(us) => Json::String(
            DateTime::from_timestamp_micros(*us)
                .map_or_else(|| us.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        ),
    }
}

fn float(x: f64, nan: bool) -> Json {
    match Number::from_f64(x) {
        Some(n) if !nan => Json::Number(n),
        _ if nan => Json::String("NaN".into()),
        _ if x > 0.0 => Json::String("Infinity".into()),
        _ => Json::String("-Infinity".into()),
    }
}

/// The exact decimal text of an unscaled value.
pub fn decimal_string(unscaled: i128, scale: i8) -> String {
    if scale <= 0 {
        let zeros = "0".repeat((-scale) as usize);
        return if unscaled == 0 { "0".into() } else { format!("{unscaled}{zeros}") };
    }
    let scale = scale as usize;
    let digits = unscaled.unsigned_abs().to_string();
    let digits =
        if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{}{int}.{frac}", if unscaled < 0 { "-" } else { "" })
}

/// A JSON object of the given columns of a row.
pub fn object(columns: &[ColumnMeta], row: &[Value], which: impl Iterator<Item = usize>) -> Map<String, Json> {
    which.map(|i| (columns[i].name.clone(), json_value(&row[i], columns[i].data_type))).collect()
}

/// Appends the JSON text of one value: the same text as `json_value(v, ty).to_string()`,
/// written without building a JSON tree (the write path's hot loop).
pub fn write_value(out: &mut Vec<u8>, v: &Value, ty: ColumnType) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = match v {
        Value::Null => out.write_all(b"null"),
        Value::Boolean(b) => out.write_all(if *b { b"true" } else { b"false" }),
        Value::Int16(x) => out.write_all(itoa::Buffer::new().format(*x).as_bytes()),
        Value::Int32(x) => out.write_all(itoa::Buffer::new().format(*x).as_bytes()),
        Value::Int64(x) => out.write_all(itoa::Buffer::new().format(*x).as_bytes()),
        Value::Float64(x) if x.is_finite() => serde_json::to_writer(&mut *out, x).map_err(std::io::Error::from),
        Value::Utf8(s) => serde_json::to_writer(&mut *out, s.as_str()).map_err(std::io::Error::from),
        other => serde_json::to_writer(&mut *out, &json_value(other, ty)).map_err(std::io::Error::from),
    };
}

/// Writes JSON objects of rows of one table (the text `object(...)` would print), with the
/// columns' `"name":` prefixes escaped once per statement.
pub struct ObjectWriter<'a> {
    columns: &'a [ColumnMeta],
    prefixes: Vec<Vec<u8>>,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(columns: &'a [ColumnMeta]) -> Self {
        Self { columns, prefixes: name_prefixes(columns) }
    }

    /// Appends `{"name":value,...}` of the columns `which` of `row`.
    pub fn write_into(&self, out: &mut Vec<u8>, row: &[Value], which: impl Iterator<Item = usize>) {
        write_object(out, self.columns, &self.prefixes, row, which);
    }
}

/// Each column's escaped `"name":`, the key an object of its values starts with.
pub fn name_prefixes(columns: &[ColumnMeta]) -> Vec<Vec<u8>> {
    columns
        .iter()
        .map(|c| {
            let mut p = serde_json::to_vec(c.name.as_str()).expect("a string serializes");
            p.push(b':');
            p
        })
        .collect()
}

/// Appends `{"name":value,...}` of the columns `which` of `row` (`prefixes`: [`name_prefixes`]
/// of `columns`).
pub fn write_object(
    out: &mut Vec<u8>,
    columns: &[ColumnMeta],
    prefixes: &[Vec<u8>],
    row: &[Value],
    which: impl Iterator<Item = usize>,
) {
    out.push(b'{');
    for (n, i) in which.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&prefixes[i]);
        write_value(out, &row[i], columns[i].data_type);
    }
    out.push(b'}');
}
