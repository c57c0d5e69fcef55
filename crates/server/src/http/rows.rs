//! Arrow record batches as the JSON of a `/v1/api/sql` result: column names and SQL types, and
//! rows as arrays of JSON values, encoded with arrow's own JSON encoders (one per column).

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{EncoderOptions, make_encoder};
use topicfusion_engine::catalog::types::ColumnType;

/// The SQL name of an Arrow type (the engine's names where it has one, Arrow's otherwise).
pub fn sql_type(dt: &DataType) -> String {
    ColumnType::from_arrow(dt).map_or_else(|_| dt.to_string().to_uppercase(), ColumnType::sql_name)
}

/// Appends `{"columns":[...],"rows":[[...]],"row_count":n}` for one statement's result.
pub fn write_result(out: &mut Vec<u8>, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), ArrowError> {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({ "name": f.name(), "type": sql_type(f.data_type()) }))
        .collect();
    out.extend_from_slice(b"{\"columns\":");
    serde_json::to_writer(&mut *out, &columns).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    out.extend_from_slice(b",\"rows\":[");
    let options = EncoderOptions::default();
    let mut row_count = 0usize;
    for batch in batches {
        let fields = batch.schema().fields().clone();
        let mut encoders = fields
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| make_encoder(f, a.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if row_count > 0 {
                out.push(b',');
            }
            out.push(b'[');
            for (i, enc) in encoders.iter_mut().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if enc.is_null(row) {
                    out.extend_from_slice(b"null");
                } else {
                    enc.encode(row, out);
                }
            }
            out.push(b']');
            row_count += 1;
        }
    }
    out.extend_from_slice(format!("],\"row_count\":{row_count}}}").as_bytes());
    Ok(())
}
