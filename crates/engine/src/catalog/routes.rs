//! Topic routes as the catalog holds them: a stored route ([`RouteMeta`]) with its WHERE filter
//! and PARTITION BY expression compiled once into DataFusion physical expressions against the
//! source table's schema. Evaluating them on row changes is the router's
//! ([`crate::topics::cdc::router`]).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::{DFSchema, Result, exec_err, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::physical_expr::PhysicalExpr;
use topicfusion_dialect::PayloadMode;
use topicfusion_storage::ChangeOp;

use super::{RouteMeta, Table};

/// A route with its expressions compiled against the source table's schema.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub meta: RouteMeta,
    pub op: ChangeOp,
    pub payload: PayloadMode,
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
    pub(crate) partition_by: Option<Arc<dyn PhysicalExpr>>,
    /// Why the stored route no longer compiles (found at open). Writes to its table fail until
    /// the route is dropped: a change is never committed without its messages.
    pub broken: Option<String>,
}

impl CompiledRoute {
    /// A stored route that does not compile any more.
    pub fn broken(meta: RouteMeta, error: &datafusion::error::DataFusionError) -> Self {
        let op = parse_op(&meta.op).unwrap_or(ChangeOp::Insert);
        let payload = parse_payload(&meta.payload).unwrap_or(PayloadMode::Key);
        let reason = crate::error::one_line(&error.to_string(), 500);
        Self { meta, op, payload, filter: None, partition_by: None, broken: Some(reason) }
    }
}

fn parse_payload(s: &str) -> Result<PayloadMode> {
    Ok(match s {
        "key" => PayloadMode::Key,
        "full" => PayloadMode::Full,
        "diff" => PayloadMode::Diff,
        other => return exec_err!("unknown payload mode {other} in the catalog"),
    })
}

fn parse_op(s: &str) -> Result<ChangeOp> {
    Ok(match s {
        "insert" => ChangeOp::Insert,
        "update" => ChangeOp::Update,
        "delete" => ChangeOp::Delete,
        other => return exec_err!("unknown operation {other} in the catalog"),
    })
}

/// Compiles a route's filter and partitioning expression with DataFusion's expression planner;
/// fails if they do not type-check against the table (the filter must be boolean).
pub fn compile_route(ctx: &SessionContext, meta: RouteMeta, table: &Table) -> Result<CompiledRoute> {
    let filter =
        meta.filter.as_deref().map(|f| compile_filter(ctx, f, table, "the WHERE of a topic source")).transpose()?;
    let partition_by = meta.partition_by.as_deref().map(|e| compile_expr(ctx, e, table)).transpose()?;
    Ok(CompiledRoute {
        op: parse_op(&meta.op)?,
        payload: parse_payload(&meta.payload)?,
        filter,
        partition_by,
        meta,
        broken: None,
    })
}

/// Compiles a row filter (SQL text) against `table`'s columns: the one way route filters and
/// live-query filters ([`crate::live`]) become physical expressions, evaluated on Arrow batches
/// of changed rows. `what` names the filter in the error when it is not boolean.
pub fn compile_filter(ctx: &SessionContext, text: &str, table: &Table, what: &str) -> Result<Arc<dyn PhysicalExpr>> {
    let filter = compile_expr(ctx, text, table)?;
    let dt = filter.data_type(&table.schema)?;
    if dt != datafusion::arrow::datatypes::DataType::Boolean {
        return plan_err!("{what} must be a boolean expression, found {dt}");
    }
    Ok(filter)
}

/// Compiles an expression (SQL text) over `table`'s columns.
fn compile_expr(ctx: &SessionContext, text: &str, table: &Table) -> Result<Arc<dyn PhysicalExpr>> {
    let df_schema = DFSchema::try_from(table.schema.as_ref().clone())?;
    // A stored expression too deep to plan safely (or quickly) is refused before planning.
    topicfusion_dialect::parse_expr_checked(text)?;
    let expr = ctx.parse_sql_expr(text, &df_schema)?;
    ctx.create_physical_expr(expr, &df_schema)
}

/// Evaluates a new route's expressions on one row of NULLs, so that an expression that can
/// never evaluate (`v > 'abc'` on a BIGINT, `1/0 = 1`) is refused when the route is added
/// instead of failing every later write to the table.
pub fn validate_route(route: &CompiledRoute, table: &Table) -> Result<()> {
    for (what, expr) in [("WHERE", &route.filter), ("PARTITION BY", &route.partition_by)] {
        if let Some(e) = expr {
            check_evaluates(e.as_ref(), table, &format!("the {what} of this topic source"))?;
        }
    }
    Ok(())
}

/// Refuses an expression that fails on a row of NULLs of `table` (see [`validate_route`]).
pub fn check_evaluates(expr: &dyn PhysicalExpr, table: &Table, what: &str) -> Result<()> {
    use datafusion::arrow::array::new_null_array;
    let schema = nullable_schema(table);
    let columns = schema.fields().iter().map(|f| new_null_array(f.data_type(), 1)).collect();
    let batch = RecordBatch::try_new(schema, columns)?;
    if let Err(err) = expr.evaluate(&batch) {
        let reason = crate::error::one_line(&err.to_string(), 500);
        return plan_err!("{what} cannot be evaluated: {reason}");
    }
    Ok(())
}

/// `table`'s schema with every column nullable: for batches of row images where a missing image
/// is a row of NULLs.
pub fn nullable_schema(table: &Table) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = table.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Arc::new(Schema::new(fields))
}
