//! What a statement is and what it returns, as every interface sees it: its [`CommandTag`]
//! (PostgreSQL's command tag and what kind of result follows), its [`Description`] before it
//! runs, its [`StatementResult`] (rows, or a COPY the interface carries on with), and its
//! [`ExecuteError`] when it fails.

use std::sync::Arc;

use crate::error::ErrorKind;
use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DataFusionError;
use datafusion::sql::parser::Statement as DFStatement;
use topicfusion_dialect::sqlparser::ast::Statement as SqlStatement;
use topicfusion_dialect::{CopyEndpoint, CopyStatement, SessionStatement, Statement, TopicStatement, UserStatement};

/// The result of one statement.
#[derive(Debug)]
pub struct StatementResult {
    /// The statement's SQL text.
    pub sql: String,
    /// What kind of statement it was and what its result means.
    pub command: CommandTag,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// A `COPY ... FROM STDIN` or `TO STDOUT`: what the interface moves between the client and
    /// the database next.
    pub copy: Option<ClientCopy>,
}

/// The data transfer a COPY with the client asks of the interface (the PostgreSQL protocol).
pub enum ClientCopy {
    /// `COPY ... FROM STDIN`: read the client's data and write it through
    /// [`crate::Database::copy_in`].
    In(Arc<crate::write::copy::CopyInTarget>),
    /// `COPY ... TO STDOUT`: send these rows (the result's schema) in `format`, as they come.
    Out { rows: RowStream, format: topicfusion_dialect::CopyFormat, options: topicfusion_dialect::CopyOptions },
}

/// The rows of a running query, as a result carries them (a `Sync` holder of the stream).
pub struct RowStream(std::sync::Mutex<datafusion::execution::SendableRecordBatchStream>);

impl RowStream {
    pub fn new(stream: datafusion::execution::SendableRecordBatchStream) -> Self {
        Self(std::sync::Mutex::new(stream))
    }

    pub fn into_inner(self) -> datafusion::execution::SendableRecordBatchStream {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get_mut(&mut self) -> &mut datafusion::execution::SendableRecordBatchStream {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ClientCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCopy::In(t) => f.debug_tuple("In").field(t).finish(),
            ClientCopy::Out { format, options, .. } => {
                f.debug_struct("Out").field("format", format).field("options", options).finish_non_exhaustive()
            }
        }
    }
}

/// What a statement's result is, for interfaces that report it in their own form (the
/// PostgreSQL protocol's command tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rows to show (SELECT, CONSUME, SHOW, EXPLAIN, FETCH, ACK's position).
    Rows,
    /// One `count` column: how many rows an INSERT, UPDATE, DELETE, MOVE or COPY TO changed.
    RowCount,
    /// One `status` column saying what a DDL, user or COPY FROM statement did.
    Status,
}

/// A statement's command tag: its PostgreSQL-style name (`INSERT`, `CREATE TABLE`, `CONSUME`) and
/// what its result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandTag {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl CommandTag {
    /// The command of a parsed statement.
    pub fn of(statement: &Statement) -> Self {
        use topicfusion_dialect::sqlparser::ast::ObjectType;
        let (name, outcome) = match statement {
            Statement::DataFusion(df) => match df.as_ref() {
                DFStatement::Statement(st) => match st.as_ref() {
                    SqlStatement::Query(_) => ("SELECT", Outcome::Rows),
                    SqlStatement::Insert(_) => ("INSERT", Outcome::RowCount),
                    SqlStatement::Update(_) => ("UPDATE", Outcome::RowCount),
                    SqlStatement::Delete(_) => ("DELETE", Outcome::RowCount),
                    SqlStatement::CreateTable(_) => ("CREATE TABLE", Outcome::Status),
                    SqlStatement::CreateSchema { .. } => ("CREATE SCHEMA", Outcome::Status),
                    SqlStatement::CreateView(_) => ("CREATE VIEW", Outcome::Status),
                    SqlStatement::Drop { object_type, .. } => (
                        match object_type {
                            ObjectType::Table => "DROP TABLE",
                            ObjectType::Schema => "DROP SCHEMA",
                            ObjectType::View => "DROP VIEW",
                            _ => "DROP",
                        },
                        Outcome::Status,
                    ),
                    SqlStatement::Set(_) => ("SET", Outcome::Status),
                    SqlStatement::StartTransaction { .. } => ("BEGIN", Outcome::Status),
                    SqlStatement::Commit { .. } => ("COMMIT", Outcome::Status),
                    SqlStatement::Rollback { savepoint: Some(_), .. } => ("ROLLBACK TO SAVEPOINT", Outcome::Status),
                    SqlStatement::Rollback { .. } => ("ROLLBACK", Outcome::Status),
                    SqlStatement::Savepoint { .. } => ("SAVEPOINT", Outcome::Status),
                    SqlStatement::ReleaseSavepoint { .. } => ("RELEASE", Outcome::Status),
                    SqlStatement::Deallocate { name, .. }
                        if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") =>
                    {
                        ("DEALLOCATE ALL", Outcome::Status)
                    }
                    SqlStatement::Deallocate { .. } => ("DEALLOCATE", Outcome::Status),
                    SqlStatement::ShowVariable { .. } => ("SHOW", Outcome::Rows),
                    SqlStatement::Discard { .. } => ("DISCARD ALL", Outcome::Status),
                    SqlStatement::Declare { .. } => ("DECLARE CURSOR", Outcome::Status),
                    SqlStatement::Close { .. } => ("CLOSE CURSOR", Outcome::Status),
                    _ => ("SELECT", Outcome::Rows),
                },
                DFStatement::CreateExternalTable(_) => ("CREATE EXTERNAL TABLE", Outcome::Status),
                DFStatement::CopyTo(_) => ("COPY", Outcome::RowCount),
                DFStatement::Reset(_) => ("RESET", Outcome::Status),
                _ => ("SELECT", Outcome::Rows),
            },
            Statement::Topic(t) => match t {
                TopicStatement::CreateTopic(_) => ("CREATE TOPIC", Outcome::Status),
                TopicStatement::DropTopic(_) => ("DROP TOPIC", Outcome::Status),
                TopicStatement::ClearTopic(_) => ("CLEAR TOPIC", Outcome::Status),
                TopicStatement::AlterTopic(_) => ("ALTER TOPIC", Outcome::Status),
                TopicStatement::ShowTopics => ("SHOW TOPICS", Outcome::Rows),
                TopicStatement::Consume(_) => ("CONSUME", Outcome::Rows),
                TopicStatement::Ack(_) => ("ACK", Outcome::Rows),
                TopicStatement::ResetConsumerGroup(_) => ("RESET CONSUMER GROUP", Outcome::Status),
                TopicStatement::DropConsumerGroup(_) => ("DROP CONSUMER GROUP", Outcome::Status),
                TopicStatement::RunRetention(_) => ("RUN RETENTION", Outcome::Rows),
            },
            Statement::ExplainTopic { .. } => ("EXPLAIN", Outcome::Rows),
            Statement::User(u) => (
                match u {
                    UserStatement::Create(_) => "CREATE USER",
                    UserStatement::Alter(_) => "ALTER USER",
                    UserStatement::Drop(_) => "DROP USER",
                },
                Outcome::Status,
            ),
            Statement::Copy(CopyStatement::From(c)) if c.source == CopyEndpoint::Client => ("COPY", Outcome::RowCount),
            Statement::Copy(CopyStatement::From(_)) => ("COPY", Outcome::Status),
            Statement::Copy(CopyStatement::To(_)) => ("COPY", Outcome::RowCount),
            Statement::Session(SessionStatement::Fetch { rows: true, .. }) => ("FETCH", Outcome::Rows),
            Statement::Session(SessionStatement::Fetch { rows: false, .. }) => ("MOVE", Outcome::RowCount),
            Statement::Session(SessionStatement::Unlisten { .. }) => ("UNLISTEN", Outcome::Status),
            Statement::Session(SessionStatement::DeclareSubscribe { .. }) => ("DECLARE CURSOR", Outcome::Status),
            Statement::Cluster(_) => ("ALTER CLUSTER", Outcome::Status),
            Statement::Subscribe(_) => ("SUBSCRIBE", Outcome::Rows),
        };
        Self { name, outcome }
    }
}

