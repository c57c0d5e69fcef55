//! The table write path: turns the rows a DML statement produced into row changes (with the
//! before and after image of every row), checks keys and NOT NULL, routes the changes to topic
//! messages, and writes rows and messages in one write batch (made durable and visible by
//! `Store::finish`, which the caller runs after releasing its locks).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, BinaryArray, RecordBatch};
use datafusion::common::{Result, exec_err};
use topicfusion_storage::codec::{encode_key_value, encode_row};
use topicfusion_storage::{ChangeOp, Commit, Pending, Store, Value, keys};

use crate::catalog::{Catalog, Table, put_rowid_sequence, storage_err};
use crate::cdc::payload::json_value;
use crate::cdc::router::{RowChange, encode_rowid, route};
use crate::types::batch_rows;

/// Applies one statement's output to `table` and writes it. The caller holds the table's write
/// lock from before it read the rows until this returns, then passes the pending commit to
/// `Store::finish` without the lock (concurrent writers of the table then share fsyncs; a
/// later writer's commit is after this one in the WAL, so it is never durable without it).
///
/// Input layouts (n = number of table columns):
/// - Insert: the n new columns;
/// - Delete: the n old columns, then the storage key;
/// - Update: the n new columns, the n old columns, then the storage key.
pub fn apply(
    store: &Store,
    catalog: &Catalog,
    table: &Arc<Table>,
    op: ChangeOp,
    batches: &[RecordBatch],
) -> Result<(u64, Pending)> {
    let n = table.meta.columns.len();
    let mut changes = Vec::new();
    // Keys the statement removes (DELETE, and UPDATE moving a row to a new key).
    let mut removed: Vec<Vec<u8>> = Vec::new();
    // Keys of the rows an UPDATE or DELETE changed.
    let mut old_keys: Vec<Vec<u8>> = Vec::new();
    for batch in batches {
        match op {
            ChangeOp::Insert => {
                for row in batch_rows(batch, &table.meta.columns, 0)? {
                    check_not_null(table, &row)?;
                    let key = match primary_key(table, &row)? {
                        Some(k) => k,
                        None => encode_rowid(table.next_rowid.fetch_add(1, Ordering::SeqCst)),
                    };
                    changes.push(RowChange { op, key, old_key: None, before: None, after: Some(row) });
                }
            }
            ChangeOp::Delete => {
                let keys = key_column(batch, n)?;
                for (i, row) in batch_rows(batch, &table.meta.columns, 0)?.into_iter().enumerate() {
                    let key = keys.value(i).to_vec();
                    removed.push(key.clone());
                    old_keys.push(key.clone());
                    changes.push(RowChange { op, key, old_key: None, before: Some(row), after: None });
                }
            }
            ChangeOp::Update => {
                let keys = key_column(batch, 2 * n)?;
                let new_rows = batch_rows(batch, &table.meta.columns, 0)?;
                let old_rows = batch_rows(batch, &table.meta.columns, n)?;
                for (i, (after, before)) in new_rows.into_iter().zip(old_rows).enumerate() {
                    check_not_null(table, &after)?;
                    let old_key = keys.value(i).to_vec();
                    let key = primary_key(table, &after)?.unwrap_or_else(|| old_key.clone());
                    let moved = (key != old_key).then(|| old_key.clone());
                    if moved.is_some() {
                        removed.push(old_key.clone());
                    }
                    old_keys.push(old_key);
                    changes.push(RowChange { op, key, old_key: moved, before: Some(before), after: Some(after) });
                }
            }
        }
    }
    check_keys(store, table, &changes, &old_keys)?;

    let mut commit = Commit::default();
    for key in &removed {
        commit.batch.delete(keys::row_key(table.meta.id, key));
    }
    let mut buf = Vec::new();
    for change in &changes {
        if let Some(after) = &change.after {
            buf.clear();
            encode_row(after, &mut buf);
            commit.batch.put(keys::row_key(table.meta.id, &change.key), &buf);
        }
    }
    if op == ChangeOp::Insert && table.meta.primary_key.is_empty() {
        put_rowid_sequence(&mut commit, table);
    }
    let topics = catalog.read().topics_fed_by(table.meta.id);
    if !topics.is_empty() {
        commit.messages = route(table, &topics, &changes)?;
    }
    let pending = store.write(commit).map_err(storage_err)?;
    Ok((changes.len() as u64, pending))
}

fn key_column(batch: &RecordBatch, index: usize) -> Result<&BinaryArray> {
    match batch.columns().get(index).and_then(|c| c.as_any().downcast_ref::<BinaryArray>()) {
        Some(k) => Ok(k),
        None => exec_err!("internal: the DML input lacks the row-key column"),
    }
}

/// The memcomparable primary key of a row, or `None` for a table with a hidden row id.
fn primary_key(table: &Table, row: &[Value]) -> Result<Option<Vec<u8>>> {
    if table.meta.primary_key.is_empty() {
        return Ok(None);
    }
    let mut key = Vec::new();
    for &i in &table.meta.primary_key {
        encode_key_value(&row[i], &mut key).map_err(storage_err)?;
    }
    Ok(Some(key))
}

fn check_not_null(table: &Table, row: &[Value]) -> Result<()> {
    for (c, v) in table.meta.columns.iter().zip(row) {
        if !c.nullable && *v == Value::Null {
            return exec_err!(
                "null value in column {} of table {} violates its NOT NULL constraint",
                c.name,
                table.meta.qualified_name()
            );
        }
    }
    Ok(())
}

/// Every row is changed at most once, and every row written has a key that no other row has
/// after the statement. `old_keys` are the keys of the rows an UPDATE or DELETE changed: one of
/// them may be taken by a row moved to it, as the uniqueness of the new keys already guarantees
/// that its old row moved away.
fn check_keys(store: &Store, table: &Table, changes: &[RowChange], old_keys: &[Vec<u8>]) -> Result<()> {
    let mut olds = HashSet::new();
    if old_keys.iter().any(|k| !olds.insert(k)) {
        return exec_err!("the statement matched a row of {} more than once", table.meta.qualified_name());
    }
    let mut news = HashSet::new();
    let mut to_check = Vec::new();
    for change in changes {
        if !news.insert(&change.key) {
            return duplicate(table, change);
        }
        if !olds.contains(&change.key) {
            to_check.push(change);
        }
    }
    if to_check.is_empty() || table.meta.primary_key.is_empty() {
        return Ok(());
    }
    let full: Vec<Vec<u8>> = to_check.iter().map(|c| keys::row_key(table.meta.id, &c.key)).collect();
    for (change, existing) in to_check.iter().zip(store.multi_get(&full).map_err(storage_err)?) {
        if existing.is_some() {
            return duplicate(table, change);
        }
    }
    Ok(())
}

fn duplicate<T>(table: &Table, change: &RowChange) -> Result<T> {
    let meta = &table.meta;
    let row = change.after.as_deref().unwrap_or_default();
    let cols: Vec<&str> = meta.primary_key.iter().map(|&i| meta.columns[i].name.as_str()).collect();
    let vals: Vec<String> =
        meta.primary_key.iter().map(|&i| json_value(&row[i], meta.columns[i].data_type).to_string()).collect();
    exec_err!("duplicate primary key ({})=({}) in table {}", cols.join(", "), vals.join(", "), meta.qualified_name())
}
