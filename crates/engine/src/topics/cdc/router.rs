//! The router: the one place that turns a statement's row changes into topic messages.
//!
//! For each topic route of the changed table and operation it evaluates the route's filter
//! (a DataFusion physical expression compiled once, run on an Arrow batch of the changed rows;
//! NULL counts as false), picks the partition (xxHash64 of the primary-key bytes, or of the
//! `PARTITION BY` value, modulo the partition count) and builds the key and payload JSON.
//! The writer puts the messages in the same commit as the row changes.

use std::cell::OnceCell;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::physical_expr::PhysicalExpr;
use serde_json::{Map, Value as Json};
use topicfusion_dialect::{PayloadMode, SourceOp};
use topicfusion_storage::codec::encode_key_value;
use topicfusion_storage::{ChangeOp, MessageBatches, Value};

use crate::catalog::routes::CompiledRoute;
use crate::catalog::types::{rows_to_batch, scalar_value};
use crate::catalog::{Table, Topic};
use crate::topics::cdc::payload::{ObjectWriter, json_value, object};

/// One changed row of a statement.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub op: ChangeOp,
    /// The memcomparable primary key (or hidden row id) after the change (before for DELETE).
    pub key: Vec<u8>,
    /// For an UPDATE that changed the primary key: the key before it.
    pub old_key: Option<Vec<u8>>,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

impl RowChange {
    /// The row a route's filter and partitioning see: after the change, before it for DELETE.
    fn image(&self) -> &[Value] {
        self.after.as_deref().or(self.before.as_deref()).unwrap_or(&[])
    }

    /// A primary-key-changing UPDATE as the DELETE of the old key and the INSERT of the new one
    /// (as Debezium emits it): consumers of the old key learn it is gone, in its own partition.
    fn split_move(&self) -> Option<(RowChange, RowChange)> {
        let old_key = self.old_key.clone()?;
        let delete =
            RowChange { op: ChangeOp::Delete, key: old_key, old_key: None, before: self.before.clone(), after: None };
        let insert = RowChange {
            op: ChangeOp::Insert,
            key: self.key.clone(),
            old_key: None,
            before: None,
            after: self.after.clone(),
        };
        Some((delete, insert))
    }
}

pub fn change_op(op: SourceOp) -> ChangeOp {
    match op {
        SourceOp::Insert => ChangeOp::Insert,
        SourceOp::Update => ChangeOp::Update,
        SourceOp::Delete => ChangeOp::Delete,
    }
}

