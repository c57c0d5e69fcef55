//! The statement loop: splits SQL text into statements, claims the topic statements by peeking
//! at their first words, and hands everything else to DataFusion's own parser.
//!
//! sqlparser has no hook for new statements and DataFusion's `Statement` enum is closed, so we
//! wrap `DFParser` (the pattern of DataFusion's `custom_sql_parser` example) and parse our
//! statements with its public sqlparser `Parser`.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion_sql::sqlparser::ast::{
    Expr, ObjectName, Query, Statement as SqlStatement, Value, Visit, VisitMut, Visitor, VisitorMut, visit_expressions,
};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;
use std::ops::ControlFlow;

use crate::ast::{
    ClusterStatement, CopySource, CopyStatement, CopyTo, SessionStatement, Subscribe, TopicStatement, UserStatement,
};

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
    /// `COPY <table> FROM '<file>' | STDIN ...`, `COPY ... TO STDOUT ...`
    Copy(CopyStatement),
    /// `FETCH`, `MOVE`, `UNLISTEN`.
    Session(SessionStatement),
    /// `ALTER CLUSTER ADD|REMOVE NODE`.
    Cluster(ClusterStatement),
    /// `SUBSCRIBE [TO] <query> [WITH (...)]`: a live query.
    Subscribe(Subscribe),
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::DataFusion(s) => write!(f, "{s}"),
            Statement::Topic(s) => write!(f, "{s}"),
            Statement::User(s) => write!(f, "{s}"),
            Statement::Copy(s) => write!(f, "{s}"),
            Statement::Session(s) => write!(f, "{s}"),
            Statement::Cluster(s) => write!(f, "{s}"),
            Statement::Subscribe(s) => write!(f, "{s}"),
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
    Statements::new(sql)?.collect()
}

static DIALECT: GenericDialect = GenericDialect {};

/// The statements of SQL text, parsed one at a time (so a caller can run each before the next
/// is parsed, and numbers a parse error by its statement). Time and memory are linear in the
/// text: the tokens of the whole text, one statement's AST at a time.
pub struct Statements<'a> {
    df: DFParser<'a>,
    text: TextCursor<'a>,
    done: bool,
}

impl<'a> Statements<'a> {
    /// Tokenizes `sql`; an error here (an unterminated string, say) concerns the whole text.
    pub fn new(sql: &'a str) -> Result<Self> {
        let df = DFParserBuilder::new(sql).with_dialect(&DIALECT).build()?;
        Ok(Self { df, text: TextCursor::new(sql), done: false })
    }

    /// The next statement. A statement counts only when it ends at a `;` or at the end of the
    /// text: `INSERT ... VALUES (1) SELECT 2` is an error before anything of it runs (a caller
    /// that runs each statement as it comes never runs half of a request).
    fn next_statement(&mut self) -> Result<Option<ParsedStatement>> {
        while self.df.parser.consume_token(&Token::SemiColon) {}
        let start = self.df.parser.peek_token();
        if start.token == Token::EOF {
            return Ok(None);
        }
        let statement = parse_statement(&mut self.df)?;
        let end = self.df.parser.peek_token();
        if !matches!(end.token, Token::SemiColon | Token::EOF) {
            return Err(self.df.parser.expected::<()>("end of statement", end).unwrap_err().into());
        }
        let sql = self.text.slice(start.span.start, end.span.start).trim().to_owned();
        Ok(Some(ParsedStatement { statement, sql }))
    }
}

impl Iterator for Statements<'_> {
    type Item = Result<ParsedStatement>;

    /// The next statement; after an error, `None` (the rest of the text cannot be split
    /// reliably).
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_statement().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

/// Maps token locations (1-based lines and columns, columns counted in chars) to byte offsets,
/// walking forward from the previous location: statements come in order, so splitting the
/// whole text is linear.
struct TextCursor<'a> {
    sql: &'a str,
    byte: usize,
    line: u64,
    column: u64,
}

impl<'a> TextCursor<'a> {
    fn new(sql: &'a str) -> Self {
        Self { sql, byte: 0, line: 1, column: 1 }
    }

    fn offset(&mut self, loc: datafusion_sql::sqlparser::tokenizer::Location) -> usize {
        if loc.line == 0 {
            return self.sql.len();
        }
        if (loc.line, loc.column) < (self.line, self.column) {
            *self = Self::new(self.sql);
        }
        for c in self.sql[self.byte..].chars() {
            if (self.line, self.column) >= (loc.line, loc.column) {
                break;
            }
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
            self.byte += c.len_utf8();
        }
        self.byte
    }

    fn slice(
        &mut self,
        from: datafusion_sql::sqlparser::tokenizer::Location,
        to: datafusion_sql::sqlparser::tokenizer::Location,
    ) -> &'a str {
        let a = self.offset(from);
        let b = self.offset(to);
        if a <= b { &self.sql[a..b] } else { &self.sql[a..] }
    }
}

