//! Topic DDL: `CREATE TOPIC`, `DROP TOPIC`, `CLEAR TOPIC`, `ALTER TOPIC`.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::{Expr, ObjectName};
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use super::{Name, Quoted};
use crate::parser::{
    expect_word, parse_name, parse_options, parse_positive, parse_row_expr, parse_string, parse_word, parse_words,
};

/// An option of `CREATE TOPIC ... WITH (...)` and `ALTER TOPIC ... SET RETENTION WITH (...)`.
/// `None` is `NULL`: no limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum TopicOption {
    RetentionSeconds(Option<u64>),
    RetentionMaxBytes(Option<u64>),
    Alias(String),
}

impl fmt::Display for TopicOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |v: &Option<u64>| v.map_or("NULL".to_owned(), |n| n.to_string());
        match self {
            TopicOption::RetentionSeconds(v) => write!(f, "retention_seconds = {}", limit(v)),
            TopicOption::RetentionMaxBytes(v) => write!(f, "retention_max_bytes = {}", limit(v)),
            TopicOption::Alias(a) => write!(f, "alias = {}", Quoted(a)),
        }
    }
}

/// The longest retention: 1000 years (so that retention's time arithmetic never overflows).
pub const MAX_RETENTION_SECONDS: u64 = 1000 * 366 * 86_400;

/// The largest byte limit: 2^63 - 1 (a PostgreSQL `bigint`, as `SHOW TOPICS` sends it).
pub const MAX_RETENTION_BYTES: u64 = i64::MAX as u64;

fn parse_topic_options(p: &mut Parser<'_>, known: &[&str]) -> Result<Vec<TopicOption>, ParserError> {
    parse_options(p, known, |p, name| {
        Ok(match name {
            "alias" => TopicOption::Alias(parse_string(p, "an alias in single quotes")?),
            _ => {
                let max = if name == "retention_seconds" { MAX_RETENTION_SECONDS } else { MAX_RETENTION_BYTES };
                let at = p.peek_token();
                let value = if p.parse_keyword(Keyword::NULL) {
                    None
                } else {
                    Some(parse_positive(p, &format!("a positive integer or NULL for {name}"))?)
                };
                if value.is_some_and(|v| v > max) {
                    return p.expected(&format!("{name} of at most {max} (or NULL for no limit)"), at);
                }
                if name == "retention_seconds" {
                    TopicOption::RetentionSeconds(value)
                } else {
                    TopicOption::RetentionMaxBytes(value)
                }
            }
        })
    })
}

fn write_options(f: &mut fmt::Formatter<'_>, options: &[TopicOption]) -> fmt::Result {
    let parts: Vec<String> = options.iter().map(ToString::to_string).collect();
    write!(f, " WITH ({})", parts.join(", "))
}

/// ```text
/// CREATE TOPIC [IF NOT EXISTS] <name> [PARTITIONS <n>]
///     [WITH (retention_seconds = <n|NULL>, retention_max_bytes = <n|NULL>, alias = '<alias>')]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct CreateTopic {
    pub if_not_exists: bool,
    pub name: ObjectName,
    pub partitions: Option<u64>,
    pub options: Vec<TopicOption>,
}

impl CreateTopic {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "CREATE")?;
        expect_word(p, "TOPIC")?;
        let if_not_exists = crate::parser::parse_if_exists(p, true)?;
        let name = parse_name(p, "a topic name")?;
        let partitions = if parse_word(p, "PARTITIONS") {
            Some(parse_positive(p, "a positive number of partitions")?)
        } else {
            None
        };
        let options = if p.parse_keyword(Keyword::WITH) {
            parse_topic_options(p, &["retention_seconds", "retention_max_bytes", "alias"])?
        } else {
            Vec::new()
        };
        Ok(Self { if_not_exists, name, partitions, options })
    }
}

impl fmt::Display for CreateTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CREATE TOPIC {}{}", if self.if_not_exists { "IF NOT EXISTS " } else { "" }, Name(&self.name))?;
        if let Some(n) = self.partitions {
            write!(f, " PARTITIONS {n}")?;
        }
        if !self.options.is_empty() {
            write_options(f, &self.options)?;
        }
        Ok(())
    }
}

/// ```text
/// DROP TOPIC [IF EXISTS] <name>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct DropTopic {
    pub if_exists: bool,
    pub name: ObjectName,
}

impl DropTopic {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "DROP")?;
        expect_word(p, "TOPIC")?;
        let if_exists = crate::parser::parse_if_exists(p, false)?;
        let name = parse_name(p, "a topic name")?;
        Ok(Self { if_exists, name })
    }
}

