//! Live queries (`SUBSCRIBE`, docs/live-queries.md): a query's current rows, then every committed
//! change to them, pushed in commit order.
//!
//! How a change reaches a subscriber: a write to a table that live queries watch hands its row
//! changes to [`Live::on_written`], which the store calls under its commit lock right after the
//! write ([`topicfusion_storage::Commit::on_written`]), with the commit's position (RocksDB's
//! sequence number): so changes are staged in exactly the order they were committed, and
//! nothing that failed to commit is staged. The dispatch thread takes what is staged, waits
//! until it is durable (with `sync_writes`, the fsync that covers it), then, for each commit,
//! finds the subscriptions it may concern — by the equality a filter requires (`user_id = 42`:
//! one hash lookup per changed row and indexed column, so a write costs O(matching
//! subscriptions)), plus the subscriptions without one — evaluates their filters (compiled as
//! topic routes' are) on the rows before and after, and queues the rows for each subscriber:
//! an UPDATE entering the filter as `insert`, leaving it as `delete`. The writer pays a move of
//! its change list and a queue push; the rest runs on the dispatch thread.
//!
//! A subscriber's queue holds at most [`LiveOptions::buffer_rows`] rows: one that falls
//! further behind is ended with `subscriber_too_slow` (naming the position to resume from), so it
//! never slows writers or other subscribers. The last [`LiveOptions::history_rows`] changed rows
//! of watched tables are kept in memory to resume from a position; older positions (or ones
//! from before a restart) get `position_too_old`: subscribe again with a snapshot.

mod query;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::physical_expr::PhysicalExpr;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use topicfusion_storage::codec::{decode_row, encode_key_value};
use topicfusion_storage::{ChangeOp, OnWritten, Store, Value, keys};

pub(crate) use query::LiveQuery;

use crate::auth::{Action, Users, authorize};
use crate::catalog::routes::nullable_schema;
use crate::catalog::types::{ColumnMeta, rows_to_batch};
use crate::catalog::{Catalog, Table, storage_err};
use crate::topics::cdc::payload::object;
use crate::topics::cdc::router::RowChange;

/// Memory bounds of live queries.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Changed rows kept to resume from a position (all watched tables together).
    pub history_rows: usize,
    /// Rows one subscriber may have waiting before it is ended as too slow.
    pub buffer_rows: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self { history_rows: 100_000, buffer_rows: 10_000 }
    }
}

/// What a live row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveOp {
    /// A row of the query's result when it started.
    Snapshot,
    Insert,
    Update,
    Delete,
}

impl LiveOp {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveOp::Snapshot => "snapshot",
            LiveOp::Insert => "insert",
            LiveOp::Update => "update",
            LiveOp::Delete => "delete",
        }
    }
}

