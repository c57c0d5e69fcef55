//! The `pg_catalog` schema and functions psql and drivers query (datafusion-pg-catalog), and the
//! rewrite of their catalog queries into SQL DataFusion plans.

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::common::{Result, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role as PgRole};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use topicfusion_dialect::sqlparser::ast::helpers::attached_token::AttachedToken;
use topicfusion_dialect::sqlparser::ast::{self as sql, Expr};
use topicfusion_dialect::{ParsedStatement, Role, Statement};

use crate::core::Core;

/// Registers `pg_catalog` (tables built from the live catalog) and PostgreSQL's catalog
/// functions (`pg_table_is_visible`, `format_type`, ...) in the engine's session.
pub fn install_pg_catalog(ctx: &SessionContext, core: &Arc<Core>) -> Result<()> {
    datafusion_pg_catalog::setup_pg_catalog(ctx, "datafusion", CatalogRoles(Arc::clone(core))).map_err(|e| *e)
}

/// The users of the database as PostgreSQL roles (for `\du` and `pg_roles`).
#[derive(Debug, Clone)]
struct CatalogRoles(Arc<Core>);

#[async_trait]
impl PgCatalogContextProvider for CatalogRoles {
    async fn roles(&self) -> Vec<String> {
        self.0.users.list().into_iter().map(|u| u.name).collect()
    }

    async fn role(&self, name: &str) -> Option<PgRole> {
        let user = self.0.users.get(name)?;
        let role = user.role();
        Some(PgRole {
            name: user.name,
            is_superuser: role == Role::System,
            can_login: true,
            can_create_db: role >= Role::Dba,
            can_create_role: role >= Role::Dba,
            can_create_user: role >= Role::Dba,
            can_replication: false,
            grants: Vec::new(),
            inherited_roles: vec![role.as_str().to_owned()],
        })
    }
}

fn compatibility_parser() -> &'static PostgresCompatibilityParser {
    static PARSER: OnceLock<PostgresCompatibilityParser> = OnceLock::new();
    PARSER.get_or_init(PostgresCompatibilityParser::new)
}

/// Whether SQL text reads PostgreSQL's catalog (the queries psql's `\d` commands and drivers
/// send): those go through datafusion-pg-catalog's rewrites.
fn reads_pg_catalog(sql: &str) -> bool {
    sql.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(b"pg_"))
}

/// The most operators and parentheses a catalog query may have before the compatibility
/// parser sees it. That parser and its rewrites recurse over the tree without the depth limit
/// of ours, and a long `a + b + ...` or `x::int::int...` chain is as deep as it is long; psql's
/// and drivers' catalog queries have a few dozen.
const MAX_CATALOG_QUERY_NESTING_TOKENS: usize = 2000;

/// Parses a catalog query our parser refused (psql writes `OPERATOR(pg_catalog.~)` and
/// `COLLATE pg_catalog.default`), as one statement; `None` when it is not one. A query nested
/// deeper than [`topicfusion_dialect::MAX_EXPR_DEPTH`] is refused here as by our parser.
pub fn parse_catalog_query(sql: &str) -> Option<Result<Vec<ParsedStatement>>> {
    use topicfusion_dialect::sqlparser::dialect::PostgreSqlDialect;
    use topicfusion_dialect::sqlparser::parser::Parser;
    use topicfusion_dialect::sqlparser::tokenizer::Token;
    if !reads_pg_catalog(sql) {
        return None;
    }
    let tokens = Parser::new(&PostgreSqlDialect {}).try_with_sql(sql).ok()?.into_tokens();
    let nesting = tokens
        .iter()
        .filter(|t| {
            !matches!(t.token, Token::Word(_) | Token::Whitespace(_) | Token::Comma | Token::Period | Token::RParen)
        })
        .filter(|t| {
            !matches!(
                &t.token,
                Token::Number(..) | Token::SingleQuotedString(_) | Token::Placeholder(_) | Token::SemiColon
            )
        })
        .count();
    if nesting > MAX_CATALOG_QUERY_NESTING_TOKENS {
        return Some(plan_err!(
            "expression nesting too deep: more than {MAX_CATALOG_QUERY_NESTING_TOKENS} operators and parentheses in a query of pg_catalog"
        ));
    }
    let statements = compatibility_parser().parse(sql).ok()?;
    let [statement] = <[_; 1]>::try_from(statements).ok()?;
    let statement = match topicfusion_dialect::check_sql_depth(statement) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(vec![ParsedStatement {
        statement: Statement::DataFusion(Box::new(DFStatement::Statement(Box::new(statement)))),
        sql: sql.trim().to_owned(),
    }]))
}

