//! The classification of errors: [`ErrorKind`], the one every interface maps to its own codes
//! (HTTP statuses, PostgreSQL SQLSTATEs), and [`one_line`] for quoting input in messages. A
//! failed statement is reported as [`crate::statement::ExecuteError`].

use datafusion::arrow::error::ArrowError;
use datafusion::common::DataFusionError;
use topicfusion_storage::StorageError;

use crate::auth::PermissionDenied;
use crate::live::LiveEnd;

/// What kind of failure an error is, for interfaces that map errors to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The SQL text did not parse.
    Syntax,
    /// The caller's role does not allow the statement.
    PermissionDenied,
    /// The statement is wrong for the data: unknown names, bad values, constraint violations.
    InvalidInput,
    /// A failure of the database itself (storage, a bug): not the caller's fault.
    Internal,
    /// A duplicate primary key.
    UniqueViolation,
    /// NULL for a NOT NULL column.
    NotNullViolation,
    /// An unknown table.
    UndefinedTable,
    /// An unknown column.
    UndefinedColumn,
    /// An unknown topic, schema, user or consumer group.
    UndefinedObject,
    /// A statement waiting for data (CONSUME) was cancelled by its client.
    Cancelled,
    /// An unknown cursor.
    InvalidCursorName,
    /// A cursor asked to do what it cannot (move backwards).
    ObjectNotInPrerequisiteState,
    /// A statement that needs a transaction block (`DECLARE` without `WITH HOLD`) outside one.
    NoActiveTransaction,
    /// Something the server does not do (a clear refusal, not a failure).
    FeatureNotSupported,
    /// A division or modulo by zero.
    DivisionByZero,
    /// A value beyond its type's range (an overflowing sum or cast).
    NumericOutOfRange,
    /// Text that is not a value of the type it is cast to (`'abc'::int`).
    InvalidTextRepresentation,
    /// CREATE of a table that exists.
    DuplicateTable,
    /// CREATE of a schema that exists.
    DuplicateSchema,
    /// DECLARE of a cursor that exists.
    DuplicateCursor,
    /// CREATE of a topic or user that exists.
    DuplicateObject,
    /// A function that does not exist (or not for these argument types).
    UndefinedFunction,
    /// RELEASE or ROLLBACK TO a savepoint that does not exist.
    InvalidSavepoint,
    /// DEALLOCATE of a prepared statement that does not exist.
    InvalidStatementName,
    /// A write sent to a cluster node that is not the leader (the message names the leader).
    ReadOnly,
    /// A live query ended because it fell behind or the server is out of room for it.
    InsufficientResources,
    /// A live query's filter failed on a row.
    DataException,
    /// A live query ended because the server is shutting down.
    AdminShutdown,
}

impl ErrorKind {
    /// Classifies an error of a statement that parsed.
    pub fn of(e: &DataFusionError) -> Self {
        match e {
            DataFusionError::Internal(_) | DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
            // Files a statement names (COPY FROM, CREATE EXTERNAL TABLE) that cannot be read:
            // the caller's input, not a failure of the database (its own storage errors are
            // `StorageError`s).
            DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => ErrorKind::InvalidInput,
            DataFusionError::External(inner) if let Some(e) = inner.downcast_ref::<StorageError>() => match e {
                // Storage errors a statement's input causes.
                StorageError::NullKey => ErrorKind::NotNullViolation,
                StorageError::UnknownPartition { .. } => ErrorKind::UndefinedObject,
                StorageError::NotLeader { .. } => ErrorKind::ReadOnly,
                _ => ErrorKind::Internal,
            },
            DataFusionError::External(inner) if inner.is::<PermissionDenied>() => ErrorKind::PermissionDenied,
            DataFusionError::External(inner) if let Some(end) = inner.downcast_ref::<LiveEnd>() => end.kind(),
            DataFusionError::Context(_, inner) => ErrorKind::of(inner),
            DataFusionError::Shared(inner) => ErrorKind::of(inner),
            DataFusionError::Diagnostic(_, inner) => ErrorKind::of(inner),
            DataFusionError::SchemaError(e, _)
                if matches!(e.as_ref(), datafusion::common::SchemaError::FieldNotFound { .. }) =>
            {
                ErrorKind::UndefinedColumn
            }
            DataFusionError::ArrowError(e, _) => match e.as_ref() {
                ArrowError::DivideByZero => ErrorKind::DivisionByZero,
                ArrowError::ArithmeticOverflow(_) => ErrorKind::NumericOutOfRange,
                ArrowError::CastError(m) | ArrowError::ParseError(m) if m.contains("Cannot cast string") => {
                    ErrorKind::InvalidTextRepresentation
                }
                ArrowError::CastError(m)
                    if m.contains("overflow") || m.contains("out of range") || m.starts_with("Can't cast value") =>
                {
                    ErrorKind::NumericOutOfRange
                }
                ArrowError::InvalidArgumentError(m) if m.contains("is too large to store") => {
                    ErrorKind::NumericOutOfRange
                }
                _ => ErrorKind::InvalidInput,
            },
            DataFusionError::NotImplemented(_) => ErrorKind::FeatureNotSupported,
            DataFusionError::Plan(m) | DataFusionError::Execution(m) => Self::of_message(m),
            _ => ErrorKind::InvalidInput,
        }
    }

