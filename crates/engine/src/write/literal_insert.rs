//! The literal INSERT fast path: `INSERT INTO <table> [(columns)] VALUES (...), ...` whose cells
//! are all literals goes straight to row values typed by the table's columns, without DataFusion
//! planning every cell (the cost that dominated bulk INSERTs). The cells come from the dialect's
//! VALUES scanner ([`from_scanned`], the plain form, no SQL parser) or from the sqlparser AST
//! ([`prepare`]); both convert them in [`rows_of`].
//!
//! The path takes only what it converts exactly as DataFusion would (the same Arrow casts, the
//! same decimal rules); anything else (an expression, a value out of range, a string that does
//! not parse as the column's type, a clause it does not know) returns `None` and the statement
//! is planned by DataFusion, which then also produces the error. NOT NULL and key checks, routing
//! and the commit are the shared write path ([`crate::write::writer`]).
//!
//! It also expands column DEFAULTs in the AST (`DEFAULT` cells and `INSERT ... DEFAULT VALUES`),
//! for both paths: DataFusion 55 plans neither.
//!
//! A prepared INSERT (the PostgreSQL protocol's extended query) whose cells are parameters and
//! literals becomes an [`InsertTemplate`] at Parse: each Execute converts the bound values
//! straight into rows by the same conversion ([`convert_column`]), instead of binding them into a
//! copy of the syntax tree and reading it again.

use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use std::borrow::Cow;

use datafusion::common::{Result, plan_err};
use topicfusion_dialect::sqlparser::ast::{
    Expr, Ident, Insert, ObjectName, Parens, Query, SetExpr, TableObject, Value as SqlValue, Values,
};
use topicfusion_dialect::{Literal, ValuesInsert, literal_of};
use topicfusion_storage::Value;

use crate::catalog::types::ParamValue;
use crate::catalog::types::{ColumnType, value_at};
use crate::catalog::{CatalogState, Table};
use crate::core::resolve_name;

/// An INSERT of literal rows, converted to full table rows.
#[derive(Debug)]
pub struct LiteralInsert {
    pub table: Arc<Table>,
    pub rows: Vec<Vec<Value>>,
}

/// The target table of an INSERT, if it is a durable table.
fn target_table(catalog: &CatalogState, insert: &Insert) -> Option<Arc<Table>> {
    let TableObject::TableName(name) = &insert.table else { return None };
    durable_table(catalog, name)
}

fn durable_table(catalog: &CatalogState, name: &ObjectName) -> Option<Arc<Table>> {
    let (schema, table) = resolve_name(name).ok()?;
    catalog.table(&schema, &table).cloned()
}

/// DataFusion's identifier rule: unquoted names are lowercased.
fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() }
}

fn is_default_keyword(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The column indices an INSERT names (all columns in order when it names none); `None` for
/// unknown or repeated names (DataFusion reports them).
fn target_columns<'a>(table: &Table, columns: impl ExactSizeIterator<Item = Option<&'a Ident>>) -> Option<Vec<usize>> {
    if columns.len() == 0 {
        return Some((0..table.meta.columns.len()).collect());
    }
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        let name = normalize(c?);
        let i = table.meta.columns.iter().position(|m| m.name == name)?;
        if out.contains(&i) {
            return None;
        }
        out.push(i);
    }
    Some(out)
}

/// The single-part names of an INSERT's column list (`None` for a qualified one).
fn column_idents(columns: &[ObjectName]) -> impl ExactSizeIterator<Item = Option<&Ident>> {
    columns.iter().map(|c| match c.0.as_slice() {
        [part] => part.as_ident(),
        _ => None,
    })
}

/// The rows of an INSERT the VALUES scanner read, when this path converts them exactly; `None`
/// sends the statement to the full parser (DEFAULTs, strings it cannot cast, ...).
pub fn from_scanned(catalog: &CatalogState, insert: &ValuesInsert<'_>) -> Option<LiteralInsert> {
    let table = durable_table(catalog, &insert.table)?;
    let targets = target_columns(&table, insert.columns.iter().map(Some))?;
    if insert.width != targets.len() {
        return None;
    }
    rows_of(table, &targets, &insert.cells)
}

