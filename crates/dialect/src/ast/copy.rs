//! `COPY`: loading a durable table from a server file or from the client (`FROM STDIN`, the
//! PostgreSQL protocol's copy-in), and sending a table or a query's rows to the client (`TO
//! STDOUT`). `COPY ... TO '<file>'` stays DataFusion's own statement.
//!
//! ```text
//! COPY <table> [(<column>, ...)] FROM { '<file>' | STDIN } [ [WITH] (<option>, ...) | <legacy options> ]
//! COPY { <table> [(<column>, ...)] | (<query>) } TO STDOUT [ [WITH] (<option>, ...) | <legacy options> ]
//! <option> ::= FORMAT { text | csv | binary | json } | HEADER [ <bool> ] | DELIMITER '<c>'
//!            | NULL '<text>' | QUOTE '<c>' | ESCAPE '<c>' | ENCODING 'UTF8'
//! <legacy options> ::= { BINARY | CSV | HEADER | DELIMITER [AS] '<c>' | NULL [AS] '<text>'
//!                      | QUOTE [AS] '<c>' | ESCAPE [AS] '<c>' | ENCODING '<name>' } ...
//! ```
//!
//! Files are `csv` (the default) or newline-delimited `json`; the client's streams are
//! PostgreSQL's `text` (the default), `csv` or `binary` formats.

use std::fmt;

use datafusion_sql::sqlparser::ast::{Ident, ObjectName, Query};
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{Name, Quoted};
use crate::parser::{expect_word, is_word, parse_name, parse_string, parse_word};

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum CopyFormat {
    /// PostgreSQL's text format: tab-separated, `\N` for NULL, backslash escapes.
    Text,
    /// Comma-separated values (RFC 4180 quoting).
    Csv,
    /// PostgreSQL's binary COPY format (each value in its binary wire form).
    Binary,
    /// Newline-delimited JSON: one object per line, keys are column names (files only).
    Json,
}

impl CopyFormat {
    fn name(self) -> &'static str {
        match self {
            CopyFormat::Text => "text",
            CopyFormat::Csv => "csv",
            CopyFormat::Binary => "binary",
            CopyFormat::Json => "json",
        }
    }
}

/// Where a COPY reads from or writes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum CopyEndpoint {
    /// A path on the server's file system.
    File(String),
    /// The client, over the PostgreSQL protocol (`STDIN` / `STDOUT`).
    Client,
}

/// The options of a COPY as written (`None`: not given; the effective values depend on the
/// format, see the accessors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd)]
pub struct CopyOptions {
    pub format: Option<CopyFormat>,
    pub header: Option<bool>,
    pub delimiter: Option<char>,
    pub null: Option<String>,
    pub quote: Option<char>,
    pub escape: Option<char>,
    pub encoding: Option<String>,
    /// Written in PostgreSQL's pre-9.0 form (`WITH CSV HEADER`), printed the same way.
    pub legacy: bool,
}

impl CopyOptions {
    /// The format, with the default of the endpoint (`csv` for files, `text` for the client).
    pub fn format(&self, endpoint: &CopyEndpoint) -> CopyFormat {
        self.format.unwrap_or(match endpoint {
            CopyEndpoint::File(_) => CopyFormat::Csv,
            CopyEndpoint::Client => CopyFormat::Text,
        })
    }

    pub fn header(&self) -> bool {
        self.header.unwrap_or(false)
    }

    /// The field separator: a tab in text format, a comma in csv.
    pub fn delimiter(&self, format: CopyFormat) -> char {
        self.delimiter.unwrap_or(if format == CopyFormat::Text { '\t' } else { ',' })
    }

    /// How NULL is written: `\N` in text format, an unquoted empty field in csv.
    pub fn null(&self, format: CopyFormat) -> &str {
        self.null.as_deref().unwrap_or(if format == CopyFormat::Text { "\\N" } else { "" })
    }

    pub fn quote(&self) -> char {
        self.quote.unwrap_or('"')
    }

    /// The csv escape character (the quote itself unless given).
    pub fn escape(&self) -> char {
        self.escape.unwrap_or_else(|| self.quote())
    }

