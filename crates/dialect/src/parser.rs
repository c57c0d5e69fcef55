//! The statement loop: splits SQL text into statements, claims the topic statements by peeking
//! at their first words, and hands everything else to DataFusion's own parser.
//!
//! sqlparser has no hook for new statements and DataFusion's `Statement` enum is closed, so we
//! wrap `DFParser` (the pattern of DataFusion's `custom_sql_parser` example) and parse our
//! statements with its public sqlparser `Parser`.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion_sql::sqlparser::ast::{Expr, ObjectName, visit_expressions};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;
use std::ops::ControlFlow;

use crate::ast::{TopicStatement, UserStatement};

/// One statement of SQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Anything DataFusion parses itself (tables, DML, SELECT, ...).
    DataFusion(Box<DFStatement>),
    /// A topic statement.
    Topic(TopicStatement),
    /// `CREATE USER`, `ALTER USER`, `DROP USER`.
    User(UserStatement),
    /// `EXPLAIN [VERBOSE] <topic statement>`
    ExplainTopic { verbose: bool, statement: TopicStatement },
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::DataFusion(s) => write!(f, "{s}"),
            Statement::Topic(s) => write!(f, "{s}"),
            Statement::User(s) => write!(f, "{s}"),
            Statement::ExplainTopic { verbose, statement } => {
                write!(f, "EXPLAIN {}{statement}", if *verbose { "VERBOSE " } else { "" })
            }
        }
    }
}

/// A parsed statement and the SQL text it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedStatement {
    pub statement: Statement,
    pub sql: String,
}

/// Parses `;`-separated SQL text into statements, in order.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    let dialect = GenericDialect {};
    let mut df = DFParserBuilder::new(sql).with_dialect(&dialect).build()?;
    let mut out = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while df.parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        let start = df.parser.peek_token();
        if start.token == Token::EOF {
            break;
        }
        if expecting_delimiter {
            return Err(df.parser.expected::<()>("end of statement", start).unwrap_err().into());
        }
        let statement = parse_statement(&mut df)?;
        let end = df.parser.peek_token();
        out.push(ParsedStatement { statement, sql: slice(sql, start.span.start, end.span.start).trim().to_owned() });
        expecting_delimiter = true;
    }
    Ok(out)
}

