//! What a live query is: `SELECT <columns | *> FROM <table> [WHERE <filter>]` checked against
//! the catalog and compiled once: the projection as column indexes, the filter as a physical
//! expression (compiled exactly as a topic route's, [`compile_filter`]), and, when the filter
//! requires `column = literal`, that equality, by which the dispatcher indexes subscriptions.

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result, plan_err};
use datafusion::physical_expr::PhysicalExpr;
use topicfusion_dialect::sqlparser::ast::{
    BinaryOperator, Expr, Query, SelectItem, SetExpr, TableFactor, Value as SqlValue,
};
use topicfusion_storage::Value;
use topicfusion_storage::codec::encode_key_value;

use crate::auth::{Action, Principal, authorize};
use crate::catalog::routes::{check_evaluates, compile_filter};
use crate::catalog::types::ColumnType;
use crate::catalog::{SYSTEM_SCHEMA, Table};
use crate::core::{Core, resolve_name};

/// A live query compiled against its table.
#[derive(Clone)]
pub(crate) struct LiveQuery {
    pub table: Arc<Table>,
    /// The selected columns, in order.
    pub projection: Vec<usize>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub equality: Option<Equality>,
}

/// `column = literal`, required by a live query's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Equality {
    pub column: usize,
    /// The literal as the column's key encoding (as a row's value at `column` encodes).
    pub key: Vec<u8>,
    /// The whole filter is this equality: a row matches exactly when its value's key is `key`.
    pub exact: bool,
}

impl LiveQuery {
    /// Checks and compiles `query` for `principal`, who needs the right to read the table.
    pub fn compile(core: &Core, principal: &Principal, query: &Query) -> Result<Self> {
        let shape = "a live query is SELECT <columns or *> FROM <table> [WHERE <filter>]";
        let SetExpr::Select(select) = query.body.as_ref() else {
            return plan_err!("{shape}");
        };
        let [from] = select.from.as_slice() else {
            return plan_err!("{shape}: it reads exactly one table");
        };
        let TableFactor::Table { name, alias: None, args: None, .. } = &from.relation else {
            return plan_err!("{shape}: FROM names one table, without an alias");
        };
        if !from.joins.is_empty() {
            return plan_err!("{shape}: joins are not supported");
        }
        // Anything else a SELECT can hold (DISTINCT, GROUP BY, ORDER BY, LIMIT, WITH, ...) makes
        // the query print differently from its plain form.
        let projection_text: Vec<String> = select.projection.iter().map(ToString::to_string).collect();
        let plain = format!(
            "SELECT {} FROM {from}{}",
            projection_text.join(", "),
            select.selection.as_ref().map(|w| format!(" WHERE {w}")).unwrap_or_default()
        );
        if query.to_string() != plain {
            return plan_err!(
                "{shape}: DISTINCT, GROUP BY, HAVING, ORDER BY, LIMIT, WITH and the like are not supported"
            );
        }
        let (schema, table_name) = resolve_name(name)?;
        if schema == SYSTEM_SCHEMA {
            if table_name == "users" {
                authorize(principal, Action::ReadUsers, false).map_err(|e| DataFusionError::External(Box::new(e)))?;
            }
            return plan_err!("live queries watch tables; {schema}.{table_name} is a system table");
        }
        authorize(principal, Action::ReadWrite, false).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(table) = core.catalog.read().table(&schema, &table_name).cloned() else {
            return plan_err!("table {schema}.{table_name} does not exist");
        };
        let columns = &table.meta.columns;
        let column = |ident: &topicfusion_dialect::sqlparser::ast::Ident| -> Result<usize> {
            let wanted = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
            match columns.iter().position(|c| c.name == wanted) {
                Some(i) => Ok(i),
                None => plan_err!("column {wanted} does not exist in table {schema}.{table_name}"),
            }
        };
        let mut projection = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(options) if options.to_string().is_empty() => projection.extend(0..columns.len()),
                SelectItem::UnnamedExpr(Expr::Identifier(ident)) => projection.push(column(ident)?),
                other => {
                    return plan_err!("{shape}: select columns by name or *, not {other}");
                }
            }
        }
        let (filter, equality) = match &select.selection {
            None => (None, None),
            Some(expr) => {
                let what = "the WHERE of a live query";
                let filter = compile_filter(&core.expr_ctx, &expr.to_string(), &table, what)?;
                check_evaluates(filter.as_ref(), &table, what)?;
                (Some(filter), equality_of(expr, &table, &column))
            }
        };
        Ok(Self { table, projection, filter, equality })
    }
}

/// The first conjunct of `filter` of the form `column = literal` (or `literal = column`) that
/// can be compared by key: an integer literal on an integer column, a string on a TEXT column.
/// Other filters are evaluated on every change of the table.
fn equality_of(
    filter: &Expr,
    table: &Table,
    column: &dyn Fn(&topicfusion_dialect::sqlparser::ast::Ident) -> Result<usize>,
) -> Option<Equality> {
    let mut conjuncts = Vec::new();
    let mut stack = vec![filter];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(inner) => stack.push(inner),
            Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
                stack.push(right);
                stack.push(left);
            }
            other => conjuncts.push(other),
        }
    }
    let exact = conjuncts.len() == 1;
    conjuncts.into_iter().find_map(|c| {
        let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = c else { return None };
        let (ident, literal) = match (left.as_ref(), right.as_ref()) {
            (Expr::Identifier(i), Expr::Value(v)) | (Expr::Value(v), Expr::Identifier(i)) => (i, &v.value),
            _ => return None,
        };
        let index = column(ident).ok()?;
        let value = match (table.meta.columns[index].data_type, literal) {
            (ColumnType::SmallInt, SqlValue::Number(n, _)) => Value::Int16(n.parse().ok()?),
            (ColumnType::Int, SqlValue::Number(n, _)) => Value::Int32(n.parse().ok()?),
            (ColumnType::BigInt, SqlValue::Number(n, _)) => Value::Int64(n.parse().ok()?),
            (ColumnType::Text, SqlValue::SingleQuotedString(s)) => Value::Utf8(s.clone()),
            _ => return None,
        };
        let mut key = Vec::new();
        encode_key_value(&value, &mut key).ok()?;
        Some(Equality { column: index, key, exact })
    })
}
