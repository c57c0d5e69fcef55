//! A subscription's rows as Arrow record batches, the columns `op`, `position`, then the selected
//! ones (for an `update` the new row, for a `delete` the old one): how the PostgreSQL protocol
//! sends them, whether streamed (`SUBSCRIBE`, `COPY (SUBSCRIBE ...) TO STDOUT`) or fetched from a
//! cursor (`DECLARE c CURSOR FOR SUBSCRIBE ...`).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::{LiveEvent, LiveRow, Subscription};
use crate::catalog::types::rows_to_batch;

impl Subscription {
    /// `op`, `position`, then the selected columns (nullable: a row may lack a value).
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new("op", DataType::Utf8, false), Field::new("position", DataType::Int64, false)];
        fields.extend(self.columns.iter().map(|c| Field::new(&c.name, c.data_type.arrow(), true)));
        Arc::new(Schema::new(fields))
    }

    /// `rows` as a batch of [`Self::schema`].
    pub fn batch(&self, schema: &SchemaRef, rows: &[LiveRow]) -> Result<RecordBatch> {
        let values: Vec<_> = rows.iter().map(|r| r.row.clone()).collect();
        let all: Vec<usize> = (0..self.columns.len()).collect();
        let selected = Arc::new(Schema::new(schema.fields()[2..].to_vec()));
        let data = rows_to_batch(&selected, &self.columns, &all, &values)?;
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.op.as_str()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.position as i64))),
        ];
        arrays.extend(data.columns().iter().cloned());
        Ok(RecordBatch::try_new(Arc::clone(schema), arrays)?)
    }

    /// The next rows (the snapshot's end and progress positions carry none); the end as an
    /// error ([`super::LiveEnd`], whose [`super::LiveEnd::kind`] says which).
    pub async fn next_rows(&mut self) -> Result<Vec<LiveRow>> {
        loop {
            match self.next().await {
                Some(LiveEvent::Rows(rows)) => return Ok(rows),
                Some(LiveEvent::Ready { .. } | LiveEvent::Progress { .. }) => continue,
                Some(LiveEvent::End(end)) => return Err(DataFusionError::External(Box::new(end))),
                None => return Err(DataFusionError::Execution("the live query has ended".into())),
            }
        }
    }

    /// The subscription as a stream of batches, one per commit (or snapshot chunk), that never
    /// ends by itself: it fails with the subscription's end, then ends.
    pub fn into_stream(self) -> SendableRecordBatchStream {
        let schema = self.schema();
        let batches = futures::stream::unfold(Some((self, Arc::clone(&schema))), |state| async move {
            let (mut subscription, schema) = state?;
            match subscription.next_rows().await {
                Ok(rows) => {
                    let batch = subscription.batch(&schema, &rows);
                    Some((batch, Some((subscription, schema))))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}
