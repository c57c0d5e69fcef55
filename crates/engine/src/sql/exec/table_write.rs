//! `TableWriteExec`: streams a DML statement's input (bounded by `max_statement_bytes`) into
//! row changes and applies them through the write path ([`crate::write::writer`]); returns one `count`
//! row.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, execute_stream,
};
use topicfusion_storage::ChangeOp;

use crate::catalog::Table;
use crate::core::Core;
use crate::write::writer;

#[derive(Debug)]
pub struct TableWriteExec {
    core: Arc<Core>,
    table: Arc<Table>,
    op: ChangeOp,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TableWriteExec {
    pub fn new(
        core: Arc<Core>,
        table: Arc<Table>,
        op: ChangeOp,
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self { core, table, op, input, schema, properties }
    }
}

impl DisplayAs for TableWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TableWriteExec: op={}, table={}", self.op.as_str(), self.table.meta.qualified_name())
    }
}

impl ExecutionPlan for TableWriteExec {
    fn name(&self) -> &str {
        "TableWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("TableWriteExec takes one child");
        }
        let this = Self::new(
            Arc::clone(&self.core),
            Arc::clone(&self.table),
            self.op,
            children.remove(0),
            Arc::clone(&self.schema),
        );
        Ok(Arc::new(this))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("TableWriteExec has one partition, asked for {partition}");
        }
        let (core, table, op, input, schema) = (
            Arc::clone(&self.core),
            Arc::clone(&self.table),
            self.op,
            Arc::clone(&self.input),
            Arc::clone(&self.schema),
        );
        let out_schema = Arc::clone(&schema);
        let fut = async move {
            // UPDATE and DELETE read the rows they change under the table's write lock; INSERT
            // evaluates its rows first and takes the lock only to check keys and write.
            let under_lock = op != ChangeOp::Insert;
            let read = async {
                let stream = execute_stream(input, context)?;
                writer::read_changes(stream, &table, op, core.limits.max_statement_bytes).await
            };
            let count = writer::write_statement(&core, &table, under_lock, read).await?;
            Ok(RecordBatch::try_new(out_schema, vec![Arc::new(UInt64Array::from(vec![count]))])?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(fut))))
    }
}
