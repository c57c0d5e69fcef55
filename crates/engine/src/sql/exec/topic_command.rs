//! Topic statements' work: [`run_statement`] runs one and returns its result (the messages for
//! CONSUME, a status row otherwise). `Database` calls it directly; `TopicCommandExec`, the
//! operator `EXPLAIN` shows, calls it in `execute` (never while planning, so EXPLAIN changes
//! nothing).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err, plan_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use topicfusion_dialect::{AckTarget, Consume, TopicStatement};
use topicfusion_storage::Message;

use crate::core::Core;
use crate::sql::plan::topic_command::output_schema;
use crate::topics::ddl::{self, find_topic};
use crate::topics::groups::{ConsumeRequest, DEFAULT_CONSUME_LIMIT, check_partition};

#[derive(Debug)]
pub struct TopicCommandExec {
    core: Arc<Core>,
    statement: TopicStatement,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TopicCommandExec {
    pub fn new(core: Arc<Core>, statement: TopicStatement) -> Self {
        let schema = output_schema(&statement);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self { core, statement, schema, properties }
    }
}

impl DisplayAs for TopicCommandExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TopicCommandExec: {}", self.statement)
    }
}

impl ExecutionPlan for TopicCommandExec {
    fn name(&self) -> &str {
        "TopicCommandExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() { Ok(self) } else { internal_err!("TopicCommandExec has no children") }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("TopicCommandExec has one partition, asked for {partition}");
        }
        let (core, statement, schema) = (Arc::clone(&self.core), self.statement.clone(), Arc::clone(&self.schema));
        let out_schema = Arc::clone(&schema);
        let fut = async move { run_statement(&core, &statement, out_schema).await };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(fut))))
    }
}

/// Runs a topic statement (any but SHOW TOPICS, which is a query of `system.topics`) and returns
/// its one result batch in `schema` (its `output_schema`): the messages for CONSUME, a status row
/// otherwise. The one place their work is done: `TopicCommandExec` calls it, and so does
/// `Database`, which runs topic statements without DataFusion's planning (that only adds CPU to
/// every ACK and CONSUME; EXPLAIN still plans them).
pub async fn run_statement(core: &Core, statement: &TopicStatement, schema: SchemaRef) -> Result<RecordBatch> {
    if let TopicStatement::Consume(c) = statement {
        let messages = consume(core, c).await?;
        return messages_batch(schema, &messages);
    }
    let status = run(core, statement).await?;
    Ok(RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![status]))])?)
}

async fn run(core: &Core, statement: &TopicStatement) -> Result<String> {
    match statement {
        TopicStatement::CreateTopic(s) => ddl::create_topic(core, s).await,
        TopicStatement::DropTopic(s) => ddl::drop_topic(core, s).await,
        TopicStatement::ClearTopic(s) => ddl::clear_topic(core, s).await,
        TopicStatement::AlterTopic(s) => ddl::alter_topic(core, s).await,
        TopicStatement::Ack(s) => {
            let topic = find_topic(&core.catalog.read(), &s.topic)?;
            let partition = check_partition(&topic, s.partition)?;
            let position = core.groups.ack(&core.store, &topic, &s.group, partition, &s.target).await?;
            Ok(match (&s.target, position) {
                (AckTarget::Offsets(list), 0) => {
                    format!(
                        "group '{}' acknowledged {} offset(s); nothing acknowledged in order yet",
                        s.group,
                        list.len()
                    )
                }
                (AckTarget::Offsets(list), p) => format!(
                    "group '{}' acknowledged {} offset(s); everything up to offset {} is acknowledged",
                    s.group,
                    list.len(),
                    p - 1
                ),
                (AckTarget::Upto(_), p) => {
                    format!("group '{}' acknowledged up to offset {}", s.group, p.saturating_sub(1))
                }
            })
        }
        TopicStatement::ResetConsumerGroup(s) => {
            let topic = find_topic(&core.catalog.read(), &s.topic)?;
            let partition = check_partition(&topic, s.partition)?;
            core.groups.reset(&core.store, &topic, &s.group, partition, &s.to)?;
            Ok(format!("reset group '{}' on topic {} to {}", s.group, topic.meta.qualified_name(), s.to))
        }
        TopicStatement::DropConsumerGroup(s) => {
            let topic = find_topic(&core.catalog.read(), &s.topic)?;
            core.groups.drop_group(&core.store, &topic, &s.group)?;
            Ok(format!("dropped group '{}' on topic {}", s.group, topic.meta.qualified_name()))
        }
        TopicStatement::RunRetention(s) => {
            let only = match &s.topic {
                Some(name) => Some(find_topic(&core.catalog.read(), name)?.meta.id),
                None => None,
            };
            let records = crate::core::blocking(|| crate::topics::retention::run(core, only));
            if let Some(failed) = records.iter().find(|r| r.error.is_some()) {
                return datafusion::common::exec_err!(
                    "retention of topic {} failed: {}",
                    failed.topic,
                    failed.error.as_deref().unwrap_or_default()
                );
            }
            let deleted: u64 = records.iter().map(|r| r.messages_deleted).sum();
            let freed: u64 = records.iter().map(|r| r.bytes_freed).sum();
            Ok(format!("retention ran on {} topic(s): deleted {deleted} messages, freed {freed} bytes", records.len()))
        }
        TopicStatement::Consume(_) | TopicStatement::ShowTopics => {
            plan_err!("{statement} is planned as a query")
        }
    }
}

async fn consume(core: &Core, c: &Consume) -> Result<Vec<Message>> {
    let topic = find_topic(&core.catalog.read(), &c.topic)?;
    let req = ConsumeRequest {
        group: c.group.clone(),
        partition: check_partition(&topic, c.partition)?,
        start: c.start.clone(),
        limit: c.limit.unwrap_or(DEFAULT_CONSUME_LIMIT),
        timeout_ms: c.timeout_ms().unwrap_or(0),
        visibility_timeout_ms: c.visibility_timeout_ms(),
        max_deliveries: c.max_deliveries(),
        dead_letter_topic: c.dead_letter_topic().map(str::to_owned),
        max_bytes: c.max_bytes(),
    };
    core.groups.consume(core, &topic, &req).await
}

/// The CONSUME result rows.
pub fn messages_batch(schema: SchemaRef, messages: &[Message]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(messages.iter().map(|m| m.topic_id))),
        Arc::new(UInt32Array::from_iter_values(messages.iter().map(|m| m.partition))),
        Arc::new(UInt64Array::from_iter_values(messages.iter().map(|m| m.offset))),
        Arc::new(Int64Array::from_iter_values(messages.iter().map(|m| m.timestamp_ms))),
        Arc::new(StringArray::from_iter_values(messages.iter().map(|m| m.op.as_str()))),
        Arc::new(StringArray::from_iter_values(messages.iter().map(|m| m.source_table.as_str()))),
        Arc::new(StringArray::from_iter_values(messages.iter().map(|m| m.key.as_str()))),
        Arc::new(StringArray::from_iter_values(messages.iter().map(|m| m.payload.as_str()))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
