//! The store's figures for Prometheus (docs/operations.md): how long commits and WAL fsyncs
//! take, as histograms recorded with atomics on the commit path, and the RocksDB properties that
//! predict trouble, read only when someone asks ([`crate::Store::rocksdb_properties`]).

use prometheus::{Histogram, HistogramOpts};

use crate::store::{Committed, Pending};

/// The commit path's histograms. Cloning shares them.
#[derive(Clone)]
pub struct StoreMetrics {
    /// From a commit's start (waiting for the commit lock included) until it is durable.
    pub commit: Histogram,
    /// One fsync of the write-ahead log (each covers every commit written before it started).
    pub wal_sync: Histogram,
}

/// Buckets from 50 µs to 2.5 s: a commit in memory takes tens of microseconds, a synced one
/// an fsync (about a millisecond on a fast disk, tens on a slow one).
const BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl StoreMetrics {
    pub(crate) fn new() -> Self {
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
                .expect("a valid histogram definition")
        };
        Self {
            commit: histogram(
                "topicfusion_commit_duration_seconds",
                "Time from a commit's start until it is durable (RocksDB write and, with sync, its fsync).",
            ),
            wal_sync: histogram(
                "topicfusion_wal_sync_duration_seconds",
                "Time of one fsync of RocksDB's write-ahead log.",
            ),
        }
    }

    /// Records a commit that is now durable and hands back what it committed.
    pub(crate) fn committed(&self, pending: Pending) -> Committed {
        let (committed, started) = pending.into_parts();
        if let Some(started) = started {
            self.commit.observe(started.elapsed().as_secs_f64());
        }
        committed
    }
}

/// A RocksDB property exported as a gauge.
pub struct RocksDbProperty {
    /// RocksDB's name for it (`DB::property_int_value`).
    pub property: &'static str,
    /// The metric's name.
    pub metric: &'static str,
    pub help: &'static str,
}

/// The RocksDB properties `/metrics` exports: what grows before writes stall.
pub const ROCKSDB_PROPERTIES: &[RocksDbProperty] = &[
    RocksDbProperty {
        property: "rocksdb.estimate-pending-compaction-bytes",
        metric: "topicfusion_rocksdb_pending_compaction_bytes",
        help: "Bytes RocksDB estimates compaction must rewrite to bring every level within its target size; writes slow down and then stop when it grows past the soft and hard limits.",
    },
    RocksDbProperty {
        property: "rocksdb.actual-delayed-write-rate",
        metric: "topicfusion_rocksdb_delayed_write_rate_bytes",
        help: "The rate RocksDB currently slows writes to, in bytes per second (0: writes are not delayed).",
    },
    RocksDbProperty {
        property: "rocksdb.is-write-stopped",
        metric: "topicfusion_rocksdb_write_stopped",
        help: "1 while RocksDB stops writes until compaction or flushes catch up, else 0.",
    },
    RocksDbProperty {
        property: "rocksdb.cur-size-all-mem-tables",
        metric: "topicfusion_rocksdb_memtable_bytes",
        help: "Bytes in RocksDB's memtables (active and those waiting to be flushed).",
    },
    RocksDbProperty {
        property: "rocksdb.num-immutable-mem-table",
        metric: "topicfusion_rocksdb_immutable_memtables",
        help: "Memtables waiting to be flushed; writes stall when they reach max_write_buffer_number.",
    },
    RocksDbProperty {
        property: "rocksdb.live-sst-files-size",
        metric: "topicfusion_rocksdb_live_sst_bytes",
        help: "Bytes of the table files of the current version of the database.",
    },
];
