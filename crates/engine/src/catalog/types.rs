//! Column types: the SQL types a table can hold, their Arrow types, and the conversions between
//! Arrow arrays and stored row values; values as clients send them ([`ParamValue`], PostgreSQL's
//! bytea text in [`bytea_in`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array, Date32Builder,
    Decimal128Array, Decimal128Builder, Float32Array, Float32Builder, Float64Array, Float64Builder, Int16Array,
    Int16Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use serde::{Deserialize, Serialize};
use topicfusion_storage::Value;

/// A column type of a durable table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    SmallInt,
    Int,
    BigInt,
    Real,
    Double,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Boolean,
    Text,
    Date,
    /// Microseconds, no time zone (values are UTC).
    Timestamp,
    Bytea,
}

impl ColumnType {
    /// The column type for an Arrow type from `CREATE TABLE`.
    pub fn from_arrow(dt: &DataType) -> Result<Self> {
        Ok(match dt {
            DataType::Int16 => ColumnType::SmallInt,
            DataType::Int32 => ColumnType::Int,
            DataType::Int64 => ColumnType::BigInt,
            DataType::Float32 => ColumnType::Real,
            DataType::Float64 => ColumnType::Double,
            DataType::Decimal128(p, s) => ColumnType::Decimal { precision: *p, scale: *s },
            DataType::Boolean => ColumnType::Boolean,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
            DataType::Date32 => ColumnType::Date,
            DataType::Timestamp(_, None) => ColumnType::Timestamp,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Bytea,
            other => return plan_err!("unsupported column type {other}"),
        })
    }

    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Real => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::Bytea => DataType::Binary,
        }
    }

    /// The SQL name, as `system.tables` and error messages show it.
    pub fn sql_name(self) -> String {
        match self {
            ColumnType::SmallInt => "SMALLINT".into(),
            ColumnType::Int => "INT".into(),
            ColumnType::BigInt => "BIGINT".into(),
            ColumnType::Real => "REAL".into(),
            ColumnType::Double => "DOUBLE".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::Text => "TEXT".into(),
            ColumnType::Date => "DATE".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
            ColumnType::Bytea => "BYTEA".into(),
        }
    }
}

/// A column of a durable table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    pub data_type: ColumnType,
    pub nullable: bool,
    /// The column's DEFAULT expression as SQL text (absent: NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// The Arrow schema of a list of columns.
pub fn arrow_schema(columns: &[ColumnMeta]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| Field::new(&c.name, c.data_type.arrow(), c.nullable)).collect::<Vec<_>>(),
    ))
}

/// The value at `row` of an array of the column's Arrow type.
pub fn value_at(array: &dyn Array, row: usize, ty: ColumnType) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    macro_rules! get {
        ($t:ty) => {
            match array.as_any().downcast_ref::<$t>() {
                Some(a) => a.value(row),
                None => return exec_err!("expected {} values, got {}", ty.sql_name(), array.data_type()),
            }
        };
    }
    Ok(match ty {
        ColumnType::SmallInt => Value::Int16(get!(Int16Array)),
        ColumnType::Int => Value::Int32(get!(Int32Array)),
        ColumnType::BigInt => Value::Int64(get!(Int64Array)),
        ColumnType::Real => Value::Float32(get!(Float32Array)),
        ColumnType::Double => Value::Float64(get!(Float64Array)),
        ColumnType::Decimal { .. } => Value::Decimal128(get!(Decimal128Array)),
        ColumnType::Boolean => Value::Boolean(get!(BooleanArray)),
        ColumnType::Text => Value::Utf8(get!(StringArray).to_owned()),
        ColumnType::Date => Value::Date32(get!(Date32Array)),
        ColumnType::Timestamp => Value::TimestampMicros(get!(TimestampMicrosecondArray)),
        ColumnType::Bytea => Value::Binary(get!(BinaryArray).to_vec()),
    })
}

/// The rows of a batch whose first `columns.len()` columns have the table's types, starting at
/// column `first`.
pub fn batch_rows(batch: &RecordBatch, columns: &[ColumnMeta], first: usize) -> Result<Vec<Vec<Value>>> {
    let arrays: Vec<&ArrayRef> = (0..columns.len()).map(|i| batch.column(first + i)).collect();
    (0..batch.num_rows())
        .map(|row| arrays.iter().zip(columns).map(|(a, c)| value_at(a.as_ref(), row, c.data_type)).collect())
        .collect()
}

