//! Consumer-group statements: `ACK`, `RESET CONSUMER GROUP`, `DROP CONSUMER GROUP`.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::ObjectName;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::Parser;

use super::{Quoted, StartPosition};
use crate::parser::{expect_word, parse_group_name, parse_name, parse_uint};

/// ```text
/// ACK <topic> GROUP '<g>' [PARTITION <n>] UPTO OFFSET <n>
/// ```
/// Cumulative: every message of the partition at or below the offset is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct Ack {
    pub topic: ObjectName,
    pub group: String,
    pub partition: Option<u64>,
    pub upto: u64,
}

impl Ack {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "ACK")?;
        let topic = parse_name(p, "a topic name")?;
        p.expect_keyword_is(Keyword::GROUP)?;
        let group = parse_group_name(p)?;
        let partition =
            if p.parse_keyword(Keyword::PARTITION) { Some(parse_uint(p, "a partition number")?) } else { None };
        expect_word(p, "UPTO")?;
        p.expect_keyword_is(Keyword::OFFSET)?;
        let upto = parse_uint(p, "an offset")?;
        Ok(Self { topic, group, partition, upto })
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ACK {} GROUP {}", self.topic, Quoted(&self.group))?;
        if let Some(n) = self.partition {
            write!(f, " PARTITION {n}")?;
        }
        write!(f, " UPTO OFFSET {}", self.upto)
    }
}

/// ```text
/// RESET CONSUMER GROUP '<g>' ON <topic> [PARTITION <n>]
///     TO EARLIEST | LATEST | OFFSET <n> | TIMESTAMP '<rfc3339>'
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct ResetConsumerGroup {
    pub group: String,
    pub topic: ObjectName,
    pub partition: Option<u64>,
    pub to: StartPosition,
}

impl ResetConsumerGroup {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "RESET")?;
        expect_word(p, "CONSUMER")?;
        p.expect_keyword_is(Keyword::GROUP)?;
        let group = parse_group_name(p)?;
        p.expect_keyword_is(Keyword::ON)?;
        let topic = parse_name(p, "a topic name")?;
        let partition =
            if p.parse_keyword(Keyword::PARTITION) { Some(parse_uint(p, "a partition number")?) } else { None };
        p.expect_keyword_is(Keyword::TO)?;
        let to = StartPosition::parse(p, false)?;
        Ok(Self { group, topic, partition, to })
    }
}

impl fmt::Display for ResetConsumerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RESET CONSUMER GROUP {} ON {}", Quoted(&self.group), self.topic)?;
        if let Some(n) = self.partition {
            write!(f, " PARTITION {n}")?;
        }
        write!(f, " TO {}", self.to)
    }
}

/// ```text
/// DROP CONSUMER GROUP '<g>' ON <topic>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct DropConsumerGroup {
    pub group: String,
    pub topic: ObjectName,
}

impl DropConsumerGroup {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "DROP")?;
        expect_word(p, "CONSUMER")?;
        p.expect_keyword_is(Keyword::GROUP)?;
        let group = parse_group_name(p)?;
        p.expect_keyword_is(Keyword::ON)?;
        let topic = parse_name(p, "a topic name")?;
        Ok(Self { group, topic })
    }
}

impl fmt::Display for DropConsumerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DROP CONSUMER GROUP {} ON {}", Quoted(&self.group), self.topic)
    }
}

#[cfg(test)]
mod tests {
    use crate::ast::test_util::{parse_error, verified_stmt};
    use crate::ast::{StartPosition, TopicStatement};

    #[test]
    fn group_statements_round_trip() {
        verified_stmt("ACK app.events GROUP 'g' UPTO OFFSET 41");
        verified_stmt("ACK t GROUP 'g' PARTITION 3 UPTO OFFSET 0");
        let s = verified_stmt("RESET CONSUMER GROUP 'g' ON t PARTITION 1 TO OFFSET 5");
        let TopicStatement::ResetConsumerGroup(r) = s else { panic!() };
        assert_eq!(r.to, StartPosition::Offset(5));
        verified_stmt("RESET CONSUMER GROUP 'g' ON t TO EARLIEST");
        verified_stmt("RESET CONSUMER GROUP 'g' ON t TO TIMESTAMP '2026-01-01T00:00:00Z'");
        verified_stmt("DROP CONSUMER GROUP 'g' ON app.events");
    }

    #[test]
    fn group_statement_errors() {
        assert!(parse_error("ACK t GROUP 'g' UPTO 5").contains("Expected: OFFSET, found: 5"));
        assert!(parse_error("ACK t GROUP 'g' UPTO OFFSET -5").contains("Expected: an offset, found: -"));
        assert!(parse_error("ACK t UPTO OFFSET 5").contains("Expected: GROUP, found: UPTO"));
        assert!(
            parse_error("RESET CONSUMER GROUP 'g' ON t TO 5")
                .contains("Expected: EARLIEST, LATEST, OFFSET <n> or TIMESTAMP '<rfc3339>', found: 5")
        );
        assert!(parse_error("DROP CONSUMER GROUP 'g'").contains("Expected: ON, found: EOF"));
    }
}
