//! The binding of `$n` parameters into a parsed statement as literals (so a bound INSERT takes
//! the same literal fast path as a written one).

use std::ops::ControlFlow;

use datafusion::common::{Result, plan_err};
use datafusion::sql::parser::Statement as DFStatement;
use topicfusion_dialect::sqlparser::ast::{self as sql, CastKind, DataType as SqlDataType, Expr, Value, ValueWithSpan};
use topicfusion_dialect::{SessionStatement, Statement};

pub use crate::catalog::types::ParamValue;

/// How a parameter becomes SQL: the literal (or cast) its value binds as.
impl ParamValue {
    fn to_expr(&self) -> Expr {
        let value = |v: Value| Expr::Value(ValueWithSpan::from(v));
        match self {
            ParamValue::Null => value(Value::Null),
            ParamValue::Bool(b) => value(Value::Boolean(*b)),
            ParamValue::Int(i) => value(Value::Number(i.to_string(), false)),
            // PostgreSQL's numeric NaN and infinities exist only as doubles here.
            ParamValue::Numeric(n) if n.trim_start_matches(['-', '+']).starts_with(['N', 'n', 'I', 'i']) => {
                Expr::Cast {
                    kind: CastKind::Cast,
                    expr: Box::new(value(Value::SingleQuotedString(n.clone()))),
                    data_type: SqlDataType::DoublePrecision,
                    array: false,
                    format: None,
                }
            }
            ParamValue::Numeric(n) => match n.strip_prefix('-') {
                Some(digits) => Expr::UnaryOp {
                    op: sql::UnaryOperator::Minus,
                    expr: Box::new(super::literals::number_literal(digits)),
                },
                None => super::literals::number_literal(n.strip_prefix('+').unwrap_or(n)),
            },
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
            ParamValue::Array(items) => {
                Expr::Array(sql::Array { elem: items.iter().map(ParamValue::to_expr).collect(), named: true })
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
    let mut visit = |e: &Expr| {
        if let Expr::Value(v) = e {
            check(&v.value);
        }
        ControlFlow::<()>::Continue(())
    };
    // The topic and user statements take their values as literals.
    match statement {
        Statement::DataFusion(df) => {
            if let DFStatement::Statement(st) = df.as_ref() {
                let _ = sql::visit_expressions(st.as_ref(), &mut visit);
            }
        }
        Statement::Session(SessionStatement::DeclareSubscribe { subscribe, .. }) => {
            let _ = sql::visit_expressions(subscribe.query.as_ref(), &mut visit);
        }
        _ => {}
    }
    if let Some(p) = bad {
        return plan_err!("invalid parameter {p}: parameters are written $1, $2, ...");
    }
    Ok(max)
}

/// Replaces every `$n` of a statement with the literal of `params[n - 1]`. Only SELECT, INSERT,
/// UPDATE, DELETE and the other statements DataFusion parses take parameters, and the query of
/// a cursor over a live query (psycopg's server-side cursors bind them).
pub fn bind_parameters(statement: &mut Statement, params: &[ParamValue]) -> Result<()> {
    let needed = parameter_count(statement)?;
    if needed > params.len() {
        return plan_err!("the statement has parameter ${needed} but only {} were bound", params.len());
    }
    if params.is_empty() {
        return Ok(());
    }
    match statement {
        Statement::DataFusion(df) => match df.as_mut() {
            DFStatement::Statement(st) => {
                replace_parameters(st.as_mut(), params)?;
                // Bound values may repeat one another's names (`SELECT $1, $2` with 0 and 0).
                super::output_names::make_all_distinct(st.as_mut());
                Ok(())
            }
            _ => plan_err!("this statement takes no parameters"),
        },
        Statement::Session(SessionStatement::DeclareSubscribe { subscribe, .. }) => {
            replace_parameters(subscribe.query.as_mut(), params)
        }
        _ => plan_err!(
            "only SELECT, INSERT, UPDATE, DELETE and other standard statements take parameters; write the values of a topic or user statement into its text"
        ),
    }
}

/// Replaces each `$n` in `node` (its count checked) with the literal of `params[n - 1]`.
fn replace_parameters<V: sql::VisitMut>(node: &mut V, params: &[ParamValue]) -> Result<()> {
    let _ = sql::visit_expressions_mut(node, |e| {
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
