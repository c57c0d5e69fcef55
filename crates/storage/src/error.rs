//! Storage errors: one enum for the crate, with typed context.

use crate::keys::Hex;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data: {what}")]
    Corrupt { what: &'static str },
    #[error("malformed {what} key {key}")]
    BadKey { what: &'static str, key: Hex },
    #[error("a primary-key value cannot be NULL")]
    NullKey,
    #[error("partition {partition} of topic id {topic_id} does not exist")]
    UnknownPartition { topic_id: u64, partition: u32 },
    #[error("partition {partition} of topic id {topic_id} already exists")]
    PartitionExists { topic_id: u64, partition: u32 },
    #[error(
        "the write-ahead log could not be synced ({0}): no commit is acknowledged after a failed fsync; restart the database"
    )]
    WalSync(String),
    #[error("the storage scan task ended: {0}")]
    ScanTask(String),
    /// This replica does not take writes: its cluster's leader does.
    #[error("this node is not the cluster's leader{}", match .leader { Some(l) => format!("; the leader is {l}"), None => "; no leader is known yet".into() })]
    NotLeader { leader: Option<String> },
    /// The write was not replicated (nothing of it applied): the message says why.
    #[error("the write was not replicated: {0}")]
    Replication(String),
}
