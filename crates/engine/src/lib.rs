//! topicfusion engine: DataFusion wiring for durable tables and topics.
//!
//! [`Database`] opens a data dir and executes SQL. Underneath: the durable catalog
//! ([`catalog`]), table and system providers ([`provider`]), the DML rewrite and topic-command
//! plans ([`plan`]) and their operators ([`exec`]), the write path ([`writer`]) with change
//! capture ([`cdc`]), topic DDL ([`topics`]), consumption ([`groups`]), users and roles ([`users`]) and what PostgreSQL
//! clients need ([`postgres`]: pg_catalog, parameters).

pub mod catalog;
pub mod cdc;
pub mod commit_threads;
pub mod copy;
pub mod core;
pub mod database;
pub mod ddl;
pub mod error;
pub mod exec;
pub mod groups;
pub mod literal_insert;
pub mod plan;
pub mod planner;
pub mod postgres;
pub mod provider;
pub mod retention;
pub mod session;
pub mod topics;
pub mod types;
pub mod users;
pub mod writer;

pub use database::{
    ClientCopy, Command, Database, DatabaseOptions, Description, Outcome, PreparedStatement, StatementResult,
};
pub use error::{ErrorKind, ExecuteError, one_line};
pub use groups::ConsumeRequest;
pub use postgres::ParamValue;
pub use session::Session;
pub use topicfusion_dialect::{
    AckTarget, CopyFormat, CopyOptions, MAX_EXPR_DEPTH, MAX_USER_NAME_BYTES, ParsedStatement, SessionStatement,
    StartPosition, Statement, Statements, parse_sql,
};
pub use topicfusion_storage::{Clock, Durability, Message};
pub use users::{Action, PermissionDenied, Principal, Role, UserMeta};
