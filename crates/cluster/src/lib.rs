//! topicfusion replication on openraft: the Raft types ([`TypeConfig`]: a log entry carries a
//! storage command's bytes, see `topicfusion_storage::Command`), the Raft log on disk
//! ([`log_store`]), the state machine over the store's one apply path and its snapshots
//! ([`state_machine`]), the node-to-node transport ([`network`]) and a node ([`node`]: leader
//! fencing, the store's proposer, the view `system.cluster` shows). `topicfusion serve` with a
//! `[cluster]` section runs one over its database's store.

pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;

use serde::{Deserialize, Serialize};

/// Where a node of the cluster listens: its Raft, HTTP and PostgreSQL-protocol addresses
/// (`IP:PORT`), as the `[cluster] peers` configuration lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub raft: String,
    pub http: String,
    pub pg: String,
}

/// What applying a command did, reported to the node that proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Written (or nothing to write: a blank or membership entry).
    Applied,
    /// Prepared from partition states the leader's store no longer had: prepare it again.
    Stale,
    /// Not a valid command: applied as nothing (only its log id written), on every node alike.
    Rejected,
}

openraft::declare_raft_types!(
    /// The Raft types of topicfusion: node ids are `u64`, a proposal is an encoded
    /// `topicfusion_storage::Command`.
    pub TypeConfig:
        D = Vec<u8>,
        R = ApplyOutcome,
        NodeId = u64,
        Node = NodeAddr,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