/// The deepest nesting of expressions and subqueries a statement may have. Planning recurses
/// over the tree (and not every recursion of DataFusion's is stack-protected), so a long
/// `a + b + ...` or `x = 1 OR x = 2 OR ...` chain would overflow the stack; such a statement
/// gets a clear error instead. The limit is set so that planning fits a 2 MiB thread stack in
/// an unoptimized build (an UPDATE with a 150-term chain overflowed one); write long OR chains
/// of equalities as `IN (...)`, which is not nested.
pub const MAX_EXPR_DEPTH: usize = 128;
const _: () = assert!(MAX_EXPR_DEPTH == 128, "TOO_DEEP names the limit");

/// Counts nesting depth while visiting, and stops descending past [`MAX_EXPR_DEPTH`] (so the
/// check itself never recurses deeper than the limit).
#[derive(Default)]
struct DepthLimit {
    depth: usize,
}

impl DepthLimit {
    fn enter(&mut self) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

impl Visitor for DepthLimit {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

const TOO_DEEP: &str = "expression nesting too deep: more than 128 levels of operators, function calls or subqueries";

fn too_deep() -> datafusion_common::DataFusionError {
    ParserError::ParserError(TOO_DEEP.to_owned()).into()
}

/// Parses one SQL expression (a stored route filter, say) and refuses it when it is nested
/// deeper than [`MAX_EXPR_DEPTH`].
pub fn parse_expr_checked(text: &str) -> Result<Expr> {
    let mut parser = Parser::new(&DIALECT).try_with_sql(text)?;
    let expr = parser.parse_expr()?;
    if expr.visit(&mut DepthLimit::default()).is_break() {
        return Err(too_deep());
    }
    Ok(expr)
}

/// Refuses a statement nested deeper than [`MAX_EXPR_DEPTH`].
fn check_depth(statement: &Statement) -> Result<()> {
    let mut limit = DepthLimit::default();
    let flow = match statement {
        Statement::DataFusion(s) => df_statement_depth(s, &mut limit),
        Statement::Topic(t) | Statement::ExplainTopic { statement: t, .. } => {
            t.expressions().into_iter().try_for_each(|e| e.visit(&mut limit))
        }
        Statement::Copy(CopyStatement::To(CopyTo { source: CopySource::Query(q), .. })) => q.visit(&mut limit),
        Statement::Subscribe(s) | Statement::Session(SessionStatement::DeclareSubscribe { subscribe: s, .. }) => {
            s.query.visit(&mut limit)
        }
        Statement::User(_) | Statement::Copy(_) | Statement::Session(_) | Statement::Cluster(_) => {
            ControlFlow::Continue(())
        }
    };
    if flow.is_break() { Err(too_deep()) } else { Ok(()) }
}

fn df_statement_depth(s: &DFStatement, limit: &mut DepthLimit) -> ControlFlow<()> {
    use datafusion_sql::parser::CopyToSource;
    match s {
        DFStatement::Statement(s) => s.visit(limit),
        DFStatement::Explain(e) => df_statement_depth(&e.statement, limit),
        DFStatement::CopyTo(c) => match &c.source {
            CopyToSource::Query(q) => q.visit(limit),
            CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    }
}

fn parse_statement(df: &mut DFParser<'_>) -> Result<Statement> {
    let mut statement = parse_statement_unchecked(df)?;
    if let Err(e) = check_depth(&statement) {
        match &mut statement {
            Statement::DataFusion(s) => dismantle_df_statement(s),
            Statement::Copy(CopyStatement::To(CopyTo { source: CopySource::Query(q), .. })) => dismantle(q.as_mut()),
            Statement::Subscribe(s) | Statement::Session(SessionStatement::DeclareSubscribe { subscribe: s, .. }) => {
                dismantle(s.query.as_mut())
            }
            _ => {}
        }
        return Err(e);
    }
    Ok(statement)
}

/// Refuses a statement of another parser (the PostgreSQL-compatibility parser's) nested deeper
/// than [`MAX_EXPR_DEPTH`], taking it apart without recursion, as for our own statements.
pub fn check_sql_depth(mut statement: SqlStatement) -> Result<SqlStatement> {
    if statement.visit(&mut DepthLimit::default()).is_break() {
        dismantle(&mut statement);
        return Err(too_deep());
    }
    Ok(statement)
}

/// Cuts the parts of a statement nested deeper than the limit out of it and drops them without
/// recursion: dropping a tree of 100,000 levels (`1 + 1 + ...`) recursively overflows a stack.
fn dismantle_df_statement(s: &mut DFStatement) {
    match s {
        DFStatement::Statement(s) => dismantle(s.as_mut()),
        DFStatement::Explain(e) => dismantle_df_statement(&mut e.statement),
        _ => {}
    }
}

fn dismantle<T: VisitMut>(node: &mut T) {
    let mut cut = Dismantle::default();
    let _ = node.visit(&mut cut);
    cut.deep.into_iter().for_each(drop_iteratively);
}

#[derive(Default)]
struct Dismantle {
    depth: usize,
    deep: Vec<Expr>,
}

impl VisitorMut for Dismantle {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth >= MAX_EXPR_DEPTH {
            // The visitor then sees a leaf here: it never goes deeper.
            self.deep.push(std::mem::replace(expr, Expr::value(Value::Null)));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &mut Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Drops an expression tree with an explicit stack for the shapes the parser builds in a loop
/// (binary operators, postfix `IS ...`, `::` casts); other nodes nest at most as deep as the
/// parser's own recursion limit.
pub(crate) fn drop_iteratively(expr: Expr) {
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp { left, right, .. } => {
                stack.push(*left);
                stack.push(*right);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::Cast { expr, .. }
            | Expr::Collate { expr, .. } => stack.push(*expr),
            other => drop(other),
        }
    }
}

fn parse_statement_unchecked(df: &mut DFParser<'_>) -> Result<Statement> {
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
    if CopyStatement::claims(p) {
        return Ok(Statement::Copy(CopyStatement::parse(p)?));
    }
    if SessionStatement::claims(p) {
        return Ok(Statement::Session(SessionStatement::parse(p)?));
    }
    if ClusterStatement::claims(p) {
        return Ok(Statement::Cluster(ClusterStatement::parse(p)?));
    }
    if Subscribe::claims(p) {
        return Ok(Statement::Subscribe(Subscribe::parse(p)?));
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
        || (is_word(&first, "RUN") && is_word(&second, "RETENTION"))
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

/// `IF NOT EXISTS` (when `not` is set) or `IF EXISTS`; an unquoted `IF` must start it (a
/// topic or user named `if` would be a typo, e.g. `CREATE TOPIC IF events`).
pub(crate) fn parse_if_exists(p: &mut Parser<'_>, not: bool) -> Result<bool, ParserError> {
    if !is_word(&p.peek_token().token, "IF") {
        return Ok(false);
    }
    p.next_token();
    if not {
        p.expect_keywords(&[Keyword::NOT, Keyword::EXISTS])?;
    } else {
        p.expect_keyword_is(Keyword::EXISTS)?;
    }
    Ok(true)
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
    // First the depth: the checks below (and printing) recurse over the whole tree.
    if expr.visit(&mut DepthLimit::default()).is_break() {
        drop_iteratively(expr);
        return Err(ParserError::ParserError(TOO_DEEP.to_owned()));
    }
    let has_subquery = visit_expressions(&expr, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if has_subquery.is_break() {
        return Err(ParserError::ParserError(format!("{clause} of a topic source cannot contain a subquery: {expr}")));
    }
    // The expression is stored as the text sqlparser prints, which 0.62 gets wrong for a quoted
    // identifier containing its quote and for consecutive quotes inside a string literal: refuse
    // what would not read back as itself.
    let printed = expr.to_string();
    let reparsed = Parser::new(&DIALECT).try_with_sql(&printed).and_then(|mut p| p.parse_expr());
    if reparsed.as_ref() != Ok(&expr) {
        return Err(ParserError::ParserError(format!(
            "{clause} of a topic source cannot be stored as written (sqlparser prints it as {printed}): write quote characters inside names or strings another way, e.g. with chr(39)"
        )));
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
    fn a_statement_that_does_not_end_at_a_semicolon_is_never_returned() {
        // One statement at a time (as the CLI runs them): the first piece fails, so a caller
        // running each as it comes runs nothing of it.
        for sql in ["INSERT INTO t VALUES (1) SELECT 2", "DELETE FROM t WHERE id = 1 DROP TABLE t"] {
            let mut statements = Statements::new(sql).unwrap();
            let first = statements.next().unwrap();
            assert!(first.unwrap_err().to_string().contains("end of statement"), "{sql}");
            assert!(statements.next().is_none(), "{sql}");
        }
        // The statements before a bad one still come first (each ends at its `;`).
        let mut statements = Statements::new("SELECT 1; SELECT 2 SELECT 3").unwrap();
        assert_eq!(statements.next().unwrap().unwrap().sql, "SELECT 1");
        assert!(statements.next().unwrap().is_err());
    }

    #[test]
    fn quoted_words_are_not_claimed() {
        // A quoted "TOPIC" is an identifier, so this is DataFusion's CREATE ... statement.
        let err = parse_sql("CREATE \"TOPIC\" x").unwrap_err().to_string();
        assert!(!err.contains("topic name"), "{err}");
        assert!(parse_sql("SELECT 1 AS consume").is_ok());
    }
}