/// Builds an array of one column from row values.
pub fn build_array<'a>(ty: ColumnType, values: impl Iterator<Item = &'a Value>) -> Result<ArrayRef> {
    macro_rules! build {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::$variant(x) => b.append_value(x.clone()),
                    other => return exec_err!("stored value {other:?} does not match column type {}", ty.sql_name()),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match ty {
        ColumnType::SmallInt => build!(Int16Builder::new(), Int16),
        ColumnType::Int => build!(Int32Builder::new(), Int32),
        ColumnType::BigInt => build!(Int64Builder::new(), Int64),
        ColumnType::Real => build!(Float32Builder::new(), Float32),
        ColumnType::Double => build!(Float64Builder::new(), Float64),
        ColumnType::Decimal { precision, scale } => {
            let b = Decimal128Builder::new().with_precision_and_scale(precision, scale)?;
            build!(b, Decimal128)
        }
        ColumnType::Boolean => build!(BooleanBuilder::new(), Boolean),
        ColumnType::Text => build!(StringBuilder::new(), Utf8),
        ColumnType::Date => build!(Date32Builder::new(), Date32),
        ColumnType::Timestamp => build!(TimestampMicrosecondBuilder::new(), TimestampMicros),
        ColumnType::Bytea => build!(BinaryBuilder::new(), Binary),
    })
}

/// A record batch of `rows` (full table rows) holding the columns in `projection`.
pub fn rows_to_batch(
    schema: &SchemaRef,
    columns: &[ColumnMeta],
    projection: &[usize],
    rows: &[Vec<Value>],
) -> Result<RecordBatch> {
    let arrays = projection
        .iter()
        .map(|&i| build_array(columns[i].data_type, rows.iter().map(|r| &r[i])))
        .collect::<Result<Vec<_>>>()?;
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(Arc::clone(schema), arrays, &options)?)
}

/// A stored value as a DataFusion scalar of the column type (for key bounds and PARTITION BY).
pub fn scalar_to_value(s: &ScalarValue, ty: ColumnType) -> Result<Value> {
    let s = s.cast_to(&ty.arrow())?;
    value_at(s.to_array()?.as_ref(), 0, ty)
}

/// The column type of a scalar's own Arrow type, if it is one a table can hold.
pub fn scalar_value(s: &ScalarValue) -> Result<Value> {
    let ty = match ColumnType::from_arrow(&s.data_type()) {
        Ok(ty) => ty,
        Err(_) => return Ok(Value::Utf8(s.to_string())),
    };
    scalar_to_value(s, ty)
}

/// A parameter value bound to a `$n` placeholder, as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An exact decimal, as text (`-12.340`).
    Numeric(String),
    /// Text, and every type sent as text (dates, timestamps, JSON, UUIDs): a string literal,
    /// cast by the statement's context like any other.
    Text(String),
    Bytes(Vec<u8>),
    /// An array (`ARRAY[...]`), one dimension.
    Array(Vec<ParamValue>),
}

/// PostgreSQL's bytea input: hex (`\x...`, whitespace between byte pairs allowed) or escape
/// format (`\\` is a backslash, `\ooo` an octal byte, other bytes as they are).
pub fn bytea_in(text: &str) -> std::result::Result<Vec<u8>, String> {
    let bad = || format!("invalid input syntax for type bytea: \"{}\"", crate::error::one_line(text, 100));
    if let Some(hex) = text.strip_prefix("\\x").or_else(|| text.strip_prefix("\\X")) {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut digits = hex.bytes().filter(|b| !b.is_ascii_whitespace());
        while let Some(hi) = digits.next() {
            let lo = digits.next().ok_or_else(bad)?;
            let v = |d: u8| (d as char).to_digit(16).ok_or_else(bad);
            out.push((v(hi)? * 16 + v(lo)?) as u8);
        }
        return Ok(out);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if let Some(octal) = bytes.get(i + 1..i + 4)
            && octal[0] <= b'3'
            && octal.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push(octal.iter().fold(0u8, |v, d| v * 8 + (d - b'0')));
            i += 4;
        } else {
            return Err(bad());
        }
    }
    Ok(out)
}
