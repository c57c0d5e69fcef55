//! Result values on the wire: the PostgreSQL type of each column ([`wire_fields`]), and each
//! value in text or binary form ([`encode_cell`]), for result rows ([`DataRows`]) and for
//! `COPY ... TO STDOUT`.
//!
//! arrow-pg encodes most types. Three are encoded here instead:
//! - `numeric` (DECIMAL), for the whole range of the engine's 38-digit decimals: arrow-pg goes
//!   through rust_decimal, which holds 28 digits, and fails beyond (`SELECT 1e30`);
//! - `float8` / `float4` in text as PostgreSQL writes them (`1e+39`, `Infinity`, `NaN`, the
//!   shortest text that reads back as the same double);
//! - the engine's `UInt64` columns (offsets, counts) as `int8`.
//!
//! A value that cannot be encoded ends the statement with an error: the rows stop at the first
//! failure (arrow-pg's own row iterator repeats its error forever).

use std::error::Error;
use std::sync::Arc;

use arrow_pg::datatypes::field_into_pg_type;
use arrow_pg::encoder::{Encoder, encode_value};
use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Decimal256Array, Float32Array, Float64Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use postgres_types::{IsNull, ToSql, to_sql_checked};

/// The PostgreSQL type of an Arrow field: arrow-pg's mapping, with `UInt64` as `int8`.
pub fn pg_type(field: &Arc<Field>) -> PgWireResult<Type> {
    if field.metadata().contains_key(super::introspection::PG_OID_ARRAY_KEY) {
        return Ok(Type::OID_ARRAY);
    }
    match field.data_type() {
        DataType::UInt64 => Ok(Type::INT8),
        DataType::Decimal256(..) => Ok(Type::NUMERIC),
        _ => field_into_pg_type(field),
    }
}

/// The row description of a schema, each column in the format the client asked for.
pub fn wire_fields(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Ok(FieldInfo::new(f.name().into(), None, None, pg_type(f)?, format.format_for(i))))
        .collect()
}

fn value_error(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), "22003".into(), message)))
}

/// Encodes one value of `array` (row `row`) with `encoder`.
pub fn encode_cell<E: Encoder>(
    encoder: &mut E,
    array: &ArrayRef,
    row: usize,
    field: &Field,
    pg_field: &FieldInfo,
) -> PgWireResult<()> {
    let null = array.is_null(row);
    match field.data_type() {
        DataType::Decimal128(_, scale) => {
            let a = array.as_any().downcast_ref::<Decimal128Array>().expect("decimal array");
            let v = (!null).then(|| Numeric { unscaled: a.value(row), scale: *scale });
            encoder.encode_field(&v, pg_field)
        }
        DataType::Decimal256(_, scale) => {
            let a = array.as_any().downcast_ref::<Decimal256Array>().expect("decimal256 array");
            let v = (!null).then(|| BigNumeric(Numeric::text_of(&a.value(row).to_string(), *scale)));
            encoder.encode_field(&v, pg_field)
        }
        DataType::Float64 => {
            let a = array.as_any().downcast_ref::<Float64Array>().expect("f64 array");
            encoder.encode_field(&(!null).then(|| Float(a.value(row))), pg_field)
        }
        DataType::Float32 => {
            let a = array.as_any().downcast_ref::<Float32Array>().expect("f32 array");
            encoder.encode_field(&(!null).then(|| Float32(a.value(row))), pg_field)
        }
        DataType::UInt64 => {
            let a = array.as_any().downcast_ref::<UInt64Array>().expect("u64 array");
            let v = if null {
                None
            } else {
                let v = a.value(row);
                Some(i64::try_from(v).map_err(|_| value_error(format!("value {v} is out of range for type bigint")))?)
            };
            encoder.encode_field(&v, pg_field)
        }
        _ => encode_value(encoder, array, row, field, pg_field),
    }
}

/// The data rows of a result, encoded as they are sent; after the first value that cannot be
/// encoded, that error and nothing more.
pub struct DataRows {
    fields: Arc<Vec<FieldInfo>>,
    batches: std::vec::IntoIter<RecordBatch>,
    current: Option<RecordBatch>,
    row: usize,
    encoder: DataRowEncoder,
    failed: bool,
}

impl DataRows {
    pub fn new(fields: Arc<Vec<FieldInfo>>, batches: Vec<RecordBatch>) -> Self {
        let encoder = DataRowEncoder::new(Arc::clone(&fields));
        Self { fields, batches: batches.into_iter(), current: None, row: 0, encoder, failed: false }
    }
}

