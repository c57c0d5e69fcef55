//! COPY's data formats on the wire: decoding what a client sends in `COPY ... FROM STDIN`
//! ([`CopyDecoder`]: PostgreSQL's text, csv and binary formats, in chunks that split rows
//! anywhere) and encoding the rows of `COPY ... TO STDOUT` ([`CopyEncoder`]), one CopyData
//! message per row as PostgreSQL sends them.

use std::sync::Arc;

use arrow_pg::encoder::Encoder;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use postgres_types::{IsNull, ToSql};
use topicfusion_engine::catalog::types::ColumnType;
use topicfusion_engine::write::copy::CopyRows;
use topicfusion_engine::{CopyFormat, CopyOptions};
use topicfusion_storage::Value;

use super::encode::{encode_cell, wire_fields};

/// The signature that starts PostgreSQL's binary COPY format.
const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The most bytes one row may take while it is incomplete (a csv field with an unclosed quote
/// would otherwise buffer everything the client sends).
pub const MAX_ROW_BYTES: usize = 64 << 20;

/// Rows handed to the engine at a time: at most this many rows, and no more than about
/// [`BYTES_PER_WRITE`] of their data (memory per write stays bounded whatever the rows' size).
const ROWS_PER_WRITE: usize = 4096;
const BYTES_PER_WRITE: usize = 4 << 20;

fn bad_copy(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22P04".into(), message)))
}

/// Reads a client's COPY data into rows.
pub struct CopyDecoder {
    format: CopyFormat,
    delimiter: u8,
    null: Vec<u8>,
    quote: u8,
    escape: u8,
    header_pending: bool,
    types: Vec<ColumnType>,
    /// Data not yet handed out: `buf[consumed..]` (the decoded prefix is dropped once it is at
    /// least half the buffer, so a large message costs linear time, not one move per batch).
    buf: Vec<u8>,
    consumed: usize,
    /// Csv: where the scan for the end of the current row resumes, and whether it is inside
    /// quotes there.
    scan: usize,
    in_quotes: bool,
    /// Binary: whether the header has been read, and whether the trailer has.
    binary_started: bool,
    finished: bool,
    /// The number of the line (row) being read, for error messages.
    line: u64,
    text_rows: Vec<Vec<Option<String>>>,
    value_rows: Vec<Vec<Value>>,
    /// The input bytes of the rows not yet handed out.
    pending_bytes: usize,
}

impl CopyDecoder {
    pub fn new(format: CopyFormat, options: &CopyOptions, types: Vec<ColumnType>) -> Self {
        Self {
            format,
            delimiter: options.delimiter(format) as u8,
            null: options.null(format).as_bytes().to_vec(),
            quote: options.quote() as u8,
            escape: options.escape() as u8,
            header_pending: options.header() && format != CopyFormat::Binary,
            types,
            buf: Vec::new(),
            consumed: 0,
            scan: 0,
            in_quotes: false,
            binary_started: false,
            finished: false,
            line: 0,
            text_rows: Vec::new(),
            value_rows: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Takes in a chunk of data (one CopyData message); then [`CopyDecoder::next_batch`] hands
    /// out the rows it completes.
    pub fn push(&mut self, data: &[u8]) {
        if !self.finished {
            // (PostgreSQL ignores what follows the end-of-data marker.)
            self.buf.extend_from_slice(data);
        }
    }

    /// The next batch of rows (a write's worth: [`ROWS_PER_WRITE`] rows or about
    /// [`BYTES_PER_WRITE`] of them), decoded from the data pushed so far; `None` once what is
    /// left is less than a batch (kept for the next data, or for [`CopyDecoder::finish`]). Rows
    /// are decoded a batch at a time, so one large message never becomes all its rows at once.
    pub fn next_batch(&mut self) -> PgWireResult<Option<CopyRows>> {
        if !self.finished {
            match self.format {
                CopyFormat::Binary => self.binary_rows()?,
                _ => self.text_rows()?,
            }
        }
        if !self.batch_full() && !self.finished && self.buf.len() - self.consumed > MAX_ROW_BYTES {
            return Err(bad_copy(format!("a COPY row is longer than {} MiB", MAX_ROW_BYTES >> 20)));
        }
        Ok(self.take(false).pop())
    }

    /// Drops the decoded prefix of the buffer once it is at least half of it.
    fn compact(&mut self) {
        if self.consumed > 0 && self.consumed >= self.buf.len() / 2 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    fn batch_full(&self) -> bool {
        self.text_rows.len() + self.value_rows.len() >= ROWS_PER_WRITE || self.pending_bytes >= BYTES_PER_WRITE
    }

    /// The end of the data (CopyDone): the last row, even without a final newline.
    pub fn finish(&mut self) -> PgWireResult<Vec<CopyRows>> {
        if !self.finished && self.buf.len() > self.consumed {
            match self.format {
                CopyFormat::Binary => return Err(bad_copy("the binary COPY data ends in the middle of a row".into())),
                _ => {
                    if self.in_quotes {
                        return Err(bad_copy(format!("unterminated CSV quoted field in line {}", self.line + 1)));
                    }
                    let line = self.buf.split_off(self.consumed);
                    self.buf.clear();
                    self.consumed = 0;
                    self.row(&line)?;
                }
            }
        }
        Ok(self.take(true))
    }

    fn take(&mut self, all: bool) -> Vec<CopyRows> {
        let mut out = Vec::new();
        let full = |rows: usize| rows >= ROWS_PER_WRITE || (rows > 0 && self.pending_bytes >= BYTES_PER_WRITE);
        if full(self.text_rows.len()) || (all && !self.text_rows.is_empty()) {
            out.push(CopyRows::Text(std::mem::take(&mut self.text_rows)));
        }
        if full(self.value_rows.len()) || (all && !self.value_rows.is_empty()) {
            out.push(CopyRows::Values(std::mem::take(&mut self.value_rows)));
        }
        if !out.is_empty() {
            self.pending_bytes = 0;
        }
        out
    }

    /// Text and csv: every complete line (a csv line ends at a newline outside quotes).
    fn text_rows(&mut self) -> PgWireResult<()> {
        let mut start = self.consumed;
        let mut i = self.consumed + self.scan;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.format == CopyFormat::Csv {
                if self.in_quotes {
                    if b == self.escape && self.escape != self.quote {
                        match self.buf.get(i + 1) {
                            // The escaped character is in the next chunk: resume here then.
                            None => break,
                            Some(&next) if next == self.quote || next == self.escape => {
                                i += 2;
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    if b == self.quote {
                        self.in_quotes = false;
                    }
                    i += 1;
                    continue;
                }
                if b == self.quote {
                    self.in_quotes = true;
                    i += 1;
                    continue;
                }
            }
            if b == b'\n' {
                let mut line = &self.buf[start..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let line = line.to_vec();
                start = i + 1;
                i += 1;
                self.row(&line)?;
                if self.finished {
                    self.buf.clear();
                    self.consumed = 0;
                    self.scan = 0;
                    return Ok(());
                }
                if self.batch_full() {
                    break;
                }
                continue;
            }
            i += 1;
        }
        self.consumed = start;
        self.scan = i - start;
        self.compact();
        Ok(())
    }

    /// One line of text or csv.
    fn row(&mut self, line: &[u8]) -> PgWireResult<()> {
        self.line += 1;
        if line == b"\\." {
            self.finished = true;
            return Ok(());
        }
        if std::mem::take(&mut self.header_pending) {
            return Ok(());
        }
        let fields = match self.format {
            CopyFormat::Csv => self.csv_fields(line)?,
            _ => self.text_fields(line)?,
        };
        if fields.len() != self.types.len() {
            let what = if fields.len() > self.types.len() {
                "extra data after last expected column"
            } else {
                "missing data for a column"
            };
            return Err(bad_copy(format!("{what} in line {} (COPY expects {} columns)", self.line, self.types.len())));
        }
        // The input and what each field costs in memory besides it.
        self.pending_bytes += line.len() + 32 * (fields.len() + 1);
        self.text_rows.push(fields);
        Ok(())
    }

    /// PostgreSQL's text format: delimiter-separated, backslash escapes, the NULL text as is.
    fn text_fields(&self, line: &[u8]) -> PgWireResult<Vec<Option<String>>> {
        let mut fields = Vec::with_capacity(self.types.len());
        for raw in split_unescaped(line, self.delimiter, self.types.len() + 1) {
            if raw == self.null.as_slice() {
                fields.push(None);
                continue;
            }
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                let b = raw[i];
                if b != b'\\' || i + 1 == raw.len() {
                    out.push(b);
                    i += 1;
                    continue;
                }
                let c = raw[i + 1];
                i += 2;
                match c {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = (c - b'0') as u32;
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + (d - b'0') as u32;
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                        let mut v = 0u32;
                        for _ in 0..2 {
                            match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    i += 1;
                                }
                                None => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            }
            let text = String::from_utf8(out)
                .map_err(|_| bad_copy(format!("invalid UTF-8 in line {} of the COPY data", self.line)))?;
            fields.push(Some(text));
        }
        Ok(fields)
    }

    /// Csv: quoted fields (the quote doubled, or escaped, inside), an unquoted field equal to
    /// the NULL text is NULL, a quoted one never is.
    fn csv_fields(&self, line: &[u8]) -> PgWireResult<Vec<Option<String>>> {
        let mut fields = Vec::with_capacity(self.types.len());
        let mut i = 0;
        loop {
            let mut value = Vec::new();
            let mut quoted = false;
            let mut raw_unquoted = Vec::new();
            while i < line.len() && line[i] != self.delimiter {
                if line[i] == self.quote {
                    quoted = true;
                    i += 1;
                    loop {
                        match line.get(i) {
                            None => {
                                return Err(bad_copy(format!("unterminated CSV quoted field in line {}", self.line)));
                            }
                            // As PostgreSQL: inside quotes the escape character makes a quote
                            // or the escape character itself literal.
                            Some(&b)
                                if b == self.escape
                                    && line.get(i + 1).is_some_and(|&n| n == self.quote || n == self.escape) =>
                            {
                                value.push(line[i + 1]);
                                i += 2;
                            }
                            Some(&b) if b == self.quote => {
                                i += 1;
                                break;
                            }
                            Some(&b) => {
                                value.push(b);
                                i += 1;
                            }
                        }
                    }
                } else {
                    value.push(line[i]);
                    raw_unquoted.push(line[i]);
                    i += 1;
                }
            }
            let field = if !quoted && raw_unquoted == self.null {
                None
            } else {
                Some(
                    String::from_utf8(value)
                        .map_err(|_| bad_copy(format!("invalid UTF-8 in line {} of the COPY data", self.line)))?,
                )
            };
            fields.push(field);
            // More fields than columns is an error already: stop splitting the rest.
            if i >= line.len() || fields.len() > self.types.len() {
                break;
            }
            i += 1; // the delimiter
        }
        Ok(fields)
    }

    /// Binary: the header, then tuples until the trailer.
    fn binary_rows(&mut self) -> PgWireResult<()> {
        let mut pos = self.consumed;
        if !self.binary_started {
            if self.buf.len() < BINARY_SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buf[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
                return Err(bad_copy("COPY file signature not recognized (binary format)".into()));
            }
            let at = BINARY_SIGNATURE.len();
            let ext = i32::from_be_bytes(self.buf[at + 4..at + 8].try_into().expect("4 bytes"));
            if ext < 0 {
                return Err(bad_copy("invalid binary COPY header (extension length)".into()));
            }
            let end = at + 8 + ext as usize;
            if self.buf.len() < end {
                return Ok(());
            }
            pos = end;
            self.binary_started = true;
        }
        while let Some(count) = self.buf.get(pos..pos + 2) {
            let count = i16::from_be_bytes(count.try_into().expect("2 bytes"));
            if count == -1 {
                self.finished = true;
                pos += 2;
                break;
            }
            if count as usize != self.types.len() {
                return Err(bad_copy(format!(
                    "a binary COPY row has {count} fields, the COPY expects {}",
                    self.types.len()
                )));
            }
            // Is the whole tuple here?
            let mut end = pos + 2;
            let mut fields = Vec::with_capacity(self.types.len());
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = self.buf.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
                end += 4;
                if len < 0 {
                    fields.push(None);
                    continue;
                }
                if self.buf.len() < end + len as usize {
                    complete = false;
                    break;
                }
                fields.push(Some(end..end + len as usize));
                end += len as usize;
            }
            if !complete {
                break;
            }
            self.line += 1;
            let row = fields
                .iter()
                .zip(&self.types)
                .enumerate()
                .map(|(i, (f, ty))| match f {
                    None => Ok(Value::Null),
                    Some(r) => binary_value(&self.buf[r.clone()], *ty)
                        .map_err(|e| bad_copy(format!("row {}, column {}: {e}", self.line, i + 1))),
                })
                .collect::<PgWireResult<Vec<_>>>()?;
            self.value_rows.push(row);
            self.pending_bytes += end - pos + 32 * (self.types.len() + 1);
            pos = end;
            if self.batch_full() {
                break;
            }
        }
        self.consumed = pos;
        self.compact();
        Ok(())
    }
}

/// Splits a text-format line at unescaped delimiters.
fn split_unescaped(line: &[u8], delimiter: u8, max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < line.len() && out.len() < max {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == delimiter {
            out.push(&line[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    out.push(&line[start.min(line.len())..]);
    out
}

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// One value of the binary format, as the column's type.
fn binary_value(b: &[u8], ty: ColumnType) -> Result<Value, String> {
    let int = || -> Result<i64, String> {
        match b.len() {
            2 => Ok(i16::from_be_bytes(b.try_into().expect("2")) as i64),
            4 => Ok(i32::from_be_bytes(b.try_into().expect("4")) as i64),
            8 => Ok(i64::from_be_bytes(b.try_into().expect("8"))),
            n => Err(format!("an integer of {n} bytes")),
        }
    };
    let out_of_range = |v: i64, what: &str| format!("value {v} is out of range for type {what}");
    Ok(match ty {
        ColumnType::SmallInt => {
            let v = int()?;
            Value::Int16(i16::try_from(v).map_err(|_| out_of_range(v, "smallint"))?)
        }
        ColumnType::Int => {
            let v = int()?;
            Value::Int32(i32::try_from(v).map_err(|_| out_of_range(v, "integer"))?)
        }
        ColumnType::BigInt => Value::Int64(int()?),
        ColumnType::Real | ColumnType::Double => {
            let v = match b.len() {
                4 => f32::from_be_bytes(b.try_into().expect("4")) as f64,
                8 => f64::from_be_bytes(b.try_into().expect("8")),
                n => return Err(format!("a float of {n} bytes")),
            };
            if ty == ColumnType::Real { Value::Float32(v as f32) } else { Value::Float64(v) }
        }
        ColumnType::Boolean => match b {
            [v] => Value::Boolean(*v != 0),
            _ => return Err("a boolean of more than one byte".into()),
        },
        ColumnType::Text => Value::Utf8(String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8".to_owned())?),
        ColumnType::Bytea => Value::Binary(b.to_vec()),
        ColumnType::Date => {
            let days = i32::from_be_bytes(b.try_into().map_err(|_| "a date of other than 4 bytes".to_owned())?);
            let days = i32::try_from(days as i64 + PG_EPOCH_DAYS).map_err(|_| "date out of range".to_owned())?;
            Value::Date32(days)
        }
        ColumnType::Timestamp => {
            let micros = i64::from_be_bytes(b.try_into().map_err(|_| "a timestamp of other than 8 bytes".to_owned())?);
            Value::TimestampMicros(
                micros
                    .checked_add(PG_EPOCH_DAYS * 86_400_000_000)
                    .ok_or_else(|| "timestamp out of range".to_owned())?,
            )
        }
        ColumnType::Decimal { precision, scale } => Value::Decimal128(binary_numeric(b, precision, scale)?),
    })
}

/// PostgreSQL's binary numeric as an unscaled value of `scale` (exact, or an error).
pub fn binary_numeric(b: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    if b.len() < 8 {
        return Err("a numeric shorter than its header".into());
    }
    let be16 = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let (ndigits, weight, sign) = (be16(0), be16(2), be16(4) as u16);
    if sign == 0xC000 {
        return Err("NaN does not fit a DECIMAL column".into());
    }
    if sign == 0xD000 || sign == 0xF000 {
        return Err("Infinity does not fit a DECIMAL column".into());
    }
    if ndigits < 0 || b.len() != 8 + 2 * ndigits as usize {
        return Err("a numeric whose length does not match its digits".into());
    }
    // value = sum(digit_i * 10000^(weight - i)); scaled by 10^scale, rounded half away
    // from zero at the column's scale as PostgreSQL (and the text form) do.
    let overflow = || "numeric out of range".to_owned();
    let mut acc: i128 = 0;
    let mut round_up = false;
    let pow10 = |e: i64| -> Option<i128> { u32::try_from(e).ok().and_then(|e| 10i128.checked_pow(e)) };
    for i in 0..ndigits as usize {
        let digit = be16(8 + 2 * i) as i128;
        if !(0..10_000).contains(&digit) {
            return Err("a numeric digit out of range".into());
        }
        let exp = 4 * (weight as i64 - i as i64) + scale as i64;
        if exp >= 0 {
            let term = pow10(exp).and_then(|p| digit.checked_mul(p)).ok_or_else(overflow)?;
            acc = acc.checked_add(term).ok_or_else(overflow)?;
        } else if exp >= -4 {
            // This group holds the first digit below the scale: it decides the rounding.
            let p = pow10(-exp).expect("at most 10^4");
            acc = acc.checked_add(digit / p).ok_or_else(overflow)?;
            round_up = (digit % p) / (p / 10) >= 5;
        }
    }
    if round_up {
        acc = acc.checked_add(1).ok_or_else(overflow)?;
    }
    let limit = 10i128.checked_pow(precision as u32).unwrap_or(i128::MAX);
    if acc >= limit {
        return Err(format!(
            "numeric field overflow: a value of more than {} integer digits",
            precision as i16 - scale as i16
        ));
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// PostgreSQL's binary numeric as decimal text of any size (`-12.340`, `NaN`, `Infinity`).
pub fn numeric_text(b: &[u8]) -> Result<String, String> {
    if b.len() < 8 {
        return Err("a numeric shorter than its header".into());
    }
    let be16 = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let (ndigits, weight, sign, dscale) = (be16(0), be16(2) as i64, be16(4) as u16, be16(6) as u16 as usize);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err("a numeric with an invalid sign".into()),
    }
    if ndigits < 0 || b.len() != 8 + 2 * ndigits as usize || dscale > 16_383 {
        return Err("a numeric whose length does not match its digits".into());
    }
    let groups: Vec<i64> = (0..ndigits as usize).map(|i| be16(8 + 2 * i) as i64).collect();
    if groups.iter().any(|g| !(0..10_000).contains(g)) || weight.unsigned_abs() > 10_000 {
        return Err("a numeric digit out of range".into());
    }
    // Integer part: groups with power >= 0; fraction: the rest, cut or padded to dscale.
    let group = |power: i64| -> i64 {
        let i = weight - power;
        if (0..groups.len() as i64).contains(&i) { groups[i as usize] } else { 0 }
    };
    let mut int = String::new();
    for power in (0..=weight.max(0)).rev() {
        int.push_str(&format!("{:04}", group(power)));
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut frac = String::new();
    let mut power = -1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", group(power)));
        power -= 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000 && (int != "0" || frac.bytes().any(|d| d != b'0'));
    let sign = if negative { "-" } else { "" };
    Ok(if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") })
}

/// Encodes the rows of a `COPY ... TO STDOUT`.
pub struct CopyEncoder {
    format: CopyFormat,
    delimiter: u8,
    null: Vec<u8>,
    quote: u8,
    escape: u8,
    header: bool,
    /// Whether the start (binary header, header line) is still to be sent.
    start_pending: bool,
    fields: Arc<Vec<FieldInfo>>,
    schema: SchemaRef,
}

impl CopyEncoder {
    pub fn new(schema: SchemaRef, format: CopyFormat, options: &CopyOptions) -> PgWireResult<Self> {
        let wire = if format == CopyFormat::Binary { Format::UnifiedBinary } else { Format::UnifiedText };
        Ok(Self {
            format,
            delimiter: options.delimiter(format) as u8,
            null: options.null(format).as_bytes().to_vec(),
            quote: options.quote() as u8,
            escape: options.escape() as u8,
            header: options.header(),
            start_pending: true,
            fields: Arc::new(wire_fields(&schema, &wire)?),
            schema,
        })
    }

    /// The COPY's overall format code (0 text, 1 binary) and column count.
    pub fn format_code(&self) -> i8 {
        if self.format == CopyFormat::Binary { 1 } else { 0 }
    }

    pub fn columns(&self) -> usize {
        self.fields.len()
    }

    /// What goes before the first row: the binary header, or the csv/text header line.
    fn start(&self) -> BytesMut {
        let mut b = BytesMut::new();
        if self.format == CopyFormat::Binary {
            b.put_slice(BINARY_SIGNATURE);
            b.put_i32(0);
            b.put_i32(0);
        } else if self.header {
            for (i, f) in self.schema.fields().iter().enumerate() {
                if i > 0 {
                    b.put_u8(self.delimiter);
                }
                self.put_text(&mut b, Some(f.name().as_bytes()));
            }
            b.put_u8(b'\n');
        }
        b
    }

    /// The start, if no row has carried it (a COPY of no rows).
    pub fn leftover_start(&mut self) -> Option<CopyData> {
        if !std::mem::take(&mut self.start_pending) {
            return None;
        }
        let start = self.start();
        (!start.is_empty()).then(|| CopyData::new(start.freeze()))
    }

    /// The rows of a batch, one CopyData each; the first row of the COPY carries the start
    /// (as PostgreSQL sends it: clients read the binary header with the first row).
    pub fn rows(&mut self, batch: &RecordBatch) -> PgWireResult<Vec<CopyData>> {
        let mut out = Vec::with_capacity(batch.num_rows());
        let mut cells = CellEncoder { cells: Vec::new(), binary: self.format == CopyFormat::Binary };
        for row in 0..batch.num_rows() {
            cells.cells.clear();
            for (i, column) in batch.columns().iter().enumerate() {
                encode_cell(&mut cells, column, row, self.schema.field(i), &self.fields[i])?;
            }
            let mut line = if std::mem::take(&mut self.start_pending) { self.start() } else { BytesMut::new() };
            if self.format == CopyFormat::Binary {
                line.put_i16(cells.cells.len() as i16);
                for c in &cells.cells {
                    match c {
                        None => line.put_i32(-1),
                        Some(v) => {
                            line.put_i32(v.len() as i32);
                            line.put_slice(v);
                        }
                    }
                }
            } else {
                for (i, c) in cells.cells.iter().enumerate() {
                    if i > 0 {
                        line.put_u8(self.delimiter);
                    }
                    self.put_text(&mut line, c.as_deref());
                }
                line.put_u8(b'\n');
            }
            out.push(CopyData::new(line.freeze()));
        }
        Ok(out)
    }

    /// One text or csv field (`None`: NULL).
    fn put_text(&self, out: &mut BytesMut, value: Option<&[u8]>) {
        let Some(v) = value else {
            out.put_slice(&self.null);
            return;
        };
        if self.format == CopyFormat::Csv {
            let needs_quotes = v.is_empty()
                || v == self.null.as_slice()
                || v.iter().any(|&b| b == self.delimiter || b == self.quote || b == b'\n' || b == b'\r')
                || v.first() == Some(&b' ')
                || v == b"\\.";
            if !needs_quotes {
                out.put_slice(v);
                return;
            }
            out.put_u8(self.quote);
            for &b in v {
                if b == self.quote || b == self.escape {
                    out.put_u8(self.escape);
                }
                out.put_u8(b);
            }
            out.put_u8(self.quote);
            return;
        }
        for &b in v {
            match b {
                b'\\' => out.put_slice(b"\\\\"),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' => out.put_slice(b"\\t"),
                b if b == self.delimiter => {
                    out.put_u8(b'\\');
                    out.put_u8(b);
                }
                b => out.put_u8(b),
            }
        }
    }
}

/// Collects the cells of one row (text or binary form) as [`encode_cell`] produces them.
struct CellEncoder {
    cells: Vec<Option<Bytes>>,
    binary: bool,
}

impl Encoder for CellEncoder {
    type Item = ();

    fn encode_field<T>(&mut self, value: &T, pg_field: &FieldInfo) -> PgWireResult<()>
    where
        T: ToSql + ToSqlText + Sized,
    {
        let mut buf = BytesMut::new();
        let ty: &Type = pg_field.datatype();
        let is_null = if self.binary {
            value.to_sql(ty, &mut buf)
        } else {
            value.to_sql_text(ty, &mut buf, &FormatOptions::default())
        }
        .map_err(PgWireError::ApiError)?;
        self.cells.push(match is_null {
            IsNull::Yes => None,
            IsNull::No => Some(buf.freeze()),
        });
        Ok(())
    }

    fn take_row(&mut self) {}
}
