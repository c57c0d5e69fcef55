//! Live queries (`SUBSCRIBE`, docs/live-queries.md): a query's current rows, then every committed
//! change to them, pushed in commit order.
//!
//! How a change reaches a subscriber: a write to a table that live queries watch hands its row
//! changes to [`Live::on_written`], which the store calls under its commit lock right after the
//! write ([`topicfusion_storage::Commit::on_written`]), with the commit's position (RocksDB's
//! sequence number): so changes are queued in exactly the order they were committed, and
//! nothing that failed to commit is queued. One dispatch thread owns every subscription: what
//! else changes them (a new subscription, its end, DDL, user changes) is a job in the same
//! queue, so it takes effect at its place in commit order and nobody waits for a lock the
//! dispatcher holds. For each batch of jobs the thread waits until the queued commits are
//! durable (with `sync_writes`, the fsync that covers them), then, per commit, finds the
//! subscriptions it may concern — by the equality a filter requires (`user_id = 42`: one hash
//! lookup per changed row and indexed column, so a write costs O(matching subscriptions)),
//! plus the subscriptions without one — evaluates their filters (compiled as topic routes' are)
//! on the rows before and after, and queues the rows for each subscriber: an UPDATE entering
//! the filter as `insert`, leaving it as `delete`. The writer pays a move of its change list and
//! a queue push.
//!
//! A subscriber's queue holds at most [`LiveOptions::buffer_rows`] rows: one that falls
//! further behind is ended with `subscriber_too_slow` (naming the position to resume from), so it
//! never slows writers or other subscribers. The last [`LiveOptions::history_rows`] changed rows
//! of watched tables are kept in memory to resume from a position; older positions (or ones
//! from before a restart) get `position_too_old`: subscribe again with a snapshot. Idle
//! subscriptions get a progress position about every second, so that the position they would
//! resume from stays within the history.
//!
//! On a cluster, live queries run on the leader: its writers' commits reach the dispatcher
//! once their log entry is applied there, in log order, with positions that follow the log (the
//! same on every node, [`topicfusion_storage::store::POSITIONS_PER_ENTRY`]). An entry this node
//! applies that its writers did not make (after a leader change) ends every subscription with
//! `leader_changed` ([`Job::Foreign`]), and no resume reaches back before it.

mod batches;
mod inbox;
mod query;

pub use inbox::LiveGroup;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::physical_expr::PhysicalExpr;
use tokio::sync::{mpsc, oneshot};
use topicfusion_storage::codec::{decode_row, encode_key_value};
use topicfusion_storage::{ChangeOp, OnWritten, Store, Value, keys};

pub(crate) use query::LiveQuery;

use crate::auth::{Action, Principal, Users, authorize};
use crate::catalog::routes::nullable_schema;
use crate::catalog::types::{ColumnMeta, rows_to_batch};
use crate::catalog::{Catalog, Table, storage_err};
use crate::topics::cdc::payload::{name_prefixes, write_object};
use crate::topics::cdc::router::RowChange;

/// Memory bounds of live queries.
#[derive(Debug, Clone, Copy)]
pub struct LiveOptions {
    /// Changed rows kept to resume from a position (all watched tables together).
    pub history_rows: usize,
    /// Rows one subscriber may have waiting before it is ended as too slow.
    pub buffer_rows: usize,
    /// Open subscriptions on this server, all users together.
    pub max_subscriptions: usize,
    /// Changed rows queued for the dispatcher at most: past this (the dispatcher fell that far
    /// behind the writers) changes are dropped and every subscription is ended
    /// (`server_overloaded`) instead of letting the queue grow without bound. One commit alone
    /// is always queued, whatever its size.
    pub max_queued_rows: usize,
    /// How long a snapshot waits for room to hand its client more rows before it ends the
    /// subscription as too slow (freeing its thread and its RocksDB snapshot). While it waits it
    /// holds no turn among the snapshots read at once, so a client that reads slowly or not at
    /// all (a cursor nobody fetches from) never holds up other subscriptions.
    pub snapshot_stall: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            history_rows: 100_000,
            buffer_rows: 10_000,
            max_subscriptions: 100_000,
            max_queued_rows: 2_000_000,
            snapshot_stall: Duration::from_secs(60),
        }
    }
}

/// Snapshots read at once (each holds a blocking thread and a RocksDB snapshot while its
/// client reads); more wait for a turn.
const CONCURRENT_SNAPSHOTS: usize = 16;

/// How often an idle subscription is told the position it has seen everything up to.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
    /// `position_too_old`, `server_overloaded`, `storage_failed`, `snapshot_failed`,
    /// `too_many_subscriptions`, `shutting_down`, `leader_changed`.
    pub code: &'static str,
    pub message: String,
}

/// `code: message`.
impl std::fmt::Display for LiveEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for LiveEnd {}

impl LiveEnd {
    /// The kind of error the end is, for the interfaces' codes (a FETCH from a live cursor fails
    /// with it).
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self.code {
            "permission_denied" => ErrorKind::PermissionDenied,
            "table_changed" | "position_too_old" => ErrorKind::ObjectNotInPrerequisiteState,
            "subscriber_too_slow" | "server_overloaded" | "too_many_subscriptions" => ErrorKind::InsufficientResources,
            "filter_failed" => ErrorKind::DataException,
            "shutting_down" => ErrorKind::AdminShutdown,
            // As a write sent to a node that does not lead (25006 on the PostgreSQL protocol).
            "leader_changed" => ErrorKind::ReadOnly,
            _ => ErrorKind::Internal,
        }
    }
}