    /// Checks that the options fit the format and the endpoint (PostgreSQL's rules).
    pub fn check(&self, endpoint: &CopyEndpoint) -> Result<(), String> {
        let format = self.format(endpoint);
        match (endpoint, format) {
            (CopyEndpoint::File(_), CopyFormat::Text | CopyFormat::Binary) => {
                return Err(format!("COPY of a server file reads csv or json, not {}", format.name()));
            }
            (CopyEndpoint::Client, CopyFormat::Json) => {
                return Err("COPY FROM STDIN and TO STDOUT use the formats text, csv or binary, not json".into());
            }
            _ => {}
        }
        let text_like = matches!(format, CopyFormat::Text | CopyFormat::Csv);
        if !text_like && (self.delimiter.is_some() || self.null.is_some() || self.header == Some(true)) {
            return Err(format!("COPY format {} takes no DELIMITER, NULL or HEADER", format.name()));
        }
        if format != CopyFormat::Csv && (self.quote.is_some() || self.escape.is_some()) {
            return Err("COPY QUOTE and ESCAPE are available only in csv format".into());
        }
        let delimiter = self.delimiter(format);
        if !delimiter.is_ascii() || matches!(delimiter, '\n' | '\r') {
            return Err("the COPY delimiter must be a single one-byte character other than a newline".into());
        }
        if format == CopyFormat::Text && (delimiter == '\\' || delimiter.is_ascii_alphanumeric() || delimiter == '.') {
            return Err(format!("the COPY delimiter cannot be {delimiter:?} in text format"));
        }
        if format == CopyFormat::Csv {
            for (what, c) in [("quote", self.quote()), ("escape", self.escape())] {
                if !c.is_ascii() || matches!(c, '\n' | '\r') {
                    return Err(format!("the COPY {what} must be a single one-byte character"));
                }
            }
            if self.quote() == delimiter {
                return Err("the COPY delimiter and quote must be different".into());
            }
        }
        if let Some(null) = &self.null
            && (null.contains('\n') || null.contains('\r') || null.contains(delimiter))
        {
            return Err("the COPY null representation cannot contain a newline or the delimiter".into());
        }
        if let Some(e) = &self.encoding {
            let e = e.to_ascii_uppercase().replace(['-', '_'], "");
            if e != "UTF8" && e != "UNICODE" {
                return Err(format!("COPY ENCODING {e}: only UTF8 is supported"));
            }
        }
        Ok(())
    }

    /// `[WITH] (...)` or the legacy option words, or nothing.
    fn parse(p: &mut Parser<'_>) -> Result<Self, ParserError> {
        let mut options = CopyOptions::default();
        let with = parse_word(p, "WITH");
        if p.peek_token().token == Token::LParen {
            options.parse_list(p)?;
        } else {
            options.parse_legacy(p)?;
            if with && !options.legacy {
                return p.expected("COPY options", p.peek_token());
            }
        }
        Ok(options)
    }

