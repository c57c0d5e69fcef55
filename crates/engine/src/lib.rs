//! topicfusion engine: DataFusion wiring for durable tables and topics.
//!
//! [`Database`] opens a data dir and executes SQL. Underneath: the durable catalog
//! ([`catalog`]), table and system providers ([`provider`]), the DML rewrite and topic-command
//! plans ([`plan`]) and their operators ([`exec`]), the write path ([`writer`]) with change
//! capture ([`cdc`]), topic DDL ([`topics`]) and consumption ([`groups`]).

pub mod catalog;
pub mod cdc;
pub mod core;
pub mod database;
pub mod ddl;
pub mod exec;
pub mod groups;
pub mod plan;
pub mod planner;
pub mod provider;
pub mod topics;
pub mod types;
pub mod writer;

pub use database::{Database, DatabaseOptions, ExecuteError, StatementResult};
pub use groups::ConsumeRequest;
pub use topicfusion_dialect::StartPosition;
pub use topicfusion_storage::{Durability, Message};
