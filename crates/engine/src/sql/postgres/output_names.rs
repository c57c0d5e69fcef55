//! Repeated output names in a SELECT list. PostgreSQL allows them (`SELECT 1, 1`,
//! `SELECT id, id FROM t`, `SELECT v, v::text FROM t`, `SELECT a AS x, b AS x`,
//! `INSERT INTO t SELECT k, 0, 0`); DataFusion refuses a list whose items have the same name
//! ("Projections require unique expression names"), and a cast does not change a name there. So
//! before planning, an item whose name repeats an earlier item's in the same list is given a
//! name of its own: its PostgreSQL name (a column's name, a function's, `?column?`) if no other
//! item has it, else that name with `_1`, `_2`, ... The first item of each name keeps its name.
//!
//! Names are compared as DataFusion derives them, without casts: a column as written (`t.id` and
//! `id` are told apart, as are `a.id` and `b.id` of a join, which DataFusion keeps apart by their
//! qualifiers), any other expression by its text.

use std::collections::HashSet;

use topicfusion_dialect::sqlparser::ast::{Expr, Ident, ObjectNamePart, SelectItem, SetExpr};

/// Names the repeated items of every SELECT list of `body` (a query's body; the set
/// operations' operands too). Nested queries are the caller's (a visitor's) to reach.
pub fn make_distinct(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => make_list_distinct(&mut select.projection),
        SetExpr::SetOperation { left, right, .. } => {
            make_distinct(left);
            make_distinct(right);
        }
        _ => {}
    }
}

fn make_list_distinct(items: &mut [SelectItem]) {
    if items.len() < 2 {
        return;
    }
    let key = |item: &SelectItem| match item {
        SelectItem::UnnamedExpr(e) => Some(expr_key(e)),
        SelectItem::ExprWithAlias { alias, .. } => Some(ident_key(alias)),
        _ => None,
    };
    let keys: Vec<Option<String>> = items.iter().map(key).collect();
    let mut seen = HashSet::new();
    if keys.iter().flatten().all(|k| seen.insert(k.as_str())) {
        return;
    }
    // Every name in the list is taken, so that a new name repeats none of them.
    let mut taken: HashSet<String> = keys.iter().flatten().cloned().collect();
    let mut seen = HashSet::new();
    for (item, key) in items.iter_mut().zip(keys) {
        let Some(key) = key else { continue };
        if seen.insert(key) {
            continue;
        }
        let (expr, base) = match item {
            SelectItem::UnnamedExpr(expr) => (expr.clone(), postgres_name(expr)),
            SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), alias.value.clone()),
            _ => continue,
        };
        let name = std::iter::once(base.clone())
            .chain((1..).map(|n| format!("{base}_{n}")))
            .find(|name| !taken.contains(name))
            .unwrap_or(base);
        taken.insert(name.clone());
        *item = SelectItem::ExprWithAlias { expr, alias: Ident::with_quote('"', name) };
    }
}

/// An item's name as DataFusion compares it: casts and parentheses ignored; an identifier as
/// normalized (unquoted names fold to lower case); anything else by its text.
fn expr_key(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident_key(ident),
        Expr::CompoundIdentifier(parts) => parts.iter().map(ident_key).collect::<Vec<_>>().join("."),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_key(expr),
        other => other.to_string(),
    }
}

fn ident_key(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The name PostgreSQL gives an unnamed item: a column's name, a function's, the type of a cast
/// of something nameless, else `?column?`.
fn postgres_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident_key(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_key).unwrap_or_default(),
        Expr::Nested(inner) => postgres_name(inner),
        Expr::Cast { expr, data_type, .. } => match postgres_name(expr) {
            name if name == UNNAMED => data_type.to_string().to_lowercase(),
            name => name,
        },
        Expr::Function(f) => match f.name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => ident_key(ident),
            _ => UNNAMED.to_owned(),
        },
        _ => UNNAMED.to_owned(),
    }
}

const UNNAMED: &str = "?column?";
