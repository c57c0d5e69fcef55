//! `TableWriteNode`: INSERT, UPDATE and DELETE on a durable table, and the analyzer rule that
//! rewrites DataFusion's `LogicalPlan::Dml` into it.
//!
//! DataFusion 55 hands `delete_from`/`update` only the pushed-down filters (none at all when the
//! WHERE holds a subquery) and no before-images. Instead, the node's input is a real query:
//! for DELETE the rows to delete, for UPDATE the new values next to the old row, both with the
//! row's storage key, so the optimizer handles any WHERE and change capture sees both images.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::catalog::default_table_source::{provider_as_source, source_as_provider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DFSchemaRef, Result, config::ConfigOptions, not_impl_err, plan_err};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    DmlStatement, Expr, Extension, LogicalPlan, Projection, TableScan, TableScanBuilder, UserDefinedLogicalNodeCore,
    Values, WriteOp,
};
use datafusion::optimizer::AnalyzerRule;
use topicfusion_storage::ChangeOp;

use crate::sql::plan::checked_arithmetic::checked;
use crate::sql::provider::table::{KEY_COLUMN, UserTable};

pub const TABLE_WRITE_NODE: &str = "TableWrite";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableWriteNode {
    /// `schema.table`
    pub table: String,
    pub table_id: u64,
    pub op: ChangeOp,
    pub input: LogicalPlan,
    schema: DFSchemaRef,
}

impl PartialOrd for TableWriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (&self.table, self.op).partial_cmp(&(&other.table, other.op))
    }
}

impl UserDefinedLogicalNodeCore for TableWriteNode {
    fn name(&self) -> &str {
        TABLE_WRITE_NODE
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{TABLE_WRITE_NODE}: op={}, table={}", self.op.as_str(), self.table)
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        if !exprs.is_empty() || inputs.len() != 1 {
            return plan_err!("{TABLE_WRITE_NODE} takes no expressions and one input");
        }
        Ok(Self { input: inputs.remove(0), ..self.clone() })
    }
}

/// Rewrites every `LogicalPlan::Dml` on a durable table into a [`TableWriteNode`].
#[derive(Debug, Default)]
pub struct TableWriteRule;

impl AnalyzerRule for TableWriteRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_down(|plan| match plan {
            LogicalPlan::Dml(dml) => match user_table(&dml) {
                Some(table) => Ok(Transformed::yes(rewrite(dml, table)?)),
                None => Ok(Transformed::no(LogicalPlan::Dml(dml))),
            },
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "topicfusion_table_write"
    }
}

/// The input of an INSERT with checked integer arithmetic everywhere. Its root produces the
/// table's columns in order, so the root's expressions (and the VALUES columns they pass
/// through) are named by the column they fill.
fn checked_insert_input(input: LogicalPlan, columns: &[crate::catalog::types::ColumnMeta]) -> Result<LogicalPlan> {
    // VALUES column index -> table column, through a root projection of plain column references.
    let mut values_targets: Vec<Option<String>> = Vec::new();
    if let LogicalPlan::Projection(p) = &input
        && let LogicalPlan::Values(v) = p.input.as_ref()
    {
        values_targets = vec![None; v.schema.fields().len()];
        for (i, e) in p.expr.iter().enumerate() {
            let refs = e.column_refs();
            if let (Some(c), 1) = (refs.iter().next(), refs.len())
                && let Ok(j) = v.schema.index_of_column(c)
                && let Some(meta) = columns.get(i)
            {
                values_targets[j] = Some(meta.name.clone());
            }
        }
    } else if let LogicalPlan::Values(v) = &input {
        values_targets = columns.iter().take(v.schema.fields().len()).map(|c| Some(c.name.clone())).collect();
    }
    let root = input.schema().clone();
    input
        .transform_up(|plan| {
            let is_root = plan.schema() == &root;
            let schema = match plan.inputs().first() {
                Some(i) => i.schema().as_ref().clone(),
                None => DFSchema::empty(),
            };
            match plan {
                LogicalPlan::Values(v) => {
                    let values = v
                        .values
                        .into_iter()
                        .map(|row| {
                            row.into_iter()
                                .enumerate()
                                .map(|(j, e)| checked(e, &schema, values_targets.get(j).and_then(|t| t.as_deref())))
                                .collect::<Result<Vec<_>>>()
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Transformed::yes(LogicalPlan::Values(Values { schema: v.schema, values })))
                }
                LogicalPlan::Projection(p) if is_root => {
                    let exprs = p
                        .expr
                        .iter()
                        .enumerate()
                        .map(|(i, e)| checked(e.clone(), &schema, columns.get(i).map(|c| c.name.as_str())))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new_with_schema(
                        exprs, p.input, p.schema,
                    )?)))
                }
                other => other.map_expressions(|e| Ok(Transformed::yes(checked(e, &schema, None)?))),
            }
        })
        .map(|t| t.data)
}

