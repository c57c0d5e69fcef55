//! topicfusion engine: DataFusion wiring for durable tables and topics.
//!
//! [`Database`] (a thin facade) opens a data dir and executes SQL for [`Session`]s; what a
//! statement is and returns is in [`statement`], its errors in [`error`]. The layers underneath,
//! each using only the ones after it (see docs/architecture.md for the exceptions):
//! - [`sql`]: planning, the DML and topic-command plans, their operators, the providers, table
//!   DDL and PostgreSQL compatibility;
//! - [`write`]: the write path of table statements (writer, literal INSERT, COPY, commit
//!   threads);
//! - [`live`]: live queries (`SUBSCRIBE`): committed changes pushed to subscribers;
//! - [`topics`]: topic DDL and routes, change capture, consumer groups, retention;
//! - [`auth`]: users, roles and what each may do;
//! - [`catalog`]: the durable catalog of schemas, tables and topics, and column types;
//! - [`core`]: the shared state every layer is handed (store, catalog, groups, users, locks);
//! - [`metrics`]: the figures `/metrics` exports (counted on the statement path, or read from
//!   that state when scraped).

pub mod auth;
pub mod catalog;
pub mod core;
pub mod database;
pub mod error;
pub mod live;
pub mod metrics;
pub mod session;
pub mod sql;
pub mod statement;
pub mod topics;
pub mod write;

pub use auth::{Action, PermissionDenied, Principal, Role, UserMeta};
pub use database::{Database, DatabaseOptions, PreparedStatement};
pub use error::{ErrorKind, one_line};
pub use live::{LiveEnd, LiveEvent, LiveGroup, LiveOp, LiveOptions, LiveQueryInfo, LiveRow, Subscription};
pub use session::Session;
pub use sql::postgres::ParamValue;
pub use statement::{ClientCopy, CommandTag, Description, ExecuteError, Outcome, StatementResult};
pub use topicfusion_dialect::{
    AckTarget, CopyFormat, CopyOptions, CopyStatement, MAX_EXPR_DEPTH, MAX_USER_NAME_BYTES, ParsedStatement,
    SessionStatement, StartPosition, Statement, Statements, parse_sql,
};
pub use topicfusion_storage::{Clock, Durability, Message};
pub use topics::groups::ConsumeRequest;
