//! The engine's figures for Prometheus (docs/operations.md). What happens on the statement path
//! is counted there with atomics (statements and their durations; rows written, on each table;
//! dead letters and retention's deletions, rare, under their own small locks); what describes
//! state (offsets, bytes, lag, claims, waiting long polls, RocksDB's properties) is read only
//! when `/metrics` is scraped. Labels are bounded by the catalog: statement kinds, tables,
//! topics, partitions and consumer groups, never users, offsets or SQL text.
//!
//! Series labelled with names from the catalog (tables, topics, groups) are built here as metric
//! families, not with the `prometheus` crate's `MetricVec`: that one finds a series by a hash of
//! its label values written back to back, so `("ev", "10")` and `("ev1", "0")` would be one
//! series. The crate's vectors are used only where that cannot happen: a statement kind with one
//! of two outcomes, a route pattern with a three-digit status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::core::Core;

/// The engine's registry and the instruments the statement path records into.
pub struct Metrics {
    registry: Registry,
    statements: IntCounterVec,
    statement_seconds: HistogramVec,
    /// Messages retention deleted since start, by topic id.
    retention_deleted: Mutex<BTreeMap<u64, u64>>,
}

/// Statement durations from 100 µs to 10 s.
const STATEMENT_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    /// The registry with the engine's instruments and the store's histograms in it.
    pub(crate) fn new(store: &topicfusion_storage::metrics::StoreMetrics) -> Self {
        // Labels: a command tag and "ok" or "error" (see the module doc).
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
        let registry = Registry::new();
        let collectors: [Box<dyn Collector>; 4] = [
            Box::new(statements.clone()),
            Box::new(statement_seconds.clone()),
            Box::new(store.commit.clone()),
            Box::new(store.wal_sync.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Self { registry, statements, statement_seconds, retention_deleted: Mutex::default() }
    }

    /// Where the server registers its own instruments (HTTP, PostgreSQL connections), so that
    /// one scrape returns everything.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one statement: `kind` is its command tag (or `UNPARSED` for text that did not
    /// parse).
    pub fn statement(&self, kind: &str, ok: bool, took: Duration) {
        self.statements.with_label_values(&[kind, if ok { "ok" } else { "error" }]).inc();
        self.statement_seconds.with_label_values(&[kind]).observe(took.as_secs_f64());
    }

    pub(crate) fn retention_deleted(&self, topic_id: u64, messages: u64) {
        *self.retention_deleted.lock().unwrap_or_else(|e| e.into_inner()).entry(topic_id).or_default() += messages;
    }
}

/// Everything `/metrics` shows: the registry's instruments, then the state read now. Blocking
/// (one scan of the stored group positions): call it off async workers.
pub fn gather(core: &Core) -> Vec<MetricFamily> {
    let mut families = core.metrics.registry.gather();
    match state_families(core) {
        Ok(state) => families.extend(state),
        // A figure that cannot be read now is left out of this scrape, not the scrape.
        Err(e) => tracing::warn!(error = %e, "cannot read topic and group figures for /metrics"),
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    families
}

/// One metric family built from `(labels, value)` samples; `None` without samples (Prometheus'
/// registries leave empty families out too).
fn family(name: &str, help: &str, kind: MetricType, samples: Vec<(Vec<(&str, String)>, f64)>) -> Option<MetricFamily> {
    if samples.is_empty() {
        return None;
    }
    let metrics = samples
        .into_iter()
        .map(|(labels, value)| {
            let mut m = Metric::default();
            m.set_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(k.to_owned());
                        pair.set_value(v);
                        pair
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut c = Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                }
                _ => {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                }
            }
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    Some(f)
}

type Samples<'a> = Vec<(Vec<(&'a str, String)>, f64)>;

