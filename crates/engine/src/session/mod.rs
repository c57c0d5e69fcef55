//! A client's session: what one PostgreSQL connection (or one HTTP request, or one embedded
//! caller) keeps between its statements, and nothing another client can see or change:
//! - its DataFusion settings: the database's shared state until the session runs `SET
//!   datafusion...`, then a copy of its own (so one client's `SET` never reaches another);
//! - its PostgreSQL run-time parameters (`SET application_name`, `SHOW TimeZone`,
//!   `current_setting(...)`: [`crate::session::settings`]);
//! - whether a driver opened a transaction block (`BEGIN` ... `COMMIT`);
//! - its open cursors (`DECLARE` / `FETCH` / `MOVE` / `CLOSE`), each a running query whose rows
//!   are read as they are fetched, or a live query (`DECLARE c CURSOR FOR SUBSCRIBE ...`) whose
//!   FETCH waits for its next rows.
//!
//! A session is used by one caller at a time (`&mut`); it is `Send`, so a connection's task can
//! hold it across awaits.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionContext;
use futures::StreamExt;

pub mod functions;
pub mod settings;
mod statements;

pub use statements::cursor_name;

/// The most cursors a session may hold open at once.
pub const MAX_OPEN_CURSORS: usize = 256;

#[derive(Default)]
pub struct Session {
    /// The session's own DataFusion context, once it has changed a setting.
    pub(crate) ctx: Option<SessionContext>,
    /// PostgreSQL run-time parameters set in this session (lowercase name → value).
    pub(crate) settings: BTreeMap<String, String>,
    /// Inside `BEGIN` ... `COMMIT`/`ROLLBACK` (statements still commit one by one).
    pub(crate) in_transaction: bool,
    pub(crate) cursors: BTreeMap<String, Cursor>,
    /// The savepoints of the transaction block, oldest first.
    pub(crate) savepoints: Vec<String>,
    /// Whether the client can wait on a FETCH from a live query and cancel it (a PostgreSQL
    /// connection): others are refused such cursors.
    pub(crate) live_cursors: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("own_settings", &self.ctx.is_some())
            .field("settings", &self.settings)
            .field("in_transaction", &self.in_transaction)
            .field("cursors", &self.cursors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// The session of a PostgreSQL connection, whose client can wait on a FETCH from a live
    /// query (`DECLARE c CURSOR FOR SUBSCRIBE ...`) and cancel it.
    pub fn for_connection() -> Self {
        Self { live_cursors: true, ..Self::default() }
    }

    /// Whether a driver has opened a transaction block (`BEGIN`) and not ended it.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Whether an unqualified table name means one in `public` here, as the literal INSERT
    /// paths resolve it; not after a `SET datafusion.catalog.default_schema` to another schema
    /// (those statements are planned, which resolves the name in the session's schema).
    pub(crate) fn bare_names_in_public(&self) -> bool {
        self.ctx.as_ref().is_none_or(|ctx| {
            ctx.state_ref().read().config_options().catalog.default_schema == crate::catalog::DEFAULT_SCHEMA
        })
    }

    /// The result columns of an open cursor (what a `FETCH` from it returns).
    pub fn cursor_schema(&self, name: &str) -> Option<SchemaRef> {
        self.cursors.get(name).map(|c| c.schema.clone())
    }

    /// `COMMIT` / `ROLLBACK`: the block ends and its cursors without `WITH HOLD` close.
    pub(crate) fn end_transaction(&mut self) {
        self.in_transaction = false;
        self.savepoints.clear();
        self.cursors.retain(|_, c| c.hold);
    }

    /// `RELEASE` / `ROLLBACK TO` a savepoint: forgets the savepoints made after it (it stays
    /// last), or fails if the transaction block has none of that name.
    pub(crate) fn back_to_savepoint(&mut self, name: &str, what: &str) -> datafusion::common::Result<()> {
        if !self.in_transaction {
            return datafusion::common::plan_err!("{what} can only be used in transaction blocks");
        }
        match self.savepoints.iter().rposition(|s| s == name) {
            Some(at) => {
                self.savepoints.truncate(at + 1);
                Ok(())
            }
            None => datafusion::common::plan_err!("savepoint \"{name}\" does not exist"),
        }
    }

    /// `DISCARD ALL` / `RESET ALL`'s part: back to the state of a new session.
    pub(crate) fn reset(&mut self) {
        self.ctx = None;
        self.settings.clear();
    }

    pub(crate) fn declare(&mut self, name: String, cursor: Cursor) -> Result<()> {
        self.can_declare(&name)?;
        self.cursors.insert(name, cursor);
        Ok(())
    }

    /// Whether a cursor `name` may be declared: none of that name, fewer than the most.
    pub(crate) fn can_declare(&self, name: &str) -> Result<()> {
        if self.cursors.contains_key(name) {
            return plan_err!("cursor \"{name}\" already exists");
        }
        if self.cursors.len() >= MAX_OPEN_CURSORS {
            return plan_err!("too many open cursors (at most {MAX_OPEN_CURSORS}): CLOSE some first");
        }
        Ok(())
    }

    pub(crate) fn cursor(&mut self, name: &str) -> Result<&mut Cursor> {
        match self.cursors.get_mut(name) {
            Some(c) => Ok(c),
            None => exec_err!("cursor \"{name}\" does not exist"),
        }
    }

    pub(crate) fn close(&mut self, name: Option<&str>) -> Result<()> {
        match name {
            None => self.cursors.clear(),
            Some(name) if self.cursors.remove(name).is_none() => return exec_err!("cursor \"{name}\" does not exist"),
            Some(_) => {}
        }
        Ok(())
    }
}

/// An open cursor: a running query, read forward as it is fetched.
pub(crate) struct Cursor {
    pub schema: SchemaRef,
    stream: crate::statement::RowStream,
    /// Rows read from the stream and not yet fetched.
    pending: Option<RecordBatch>,
    /// The error that stopped the stream: every later FETCH fails with it (the first one after
    /// the rows a FETCH returned before it), rather than finding the cursor exhausted.
    failed: Option<std::sync::Arc<datafusion::common::DataFusionError>>,
    /// `WITH HOLD`: stays open after the transaction block ends.
    pub hold: bool,
    /// Over a live query: a FETCH waits for the first row only, then takes what is ready.
    live: bool,
    done: bool,
}

impl Cursor {
    /// A cursor over a query's rows (`schema`: its planned result columns).
    pub fn new(schema: SchemaRef, stream: SendableRecordBatchStream, hold: bool) -> Self {
        Self::open(schema, stream, hold, false)
    }

