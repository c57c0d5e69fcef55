//! `CONSUME`: read messages from a topic, statelessly or as a consumer group.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::ObjectName;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use super::{Name, Quoted};
use crate::parser::{
    expect_word, parse_group_name, parse_name, parse_options, parse_positive, parse_string, parse_uint, parse_word,
};

/// Where a read (or a new group) starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum StartPosition {
    Earliest,
    Latest,
    Offset(u64),
    /// RFC 3339 text, validated by the engine.
    Timestamp(String),
}

impl StartPosition {
    /// `EARLIEST | LATEST | OFFSET <n> | TIMESTAMP '<rfc3339>'`, and a bare `<n>` when
    /// `bare_number` is set.
    pub(crate) fn parse(p: &mut Parser<'_>, bare_number: bool) -> Result<Self, ParserError> {
        if parse_word(p, "EARLIEST") {
            Ok(StartPosition::Earliest)
        } else if parse_word(p, "LATEST") {
            Ok(StartPosition::Latest)
        } else if p.parse_keyword(Keyword::OFFSET) {
            Ok(StartPosition::Offset(parse_uint(p, "an offset")?))
        } else if p.parse_keyword(Keyword::TIMESTAMP) {
            Ok(StartPosition::Timestamp(parse_string(p, "an RFC 3339 timestamp in single quotes")?))
        } else if bare_number && matches!(p.peek_token().token, Token::Number(..)) {
            Ok(StartPosition::Offset(parse_uint(p, "an offset")?))
        } else {
            p.expected("EARLIEST, LATEST, OFFSET <n> or TIMESTAMP '<rfc3339>'", p.peek_token())
        }
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("EARLIEST"),
            StartPosition::Latest => f.write_str("LATEST"),
            StartPosition::Offset(n) => write!(f, "OFFSET {n}"),
            StartPosition::Timestamp(t) => write!(f, "TIMESTAMP {}", Quoted(t)),
        }
    }
}

/// An option of `CONSUME ... WITH (...)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum ConsumeOption {
    /// Long-poll for up to this long when nothing is available.
    TimeoutMs(u64),
    /// How long a group's claim on the returned messages lasts.
    VisibilityTimeoutMs(u64),
    /// A message delivered this many times without an ACK goes to the dead-letter topic.
    MaxDeliveries(u64),
    /// Where messages that reached `max_deliveries` go.
    DeadLetterTopic(String),
    /// The most bytes of messages one CONSUME returns (at least one message).
    MaxBytes(u64),
}

impl fmt::Display for ConsumeOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumeOption::TimeoutMs(n) => write!(f, "timeout_ms = {n}"),
            ConsumeOption::VisibilityTimeoutMs(n) => write!(f, "visibility_timeout_ms = {n}"),
            ConsumeOption::MaxDeliveries(n) => write!(f, "max_deliveries = {n}"),
            ConsumeOption::DeadLetterTopic(t) => write!(f, "dead_letter_topic = {}", Quoted(t)),
            ConsumeOption::MaxBytes(n) => write!(f, "max_bytes = {n}"),
        }
    }
}

/// ```text
/// CONSUME FROM <topic> [GROUP '<g>'] [PARTITION <n>]
///     [FROM EARLIEST | FROM LATEST | FROM OFFSET <n> | FROM <n> | FROM TIMESTAMP '<rfc3339>']
///     [LIMIT <n>] [WITH (timeout_ms = <n>, visibility_timeout_ms = <n>,
///                        max_deliveries = <n>, dead_letter_topic = '<topic>', max_bytes = <n>)]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct Consume {
    pub topic: ObjectName,
    pub group: Option<String>,
    pub partition: Option<u64>,
    pub start: Option<StartPosition>,
    pub limit: Option<u64>,
    pub options: Vec<ConsumeOption>,
}

