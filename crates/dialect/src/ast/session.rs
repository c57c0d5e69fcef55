//! Statements of a client session that sqlparser does not read the way PostgreSQL writes them:
//! `FETCH` and `MOVE` on a cursor (PostgreSQL's full grammar: the direction and `FROM`/`IN` are
//! optional), a cursor over a live query (`DECLARE c CURSOR FOR SUBSCRIBE ...`: psycopg's
//! server-side cursors), and `UNLISTEN` (drivers' connection pools send it on release). `DECLARE`
//! of a query, `CLOSE`, `DISCARD`, `SET`, `SHOW` and `RESET` are sqlparser's own.
//!
//! ```text
//! FETCH [ <direction> ] [ FROM | IN ] <cursor>
//! MOVE  [ <direction> ] [ FROM | IN ] <cursor>
//! <direction> ::= NEXT | PRIOR | FIRST | LAST | ABSOLUTE <n> | RELATIVE <n> | <n> | ALL
//!               | FORWARD [ <n> | ALL ] | BACKWARD [ <n> | ALL ]
//! DECLARE <cursor> [ BINARY ] [ ASENSITIVE | INSENSITIVE ] [ [ NO ] SCROLL ] CURSOR
//!     [ { WITH | WITHOUT } HOLD ] FOR SUBSCRIBE ...      (the options in any order)
//! UNLISTEN { <channel> | * }
//! ```

use std::fmt;

use datafusion_sql::sqlparser::ast::Ident;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use crate::ast::Subscribe;
use crate::parser::{expect_word, is_word, parse_word};

/// Which rows a FETCH or MOVE reads, counted from the cursor's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum CursorDirection {
    /// `NEXT` (also a FETCH without direction): one row.
    Next,
    Prior,
    First,
    Last,
    Absolute(i64),
    Relative(i64),
    /// `FORWARD n`, or a bare count `n`.
    Forward(i64),
    /// `ALL`, `FORWARD ALL`.
    ForwardAll,
    /// `BACKWARD [n]`.
    Backward(i64),
    BackwardAll,
}

impl CursorDirection {
    /// How many rows a forward-only cursor moves, or `None` for a direction that needs a
    /// scrollable cursor (backward or absolute moves). `u64::MAX`: every remaining row.
    pub fn forward_rows(self) -> Option<u64> {
        match self {
            CursorDirection::Next => Some(1),
            CursorDirection::Forward(n) | CursorDirection::Relative(n) if n >= 0 => Some(n as u64),
            CursorDirection::ForwardAll => Some(u64::MAX),
            _ => None,
        }
    }
}

impl fmt::Display for CursorDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorDirection::Next => f.write_str("NEXT"),
            CursorDirection::Prior => f.write_str("PRIOR"),
            CursorDirection::First => f.write_str("FIRST"),
            CursorDirection::Last => f.write_str("LAST"),
            CursorDirection::Absolute(n) => write!(f, "ABSOLUTE {n}"),
            CursorDirection::Relative(n) => write!(f, "RELATIVE {n}"),
            CursorDirection::Forward(n) => write!(f, "FORWARD {n}"),
            CursorDirection::ForwardAll => f.write_str("FORWARD ALL"),
            CursorDirection::Backward(n) => write!(f, "BACKWARD {n}"),
            CursorDirection::BackwardAll => f.write_str("BACKWARD ALL"),
        }
    }
}

/// A session statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum SessionStatement {
    /// `FETCH` (`rows`: return the rows) or `MOVE` (only move the cursor).
    Fetch { rows: bool, direction: CursorDirection, cursor: Ident },
    /// `DECLARE cursor CURSOR [WITH HOLD] FOR SUBSCRIBE ...`: a cursor whose FETCH returns the
    /// live query's rows as they come (waiting for the first one).
    /// `binary` and `scroll` are parsed so that the engine can refuse them as not supported.
    DeclareSubscribe { cursor: Ident, hold: bool, binary: bool, scroll: bool, subscribe: Subscribe },
    /// `UNLISTEN channel` or `UNLISTEN *` (`None`).
    Unlisten { channel: Option<Ident> },
}

