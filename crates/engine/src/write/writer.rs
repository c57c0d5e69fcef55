//! The table write path: turns the rows a DML statement produced into row changes (with the
//! before and after image of every row), checks keys and NOT NULL, routes the changes to topic
//! messages, and writes rows and messages in one write batch on a commit thread
//! ([`crate::write::commit_threads`]), or for a lone small statement on its own thread (the short
//! path, which also fsyncs there when no fsync is running: `Store::sync_here`; never on a
//! replica, whose write blocks for a round trip through the log); the statement
//! is answered once the batch is durable and visible (`Store::when_durable`), after the locks
//! are released.
//!
//! [`write_statement`] is the one entry: the DataFusion operator (`TableWriteExec`), the literal
//! INSERT fast path and COPY go through it. Locking: the DDL lock (read) from the statement's
//! first read to its write, so it sees one set of routes; the table's lock exclusively for
//! UPDATE and DELETE (from their first read) and for INSERTs into tables with hidden row ids;
//! shared by other INSERTs, which reserve their keys instead, so no update is lost and no key is
//! taken twice while INSERTs of one table run in parallel.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, BinaryArray, RecordBatch};
use datafusion::common::{Result, exec_err};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use topicfusion_storage::codec::{encode_key_value, encode_row};
use topicfusion_storage::{ChangeOp, Commit, Store, Value, keys};

use crate::catalog::types::batch_rows;
use crate::catalog::{Table, put_rowid_sequence, storage_err};
use crate::core::Core;
use crate::topics::cdc::payload::json_value;
use crate::topics::cdc::router::{RowChange, encode_rowid, route};

/// What one statement changes in one table.
#[derive(Debug, Default)]
pub struct Changes {
    pub changes: Vec<RowChange>,
    /// Keys the statement removes (DELETE, and UPDATE moving a row to a new key).
    removed: Vec<Vec<u8>>,
    /// Keys of the rows an UPDATE or DELETE changed.
    old_keys: Vec<Vec<u8>>,
    /// INSERT into a table with a hidden row id: keys are assigned under the table lock.
    needs_rowids: bool,
}

/// The table lock a statement holds until its write is done.
enum TableGuard {
    /// INSERT into a table with a primary key: shared with other INSERTs, whose keys are kept
    /// apart by [`KeyReservation`]s.
    Shared { _lock: tokio::sync::OwnedRwLockReadGuard<()>, _keys: KeyReservation },
    /// UPDATE, DELETE, and INSERT into a table with hidden row ids (assigned in commit order).
    Exclusive { _lock: tokio::sync::OwnedRwLockWriteGuard<()> },
}

/// Keys an INSERT is about to create, reserved in the table from before its key check until its
/// write is in RocksDB, so two concurrent INSERTs of one key cannot both find it free.
struct KeyReservation {
    table: Arc<Table>,
    keys: Vec<Vec<u8>>,
}

impl KeyReservation {
    /// Reserves all of `keys` at once, waiting while another statement holds any of them.
    async fn acquire(table: &Arc<Table>, keys: Vec<Vec<u8>>) -> Self {
        loop {
            let released = table.keys_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut reserved = table.reserved_keys.lock().unwrap_or_else(|e| e.into_inner());
                if !keys.iter().any(|k| reserved.contains(k)) {
                    reserved.extend(keys.iter().cloned());
                    return Self { table: Arc::clone(table), keys };
                }
            }
            released.await;
        }
    }
}

impl Drop for KeyReservation {
    fn drop(&mut self) {
        let mut reserved = self.table.reserved_keys.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            reserved.remove(k);
        }
        self.table.keys_released.notify_waiters();
    }
}

