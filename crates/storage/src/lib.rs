//! topicfusion storage: the RocksDB keyspaces ([`keys`]), the value encodings ([`codec`],
//! [`message`]) and the one commit path ([`store::Store::commit`]) that writes row changes,
//! topic messages and their offsets in one atomic write batch.

pub mod codec;
pub mod error;
pub mod keys;
pub mod message;
pub mod store;

pub use codec::Value;
pub use error::{Result, StorageError};
pub use message::{ChangeOp, Message, MessageBatches, NewMessage};
pub use rocksdb::WriteBatch;
pub use store::{Clock, Commit, Committed, Durability, PartitionOp, PartitionState, Pending, Store};
