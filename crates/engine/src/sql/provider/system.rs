//! The `system` schema: read-only tables over the live catalog, partition logs, consumer-group
//! positions and claims, and users (never their password hashes). Each scan snapshots its rows; any SELECT (filters, joins, aggregates)
//! works on them.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::core::Core;

const TABLES: [&str; 9] = [
    "cluster",
    "jobs",
    "live_queries",
    "tables",
    "topic_claims",
    "topic_offsets",
    "topic_partitions",
    "topics",
    "users",
];

#[derive(Debug)]
pub struct SystemSchema {
    core: Arc<Core>,
}

impl SystemSchema {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(TABLES.contains(&name).then(|| {
            Arc::new(SystemTable { name: name.to_owned(), core: Arc::clone(&self.core), only_user: None })
                as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

#[derive(Debug)]
struct SystemTable {
    name: String,
    core: Arc<Core>,
    /// Only this user's rows (`live_queries` as roles below dba see it).
    only_user: Option<String>,
}

/// `plan` with every scan of `system.live_queries` limited to `user`'s own subscriptions: roles
/// below dba see only theirs (their text and position are theirs; other users' queries may name
/// what they filter on), as PostgreSQL shows only one's own `pg_stat_activity.query`.
pub fn only_own_live_queries(
    plan: datafusion::logical_expr::LogicalPlan,
    user: &str,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::{LogicalPlan, TableScan};
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
        let Some(table) = system_table(scan.source.as_ref()).filter(|t| t.name == "live_queries") else {
            return Ok(Transformed::no(node));
        };
        let own = SystemTable { name: table.name.clone(), core: Arc::clone(&table.core), only_user: Some(user.into()) };
        let source = datafusion::datasource::provider_as_source(Arc::new(own));
        Ok(Transformed::yes(LogicalPlan::TableScan(TableScan { source, ..scan.clone() })))
    })
    .map(|t| t.data)
}

fn system_table(source: &dyn datafusion::logical_expr::TableSource) -> Option<&SystemTable> {
    source
        .downcast_ref::<datafusion::datasource::DefaultTableSource>()
        .and_then(|s| s.table_provider.downcast_ref::<SystemTable>())
}

/// Whether a plan's table source is `system.users` (whatever name the statement used for it).
pub fn is_users_table(source: &dyn datafusion::logical_expr::TableSource) -> bool {
    system_table(source).is_some_and(|t| t.name == "users")
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn schema_of(name: &str) -> SchemaRef {
    let f = |n: &str, t: DataType, nullable: bool| Field::new(n, t, nullable);
    use DataType::{UInt32, UInt64, Utf8};
    Arc::new(Schema::new(match name {
        "topics" => vec![
            f("topic_id", UInt64, false),
            f("name", Utf8, false),
            f("alias", Utf8, true),
            f("partitions", UInt32, false),
            f("retention_seconds", UInt64, true),
            f("retention_max_bytes", UInt64, true),
            f("routes", Utf8, false),
            f("broken_routes", Utf8, true),
            f("created_at", ts(), false),
            f("updated_at", ts(), false),
        ],
        "topic_partitions" => vec![
            f("topic_id", UInt64, false),
            f("partition_id", UInt32, false),
            f("earliest_offset", UInt64, false),
            f("next_offset", UInt64, false),
            f("message_count", UInt64, false),
            f("bytes", UInt64, false),
        ],
        "topic_offsets" => vec![
            f("topic_id", UInt64, false),
            f("group_id", Utf8, false),
            f("partition_id", UInt32, false),
            f("last_acked_offset", UInt64, true),
            f("position", UInt64, false),
            f("acked_above", UInt64, false),
            f("next_offset", UInt64, false),
            f("lag", UInt64, false),
            f("updated_at", ts(), false),
        ],
        "topic_claims" => vec![
            f("topic_id", UInt64, false),
            f("group_id", Utf8, false),
            f("partition_id", UInt32, false),
            f("offset", UInt64, false),
            f("deadline", ts(), false),
            f("delivery_count", UInt32, false),
        ],
        "users" => vec![f("name", Utf8, false), f("role", Utf8, false), f("created_at", ts(), false)],
        "cluster" => vec![
            f("node_id", UInt64, false),
            f("role", Utf8, false),
            f("term", UInt64, false),
            f("last_log_index", UInt64, true),
            f("last_applied_index", UInt64, true),
            f("raft_address", Utf8, false),
            f("http_address", Utf8, false),
            f("pg_address", Utf8, false),
        ],
        "live_queries" => vec![
            f("id", UInt64, false),
            f("user", Utf8, false),
            f("sql", Utf8, false),
            f("position", UInt64, false),
            f("delivered", UInt64, false),
        ],
        "jobs" => vec![
            f("job_id", UInt64, false),
            f("kind", Utf8, false),
            f("topic", Utf8, false),
            f("messages_deleted", UInt64, false),
            f("bytes_freed", UInt64, false),
            f("started_at", ts(), false),
            f("duration_ms", UInt64, false),
            f("error", Utf8, true),
        ],
        _ => vec![
            f("schema", Utf8, false),
            f("name", Utf8, false),
            f("columns", Utf8, false),
            f("primary_key", Utf8, true),
            f("created_at", ts(), false),
        ],
    }))
}

impl SystemTable {
    fn batch(&self, schema: SchemaRef) -> Result<RecordBatch> {
        let core = &self.core;
        let columns: Vec<ArrayRef> = match self.name.as_str() {
            "topics" => {
                let st = core.catalog.read();
                let t: Vec<_> = st.topics.values().map(|t| &t.meta).collect();
                vec![
                    Arc::new(UInt64Array::from_iter_values(t.iter().map(|m| m.id))),
                    Arc::new(StringArray::from_iter_values(t.iter().map(|m| m.qualified_name()))),
                    Arc::new(StringArray::from_iter(t.iter().map(|m| m.alias.clone()))),
                    Arc::new(UInt32Array::from_iter_values(t.iter().map(|m| m.partitions))),
                    Arc::new(UInt64Array::from_iter(t.iter().map(|m| m.retention_seconds))),
                    Arc::new(UInt64Array::from_iter(t.iter().map(|m| m.retention_max_bytes))),
                    Arc::new(StringArray::from_iter_values(
                        t.iter().map(|m| serde_json::to_string(&m.routes).expect("routes serialize")),
                    )),
                    Arc::new(StringArray::from_iter(st.topics.values().map(|t| {
                        let broken: Vec<String> = t
                            .routes
                            .iter()
                            .filter_map(|r| {
                                r.broken.as_ref().map(|why| format!("{} ON {}: {why}", r.meta.table, r.meta.op))
                            })
                            .collect();
                        (!broken.is_empty()).then(|| broken.join("; "))
                    }))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(t.iter().map(|m| m.created_at_ms))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(t.iter().map(|m| m.updated_at_ms))),
                ]
            }
            "jobs" => {
                let jobs = core.jobs.recent();
                vec![
                    Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.job_id))),
                    Arc::new(StringArray::from_iter_values(jobs.iter().map(|j| j.kind.as_str()))),
                    Arc::new(StringArray::from_iter_values(jobs.iter().map(|j| j.topic.as_str()))),
                    Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.messages_deleted))),
                    Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.bytes_freed))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(jobs.iter().map(|j| j.started_at_ms))),
                    Arc::new(UInt64Array::from_iter_values(jobs.iter().map(|j| j.duration_ms))),
                    Arc::new(StringArray::from_iter(jobs.iter().map(|j| j.error.as_deref()))),
                ]
            }
            "topic_partitions" => {
                let ids: Vec<(u64, u32)> = core
                    .catalog
                    .read()
                    .topics
                    .values()
                    .flat_map(|t| (0..t.meta.partitions).map(move |p| (t.meta.id, p)))
                    .collect();
                let states: Vec<_> =
                    ids.iter().map(|&(t, p)| core.store.partition_state(t, p).unwrap_or_default()).collect();
                vec![
                    Arc::new(UInt64Array::from_iter_values(ids.iter().map(|i| i.0))),
                    Arc::new(UInt32Array::from_iter_values(ids.iter().map(|i| i.1))),
                    Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.log_start))),
                    Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.next_offset))),
                    Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.message_count()))),
                    Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.bytes))),
                ]
            }
            "topic_offsets" => {
                let rows = core.groups.positions(core)?;
                vec![
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.topic_id))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.group.as_str()))),
                    Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.partition))),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.position.checked_sub(1)))),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.position))),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.acked_above))),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.next_offset))),
                    Arc::new(UInt64Array::from_iter_values(
                        rows.iter().map(|r| r.next_offset.saturating_sub(r.position).saturating_sub(r.acked_above)),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.updated_at_ms))),
                ]
            }
            "topic_claims" => {
                let rows = core.groups.claims(&core.store);
                vec![
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.topic_id))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.group.as_str()))),
                    Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.partition))),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.offset))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.deadline_ms))),
                    Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.deliveries))),
                ]
            }
            "live_queries" => {
                let mut queries = core.live.list();
                if let Some(user) = &self.only_user {
                    queries.retain(|q| &q.user == user);
                }
                vec![
                    Arc::new(UInt64Array::from_iter_values(queries.iter().map(|q| q.id))),
                    Arc::new(StringArray::from_iter_values(queries.iter().map(|q| q.user.as_str()))),
                    Arc::new(StringArray::from_iter_values(queries.iter().map(|q| q.sql.as_str()))),
                    Arc::new(UInt64Array::from_iter_values(queries.iter().map(|q| q.position))),
                    Arc::new(UInt64Array::from_iter_values(queries.iter().map(|q| q.delivered))),
                ]
            }
            "cluster" => {
                // Empty on a server without `[cluster]`.
                let nodes = core.cluster.get().map(|c| c.nodes()).unwrap_or_default();
                vec![
                    Arc::new(UInt64Array::from_iter_values(nodes.iter().map(|n| n.node_id))),
                    Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.role.as_str()))),
                    Arc::new(UInt64Array::from_iter_values(nodes.iter().map(|n| n.term))),
                    Arc::new(UInt64Array::from_iter(nodes.iter().map(|n| n.last_log_index))),
                    Arc::new(UInt64Array::from_iter(nodes.iter().map(|n| n.last_applied_index))),
                    Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.raft_address.as_str()))),
                    Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.http_address.as_str()))),
                    Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| n.pg_address.as_str()))),
                ]
            }
            "users" => {
                // Never the password hash.
                let users = core.users.list();
                vec![
                    Arc::new(StringArray::from_iter_values(users.iter().map(|u| u.name.as_str()))),
                    Arc::new(StringArray::from_iter_values(users.iter().map(|u| u.role.as_str()))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(users.iter().map(|u| u.created_at_ms))),
                ]
            }
            _ => {
                let st = core.catalog.read();
                let t: Vec<_> = st.tables.values().map(|t| &t.meta).collect();
                let describe = |m: &crate::catalog::TableMeta| {
                    m.columns
                        .iter()
                        .map(|c| {
                            format!(
                                "{} {}{}",
                                c.name,
                                c.data_type.sql_name(),
                                if c.nullable { "" } else { " NOT NULL" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    Arc::new(StringArray::from_iter_values(t.iter().map(|m| m.schema.as_str()))),
                    Arc::new(StringArray::from_iter_values(t.iter().map(|m| m.name.as_str()))),
                    Arc::new(StringArray::from_iter_values(t.iter().map(|m| describe(m)))),
                    Arc::new(StringArray::from_iter(t.iter().map(|m| {
                        (!m.primary_key.is_empty()).then(|| {
                            m.primary_key.iter().map(|&i| m.columns[i].name.as_str()).collect::<Vec<_>>().join(", ")
                        })
                    }))),
                    Arc::new(TimestampMillisecondArray::from_iter_values(t.iter().map(|m| m.created_at_ms))),
                ]
            }
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        schema_of(&self.name)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let batch = self.batch(Arc::clone(&schema))?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, projection.cloned())?;
        Ok(exec)
    }
}