/// The one entry for an INSERT: expands its DEFAULTs in place (for both paths) and returns its
/// rows when it takes the fast path. `None` leaves the statement to DataFusion (also when the
/// target is not a durable table).
pub fn prepare(catalog: &CatalogState, insert: &mut Insert) -> Result<Option<LiteralInsert>> {
    let Some(table) = target_table(catalog, insert) else { return Ok(None) };
    expand_defaults(&table, insert)?;
    Ok(literal_insert(table, insert))
}

/// Replaces `DEFAULT` cells of an INSERT's VALUES with the column's default expression (NULL
/// when it has none), and `INSERT ... DEFAULT VALUES` with one row of defaults.
fn expand_defaults(table: &Table, insert: &mut Insert) -> Result<()> {
    let default_of = |i: usize| -> Result<Expr> {
        match &table.meta.columns[i].default {
            None => Ok(Expr::Value(SqlValue::Null.into())),
            Some(sql) => match topicfusion_dialect::parse_expr_checked(sql) {
                Ok(e) => Ok(e),
                Err(e) => plan_err!("the DEFAULT of column {} does not parse: {e}", table.meta.columns[i].name),
            },
        }
    };
    if insert.source.is_none() && insert.columns.is_empty() && insert.assignments.is_empty() {
        // INSERT INTO t DEFAULT VALUES
        let row = (0..table.meta.columns.len()).map(default_of).collect::<Result<Vec<_>>>()?;
        let values = Values { explicit_row: false, value_keyword: false, rows: vec![Parens::with_empty_span(row)] };
        insert.source = Some(Box::new(Query {
            with: None,
            body: Box::new(SetExpr::Values(values)),
            order_by: None,
            limit_clause: None,
            fetch: None,
            locks: vec![],
            for_clause: None,
            settings: None,
            format_clause: None,
            pipe_operators: vec![],
        }));
        return Ok(());
    }
    let Some(query) = insert.source.as_mut() else { return Ok(()) };
    let SetExpr::Values(values) = query.body.as_mut() else { return Ok(()) };
    if !values.rows.iter().any(|r| r.content.iter().any(is_default_keyword)) {
        return Ok(());
    }
    let Some(targets) = target_columns(table, column_idents(&insert.columns)) else { return Ok(()) };
    for row in values.rows.iter_mut() {
        for (j, cell) in row.content.iter_mut().enumerate() {
            if is_default_keyword(cell) {
                match targets.get(j) {
                    Some(&i) => *cell = default_of(i)?,
                    None => return plan_err!("INSERT has more expressions than target columns"),
                }
            }
        }
    }
    Ok(())
}

/// The rows of `insert` (into durable `table`) if it is an INSERT of literals that this path
/// converts exactly; `None` sends the statement to DataFusion.
fn literal_insert(table: Arc<Table>, insert: &Insert) -> Option<LiteralInsert> {
    let values = plain_values(insert)?;
    let targets = target_columns(&table, column_idents(&insert.columns))?;
    if values.rows.iter().any(|r| r.content.len() != targets.len()) {
        return None;
    }
    let cells: Vec<Literal<'_>> =
        values.rows.iter().flat_map(|r| r.content.iter()).map(literal_of).collect::<Option<_>>()?;
    rows_of(table, &targets, &cells)
}