fn end(code: &'static str, message: impl Into<String>) -> LiveEnd {
    LiveEnd { code, message: message.into() }
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum LiveEvent {
    /// Rows of one commit (all of them, in change order), or a chunk of the snapshot.
    Rows(Vec<LiveRow>),
    /// The snapshot is complete: changes after `position` follow (a client that lost the
    /// connection before this resumes only by subscribing again with a snapshot).
    Ready { position: u64 },
    /// Every change up to `position` was delivered (none of the commits since the last rows
    /// concerned this subscription): the position to resume from.
    Progress { position: u64 },
    /// The subscription ended; nothing follows.
    End(LiveEnd),
}

/// An open subscription, as `system.live_queries` lists it.
#[derive(Debug, Clone)]
pub struct LiveQueryInfo {
    pub id: u64,
    pub user: String,
    pub sql: String,
    /// The position everything up to which was delivered (or the start).
    pub position: u64,
    /// Rows delivered (snapshot rows not counted).
    pub delivered: u64,
}

/// The live queries of a database: the job queue, the dispatch thread and the listing.
pub struct Live {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    options: LiveOptions,
    /// The dispatcher's jobs, in order. A channel, not a locked queue: a writer queuing its
    /// changes under the commit lock does not wait for the queue's lock held by a delivery
    /// thread (running at a lower priority, see [`lower_thread_priority`]) while preempted.
    jobs: std::sync::mpsc::Sender<Job>,
    /// Changed rows queued and not yet taken by the dispatcher.
    queued_rows: AtomicUsize,
    /// Changes were dropped (the queue was full) up to this position; 0: none.
    dropped_through: AtomicU64,
    /// On a cluster node: the position through the last log entry applied here that this
    /// node's writers did not report (another leader's; see [`Job::Foreign`]). No resume reaches
    /// back before it.
    foreign_through: AtomicU64,
    next_id: AtomicU64,
    /// [`Subscription`]s alive.
    open: AtomicUsize,
    /// What `system.live_queries` shows: the dispatcher updates the counters.
    listed: Mutex<BTreeMap<u64, Arc<Listed>>>,
    snapshots: Arc<tokio::sync::Semaphore>,
    /// The subscribers the dispatcher pushed to since it last woke them (after each job).
    wakes: Arc<inbox::Wakes>,
}

struct Listed {
    user: String,
    sql: String,
    position: AtomicU64,
    delivered: AtomicU64,
}

/// What the dispatcher does, in queue order.
enum Job {
    /// A committed statement's changes to a watched table.
    Changes(Staged),
    /// A table is watched from `since` on.
    Watch { table_id: u64, since: u64 },
    /// A new subscription that sees the changes after `start`.
    Register { id: u64, sub: Sub, start: u64 },
    /// A subscription resuming after `from` (`now`: the store's position when asked).
    Resume { id: u64, sub: Sub, from: u64, now: u64, reply: oneshot::Sender<Result<()>> },
    /// A subscription's end: its [`Subscription`] was dropped (`None`), or why.
    End { id: u64, end: Option<LiveEnd> },
    /// A resuming subscriber took what it was sent: send it more of the history.
    CatchUp { id: u64 },
    /// After DDL: the tables as the catalog has them now.
    Tables(Vec<Arc<Table>>),
    /// After user changes: each user's role.
    Users(HashMap<String, Principal>),
    /// The server is stopping.
    Shutdown,
    /// The commit at `through` was dropped (the queue was full; `Shared::dropped_through`):
    /// every subscription ends, in queue order (one registered before it is ended with them).
    Overloaded { through: u64 },
    /// The store's positions now follow the replicated log (a node joined a cluster): start
    /// over from `position`, keeping no history.
    Rebase { position: u64 },
    /// A cluster node applied a log entry through `through` that its writers did not report
    /// (another leader made it, or this node lost and regained leadership): its subscriptions
    /// may lack changes, so every one ends (`leader_changed`), in queue order.
    Foreign { through: u64 },
    /// The database is closing: the dispatcher ends every subscription and stops.
    Exit,
}

/// A committed statement's changes to a watched table.
struct Staged {
    position: u64,
    table: Arc<Table>,
    changes: Vec<RowChange>,
}

/// The dispatcher's state (its thread owns it).
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
    last_progress: Instant,
    /// Why new subscriptions are refused (shutdown, a failed fsync).
    stopped: Option<LiveEnd>,
}

/// The subscriptions of one table: by the column value their filter requires, and the others.
#[derive(Default)]
struct TableSubs {
    by_value: HashMap<usize, HashMap<Vec<u8>, Vec<u64>>>,
    others: Vec<u64>,
}

struct Sub {
    query: LiveQuery,
    /// Changes at or before this position are not delivered (they are in the snapshot, or the
    /// subscriber had them).
    start: u64,
    /// Everything up to here was delivered or did not concern it.
    position: u64,
    /// The last position the subscriber was given (subscribed, rows, progress).
    told: u64,
    tx: inbox::Sender,
    /// Rows sent and not yet taken by the subscriber.
    buffered: Arc<AtomicUsize>,
    /// A progress event sent and not yet taken.
    progress_pending: Arc<AtomicBool>,
    /// Resuming: it reads the kept history (as fast as it takes it) before live commits.
    catching_up: Arc<AtomicBool>,
    /// Set when it ends: its snapshot scan (if still running) stops.
    ended: Arc<AtomicBool>,
    listed: Arc<Listed>,
}

