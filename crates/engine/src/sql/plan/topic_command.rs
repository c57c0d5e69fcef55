//! `TopicCommandNode`: every topic statement as a logical plan node. It carries the parsed
//! statement and its real output schema (the messages for CONSUME, one `status` row otherwise);
//! the planner turns it into a `TopicCommandExec`, which does the work in `execute`. Only
//! `EXPLAIN` and the PostgreSQL protocol's describe plan them: `Database` runs them directly.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DFSchemaRef, Result, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use topicfusion_dialect::TopicStatement;

pub const TOPIC_COMMAND_NODE: &str = "TopicCommand";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicCommandNode {
    pub statement: TopicStatement,
    schema: DFSchemaRef,
}

impl TopicCommandNode {
    pub fn new(statement: TopicStatement) -> Result<Self> {
        let schema = Arc::new(DFSchema::try_from(output_schema(&statement).as_ref().clone())?);
        Ok(Self { statement, schema })
    }
}

/// The columns CONSUME returns.
pub fn message_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic_id", DataType::UInt64, false),
        Field::new("partition_id", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("source_table", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

pub fn output_schema(statement: &TopicStatement) -> SchemaRef {
    match statement {
        TopicStatement::Consume(_) => message_schema(),
        _ => Arc::new(Schema::new(vec![Field::new("status", DataType::Utf8, false)])),
    }
}

impl PartialOrd for TopicCommandNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.statement.partial_cmp(&other.statement)
    }
}

impl UserDefinedLogicalNodeCore for TopicCommandNode {
    fn name(&self) -> &str {
        TOPIC_COMMAND_NODE
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{TOPIC_COMMAND_NODE}: {}", self.statement)
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        if !exprs.is_empty() || !inputs.is_empty() {
            return plan_err!("{TOPIC_COMMAND_NODE} takes no expressions or inputs");
        }
        Ok(self.clone())
    }
}