/// The VALUES rows of a plain `INSERT INTO t [(columns)] VALUES ...` (no other clause).
fn plain_values(insert: &Insert) -> Option<&Values> {
    let plain = insert.or.is_none()
        && !insert.ignore
        && insert.table_alias.is_none()
        && !insert.overwrite
        && insert.assignments.is_empty()
        && insert.partitioned.is_none()
        && insert.after_columns.is_empty()
        && insert.on.is_none()
        && insert.returning.is_none()
        && insert.output.is_none()
        && !insert.replace_into
        && insert.priority.is_none()
        && insert.insert_alias.is_none()
        && insert.settings.is_none()
        && insert.format_clause.is_none()
        && insert.multi_table_insert_type.is_none();
    if !plain {
        return None;
    }
    let query = insert.source.as_deref()?;
    let simple_query = query.with.is_none()
        && query.order_by.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.locks.is_empty()
        && query.for_clause.is_none()
        && query.settings.is_none()
        && query.format_clause.is_none()
        && query.pipe_operators.is_empty();
    let SetExpr::Values(values) = query.body.as_ref() else { return None };
    if !simple_query || values.explicit_row || values.value_keyword || values.rows.is_empty() {
        return None;
    }
    Some(values)
}

/// A prepared `INSERT INTO t [(columns)] VALUES (...), ...` of parameters (`$n`) and literals,
/// with the literals and the omitted columns' defaults already converted to the column types.
#[derive(Debug)]
pub struct InsertTemplate {
    /// The table as it was at Parse: the template holds only while it is still the current one.
    table: Arc<Table>,
    /// Row after row, one cell per table column.
    cells: Vec<TemplateCell>,
    /// The highest `$n` the statement uses.
    parameters: usize,
}

#[derive(Debug)]
enum TemplateCell {
    Value(Value),
    /// `$n` (0-based here) into a column of this type.
    Parameter(usize, ColumnType),
}

/// The template of a prepared INSERT, when it is a plain INSERT into a durable table whose cells
/// are parameters or literals this path converts exactly (else the statement is bound and
/// executed as usual at each Execute).
pub fn template(catalog: &CatalogState, insert: &Insert) -> Option<InsertTemplate> {
    let table = target_table(catalog, insert)?;
    let values = plain_values(insert)?;
    let targets = target_columns(&table, column_idents(&insert.columns))?;
    let n = table.meta.columns.len();
    let mut cells = Vec::with_capacity(values.rows.len() * n);
    let mut parameters = 0;
    for row in &values.rows {
        if row.content.len() != targets.len() {
            return None;
        }
        let mut out: Vec<Option<TemplateCell>> = (0..n).map(|_| None).collect();
        for (e, &i) in row.content.iter().zip(&targets) {
            let ty = table.meta.columns[i].data_type;
            out[i] = Some(match placeholder(e) {
                Some(p) => {
                    parameters = parameters.max(p + 1);
                    TemplateCell::Parameter(p, ty)
                }
                None => TemplateCell::Value(convert_column(&[&literal_of(e)?], ty)?.pop()?),
            });
        }
        for (i, cell) in out.into_iter().enumerate() {
            cells.push(match cell {
                Some(cell) => cell,
                None => TemplateCell::Value(default_value(&table, i)?),
            });
        }
    }
    Some(InsertTemplate { table, cells, parameters })
}

impl InsertTemplate {
    /// The rows of one execution with `params` bound, or `None` when this path does not take them
    /// (the table changed since Parse, a value it does not convert exactly, too few parameters):
    /// the statement is then bound and executed as usual, which also reports the errors.
    pub fn rows(&self, catalog: &CatalogState, params: &[ParamValue]) -> Option<LiteralInsert> {
        let current = catalog.table(&self.table.meta.schema, &self.table.meta.name)?;
        if !Arc::ptr_eq(current, &self.table) || params.len() < self.parameters {
            return None;
        }
        let width = self.table.meta.columns.len();
        let rows = self
            .cells
            .chunks(width)
            .map(|row| {
                row.iter()
                    .map(|cell| match cell {
                        TemplateCell::Value(v) => Some(v.clone()),
                        TemplateCell::Parameter(p, ty) => parameter_value(&params[*p], *ty),
                    })
                    .collect::<Option<Vec<Value>>>()
            })
            .collect::<Option<Vec<_>>>()?;
        Some(LiteralInsert { table: Arc::clone(&self.table), rows })
    }
}