impl Consume {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "CONSUME")?;
        p.expect_keyword_is(Keyword::FROM)?;
        let topic = parse_name(p, "a topic name")?;
        let group = if p.parse_keyword(Keyword::GROUP) { Some(parse_group_name(p)?) } else { None };
        let partition =
            if p.parse_keyword(Keyword::PARTITION) { Some(parse_uint(p, "a partition number")?) } else { None };
        let start = if p.parse_keyword(Keyword::FROM) { Some(StartPosition::parse(p, true)?) } else { None };
        let limit = if p.parse_keyword(Keyword::LIMIT) { Some(parse_uint(p, "a row limit")?) } else { None };
        let options = if p.parse_keyword(Keyword::WITH) {
            let known = ["timeout_ms", "visibility_timeout_ms", "max_deliveries", "dead_letter_topic", "max_bytes"];
            parse_options(p, &known, |p, name| {
                Ok(match name {
                    "dead_letter_topic" => {
                        ConsumeOption::DeadLetterTopic(parse_string(p, "a topic name in single quotes")?)
                    }
                    "max_deliveries" => {
                        ConsumeOption::MaxDeliveries(parse_positive(p, "a positive number of deliveries")?)
                    }
                    "max_bytes" => ConsumeOption::MaxBytes(parse_positive(p, "a positive number of bytes")?),
                    "timeout_ms" => {
                        ConsumeOption::TimeoutMs(parse_uint(p, &format!("a number of milliseconds for {name}"))?)
                    }
                    _ => ConsumeOption::VisibilityTimeoutMs(parse_uint(
                        p,
                        &format!("a number of milliseconds for {name}"),
                    )?),
                })
            })?
        } else {
            Vec::new()
        };
        Ok(Self { topic, group, partition, start, limit, options })
    }

    pub fn timeout_ms(&self) -> Option<u64> {
        self.options.iter().find_map(|o| match o {
            ConsumeOption::TimeoutMs(n) => Some(*n),
            _ => None,
        })
    }

    pub fn visibility_timeout_ms(&self) -> Option<u64> {
        self.options.iter().find_map(|o| match o {
            ConsumeOption::VisibilityTimeoutMs(n) => Some(*n),
            _ => None,
        })
    }

    pub fn max_deliveries(&self) -> Option<u64> {
        self.options.iter().find_map(|o| match o {
            ConsumeOption::MaxDeliveries(n) => Some(*n),
            _ => None,
        })
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.options.iter().find_map(|o| match o {
            ConsumeOption::MaxBytes(n) => Some(*n),
            _ => None,
        })
    }

    pub fn dead_letter_topic(&self) -> Option<&str> {
        self.options.iter().find_map(|o| match o {
            ConsumeOption::DeadLetterTopic(t) => Some(t.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Consume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CONSUME FROM {}", Name(&self.topic))?;
        if let Some(g) = &self.group {
            write!(f, " GROUP {}", Quoted(g))?;
        }
        if let Some(n) = self.partition {
            write!(f, " PARTITION {n}")?;
        }
        if let Some(s) = &self.start {
            write!(f, " FROM {s}")?;
        }
        if let Some(n) = self.limit {
            write!(f, " LIMIT {n}")?;
        }
        if !self.options.is_empty() {
            let parts: Vec<String> = self.options.iter().map(ToString::to_string).collect();
            write!(f, " WITH ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ast::TopicStatement;
    use crate::ast::test_util::{parse_error, parses_to, verified_stmt};

    #[test]
    fn consume_round_trips() {
        verified_stmt("CONSUME FROM app.events");
        let s = verified_stmt(
            "CONSUME FROM app.events GROUP 'billing' PARTITION 2 FROM OFFSET 10 LIMIT 5 WITH (timeout_ms = 100, visibility_timeout_ms = 500)",
        );
        let TopicStatement::Consume(c) = s else { panic!() };
        assert_eq!(c.group.as_deref(), Some("billing"));
        assert_eq!((c.timeout_ms(), c.visibility_timeout_ms()), (Some(100), Some(500)));
        verified_stmt("CONSUME FROM t FROM EARLIEST");
        verified_stmt("CONSUME FROM t GROUP 'g' FROM LATEST LIMIT 1");
        verified_stmt("CONSUME FROM t FROM TIMESTAMP '2026-01-01T00:00:00Z'");
        verified_stmt("CONSUME FROM t GROUP 'it''s'");
        let s = verified_stmt("CONSUME FROM t WITH (max_bytes = 65536)");
        let TopicStatement::Consume(c) = s else { panic!() };
        assert_eq!(c.max_bytes(), Some(65536));
        assert!(parse_error("CONSUME FROM t WITH (max_bytes = 0)").contains("a positive number of bytes"));
        let s = verified_stmt("CONSUME FROM t GROUP 'g' WITH (max_deliveries = 3, dead_letter_topic = 'app.dlq')");
        let TopicStatement::Consume(c) = s else { panic!() };
        assert_eq!((c.max_deliveries(), c.dead_letter_topic()), (Some(3), Some("app.dlq")));
        parses_to("consume from t from 7", "CONSUME FROM t FROM OFFSET 7");
    }

    #[test]
    fn consume_errors() {
        assert!(parse_error("CONSUME FROM t FROM OFFSET -1").contains("Expected: an offset, found: -"));
        assert!(parse_error("CONSUME FROM t FROM START").contains("found: START"));
        assert!(parse_error("CONSUME FROM t GROUP g").contains("Expected: a group name in single quotes, found: g"));
        assert!(parse_error("CONSUME FROM t GROUP ''").contains("Expected: a group name of 1 to 255 bytes"));
        assert!(parse_error("CONSUME FROM t WITH (wait = 1)").contains("found: wait"));
        assert!(parse_error("CONSUME FROM t LIMIT 5 GROUP 'g'").contains("Expected: end of statement, found: GROUP"));
        assert!(parse_error("CONSUME t").contains("Expected: FROM, found: t"));
        assert!(parse_error("CONSUME FROM t WITH (max_deliveries = 0)").contains("a positive number of deliveries"));
        assert!(parse_error("CONSUME FROM t WITH (dead_letter_topic = dlq)").contains("a topic name in single quotes"));
    }
}