impl fmt::Display for DropTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DROP TOPIC {}{}", if self.if_exists { "IF EXISTS " } else { "" }, Name(&self.name))
    }
}

/// ```text
/// CLEAR TOPIC <name>
/// ```
/// Deletes every message and every group position; offsets keep counting up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct ClearTopic {
    pub name: ObjectName,
}

impl ClearTopic {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "CLEAR")?;
        expect_word(p, "TOPIC")?;
        Ok(Self { name: parse_name(p, "a topic name")? })
    }
}

impl fmt::Display for ClearTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CLEAR TOPIC {}", Name(&self.name))
    }
}

/// ```text
/// RUN RETENTION [ON <topic>]
/// ```
/// Enforces the retention limits now, on one topic or on all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct RunRetention {
    pub topic: Option<ObjectName>,
}

impl RunRetention {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "RUN")?;
        expect_word(p, "RETENTION")?;
        let topic = if crate::parser::parse_word(p, "ON") { Some(parse_name(p, "a topic name")?) } else { None };
        Ok(Self { topic })
    }
}

impl fmt::Display for RunRetention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RUN RETENTION")?;
        if let Some(t) = &self.topic {
            write!(f, " ON {}", Name(t))?;
        }
        Ok(())
    }
}

/// The row change a source route listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceOp {
    Insert,
    Update,
    Delete,
}

impl SourceOp {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceOp::Insert => "INSERT",
            SourceOp::Update => "UPDATE",
            SourceOp::Delete => "DELETE",
        }
    }

    fn parse(p: &mut Parser<'_>) -> Result<Self, ParserError> {
        match p.parse_one_of_keywords(&[Keyword::INSERT, Keyword::UPDATE, Keyword::DELETE]) {
            Some(Keyword::INSERT) => Ok(SourceOp::Insert),
            Some(Keyword::UPDATE) => Ok(SourceOp::Update),
            Some(Keyword::DELETE) => Ok(SourceOp::Delete),
            _ => p.expected("INSERT, UPDATE or DELETE", p.peek_token()),
        }
    }
}

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum PayloadMode {
    /// The primary-key columns only.
    Key,
    /// The whole row after the change (before it for DELETE).
    #[default]
    Full,
    /// Only what changed (see docs/sql-reference.md).
    Diff,
}

impl PayloadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadMode::Key => "key",
            PayloadMode::Full => "full",
            PayloadMode::Diff => "diff",
        }
    }
}

/// ```text
/// ALTER TOPIC <name> ADD SOURCE <table> ON INSERT|UPDATE|DELETE [WHERE <row filter>]
///     [PARTITION BY (<expr>)] [WITH (payload = 'key'|'full'|'diff')]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct AddSource {
    pub table: ObjectName,
    pub op: SourceOp,
    pub filter: Option<Expr>,
    pub partition_by: Option<Expr>,
    pub payload: Option<PayloadMode>,
}

/// What `ALTER TOPIC` changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum AlterTopicAction {
    AddSource(Box<AddSource>),
    /// `DROP SOURCE <table> ON INSERT|UPDATE|DELETE`
    DropSource {
        table: ObjectName,
        op: SourceOp,
    },
    /// `SET RETENTION WITH (retention_seconds = .., retention_max_bytes = ..)`
    SetRetention(Vec<TopicOption>),
    /// `CLEAR RETENTION`: no time or size limit.
    ClearRetention,
    /// `SET PARTITIONS <n>` (increase only)
    SetPartitions(u64),
}

/// ```text
/// ALTER TOPIC <name> ADD SOURCE ... | DROP SOURCE <table> ON <op>
///     | SET RETENTION WITH (...) | CLEAR RETENTION | SET PARTITIONS <n>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct AlterTopic {
    pub name: ObjectName,
    pub action: AlterTopicAction,
}

