//! Repeated output names in a SELECT list. PostgreSQL allows them (`SELECT 1, 1`,
//! `SELECT id, id FROM t`, `SELECT v, v::text FROM t`, `SELECT a AS x, b AS x`,
//! `INSERT INTO t SELECT k, 0, 0`); DataFusion refuses a list whose items have the same name
//! ("Projections require unique expression names"), and a cast does not change a name there. So
//! before planning (at parse, and again once a prepared statement's parameters are bound), an
//! item whose name repeats an earlier item's in the same list is given a name of its own: the
//! name PostgreSQL would give it (a column's name, a function's, the type of a cast of a
//! literal as written, `?column?`) if no other item has it, else that name with `_1`, `_2`, ...
//! The first item of each name keeps its name.
//!
//! Names are compared as written, casts and parentheses aside: a column as written (so `a.id`
//! and `b.id` of a join, which DataFusion keeps apart by their qualifiers, are left alone, and
//! so is `t.id` beside `id`, which DataFusion still refuses), any other expression by its text
//! (`count(*)` beside `COUNT(*)` is refused too). A wildcard's columns are not compared.

use std::collections::HashSet;

use std::ops::ControlFlow;

use topicfusion_dialect::sqlparser::ast::{
    Expr, Ident, ObjectNamePart, Query, SelectItem, SetExpr, VisitMut, VisitorMut,
};

/// Names the repeated items of every SELECT list in `node` (see [`make_distinct`]).
pub fn make_all_distinct<T: VisitMut>(node: &mut T) {
    struct Lists;
    impl VisitorMut for Lists {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            make_distinct(&mut query.body);
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Lists);
}

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
    // Every name in the list is taken, as compared and bare (a column's name without its
    // qualifier: DataFusion drops an alias equal to the column's name, and an alias equal to a
    // qualified column's name is ambiguous), so that a new name repeats none of them.
    let mut taken: HashSet<String> = keys.iter().flatten().cloned().collect();
    taken.extend(items.iter().filter_map(|item| match item {
        SelectItem::UnnamedExpr(e) => column_name(e),
        _ => None,
    }));
    let mut seen = HashSet::new();
    for (item, key) in items.iter_mut().zip(keys) {
        let Some(key) = key else { continue };
        if seen.insert(key) {
            continue;
        }
        let (expr, base) = match item {
            SelectItem::UnnamedExpr(expr) => (expr.clone(), postgres_name(expr)),
            SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), ident_key(alias)),
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

/// The name of the column an item is (under casts and parentheses), without its qualifier.
fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_key(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_key),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => column_name(expr),
        _ => None,
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