/// Runs one DML statement on `table`: `read` produces its changes under the DDL lock (read) and,
/// when `read_under_table_lock` (UPDATE, DELETE: they read the rows they change), under the
/// table's lock held exclusively. Returns the number of rows changed once the commit is durable.
///
/// INSERTs into a table with a primary key share the table lock: each converts and routes its
/// rows, reserves its keys, then checks and writes them, in parallel with other INSERTs of the
/// table; UPDATE and DELETE wait for them and exclude them.
pub async fn write_statement<F>(
    core: &Arc<Core>,
    table: &Arc<Table>,
    read_under_table_lock: bool,
    read: F,
) -> Result<u64>
where
    F: Future<Output = Result<Changes>>,
{
    // On a cluster node that does not lead, refused before anything is read (its catalog may be
    // reloaded under the statement); on a leader, a statement reads what the fence reloaded.
    core.store.ensure_writable().map_err(storage_err)?;
    let ddl = Arc::clone(&core.ddl_lock).read_owned().await;
    let (changes, guard) = if read_under_table_lock {
        let guard = Arc::clone(&table.write_lock).write_owned().await;
        check_current(core, table)?;
        (read.await?, TableGuard::Exclusive { _lock: guard })
    } else {
        let changes = read.await?;
        let guard = if changes.needs_rowids {
            TableGuard::Exclusive { _lock: Arc::clone(&table.write_lock).write_owned().await }
        } else {
            let shared = Arc::clone(&table.write_lock).read_owned().await;
            let keys = changes.changes.iter().map(|c| c.key.clone()).collect();
            TableGuard::Shared { _lock: shared, _keys: KeyReservation::acquire(table, keys).await }
        };
        check_current(core, table)?;
        (changes, guard)
    };
    // The routes cannot change while the DDL lock is held.
    let topics = core.catalog.read().topics_fed_by(table.meta.id);
    // One job on a commit thread (a large statement's on the blocking pool): the key check, routing
    // and the write (offsets assigned in commit order); it asks for the fsync at once, then releases
    // the locks. The statement waits, without holding a thread, for one answer: the error, or its
    // commit durable (one fsync of the WAL-sync thread shared with concurrent commits in --sync mode,
    // whose thread then answers) and visible. A later writer's commit is after this one in the WAL,
    // so it is never durable without it. If the statement is cancelled, the commit still completes.
    let large = changes.changes.len() > LARGE_STATEMENT_ROWS;
    // The short path, for one small statement (at most SHORT_PATH_ROWS rows) at a time: it writes
    // on its own thread and, when
    // no fsync is running, fsyncs there too: no hand-off to a commit thread or the WAL-sync
    // thread and back (each a thread wake-up: most of a lone synced INSERT's time besides its
    // fsync). Nothing in it awaits, so it cannot be cancelled half-way.
    // Not on a replica, whose write blocks its thread for a round trip through the log: on the
    // engine's runtime that held up every other statement's parsing and planning.
    let short = changes.changes.len() <= SHORT_PATH_ROWS && !core.store.replicates();
    if short && let Some(_slot) = core.commit_threads.short_path() {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(core, table, &topics, changes)))
            .unwrap_or_else(|_| exec_err!("internal: writing the statement panicked"));
        drop(guard);
        drop(ddl);
        drop(_slot);
        let (count, pending) = written?;
        let committed = match core.store.sync_here(pending) {
            Ok(done) => done,
            Err(pending) => core.store.durable(pending).await,
        };
        return committed.map(|_| count).map_err(storage_err);
    }
    let (store, table, job_core) = (Arc::clone(&core.store), Arc::clone(table), Arc::clone(core));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = move || {
        match write(&job_core, &table, &topics, changes) {
            // Asks for the fsync (Sync mode) before the locks are released.
            Ok((count, pending)) => store.when_durable(pending, move |durable| {
                let _ = tx.send(durable.map(|_| count).map_err(storage_err));
            }),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        drop(guard);
        drop(ddl);
    };
    if large {
        drop(tokio::task::spawn_blocking(job));
    } else {
        core.commit_threads.submit(job);
    }
    rx.await.unwrap_or_else(|_| exec_err!("internal: the thread writing the statement stopped"))
}

/// Statements of at most this many rows may take the short path: it blocks a tokio worker for
/// the write (and one fsync), which must stay small.
const SHORT_PATH_ROWS: usize = 64;

/// Statements changing more rows than this write on tokio's blocking pool instead of the commit
/// threads, so that small statements never queue behind them for a whole large write (two
/// 500k-row INSERTs had both commit threads and held synced single-row INSERTs up to 1.4 s).
const LARGE_STATEMENT_ROWS: usize = 4096;

fn check_current(core: &Core, table: &Arc<Table>) -> Result<()> {
    let current = core.catalog.read().table(&table.meta.schema, &table.meta.name).cloned();
    if !current.is_some_and(|t| Arc::ptr_eq(&t, table)) {
        return exec_err!("table {} was dropped", table.meta.qualified_name());
    }
    Ok(())
}

/// The changes of an INSERT of full table rows (NOT NULL and primary keys checked).
pub fn insert_changes(table: &Table, rows: Vec<Vec<Value>>) -> Result<Changes> {
    let mut out = Changes { needs_rowids: table.meta.primary_key.is_empty(), ..Default::default() };
    out.changes.reserve(rows.len());
    for row in rows {
        check_not_null(table, &row)?;
        let key = primary_key(table, &row)?.unwrap_or_default();
        out.changes.push(RowChange { op: ChangeOp::Insert, key, old_key: None, before: None, after: Some(row) });
    }
    Ok(out)
}