    fn parse_list(&mut self, p: &mut Parser<'_>) -> Result<(), ParserError> {
        p.expect_token(&Token::LParen)?;
        loop {
            let at = p.peek_token();
            let name = match &at.token {
                Token::Word(w) => w.value.to_ascii_lowercase(),
                _ => return p.expected(OPTIONS, at),
            };
            p.next_token();
            let _ = p.consume_token(&Token::Eq);
            self.option(p, &name, &at, false)?;
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        p.expect_token(&Token::RParen)?;
        Ok(())
    }

    fn parse_legacy(&mut self, p: &mut Parser<'_>) -> Result<(), ParserError> {
        loop {
            let at = p.peek_token();
            let name = match &at.token {
                Token::Word(w) if LEGACY_WORDS.contains(&w.value.to_ascii_lowercase().as_str()) => {
                    w.value.to_ascii_lowercase()
                }
                _ => return Ok(()),
            };
            p.next_token();
            self.legacy = true;
            match name.as_str() {
                "binary" => self.set(&at, |o| &mut o.format, CopyFormat::Binary)?,
                "csv" => self.set(&at, |o| &mut o.format, CopyFormat::Csv)?,
                "header" => self.set(&at, |o| &mut o.header, true)?,
                _ => {
                    parse_word(p, "AS");
                    self.option(p, &name, &at, true)?;
                }
            }
        }
    }

    fn set<T>(
        &mut self,
        at: &TokenWithSpan,
        field: impl FnOnce(&mut Self) -> &mut Option<T>,
        value: T,
    ) -> Result<(), ParserError> {
        let slot = field(self);
        if slot.is_some() {
            return Err(ParserError::ParserError(format!(
                "COPY option {} specified more than once{}",
                at, at.span.start
            )));
        }
        *slot = Some(value);
        Ok(())
    }

    /// The value of option `name` (its name consumed).
    fn option(&mut self, p: &mut Parser<'_>, name: &str, at: &TokenWithSpan, legacy: bool) -> Result<(), ParserError> {
        let char_of = |p: &mut Parser<'_>, what: &str| -> Result<char, ParserError> {
            let value = p.peek_token();
            let s = parse_string(p, &format!("a one-character {what} in single quotes"))?;
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(c),
                _ => p.expected(&format!("a one-character {what}"), value),
            }
        };
        match name {
            "format" if !legacy => {
                let value = p.peek_token();
                let format = match &value.token {
                    Token::Word(w) => w.value.to_ascii_lowercase(),
                    Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
                    _ => String::new(),
                };
                let format = match format.as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    "json" => CopyFormat::Json,
                    _ => return p.expected("text, csv, binary or json", value),
                };
                p.next_token();
                self.set(at, |o| &mut o.format, format)
            }
            "header" if !legacy => {
                let value = p.peek_token();
                let header = match &value.token {
                    Token::Comma | Token::RParen => None,
                    Token::Word(w) => match w.value.to_ascii_lowercase().as_str() {
                        "true" | "on" => Some(true),
                        "false" | "off" => Some(false),
                        _ => return p.expected("true or false", value),
                    },
                    Token::Number(n, _) if n == "1" || n == "0" => Some(n == "1"),
                    Token::SingleQuotedString(s) if ["true", "on", "false", "off"].contains(&s.as_str()) => {
                        Some(s == "true" || s == "on")
                    }
                    _ => return p.expected("true or false", value),
                };
                if header.is_some() {
                    p.next_token();
                }
                self.set(at, |o| &mut o.header, header.unwrap_or(true))
            }
            "delimiter" => {
                let c = char_of(p, "delimiter")?;
                self.set(at, |o| &mut o.delimiter, c)
            }
            "null" => {
                let s = parse_string(p, "the NULL text in single quotes")?;
                self.set(at, |o| &mut o.null, s)
            }
            "quote" => {
                let c = char_of(p, "quote")?;
                self.set(at, |o| &mut o.quote, c)
            }
            "escape" => {
                let c = char_of(p, "escape")?;
                self.set(at, |o| &mut o.escape, c)
            }
            "encoding" => {
                let s = parse_string(p, "an encoding name in single quotes")?;
                self.set(at, |o| &mut o.encoding, s)
            }
            _ => p.expected(OPTIONS, at.clone()),
        }
    }
}

const OPTIONS: &str = "one of the COPY options FORMAT, HEADER, DELIMITER, NULL, QUOTE, ESCAPE, ENCODING";
const LEGACY_WORDS: &[&str] = &["binary", "csv", "header", "delimiter", "null", "quote", "escape", "encoding"];

impl fmt::Display for CopyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let quoted = |c: &char| Quoted(&c.to_string()).to_string();
        if self.legacy {
            match self.format {
                Some(CopyFormat::Binary) => parts.push("BINARY".to_owned()),
                Some(CopyFormat::Csv) => parts.push("CSV".to_owned()),
                _ => {}
            }
            if self.header == Some(true) {
                parts.push("HEADER".into());
            }
            let mut add = |name: &str, v: Option<String>| {
                if let Some(v) = v {
                    parts.push(format!("{name} AS {v}"));
                }
            };
            add("DELIMITER", self.delimiter.as_ref().map(quoted));
            add("NULL", self.null.as_deref().map(|s| Quoted(s).to_string()));
            add("QUOTE", self.quote.as_ref().map(quoted));
            add("ESCAPE", self.escape.as_ref().map(quoted));
            if let Some(e) = &self.encoding {
                parts.push(format!("ENCODING {}", Quoted(e)));
            }
            return write!(f, " WITH {}", parts.join(" "));
        }
        if let Some(format) = self.format {
            parts.push(format!("FORMAT {}", format.name()));
        }
        if let Some(h) = self.header {
            parts.push(format!("HEADER {h}"));
        }
        if let Some(d) = &self.delimiter {
            parts.push(format!("DELIMITER {}", quoted(d)));
        }
        if let Some(n) = &self.null {
            parts.push(format!("NULL {}", Quoted(n)));
        }
        if let Some(q) = &self.quote {
            parts.push(format!("QUOTE {}", quoted(q)));
        }
        if let Some(e) = &self.escape {
            parts.push(format!("ESCAPE {}", quoted(e)));
        }
        if let Some(e) = &self.encoding {
            parts.push(format!("ENCODING {}", Quoted(e)));
        }
        if parts.is_empty() { Ok(()) } else { write!(f, " WITH ({})", parts.join(", ")) }
    }
}

/// `COPY <table> [(columns)] FROM '<file>' | STDIN ...`
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CopyFrom {
    pub table: ObjectName,
    /// The input's columns, in order; empty: all of the table's columns.
    pub columns: Vec<Ident>,
    pub source: CopyEndpoint,
    pub options: CopyOptions,
}