/// Adds to `out` the messages for a statement's changes to `table`, over the routes of `topics`,
/// in change order per topic; their JSON is written straight into the message batches.
pub fn route(table: &Table, topics: &[Arc<Topic>], changes: &[RowChange], out: &mut MessageBatches) -> Result<()> {
    let source_table = table.meta.qualified_name();
    let json = ObjectWriter::new(&table.meta.columns);
    // Built at most once per statement, when the first route needs it: the Arrow batch of the
    // changed rows (for filters and PARTITION BY).
    let images: OnceCell<RecordBatch> = OnceCell::new();
    // The batch of before images, for PARTITION BY of the DELETE half of a key change.
    let before_images: OnceCell<std::result::Result<RecordBatch, String>> = OnceCell::new();
    for topic in topics {
        for route in topic.routes.iter().filter(|r| r.meta.table_id == table.meta.id) {
            if let Some(reason) = &route.broken {
                return exec_err!(
                    "the route of topic {} from {} ON {} is broken ({reason}): no write to {} can be captured until it is dropped with ALTER TOPIC {} DROP SOURCE {} ON {}",
                    topic.meta.qualified_name(),
                    source_table,
                    route.meta.op.to_uppercase(),
                    source_table,
                    topic.meta.qualified_name(),
                    source_table,
                    route.meta.op.to_uppercase()
                );
            }
            // All changes of a statement share one operation.
            if changes.first().is_none_or(|c| c.op != route.op) {
                continue;
            }
            let batch = if route.filter.is_some() || route.partition_by.is_some() {
                Some(match images.get() {
                    Some(b) => b,
                    None => {
                        let rows: Vec<Vec<Value>> = changes.iter().map(|c| c.image().to_vec()).collect();
                        let all: Vec<usize> = (0..table.meta.columns.len()).collect();
                        let b = rows_to_batch(&table.schema, &table.meta.columns, &all, &rows)?;
                        images.get_or_init(|| b)
                    }
                })
            } else {
                None
            };
            let mask = match (&route.filter, batch) {
                (Some(f), Some(b)) => Some(evaluate_mask(f.as_ref(), b)?),
                _ => None,
            };
            let partitions = partitions_of(route, batch, changes, topic.meta.partitions)?;
            let mut push = |change: &RowChange, partition: u32| {
                if has_payload(route.payload, change) {
                    out.push_with(
                        topic.meta.id,
                        partition,
                        change.op,
                        &source_table,
                        |o| write_key(o, &json, table, change),
                        |o| write_payload(o, &json, table, route.payload, change),
                    );
                }
            };
            // With PARTITION BY, where the old keys' messages went, for every change at once
            // (computed at the first key change of the statement).
            let mut old_partitions: Option<Vec<u32>> = None;
            for (i, change) in changes.iter().enumerate() {
                if let Some(mask) = &mask
                    && !(mask.is_valid(i) && mask.value(i))
                {
                    continue;
                }
                if let Some((delete, insert)) = change.split_move() {
                    // The DELETE goes where the old key's messages went.
                    let old_partition = if route.partition_by.is_some() {
                        let before = before_images.get_or_init(|| {
                            let rows: Vec<Vec<Value>> = changes
                                .iter()
                                .map(|c| c.before.clone().unwrap_or_else(|| c.image().to_vec()))
                                .collect();
                            let all: Vec<usize> = (0..table.meta.columns.len()).collect();
                            rows_to_batch(&table.schema, &table.meta.columns, &all, &rows).map_err(|e| e.to_string())
                        });
                        let before = before.as_ref().map_err(|e| DataFusionError::Execution(e.clone()))?;
                        if old_partitions.is_none() {
                            old_partitions = Some(partitions_of(route, Some(before), changes, topic.meta.partitions)?);
                        }
                        old_partitions.as_ref().expect("computed above")[i]
                    } else {
                        partitions_of(route, None, std::slice::from_ref(&delete), topic.meta.partitions)?[0]
                    };
                    push(&delete, old_partition);
                    push(&insert, partitions[i]);
                    continue;
                }
                push(change, partitions[i]);
            }
        }
    }
    Ok(())
}

fn evaluate_mask(filter: &dyn PhysicalExpr, batch: &RecordBatch) -> Result<BooleanArray> {
    let array = filter.evaluate(batch)?.into_array(batch.num_rows())?;
    match array.as_any().downcast_ref::<BooleanArray>() {
        Some(b) => Ok(b.clone()),
        None => exec_err!("a topic route filter returned {}, not booleans", array.data_type()),
    }
}

fn partitions_of(
    route: &CompiledRoute,
    batch: Option<&RecordBatch>,
    changes: &[RowChange],
    count: u32,
) -> Result<Vec<u32>> {
    let hash = |bytes: &[u8]| (twox_hash::XxHash64::oneshot(0, bytes) % u64::from(count)) as u32;
    match (&route.partition_by, batch) {
        (Some(expr), Some(b)) => {
            let values = expr.evaluate(b)?.into_array(b.num_rows())?;
            (0..b.num_rows())
                .map(|i| {
                    let scalar = ScalarValue::try_from_array(&values, i)?;
                    let mut bytes = Vec::new();
                    if !scalar.is_null() {
                        encode_key_value(&scalar_value(&scalar)?, &mut bytes)
                            .map_err(|e| datafusion::common::DataFusionError::External(Box::new(e)))?;
                    }
                    Ok(hash(&bytes))
                })
                .collect()
        }
        _ => Ok(changes.iter().map(|c| hash(&c.key)).collect()),
    }
}

