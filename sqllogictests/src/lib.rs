//! The sqllogictest database adapter: runs each record's SQL through [`Database::execute_in`]
//! in the connection's own session (as root; settings, transaction blocks and cursors last
//! from record to record, as on one PostgreSQL connection) and renders the last statement's
//! result as text. The pseudo-statement `restart` closes the database and reopens the same data
//! dir (and starts a new session), so `.slt` files can check durability.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio::sync::Mutex;
use topicfusion_engine::{Database, DatabaseOptions, Principal, Session};

/// One data dir, shared by every connection of a test file.
pub struct SharedDatabase {
    dir: PathBuf,
    db: Mutex<Option<Database>>,
}

impl SharedDatabase {
    pub fn open(dir: PathBuf) -> Result<Arc<Self>, Error> {
        let db = Database::open(&dir, options())?;
        Ok(Arc::new(Self { dir, db: Mutex::new(Some(db)) }))
    }
}

/// Fixed parallelism, so EXPLAIN output does not depend on the machine.
fn options() -> DatabaseOptions {
    DatabaseOptions { target_partitions: Some(2), ..DatabaseOptions::default() }
}

/// A connection of the sqllogictest runner, with its session.
pub struct Connection(pub Arc<SharedDatabase>, pub Session);

impl Connection {
    pub fn new(db: Arc<SharedDatabase>) -> Self {
        Self(db, Session::new())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error(e.to_string().replace('\n', " "))
    }
}

#[async_trait]
impl AsyncDB for Connection {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let mut guard = self.0.db.lock().await;
        if sql.trim().eq_ignore_ascii_case("restart") {
            // Close first: RocksDB allows one process-wide handle per data dir.
            self.1 = Session::new();
            guard.take();
            *guard = Some(Database::open(&self.0.dir, options())?);
            return Ok(DBOutput::StatementComplete(0));
        }
        let db = guard.as_ref().ok_or_else(|| Error("database is closed".into()))?;
        // One-line messages: a multi-line expected error would swallow the records after it.
        let results = db
            .execute_in(&mut self.1, &Principal::root(), sql)
            .await
            .map_err(|e| Error(e.message().replace('\n', " ")))?;
        let Some(last) = results.last() else { return Ok(DBOutput::StatementComplete(0)) };
        let types = last.schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows: Vec<Vec<String>> = Vec::new();
        for batch in &last.batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, c)| {
                            let s = f.value(row).to_string().trim_end().to_owned();
                            if s.is_empty() && !c.is_null(row) { "(empty)".to_owned() } else { s }
                        })
                        .collect(),
                );
            }
        }
        // Multi-line values (EXPLAIN) become one single-column row per line.
        if rows.iter().flatten().any(|v: &String| v.contains('\n')) {
            let lines: Vec<Vec<String>> =
                rows.iter().flat_map(|r| r.join(" ").lines().map(|l| vec![l.to_owned()]).collect::<Vec<_>>()).collect();
            return Ok(DBOutput::Rows { types: vec![DefaultColumnType::Text], rows: lines });
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "topicfusion"
    }
}

fn column_type(dt: &DataType) -> DefaultColumnType {
    if dt.is_integer() {
        DefaultColumnType::Integer
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}
