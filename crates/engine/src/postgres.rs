//! What the engine does for PostgreSQL clients, independent of the wire: the `pg_catalog`
//! schema and functions psql and drivers query (datafusion-pg-catalog), the rewrite of their
//! catalog queries into SQL DataFusion plans, and the binding of `$n` parameters into a parsed
//! statement as literals (so a bound INSERT takes the same literal fast path as a written one).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::common::{Result, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role as PgRole};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use topicfusion_dialect::sqlparser::ast::{self as sql, CastKind, DataType as SqlDataType, Expr, Value, ValueWithSpan};
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

/// Parses a catalog query our parser refused (psql writes `OPERATOR(pg_catalog.~)` and
/// `COLLATE pg_catalog.default`), as one statement; `None` when it is not one.
pub fn parse_catalog_query(sql: &str) -> Option<Vec<ParsedStatement>> {
    if !reads_pg_catalog(sql) {
        return None;
    }
    let statements = compatibility_parser().parse(sql).ok()?;
    let [statement] = <[_; 1]>::try_from(statements).ok()?;
    Some(vec![ParsedStatement {
        statement: Statement::DataFusion(Box::new(DFStatement::Statement(Box::new(statement)))),
        sql: sql.trim().to_owned(),
    }])
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

/// A parameter value bound to a `$n` placeholder, as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An exact decimal, as text (`-12.340`).
    Numeric(String),
    /// Text, and every type sent as text (dates, timestamps, JSON, UUIDs): a string literal,
    /// cast by the statement's context like any other.
    Text(String),
    Bytes(Vec<u8>),
}

impl ParamValue {
    fn to_expr(&self) -> Expr {
        let value = |v: Value| Expr::Value(ValueWithSpan::from(v));
        match self {
            ParamValue::Null => value(Value::Null),
            ParamValue::Bool(b) => value(Value::Boolean(*b)),
            ParamValue::Int(i) => value(Value::Number(i.to_string(), false)),
            ParamValue::Numeric(n) => value(Value::Number(n.clone(), false)),
            // A double stays a double (a bare number literal would be an exact decimal).
            ParamValue::Float(f) => Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(value(Value::SingleQuotedString(f.to_string()))),
                data_type: SqlDataType::DoublePrecision,
                array: false,
                format: None,
            },
            ParamValue::Text(s) => value(Value::SingleQuotedString(s.clone())),
            ParamValue::Bytes(b) => {
                value(Value::HexStringLiteral(b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
            }
        }
    }
}

/// The highest `$n` of a statement (0: none). `$0` and names that are not `$` and a number are
/// errors.
pub fn parameter_count(statement: &Statement) -> Result<usize> {
    let mut max = 0usize;
    let mut bad = None;
    let mut check = |v: &Value| {
        if let Value::Placeholder(p) = v {
            match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0) {
                Some(n) => max = max.max(n),
                None => bad = Some(p.clone()),
            }
        }
    };
    // The topic and user statements take their values as literals.
    if let Statement::DataFusion(df) = statement
        && let DFStatement::Statement(st) = df.as_ref()
    {
        let _ = sql::visit_expressions(st.as_ref(), |e| {
            if let Expr::Value(v) = e {
                check(&v.value);
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if let Some(p) = bad {
        return plan_err!("invalid parameter {p}: parameters are written $1, $2, ...");
    }
    Ok(max)
}

/// Replaces every `$n` of a statement with the literal of `params[n - 1]`. Only SELECT, INSERT,
/// UPDATE, DELETE and the other statements DataFusion parses take parameters.
pub fn bind_parameters(statement: &mut Statement, params: &[ParamValue]) -> Result<()> {
    let needed = parameter_count(statement)?;
    if needed > params.len() {
        return plan_err!("the statement has parameter ${needed} but only {} were bound", params.len());
    }
    if params.is_empty() {
        return Ok(());
    }
    let Statement::DataFusion(df) = statement else {
        return plan_err!(
            "only SELECT, INSERT, UPDATE, DELETE and other standard statements take parameters; write the values of a topic or user statement into its text"
        );
    };
    let DFStatement::Statement(st) = df.as_mut() else {
        return plan_err!("this statement takes no parameters");
    };
    let _ = sql::visit_expressions_mut(st.as_mut(), |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
            && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
        {
            *e = params[n - 1].to_expr();
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}