impl AlterTopic {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "ALTER")?;
        expect_word(p, "TOPIC")?;
        let name = parse_name(p, "a topic name")?;
        let action = if parse_words(p, &["ADD", "SOURCE"]) {
            let table = parse_name(p, "a table name")?;
            p.expect_keyword_is(Keyword::ON)?;
            let op = SourceOp::parse(p)?;
            let filter = if p.parse_keyword(Keyword::WHERE) { Some(parse_row_expr(p, "WHERE")?) } else { None };
            let partition_by = if p.parse_keywords(&[Keyword::PARTITION, Keyword::BY]) {
                p.expect_token(&Token::LParen)?;
                let e = parse_row_expr(p, "PARTITION BY")?;
                p.expect_token(&Token::RParen)?;
                Some(e)
            } else {
                None
            };
            let payload = if p.parse_keyword(Keyword::WITH) {
                let mut opts = parse_options(p, &["payload"], |p, _| {
                    let at = p.peek_token();
                    match parse_string(p, "'key', 'full' or 'diff'")?.to_ascii_lowercase().as_str() {
                        "key" => Ok(PayloadMode::Key),
                        "full" => Ok(PayloadMode::Full),
                        "diff" => Ok(PayloadMode::Diff),
                        _ => p.expected("'key', 'full' or 'diff'", at),
                    }
                })?;
                opts.pop()
            } else {
                None
            };
            AlterTopicAction::AddSource(Box::new(AddSource { table, op, filter, partition_by, payload }))
        } else if parse_words(p, &["DROP", "SOURCE"]) {
            let table = parse_name(p, "a table name")?;
            p.expect_keyword_is(Keyword::ON)?;
            AlterTopicAction::DropSource { table, op: SourceOp::parse(p)? }
        } else if parse_words(p, &["SET", "RETENTION"]) {
            p.expect_keyword_is(Keyword::WITH)?;
            AlterTopicAction::SetRetention(parse_topic_options(p, &["retention_seconds", "retention_max_bytes"])?)
        } else if parse_words(p, &["CLEAR", "RETENTION"]) {
            AlterTopicAction::ClearRetention
        } else if parse_words(p, &["SET", "PARTITIONS"]) {
            AlterTopicAction::SetPartitions(parse_positive(p, "a positive number of partitions")?)
        } else {
            let found = p.peek_token();
            return Err(p
                .expected::<()>("ADD SOURCE, DROP SOURCE, SET RETENTION, CLEAR RETENTION or SET PARTITIONS", found)
                .unwrap_err()
                .into());
        };
        Ok(Self { name, action })
    }
}