/// Text between two token locations (1-based lines and columns, columns counted in chars).
fn slice(
    sql: &str,
    from: datafusion_sql::sqlparser::tokenizer::Location,
    to: datafusion_sql::sqlparser::tokenizer::Location,
) -> &str {
    let offset = |loc: datafusion_sql::sqlparser::tokenizer::Location| -> usize {
        if loc.line == 0 {
            return sql.len();
        }
        let mut line = 1;
        let mut col = 1;
        for (i, c) in sql.char_indices() {
            if line == loc.line && col == loc.column {
                return i;
            }
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        sql.len()
    };
    let (a, b) = (offset(from), offset(to));
    if a <= b { &sql[a..b] } else { &sql[a..] }
}

fn parse_statement(df: &mut DFParser<'_>) -> Result<Statement> {
    let p = &mut df.parser;
    if is_word(&p.peek_token().token, "EXPLAIN") && claims(p, 1) {
        p.next_token();
        let verbose = p.parse_keyword(Keyword::VERBOSE);
        let statement = TopicStatement::parse(p)?;
        return Ok(Statement::ExplainTopic { verbose, statement });
    }
    if claims(p, 0) {
        return Ok(Statement::Topic(TopicStatement::parse(p)?));
    }
    if claims_user(p) {
        return Ok(Statement::User(UserStatement::parse(p)?));
    }
    let mut statement = df.parse_statement()?;
    normalize_types(&mut statement);
    Ok(Statement::DataFusion(Box::new(statement)))
}

/// `BLOB` columns are `BYTEA` (DataFusion's planner knows only the latter).
fn normalize_types(statement: &mut DFStatement) {
    use datafusion_sql::sqlparser::ast::{DataType, Statement as SQLStatement};
    if let DFStatement::Statement(s) = statement
        && let SQLStatement::CreateTable(create) = s.as_mut()
    {
        for column in &mut create.columns {
            if matches!(column.data_type, DataType::Blob(_)) {
                column.data_type = DataType::Bytea;
            }
        }
    }
}

/// Whether the statement starting `at` tokens ahead (after an optional VERBOSE) is ours.
fn claims(p: &Parser<'_>, mut at: usize) -> bool {
    if at > 0 && is_word(&p.peek_nth_token(at).token, "VERBOSE") {
        at += 1;
    }
    let w = |n: usize| p.peek_nth_token(at + n).token;
    let first = w(0);
    let second = w(1);
    (is_word(&first, "CREATE") && is_word(&second, "TOPIC"))
        || (is_word(&first, "DROP") && (is_word(&second, "TOPIC") || is_word(&second, "CONSUMER")))
        || (is_word(&first, "CLEAR") && is_word(&second, "TOPIC"))
        || (is_word(&first, "ALTER") && is_word(&second, "TOPIC"))
        || (is_word(&first, "SHOW") && is_word(&second, "TOPICS"))
        || (is_word(&first, "RESET") && is_word(&second, "CONSUMER"))
        || is_word(&first, "CONSUME")
        || is_word(&first, "ACK")
}

/// Whether the statement is `CREATE|ALTER|DROP USER` (sqlparser has its own `CREATE USER`, which
/// DataFusion cannot plan).
fn claims_user(p: &Parser<'_>) -> bool {
    let first = p.peek_nth_token(0).token;
    (is_word(&first, "CREATE") || is_word(&first, "ALTER") || is_word(&first, "DROP"))
        && is_word(&p.peek_nth_token(1).token, "USER")
}

/// An unquoted word equal to `word`, ignoring case (keyword or not).
pub(crate) fn is_word(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Consumes the next token if it is the word `word`.
pub(crate) fn parse_word(p: &mut Parser<'_>, word: &str) -> bool {
    if is_word(&p.peek_token().token, word) {
        p.next_token();
        true
    } else {
        false
    }
}

/// Consumes the word `word` or fails naming what was found.
pub(crate) fn expect_word(p: &mut Parser<'_>, word: &str) -> Result<(), ParserError> {
    if parse_word(p, word) { Ok(()) } else { p.expected(word, p.peek_token()) }
}

/// Consumes `a b ...` or nothing.
pub(crate) fn parse_words(p: &mut Parser<'_>, words: &[&str]) -> bool {
    let all = words.iter().enumerate().all(|(i, w)| is_word(&p.peek_nth_token(i).token, w));
    if all {
        for _ in words {
            p.next_token();
        }
    }
    all
}

/// A non-negative integer literal; `what` names it in the error.
pub(crate) fn parse_uint(p: &mut Parser<'_>, what: &str) -> Result<u64, ParserError> {
    match p.peek_token().token {
        Token::Number(_, _) => p.parse_literal_uint(),
        _ => p.expected(what, p.peek_token()),
    }
}

/// A positive integer literal (zero is an error naming the token).
pub(crate) fn parse_positive(p: &mut Parser<'_>, what: &str) -> Result<u64, ParserError> {
    let at = p.peek_token();
    let n = parse_uint(p, what)?;
    if n == 0 {
        return p.expected(what, at);
    }
    Ok(n)
}

/// A single-quoted string literal.
pub(crate) fn parse_string(p: &mut Parser<'_>, what: &str) -> Result<String, ParserError> {
    match p.peek_token().token {
        Token::SingleQuotedString(_) => p.parse_literal_string(),
        _ => p.expected(what, p.peek_token()),
    }
}

/// The longest consumer-group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 255;

/// A consumer-group name: a non-empty string literal of at most 255 bytes.
pub(crate) fn parse_group_name(p: &mut Parser<'_>) -> Result<String, ParserError> {
    let at = p.peek_token();
    let name = parse_string(p, "a group name in single quotes")?;
    if name.is_empty() || name.len() > MAX_GROUP_NAME_BYTES {
        return p.expected("a group name of 1 to 255 bytes", at);
    }
    Ok(name)
}

/// A topic or table name.
pub(crate) fn parse_name(p: &mut Parser<'_>, what: &str) -> Result<ObjectName, ParserError> {
    match p.peek_token().token {
        Token::Word(_) => p.parse_object_name(false),
        _ => p.expected(what, p.peek_token()),
    }
}

/// A row-filter expression: no subqueries (a route is evaluated on the changed rows alone).
pub(crate) fn parse_row_expr(p: &mut Parser<'_>, clause: &str) -> Result<Expr, ParserError> {
    let expr = p.parse_expr()?;
    let has_subquery = visit_expressions(&expr, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if has_subquery.is_break() {
        return Err(ParserError::ParserError(format!("{clause} of a topic source cannot contain a subquery: {expr}")));
    }
    Ok(expr)
}

/// `( name = value [, ...] )` where `parse_value` parses the value of a known name.
pub(crate) fn parse_options<T>(
    p: &mut Parser<'_>,
    known: &[&str],
    mut parse_value: impl FnMut(&mut Parser<'_>, &str) -> Result<T, ParserError>,
) -> Result<Vec<T>, ParserError> {
    p.expect_token(&Token::LParen)?;
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    loop {
        let at = p.peek_token();
        let name = match &at.token {
            Token::Word(w) if known.iter().any(|k| k.eq_ignore_ascii_case(&w.value)) => w.value.to_ascii_lowercase(),
            _ => return p.expected(&format!("one of the options {}", known.join(", ")), at),
        };
        if seen.contains(&name) {
            return Err(ParserError::ParserError(format!("option {name} specified more than once{}", at.span.start)));
        }
        p.next_token();
        p.expect_token(&Token::Eq)?;
        out.push(parse_value(p, &name)?);
        seen.push(name);
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_topic_statements_mix_in_order() {
        let sql =
            "CREATE TABLE t (id INT PRIMARY KEY);\n create topic ev ; ALTER TOPIC ev ADD SOURCE t ON INSERT;;SELECT 1";
        let stmts = parse_sql(sql).unwrap();
        let texts: Vec<&str> = stmts.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            texts,
            [
                "CREATE TABLE t (id INT PRIMARY KEY)",
                "create topic ev",
                "ALTER TOPIC ev ADD SOURCE t ON INSERT",
                "SELECT 1"
            ]
        );
        assert!(matches!(stmts[0].statement, Statement::DataFusion(_)));
        assert!(matches!(stmts[1].statement, Statement::Topic(TopicStatement::CreateTopic(_))));
        assert!(matches!(stmts[3].statement, Statement::DataFusion(_)));
    }

    #[test]
    fn explain_of_a_topic_statement() {
        let stmts = parse_sql("EXPLAIN VERBOSE DROP TOPIC x").unwrap();
        let Statement::ExplainTopic { verbose, statement } = &stmts[0].statement else { panic!() };
        assert!(*verbose);
        assert_eq!(statement.to_string(), "DROP TOPIC x");
        assert_eq!(stmts[0].statement.to_string(), "EXPLAIN VERBOSE DROP TOPIC x");
        // EXPLAIN of anything else stays DataFusion's.
        assert!(matches!(parse_sql("EXPLAIN SELECT 1").unwrap()[0].statement, Statement::DataFusion(_)));
    }

    #[test]
    fn a_missing_semicolon_is_an_error() {
        let err = parse_sql("CREATE TOPIC a CREATE TOPIC b").unwrap_err().to_string();
        assert!(err.contains("Expected: end of statement, found: CREATE"), "{err}");
    }

    #[test]
    fn quoted_words_are_not_claimed() {
        // A quoted "TOPIC" is an identifier, so this is DataFusion's CREATE ... statement.
        let err = parse_sql("CREATE \"TOPIC\" x").unwrap_err().to_string();
        assert!(!err.contains("topic name"), "{err}");
        assert!(parse_sql("SELECT 1 AS consume").is_ok());
    }
}