impl Iterator for DataRows {
    type Item = PgWireResult<DataRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let batch = loop {
            match &self.current {
                Some(b) if self.row < b.num_rows() => break b,
                _ => {
                    self.current = Some(self.batches.next()?);
                    self.row = 0;
                }
            }
        };
        let schema = batch.schema();
        for (i, column) in batch.columns().iter().enumerate() {
            if let Err(e) = encode_cell(&mut self.encoder, column, self.row, schema.field(i), &self.fields[i]) {
                self.failed = true;
                return Some(Err(e));
            }
        }
        self.row += 1;
        Some(Ok(self.encoder.take_row()))
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

/// A DECIMAL value: `unscaled * 10^-scale`.
#[derive(Debug, Clone, Copy)]
pub struct Numeric {
    pub unscaled: i128,
    pub scale: i8,
}

impl Numeric {
    /// The text of `unscaled * 10^-scale`, `unscaled` given as (signed) decimal text.
    pub fn text_of(unscaled: &str, scale: i8) -> String {
        let (sign, abs) = unscaled.strip_prefix('-').map_or(("", unscaled), |a| ("-", a));
        let (digits, scale) = digits_of(abs, scale);
        let (int, frac) = digits.split_at(digits.len() - scale);
        if scale == 0 { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") }
    }
}

/// The decimal digits of an absolute value and where the point goes: `(digits, scale)` with
/// `scale >= 0` (a negative scale becomes trailing zeros), one digit at least before the point.
fn digits_of(abs: &str, scale: i8) -> (String, usize) {
    let mut digits = abs.to_owned();
    let scale = if scale < 0 {
        digits.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
        0
    } else {
        scale as usize
    };
    if digits.len() <= scale {
        digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
    }
    (digits, scale)
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Self::text_of(&self.unscaled.to_string(), self.scale))
    }
}

/// A decimal of more than 38 digits (a 256-bit decimal), as its text.
#[derive(Debug, Clone)]
pub struct BigNumeric(pub String);

impl ToSqlText for BigNumeric {
    fn to_sql_text(&self, _ty: &Type, out: &mut BytesMut, _: &FormatOptions) -> Result<IsNull, BoxError> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for BigNumeric {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        numeric_binary(&self.0, out);
        let _ = ty;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl ToSqlText for Numeric {
    fn to_sql_text(&self, _ty: &Type, out: &mut BytesMut, _: &FormatOptions) -> Result<IsNull, BoxError> {
        out.put_slice(self.to_string().as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for Numeric {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        numeric_binary(&self.to_string(), out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// PostgreSQL's binary numeric of a decimal's text (`-12.340`): base-10000 digits, a weight
/// (the power of 10000 of the first digit), a sign and the display scale.
fn numeric_binary(text: &str, out: &mut BytesMut) {
    let (negative, abs) = text.strip_prefix('-').map_or((false, text), |a| (true, a));
    let (int, frac) = abs.split_once('.').unwrap_or((abs, ""));
    let int = int.trim_start_matches('0');
    // Whole groups of four digits on each side of the point.
    let int_padded = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let group = |s: &str| -> Vec<i16> {
        s.as_bytes().chunks(4).map(|c| c.iter().fold(0i16, |v, d| v * 10 + (d - b'0') as i16)).collect()
    };
    let mut groups = group(&int_padded);
    let mut weight = groups.len() as i16 - 1;
    groups.extend(group(&frac_padded));
    // No leading or trailing zero groups.
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative && !groups.is_empty() { 0x4000 } else { 0 });
    out.put_u16(frac.len() as u16);
    groups.iter().for_each(|g| out.put_i16(*g));
}

/// A double, written in text as PostgreSQL does.
#[derive(Debug, Clone, Copy)]
pub struct Float(pub f64);

/// A real, written in text as PostgreSQL does.
#[derive(Debug, Clone, Copy)]
pub struct Float32(pub f32);

/// PostgreSQL's text of a float (12+, extra_float_digits >= 1): the shortest digits that read
/// back as the same value, in exponent form when the exponent is below -4 or at least
/// `max_plain` (15 for float8, 6 for float4), with at least two exponent digits.
fn float_text(shortest_exp: String, value_is_nan: bool, infinite: Option<bool>, max_plain: i32) -> String {
    if value_is_nan {
        return "NaN".into();
    }
    if let Some(positive) = infinite {
        return if positive { "Infinity" } else { "-Infinity" }.into();
    }
    // `shortest_exp` is Rust's `{:e}`: `-1.5e300`, `1e-5`, `0e0`.
    let (mantissa, exp) = shortest_exp.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits == "0" {
        return format!("{sign}0");
    }
    if exp < -4 || exp >= max_plain {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{rest}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{sign}{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

impl Float {
    pub fn text(self) -> String {
        let v = self.0;
        float_text(format!("{v:e}"), v.is_nan(), v.is_infinite().then_some(v > 0.0), 15)
    }
}

impl Float32 {
    pub fn text(self) -> String {
        let v = self.0;
        float_text(format!("{v:e}"), v.is_nan(), v.is_infinite().then_some(v > 0.0), 6)
    }
}

impl ToSqlText for Float {
    fn to_sql_text(&self, _ty: &Type, out: &mut BytesMut, _: &FormatOptions) -> Result<IsNull, BoxError> {
        out.put_slice(self.text().as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for Float {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <f64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl ToSqlText for Float32 {
    fn to_sql_text(&self, _ty: &Type, out: &mut BytesMut, _: &FormatOptions) -> Result<IsNull, BoxError> {
        out.put_slice(self.text().as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for Float32 {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <f32 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Whether a column is sent in binary.
pub fn is_binary(field: &FieldInfo) -> bool {
    field.format() == FieldFormat::Binary
}