/// Rewrites the SELECTs that read PostgreSQL's catalog into forms DataFusion plans (known psql
/// queries replaced, `regclass` casts, `ANY(array)`, ...); other statements are untouched.
pub fn rewrite_catalog_queries(parsed: &mut ParsedStatement) {
    if let Statement::DataFusion(df) = &mut parsed.statement
        && let DFStatement::Statement(st) = df.as_mut()
        && matches!(st.as_ref(), sql::Statement::Query(_))
        && reads_pg_catalog(&parsed.sql)
    {
        // The whole text again through the compatibility parser: its known-query table
        // works on tokens.
        match compatibility_parser().parse(&parsed.sql).ok().and_then(|s| <[_; 1]>::try_from(s).ok()) {
            Some([rewritten]) => **st = rewritten,
            None => **st = compatibility_parser().rewrite((**st).clone()),
        }
        rewrite_array_subqueries(st.as_mut());
        rewrite_generate_subscripts(st.as_mut());
        no_sequences(st.as_mut());
        hoist_outer_conditions(st.as_mut());
        aggregate_scalar_subqueries(st.as_mut());
    }
}

fn function(name: &str, args: Vec<Expr>) -> Expr {
    use sql::{FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments};
    Expr::Function(sql::Function {
        name: sql::ObjectName::from(vec![sql::Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args.into_iter().map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a))).collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The plain arguments of a function call, when it is a call of `name`.
fn call_args<'a>(e: &'a Expr, name: &str) -> Option<Vec<&'a Expr>> {
    use sql::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let Expr::Function(f) = e else { return None };
    if !f.name.0.last()?.as_ident()?.value.eq_ignore_ascii_case(name) {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else { return None };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect()
}

/// `generate_subscripts(a, 1)` (SQLAlchemy pairs it with `unnest(a)` to number key columns) as
/// `unnest(range(1, array_length(a, 1) + 1))`: DataFusion unnests several lists of one
/// projection in lockstep, as PostgreSQL runs set-returning functions.
fn rewrite_generate_subscripts(statement: &mut sql::Statement) {
    let _ = sql::visit_expressions_mut(statement, |e| {
        if let Some([array, dim]) = call_args(e, "generate_subscripts").as_deref() {
            let (array, dim) = ((*array).clone(), (*dim).clone());
            let one = Expr::Value(sql::ValueWithSpan::from(sql::Value::Number("1".into(), false)));
            let length = Expr::Cast {
                kind: sql::CastKind::Cast,
                expr: Box::new(function("array_length", vec![array, dim])),
                data_type: sql::DataType::BigInt(None),
                array: false,
                format: None,
            };
            let stop =
                Expr::BinaryOp { left: Box::new(length), op: sql::BinaryOperator::Plus, right: Box::new(one.clone()) };
            *e = function("unnest", vec![function("range", vec![one, stop])]);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// There are no sequences: a subquery that looks one up by `pg_get_serial_sequence(...)` (the
/// compatibility parser turns SQLAlchemy's `::regclass` of it into one, nested in another
/// correlated subquery DataFusion cannot plan) finds nothing.
fn no_sequences(statement: &mut sql::Statement) {
    let _ = sql::visit_expressions_mut(statement, |e| {
        if let Expr::Subquery(q) = e {
            let uses = sql::visit_expressions(q.as_ref(), |inner| {
                if call_args(inner, "pg_get_serial_sequence").is_some() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if uses.is_break() {
                *e = Expr::Value(sql::ValueWithSpan::from(sql::Value::Null));
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The names a SELECT's FROM gives its relations (table names and aliases), lowercased.
fn relation_names(select: &sql::Select) -> Vec<String> {
    use sql::TableFactor;
    let mut names = Vec::new();
    let mut add = |f: &TableFactor| {
        if let TableFactor::Table { name, alias, .. } = f {
            if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                names.push(last.value.to_lowercase());
            }
            if let Some(a) = alias {
                names.push(a.name.value.to_lowercase());
            }
        }
    };
    for t in &select.from {
        add(&t.relation);
        t.joins.iter().for_each(|j| add(&j.relation));
    }
    names
}

/// Whether an expression reads only columns of relations other than `inner` (all of its
/// column references qualified, none by an inner name): a condition on the outer row.
fn outer_only(e: &Expr, inner: &[String]) -> bool {
    let mut columns = 0;
    let flow = sql::visit_expressions(e, |x| match x {
        Expr::Identifier(_) | Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            ControlFlow::Break(())
        }
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            columns += 1;
            let qualifier = parts[parts.len() - 2].value.to_lowercase();
            if inner.contains(&qualifier) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
        _ => ControlFlow::Continue(()),
    });
    flow.is_continue() && columns > 0
}

fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::BinaryOp { left, op: sql::BinaryOperator::And, right } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(inner) if matches!(inner.as_ref(), Expr::BinaryOp { op: sql::BinaryOperator::And, .. }) => {
            conjuncts(*inner, out)
        }
        e => out.push(e),
    }
}

fn and_all(mut items: Vec<Expr>) -> Option<Expr> {
    let first = items.pop()?;
    Some(items.into_iter().rev().fold(first, |acc, e| Expr::BinaryOp {
        left: Box::new(e),
        op: sql::BinaryOperator::And,
        right: Box::new(acc),
    }))
}

/// A scalar subquery whose WHERE tests the outer row alone (SQLAlchemy's `(SELECT ... FROM
/// pg_attrdef WHERE pg_attribute.atthasdef AND ...)`), which DataFusion cannot decorrelate, as
/// `CASE WHEN <those tests> THEN (SELECT ... WHERE <the rest>) END`: the same value.
fn hoist_outer_conditions(statement: &mut sql::Statement) {
    use sql::SetExpr;
    let _ = sql::visit_expressions_mut(statement, |e| {
        let Expr::Subquery(q) = e else { return ControlFlow::<()>::Continue(()) };
        let SetExpr::Select(select) = q.body.as_mut() else { return ControlFlow::Continue(()) };
        let Some(selection) = select.selection.take() else { return ControlFlow::Continue(()) };
        let inner = relation_names(select);
        let mut parts = Vec::new();
        conjuncts(selection, &mut parts);
        let (outer, rest): (Vec<Expr>, Vec<Expr>) = parts.into_iter().partition(|c| outer_only(c, &inner));
        select.selection = and_all(rest);
        if let Some(condition) = and_all(outer) {
            let subquery = std::mem::replace(e, Expr::Value(sql::ValueWithSpan::from(sql::Value::Null)));
            *e = Expr::Case {
                case_token: AttachedToken::empty(),
                end_token: AttachedToken::empty(),
                operand: None,
                conditions: vec![sql::CaseWhen { condition, result: subquery }],
                else_result: None,
            };
        }
        ControlFlow::Continue(())
    });
}

/// Aggregate functions a catalog subquery may already use.
const AGGREGATES: &[&str] =
    &["array_agg", "count", "sum", "min", "max", "avg", "bool_and", "bool_or", "string_agg", "first_value", "json_agg"];

/// A scalar subquery of a catalog query that is not aggregated (`(SELECT pg_get_expr(...)
/// FROM pg_attrdef WHERE ...)`) returns at most one row in PostgreSQL's catalogs; DataFusion
/// plans a correlated one only aggregated, so its single column becomes `first_value(...)`.
fn aggregate_scalar_subqueries(statement: &mut sql::Statement) {
    use sql::{GroupByExpr, SelectItem, SetExpr};
    let _ = sql::visit_expressions_mut(statement, |e| {
        if let Expr::Subquery(q) = e
            && let SetExpr::Select(select) = q.body.as_mut()
            && matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
            && select.having.is_none()
            && let [item] = select.projection.as_mut_slice()
        {
            let aggregated = sql::visit_expressions(&*item, |inner| {
                if AGGREGATES.iter().any(|a| call_args(inner, a).is_some()) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if aggregated.is_continue() {
                match item {
                    SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => {
                        let inner = std::mem::replace(x, Expr::Value(sql::ValueWithSpan::from(sql::Value::Null)));
                        *x = function("first_value", vec![inner]);
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `ARRAY(SELECT x FROM ...)` (psql's `\du` lists role memberships so) as the scalar subquery
/// `(SELECT array_agg(x) FROM ...)`, which DataFusion plans, correlated or not.
fn rewrite_array_subqueries(statement: &mut sql::Statement) {
    use sql::{FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, SelectItem, SetExpr};
    let _ = sql::visit_expressions_mut(statement, |e| {
        if let Expr::Function(f) = e
            && f.name.to_string().eq_ignore_ascii_case("array")
            && let FunctionArguments::Subquery(q) = &f.args
            && let SetExpr::Select(select) = q.body.as_ref()
            && let [SelectItem::UnnamedExpr(item) | SelectItem::ExprWithAlias { expr: item, .. }] =
                select.projection.as_slice()
        {
            let mut query = q.clone();
            let aggregate = Expr::Function(sql::Function {
                name: sql::ObjectName::from(vec![sql::Ident::new("array_agg")]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(item.clone()))],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
            if let SetExpr::Select(select) = query.body.as_mut() {
                select.projection = vec![SelectItem::UnnamedExpr(aggregate)];
            }
            query.order_by = None;
            *e = Expr::Subquery(query);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `pg_catalog.pg_roles` as role `user` may see it: its own row only (the other users' names
/// and privileges are for dba and system). Any other plan is returned as it is.
pub fn only_own_role(plan: LogicalPlan, user: &str) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::{Filter, col, lit};
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
        let is_pg_roles = scan.table_name.table() == "pg_roles"
            && scan.table_name.schema().is_none_or(|s| s == crate::catalog::PG_CATALOG_SCHEMA)
            && scan
                .source
                .downcast_ref::<datafusion::datasource::DefaultTableSource>()
                .is_some_and(|s| !s.table_provider.is::<crate::sql::provider::table::UserTable>());
        if !is_pg_roles {
            return Ok(Transformed::no(node));
        }
        if !scan.projected_schema.has_column_with_unqualified_name("rolname") || scan.fetch.is_some() {
            return plan_err!("permission denied: role user reads pg_roles only through its rolname");
        }
        let column = datafusion::common::Column::new(Some(scan.table_name.clone()), "rolname");
        let filter = Filter::try_new(col(column).eq(lit(user.to_owned())), Arc::new(node))?;
        Ok(Transformed::yes(LogicalPlan::Filter(filter)))
    })
    .map(|t| t.data)
}