    /// The engine's own errors (and DataFusion's unknown table) by their fixed openings.
    fn of_message(message: &str) -> Self {
        let unknown = |what: &str| message.starts_with(what) && message.contains(" does not exist");
        if message.starts_with("cursor \"") && message.ends_with("\" does not exist") {
            ErrorKind::InvalidCursorName
        } else if message.starts_with("cursor can only scan forward") {
            ErrorKind::ObjectNotInPrerequisiteState
        } else if message.contains("can only be used in transaction blocks") {
            ErrorKind::NoActiveTransaction
        } else if message.starts_with("unrecognized configuration parameter") {
            ErrorKind::UndefinedObject
        } else if message.starts_with("not supported: ") {
            ErrorKind::FeatureNotSupported
        } else if message.starts_with("savepoint \"") && message.ends_with("\" does not exist") {
            ErrorKind::InvalidSavepoint
        } else if message.starts_with("prepared statement \"") && message.ends_with("\" does not exist") {
            ErrorKind::InvalidStatementName
        } else if message.starts_with("table ") && message.ends_with(" already exists") {
            ErrorKind::DuplicateTable
        } else if message.starts_with("schema ") && message.ends_with(" already exists") {
            ErrorKind::DuplicateSchema
        } else if message.starts_with("cursor \"") && message.ends_with("\" already exists") {
            ErrorKind::DuplicateCursor
        } else if message.ends_with(" already exists") && ["topic ", "user "].iter().any(|w| message.starts_with(w)) {
            ErrorKind::DuplicateObject
        } else if message.starts_with("Invalid function '") {
            ErrorKind::UndefinedFunction
        } else if message.starts_with("Divide by zero") {
            ErrorKind::DivisionByZero
        } else if message.starts_with("duplicate primary key") {
            ErrorKind::UniqueViolation
        } else if message.starts_with("null value in column") {
            ErrorKind::NotNullViolation
        } else if unknown("table ") || (message.starts_with("table '") && message.ends_with("' not found")) {
            ErrorKind::UndefinedTable
        } else if unknown("topic ") || unknown("schema ") || unknown("user ") || unknown("consumer group ") {
            ErrorKind::UndefinedObject
        } else if message.contains(" out of range") && message.contains(": Arithmetic overflow: ") {
            // The write path's checked integer arithmetic (`BIGINT out of range for column v`).
            ErrorKind::NumericOutOfRange
        } else {
            ErrorKind::InvalidInput
        }
    }

    /// The PostgreSQL SQLSTATE of this kind of error.
    pub fn sqlstate(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "42601",
            ErrorKind::PermissionDenied => "42501",
            ErrorKind::InvalidInput => "22023",
            ErrorKind::Internal => "XX000",
            ErrorKind::UniqueViolation => "23505",
            ErrorKind::NotNullViolation => "23502",
            ErrorKind::UndefinedTable => "42P01",
            ErrorKind::UndefinedColumn => "42703",
            ErrorKind::UndefinedObject => "42704",
            ErrorKind::Cancelled => "57014",
            ErrorKind::InvalidCursorName => "34000",
            ErrorKind::ObjectNotInPrerequisiteState => "55000",
            ErrorKind::NoActiveTransaction => "25P01",
            ErrorKind::FeatureNotSupported => "0A000",
            ErrorKind::DivisionByZero => "22012",
            ErrorKind::NumericOutOfRange => "22003",
            ErrorKind::InvalidTextRepresentation => "22P02",
            ErrorKind::DuplicateTable => "42P07",
            ErrorKind::DuplicateSchema => "42P06",
            ErrorKind::DuplicateCursor => "42P03",
            ErrorKind::DuplicateObject => "42710",
            ErrorKind::UndefinedFunction => "42883",
            ErrorKind::InvalidSavepoint => "3B001",
            ErrorKind::InvalidStatementName => "26000",
            // read_only_sql_transaction, as a PostgreSQL standby answers a write.
            ErrorKind::ReadOnly => "25006",
            ErrorKind::InsufficientResources => "53400",
            ErrorKind::DataException => "22000",
            ErrorKind::AdminShutdown => "57P01",
        }
    }
}

/// Text on one line (runs of whitespace, newlines included, become one space), cut after
/// `max_chars` characters with `...`: for error messages, which can quote megabytes of input.
pub fn one_line(text: &str, max_chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}
