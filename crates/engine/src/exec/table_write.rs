//! `TableWriteExec`: runs a DML statement's input under the table's write lock and applies it
//! through the write path ([`crate::writer`]); returns one `count` row.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, collect,
};
use topicfusion_storage::ChangeOp;

use crate::catalog::{Table, storage_err};
use crate::core::Core;
use crate::writer;

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
            let (count, pending) = {
                // Topic DDL waits for running writes, so a write sees one consistent set of routes.
                let _ddl = core.ddl_lock.read().await;
                let _table = table.write_lock.lock().await;
                let current = core.catalog.read().table(&table.meta.schema, &table.meta.name).cloned();
                if !current.is_some_and(|t| Arc::ptr_eq(&t, &table)) {
                    return exec_err!("table {} was dropped", table.meta.qualified_name());
                }
                let batches = collect(input, context).await?;
                writer::apply(&core.store, &core.catalog, &table, op, &batches)?
            };
            // Durable (one fsync shared with concurrent commits in --sync mode) and visible to
            // consumers, without holding the locks and off the async workers.
            let store = Arc::clone(&core.store);
            tokio::task::spawn_blocking(move || store.finish(pending))
                .await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
                .map_err(storage_err)?;
            Ok(RecordBatch::try_new(out_schema, vec![Arc::new(UInt64Array::from(vec![count]))])?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(fut))))
    }
}