    /// A cursor over a live query's never-ending stream.
    pub fn live(stream: SendableRecordBatchStream, hold: bool) -> Self {
        Self::open(stream.schema(), stream, hold, true)
    }

    fn open(schema: SchemaRef, stream: SendableRecordBatchStream, hold: bool, live: bool) -> Self {
        let stream = crate::statement::RowStream::new(stream);
        Self { schema, stream, pending: None, failed: None, hold, live, done: false }
    }

    /// The next `n` rows (fewer at the end; `u64::MAX`: all the rest). `keep`: whether to
    /// return them (FETCH) or only count them (MOVE). Returns the rows and their count. Over a
    /// live query it waits for one row, then returns without waiting for more (as
    /// Materialize's FETCH does), so `FETCH 100` returns the rows of the next commit.
    pub async fn read(&mut self, n: u64, keep: bool) -> Result<(Vec<RecordBatch>, u64)> {
        if let Some(e) = &self.failed {
            return Err(datafusion::common::DataFusionError::Shared(std::sync::Arc::clone(e)));
        }
        let mut out = Vec::new();
        let mut count = 0u64;
        while count < n {
            let batch = match self.pending.take() {
                Some(b) => b,
                None if self.done => break,
                None => {
                    let next = self.stream.get_mut().next();
                    let next = if self.live && count > 0 {
                        match futures::FutureExt::now_or_never(next) {
                            Some(next) => next,
                            None => break,
                        }
                    } else {
                        next.await
                    };
                    match next {
                        Some(Ok(b)) => b,
                        Some(Err(e)) => {
                            let e = std::sync::Arc::new(e);
                            self.failed = Some(std::sync::Arc::clone(&e));
                            if count > 0 {
                                break;
                            }
                            return Err(datafusion::common::DataFusionError::Shared(e));
                        }
                        None => {
                            self.done = true;
                            break;
                        }
                    }
                }
            };
            let want = (n - count).min(batch.num_rows() as u64) as usize;
            if want < batch.num_rows() {
                self.pending = Some(batch.slice(want, batch.num_rows() - want));
            }
            count += want as u64;
            if keep && want > 0 {
                out.push(batch.slice(0, want));
            }
        }
        Ok((out, count))
    }
}
