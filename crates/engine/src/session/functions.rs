//! PostgreSQL's session and server functions that drivers call: `version()` in PostgreSQL's
//! form, `pg_advisory_unlock_all()` (pool resets), and the functions whose answer belongs to
//! the session: `current_setting(name [, missing_ok])`, `set_config(name, value, is_local)`,
//! `current_user` / `session_user` / `user`.
//!
//! The session functions take constant arguments and are replaced by their value in the
//! statement before it is planned ([`bind_session_functions`]); `set_config` changes the
//! session then, once per statement (not per row, and not for a statement that is only
//! described). Their registered UDFs only explain that a non-constant argument is not supported.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use topicfusion_dialect::sqlparser::ast::{
    self as sql, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value, ValueWithSpan,
};

use super::settings::{self, Identity, version_string};
use crate::session::Session;

/// Registers `version()` (replacing DataFusion's), `pg_advisory_unlock_all()` and the
/// placeholders of the session functions.
pub fn install(ctx: &SessionContext) {
    let version = version_string();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
    ));
    // There are no advisory locks to release.
    ctx.register_udf(create_udf(
        "pg_advisory_unlock_all",
        vec![],
        DataType::Null,
        Volatility::Volatile,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Null))),
    ));
    // There are no sequences (SQLAlchemy reflects a column's with it).
    ctx.register_udf(create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    ));
    // Every collation is visible (there is one).
    ctx.register_udf(create_udf(
        "pg_collation_is_visible",
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    ));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::default()));
    // There are no indexes beyond primary keys, and no expression indexes.
    ctx.register_udf(create_udf(
        "pg_get_indexdef",
        vec![DataType::Int64, DataType::Int64, DataType::Boolean],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    ));
    for (name, args) in [
        ("current_setting", vec![DataType::Utf8]),
        ("set_config", vec![DataType::Utf8, DataType::Utf8, DataType::Boolean]),
    ] {
        ctx.register_udf(placeholder(name, args));
    }
}

fn placeholder(name: &'static str, args: Vec<DataType>) -> ScalarUDF {
    create_udf(
        name,
        args,
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |_| exec_err!("{name}() takes constant arguments here (a string literal or a bound parameter)")),
    )
}

/// The function's name when `e` calls one of the session functions.
fn session_function(e: &Expr) -> Option<(String, Vec<&Expr>)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.0.last()?.as_ident()?.value.to_ascii_lowercase();
    if f.name.0.len() > 1 && !f.name.0[0].as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog")) {
        return None;
    }
    let args = match &f.args {
        FunctionArguments::None => Vec::new(),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        FunctionArguments::Subquery(_) => return None,
    };
    matches!(name.as_str(), "current_setting" | "set_config" | "current_user" | "session_user" | "user")
        .then_some((name, args))
}

fn constant(e: &Expr) -> Option<Value> {
    match e {
        Expr::Value(v) => Some(v.value.clone()),
        Expr::Nested(e) => constant(e),
        Expr::Cast { expr, .. } => constant(expr),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
        Value::Number(n, _) => Some(n.clone()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_literal(s: Option<String>) -> Expr {
    Expr::Value(ValueWithSpan::from(s.map_or(Value::Null, Value::SingleQuotedString)))
}

/// Names the result columns that are session function calls after the function
/// (`SELECT current_user` has a column `current_user`, as in PostgreSQL), before the calls are
/// replaced by their values.
struct NameSessionColumns;

impl sql::VisitorMut for NameSessionColumns {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut sql::Query) -> ControlFlow<()> {
        name_columns(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn name_columns(body: &mut sql::SetExpr) {
    match body {
        sql::SetExpr::Select(select) => {
            let mut named = Vec::new();
            for item in &mut select.projection {
                // `current_setting(...)` columns keep their value's name: PostgreSQL allows two
                // columns of one name, DataFusion does not.
                if let sql::SelectItem::UnnamedExpr(e) = item
                    && let Some((name, args)) = session_function(e)
                    && args.is_empty()
                    && !named.contains(&name)
                {
                    named.push(name.clone());
                    let expr = std::mem::replace(e, string_literal(None));
                    *item = sql::SelectItem::ExprWithAlias { expr, alias: sql::Ident::new(name) };
                }
            }
        }
        sql::SetExpr::SetOperation { left, right, .. } => {
            name_columns(left);
            name_columns(right);
        }
        sql::SetExpr::Query(q) => name_columns(&mut q.body),
        _ => {}
    }
}

/// Replaces the session functions of a statement by their values; `apply`: run `set_config`'s
/// change (false while only describing a statement).
pub fn bind_session_functions(
    statement: &mut sql::Statement,
    session: &mut Session,
    who: Identity<'_>,
    apply: bool,
) -> Result<()> {
    let _ = sql::VisitMut::visit(statement, &mut NameSessionColumns);
    let mut error = None;
    let _ = sql::visit_expressions_mut(statement, |e| {
        let Some((name, args)) = session_function(e) else { return ControlFlow::Continue(()) };
        let values: Option<Vec<Value>> = args.iter().map(|a| constant(a)).collect();
        let replacement = match (name.as_str(), values.as_deref()) {
            ("current_user" | "session_user" | "user", Some([])) => Ok(string_literal(Some(who.user.to_owned()))),
            ("current_setting", Some([n, rest @ ..])) if rest.len() <= 1 => {
                let missing_ok = matches!(rest, [Value::Boolean(true)]);
                match text(n) {
                    Some(n) => match settings::show(session, &n, who) {
                        Some((_, v)) => Ok(string_literal(Some(v))),
                        None if missing_ok => Ok(string_literal(None)),
                        None => plan_err!("unrecognized configuration parameter \"{n}\""),
                    },
                    None => Ok(string_literal(None)),
                }
            }
            ("set_config", Some([n, v, _local])) => match (text(n), text(v)) {
                (Some(n), v) if apply => settings::set(session, &n, v.as_deref()).map(|v| string_literal(Some(v))),
                (Some(_), v) => Ok(string_literal(v)),
                (None, _) => plan_err!("set_config(): the parameter name cannot be NULL"),
            },
            _ => return ControlFlow::Continue(()),
        };
        match replacement {
            Ok(r) => {
                *e = r;
                ControlFlow::Continue(())
            }
            Err(err) => {
                error = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `json_build_object(key, value, ...)`: a JSON object as text (SQLAlchemy's reflection
/// builds its identity and collation options with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

impl Default for JsonBuildObject {
    fn default() -> Self {
        Self { signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Immutable) }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: datafusion::logical_expr::ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, StringBuilder};
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("json_build_object() takes key/value pairs, got {} arguments", args.args.len());
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = args.number_rows;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let json = if pair[1].is_null(row) {
                    serde_json::Value::Null
                } else {
                    match value {
                        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(b),
                        ScalarValue::Utf8(Some(s))
                        | ScalarValue::LargeUtf8(Some(s))
                        | ScalarValue::Utf8View(Some(s)) => serde_json::Value::String(s),
                        v if v.data_type().is_numeric() => {
                            serde_json::from_str(&v.to_string()).unwrap_or(serde_json::Value::String(v.to_string()))
                        }
                        v => serde_json::Value::String(v.to_string()),
                    }
                };
                object.insert(key, json);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        let array = out.finish();
        Ok(if args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(Arc::new(array))
        })
    }
}