/// `$n` as a 0-based index.
fn placeholder(e: &Expr) -> Option<usize> {
    let Expr::Value(v) = e else { return None };
    let SqlValue::Placeholder(p) = &v.value else { return None };
    p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

/// A column's literal DEFAULT (NULL without one), converted; `None` for any other expression.
fn default_value(table: &Table, i: usize) -> Option<Value> {
    match &table.meta.columns[i].default {
        None => Some(Value::Null),
        Some(sql) => {
            let e = topicfusion_dialect::parse_expr_checked(sql).ok()?;
            convert_column(&[&literal_of(&e)?], table.meta.columns[i].data_type)?.pop()
        }
    }
}

/// A bound parameter as the literal binding would write it into the statement, converted to the
/// column type; `None` for what this path leaves to the planner (doubles, bytes, arrays, NaN).
fn parameter_value(param: &ParamValue, ty: ColumnType) -> Option<Value> {
    let digits;
    let literal = match param {
        ParamValue::Null => Literal::Null,
        ParamValue::Bool(b) => Literal::Boolean(*b),
        ParamValue::Int(i) => {
            digits = i.unsigned_abs().to_string();
            Literal::Number { negative: *i < 0, digits: &digits }
        }
        ParamValue::Numeric(n) => {
            let (negative, rest) = match n.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, n.strip_prefix('+').unwrap_or(n)),
            };
            // Exponents, NaN and infinities: rewritten by the binder (`crate::sql::postgres::literals`).
            if !rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') || rest.is_empty() {
                return None;
            }
            Literal::Number { negative, digits: rest }
        }
        ParamValue::Text(s) => Literal::String(Cow::Borrowed(s)),
        ParamValue::Float(_) | ParamValue::Bytes(_) | ParamValue::Array(_) => return None,
    };
    convert_column(&[&literal], ty)?.pop()
}

/// Full table rows from literal cells (row after row, one per target column), or `None` when a
/// cell does not convert exactly.
fn rows_of(table: Arc<Table>, targets: &[usize], cells: &[Literal<'_>]) -> Option<LiteralInsert> {
    let width = targets.len();
    if width == 0 || cells.is_empty() || !cells.len().is_multiple_of(width) {
        return None;
    }
    let rows_len = cells.len() / width;
    let n = table.meta.columns.len();
    let mut columns: Vec<Option<Vec<Value>>> = vec![None; n];
    for (j, &i) in targets.iter().enumerate() {
        let column: Vec<&Literal<'_>> = cells[j..].iter().step_by(width).collect();
        columns[i] = Some(convert_column(&column, table.meta.columns[i].data_type)?);
    }
    // Columns the INSERT does not name: their literal DEFAULT, or NULL.
    for (i, column) in columns.iter_mut().enumerate() {
        if column.is_none() {
            *column = Some(vec![default_value(&table, i)?; rows_len]);
        }
    }
    let mut columns: Vec<std::vec::IntoIter<Value>> =
        columns.into_iter().map(|c| c.unwrap_or_default().into_iter()).collect();
    let rows = (0..rows_len).map(|_| columns.iter_mut().map(|c| c.next().unwrap_or(Value::Null)).collect()).collect();
    Some(LiteralInsert { table, rows })
}

/// A number literal as DataFusion reads it with `parse_float_as_decimal`: an i64 when it is
/// one, else an exact decimal `mantissa * 10^-scale`. `None` for anything this path leaves to
/// DataFusion (exponents, underscores, u64 beyond i64, more than 38 digits).
fn number(negative: bool, digits: &str) -> Option<(i128, u32, bool)> {
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') || digits.is_empty() {
        return None;
    }
    let sign = if negative { -1 } else { 1 };
    match digits.split_once('.') {
        None => {
            let v: i128 = digits.parse().ok()?;
            let v = sign * v;
            i64::try_from(v).ok()?;
            Some((v, 0, true))
        }
        Some((int, frac)) => {
            if frac.contains('.') || int.len() + frac.len() > 38 || (int.is_empty() && frac.is_empty()) {
                return None;
            }
            let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
            Some((sign * mantissa, frac.len() as u32, false))
        }
    }
}