/// Writes the JSON of [`key_object`].
fn write_key(out: &mut Vec<u8>, json: &ObjectWriter<'_>, table: &Table, change: &RowChange) {
    let meta = &table.meta;
    if meta.primary_key.is_empty() {
        out.extend_from_slice(b"{\"_rowid\":");
        out.extend_from_slice(itoa::Buffer::new().format(decode_rowid(&change.key)).as_bytes());
        out.push(b'}');
        return;
    }
    json.write_into(out, change.image(), meta.primary_key.iter().copied());
}

/// `{"pk": value, ...}`, or `{"_rowid": n}` for a table without a primary key.
fn key_object(table: &Table, change: &RowChange) -> Map<String, Json> {
    let meta = &table.meta;
    if meta.primary_key.is_empty() {
        let rowid = decode_rowid(&change.key);
        return Map::from_iter([("_rowid".to_owned(), Json::from(rowid))]);
    }
    object(&meta.columns, change.image(), meta.primary_key.iter().copied())
}

/// The key bytes of a hidden row id.
pub fn encode_rowid(rowid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    encode_key_value(&Value::Int64(rowid as i64), &mut out).expect("a number is a key");
    out
}

fn decode_rowid(key: &[u8]) -> i64 {
    let bytes: [u8; 8] = key.try_into().unwrap_or([0x80, 0, 0, 0, 0, 0, 0, 0]);
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Whether a change has a message: not when a `diff` UPDATE changed nothing.
fn has_payload(mode: PayloadMode, change: &RowChange) -> bool {
    match (mode, change.op, change.before.as_deref(), change.after.as_deref()) {
        (PayloadMode::Diff, ChangeOp::Update, Some(before), Some(after)) => before != after,
        (PayloadMode::Diff, ChangeOp::Update, ..) | (PayloadMode::Diff, ChangeOp::Delete, None, _) => false,
        _ => true,
    }
}

/// Writes the payload JSON of one change (one [`has_payload`] accepts).
fn write_payload(out: &mut Vec<u8>, json: &ObjectWriter<'_>, table: &Table, mode: PayloadMode, change: &RowChange) {
    let columns = &table.meta.columns;
    let all = || 0..columns.len();
    let key = || Json::Object(key_object(table, change));
    let tree = match (mode, change.op) {
        (PayloadMode::Key, _) => return write_key(out, json, table, change),
        (PayloadMode::Full, _) | (PayloadMode::Diff, ChangeOp::Insert) => {
            return json.write_into(out, change.image(), all());
        }
        (PayloadMode::Diff, ChangeOp::Update) => {
            let (before, after) = (change.before.as_deref().unwrap_or(&[]), change.after.as_deref().unwrap_or(&[]));
            let changed: Map<String, Json> = all()
                .filter(|&i| before.get(i) != after.get(i))
                .map(|i| {
                    let ty = columns[i].data_type;
                    let pair = Map::from_iter([
                        ("old".to_owned(), json_value(&before[i], ty)),
                        ("new".to_owned(), json_value(&after[i], ty)),
                    ]);
                    (columns[i].name.clone(), Json::Object(pair))
                })
                .collect();
            Json::Object(Map::from_iter([("key".to_owned(), key()), ("changes".to_owned(), Json::Object(changed))]))
        }
        (PayloadMode::Diff, ChangeOp::Delete) => Json::Object(Map::from_iter([
            ("key".to_owned(), key()),
            ("old".to_owned(), Json::Object(object(columns, change.before.as_deref().unwrap_or(&[]), all()))),
        ])),
    };
    // Writing JSON to a Vec cannot fail.
    let _ = serde_json::to_writer(out, &tree);
}
