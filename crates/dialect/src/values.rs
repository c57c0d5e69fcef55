//! A scanner for the commonest bulk statement, `INSERT INTO <name> [(<columns>)] VALUES (<literal>,
//! ...), ...`, that reads the text once without tokenizing it and without sqlparser's per-cell
//! work (its prefix parser first tries every literal as a type name and formats the error).
//! Databend's fast VALUES decoder does the same.
//!
//! It takes a deliberately small language and answers `None` for anything else, which then goes
//! to the full parser: ASCII whitespace; unquoted ASCII identifiers (not the words INSERT may
//! treat as clauses) or double-quoted ones without `""`; number literals `[-]digits[.digits]`;
//! single-quoted strings (with `''`); `NULL`, `TRUE`, `FALSE`; one statement, optionally ended by
//! `;`. No comments, `DEFAULT`, expressions, typed or prefixed strings, exponents, or clauses
//! after the rows. Where it answers, its answer is what sqlparser's AST holds (the property test
//! in `proptests.rs` checks it against sqlparser).

use std::borrow::Cow;

use datafusion_sql::sqlparser::ast::{Expr, Ident, ObjectName, UnaryOperator, Value, ValueWithSpan};

/// One literal cell of a VALUES row, as the SQL text spells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal<'a> {
    Null,
    /// A number: its digits (`123`, `1.50`) and whether a minus sign precedes them.
    Number {
        negative: bool,
        digits: &'a str,
    },
    String(Cow<'a, str>),
    Boolean(bool),
}

/// An `INSERT ... VALUES` of literal rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ValuesInsert<'a> {
    pub table: ObjectName,
    /// The named columns; empty when the statement names none.
    pub columns: Vec<Ident>,
    /// The cells, row after row, `width` per row (every row has the same width).
    pub cells: Vec<Literal<'a>>,
    pub width: usize,
    /// The statement's text without the final `;` (what [`crate::ParsedStatement::sql`] holds).
    pub sql: &'a str,
}

/// A parsed expression as a [`Literal`], when it is one (a minus sign only before a number).
pub fn literal_of(e: &Expr) -> Option<Literal<'_>> {
    let (negative, value) = match e {
        Expr::Value(ValueWithSpan { value, .. }) => (false, value),
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match expr.as_ref() {
            Expr::Value(ValueWithSpan { value: v @ Value::Number(..), .. }) => (true, v),
            _ => return None,
        },
        _ => return None,
    };
    Some(match value {
        Value::Null => Literal::Null,
        Value::Number(digits, false) if !negative || !digits.starts_with('-') => {
            Literal::Number { negative, digits: digits.as_str() }
        }
        Value::SingleQuotedString(s) => Literal::String(Cow::Borrowed(s)),
        Value::Boolean(b) => Literal::Boolean(*b),
        _ => return None,
    })
}

/// Words that may follow `INSERT INTO` or the table name as clauses rather than names (`local`
/// and `directory` start Hive's `INSERT INTO LOCAL DIRECTORY`): an identifier spelled like one is
/// left to the full parser. `the_values_scanner_agrees_with_sqlparser_on_every_keyword` tries
/// every sqlparser keyword in every place of a name.
const CLAUSE_WORDS: &[&str] = &[
    "as",
    "default",
    "directory",
    "format",
    "ignore",
    "insert",
    "into",
    "local",
    "output",
    "overwrite",
    "partition",
    "select",
    "set",
    "settings",
    "table",
    "values",
    "with",
];