/// Converts one column's cells to the column type, or `None` when DataFusion should decide.
fn convert_column(cells: &[&Literal<'_>], ty: ColumnType) -> Option<Vec<Value>> {
    // Strings for a bytea column: PostgreSQL's bytea input (`'\x0001ff'`), as the planned
    // path's cast does (`crate::sql::postgres::casts`).
    if ty == ColumnType::Bytea {
        return cells
            .iter()
            .map(|c| match c {
                Literal::Null => Some(Value::Null),
                Literal::String(s) => crate::catalog::types::bytea_in(s).ok().map(Value::Binary),
                _ => None,
            })
            .collect();
    }
    // Strings for a non-text column: one Arrow cast of the whole column, as DataFusion's CAST.
    if ty != ColumnType::Text && cells.iter().any(|c| matches!(c, Literal::String(_))) {
        if cells.iter().any(|c| !matches!(c, Literal::String(_) | Literal::Null)) {
            return None;
        }
        let strings: StringArray =
            cells.iter().map(|c| if let Literal::String(s) = c { Some(s.as_ref()) } else { None }).collect();
        let options = CastOptions { safe: false, ..Default::default() };
        let array = cast_with_options(&strings, &ty.arrow(), &options).ok()?;
        return (0..array.len()).map(|i| value_at(array.as_ref(), i, ty).ok()).collect();
    }
    cells
        .iter()
        .map(|c| match (c, ty) {
            (Literal::Null, _) => Some(Value::Null),
            (Literal::String(s), ColumnType::Text) => Some(Value::Utf8(s.as_ref().to_owned())),
            (Literal::Boolean(b), ColumnType::Boolean) => Some(Value::Boolean(*b)),
            // A float column takes the nearest float to the literal's text (exponents too).
            // (A number literal is a decimal first, which has no negative zero: `-0.0` is 0.)
            (Literal::Number { negative, digits }, ColumnType::Double) => {
                float_text(*negative, digits)?.parse::<f64>().ok().map(|v| Value::Float64(v + 0.0))
            }
            (Literal::Number { negative, digits }, ColumnType::Real) => {
                float_text(*negative, digits)?.parse::<f32>().ok().map(|v| Value::Float32(v + 0.0))
            }
            (Literal::Number { negative, digits }, _) => number_value(number(*negative, digits)?, ty),
            _ => None,
        })
        .collect()
}

/// A number literal's text for Rust's (correctly rounded) float parsing; `None` for what it
/// does not read as SQL does (underscores, `inf`).
fn float_text(negative: bool, digits: &str) -> Option<String> {
    if !digits.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    Some(if negative { format!("-{digits}") } else { digits.to_owned() })
}

fn number_value((mantissa, scale, integer): (i128, u32, bool), ty: ColumnType) -> Option<Value> {
    // Integers exactly; decimals scaled to the column's scale when that is exact.
    Some(match ty {
        ColumnType::SmallInt if integer => Value::Int16(i16::try_from(mantissa).ok()?),
        ColumnType::Int if integer => Value::Int32(i32::try_from(mantissa).ok()?),
        ColumnType::BigInt if integer => Value::Int64(i64::try_from(mantissa).ok()?),
        ColumnType::Decimal { precision, scale: s } if s >= 0 && scale <= s as u32 => {
            let v = mantissa.checked_mul(10i128.checked_pow(s as u32 - scale)?)?;
            if v.unsigned_abs() >= 10u128.checked_pow(precision as u32)? {
                return None;
            }
            Value::Decimal128(v)
        }
        _ => return None,
    })
}
