//! topicfusion storage: the RocksDB keyspaces ([`keys`]), the value encodings ([`codec`],
//! [`message`]) and the one commit path ([`store::Store::commit`]) that writes row changes,
//! topic messages and their offsets in one atomic write batch: prepared into a [`Command`]
//! (every offset, timestamp and key decided) and applied by the one apply path every node of
//! a replicated log runs ([`store::Store::apply`]).

pub mod codec;
pub mod command;
pub mod error;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod store;

pub use codec::Value;
pub use command::{AppliedId, Command};
pub use error::{Result, StorageError};
pub use message::{ChangeOp, Message, MessageBatches, NewMessage};
pub use rocksdb::WriteBatch;
pub use store::{
    Applied, Clock, Commit, Committed, Durability, Export, Import, OnWritten, PartitionOp, PartitionState, Payload,
    Pending, Replicator, Store,
};
