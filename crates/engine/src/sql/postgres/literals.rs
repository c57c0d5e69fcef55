//! PostgreSQL's rules for literals and type names, applied to a statement before DataFusion
//! plans it:
//! - a number with a fraction or an exponent is an exact decimal (`1e30` is 31 digits, not
//!   DataFusion's decimal of negative scale); one beyond 76 digits (`1.5e300`, `2.5e-300`,
//!   which PostgreSQL's numeric still holds) becomes the nearest double, read from its text;
//! - `FLOAT` without a precision, and `FLOAT(p)` with p > 24, is `float8` (DataFusion reads
//!   every `FLOAT` as a 4-byte float);
//! - in a `VALUES` list, a column mixing decimal literals with doubles (`1.2` and
//!   `'NaN'::float8`) is double, as PostgreSQL unifies numeric and float8 (DataFusion would make
//!   it a decimal and fail on NaN).

use std::ops::ControlFlow;

use topicfusion_dialect::sqlparser::ast::{
    self as sql, CastKind, DataType, ExactNumberInfo, Expr, SetExpr, UnaryOperator, Value, ValueWithSpan, VisitMut,
    VisitorMut,
};

/// The most digits a decimal literal keeps (DataFusion's 256-bit decimals).
const MAX_DECIMAL_DIGITS: usize = 76;

/// Applies the rules above to every expression and type of a statement.
pub fn normalize(statement: &mut sql::Statement) {
    if let sql::Statement::CreateTable(create) = statement {
        for column in &mut create.columns {
            float8(&mut column.data_type);
        }
    }
    normalize_node(statement);
}

/// Applies the rules to every expression and query of a part of a statement.
pub fn normalize_node<T: VisitMut>(node: &mut T) {
    let _ = sql::visit_expressions_mut(node, |e| {
        match e {
            Expr::Value(v) => {
                if let Value::Number(text, _) = &v.value
                    && let Some(replacement) = number(text)
                {
                    *e = replacement;
                }
            }
            Expr::Cast { data_type, .. } => float8(data_type),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = node.visit(&mut Queries);
}

/// Visits every query of a statement (subqueries, `CREATE TABLE ... AS`, `INSERT ... VALUES`);
/// in the same pass, names the repeated items of its SELECT lists ([`super::output_names`]).
struct Queries;

impl VisitorMut for Queries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut sql::Query) -> ControlFlow<()> {
        unify_values(&mut query.body);
        super::output_names::make_distinct(&mut query.body);
        ControlFlow::Continue(())
    }
}

/// `FLOAT` and `FLOAT(p > 24)` as `DOUBLE PRECISION`; `FLOAT(p <= 24)` as `REAL`.
fn float8(ty: &mut DataType) {
    match ty {
        DataType::Float(ExactNumberInfo::None) => *ty = DataType::DoublePrecision,
        DataType::Float(ExactNumberInfo::Precision(p)) => {
            *ty = if *p <= 24 { DataType::Real } else { DataType::DoublePrecision };
        }
        DataType::Array(
            sql::ArrayElemTypeDef::SquareBracket(inner, _) | sql::ArrayElemTypeDef::AngleBracket(inner),
        ) => float8(inner),
        _ => {}
    }
}

/// An unsigned number literal as PostgreSQL reads it (a bound numeric parameter's text).
pub fn number_literal(text: &str) -> Expr {
    number(text).unwrap_or_else(|| Expr::Value(ValueWithSpan::from(Value::Number(text.to_owned(), false))))
}

fn cast(expr: Expr, data_type: DataType) -> Expr {
    Expr::Cast { kind: CastKind::Cast, expr: Box::new(expr), data_type, array: false, format: None }
}

/// The replacement of a number literal, if it needs one: an exponent written out as plain
/// digits (exact), or a double for what no decimal holds.
fn number(text: &str) -> Option<Expr> {
    if !text.bytes().any(|b| matches!(b, b'e' | b'E' | b'.')) {
        return None;
    }
    let (digits, exponent) = decimal_parts(text)?;
    // `digits * 10^exponent`, written with a scale of at least zero.
    let plain = if exponent >= 0 {
        let zeros = usize::try_from(exponent).ok()?;
        if digits.len().saturating_add(zeros) > MAX_DECIMAL_DIGITS {
            return Some(double(text));
        }
        format!("{digits}{}", "0".repeat(zeros))
    } else {
        let scale = usize::try_from(exponent.unsigned_abs()).ok()?;
        if scale.max(digits.len()) > MAX_DECIMAL_DIGITS {
            return Some(double(text));
        }
        if !text.bytes().any(|b| matches!(b, b'e' | b'E')) {
            // Already plain: DataFusion reads it as this exact decimal.
            return None;
        }
        let padded = format!("{}{digits}", "0".repeat((scale + 1).saturating_sub(digits.len())));
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{int}.{frac}")
    };
    Some(Expr::Value(ValueWithSpan::from(Value::Number(plain, false))))
}

/// The nearest double to a literal's text (Rust's and Arrow's float parsing is correctly
/// rounded).
fn double(text: &str) -> Expr {
    cast(Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(text.to_owned()))), DataType::DoublePrecision)
}

/// `(significant digits without leading zeros, power of ten)` of an unsigned number literal:
/// `12.5e3` is `("125", 2)`.
fn decimal_parts(text: &str) -> Option<(String, i64)> {
    let text: String = text.chars().filter(|c| *c != '_').collect();
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i64>().ok()?),
        None => (text.as_str(), 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    Some((digits.to_owned(), exp.checked_sub(frac.len() as i64)?))
}

/// Whether an expression is, by its spelling, a double (`x::float8`, `CAST(x AS DOUBLE)`,
/// a literal this module made a double).
fn is_double(e: &Expr) -> bool {
    match e {
        Expr::Cast { data_type, .. } => matches!(
            data_type,
            DataType::DoublePrecision
                | DataType::Double(_)
                | DataType::Float8
                | DataType::Float64
                | DataType::Real
                | DataType::Float4
                | DataType::Float32
        ),
        Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus, expr } | Expr::Nested(expr) => is_double(expr),
        _ => false,
    }
}

/// Whether an expression is a decimal literal (a number with a fraction).
fn is_decimal_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(ValueWithSpan { value: Value::Number(n, _), .. }) => n.contains('.'),
        Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus, expr } | Expr::Nested(expr) => {
            is_decimal_literal(expr)
        }
        _ => false,
    }
}

/// In each column of a `VALUES` list that holds both, the decimal literals become doubles.
fn unify_values(body: &mut SetExpr) {
    match body {
        SetExpr::Values(values) => {
            let width = values.rows.first().map_or(0, |r| r.len());
            for j in 0..width {
                let column = || values.rows.iter().filter_map(|r| r.get(j));
                if column().any(is_double) && column().any(is_decimal_literal) {
                    for row in &mut values.rows {
                        if let Some(cell) = row.get_mut(j)
                            && is_decimal_literal(cell)
                        {
                            let literal = std::mem::replace(cell, Expr::Value(ValueWithSpan::from(Value::Null)));
                            *cell = cast(literal, DataType::DoublePrecision);
                        }
                    }
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            unify_values(left);
            unify_values(right);
        }
        SetExpr::Query(q) => unify_values(&mut q.body),
        _ => {}
    }
}