/// What a client needs to know of a statement before running it (the PostgreSQL protocol's
/// Describe): its command, its result columns (for [`Outcome::Rows`]) and the types of its
/// `$n` parameters (`None`: not inferred; the client sends text).
#[derive(Debug, Clone)]
pub struct Description {
    pub command: CommandTag,
    pub columns: Option<SchemaRef>,
    pub parameters: Vec<Option<DataType>>,
}

/// A statement's rows, before the statement's text and command are filled in.
pub(crate) fn rows_result(schema: SchemaRef, batches: Vec<RecordBatch>) -> StatementResult {
    StatementResult {
        sql: String::new(),
        command: CommandTag { name: "SELECT", outcome: Outcome::Rows },
        schema,
        batches,
        copy: None,
    }
}

/// A one-column `status` result.
pub(crate) fn status_result(status: String) -> StatementResult {
    let schema = Arc::new(Schema::new(vec![Field::new("status", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![status]))])
        .expect("one string column");
    rows_result(schema, vec![batch])
}

/// A one-column `count` result.
pub(crate) fn count_result(count: u64) -> StatementResult {
    let schema = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt64Array::from(vec![count]))])
        .expect("one u64 column");
    rows_result(schema, vec![batch])
}

/// A statement failed; the statements before it have committed, the ones after it did not run.
/// Displays as [`ExecuteError::message`].
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct ExecuteError {
    /// 1-based position of the failing statement in the SQL text (0: the text did not parse).
    pub statement: usize,
    pub sql: String,
    pub kind: ErrorKind,
    #[source]
    pub source: DataFusionError,
    /// The results of the statements before the failing one (they committed): CONSUME's
    /// messages among them are claimed, so an interface must still hand them to the client.
    pub completed: Vec<StatementResult>,
}

impl ExecuteError {
    pub(crate) fn new(statement: usize, sql: String, source: DataFusionError) -> Self {
        let kind = if statement == 0 { ErrorKind::Syntax } else { ErrorKind::of(&source) };
        Self { statement, sql, kind, source, completed: Vec::new() }
    }

    /// The error as a client reads it: the cause, without the wrappers that name DataFusion's
    /// internals (`Optimizer rule 'simplify_expressions' failed caused by Arrow error: ...`
    /// becomes `Cast error: ...`). The full error stays in [`ExecuteError::source`].
    pub fn message(&self) -> String {
        client_message(&self.source)
    }
}

fn client_message(e: &DataFusionError) -> String {
    match e {
        // An optimizer rule that folds constants evaluates the statement's own values: the
        // failure is the value's, not the rule's.
        DataFusionError::Context(context, inner) if context.starts_with("Optimizer rule '") => client_message(inner),
        DataFusionError::Shared(inner) => client_message(inner),
        DataFusionError::ArrowError(e, _) => e.to_string(),
        // The engine's own errors say what happened (a cluster node that does not lead names
        // the leader, a permission says which, a live query's end says why): without
        // DataFusion's "External error: " in front.
        DataFusionError::External(inner) => inner.to_string(),
        e => e.to_string(),
    }
}