impl fmt::Display for AlterTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ALTER TOPIC {} ", Name(&self.name))?;
        match &self.action {
            AlterTopicAction::AddSource(s) => {
                write!(f, "ADD SOURCE {} ON {}", Name(&s.table), s.op.as_str())?;
                if let Some(e) = &s.filter {
                    write!(f, " WHERE {e}")?;
                }
                if let Some(e) = &s.partition_by {
                    write!(f, " PARTITION BY ({e})")?;
                }
                if let Some(m) = s.payload {
                    write!(f, " WITH (payload = '{}')", m.as_str())?;
                }
                Ok(())
            }
            AlterTopicAction::DropSource { table, op } => write!(f, "DROP SOURCE {} ON {}", Name(table), op.as_str()),
            AlterTopicAction::SetRetention(opts) => {
                f.write_str("SET RETENTION")?;
                write_options(f, opts)
            }
            AlterTopicAction::ClearRetention => f.write_str("CLEAR RETENTION"),
            AlterTopicAction::SetPartitions(n) => write!(f, "SET PARTITIONS {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::TopicStatement;
    use crate::ast::test_util::{parse_error, parses_to, verified_stmt};

    #[test]
    fn create_topic_round_trips() {
        verified_stmt("CREATE TOPIC app.events");
        verified_stmt("CREATE TOPIC IF NOT EXISTS events PARTITIONS 4");
        // `IF` starts IF [NOT] EXISTS; a topic named if must be quoted.
        assert!(parse_error("CREATE TOPIC IF").contains("Expected: NOT, found: EOF"));
        assert!(parse_error("DROP TOPIC IF events").contains("Expected: EXISTS, found: events"));
        verified_stmt("CREATE TOPIC \"if\"");
        let s = verified_stmt(
            "CREATE TOPIC app.events PARTITIONS 2 WITH (retention_seconds = 3600, retention_max_bytes = NULL, alias = 'ev')",
        );
        let TopicStatement::CreateTopic(c) = s else { panic!() };
        assert_eq!(c.partitions, Some(2));
        assert_eq!(c.options[1], TopicOption::RetentionMaxBytes(None));
        parses_to("create topic Ev with (ALIAS = 'x')", "CREATE TOPIC Ev WITH (alias = 'x')");
    }

    #[test]
    fn create_topic_errors_name_the_token() {
        assert!(
            parse_error("CREATE TOPIC t PARTITIONS 0").contains("Expected: a positive number of partitions, found: 0")
        );
        assert!(parse_error("CREATE TOPIC t PARTITIONS -1").contains("found: -"));
        assert!(parse_error("CREATE TOPIC t WITH (colour = 1)").contains("found: colour"));
        assert!(
            parse_error("CREATE TOPIC t WITH (alias = 'a', alias = 'b')")
                .contains("option alias specified more than once")
        );
        assert!(parse_error("CREATE TOPIC t WITH (retention_seconds = 0)").contains("found: 0"));
        // Limits that would wrap in retention's arithmetic or overflow a bigint are refused.
        for (sql, expected) in [
            ("CREATE TOPIC t WITH (retention_seconds = 9223372036854775808)", "at most 31622400000"),
            ("CREATE TOPIC t WITH (retention_seconds = 18446744073709551615)", "at most 31622400000"),
            (
                "ALTER TOPIC t SET RETENTION WITH (retention_max_bytes = 9223372036854775808)",
                "at most 9223372036854775807",
            ),
            ("CREATE TOPIC t WITH (retention_seconds = 99999999999999999999999)", "as u64"),
        ] {
            assert!(parse_error(sql).contains(expected), "{sql}: {}", parse_error(sql));
        }
        verified_stmt(
            "CREATE TOPIC t WITH (retention_seconds = 31622400000, retention_max_bytes = 9223372036854775807)",
        );
        assert!(parse_error("CREATE TOPIC t extra").contains("Expected: end of statement, found: extra"));
        assert!(parse_error("CREATE TOPIC").contains("Expected: a topic name, found: EOF"));
    }

    #[test]
    fn drop_and_clear_round_trip() {
        let s = verified_stmt("DROP TOPIC IF EXISTS app.events");
        assert!(matches!(s, TopicStatement::DropTopic(DropTopic { if_exists: true, .. })));
        verified_stmt("DROP TOPIC events");
        verified_stmt("CLEAR TOPIC app.events");
        verified_stmt("RUN RETENTION");
        let TopicStatement::RunRetention(r) = parses_to("run retention on App.\"Ev\"", "RUN RETENTION ON App.\"Ev\"")
        else {
            panic!()
        };
        assert_eq!(r.topic.unwrap().to_string(), "App.\"Ev\"");
        assert!(parse_error("RUN RETENTION ON").contains("a topic name"));
        // `IF` is never taken for the topic name.
        let TopicStatement::DropTopic(d) = verified_stmt("DROP TOPIC IF EXISTS x") else { panic!() };
        assert_eq!(d.name.to_string(), "x");
    }

    #[test]
    fn alter_topic_round_trips() {
        verified_stmt("ALTER TOPIC t ADD SOURCE app.orders ON INSERT");
        let s = verified_stmt(
            "ALTER TOPIC t ADD SOURCE orders ON UPDATE WHERE status = 'paid' AND amount > 100 PARTITION BY (customer_id) WITH (payload = 'diff')",
        );
        let TopicStatement::AlterTopic(AlterTopic { action: AlterTopicAction::AddSource(a), .. }) = s else { panic!() };
        assert_eq!((a.op, a.payload), (SourceOp::Update, Some(PayloadMode::Diff)));
        verified_stmt("ALTER TOPIC t DROP SOURCE orders ON DELETE");
        verified_stmt("ALTER TOPIC t SET RETENTION WITH (retention_seconds = 60)");
        verified_stmt("ALTER TOPIC t CLEAR RETENTION");
        verified_stmt("ALTER TOPIC t SET PARTITIONS 8");
        parses_to(
            "alter topic t add source o on delete with (PAYLOAD = 'KEY')",
            "ALTER TOPIC t ADD SOURCE o ON DELETE WITH (payload = 'key')",
        );
    }

    #[test]
    fn alter_topic_errors() {
        assert!(
            parse_error("ALTER TOPIC t ADD SOURCE o ON MERGE")
                .contains("Expected: INSERT, UPDATE or DELETE, found: MERGE")
        );
        assert!(
            parse_error("ALTER TOPIC t ADD SOURCE o ON INSERT WITH (payload = 'all')")
                .contains("Expected: 'key', 'full' or 'diff', found: 'all'")
        );
        assert!(
            parse_error("ALTER TOPIC t ADD SOURCE o ON INSERT WHERE id IN (SELECT id FROM x)")
                .contains("WHERE of a topic source cannot contain a subquery")
        );
        assert!(parse_error("ALTER TOPIC t RENAME TO u").contains("found: RENAME"));
        assert!(parse_error("ALTER TOPIC t SET RETENTION WITH (alias = 'x')").contains("found: alias"));
        assert!(parse_error("ALTER TOPIC t SET PARTITIONS 0").contains("found: 0"));
        assert!(
            parse_error("ALTER TOPIC t ADD SOURCE o ON INSERT WITH (payload = 'key') WHERE a = 1")
                .contains("Expected: end of statement, found: WHERE")
        );
    }
}