/// One row of a live query: its selected columns (for a delete, the old row's), and for an
/// update the old row's too.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub op: LiveOp,
    /// The position of the commit (of the snapshot, for snapshot rows).
    pub position: u64,
    pub row: Vec<Value>,
    pub old: Option<Vec<Value>>,
}

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEnd {
    /// `subscriber_too_slow`, `table_changed`, `permission_denied`, `filter_failed`,
    /// `storage_failed`, `snapshot_failed`, `shutting_down`.
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for LiveEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for LiveEnd {}

/// What a subscriber receives.
#[derive(Debug)]
pub enum LiveEvent {
    /// Rows of one commit (all of them, in change order), or a chunk of the snapshot.
    Rows(Vec<LiveRow>),
    /// The snapshot is complete: changes after `position` follow (a client that lost the
    /// connection before this resumes only by subscribing again with a snapshot).
    Ready { position: u64 },
    /// The subscription ended; nothing follows.
    End(LiveEnd),
}

/// An open subscription, as `system.live_queries` lists it.
#[derive(Debug, Clone)]
pub struct LiveQueryInfo {
    pub id: u64,
    pub user: String,
    pub sql: String,
    /// The position of the last commit delivered (or the start).
    pub position: u64,
    /// Rows delivered (snapshot rows not counted).
    pub delivered: u64,
}

/// The live queries of a database: the staging queue, the dispatch thread and the subscriptions.
pub struct Live {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    options: LiveOptions,
    queue: Mutex<Queue>,
    work: Condvar,
    hub: Mutex<Hub>,
    next_id: AtomicU64,
    /// Open subscriptions (checked without the hub's lock).
    open: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    staged: Vec<Staged>,
    shutdown: bool,
}

/// A committed statement's changes to a watched table.
struct Staged {
    position: u64,
    table: Arc<Table>,
    changes: Vec<RowChange>,
}

struct Hub {
    /// The position of the last commit dispatched (at start: the store's).
    position: u64,
    /// The history holds every staged change after this position.
    floor: u64,
    history: VecDeque<Arc<Staged>>,
    history_rows: usize,
    /// Since which position each watched table's changes are staged.
    watched_since: HashMap<u64, u64>,
    subs: HashMap<u64, Sub>,
    by_table: HashMap<u64, TableSubs>,
}

/// The subscriptions of one table: by the column value their filter requires, and the others.
#[derive(Default)]
struct TableSubs {
    by_value: HashMap<usize, HashMap<Vec<u8>, Vec<u64>>>,
    others: Vec<u64>,
}

struct Sub {
    user: String,
    sql: String,
    query: LiveQuery,
    /// Changes at or before this position are not delivered (they are in the snapshot, or the
    /// subscriber had them).
    start: u64,
    position: u64,
    delivered: u64,
    tx: mpsc::UnboundedSender<LiveEvent>,
    buffered: Arc<AtomicUsize>,
}

/// A subscription: [`Subscription::next`] gives the snapshot's rows, then each commit's.
/// Dropping it ends the subscription.
pub struct Subscription {
    pub id: u64,
    /// The position the subscription starts at: its snapshot's, or the one it resumed from.
    pub position: u64,
    /// The selected columns.
    pub columns: Vec<ColumnMeta>,
    snapshot: Option<mpsc::Receiver<LiveEvent>>,
    rx: mpsc::UnboundedReceiver<LiveEvent>,
    buffered: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next rows, or the end (`None` once ended, after the [`LiveEvent::End`]).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        if let Some(snapshot) = &mut self.snapshot {
            match snapshot.recv().await {
                Some(event) => return Some(event),
                None => {
                    self.snapshot = None;
                    return Some(LiveEvent::Ready { position: self.position });
                }
            }
        }
        let event = self.rx.recv().await?;
        if let LiveEvent::Rows(rows) = &event {
            self.buffered.fetch_sub(rows.len(), Ordering::AcqRel);
        }
        Some(event)
    }

    /// Whether the subscription starts with a snapshot (not yet complete).
    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// A row's selected columns as a JSON object, values as in message payloads.
    pub fn row_object(&self, row: &[Value]) -> Map<String, Json> {
        object(&self.columns, row, 0..self.columns.len())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.hub().end(&self.shared, self.id, None);
    }
}

