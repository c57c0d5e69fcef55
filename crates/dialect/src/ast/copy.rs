//! `COPY <table> [(column, ...)] FROM '<file>' [WITH] (FORMAT csv|json [, HEADER true|false]
//! [, DELIMITER '<char>'])`: loading a file into a durable table. (`COPY ... TO` is DataFusion's.)

use std::fmt;

use datafusion_sql::sqlparser::ast::{Ident, ObjectName};
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use super::{Name, Quoted};
use crate::parser::{expect_word, is_word, parse_name, parse_string};

/// The file format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum CopyFormat {
    /// Comma-separated values (RFC 4180 quoting).
    Csv,
    /// Newline-delimited JSON: one object per line, keys are column names.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CopyFrom {
    pub table: ObjectName,
    /// The file's columns, in order; empty: all of the table's columns.
    pub columns: Vec<Ident>,
    /// A path on the server's file system.
    pub path: String,
    pub format: CopyFormat,
    /// CSV: whether the first line holds column names (skipped).
    pub header: bool,
    /// CSV: the field separator.
    pub delimiter: u8,
}

impl CopyFrom {
    /// Whether the statement ahead is `COPY <name> [(...)] FROM`.
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
                ref t if depth == 0 && is_word(t, "TO") => return false,
                _ => {}
            }
            if i > 64 {
                return false;
            }
        }
        false
    }

    pub fn parse(p: &mut Parser<'_>) -> Result<Self, ParserError> {
        expect_word(p, "COPY")?;
        let table = parse_name(p, "a table name")?;
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
        expect_word(p, "FROM")?;
        let path = parse_string(p, "a file path in single quotes")?;
        let mut copy = CopyFrom { table, columns, path, format: CopyFormat::Csv, header: false, delimiter: b',' };
        let with = is_word(&p.peek_token().token, "WITH");
        if with {
            p.next_token();
        }
        if with || p.peek_token().token == Token::LParen {
            copy.parse_options(p)?;
        }
        Ok(copy)
    }

    fn parse_options(&mut self, p: &mut Parser<'_>) -> Result<(), ParserError> {
        p.expect_token(&Token::LParen)?;
        let mut seen = Vec::new();
        loop {
            let at = p.peek_token();
            let name = match &at.token {
                Token::Word(w)
                    if ["format", "header", "delimiter"].contains(&w.value.to_ascii_lowercase().as_str()) =>
                {
                    w.value.to_ascii_lowercase()
                }
                _ => return p.expected("one of the COPY options FORMAT, HEADER, DELIMITER", at),
            };
            if seen.contains(&name) {
                return Err(ParserError::ParserError(format!(
                    "option {name} specified more than once{}",
                    at.span.start
                )));
            }
            p.next_token();
            let _ = p.consume_token(&Token::Eq);
            let value = p.peek_token();
            match name.as_str() {
                "format" => {
                    self.format = match &value.token {
                        t if is_word(t, "csv") => CopyFormat::Csv,
                        t if is_word(t, "json") => CopyFormat::Json,
                        Token::SingleQuotedString(s) if s.eq_ignore_ascii_case("csv") => CopyFormat::Csv,
                        Token::SingleQuotedString(s) if s.eq_ignore_ascii_case("json") => CopyFormat::Json,
                        _ => return p.expected("csv or json", value),
                    };
                    p.next_token();
                }
                "header" => {
                    self.header = match &value.token {
                        t if is_word(t, "true") => true,
                        t if is_word(t, "false") => false,
                        _ => return p.expected("true or false", value),
                    };
                    p.next_token();
                }
                _ => {
                    let s = parse_string(p, "a one-character delimiter in single quotes")?;
                    match s.as_bytes() {
                        [b] if b.is_ascii() && *b != b'\n' && *b != b'\r' && *b != b'"' => self.delimiter = *b,
                        _ => return p.expected("a one-character ASCII delimiter", value),
                    }
                }
            }
            seen.push(name);
            if !p.consume_token(&Token::Comma) {
                break;
            }
        }
        p.expect_token(&Token::RParen)?;
        Ok(())
    }
}

impl fmt::Display for CopyFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "COPY {}", Name(&self.table))?;
        if !self.columns.is_empty() {
            let cols: Vec<String> = self.columns.iter().map(|c| c.to_string()).collect();
            write!(f, " ({})", cols.join(", "))?;
        }
        let format = match self.format {
            CopyFormat::Csv => "csv",
            CopyFormat::Json => "json",
        };
        write!(f, " FROM {} WITH (FORMAT {format}", Quoted(&self.path))?;
        if self.format == CopyFormat::Csv {
            write!(f, ", HEADER {}, DELIMITER {}", self.header, Quoted(&(self.delimiter as char).to_string()))?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use crate::parser::{Statement, parse_sql};

    fn copy(sql: &str) -> super::CopyFrom {
        match parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0).statement {
            Statement::CopyFrom(c) => c,
            other => panic!("not COPY FROM: {other:?}"),
        }
    }

    #[test]
    fn copy_from_parses_and_prints() {
        let c = copy("copy t (a, \"B\") from '/tmp/x.csv' with (format csv, header true, delimiter ';')");
        assert_eq!(c.to_string(), "COPY t (a, \"B\") FROM '/tmp/x.csv' WITH (FORMAT csv, HEADER true, DELIMITER ';')");
        assert_eq!(copy(&c.to_string()), c);
        let j = copy("COPY s.t FROM 'it''s.json' (FORMAT 'json')");
        assert_eq!(j.to_string(), "COPY s.t FROM 'it''s.json' WITH (FORMAT json)");
        // COPY ... TO stays DataFusion's.
        assert!(matches!(parse_sql("COPY t TO 'x.csv'").unwrap()[0].statement, Statement::DataFusion(_)));
    }

    #[test]
    fn bad_copy_options_are_errors() {
        for (sql, expected) in [
            ("COPY t FROM 'f' WITH (FORMAT xml)", "csv or json"),
            ("COPY t FROM 'f' WITH (HEADER maybe)", "true or false"),
            ("COPY t FROM 'f' WITH (DELIMITER ';;')", "one-character"),
            ("COPY t FROM 'f' WITH (FORMAT csv, FORMAT json)", "more than once"),
            ("COPY t FROM 'f' WITH (QUOTE '\"')", "FORMAT, HEADER, DELIMITER"),
            ("COPY t FROM f", "file path"),
        ] {
            let err = parse_sql(sql).unwrap_err().to_string();
            assert!(err.contains(expected), "{sql}: {err}");
        }
    }
}
