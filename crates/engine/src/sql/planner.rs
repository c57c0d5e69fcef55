//! The query planner: DataFusion's physical planner plus one `ExtensionPlanner` that turns our
//! logical nodes into their operators (a downcast per node type, `None` for anything else).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Result, plan_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::core::Core;
use crate::sql::exec::table_write::TableWriteExec;
use crate::sql::exec::topic_command::TopicCommandExec;
use crate::sql::plan::table_write::TableWriteNode;
use crate::sql::plan::topic_command::TopicCommandNode;

#[derive(Debug)]
pub struct TopicQueryPlanner {
    core: Arc<Core>,
}

impl TopicQueryPlanner {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[async_trait]
impl QueryPlanner for TopicQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(TopicExtensionPlanner {
            core: Arc::clone(&self.core),
        })]);
        planner.create_physical_plan(logical_plan, session).await
    }
}

struct TopicExtensionPlanner {
    core: Arc<Core>,
}

#[async_trait]
impl ExtensionPlanner for TopicExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let any = node.as_any();
        if let Some(n) = any.downcast_ref::<TopicCommandNode>() {
            return Ok(Some(Arc::new(TopicCommandExec::new(Arc::clone(&self.core), n.statement.clone()))));
        }
        if let Some(n) = any.downcast_ref::<TableWriteNode>() {
            let Some(table) = self.core.catalog.read().table_by_id(n.table_id).cloned() else {
                return plan_err!("table {} does not exist", n.table);
            };
            let schema = Arc::clone(n.schema().inner());
            let exec =
                TableWriteExec::new(Arc::clone(&self.core), table, n.op, Arc::clone(&physical_inputs[0]), schema);
            return Ok(Some(Arc::new(exec)));
        }
        Ok(None)
    }
}
