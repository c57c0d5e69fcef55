//! Topic DDL: CREATE/DROP/CLEAR TOPIC and every ALTER TOPIC action. Each handler builds the new
//! catalog state on a copy, commits it with the partition changes in one write batch, and only
//! then publishes the copy. Handlers return the status text of their result row.

use std::sync::Arc;

use datafusion::common::{Result, plan_err};
use topicfusion_dialect::{AddSource, AlterTopic, AlterTopicAction, ClearTopic, CreateTopic, DropTopic, TopicOption};
use topicfusion_storage::{Commit, PartitionOp};

use crate::catalog::routes::{compile_route, validate_route};
use crate::catalog::{
    CatalogState, RouteMeta, Topic, TopicMeta, check_new_name, delete_topic, next_topic_id, now_ms, put_topic,
    require_schema, storage_err,
};
use crate::core::{Core, resolve_name};
use crate::topics::cdc::router::change_op;

/// The default retention: 7 days.
pub const DEFAULT_RETENTION_SECONDS: u64 = 7 * 24 * 3600;
/// The default size limit per partition: 1 GiB.
pub const DEFAULT_RETENTION_MAX_BYTES: u64 = 1 << 30;
/// The most partitions a topic can have.
pub const MAX_PARTITIONS: u64 = 1024;

fn check_partitions(n: u64) -> Result<u32> {
    if n > MAX_PARTITIONS {
        return plan_err!("a topic can have at most {MAX_PARTITIONS} partitions, got {n}");
    }
    Ok(n as u32)
}

/// The topic a name refers to (by name, or by alias).
pub fn find_topic(st: &CatalogState, name: &topicfusion_dialect::sqlparser::ast::ObjectName) -> Result<Arc<Topic>> {
    let (schema, topic) = resolve_name(name)?;
    match st.topic_by_name_or_alias(&schema, &topic, name.0.len() > 1) {
        Some(t) => Ok(Arc::clone(t)),
        None => plan_err!("topic {schema}.{topic} does not exist"),
    }
}

/// Topic names and aliases share one namespace: `name` must be neither.
fn check_name_free(st: &CatalogState, name: &str) -> Result<()> {
    match st.topics.values().find(|t| t.meta.name == name || t.meta.alias.as_deref() == Some(name)) {
        Some(t) => plan_err!("{name} is already the name or alias of topic {}", t.meta.qualified_name()),
        None => Ok(()),
    }
}

pub async fn create_topic(core: &Core, stmt: &CreateTopic) -> Result<String> {
    let _ddl = core.ddl_lock.write().await;
    let (schema, name) = resolve_name(&stmt.name)?;
    check_new_name("topic", Some(&schema), &name)?;
    let mut st = core.catalog.write();
    require_schema(&st, &schema)?;
    if st.topic(&schema, &name).is_some() {
        if stmt.if_not_exists {
            return Ok(format!("topic {schema}.{name} already exists, skipping"));
        }
        return plan_err!("topic {schema}.{name} already exists");
    }
    check_name_free(&st, &name)?;
    let partitions = check_partitions(stmt.partitions.unwrap_or(1))?;
    let mut meta = TopicMeta {
        id: 0,
        schema: schema.clone(),
        name: name.clone(),
        alias: None,
        partitions,
        retention_seconds: Some(DEFAULT_RETENTION_SECONDS),
        retention_max_bytes: Some(DEFAULT_RETENTION_MAX_BYTES),
        routes: Vec::new(),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
    };
    for option in &stmt.options {
        match option {
            TopicOption::RetentionSeconds(v) => meta.retention_seconds = *v,
            TopicOption::RetentionMaxBytes(v) => meta.retention_max_bytes = *v,
            TopicOption::Alias(a) => {
                check_new_name("alias", None, a)?;
                check_name_free(&st, a)?;
                if a == &name {
                    return plan_err!("alias {a} is the topic's own name");
                }
                meta.alias = Some(a.clone());
            }
        }
    }
    let mut next = st.clone();
    let mut commit = Commit::default();
    meta.id = next_topic_id(&mut commit, &mut next);
    commit.partition_ops = (0..partitions).map(|p| PartitionOp::Create { topic_id: meta.id, partition: p }).collect();
    put_topic(&mut commit, &mut next, Topic { meta, routes: Vec::new() });
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    *st = next;
    Ok(format!("created topic {schema}.{name}"))
}

pub async fn drop_topic(core: &Core, stmt: &DropTopic) -> Result<String> {
    let _ddl = core.ddl_lock.write().await;
    let mut st = core.catalog.write();
    let topic = match find_topic(&st, &stmt.name) {
        Ok(t) => t,
        Err(_) if stmt.if_exists => {
            let (s, n) = resolve_name(&stmt.name)?;
            return Ok(format!("topic {s}.{n} does not exist, skipping"));
        }
        Err(e) => return Err(e),
    };
    let mut next = st.clone();
    let mut commit = Commit::default();
    delete_topic(&mut commit, &mut next, &topic.meta);
    commit.partition_ops =
        (0..topic.meta.partitions).map(|p| PartitionOp::Drop { topic_id: topic.meta.id, partition: p }).collect();
    let forgotten = core.groups.forget_topics(&mut commit, &[topic.meta.id]);
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    forgotten.committed();
    *st = next;
    core.jobs.request_compaction(topic.meta.id, 0..topic.meta.partitions);
    Ok(format!("dropped topic {}", topic.meta.qualified_name()))
}