/// Reads a DML input stream into changes, failing once it holds more than `limit` bytes of
/// Arrow data (the statement's working set is bounded).
pub async fn read_changes(
    mut stream: SendableRecordBatchStream,
    table: &Table,
    op: ChangeOp,
    limit: usize,
) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut bytes = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        bytes += batch.get_array_memory_size();
        if bytes > limit {
            return Err(too_large(limit, table));
        }
        add_batch(&mut changes, table, op, &batch)?;
    }
    Ok(changes)
}

/// The error of a statement that changes more row data than `max_statement_bytes`.
pub fn too_large(limit: usize, table: &Table) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Execution(format!(
        "the statement changes more than {} MiB of rows in {} (limit max_statement_bytes): split it, e.g. by key ranges",
        limit >> 20,
        table.meta.qualified_name()
    ))
}

/// Checks full rows of an INSERT against `max_statement_bytes` (each value counted as its
/// bytes plus 16).
pub fn check_rows_size(rows: &[Vec<Value>], limit: usize, table: &Table) -> Result<()> {
    let mut bytes = 0usize;
    for v in rows.iter().flatten() {
        bytes += 16
            + match v {
                Value::Utf8(s) => s.len(),
                Value::Binary(b) => b.len(),
                _ => 0,
            };
        if bytes > limit {
            return Err(too_large(limit, table));
        }
    }
    Ok(())
}

/// Adds the changes of a DML operator's output batch. Layouts (n = number of table columns):
/// - Insert: the n new columns;
/// - Delete: the n old columns, then the storage key;
/// - Update: the n new columns, the n old columns, then the storage key.
pub fn add_batch(out: &mut Changes, table: &Table, op: ChangeOp, batch: &RecordBatch) -> Result<()> {
    let n = table.meta.columns.len();
    match op {
        ChangeOp::Insert => {
            let more = insert_changes(table, batch_rows(batch, &table.meta.columns, 0)?)?;
            out.needs_rowids = more.needs_rowids;
            out.changes.extend(more.changes);
        }
        ChangeOp::Delete => {
            let keys = key_column(batch, n)?;
            for (i, row) in batch_rows(batch, &table.meta.columns, 0)?.into_iter().enumerate() {
                let key = keys.value(i).to_vec();
                out.removed.push(key.clone());
                out.old_keys.push(key.clone());
                out.changes.push(RowChange { op, key, old_key: None, before: Some(row), after: None });
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
                    out.removed.push(old_key.clone());
                }
                out.old_keys.push(old_key);
                out.changes.push(RowChange { op, key, old_key: moved, before: Some(before), after: Some(after) });
            }
        }
    }
    Ok(())
}

/// Assigns hidden row ids, checks keys, routes and writes the changes (the caller holds the
/// table's write lock). `topics` are the topics fed by the table. A table live queries watch
/// hands its changes to them in commit order ([`crate::live::Live::on_written`]).
fn write(
    core: &Core,
    table: &Arc<Table>,
    topics: &[Arc<crate::catalog::Topic>],
    mut changes: Changes,
) -> Result<(u64, topicfusion_storage::Pending)> {
    let mut commit = Commit::default();
    let count = stage(&core.store, table, topics, &mut changes, &mut commit)?;
    if count > 0 && table.live.load(Ordering::Acquire) {
        commit.on_written = Some(core.live.on_written(Arc::clone(table), changes.changes));
    }
    let pending = core.store.write(commit).map_err(storage_err)?;
    table.rows_written.fetch_add(count, Ordering::Relaxed);
    Ok((count, pending))
}

/// Puts the changes and their messages into `commit`; returns the number of rows changed.
/// Also used by CREATE TABLE ... AS, whose rows commit with the new table's entry.
pub fn stage(
    store: &Store,
    table: &Table,
    topics: &[Arc<crate::catalog::Topic>],
    changes: &mut Changes,
    commit: &mut Commit,
) -> Result<u64> {
    if changes.needs_rowids && !changes.changes.is_empty() {
        let first = table.next_rowid.fetch_add(changes.changes.len() as u64, Ordering::SeqCst);
        for (i, change) in changes.changes.iter_mut().enumerate() {
            change.key = encode_rowid(first + i as u64);
        }
        put_rowid_sequence(commit, table);
    }
    check_keys(store, table, &changes.changes, &changes.old_keys)?;
    for key in &changes.removed {
        commit.batch.delete(keys::row_key(table.meta.id, key));
    }
    let mut buf = Vec::new();
    for change in &changes.changes {
        if let Some(after) = &change.after {
            buf.clear();
            encode_row(after, &mut buf);
            commit.batch.put(keys::row_key(table.meta.id, &change.key), &buf);
        }
    }
    if !topics.is_empty() {
        route(table, topics, &changes.changes, &mut commit.messages)?;
    }
    Ok(changes.changes.len() as u64)
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