/// The most words between `DECLARE <name>` and `FOR` (`BINARY INSENSITIVE NO SCROLL CURSOR
/// WITHOUT HOLD`, and one to spare).
const MAX_DECLARE_WORDS: usize = 8;

impl SessionStatement {
    /// Whether the statement ahead is one of these.
    pub fn claims(p: &Parser<'_>) -> bool {
        let first = p.peek_token().token;
        is_word(&first, "FETCH") || is_word(&first, "MOVE") || is_word(&first, "UNLISTEN") || declares_subscribe(p)
    }

    pub fn parse(p: &mut Parser<'_>) -> datafusion_common::Result<Self> {
        if parse_word(p, "DECLARE") {
            return parse_declare_subscribe(p);
        }
        if parse_word(p, "UNLISTEN") {
            if p.consume_token(&Token::Mul) {
                return Ok(SessionStatement::Unlisten { channel: None });
            }
            return Ok(SessionStatement::Unlisten { channel: Some(p.parse_identifier()?) });
        }
        let rows = if parse_word(p, "FETCH") {
            true
        } else {
            expect_word(p, "MOVE")?;
            false
        };
        let direction = parse_direction(p)?;
        if !parse_word(p, "FROM") {
            parse_word(p, "IN");
        }
        let cursor = p.parse_identifier()?;
        Ok(SessionStatement::Fetch { rows, direction, cursor })
    }
}

/// Whether the statement ahead is `DECLARE <name> ... CURSOR ... FOR SUBSCRIBE` (a DECLARE of
/// a query is sqlparser's).
fn declares_subscribe(p: &Parser<'_>) -> bool {
    if !is_word(&p.peek_nth_token(0).token, "DECLARE") {
        return false;
    }
    (2..2 + MAX_DECLARE_WORDS + 1)
        .any(|at| is_word(&p.peek_nth_token(at).token, "FOR") && is_word(&p.peek_nth_token(at + 1).token, "SUBSCRIBE"))
}

/// The rest of `DECLARE <name> ... CURSOR ... FOR SUBSCRIBE ...` after `DECLARE`.
fn parse_declare_subscribe(p: &mut Parser<'_>) -> datafusion_common::Result<SessionStatement> {
    let cursor = p.parse_identifier()?;
    let (mut binary, mut scroll) = (false, false);
    // Each option once, as PostgreSQL has it (`SCROLL NO SCROLL` is an error there).
    let (mut binary_set, mut scroll_set, mut sensitivity_set) = (false, false, false);
    let once = |set: &mut bool| {
        let first = !*set;
        *set = true;
        if first { Ok(()) } else { Err(ParserError::ParserError("conflicting or redundant DECLARE options".into())) }
    };
    loop {
        if parse_word(p, "BINARY") {
            once(&mut binary_set)?;
            binary = true;
        } else if parse_word(p, "NO") {
            expect_word(p, "SCROLL")?;
            once(&mut scroll_set)?;
            scroll = false;
        } else if parse_word(p, "SCROLL") {
            once(&mut scroll_set)?;
            scroll = true;
        } else if parse_word(p, "ASENSITIVE") || parse_word(p, "INSENSITIVE") {
            once(&mut sensitivity_set)?;
        } else {
            expect_word(p, "CURSOR")?;
            break;
        }
    }
    let hold = if parse_word(p, "WITH") {
        expect_word(p, "HOLD")?;
        true
    } else {
        if parse_word(p, "WITHOUT") {
            expect_word(p, "HOLD")?;
        }
        false
    };
    expect_word(p, "FOR")?;
    let subscribe = Subscribe::parse(p)?;
    Ok(SessionStatement::DeclareSubscribe { cursor, hold, binary, scroll, subscribe })
}