/// What a `COPY ... TO STDOUT` sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum CopySource {
    /// A table's rows (the named columns, or all).
    Table { table: ObjectName, columns: Vec<Ident> },
    /// A query's rows.
    Query(Box<Query>),
}

/// `COPY { <table> [(columns)] | (<query>) } TO STDOUT ...`
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CopyTo {
    pub source: CopySource,
    pub options: CopyOptions,
}

/// A COPY statement of the dialect (those DataFusion does not parse).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum CopyStatement {
    From(CopyFrom),
    To(CopyTo),
}

impl CopyStatement {
    /// Whether the statement ahead is `COPY ... FROM ...` or `COPY ... TO STDOUT`.
    pub fn claims(p: &Parser<'_>) -> bool {
        if !is_word(&p.peek_token().token, "COPY") {
            return false;
        }
        let mut depth = 0usize;
        for i in 1.. {
            match p.peek_nth_token(i).token {
                Token::EOF | Token::SemiColon => return false,
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                ref t if depth == 0 && is_word(t, "FROM") => return true,
                ref t if depth == 0 && is_word(t, "TO") => return is_word(&p.peek_nth_token(i + 1).token, "STDOUT"),
                _ => {}
            }
        }
        false
    }

    pub fn parse(p: &mut Parser<'_>) -> Result<Self, ParserError> {
        expect_word(p, "COPY")?;
        let source = if p.consume_token(&Token::LParen) {
            let query = p.parse_query()?;
            p.expect_token(&Token::RParen)?;
            CopySource::Query(query)
        } else {
            let table = parse_name(p, "a table name or a (query)")?;
            CopySource::Table { table, columns: parse_columns(p)? }
        };
        let statement = if parse_word(p, "FROM") {
            let CopySource::Table { table, columns } = source else {
                return Err(ParserError::ParserError("COPY (query) FROM is not possible: copy into a table".into()));
            };
            let at = p.peek_token();
            let source = if parse_word(p, "STDIN") {
                CopyEndpoint::Client
            } else {
                CopyEndpoint::File(parse_string(p, "STDIN or a file path in single quotes")?)
            };
            let options = CopyOptions::parse(p)?;
            options.check(&source).map_err(|e| ParserError::ParserError(format!("{e}{}", at.span.start)))?;
            CopyStatement::From(CopyFrom { table, columns, source, options })
        } else {
            expect_word(p, "TO")?;
            let at = p.peek_token();
            expect_word(p, "STDOUT")?;
            let options = CopyOptions::parse(p)?;
            options
                .check(&CopyEndpoint::Client)
                .map_err(|e| ParserError::ParserError(format!("{e}{}", at.span.start)))?;
            CopyStatement::To(CopyTo { source, options })
        };
        Ok(statement)
    }
}