/// A subscription: [`Subscription::next`] gives the snapshot's rows, then each commit's.
/// Dropping it ends the subscription.
pub struct Subscription {
    pub id: u64,
    /// The position the subscription starts at: its snapshot's, or the one it resumed from.
    pub position: u64,
    /// The selected columns.
    pub columns: Vec<ColumnMeta>,
    /// Their escaped `"name":` keys.
    prefixes: Vec<Vec<u8>>,
    /// The columns a row object shows: each name once, at its first place (`SELECT id, id`
    /// gives one key, as a JSON object must).
    shown: Vec<usize>,
    snapshot: Option<SnapshotRx>,
    rx: inbox::Receiver,
    buffered: Arc<AtomicUsize>,
    progress_pending: Arc<AtomicBool>,
    catching_up: Arc<AtomicBool>,
    /// Set when the subscription ended (or was dropped): a snapshot scan stops.
    ended: Arc<AtomicBool>,
    /// An End was returned: nothing follows.
    finished: bool,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next rows, or the end (`None` once ended, after the [`LiveEvent::End`]).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        if self.finished {
            return None;
        }
        if let Some(snapshot) = &mut self.snapshot {
            let received = snapshot.rows.recv().await;
            let stopped = snapshot.stop.get().cloned();
            let event = match received {
                Some(event) => event,
                // The scan gave up on this client.
                None if let Some(stop) = stopped => LiveEvent::End(stop),
                // The dispatcher ended the subscription (the scan stopped for it): its end is
                // in the inbox.
                None if self.ended.load(Ordering::Acquire) => LiveEvent::End(self.end_before_ready().await),
                None => LiveEvent::End(end("snapshot_failed", "the snapshot stopped before it was complete")),
            };
            match &event {
                // The scan's last event: live changes follow.
                LiveEvent::Ready { .. } => self.snapshot = None,
                LiveEvent::End(_) => {
                    self.finished = true;
                    self.ended.store(true, Ordering::Release);
                }
                _ => {}
            }
            return Some(event);
        }
        let event = self.rx.recv().await?;
        self.took(&event);
        Some(event)
    }

    /// The end the dispatcher queued for a subscription it ended before its snapshot was
    /// complete. The changes queued before it are dropped: they follow a snapshot the client
    /// does not have whole, and so does the position a `subscriber_too_slow` names (resuming
    /// from it would skip the rows never sent): the client must subscribe again with a snapshot.
    async fn end_before_ready(&mut self) -> LiveEnd {
        loop {
            match self.rx.recv().await {
                Some(LiveEvent::End(e)) if e.code == "subscriber_too_slow" => {
                    return end(
                        "subscriber_too_slow",
                        "the subscriber fell behind before its snapshot was complete (it reads too slowly): subscribe \
                         again, with a snapshot",
                    );
                }
                Some(LiveEvent::End(e)) => return e,
                Some(other) => self.took(&other),
                None => return end("snapshot_failed", "the snapshot stopped before it was complete"),
            }
        }
    }

    /// [`Subscription::next`] without waiting, for a subscription that joined a group
    /// ([`Subscription::join`]): the next event if one is queued, `Ready(None)` once ended,
    /// `Pending` when nothing is queued now (the group's [`LiveGroup::ready`] names it again when
    /// something is).
    pub fn try_next(&mut self) -> std::task::Poll<Option<LiveEvent>> {
        use std::task::Poll;
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.try_recv() {
            Poll::Ready(Some(event)) => {
                self.took(&event);
                Poll::Ready(Some(event))
            }
            other => other,
        }
    }

    /// Makes `group` wake for this subscription's events, named by `key`, instead of
    /// [`Subscription::next`]'s waker: read them with [`Subscription::try_next`]. Only once its
    /// snapshot is complete (it returned `Ready`, or it had none); refused (`false`) before, or
    /// when it already joined a group.
    pub fn join(&self, group: &Arc<LiveGroup>, key: u64) -> bool {
        self.snapshot.is_none() && self.rx.join(group, key)
    }

    /// Accounts for an event taken from the inbox.
    fn took(&mut self, event: &LiveEvent) {
        match event {
            LiveEvent::Rows(rows) => {
                let left = self.buffered.fetch_sub(rows.len(), Ordering::AcqRel) - rows.len();
                if left == 0 && self.catching_up.load(Ordering::Acquire) {
                    self.shared.push(Job::CatchUp { id: self.id });
                }
            }
            LiveEvent::Progress { .. } => self.progress_pending.store(false, Ordering::Release),
            LiveEvent::End(_) => {
                self.finished = true;
                self.ended.store(true, Ordering::Release);
            }
            LiveEvent::Ready { .. } => {}
        }
    }

    /// Whether the subscription starts with a snapshot (not yet complete).
    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Appends a row as both HTTP transports send it, `{"op","position","row","old"?}`: its
    /// selected columns as a JSON object, values as in message payloads (written as text, no
    /// JSON tree: a commit reaching many subscriptions renders each of their rows).
    pub fn write_row(&self, out: &mut Vec<u8>, row: &LiveRow) {
        use std::io::Write as _;
        let shown = || self.shown.iter().copied();
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{{\"op\":\"{}\",\"position\":{},\"row\":", row.op.as_str(), row.position);
        write_object(out, &self.columns, &self.prefixes, &row.row, shown());
        if let Some(old) = &row.old {
            out.extend_from_slice(b",\"old\":");
            write_object(out, &self.columns, &self.prefixes, old, shown());
        }
        out.push(b'}');
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closed first: a registration the dispatcher has not run yet sees it and skips it.
        self.rx.close();
        self.ended.store(true, Ordering::Release);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.listed().remove(&self.id);
        self.shared.push(Job::End { id: self.id, end: None });
    }
}

impl Shared {
    fn push(&self, job: Job) {
        // Fails only once the dispatcher stopped, when nothing is left to do.
        let _ = self.jobs.send(job);
    }