/// A direction, or `NEXT` when the next word is already the cursor's name (or `FROM`/`IN`).
fn parse_direction(p: &mut Parser<'_>) -> Result<CursorDirection, ParserError> {
    let count = |p: &mut Parser<'_>| -> Result<i64, ParserError> {
        let negative = p.consume_token(&Token::Minus);
        let at = p.peek_token();
        let n = match &at.token {
            Token::Number(n, _) => n.parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) => {
                p.next_token();
                Ok(if negative { -n } else { n })
            }
            None => p.expected("a row count", at),
        }
    };
    let starts_count = |p: &Parser<'_>| matches!(p.peek_token().token, Token::Number(..) | Token::Minus);
    let direction = if parse_word(p, "NEXT") {
        CursorDirection::Next
    } else if parse_word(p, "PRIOR") {
        CursorDirection::Prior
    } else if parse_word(p, "FIRST") {
        CursorDirection::First
    } else if parse_word(p, "LAST") {
        CursorDirection::Last
    } else if parse_word(p, "ABSOLUTE") {
        CursorDirection::Absolute(count(p)?)
    } else if parse_word(p, "RELATIVE") {
        CursorDirection::Relative(count(p)?)
    } else if parse_word(p, "ALL") {
        CursorDirection::ForwardAll
    } else if parse_word(p, "FORWARD") {
        if parse_word(p, "ALL") {
            CursorDirection::ForwardAll
        } else if starts_count(p) {
            CursorDirection::Forward(count(p)?)
        } else {
            CursorDirection::Next
        }
    } else if parse_word(p, "BACKWARD") {
        if parse_word(p, "ALL") {
            CursorDirection::BackwardAll
        } else if starts_count(p) {
            CursorDirection::Backward(count(p)?)
        } else {
            CursorDirection::Prior
        }
    } else if starts_count(p) {
        CursorDirection::Forward(count(p)?)
    } else {
        CursorDirection::Next
    };
    Ok(direction)
}