impl Shared {
    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Live {
    /// Starts the dispatch thread. It holds the store weakly, so it never keeps it open.
    pub fn start(store: &Arc<Store>, options: LiveOptions) -> Result<Self> {
        let position = store.position();
        let shared = Arc::new(Shared {
            options,
            queue: Mutex::default(),
            work: Condvar::new(),
            hub: Mutex::new(Hub {
                position,
                floor: position,
                history: VecDeque::new(),
                history_rows: 0,
                watched_since: HashMap::new(),
                subs: HashMap::new(),
                by_table: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
        });
        let (thread_shared, weak_store) = (Arc::clone(&shared), Arc::downgrade(store));
        let thread = std::thread::Builder::new()
            .name("live-dispatch".into())
            .spawn(move || dispatch_loop(&thread_shared, &weak_store))?;
        Ok(Self { shared, thread: Mutex::new(Some(thread)) })
    }

    /// What a write to a watched table passes to the store: stages its changes at its position.
    pub fn on_written(&self, table: Arc<Table>, changes: Vec<RowChange>) -> OnWritten {
        let shared = Arc::clone(&self.shared);
        Box::new(move |position| {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.staged.push(Staged { position, table, changes });
            shared.work.notify_one();
        })
    }

    /// Starts a subscription on the query compiled for `user`. With `snapshot`, its first rows
    /// are the query's current rows; else it starts after `from` (resuming) or now.
    pub(crate) async fn subscribe(
        &self,
        store: &Arc<Store>,
        user: &str,
        sql: &str,
        query: LiveQuery,
        snapshot: bool,
        from: Option<u64>,
    ) -> Result<Subscription> {
        let table = Arc::clone(&query.table);
        if !table.live.load(Ordering::Acquire) {
            // With the table's lock held exclusively no write to it is between its check of
            // `live` and its commit: every write after this one's position is staged.
            let _no_writer = Arc::clone(&table.write_lock).write_owned().await;
            if !table.live.load(Ordering::Acquire) {
                self.shared.hub().watched_since.insert(table.meta.id, store.position());
                table.live.store(true, Ordering::Release);
            }
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let columns = query.projection.iter().map(|&i| table.meta.columns[i].clone()).collect();
        let sub = Sub {
            user: user.to_owned(),
            sql: sql.to_owned(),
            query: query.clone(),
            start: 0,
            position: 0,
            delivered: 0,
            tx,
            buffered: Arc::clone(&buffered),
        };
        let shared = Arc::clone(&self.shared);
        let mut subscription =
            Subscription { id, position: 0, columns, snapshot: None, rx, buffered, shared: Arc::clone(&shared) };
        if snapshot {
            let (rows_tx, rows_rx) = mpsc::channel(2);
            let (start_tx, start_rx) = tokio::sync::oneshot::channel();
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || snapshot_scan(&store, &shared, id, sub, query, start_tx, rows_tx));
            subscription.position = match start_rx.await {
                Ok(Ok(position)) => position,
                Ok(Err(e)) => return Err(e),
                Err(_) => return exec_err!("internal: the snapshot of the live query stopped"),
            };
            subscription.snapshot = Some(rows_rx);
        } else {
            subscription.position = match from {
                Some(from) => self.shared.hub().register_from(&self.shared, id, sub, from, store.position())?,
                None => store.at_position(|position| self.shared.hub().register(&self.shared, id, sub, position)),
            };
        }
        Ok(subscription)
    }

    /// Whether any subscription is open.
    pub fn any(&self) -> bool {
        self.shared.open.load(Ordering::Acquire) > 0
    }

    /// The open subscriptions.
    pub fn list(&self) -> Vec<LiveQueryInfo> {
        let hub = self.shared.hub();
        let mut out: Vec<LiveQueryInfo> = hub
            .subs
            .iter()
            .map(|(&id, s)| LiveQueryInfo {
                id,
                user: s.user.clone(),
                sql: s.sql.clone(),
                position: s.position,
                delivered: s.delivered,
            })
            .collect();
        out.sort_by_key(|q| q.id);
        out
    }

    /// Ends the subscriptions whose user was dropped or may no longer read tables.
    pub fn revalidate(&self, users: &Users) {
        if !self.any() {
            return;
        }
        let mut hub = self.shared.hub();
        let ended: Vec<(u64, LiveEnd)> = hub
            .subs
            .iter()
            .filter_map(|(&id, s)| {
                let message = match users.principal(&s.user) {
                    None => format!("user {} was dropped", s.user),
                    Some(p) => match authorize(&p, Action::ReadWrite, false) {
                        Ok(()) => return None,
                        Err(e) => e.to_string(),
                    },
                };
                Some((id, LiveEnd { code: "permission_denied", message }))
            })
            .collect();
        for (id, end) in ended {
            hub.end(&self.shared, id, Some(end));
        }
    }

    /// Ends the subscriptions whose table was dropped or replaced (by DDL).
    pub fn check_tables(&self, catalog: &Catalog) {
        if !self.any() {
            return;
        }
        let state = catalog.read();
        let mut hub = self.shared.hub();
        let ended: Vec<(u64, LiveEnd)> = hub
            .subs
            .iter()
            .filter(|(_, s)| {
                let meta = &s.query.table.meta;
                !state.table(&meta.schema, &meta.name).is_some_and(|t| Arc::ptr_eq(t, &s.query.table))
            })
            .map(|(&id, s)| (id, table_changed(&s.query.table)))
            .collect();
        drop(state);
        for (id, end) in ended {
            hub.end(&self.shared, id, Some(end));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        let mut hub = self.shared.hub();
        let ids: Vec<u64> = hub.subs.keys().copied().collect();
        for id in ids {
            let end = LiveEnd { code: "shutting_down", message: "the server is shutting down".into() };
            hub.end(&self.shared, id, Some(end));
        }
    }
}

fn table_changed(table: &Table) -> LiveEnd {
    LiveEnd {
        code: "table_changed",
        message: format!("table {} was dropped or changed: subscribe again", table.meta.qualified_name()),
    }
}

/// The dispatch thread: staged commits, once durable, to their subscribers, in commit order.
fn dispatch_loop(shared: &Shared, store: &Weak<Store>) {
    loop {
        let staged = {
            let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            while queue.staged.is_empty() && !queue.shutdown {
                queue = shared.work.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.staged.is_empty() {
                return;
            }
            std::mem::take(&mut queue.staged)
        };
        // Everything staged is written; deliver it once durable.
        let durable = match store.upgrade() {
            Some(store) => store.finish(store.written()).map(drop).map_err(|e| e.to_string()),
            None => Err("the database was closed".to_owned()),
        };
        let mut hub = shared.hub();
        if let Err(reason) = durable {
            let ids: Vec<u64> = hub.subs.keys().copied().collect();
            for id in ids {
                let end = LiveEnd {
                    code: "storage_failed",
                    message: format!("the commits could not be made durable: {reason}"),
                };
                hub.end(shared, id, Some(end));
            }
            continue;
        }
        for s in staged {
            hub.dispatch(shared, Arc::new(s));
        }
    }
}

/// The snapshot of a new subscription, on a blocking thread: registers it at the snapshot's
/// position (under the commit lock, so no commit falls between the snapshot and its changes),
/// waits until the snapshot is durable, reports the position, then streams the matching rows.
fn snapshot_scan(
    store: &Store,
    shared: &Arc<Shared>,
    id: u64,
    sub: Sub,
    query: LiveQuery,
    start_tx: tokio::sync::oneshot::Sender<Result<u64>>,
    rows_tx: mpsc::Sender<LiveEvent>,
) {
    let table = &query.table;
    let prefix = keys::table_prefix(table.meta.id);
    let end = keys::prefix_end(&prefix);
    let position = Cell::new(0);
    let start_tx = RefCell::new(Some(start_tx));
    // Everything in the snapshot is durable before the position is given out.
    let announce = || {
        if let Some(tx) = start_tx.borrow_mut().take() {
            let durable = store.finish(store.written()).map(|_| position.get()).map_err(storage_err);
            let ok = durable.is_ok();
            let _ = tx.send(durable);
            return ok;
        }
        true
    };
    let mut sub = Some(sub);
    let scanned = store.scan_at_position(
        &prefix,
        &end,
        1024,
        |at| {
            position.set(at);
            let sub = sub.take().expect("called once");
            shared.hub().register(shared, id, sub, at);
        },
        |pairs| {
            if !announce() {
                return false;
            }
            match snapshot_rows(&query, &pairs, position.get()) {
                Ok(rows) if rows.is_empty() => true,
                Ok(rows) => rows_tx.blocking_send(LiveEvent::Rows(rows)).is_ok(),
                Err(e) => {
                    let end = LiveEnd { code: "snapshot_failed", message: e.to_string() };
                    let _ = rows_tx.blocking_send(LiveEvent::End(end));
                    false
                }
            }
        },
    );
    match scanned {
        Ok(()) => {
            announce();
        }
        Err(e) => match start_tx.borrow_mut().take() {
            Some(tx) => {
                let _ = tx.send(Err(storage_err(e)));
            }
            None => {
                let end = LiveEnd { code: "snapshot_failed", message: e.to_string() };
                let _ = rows_tx.blocking_send(LiveEvent::End(end));
            }
        },
    }
}

/// The snapshot rows of one chunk of the table's stored rows.
fn snapshot_rows(query: &LiveQuery, pairs: &[(Vec<u8>, Vec<u8>)], position: u64) -> Result<Vec<LiveRow>> {
    let table = &query.table;
    let rows =
        pairs.iter().map(|(_, v)| decode_row(v)).collect::<std::result::Result<Vec<_>, _>>().map_err(storage_err)?;
    let mask = match &query.filter {
        Some(filter) => Some(evaluate(filter.as_ref(), &batch_of(table, &rows)?)?),
        None => None,
    };
    Ok(rows
        .iter()
        .enumerate()
        .filter(|(i, _)| mask.as_ref().is_none_or(|m| m.is_valid(*i) && m.value(*i)))
        .map(|(_, row)| LiveRow { op: LiveOp::Snapshot, position, row: project(query, row), old: None })
        .collect())
}

fn batch_of(table: &Table, rows: &[Vec<Value>]) -> Result<RecordBatch> {
    let all: Vec<usize> = (0..table.meta.columns.len()).collect();
    rows_to_batch(&nullable_schema(table), &table.meta.columns, &all, rows)
}

fn evaluate(filter: &dyn PhysicalExpr, batch: &RecordBatch) -> Result<BooleanArray> {
    let array = filter.evaluate(batch)?.into_array(batch.num_rows())?;
    match array.as_any().downcast_ref::<BooleanArray>() {
        Some(b) => Ok(b.clone()),
        None => exec_err!("a live query's filter returned {}, not booleans", array.data_type()),
    }
}

fn project(query: &LiveQuery, row: &[Value]) -> Vec<Value> {
    query.projection.iter().map(|&i| row[i].clone()).collect()
}

fn key_of(value: &Value) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    encode_key_value(value, &mut key).ok()?;
    Some(key)
}

/// The Arrow batches of a commit's row images before and after, built once per commit when a
/// filter needs them (a missing image is a row of NULLs, never counted as a match).
struct Images<'a> {
    staged: &'a Staged,
    before: Option<RecordBatch>,
    after: Option<RecordBatch>,
}

impl Images<'_> {
    fn masks(&mut self, filter: &dyn PhysicalExpr) -> Result<(BooleanArray, BooleanArray)> {
        let table = &self.staged.table;
        let nulls = || vec![Value::Null; table.meta.columns.len()];
        let build = |pick: fn(&RowChange) -> Option<&Vec<Value>>| -> Result<RecordBatch> {
            let rows: Vec<Vec<Value>> =
                self.staged.changes.iter().map(|c| pick(c).cloned().unwrap_or_else(nulls)).collect();
            batch_of(table, &rows)
        };
        if self.before.is_none() {
            self.before = Some(build(|c| c.before.as_ref())?);
            self.after = Some(build(|c| c.after.as_ref())?);
        }
        let (before, after) = (self.before.as_ref().expect("built"), self.after.as_ref().expect("built"));
        Ok((evaluate(filter, before)?, evaluate(filter, after)?))
    }
}

impl TableSubs {
    fn add(&mut self, id: u64, query: &LiveQuery) {
        match &query.equality {
            Some(eq) => self.by_value.entry(eq.column).or_default().entry(eq.key.clone()).or_default().push(id),
            None => self.others.push(id),
        }
    }

    fn remove(&mut self, id: u64, query: &LiveQuery) {
        match &query.equality {
            Some(eq) => {
                if let Some(values) = self.by_value.get_mut(&eq.column) {
                    if let Some(ids) = values.get_mut(&eq.key) {
                        ids.retain(|&i| i != id);
                        if ids.is_empty() {
                            values.remove(&eq.key);
                        }
                    }
                    if values.is_empty() {
                        self.by_value.remove(&eq.column);
                    }
                }
            }
            None => self.others.retain(|&i| i != id),
        }
    }

    fn is_empty(&self) -> bool {
        self.by_value.is_empty() && self.others.is_empty()
    }

    /// The subscriptions a commit may concern, each with the changes to look at (`None`: all).
    fn targets(&self, staged: &Staged) -> Vec<(u64, Option<Vec<usize>>)> {
        let mut candidates: HashMap<u64, Vec<usize>> = HashMap::new();
        for (&column, values) in &self.by_value {
            for (i, change) in staged.changes.iter().enumerate() {
                for image in [change.before.as_ref(), change.after.as_ref()].into_iter().flatten() {
                    let Some(ids) = key_of(&image[column]).and_then(|k| values.get(&k)) else { continue };
                    for &id in ids {
                        let rows = candidates.entry(id).or_default();
                        if rows.last() != Some(&i) {
                            rows.push(i);
                        }
                    }
                }
            }
        }
        let mut out: Vec<(u64, Option<Vec<usize>>)> =
            candidates.into_iter().map(|(id, rows)| (id, Some(rows))).collect();
        out.extend(self.others.iter().map(|&id| (id, None)));
        out
    }
}

impl Sub {
    /// The rows of a commit's changes this subscription sees (`rows`: which changes to look at).
    fn rows(&self, images: &mut Images<'_>, rows: Option<&[usize]>) -> Result<Vec<LiveRow>> {
        let staged = images.staged;
        let query = &self.query;
        let masks = match (&query.filter, &query.equality) {
            (Some(_), Some(eq)) if eq.exact => None,
            (Some(filter), _) => Some(images.masks(filter.as_ref())?),
            (None, _) => None,
        };
        let matches = |i: usize, image: Option<&Vec<Value>>, mask: Option<&BooleanArray>| -> bool {
            let Some(image) = image else { return false };
            match (mask, &query.equality) {
                (Some(mask), _) => mask.is_valid(i) && mask.value(i),
                (None, Some(eq)) => key_of(&image[eq.column]).is_some_and(|k| k == eq.key),
                (None, None) => true,
            }
        };
        let all: Vec<usize>;
        let indexes = match rows {
            Some(rows) => rows,
            None => {
                all = (0..staged.changes.len()).collect();
                &all
            }
        };
        let mut out = Vec::new();
        for &i in indexes {
            let change = &staged.changes[i];
            let (before, after) = (change.before.as_ref(), change.after.as_ref());
            let b = matches(i, before, masks.as_ref().map(|m| &m.0));
            let a = matches(i, after, masks.as_ref().map(|m| &m.1));
            let (op, row, old) = match (change.op, b, a) {
                (ChangeOp::Insert, _, true) => (LiveOp::Insert, after, None),
                (ChangeOp::Delete, true, _) => (LiveOp::Delete, before, None),
                (ChangeOp::Update, true, true) => (LiveOp::Update, after, before),
                (ChangeOp::Update, false, true) => (LiveOp::Insert, after, None),
                (ChangeOp::Update, true, false) => (LiveOp::Delete, before, None),
                _ => continue,
            };
            let Some(row) = row else { continue };
            out.push(LiveRow {
                op,
                position: staged.position,
                row: project(query, row),
                old: old.map(|o| project(query, o)),
            });
        }
        Ok(out)
    }

    /// Queues a commit's rows, unless the subscriber is too far behind (or gone).
    fn send(&mut self, rows: Vec<LiveRow>, position: u64, limit: Option<usize>) -> std::result::Result<(), LiveEnd> {
        let n = rows.len();
        let waiting = self.buffered.load(Ordering::Acquire);
        if let Some(limit) = limit
            && waiting > 0
            && waiting + n > limit
        {
            return Err(LiveEnd {
                code: "subscriber_too_slow",
                message: format!(
                    "the subscriber fell {waiting} rows behind (the limit is {limit}): resume with from_position = {}",
                    self.position
                ),
            });
        }
        self.buffered.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(LiveEvent::Rows(rows)).is_err() {
            return Err(LiveEnd { code: "closed", message: String::new() });
        }
        self.position = position;
        self.delivered += n as u64;
        Ok(())
    }
}

impl Hub {
    /// Adds a subscription that sees the changes after `start`; returns `start`.
    fn register(&mut self, shared: &Shared, id: u64, mut sub: Sub, start: u64) -> u64 {
        sub.start = start;
        sub.position = start;
        self.by_table.entry(sub.query.table.meta.id).or_default().add(id, &sub.query);
        self.subs.insert(id, sub);
        shared.open.fetch_add(1, Ordering::AcqRel);
        start
    }

    /// Adds a subscription resuming after `from`: the kept changes after it first.
    fn register_from(&mut self, shared: &Shared, id: u64, mut sub: Sub, from: u64, now: u64) -> Result<u64> {
        let table = Arc::clone(&sub.query.table);
        if from > now {
            return exec_err!("from_position {from} is ahead of this server's last commit ({now})");
        }
        let since = self.watched_since.get(&table.meta.id).copied().unwrap_or(u64::MAX);
        let kept_from = self.floor.max(since);
        if from < kept_from {
            let message = format!(
                "the changes after position {from} are no longer kept (this server keeps those after {kept_from}): subscribe again with a snapshot"
            );
            return Err(DataFusionError::External(Box::new(LiveEnd { code: "position_too_old", message })));
        }
        sub.start = from;
        sub.position = from;
        for staged in self.history.iter().filter(|s| s.position > from && s.table.meta.id == table.meta.id) {
            if !Arc::ptr_eq(&staged.table, &table) {
                return exec_err!("{}", table_changed(&table).message);
            }
            let mut images = Images { staged, before: None, after: None };
            let rows = sub.rows(&mut images, None)?;
            if !rows.is_empty() {
                // The replay is bounded by the history, not by the subscriber's buffer.
                let _ = sub.send(rows, staged.position, None);
            }
        }
        Ok(self.register(shared, id, sub, from))
    }

    /// Removes a subscription; with `end`, tells the subscriber why.
    fn end(&mut self, shared: &Shared, id: u64, end: Option<LiveEnd>) {
        let Some(sub) = self.subs.remove(&id) else { return };
        shared.open.fetch_sub(1, Ordering::AcqRel);
        let table_id = sub.query.table.meta.id;
        if let Some(subs) = self.by_table.get_mut(&table_id) {
            subs.remove(id, &sub.query);
            if subs.is_empty() {
                self.by_table.remove(&table_id);
            }
        }
        if let Some(end) = end {
            let _ = sub.tx.send(LiveEvent::End(end));
        }
    }

    /// Delivers one durable commit to the subscriptions it concerns and keeps it for resuming.
    fn dispatch(&mut self, shared: &Shared, staged: Arc<Staged>) {
        self.position = self.position.max(staged.position);
        let table_id = staged.table.meta.id;
        if let Some(subs) = self.by_table.get(&table_id) {
            let targets = subs.targets(&staged);
            let mut images = Images { staged: &staged, before: None, after: None };
            let mut ended = Vec::new();
            for (id, rows) in targets {
                let Some(sub) = self.subs.get_mut(&id) else { continue };
                if sub.start >= staged.position {
                    continue;
                }
                if !Arc::ptr_eq(&sub.query.table, &staged.table) {
                    ended.push((id, table_changed(&sub.query.table)));
                    continue;
                }
                match sub.rows(&mut images, rows.as_deref()) {
                    Ok(rows) if rows.is_empty() => {}
                    Ok(rows) => {
                        if let Err(end) = sub.send(rows, staged.position, Some(shared.options.buffer_rows)) {
                            ended.push((id, end));
                        }
                    }
                    Err(e) => ended.push((id, LiveEnd { code: "filter_failed", message: e.to_string() })),
                }
            }
            for (id, end) in ended {
                let end = (end.code != "closed").then_some(end);
                self.end(shared, id, end);
            }
        }
        self.history_rows += staged.changes.len();
        self.history.push_back(staged);
        while self.history_rows > shared.options.history_rows {
            let Some(oldest) = self.history.pop_front() else { break };
            self.history_rows -= oldest.changes.len();
            self.floor = oldest.position;
        }
    }
}