    fn listed(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Listed>>> {
        self.listed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Live {
    /// Starts the dispatch thread. It holds the store weakly, so it never keeps it open.
    pub fn start(store: &Arc<Store>, options: LiveOptions) -> Result<Self> {
        let options = LiveOptions { buffer_rows: options.buffer_rows.max(1), ..options };
        let (jobs, receiver) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            options,
            jobs,
            queued_rows: AtomicUsize::new(0),
            dropped_through: AtomicU64::new(0),
            foreign_through: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            listed: Mutex::default(),
            snapshots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SNAPSHOTS)),
            wakes: Arc::default(),
        });
        let position = store.position();
        let hub = Hub {
            position,
            floor: position,
            history: VecDeque::new(),
            history_rows: 0,
            watched_since: HashMap::new(),
            subs: HashMap::new(),
            by_table: HashMap::new(),
            last_progress: Instant::now(),
            stopped: None,
        };
        // On a cluster node, entries its writers did not propose (so whose changes nobody
        // queued) end the subscriptions that may lack them; with none open only the resume
        // floor moves (no wake-up of the dispatcher per entry on a follower). `open` is counted
        // before a subscription's position is taken under the commit lock, which this hook
        // holds: an entry after that position sees it counted and is queued.
        let foreign = Arc::clone(&shared);
        store.on_foreign_entries(Arc::new(move |through| {
            foreign.foreign_through.fetch_max(through, Ordering::AcqRel);
            if foreign.open.load(Ordering::Acquire) > 0 {
                foreign.push(Job::Foreign { through });
            }
        }));
        let (thread_shared, weak_store) = (Arc::clone(&shared), Arc::downgrade(store));
        let thread = std::thread::Builder::new().name("live-dispatch".into()).spawn(move || {
            lower_thread_priority();
            dispatch_loop(&thread_shared, &receiver, &weak_store, hub)
        })?;
        Ok(Self { shared, thread: Mutex::new(Some(thread)) })
    }

    /// What a write to a watched table passes to the store: queues its changes at its position.
    pub fn on_written(&self, table: Arc<Table>, changes: Vec<RowChange>) -> OnWritten {
        let shared = Arc::clone(&self.shared);
        Box::new(move |position| {
            let queued = shared.queued_rows.load(Ordering::Acquire);
            if shared.dropped_through.load(Ordering::Acquire) != 0
                || (queued > 0 && queued + changes.len() > shared.options.max_queued_rows)
            {
                // The dispatcher is this far behind (one large commit alone is not): drop the
                // changes and end everything. Freeing millions of rows takes a while: not
                // under the commit lock.
                shared.dropped_through.fetch_max(position, Ordering::AcqRel);
                shared.push(Job::Overloaded { through: position });
                let _ = std::thread::Builder::new().name("live-drop".into()).spawn(move || drop(changes));
                return;
            }
            shared.queued_rows.fetch_add(changes.len(), Ordering::AcqRel);
            shared.push(Job::Changes(Staged { position, table, changes }));
        })
    }

    /// Starts a subscription on the query compiled for `principal`. With `snapshot`, its first
    /// rows are the query's current rows; else it starts after `from` (resuming) or now.
    pub(crate) async fn subscribe(
        &self,
        store: &Arc<Store>,
        principal: &Principal,
        sql: &str,
        query: LiveQuery,
        snapshot: bool,
        from: Option<u64>,
    ) -> Result<Subscription> {
        let shared = &self.shared;
        let max = shared.options.max_subscriptions;
        if shared.open.fetch_add(1, Ordering::AcqRel) >= max {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            let message = format!("this server has {max} live queries open, its limit");
            return Err(DataFusionError::External(Box::new(end("too_many_subscriptions", message))));
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = inbox::inbox(&shared.wakes);
        let buffered = Arc::new(AtomicUsize::new(0));
        let progress_pending = Arc::new(AtomicBool::new(false));
        let catching_up = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let table = Arc::clone(&query.table);
        let listed = Arc::new(Listed {
            user: principal.name.clone(),
            sql: sql.to_owned(),
            position: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        let columns: Vec<ColumnMeta> = query.projection.iter().map(|&i| table.meta.columns[i].clone()).collect();
        // From here on, dropping the subscription (an error below, a cancelled caller) ends it.
        let mut subscription = Subscription {
            id,
            position: 0,
            columns: columns.clone(),
            prefixes: name_prefixes(&columns),
            shown: (0..columns.len()).filter(|&i| !columns[..i].iter().any(|c| c.name == columns[i].name)).collect(),
            snapshot: None,
            rx,
            buffered: Arc::clone(&buffered),
            progress_pending: Arc::clone(&progress_pending),
            catching_up: Arc::clone(&catching_up),
            ended: Arc::clone(&ended),
            finished: false,
            shared: Arc::clone(shared),
        };
        shared.listed().insert(id, Arc::clone(&listed));
        let shown = Arc::clone(&listed);
        if !table.live.load(Ordering::Acquire) {
            // With the table's lock held exclusively no write to it is between its check of
            // `live` and its commit: every write after `since` is queued, after this job.
            let _no_writer = Arc::clone(&table.write_lock).write_owned().await;
            if !table.live.load(Ordering::Acquire) {
                shared.push(Job::Watch { table_id: table.meta.id, since: store.position() });
                table.live.store(true, Ordering::Release);
            }
        }
        let sub = Sub {
            query: query.clone(),
            start: 0,
            position: 0,
            told: 0,
            tx,
            buffered,
            progress_pending,
            catching_up,
            ended: Arc::clone(&ended),
            listed,
        };
        if snapshot {
            let permit = Arc::clone(&shared.snapshots)
                .acquire_owned()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let turns = Arc::clone(&shared.snapshots);
            let (rows_tx, rows_rx) = snapshot_channel(shared.options.snapshot_stall, permit, turns);
            let (start_tx, start_rx) = oneshot::channel();
            let (store, shared) = (Arc::clone(store), Arc::clone(shared));
            tokio::task::spawn_blocking(move || {
                let scan = std::panic::AssertUnwindSafe(|| {
                    snapshot_scan(&store, &shared, id, sub, &query, start_tx, &rows_tx, &ended)
                });
                if std::panic::catch_unwind(scan).is_err() {
                    // The client must not take a partial snapshot for a whole one.
                    rows_tx.end(end("snapshot_failed", "reading the snapshot failed"));
                }
            });
            subscription.position = match start_rx.await {
                Ok(Ok(position)) => position,
                Ok(Err(e)) => return Err(e),
                Err(_) => return exec_err!("internal: the snapshot of the live query stopped"),
            };
            subscription.snapshot = Some(rows_rx);
            shown.position.fetch_max(subscription.position, Ordering::Relaxed);
            return Ok(subscription);
        }
        let now = match from {
            Some(from) => {
                let (reply, replied) = oneshot::channel();
                shared.push(Job::Resume { id, sub, from, now: store.position(), reply });
                replied.await.unwrap_or_else(|_| exec_err!("internal: the live-query dispatcher stopped"))?;
                from
            }
            None => {
                // On a cluster node this waits for the proposal in flight: not on a runtime thread.
                let (store, shared) = (Arc::clone(store), Arc::clone(shared));
                tokio::task::spawn_blocking(move || {
                    store.at_position(|position| {
                        shared.push(Job::Register { id, sub, start: position });
                        position
                    })
                })
                .await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
            }
        };
        // The position given out is durable (with sync_writes: no crash can take it back).
        let durable = Arc::clone(store);
        tokio::task::spawn_blocking(move || durable.finish(durable.written()))
            .await
            .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
            .map_err(storage_err)?;
        subscription.position = now;
        shown.position.fetch_max(now, Ordering::Relaxed);
        Ok(subscription)
    }

    /// How many subscriptions are open.
    pub fn count(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Whether any subscription is open.
    pub fn any(&self) -> bool {
        self.shared.open.load(Ordering::Acquire) > 0
    }

    /// The open subscriptions.
    pub fn list(&self) -> Vec<LiveQueryInfo> {
        self.shared
            .listed()
            .iter()
            .map(|(&id, l)| LiveQueryInfo {
                id,
                user: l.user.clone(),
                sql: l.sql.clone(),
                position: l.position.load(Ordering::Relaxed),
                delivered: l.delivered.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// After user changes: ends the subscriptions whose user was dropped or may no longer read.
    pub fn revalidate(&self, users: &Users) {
        if self.any() {
            // Read and queued under the users' lock: no user created meanwhile is missing from it.
            users.while_read(|all| {
                let all = all.values().map(|u| (u.name.clone(), Principal { role: u.role(), name: u.name.clone() }));
                self.shared.push(Job::Users(all.collect()));
            });
        }
    }

    /// After DDL: ends the subscriptions whose table was dropped or replaced.
    pub fn check_tables(&self, catalog: &Catalog) {
        if self.any() {
            // Read and queued under the catalog's lock: no table created meanwhile (and
            // subscribed to) is missing from it.
            let state = catalog.read();
            self.shared.push(Job::Tables(state.tables.values().cloned().collect()));
            drop(state);
        }
    }

    /// The store now replicates (a cluster node): its positions follow the log from here on
    /// ([`topicfusion_storage::Store::position`]), so the dispatcher starts over from `position`.
    /// Called before any live query runs on the node.
    pub fn rebase(&self, position: u64) {
        self.shared.push(Job::Rebase { position });
    }

    /// Ends every subscription (`shutting_down`) and refuses new ones: a server stopping.
    pub fn shutdown(&self) {
        self.shared.push(Job::Shutdown);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shared.push(Job::Exit);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// The nice value of the threads that deliver live queries (the dispatcher, the server's
/// WebSocket threads): on a busy machine writers get the cores first and subscribers what is
/// left; a subscriber that falls too far behind is ended, never waited for.
const DELIVERY_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority to [`DELIVERY_NICE`] (on Linux the nice value is
/// per thread); elsewhere, or when refused, it runs at the usual priority.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes no pointers; PRIO_PROCESS with id 0 names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, DELIVERY_NICE);
    }
}

fn table_changed(table: &Table) -> LiveEnd {
    end("table_changed", format!("table {} was dropped or changed: subscribe again", table.meta.qualified_name()))
}

/// The dispatch thread: the queued jobs, commits once durable, in order; progress positions
/// for idle subscriptions.
fn dispatch_loop(shared: &Shared, receiver: &std::sync::mpsc::Receiver<Job>, store: &Weak<Store>, mut hub: Hub) {
    loop {
        let wait = PROGRESS_EVERY.saturating_sub(hub.last_progress.elapsed()).max(Duration::from_millis(10));
        let mut jobs = Vec::new();
        match receiver.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        jobs.extend(receiver.try_iter());
        for job in &jobs {
            if let Job::Changes(c) = job {
                shared.queued_rows.fetch_sub(c.changes.len(), Ordering::AcqRel);
            }
        }
        let shutdown = jobs.iter().any(|j| matches!(j, Job::Exit));
        // Every queued commit is written; deliver them once durable.
        if jobs.iter().any(|j| matches!(j, Job::Changes(_))) {
            let durable = match store.upgrade() {
                Some(store) => store.finish(store.written()).map(drop).map_err(|e| e.to_string()),
                None => Err("the database was closed".to_owned()),
            };
            if let Err(reason) = durable {
                let why = end("storage_failed", format!("the commits could not be made durable: {reason}"));
                hub.end_all(&why);
                hub.stopped = Some(why);
            }
        }
        for job in jobs {
            // A bug in one job must not stop the dispatcher (and with it every subscription).
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hub.run(shared, job))).is_err() {
                tracing::error!("a live-query job panicked: ending every subscription");
                hub.end_all(&end("internal", "internal error: see the server log"));
            }
            // Each subscriber this commit (or job) reached, once: a subscriber takes one
            // commit's rows while the next is dispatched (woken once per batch of jobs, a fast
            // subscriber could be ended as too slow by commits it had no chance to take).
            shared.wakes.wake_all();
        }
        if hub.last_progress.elapsed() >= PROGRESS_EVERY {
            hub.progress();
        }
        // Those reached by the progress positions and ends above.
        shared.wakes.wake_all();
        if shutdown {
            return;
        }
    }
}

/// The snapshot of a new subscription, on a blocking thread: registers it at the snapshot's
/// position (a job queued under the commit lock, so no commit falls between the snapshot and
/// its changes), waits until the snapshot is durable, reports the position, then streams the
/// matching rows.
#[allow(clippy::too_many_arguments)]
fn snapshot_scan(
    store: &Store,
    shared: &Shared,
    id: u64,
    sub: Sub,
    query: &LiveQuery,
    start_tx: oneshot::Sender<Result<u64>>,
    rows_tx: &SnapshotTx,
    ended: &AtomicBool,
) {
    let table = &query.table;
    let prefix = keys::table_prefix(table.meta.id);
    let end_key = keys::prefix_end(&prefix);
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
        &end_key,
        1024,
        |at| {
            position.set(at);
            let sub = sub.take().expect("called once");
            shared.push(Job::Register { id, sub, start: at });
        },
        |pairs| {
            // Stop reading for a subscription that ended meanwhile.
            if !announce() || ended.load(Ordering::Acquire) {
                return false;
            }
            match snapshot_rows(query, &pairs, position.get()) {
                Ok(rows) if rows.is_empty() => true,
                Ok(rows) => rows_tx.send(LiveEvent::Rows(rows), ended),
                Err(e) => {
                    rows_tx.end(end("snapshot_failed", e.to_string()));
                    false
                }
            }
        },
    );
    match scanned {
        Ok(()) => {
            // Not after the scan gave up on its client (its end is set) or the subscription
            // ended: `ready` says the snapshot is whole.
            if announce() && rows_tx.stop.get().is_none() && !ended.load(Ordering::Acquire) {
                rows_tx.send(LiveEvent::Ready { position: position.get() }, ended);
            }
        }
        Err(e) => match start_tx.borrow_mut().take() {
            Some(tx) => {
                let _ = tx.send(Err(storage_err(e)));
            }
            None => rows_tx.end(end("snapshot_failed", e.to_string())),
        },
    }
}

/// The scan's side of a snapshot: its events, and why it stopped early.
struct SnapshotTx {
    rows: mpsc::Sender<LiveEvent>,
    stop: Arc<std::sync::OnceLock<LiveEnd>>,
    /// [`LiveOptions::snapshot_stall`].
    stall: Duration,
    /// The scan's turn among [`CONCURRENT_SNAPSHOTS`] reading at once: given up while it waits
    /// for its client to take rows (a client that reads slowly, or not at all, holds no turn),
    /// taken again to read on.
    turn: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    turns: Arc<tokio::sync::Semaphore>,
}

/// The subscriber's side: once the scan dropped its sender, `stop` (if set) is why it ended.
struct SnapshotRx {
    rows: mpsc::Receiver<LiveEvent>,
    stop: Arc<std::sync::OnceLock<LiveEnd>>,
}

fn snapshot_channel(
    stall: Duration,
    turn: tokio::sync::OwnedSemaphorePermit,
    turns: Arc<tokio::sync::Semaphore>,
) -> (SnapshotTx, SnapshotRx) {
    let (tx, rx) = mpsc::channel(2);
    let stop = Arc::new(std::sync::OnceLock::new());
    let turn = Mutex::new(Some(turn));
    (SnapshotTx { rows: tx, stop: Arc::clone(&stop), stall, turn, turns }, SnapshotRx { rows: rx, stop })
}

impl SnapshotTx {
    /// Hands a snapshot event to the subscriber; false (stop reading) when it is gone, ended,
    /// or had no room for the event for [`LiveOptions::snapshot_stall`] (then it is ended as too
    /// slow). While it waits for room the scan holds no turn; it takes one again to read on.
    fn send(&self, event: LiveEvent, ended: &AtomicBool) -> bool {
        let since = Instant::now();
        let mut event = event;
        loop {
            match self.rows.try_send(event) {
                Ok(()) => return self.take_turn(ended),
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if ended.load(Ordering::Acquire) {
                        return false;
                    }
                    self.turn.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if since.elapsed() > self.stall {
                        let message = format!(
                            "the snapshot had no room to hand the client more rows for {} s (it reads too slowly): subscribe again",
                            self.stall.as_secs()
                        );
                        self.end(end("subscriber_too_slow", message));
                        return false;
                    }
                    event = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Takes the scan's turn again if it gave it up (false: the subscription ended meanwhile).
    fn take_turn(&self, ended: &AtomicBool) -> bool {
        let mut turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        while turn.is_none() {
            match Arc::clone(&self.turns).try_acquire_owned() {
                Ok(permit) => *turn = Some(permit),
                Err(_) if ended.load(Ordering::Acquire) => return false,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        true
    }

    /// Ends the snapshot with `why`, without waiting for room: the subscriber gets it after the
    /// events it has, once the scan drops this sender.
    fn end(&self, why: LiveEnd) {
        let _ = self.stop.set(why);
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
/// filter needs all of them (a missing image is a row of NULLs, never counted as a match).
struct Images<'a> {
    staged: &'a Staged,
    all: Option<(RecordBatch, RecordBatch)>,
}

impl Images<'_> {
    /// The filter on the images of `rows` (all changes when `None`), before and after.
    fn masks(&mut self, filter: &dyn PhysicalExpr, rows: Option<&[usize]>) -> Result<(BooleanArray, BooleanArray)> {
        let table = &self.staged.table;
        let changes = &self.staged.changes;
        let build = |which: &[usize], pick: fn(&RowChange) -> Option<&Vec<Value>>| -> Result<RecordBatch> {
            let nulls = || vec![Value::Null; table.meta.columns.len()];
            let images: Vec<Vec<Value>> =
                which.iter().map(|&i| pick(&changes[i]).cloned().unwrap_or_else(nulls)).collect();
            batch_of(table, &images)
        };
        let (before, after) = match rows {
            // Only the candidates the index found: O(matching rows), not O(commit).
            Some(rows) => (build(rows, |c| c.before.as_ref())?, build(rows, |c| c.after.as_ref())?),
            None => {
                if self.all.is_none() {
                    let every: Vec<usize> = (0..changes.len()).collect();
                    self.all = Some((build(&every, |c| c.before.as_ref())?, build(&every, |c| c.after.as_ref())?));
                }
                let (b, a) = self.all.as_ref().expect("built");
                (b.clone(), a.clone())
            }
        };
        Ok((evaluate(filter, &before)?, evaluate(filter, &after)?))
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
            (Some(filter), _) => Some(images.masks(filter.as_ref(), rows)?),
            (None, _) => None,
        };
        let matches = |at: usize, image: Option<&Vec<Value>>, mask: Option<&BooleanArray>| -> bool {
            let Some(image) = image else { return false };
            match (mask, &query.equality) {
                (Some(mask), _) => mask.is_valid(at) && mask.value(at),
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
        for (k, &i) in indexes.iter().enumerate() {
            let change = &staged.changes[i];
            let (before, after) = (change.before.as_ref(), change.after.as_ref());
            // The masks cover `indexes` when the index gave candidates, else every change.
            let at = if rows.is_some() { k } else { i };
            let b = matches(at, before, masks.as_ref().map(|m| &m.0));
            let a = matches(at, after, masks.as_ref().map(|m| &m.1));
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

    /// Queues a commit's rows, unless the subscriber is too far behind (`resume`: the position
    /// it has everything up to once it took what is queued) or gone.
    fn send(
        &mut self,
        rows: Vec<LiveRow>,
        position: u64,
        limit: usize,
        resume: u64,
    ) -> std::result::Result<(), LiveEnd> {
        let n = rows.len();
        let waiting = self.buffered.load(Ordering::Acquire);
        if waiting > 0 && waiting + n > limit {
            let message = format!(
                "the subscriber fell {waiting} rows behind (the limit is {limit}): resume with from_position = {resume}"
            );
            return Err(end("subscriber_too_slow", message));
        }
        self.buffered.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(LiveEvent::Rows(rows)).is_err() {
            return Err(end("closed", ""));
        }
        self.position = position;
        self.told = position;
        self.listed.position.store(position, Ordering::Relaxed);
        self.listed.delivered.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Hub {
    fn run(&mut self, shared: &Shared, job: Job) {
        match job {
            Job::Changes(staged) => self.dispatch(shared, Arc::new(staged)),
            Job::Watch { table_id, since } => {
                // A table watched anew (its object replaced by DDL or a reload, which is not live
                // until subscribed to again) has no kept changes from before: resumes start after.
                let at = self.watched_since.entry(table_id).or_insert(since);
                *at = (*at).max(since);
            }
            Job::Register { id, sub, start } => self.register(id, sub, start),
            Job::Resume { id, sub, from, now, reply } => {
                let _ = reply.send(self.resume(shared, id, sub, from, now));
            }
            Job::End { id, end } => self.end(id, end),
            Job::CatchUp { id } => self.catch_up(shared, id),
            Job::Tables(tables) => {
                let current: HashMap<u64, Arc<Table>> = tables.into_iter().map(|t| (t.meta.id, t)).collect();
                let gone: Vec<(u64, LiveEnd)> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| {
                        !current.get(&s.query.table.meta.id).is_some_and(|t| Arc::ptr_eq(t, &s.query.table))
                    })
                    .map(|(&id, s)| (id, table_changed(&s.query.table)))
                    .collect();
                for (id, e) in gone {
                    self.end(id, Some(e));
                }
            }
            Job::Users(users) => {
                let denied: Vec<(u64, LiveEnd)> = self
                    .subs
                    .iter()
                    .filter_map(|(&id, s)| {
                        let message = match users.get(&s.listed.user) {
                            None => format!("user {} was dropped", s.listed.user),
                            Some(p) => authorize(p, Action::ReadWrite, false).err()?.to_string(),
                        };
                        Some((id, end("permission_denied", message)))
                    })
                    .collect();
                for (id, e) in denied {
                    self.end(id, Some(e));
                }
            }
            Job::Shutdown | Job::Exit => {
                let why = end("shutting_down", "the server is shutting down");
                self.end_all(&why);
                self.stopped.get_or_insert(why);
            }
            Job::Overloaded { through } => {
                let message = "the live-query dispatcher fell too far behind the writers and dropped changes: subscribe again with a snapshot";
                self.start_over(&end("server_overloaded", message), through);
                // Writers queue again, unless a later commit was dropped meanwhile (its own job
                // follows this one and ends what registered in between).
                let _ = shared.dropped_through.compare_exchange(through, 0, Ordering::AcqRel, Ordering::Acquire);
            }
            Job::Rebase { position } => {
                // Positions switch to the log's: none from before compares with them.
                self.watched_since.clear();
                (self.floor, self.position) = (0, 0);
                self.start_over(
                    &end("leader_changed", "this node joined a cluster: subscribe again on its leader"),
                    position,
                );
            }
            Job::Foreign { through } => {
                let message = "changes were committed through another leader of the cluster, which this node's live queries do not see: subscribe again with a snapshot on the leader";
                self.start_over(&end("leader_changed", message), through);
            }
        }
    }

    /// Adds a subscription that sees the changes after `start` (unless its subscriber is gone
    /// already, or the dispatcher stopped).
    fn register(&mut self, id: u64, mut sub: Sub, start: u64) {
        if sub.tx.is_closed() {
            return;
        }
        if let Some(why) = &self.stopped {
            let _ = sub.tx.send(LiveEvent::End(why.clone()));
            return;
        }
        sub.start = start;
        sub.position = start;
        sub.told = sub.told.max(start);
        sub.listed.position.fetch_max(start, Ordering::Relaxed);
        self.by_table.entry(sub.query.table.meta.id).or_default().add(id, &sub.query);
        self.subs.insert(id, sub);
    }

    /// Adds a subscription resuming after `from`: the kept changes after it first.
    fn resume(&mut self, shared: &Shared, id: u64, sub: Sub, from: u64, now: u64) -> Result<()> {
        let table = Arc::clone(&sub.query.table);
        if from > now {
            return exec_err!("from_position {from} is ahead of this server's last commit ({now})");
        }
        let since = self.watched_since.get(&table.meta.id).copied().unwrap_or(u64::MAX);
        let kept_from = self.floor.max(since).max(shared.foreign_through.load(Ordering::Acquire));
        if from < kept_from {
            let message = format!(
                "the changes after position {from} are no longer kept (this server keeps those after {kept_from}): subscribe again with a snapshot"
            );
            return Err(DataFusionError::External(Box::new(end("position_too_old", message))));
        }
        // It reads the history after `from` first, at the pace it takes it, then live commits.
        sub.catching_up.store(true, Ordering::Release);
        self.register(id, sub, from);
        self.catch_up(shared, id);
        Ok(())
    }

    /// Sends a resuming subscription the kept commits after its position, until it has
    /// `buffer_rows` waiting (it asks for more when it took them: [`Job::CatchUp`]) or it is
    /// level with the dispatched commits (then it gets live commits like any other).
    fn catch_up(&mut self, shared: &Shared, id: u64) {
        let limit = shared.options.buffer_rows;
        let floor = self.floor;
        let Some(sub) = self.subs.get_mut(&id) else { return };
        if !sub.catching_up.load(Ordering::Acquire) {
            return;
        }
        let outcome = if sub.position < floor {
            Err(end(
                "position_too_old",
                format!(
                    "the changes after position {} left the kept history while the subscriber caught up: subscribe again with a snapshot",
                    sub.position
                ),
            ))
        } else {
            let table = Arc::clone(&sub.query.table);
            let first = self.history.partition_point(|s| s.position <= sub.position);
            let mut outcome = Ok(true);
            for staged in self.history.range(first..) {
                if sub.buffered.load(Ordering::Acquire) >= limit {
                    outcome = Ok(false);
                    break;
                }
                if staged.table.meta.id == table.meta.id {
                    if !Arc::ptr_eq(&staged.table, &table) {
                        outcome = Err(table_changed(&table));
                        break;
                    }
                    let mut images = Images { staged, all: None };
                    let rows = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sub.rows(&mut images, None)))
                        .unwrap_or_else(|_| exec_err!("evaluating the filter panicked"));
                    match rows {
                        Ok(rows) if rows.is_empty() => {}
                        Ok(rows) => {
                            if let Err(e) = sub.send(rows, staged.position, usize::MAX, sub.position) {
                                outcome = Err(e);
                                break;
                            }
                        }
                        Err(e) => {
                            outcome = Err(end("filter_failed", e.to_string()));
                            break;
                        }
                    }
                }
                sub.position = staged.position;
                sub.start = staged.position;
            }
            outcome
        };
        match outcome {
            // Level with the history: live from here on, once it has room for live commits
            // (else the next CatchUp, when it took what is waiting, sends the history since).
            Ok(true) if sub.buffered.load(Ordering::Acquire) <= limit / 2 => {
                sub.catching_up.store(false, Ordering::Release)
            }
            Ok(_) => {}
            Err(e) => {
                let e = (e.code != "closed").then_some(e);
                self.end(id, e);
            }
        }
    }

    /// Removes a subscription; with `end`, tells the subscriber why.
    fn end(&mut self, id: u64, end: Option<LiveEnd>) {
        let Some(sub) = self.subs.remove(&id) else { return };
        let table_id = sub.query.table.meta.id;
        if let Some(subs) = self.by_table.get_mut(&table_id) {
            subs.remove(id, &sub.query);
            if subs.is_empty() {
                self.by_table.remove(&table_id);
            }
        }
        sub.ended.store(true, Ordering::Release);
        if let Some(end) = end {
            let _ = sub.tx.send(LiveEvent::End(end));
        }
    }

    /// Ends every subscription with `why` and keeps nothing from before `through`: no resume
    /// reaches back past it (changes up to it were dropped or made elsewhere).
    fn start_over(&mut self, why: &LiveEnd, through: u64) {
        self.end_all(why);
        self.history.clear();
        self.history_rows = 0;
        self.floor = self.floor.max(through);
        self.position = self.position.max(through);
    }

    fn end_all(&mut self, why: &LiveEnd) {
        let ids: Vec<u64> = self.subs.keys().copied().collect();
        for id in ids {
            self.end(id, Some(why.clone()));
        }
    }

    /// Tells each idle subscription that it has seen everything up to the last dispatched
    /// commit (once it took what it was sent), so it resumes from there.
    fn progress(&mut self) {
        self.last_progress = Instant::now();
        let position = self.position;
        for sub in self.subs.values_mut() {
            // Told nothing since `position`: every commit up to it was dispatched to it (or, for
            // a catching-up subscription, not yet: it is told once level).
            if sub.told >= position
                || sub.catching_up.load(Ordering::Acquire)
                || sub.buffered.load(Ordering::Acquire) > 0
                || sub.progress_pending.load(Ordering::Acquire)
            {
                continue;
            }
            sub.progress_pending.store(true, Ordering::Release);
            if sub.tx.send(LiveEvent::Progress { position }).is_ok() {
                sub.position = sub.position.max(position);
                sub.told = position;
                sub.listed.position.store(position, Ordering::Relaxed);
            }
        }
        let gone: Vec<u64> = self.subs.iter().filter(|(_, s)| s.tx.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.end(id, None);
        }
    }

    /// Delivers one durable commit to the subscriptions it concerns and keeps it for resuming.
    fn dispatch(&mut self, shared: &Shared, staged: Arc<Staged>) {
        // Everything before this commit was dispatched: where a subscriber ended now resumes.
        let before = self.position;
        self.position = self.position.max(staged.position);
        let table_id = staged.table.meta.id;
        if let Some(subs) = self.by_table.get(&table_id) {
            let targets = subs.targets(&staged);
            let mut images = Images { staged: &staged, all: None };
            let mut ended = Vec::new();
            for (id, rows) in targets {
                let Some(sub) = self.subs.get_mut(&id) else { continue };
                // A resuming subscription gets this commit from the history.
                if sub.start >= staged.position || sub.catching_up.load(Ordering::Acquire) {
                    continue;
                }
                if !Arc::ptr_eq(&sub.query.table, &staged.table) {
                    ended.push((id, table_changed(&sub.query.table)));
                    continue;
                }
                // A filter that panics ends its subscription, not the dispatcher.
                let rows =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sub.rows(&mut images, rows.as_deref())))
                        .unwrap_or_else(|_| exec_err!("evaluating the filter panicked"));
                match rows {
                    Ok(rows) if rows.is_empty() => {}
                    Ok(rows) => {
                        let resume = before.max(sub.position);
                        if let Err(e) = sub.send(rows, staged.position, shared.options.buffer_rows, resume) {
                            ended.push((id, e));
                        }
                    }
                    Err(e) => ended.push((id, end("filter_failed", e.to_string()))),
                }
            }
            for (id, e) in ended {
                let e = (e.code != "closed").then_some(e);
                self.end(id, e);
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
