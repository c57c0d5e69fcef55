//! `SUBSCRIBE [TO] <SELECT ...> [WITH (snapshot = true|false, from_position = <n>)]`: a live
//! query (docs/live-queries.md). The parser takes any query; which queries can be live (one
//! table, columns, a row filter) is the engine's to check.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::{BinaryOperator, Expr, Query, SetExpr, TableFactor, Value as SqlValue};
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use crate::parser::{expect_word, is_word, parse_options, parse_uint, parse_word};

/// A live query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct Subscribe {
    pub query: Box<Query>,
    /// Whether the current rows come first (default: true, unless `from_position` is given).
    pub snapshot: Option<bool>,
    /// Resume after this position instead of starting with a snapshot.
    pub from_position: Option<u64>,
}

impl Subscribe {
    /// Whether the statement starts `SUBSCRIBE`.
    pub(crate) fn claims(p: &Parser<'_>) -> bool {
        is_word(&p.peek_nth_token(0).token, "SUBSCRIBE")
    }

    /// Parses the statement (the caller has checked [`Self::claims`]).
    pub fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "SUBSCRIBE")?;
        parse_word(p, "TO");
        let mut query = p.parse_query()?;
        let (mut snapshot, mut from_position) = (None, None);
        let hints = take_table_hints(&mut query);
        if !hints.is_empty() {
            // `FROM t WITH (...)` parses as a table's hints (SQL Server's syntax): they are the
            // options (a live query's table takes no hints).
            options_from_hints(hints, &mut snapshot, &mut from_position)?;
        } else if p.parse_keyword(Keyword::WITH) {
            parse_options(p, &["snapshot", "from_position"], |p, name| {
                match name {
                    "snapshot" => snapshot = Some(parse_bool(p)?),
                    _ => from_position = Some(parse_uint(p, POSITION)?),
                }
                Ok(())
            })?;
        }
        Ok(Self { query, snapshot, from_position })
    }
}

const POSITION: &str = "a position (a number of 0 or more)";

/// The hints of the query's last FROM table, taken out of it.
fn take_table_hints(query: &mut Query) -> Vec<Expr> {
    let SetExpr::Select(select) = query.body.as_mut() else { return Vec::new() };
    let Some(from) = select.from.last_mut() else { return Vec::new() };
    let relation = match from.joins.last_mut() {
        Some(join) => &mut join.relation,
        None => &mut from.relation,
    };
    match relation {
        TableFactor::Table { with_hints, .. } => std::mem::take(with_hints),
        _ => Vec::new(),
    }
}

/// `snapshot = true|false`, `from_position = <n>` from hint expressions, with the errors the
/// option list gives.
fn options_from_hints(
    hints: Vec<Expr>,
    snapshot: &mut Option<bool>,
    from_position: &mut Option<u64>,
) -> Result<(), ParserError> {
    let expected =
        |what: &str, found: &dyn fmt::Display| ParserError::ParserError(format!("Expected: {what}, found: {found}"));
    for hint in hints {
        let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = &hint else {
            return Err(expected("one of the options snapshot, from_position", &hint));
        };
        let name = match left.as_ref() {
            Expr::Identifier(i) if i.value.eq_ignore_ascii_case("snapshot") => "snapshot",
            Expr::Identifier(i) if i.value.eq_ignore_ascii_case("from_position") => "from_position",
            other => return Err(expected("one of the options snapshot, from_position", other)),
        };
        let seen = if name == "snapshot" { snapshot.is_some() } else { from_position.is_some() };
        if seen {
            return Err(ParserError::ParserError(format!("option {name} specified more than once")));
        }
        let value = match right.as_ref() {
            Expr::Value(v) => &v.value,
            other => return Err(expected(if name == "snapshot" { "true or false" } else { POSITION }, other)),
        };
        match (name, value) {
            ("snapshot", SqlValue::Boolean(b)) => *snapshot = Some(*b),
            ("snapshot", other) => return Err(expected("true or false", other)),
            (_, SqlValue::Number(n, _)) if n.parse::<u64>().is_ok() => *from_position = n.parse().ok(),
            (_, other) => return Err(expected(POSITION, other)),
        }
    }
    Ok(())
}

fn parse_bool(p: &mut Parser<'_>) -> Result<bool, ParserError> {
    let at = p.peek_token();
    let value = match &at.token {
        Token::Word(w) if w.keyword == Keyword::TRUE => true,
        Token::Word(w) if w.keyword == Keyword::FALSE => false,
        _ => return p.expected("true or false", at),
    };
    p.next_token();
    Ok(value)
}

impl fmt::Display for Subscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SUBSCRIBE TO {}", self.query)?;
        let mut options = Vec::new();
        if let Some(s) = self.snapshot {
            options.push(format!("snapshot = {s}"));
        }
        if let Some(n) = self.from_position {
            options.push(format!("from_position = {n}"));
        }
        if !options.is_empty() {
            write!(f, " WITH ({})", options.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::test_util::parse_error;
    use crate::parser::{Statement, parse_sql};

    fn parse(sql: &str) -> Subscribe {
        match parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0).statement {
            Statement::Subscribe(s) => s,
            other => panic!("not SUBSCRIBE: {other:?}"),
        }
    }

    #[test]
    fn subscribe_parses_and_prints_back() {
        let s = parse("subscribe select id, name from t where user_id = 42");
        assert_eq!(s.to_string(), "SUBSCRIBE TO SELECT id, name FROM t WHERE user_id = 42");
        assert_eq!((s.snapshot, s.from_position), (None, None));
        let s = parse("SUBSCRIBE TO SELECT * FROM s.t WITH (from_position = 17, snapshot = false)");
        assert_eq!((s.snapshot, s.from_position), (Some(false), Some(17)));
        assert_eq!(s.to_string(), "SUBSCRIBE TO SELECT * FROM s.t WITH (snapshot = false, from_position = 17)");
        assert_eq!(parse(&s.to_string()), s);
    }

    #[test]
    fn bad_subscribe_options_are_refused() {
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WITH (snapshot = 1)").contains("true or false"));
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WITH (from_position = -1)").contains("position"));
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WITH (color = 1)").contains("snapshot, from_position"));
        assert!(
            parse_error("SUBSCRIBE SELECT * FROM t WITH (snapshot = true, snapshot = false)")
                .contains("more than once")
        );
        assert!(parse_error("SUBSCRIBE").contains("Expected"));
        // The same after a WHERE (where WITH is not a table hint).
        let s = parse("SUBSCRIBE SELECT * FROM t WHERE a = 1 WITH (snapshot = false)");
        assert_eq!((s.snapshot, s.from_position), (Some(false), None));
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WHERE a = 1 WITH (snapshot = 1)").contains("true or false"));
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WITH (from_position = 1.5)").contains("position"));
        assert!(parse_error("SUBSCRIBE SELECT * FROM t WITH (snapshot)").contains("snapshot, from_position"));
    }
}