/// Topic, table, group and RocksDB figures, read from the current state.
fn state_families(core: &Core) -> datafusion::common::Result<Vec<MetricFamily>> {
    use MetricType::{COUNTER, GAUGE};
    let (topics, rows_written): (HashMap<u64, (String, u32)>, Samples) = {
        let catalog = core.catalog.read();
        let topics =
            catalog.topics.values().map(|t| (t.meta.id, (t.meta.qualified_name(), t.meta.partitions))).collect();
        let rows = catalog
            .tables
            .values()
            .map(|t| {
                (
                    vec![("table", t.meta.qualified_name())],
                    t.rows_written.load(std::sync::atomic::Ordering::Relaxed) as f64,
                )
            })
            .collect();
        (topics, rows)
    };
    let mut ordered: Vec<(&u64, &(String, u32))> = topics.iter().collect();
    ordered.sort_by(|a, b| a.1.0.cmp(&b.1.0));
    let states = core.store.partition_states();
    let (mut messages, mut retained, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (id, (name, partitions)) in ordered {
        for p in 0..*partitions {
            let state = states.get(&(*id, p)).copied().unwrap_or_default();
            let labels = || vec![("topic", name.clone()), ("partition", p.to_string())];
            messages.push((labels(), state.next_offset as f64));
            retained.push((labels(), state.message_count() as f64));
            bytes.push((labels(), state.bytes as f64));
        }
    }
    let mut lag = Vec::new();
    for row in core.groups.positions(core)? {
        let Some((topic, _)) = topics.get(&row.topic_id) else { continue };
        let value = row.next_offset.saturating_sub(row.position).saturating_sub(row.acked_above);
        lag.push((
            vec![("topic", topic.clone()), ("group", row.group), ("partition", row.partition.to_string())],
            value as f64,
        ));
    }
    let by_group = |counts: Vec<((u64, String), u64)>| -> Samples {
        counts
            .into_iter()
            .filter_map(|((id, group), n)| {
                topics.get(&id).map(|(topic, _)| (vec![("topic", topic.clone()), ("group", group)], n as f64))
            })
            .collect()
    };
    let claimed = by_group(core.groups.claim_counts(&core.store));
    let dead = by_group(core.groups.dead_letter_counts());
    let retention: Samples = core
        .metrics
        .retention_deleted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(id, &n)| topics.get(id).map(|(topic, _)| (vec![("topic", topic.clone())], n as f64)))
        .collect();
    let single = |value: f64| vec![(Vec::new(), value)];

    let mut out: Vec<Option<MetricFamily>> = vec![
        family("topicfusion_rows_written_total", "Rows inserted, updated or deleted, by table.", COUNTER, rows_written),
        family(
            "topicfusion_topic_messages_total",
            "Messages ever appended to a partition: its next offset (never goes down, not even with retention).",
            COUNTER,
            messages,
        ),
        family(
            "topicfusion_topic_retained_messages",
            "Messages a partition holds now (from its log start to its next offset).",
            GAUGE,
            retained,
        ),
        family("topicfusion_topic_bytes", "Bytes of the messages a partition holds now.", GAUGE, bytes),
        family(
            "topicfusion_consumer_group_lag",
            "Messages of a partition a consumer group has not acknowledged yet.",
            GAUGE,
            lag,
        ),
        family(
            "topicfusion_consumer_group_claimed",
            "Messages a consumer group has been delivered and not acknowledged (claimed, or claim expired and not yet redelivered).",
            GAUGE,
            claimed,
        ),
        family(
            "topicfusion_dead_letters_total",
            "Messages moved to a dead-letter topic after max_deliveries, by source topic and group.",
            COUNTER,
            dead,
        ),
        family(
            "topicfusion_retention_deleted_messages_total",
            "Messages deleted by retention, by topic.",
            COUNTER,
            retention,
        ),
        family(
            "topicfusion_consume_waiting",
            "CONSUME long polls waiting for messages now (one per partition they wait on).",
            GAUGE,
            single(core.store.waiters() as f64),
        ),
        family(
            "topicfusion_live_queries",
            "Live queries (SUBSCRIBE) running now.",
            GAUGE,
            single(core.live.count() as f64),
        ),
    ];
    let properties: BTreeMap<&str, u64> = core.store.rocksdb_properties().into_iter().collect();
    for p in topicfusion_storage::metrics::ROCKSDB_PROPERTIES {
        if let Some(&value) = properties.get(p.property) {
            out.push(family(p.metric, p.help, GAUGE, single(value as f64)));
        }
    }
    Ok(out.into_iter().flatten().collect())
}
