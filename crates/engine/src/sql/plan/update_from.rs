//! `UPDATE <table> SET ... FROM <tables> WHERE ...`, which DataFusion 55's SQL planner refuses.
//!
//! The statement is planned as the query `SELECT <new value of every column> FROM <table>,
//! <tables> WHERE ...` (the target first, so its scan is the leftmost), cast to the column types
//! and wrapped in DataFusion's UPDATE `Dml` node: the shape DataFusion itself produces for an
//! UPDATE, which the table write rule then turns into a keyed write. A target row matched by
//! several rows of FROM is an error of the write path (a row changes at most once).

use std::sync::Arc;

use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::{Result, not_impl_err, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{DmlStatement, ExprSchemable, LogicalPlan, Projection, WriteOp};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use topicfusion_dialect::sqlparser::ast::{
    AssignmentTarget, Expr, Ident, SelectItem, SetExpr, Statement, TableFactor, Update, UpdateTableFromKind,
};

use crate::catalog::Table;

/// Whether an UPDATE has a FROM clause (and so needs this planner).
pub fn has_from(update: &Update) -> bool {
    update.from.is_some()
}

/// Plans `UPDATE ... FROM` on the durable `table` (the statement's target).
pub async fn plan(ctx: &SessionContext, update: Update, table: &Table) -> Result<LogicalPlan> {
    if update.returning.is_some() || update.or.is_some() || update.limit.is_some() || !update.order_by.is_empty() {
        return not_impl_err!("UPDATE ... FROM with RETURNING, OR, ORDER BY or LIMIT is not supported");
    }
    if !update.table.joins.is_empty() {
        return not_impl_err!("UPDATE of a join is not supported: list the other tables in FROM");
    }
    let TableFactor::Table { name, alias, .. } = &update.table.relation else {
        return plan_err!("UPDATE needs a table");
    };
    let table_ref = object_name_to_table_reference(name.clone(), true)?;
    // How the SELECT refers to the target's columns: by its alias or its name.
    let qualifier: Vec<Ident> = match alias {
        Some(a) => vec![a.name.clone()],
        None => name.0.iter().filter_map(|p| p.as_ident().cloned()).collect(),
    };
    let mut values: Vec<Option<Expr>> = vec![None; table.meta.columns.len()];
    for a in update.assignments {
        let AssignmentTarget::ColumnName(target) = a.target else {
            return not_impl_err!("tuple assignments in UPDATE are not supported");
        };
        let Some(ident) = target.0.last().and_then(|p| p.as_ident()) else {
            return plan_err!("invalid UPDATE target {target}");
        };
        let column = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
        let Some(i) = table.meta.columns.iter().position(|c| c.name == column) else {
            return plan_err!("table {} has no column {column}", table.meta.qualified_name());
        };
        if values[i].is_some() {
            return plan_err!("column {column} is assigned more than once");
        }
        values[i] = Some(a.value);
    }
    // Each value under a name of its own: a value may be another column of the row
    // (`SET c = t.a` beside the unchanged `a`), which DataFusion would see as two `t.a`.
    let projection = table
        .meta
        .columns
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (c, v))| {
            let expr = v.unwrap_or_else(|| {
                let mut parts = qualifier.clone();
                parts.push(Ident::with_quote('"', &c.name));
                Expr::CompoundIdentifier(parts)
            });
            SelectItem::ExprWithAlias { expr, alias: Ident::with_quote('"', format!("__update_value_{i}")) }
        })
        .collect();
    let from = match update.from {
        Some(UpdateTableFromKind::AfterSet(f) | UpdateTableFromKind::BeforeSet(f)) => f,
        None => vec![],
    };
    // A template query, then its parts replaced: the target first, then FROM.
    let mut query = match topicfusion_dialect::parse_sql("SELECT 1 FROM t")?.remove(0).statement {
        topicfusion_dialect::Statement::DataFusion(s) => match *s {
            DFStatement::Statement(s) => match *s {
                Statement::Query(q) => q,
                _ => unreachable!("a SELECT"),
            },
            _ => unreachable!("a SELECT"),
        },
        _ => unreachable!("a SELECT"),
    };
    let SetExpr::Select(select) = query.body.as_mut() else { unreachable!("a SELECT") };
    select.projection = projection;
    select.from = std::iter::once(update.table).chain(from).collect();
    select.selection = update.selection;
    let statement = DFStatement::Statement(Box::new(Statement::Query(query)));
    let LogicalPlan::Projection(p) = ctx.state().statement_to_plan(statement).await? else {
        return plan_err!("unexpected plan for UPDATE ... FROM");
    };
    let exprs = p
        .expr
        .into_iter()
        .zip(table.meta.columns.iter())
        .map(|(e, c)| Ok(e.unalias().cast_to(&c.data_type.arrow(), p.input.schema())?.alias(&c.name)))
        .collect::<Result<Vec<_>>>()?;
    let source = LogicalPlan::Projection(Projection::try_new(exprs, p.input)?);
    let provider = ctx.table_provider(table_ref.clone()).await?;
    Ok(LogicalPlan::Dml(DmlStatement::new(table_ref, provider_as_source(provider), WriteOp::Update, Arc::new(source))))
}
