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
    }
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
                .is_some_and(|s| !s.table_provider.is::<crate::provider::table::UserTable>());
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