fn parse_columns(p: &mut Parser<'_>) -> Result<Vec<Ident>, ParserError> {
    let mut columns = Vec::new();
    if p.consume_token(&Token::LParen) {
        loop {
            columns.push(p.parse_identifier()?);
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        p.expect_token(&Token::RParen)?;
    }
    Ok(columns)
}

fn write_columns(f: &mut fmt::Formatter<'_>, columns: &[Ident]) -> fmt::Result {
    if !columns.is_empty() {
        let cols: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        write!(f, " ({})", cols.join(", "))?;
    }
    Ok(())
}

impl fmt::Display for CopyStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyStatement::From(c) => {
                write!(f, "COPY {}", Name(&c.table))?;
                write_columns(f, &c.columns)?;
                match &c.source {
                    CopyEndpoint::File(path) => write!(f, " FROM {}", Quoted(path))?,
                    CopyEndpoint::Client => f.write_str(" FROM STDIN")?,
                }
                write!(f, "{}", c.options)
            }
            CopyStatement::To(c) => {
                match &c.source {
                    CopySource::Table { table, columns } => {
                        write!(f, "COPY {}", Name(table))?;
                        write_columns(f, columns)?;
                    }
                    CopySource::Query(q) => write!(f, "COPY ({q})")?,
                }
                write!(f, " TO STDOUT{}", c.options)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{Statement, parse_sql};

    fn copy(sql: &str) -> CopyStatement {
        match parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0).statement {
            Statement::Copy(c) => c,
            other => panic!("not a dialect COPY: {other:?}"),
        }
    }

    fn parses_to(sql: &str, canonical: &str) -> CopyStatement {
        let c = copy(sql);
        assert_eq!(c.to_string(), canonical, "{sql}");
        assert_eq!(copy(canonical), c, "{canonical}");
        c
    }

    #[test]
    fn copy_from_a_file_parses_and_prints() {
        let c = parses_to(
            "copy t (a, \"B\") from '/tmp/x.csv' with (format csv, header true, delimiter ';')",
            "COPY t (a, \"B\") FROM '/tmp/x.csv' WITH (FORMAT csv, HEADER true, DELIMITER ';')",
        );
        let CopyStatement::From(c) = c else { panic!() };
        assert_eq!(c.options.format(&c.source), CopyFormat::Csv);
        parses_to("COPY s.t FROM 'it''s.json' (FORMAT 'json')", "COPY s.t FROM 'it''s.json' WITH (FORMAT json)");
        // A file defaults to csv.
        let CopyStatement::From(c) = parses_to("COPY t FROM '/x'", "COPY t FROM '/x'") else { panic!() };
        assert_eq!(c.options.format(&c.source), CopyFormat::Csv);
        // COPY ... TO a file stays DataFusion's.
        assert!(matches!(parse_sql("COPY t TO 'x.csv'").unwrap()[0].statement, Statement::DataFusion(_)));
    }

    #[test]
    fn copy_with_the_client_in_the_forms_drivers_send() {
        // psql's \copy and psycopg2's copy_expert; text is the default format.
        let CopyStatement::From(c) = parses_to("COPY t FROM STDIN", "COPY t FROM STDIN") else { panic!() };
        assert_eq!(c.options.format(&c.source), CopyFormat::Text);
        assert_eq!(c.options.delimiter(CopyFormat::Text), '\t');
        assert_eq!(c.options.null(CopyFormat::Text), "\\N");
        // psycopg2's copy_from (legacy options).
        parses_to(
            "COPY t (a, b) FROM stdin WITH DELIMITER AS '\t' NULL AS '\\N'",
            "COPY t (a, b) FROM STDIN WITH DELIMITER AS '\t' NULL AS '\\N'",
        );
        parses_to("COPY t FROM STDIN WITH CSV HEADER", "COPY t FROM STDIN WITH CSV HEADER");
        // asyncpg: copy_records_to_table and copy_to_table / copy_from_table.
        parses_to(
            "COPY \"t\"(\"a\", \"b\") FROM STDIN (FORMAT binary) ",
            "COPY \"t\" (\"a\", \"b\") FROM STDIN WITH (FORMAT binary)",
        );
        parses_to(
            "COPY \"s\".\"t\" TO STDOUT (FORMAT 'csv', HEADER True, DELIMITER '|')",
            "COPY \"s\".\"t\" TO STDOUT WITH (FORMAT csv, HEADER true, DELIMITER '|')",
        );
        let CopyStatement::To(c) = parses_to(
            "COPY (SELECT a, b FROM t WHERE a > 1) TO STDOUT WITH (FORMAT csv, HEADER)",
            "COPY (SELECT a, b FROM t WHERE a > 1) TO STDOUT WITH (FORMAT csv, HEADER true)",
        ) else {
            panic!()
        };
        assert!(matches!(c.source, CopySource::Query(_)));
    }

    #[test]
    fn bad_copy_options_are_errors() {
        for (sql, expected) in [
            ("COPY t FROM 'f' WITH (FORMAT xml)", "text, csv, binary or json"),
            ("COPY t FROM 'f' WITH (HEADER maybe)", "true or false"),
            ("COPY t FROM 'f' WITH (DELIMITER ';;')", "one-character"),
            ("COPY t FROM 'f' WITH (FORMAT csv, FORMAT json)", "more than once"),
            ("COPY t FROM 'f' WITH (FORCE_QUOTE *)", "FORMAT, HEADER, DELIMITER"),
            ("COPY t FROM f", "STDIN or a file path"),
            ("COPY t FROM 'f' WITH (FORMAT text)", "server file reads csv or json"),
            ("COPY t FROM STDIN WITH (FORMAT json)", "text, csv or binary"),
            ("COPY t FROM STDIN WITH (FORMAT binary, HEADER true)", "takes no DELIMITER"),
            ("COPY t FROM STDIN WITH (QUOTE '\"')", "only in csv"),
            ("COPY t FROM STDIN WITH (FORMAT csv, QUOTE ',')", "must be different"),
            ("COPY t FROM STDIN WITH (ENCODING 'LATIN1')", "only UTF8"),
            ("COPY (SELECT 1) FROM STDIN", "COPY (query) FROM"),
            ("COPY t TO STDOUT WITH CSV QUOTE AS ''", "one-character"),
        ] {
            let err = parse_sql(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }
}
