//! `Core`: the state every plan, operator and provider shares: the store, the catalog, the
//! consumer groups, the users, the DDL lock, and a session for compiling route expressions; and
//! [`blocking`], how async code runs storage work.

use std::fmt;
use std::sync::Arc;

use datafusion::common::TableReference;
use datafusion::common::{Result, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::sql::planner::object_name_to_table_reference;
use topicfusion_dialect::sqlparser::ast::ObjectName;
use topicfusion_storage::Store;

use crate::auth::Users;
use crate::catalog::{Catalog, DEFAULT_SCHEMA};
use crate::topics::groups::Groups;

pub struct Core {
    pub store: Arc<Store>,
    pub catalog: Catalog,
    pub groups: Groups,
    pub users: Users,
    /// Taken for writing by topic DDL (which changes routes), for reading by every table write:
    /// a statement sees the same routes from its first read to its commit. Table and schema DDL
    /// does not take it (it serializes on the catalog's write lock and, for DROP TABLE, waits
    /// only for the dropped table's writers).
    pub ddl_lock: Arc<tokio::sync::RwLock<()>>,
    /// Compiles route filters and PARTITION BY expressions.
    pub expr_ctx: SessionContext,
    pub limits: Limits,
    /// Background job records and the retention executor's mailbox.
    pub jobs: crate::topics::retention::Jobs,
    /// Where DML statements run their key check, routing and write.
    pub commit_threads: crate::write::commit_threads::CommitThreads,
    /// On a cluster node: its cluster (`system.cluster`, `ALTER CLUSTER`).
    pub cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
    /// Live queries: the changes of watched tables, dispatched to their subscribers.
    pub live: crate::live::Live,
    /// What `/metrics` exports.
    pub metrics: crate::metrics::Metrics,
}

/// The replicated cluster this node is part of, given by the server on a cluster node.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// Every node as this node sees it: the rows of `system.cluster`.
    fn nodes(&self) -> Vec<ClusterNode>;

    /// `ALTER CLUSTER ADD NODE`: returns once the node has caught up and votes. On a node that
    /// does not lead, fails with the store's not-leader error naming the leader.
    async fn add_node(&self, id: u64, raft: String, http: String, pg: String) -> datafusion::common::Result<()>;

    /// `ALTER CLUSTER REMOVE NODE` (same refusal on a node that does not lead).
    async fn remove_node(&self, id: u64) -> datafusion::common::Result<()>;
}

/// A row of `system.cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub node_id: u64,
    /// `leader`, `follower`, `learner`, `candidate` or `unreachable`.
    pub role: String,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub raft_address: String,
    pub http_address: String,
    pub pg_address: String,
}

/// Limits on what one statement may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See `DatabaseOptions::max_statement_bytes`.
    pub max_statement_bytes: usize,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// `(schema, name)` of a table or topic name, with DataFusion's rules: unquoted identifiers
/// are lowercased and unqualified names are in the default schema.
pub fn resolve_name(name: &ObjectName) -> Result<(String, String)> {
    reference_parts(object_name_to_table_reference(name.clone(), true)?)
}

pub fn reference_parts(r: TableReference) -> Result<(String, String)> {
    match r {
        TableReference::Bare { table } => Ok((DEFAULT_SCHEMA.to_owned(), table.to_string())),
        TableReference::Partial { schema, table } => Ok((schema.to_string(), table.to_string())),
        TableReference::Full { catalog, schema, table } if catalog.as_ref() == "datafusion" => {
            Ok((schema.to_string(), table.to_string()))
        }
        TableReference::Full { catalog, .. } => plan_err!("catalog {catalog} does not exist"),
    }
}

/// Runs blocking storage work (RocksDB reads and writes, fsyncs) without stalling the async
/// worker it is called on: on a multi-threaded runtime tokio hands the worker's other tasks to
/// another thread while it runs (`block_in_place`); on a current-thread runtime (some embedders'
/// tests) it runs inline. Scans use `spawn_blocking`, DML writes the commit threads
/// ([`crate::write::commit_threads`]); a DML statement awaits its fsync (`Store::when_durable`).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