/// `sql` as a literal `INSERT ... VALUES`, or `None` when it is anything else (or anything this
/// scanner does not read exactly as sqlparser would).
pub fn scan_values_insert(sql: &str) -> Option<ValuesInsert<'_>> {
    let mut s = Scanner { text: sql.as_bytes(), pos: 0 };
    s.skip_space();
    let start = s.pos;
    if !s.keyword("insert") || !s.keyword("into") {
        return None;
    }
    let mut parts = vec![s.ident()?];
    while s.eat(b'.') {
        parts.push(s.ident()?);
    }
    let mut columns = Vec::new();
    if s.eat(b'(') {
        s.list(&mut columns, Scanner::ident)?;
    }
    if !s.keyword("values") {
        return None;
    }
    let mut cells = Vec::new();
    let mut width = 0;
    loop {
        if !s.eat(b'(') {
            return None;
        }
        let row_start = cells.len();
        s.list(&mut cells, Scanner::literal)?;
        let row_width = cells.len() - row_start;
        if width == 0 {
            width = row_width;
        } else if row_width != width {
            return None;
        }
        if !s.eat(b',') {
            break;
        }
    }
    let end = s.pos;
    s.eat(b';');
    s.skip_space();
    if s.pos != sql.len() {
        return None;
    }
    Some(ValuesInsert { table: ObjectName::from(parts), columns, cells, width, sql: sql[start..end].trim_end() })
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn skip_space(&mut self) {
        while self.text.get(self.pos).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The items of a parenthesized list whose `(` is consumed, through its `)`.
    fn list<T>(&mut self, out: &mut Vec<T>, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<()> {
        loop {
            out.push(item(self)?);
            if self.eat(b')') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// Consumes `byte` (after whitespace) if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        if self.text.get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// The next bare word (after whitespace), not consumed: `[A-Za-z_][A-Za-z0-9_]*` ending at a
    /// character that cannot continue an identifier (else `None`).
    fn peek_word(&mut self) -> Option<&'a str> {
        self.skip_space();
        let rest = &self.text[self.pos..];
        if !rest.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') {
            return None;
        }
        let len = rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(rest.len());
        // `$`, `#`, `@` and non-ASCII letters continue identifiers in sqlparser's generic dialect.
        if rest.get(len).is_some_and(|b| matches!(b, b'$' | b'#' | b'@') || !b.is_ascii()) {
            return None;
        }
        std::str::from_utf8(&rest[..len]).ok()
    }

    fn keyword(&mut self, word: &str) -> bool {
        match self.peek_word() {
            Some(w) if w.eq_ignore_ascii_case(word) => {
                self.pos += w.len();
                true
            }
            _ => false,
        }
    }

    fn ident(&mut self) -> Option<Ident> {
        self.skip_space();
        if self.text.get(self.pos) == Some(&b'"') {
            let rest = &self.text[self.pos + 1..];
            let len = rest.iter().position(|b| *b == b'"')?;
            if len == 0 || rest.get(len + 1) == Some(&b'"') {
                return None;
            }
            let value = std::str::from_utf8(&rest[..len]).ok()?;
            self.pos += len + 2;
            return Some(Ident::with_quote('"', value));
        }
        let word = self.peek_word()?;
        if CLAUSE_WORDS.iter().any(|k| word.eq_ignore_ascii_case(k)) {
            return None;
        }
        self.pos += word.len();
        Some(Ident::new(word))
    }

    fn literal(&mut self) -> Option<Literal<'a>> {
        self.skip_space();
        let rest = &self.text[self.pos..];
        match rest.first()? {
            b'\'' => {
                let mut i = 1;
                let mut owned: Option<String> = None;
                let mut from = 1;
                loop {
                    let q = i + rest[i..].iter().position(|b| *b == b'\'')?;
                    if rest.get(q + 1) == Some(&b'\'') {
                        let part = std::str::from_utf8(&rest[from..=q]).ok()?;
                        owned.get_or_insert_with(String::new).push_str(part);
                        i = q + 2;
                        from = i;
                        continue;
                    }
                    let last = std::str::from_utf8(&rest[from..q]).ok()?;
                    self.pos += q + 1;
                    let value = match owned {
                        Some(mut s) => {
                            s.push_str(last);
                            Cow::Owned(s)
                        }
                        None => Cow::Borrowed(last),
                    };
                    return self.ends_cell().then_some(Literal::String(value));
                }
            }
            b'-' | b'0'..=b'9' => {
                let negative = rest[0] == b'-';
                let digits_start = usize::from(negative);
                let int = rest[digits_start..].iter().take_while(|b| b.is_ascii_digit()).count();
                if int == 0 {
                    return None;
                }
                let mut len = digits_start + int;
                if rest.get(len) == Some(&b'.') {
                    let frac = rest[len + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                    if frac == 0 {
                        return None;
                    }
                    len += 1 + frac;
                }
                let digits = std::str::from_utf8(&rest[digits_start..len]).ok()?;
                self.pos += len;
                self.ends_cell().then_some(Literal::Number { negative, digits })
            }
            _ => {
                let word = self.peek_word()?;
                let literal = if word.eq_ignore_ascii_case("null") {
                    Literal::Null
                } else if word.eq_ignore_ascii_case("true") {
                    Literal::Boolean(true)
                } else if word.eq_ignore_ascii_case("false") {
                    Literal::Boolean(false)
                } else {
                    return None;
                };
                self.pos += word.len();
                self.ends_cell().then_some(literal)
            }
        }
    }

    /// A cell ends at `,` or `)` (after whitespace), which are left for the caller.
    fn ends_cell(&mut self) -> bool {
        self.skip_space();
        matches!(self.text.get(self.pos), Some(b',' | b')'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(sql: &str) -> Option<Vec<Literal<'_>>> {
        scan_values_insert(sql).map(|v| v.cells)
    }

    #[test]
    fn reads_literal_rows() {
        let v = scan_values_insert(" insert INTO s.\"T\" (id, \"Name\") VALUES (1, 'a''b'),(-2.50,NULL) ; ").unwrap();
        assert_eq!(v.table, ObjectName::from(vec![Ident::new("s"), Ident::with_quote('"', "T")]));
        assert_eq!(v.columns, vec![Ident::new("id"), Ident::with_quote('"', "Name")]);
        assert_eq!(v.width, 2);
        assert_eq!(v.cells.len() / v.width, 2);
        assert_eq!(v.sql, "insert INTO s.\"T\" (id, \"Name\") VALUES (1, 'a''b'),(-2.50,NULL)");
        assert_eq!(
            v.cells,
            vec![
                Literal::Number { negative: false, digits: "1" },
                Literal::String("a'b".into()),
                Literal::Number { negative: true, digits: "2.50" },
                Literal::Null,
            ]
        );
        assert_eq!(cells("INSERT INTO t VALUES (TRUE, false, 'é\\n')").unwrap()[2], Literal::String("é\\n".into()));
    }

    #[test]
    fn leaves_everything_else_to_the_parser() {
        for sql in [
            "INSERT INTO t VALUES (1 + 1)",
            "INSERT INTO t VALUES (1e5)",
            "INSERT INTO t VALUES (1.)",
            "INSERT INTO t VALUES (.5)",
            "INSERT INTO t VALUES (- 1)",
            "INSERT INTO t VALUES (--1\n)",
            "INSERT INTO t VALUES (1), (1, 2)",
            "INSERT INTO t VALUES (DEFAULT)",
            "INSERT INTO t VALUES (DATE '2020-01-01')",
            "INSERT INTO t VALUES (E'x')",
            "INSERT INTO t VALUES ('a' 'b')",
            "INSERT INTO t VALUES (1) RETURNING id",
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
            "INSERT INTO t VALUES (1) /* c */",
            "INSERT INTO t SELECT 1",
            "INSERT INTO TABLE t VALUES (1)",
            "INSERT INTO t AS x VALUES (1)",
            "INSERT INTO t$ VALUES (1)",
            "INSERT INTO \"a\"\"b\" VALUES (1)",
            "INSERT INTO t VALUES ()",
            "INSERT INTO t VALUES ('unterminated)",
            "INSERT OR REPLACE INTO t VALUES (1)",
            "INSERT INTO t VALUES (1),",
        ] {
            assert_eq!(scan_values_insert(sql), None, "{sql}");
        }
    }
}
