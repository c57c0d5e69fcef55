//! The engine's figures for Prometheus (docs/operations.md). What happens on the statement path
//! is counted there with atomics (statements and their durations, rows written, dead letters,
//! retention's deletions); what describes state (offsets, bytes, lag, claims, waiting long polls,
//! RocksDB's properties) is read only when `/metrics` is scraped, so scraping costs writers
//! nothing. Labels are bounded by the catalog: statement kinds, tables, topics, partitions and
//! consumer groups, never users, offsets or SQL text.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use crate::core::Core;

/// The engine's registry and the instruments the statement path records into.
pub struct Metrics {
    registry: Registry,
    statements: IntCounterVec,
    statement_seconds: HistogramVec,
    rows_written: IntCounterVec,
    retention_deleted: IntCounterVec,
}

/// Statement durations from 100 µs to 10 s.
const STATEMENT_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    /// The registry with the engine's instruments and the store's histograms in it.
    pub(crate) fn new(store: &topicfusion_storage::metrics::StoreMetrics, dead_letters: &IntCounterVec) -> Self {
        let statements = IntCounterVec::new(
            Opts::new(
                "topicfusion_statements_total",
                "Statements run, by kind (the command tag) and outcome (ok, error).",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let statement_seconds = HistogramVec::new(
            HistogramOpts::new(
                "topicfusion_statement_duration_seconds",
                "Time to run a statement, from parsed to its result (a long poll's wait included), by kind.",
            )
            .buckets(STATEMENT_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("valid metric");
        let rows_written = IntCounterVec::new(
            Opts::new("topicfusion_rows_written_total", "Rows inserted, updated or deleted, by table."),
            &["table"],
        )
        .expect("valid metric");
        let retention_deleted = IntCounterVec::new(
            Opts::new("topicfusion_retention_deleted_messages_total", "Messages deleted by retention, by topic."),
            &["topic"],
        )
        .expect("valid metric");
        let registry = Registry::new();
        let collectors: [Box<dyn Collector>; 7] = [
            Box::new(statements.clone()),
            Box::new(statement_seconds.clone()),
            Box::new(rows_written.clone()),
            Box::new(retention_deleted.clone()),
            Box::new(dead_letters.clone()),
            Box::new(store.commit.clone()),
            Box::new(store.wal_sync.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, statements, statement_seconds, rows_written, retention_deleted }
    }

    /// Where the server registers its own instruments (HTTP, PostgreSQL connections), so that
    /// one scrape returns everything.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one statement.
    pub fn statement(&self, kind: &str, ok: bool, took: Duration) {
        self.statements.with_label_values(&[kind, if ok { "ok" } else { "error" }]).inc();
        self.statement_seconds.with_label_values(&[kind]).observe(took.as_secs_f64());
    }

    pub(crate) fn rows_written(&self, table: &str, rows: u64) {
        self.rows_written.with_label_values(&[table]).inc_by(rows);
    }

    pub(crate) fn retention_deleted(&self, topic: &str, messages: u64) {
        self.retention_deleted.with_label_values(&[topic]).inc_by(messages);
    }
}

/// The dead-letter counter, owned by consumer groups (which move the messages).
pub(crate) fn dead_letters_counter() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "topicfusion_dead_letters_total",
            "Messages moved to a dead-letter topic after max_deliveries, by source topic and group.",
        ),
        &["topic", "group"],
    )
    .expect("valid metric")
}

/// Everything `/metrics` shows: the registry's instruments, then the state read now.
pub fn gather(core: &Core) -> Vec<MetricFamily> {
    let mut families = core.metrics.registry.gather();
    match state_families(core) {
        Ok(state) => families.extend(state),
        // A figure that cannot be read now is left out of this scrape, not the scrape.
        Err(e) => tracing::warn!(error = %e, "cannot read topic and group figures for /metrics"),
    }
    families
}

/// Topic, group and RocksDB figures, read from the current state.
fn state_families(core: &Core) -> datafusion::common::Result<Vec<MetricFamily>> {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry.register(Box::new(g.clone())).expect("metric names are unique");
        g
    };
    let messages = IntCounterVec::new(
        Opts::new(
            "topicfusion_topic_messages_total",
            "Messages ever appended to a partition: its next offset (never goes down, not even with retention).",
        ),
        &["topic", "partition"],
    )
    .expect("valid metric");
    registry.register(Box::new(messages.clone())).expect("metric names are unique");
    let retained = gauge(
        "topicfusion_topic_retained_messages",
        "Messages a partition holds now (from its log start to its next offset).",
        &["topic", "partition"],
    );
    let bytes =
        gauge("topicfusion_topic_bytes", "Bytes of the messages a partition holds now.", &["topic", "partition"]);
    let lag = gauge(
        "topicfusion_consumer_group_lag",
        "Messages of a partition a consumer group has not acknowledged yet.",
        &["topic", "group", "partition"],
    );
    let claimed = gauge(
        "topicfusion_consumer_group_claimed",
        "Messages a consumer group has delivered and not acknowledged (claimed, or claim expired and not yet redelivered).",
        &["topic", "group"],
    );

    let topics: BTreeMap<u64, (String, u32)> = core
        .catalog
        .read()
        .topics
        .values()
        .map(|t| (t.meta.id, (t.meta.qualified_name(), t.meta.partitions)))
        .collect();
    for (id, (name, partitions)) in &topics {
        for p in 0..*partitions {
            let state = core.store.partition_state(*id, p).unwrap_or_default();
            let partition = p.to_string();
            let labels = [name.as_str(), partition.as_str()];
            messages.with_label_values(&labels).inc_by(state.next_offset);
            retained.with_label_values(&labels).set(state.message_count() as f64);
            bytes.with_label_values(&labels).set(state.bytes as f64);
        }
    }
    for row in core.groups.positions(core)? {
        let Some((topic, _)) = topics.get(&row.topic_id) else { continue };
        let value = row.next_offset.saturating_sub(row.position).saturating_sub(row.acked_above);
        lag.with_label_values(&[topic.as_str(), row.group.as_str(), row.partition.to_string().as_str()])
            .set(value as f64);
    }
    let mut claims: BTreeMap<(u64, String), u64> = BTreeMap::new();
    for row in core.groups.claims() {
        *claims.entry((row.topic_id, row.group)).or_default() += 1;
    }
    for ((topic_id, group), n) in claims {
        let Some((topic, _)) = topics.get(&topic_id) else { continue };
        claimed.with_label_values(&[topic.as_str(), group.as_str()]).set(n as f64);
    }

    let single = |name: &str, help: &str, value: i64| {
        let g = IntGauge::new(name, help).expect("valid metric");
        g.set(value);
        registry.register(Box::new(g)).expect("metric names are unique");
    };
    single("topicfusion_consume_waiting", "CONSUME long polls waiting for messages now.", core.store.waiters() as i64);
    single("topicfusion_live_queries", "Live queries (SUBSCRIBE) running now.", core.live.list().len() as i64);
    let properties: BTreeMap<&str, u64> = core.store.rocksdb_properties().into_iter().collect();
    for p in topicfusion_storage::metrics::ROCKSDB_PROPERTIES {
        if let Some(&value) = properties.get(p.property) {
            single(p.metric, p.help, i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    Ok(registry.gather())
}