/// DataFusion types the VALUES of an INSERT with the table's nullability, so a NULL in a
/// NOT NULL column fails inside Arrow naming `column1`. VALUES become nullable here and the
/// writer's NOT NULL check reports the table's column instead.
fn nullable_values(input: LogicalPlan) -> Result<LogicalPlan> {
    input
        .transform_up(|plan| match plan {
            LogicalPlan::Values(v) if v.schema.fields().iter().any(|f| !f.is_nullable()) => {
                let fields: Vec<_> = v.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
                let schema = DFSchema::from_unqualified_fields(fields.into(), v.schema.metadata().clone())?;
                Ok(Transformed::yes(LogicalPlan::Values(Values { schema: Arc::new(schema), values: v.values })))
            }
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })
        .map(|t| t.data)
}

fn user_table(dml: &DmlStatement) -> Option<Arc<UserTable>> {
    let provider = source_as_provider(&dml.target).ok()?;
    provider.downcast_ref::<UserTable>()?;
    let table = provider.downcast_ref::<UserTable>().expect("checked");
    Some(Arc::new(UserTable::new(Arc::clone(&table.table), table.store(), true)))
}

fn rewrite(dml: DmlStatement, keyed: Arc<UserTable>) -> Result<LogicalPlan> {
    let meta = &keyed.table.meta;
    let n = meta.columns.len();
    let (op, input) = match &dml.op {
        WriteOp::Insert(InsertOp::Append) => {
            let input = nullable_values(dml.input.as_ref().clone())?;
            (ChangeOp::Insert, checked_insert_input(input, &meta.columns)?)
        }
        WriteOp::Delete => {
            let source = with_keyed_scan(dml.input.as_ref().clone(), meta.id, &keyed)?;
            let exprs = leading_columns(&source, n + 1, |_| None);
            (ChangeOp::Delete, LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(source))?))
        }
        WriteOp::Update => {
            let LogicalPlan::Projection(p) = dml.input.as_ref() else {
                return plan_err!("unexpected UPDATE plan shape");
            };
            let source = with_keyed_scan(p.input.as_ref().clone(), meta.id, &keyed)?;
            // SET expressions (the first n) with checked integer arithmetic, named by column.
            let mut exprs = p
                .expr
                .iter()
                .enumerate()
                .map(|(i, e)| match meta.columns.get(i) {
                    Some(c) => checked(e.clone(), p.input.schema(), Some(&c.name)),
                    None => Ok(e.clone()),
                })
                .collect::<Result<Vec<_>>>()?;
            exprs.extend(leading_columns(&source, n + 1, |i| Some(format!("__old_{i}"))));
            (ChangeOp::Update, LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(source))?))
        }
        other => return not_impl_err!("{other} is not supported on table {}", meta.qualified_name()),
    };
    let node = TableWriteNode {
        table: meta.qualified_name(),
        table_id: meta.id,
        op,
        input,
        schema: Arc::clone(&dml.output_schema),
    };
    Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) }))
}

/// The first `count` columns of `plan`'s output (the target table's columns and key come first:
/// the target is the leftmost scan), optionally aliased.
fn leading_columns(plan: &LogicalPlan, count: usize, alias: impl Fn(usize) -> Option<String>) -> Vec<Expr> {
    plan.schema()
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, (q, f))| {
            let col = Expr::Column(Column::from((q, f)));
            match alias(i) {
                Some(a) if f.name() != KEY_COLUMN => col.alias(a),
                _ => col,
            }
        })
        .collect()
}

/// Replaces the leftmost scan of the target table with a keyed scan and recomputes the schemas
/// above it. Scans inside subqueries are expressions, not inputs, and stay as they are.
fn with_keyed_scan(plan: LogicalPlan, table_id: u64, keyed: &Arc<UserTable>) -> Result<LogicalPlan> {
    let mut replaced = false;
    let t = plan.transform_up(|plan| {
        if replaced {
            return Ok(Transformed::yes(plan.recompute_schema()?));
        }
        match plan {
            LogicalPlan::TableScan(scan) if scans_table(&scan, table_id) => {
                replaced = true;
                let scan = TableScanBuilder::new(scan.table_name.clone(), provider_as_source(Arc::clone(keyed) as _))
                    .build()?;
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        }
    })?;
    if !replaced {
        return plan_err!("could not find the scan of the target table");
    }
    Ok(t.data)
}

fn scans_table(scan: &TableScan, table_id: u64) -> bool {
    source_as_provider(&scan.source)
        .ok()
        .and_then(|p| p.downcast_ref::<UserTable>().map(|t| t.table.meta.id == table_id))
        .unwrap_or(false)
}