impl fmt::Display for SessionStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionStatement::Fetch { rows, direction, cursor } => {
                write!(f, "{} {direction} FROM {cursor}", if *rows { "FETCH" } else { "MOVE" })
            }
            SessionStatement::DeclareSubscribe { cursor, hold, binary, scroll, subscribe } => {
                let binary = if *binary { "BINARY " } else { "" };
                let scroll = if *scroll { "SCROLL" } else { "NO SCROLL" };
                let hold = if *hold { "WITH" } else { "WITHOUT" };
                write!(f, "DECLARE {cursor} {binary}{scroll} CURSOR {hold} HOLD FOR {subscribe}")
            }
            SessionStatement::Unlisten { channel: Some(c) } => write!(f, "UNLISTEN {c}"),
            SessionStatement::Unlisten { channel: None } => f.write_str("UNLISTEN *"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{Statement, parse_sql};

    fn session(sql: &str) -> SessionStatement {
        match parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0).statement {
            Statement::Session(s) => s,
            other => panic!("not a session statement: {other:?}"),
        }
    }

    /// Parses `sql`, checks it prints as `canonical` and that `canonical` reparses to it.
    fn parses_to(sql: &str, canonical: &str) {
        let s = session(sql);
        assert_eq!(s.to_string(), canonical, "{sql}");
        assert_eq!(session(canonical), s, "{canonical}");
    }

    #[test]
    fn fetch_and_move_in_every_form_drivers_send() {
        // psycopg2's named cursors, asyncpg's cursor.forward(), psql's FETCH_COUNT.
        parses_to("FETCH FORWARD 2000 FROM \"c_1\"", "FETCH FORWARD 2000 FROM \"c_1\"");
        parses_to("MOVE FORWARD 5 __asyncpg_portal_3__", "MOVE FORWARD 5 FROM __asyncpg_portal_3__");
        parses_to("fetch c", "FETCH NEXT FROM c");
        parses_to("FETCH 10 IN c", "FETCH FORWARD 10 FROM c");
        parses_to("fetch all from c", "FETCH FORWARD ALL FROM c");
        parses_to("FETCH FORWARD c", "FETCH NEXT FROM c");
        parses_to("FETCH BACKWARD 2 c", "FETCH BACKWARD 2 FROM c");
        parses_to("FETCH -1 FROM c", "FETCH FORWARD -1 FROM c");
        parses_to("MOVE ABSOLUTE 3 IN c", "MOVE ABSOLUTE 3 FROM c");
        parses_to("FETCH RELATIVE 0 FROM c", "FETCH RELATIVE 0 FROM c");
        assert_eq!(CursorDirection::Next.forward_rows(), Some(1));
        assert_eq!(CursorDirection::Forward(7).forward_rows(), Some(7));
        assert_eq!(CursorDirection::ForwardAll.forward_rows(), Some(u64::MAX));
        assert_eq!(CursorDirection::Backward(1).forward_rows(), None);
        assert_eq!(CursorDirection::Forward(-1).forward_rows(), None);
    }

    #[test]
    fn unlisten() {
        parses_to("UNLISTEN *", "UNLISTEN *");
        parses_to("unlisten chan", "UNLISTEN chan");
    }

    #[test]
    fn cursors_over_a_live_query_in_the_forms_drivers_send() {
        // psycopg2's named cursor, psycopg 3's ServerCursor, by hand.
        parses_to(
            "DECLARE \"c_1\" CURSOR WITHOUT HOLD FOR SUBSCRIBE SELECT id FROM t WHERE k = 1",
            "DECLARE \"c_1\" NO SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE TO SELECT id FROM t WHERE k = 1",
        );
        parses_to(
            "declare c no scroll cursor with hold for subscribe to select * from t with (snapshot = false)",
            "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SUBSCRIBE TO SELECT * FROM t WITH (snapshot = false)",
        );
        parses_to(
            "DECLARE c ASENSITIVE CURSOR FOR SUBSCRIBE SELECT a FROM t",
            "DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE TO SELECT a FROM t",
        );
        // A DECLARE of a query stays sqlparser's.
        assert!(matches!(
            parse_sql("DECLARE c CURSOR FOR SELECT 1").unwrap().remove(0).statement,
            Statement::DataFusion(_)
        ));
        // Options in any order; BINARY and SCROLL parse (the engine refuses them).
        parses_to(
            "DECLARE c NO SCROLL BINARY INSENSITIVE CURSOR WITH HOLD FOR SUBSCRIBE SELECT a FROM t",
            "DECLARE c BINARY NO SCROLL CURSOR WITH HOLD FOR SUBSCRIBE TO SELECT a FROM t",
        );
        parses_to(
            "DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE SELECT a FROM t",
            "DECLARE c BINARY NO SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE TO SELECT a FROM t",
        );
        parses_to(
            "DECLARE c SCROLL CURSOR FOR SUBSCRIBE SELECT a FROM t",
            "DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SUBSCRIBE TO SELECT a FROM t",
        );
        for (sql, expected) in [
            ("DECLARE c NO CURSOR FOR SUBSCRIBE SELECT a FROM t", "SCROLL"),
            ("DECLARE c SCROLL NO SCROLL CURSOR FOR SUBSCRIBE SELECT a FROM t", "conflicting or redundant"),
            ("DECLARE c ASENSITIVE INSENSITIVE CURSOR FOR SUBSCRIBE SELECT a FROM t", "conflicting or redundant"),
            ("DECLARE c BINARY BINARY CURSOR FOR SUBSCRIBE SELECT a FROM t", "conflicting or redundant"),
            ("DECLARE c CURSOR WITH FOR SUBSCRIBE SELECT a FROM t", "HOLD"),
            ("DECLARE c CURSOR FOR SUBSCRIBE", "Expected"),
            ("DECLARE c CURSOR FOR SUBSCRIBE SELECT a FROM t WITH (snapshot = 3)", "true or false"),
        ] {
            let err = parse_sql(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }

    #[test]
    fn bad_fetches_are_errors() {
        for (sql, expected) in [
            ("FETCH FORWARD 2 FROM", "identifier"),
            ("FETCH ABSOLUTE FROM c", "a row count"),
            ("FETCH 2 FROM c d", "end of statement"),
            ("MOVE", "identifier"),
        ] {
            let err = parse_sql(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }
}