pub async fn clear_topic(core: &Core, stmt: &ClearTopic) -> Result<String> {
    let _ddl = core.ddl_lock.write().await;
    let st = core.catalog.write();
    let topic = find_topic(&st, &stmt.name)?;
    let partition_ops =
        (0..topic.meta.partitions).map(|p| PartitionOp::Clear { topic_id: topic.meta.id, partition: p }).collect();
    // Groups stay: their positions below the new log start count as the log start, so a group
    // goes on with the messages written after the CLEAR.
    let commit = Commit { partition_ops, ..Default::default() };
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    core.jobs.request_compaction(topic.meta.id, 0..topic.meta.partitions);
    core.groups.notify_change();
    Ok(format!("cleared topic {}", topic.meta.qualified_name()))
}

pub async fn alter_topic(core: &Core, stmt: &AlterTopic) -> Result<String> {
    let _ddl = core.ddl_lock.write().await;
    let mut st = core.catalog.write();
    let topic = find_topic(&st, &stmt.name)?;
    let mut meta = topic.meta.clone();
    let mut routes = topic.routes.clone();
    let mut commit = Commit::default();
    let status = match &stmt.action {
        AlterTopicAction::AddSource(add) => add_source(core, &st, &mut meta, &mut routes, add)?,
        AlterTopicAction::DropSource { table, op } => {
            let (schema, name) = resolve_name(table)?;
            let qualified = format!("{schema}.{name}");
            let op_name = change_op(*op).as_str();
            let before = meta.routes.len();
            meta.routes.retain(|r| !(r.table == qualified && r.op == op_name));
            routes.retain(|r| !(r.meta.table == qualified && r.meta.op == op_name));
            if meta.routes.len() == before {
                return plan_err!("topic {} has no source {qualified} ON {}", meta.qualified_name(), op.as_str());
            }
            format!("dropped source {qualified} ON {} from topic {}", op.as_str(), meta.qualified_name())
        }
        AlterTopicAction::SetRetention(options) => {
            for option in options {
                match option {
                    TopicOption::RetentionSeconds(v) => meta.retention_seconds = *v,
                    TopicOption::RetentionMaxBytes(v) => meta.retention_max_bytes = *v,
                    TopicOption::Alias(_) => return plan_err!("alias cannot be changed by SET RETENTION"),
                }
            }
            format!("set retention of topic {}", meta.qualified_name())
        }
        AlterTopicAction::ClearRetention => {
            meta.retention_seconds = None;
            meta.retention_max_bytes = None;
            format!("cleared retention of topic {}", meta.qualified_name())
        }
        AlterTopicAction::SetPartitions(n) => {
            let n = check_partitions(*n)?;
            if n <= meta.partitions {
                return plan_err!(
                    "SET PARTITIONS can only increase the partition count: topic {} has {}, asked for {n}",
                    meta.qualified_name(),
                    meta.partitions
                );
            }
            commit.partition_ops =
                (meta.partitions..n).map(|p| PartitionOp::Create { topic_id: meta.id, partition: p }).collect();
            meta.partitions = n;
            format!("topic {} now has {n} partitions", meta.qualified_name())
        }
    };
    meta.updated_at_ms = now_ms();
    let mut next = st.clone();
    put_topic(&mut commit, &mut next, Topic { meta, routes });
    crate::core::blocking(|| core.store.commit(commit)).map_err(storage_err)?;
    *st = next;
    // Long polls look again (new partitions).
    core.groups.notify_change();
    Ok(status)
}

fn add_source(
    core: &Core,
    st: &CatalogState,
    meta: &mut TopicMeta,
    routes: &mut Vec<crate::catalog::routes::CompiledRoute>,
    add: &AddSource,
) -> Result<String> {
    let (schema, name) = resolve_name(&add.table)?;
    let Some(table) = st.table(&schema, &name) else {
        return plan_err!("table {schema}.{name} does not exist");
    };
    let op = change_op(add.op);
    let qualified = table.meta.qualified_name();
    if meta.routes.iter().any(|r| r.table_id == table.meta.id && r.op == op.as_str()) {
        return plan_err!("topic {} already has a source {qualified} ON {}", meta.qualified_name(), add.op.as_str());
    }
    let route = RouteMeta {
        table_id: table.meta.id,
        table: qualified.clone(),
        op: op.as_str().to_owned(),
        payload: add.payload.unwrap_or_default().as_str().to_owned(),
        filter: add.filter.as_ref().map(ToString::to_string),
        partition_by: add.partition_by.as_ref().map(ToString::to_string),
    };
    let compiled = compile_route(&core.expr_ctx, route.clone(), table)?;
    validate_route(&compiled, table)?;
    routes.push(compiled);
    meta.routes.push(route);
    Ok(format!("added source {qualified} ON {} to topic {}", add.op.as_str(), meta.qualified_name()))
}
