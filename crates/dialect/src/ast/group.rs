//! Consumer-group statements: `ACK`, `RESET CONSUMER GROUP`, `DROP CONSUMER GROUP`.

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::ast::ObjectName;
use datafusion_sql::sqlparser::keywords::Keyword;
use datafusion_sql::sqlparser::parser::{Parser, ParserError};
use datafusion_sql::sqlparser::tokenizer::Token;

use super::{Name, Quoted, StartPosition};
use crate::parser::{expect_word, parse_group_name, parse_name, parse_uint, parse_word};

/// What an ACK acknowledges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum AckTarget {
    /// `UPTO OFFSET n`: cumulative, every message of the partition at or below `n`.
    Upto(u64),
    /// `OFFSETS (a, b, ...)`: exactly these messages.
    Offsets(Vec<u64>),
}

/// The most offsets one `ACK ... OFFSETS (...)` may list.
pub const MAX_ACK_OFFSETS: usize = 10_000;

/// ```text
/// ACK <topic> GROUP '<g>' [PARTITION <n>] UPTO OFFSET <n>
/// ACK <topic> GROUP '<g>' [PARTITION <n>] OFFSETS (<n> [, <n> ...])
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct Ack {
    pub topic: ObjectName,
    pub group: String,
    pub partition: Option<u64>,
    pub target: AckTarget,
}

impl Ack {
    pub(crate) fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "ACK")?;
        let topic = parse_name(p, "a topic name")?;
        p.expect_keyword_is(Keyword::GROUP)?;
        let group = parse_group_name(p)?;
        let partition =
            if p.parse_keyword(Keyword::PARTITION) { Some(parse_uint(p, "a partition number")?) } else { None };
        let target = if parse_word(p, "OFFSETS") {
            p.expect_token(&Token::LParen)?;
            let mut offsets = vec![parse_uint(p, "an offset")?];
            while p.consume_token(&Token::Comma) {
                if offsets.len() == MAX_ACK_OFFSETS {
                    return Err(ParserError::ParserError(format!(
                        "ACK ... OFFSETS takes at most {MAX_ACK_OFFSETS} offsets"
                    ))
                    .into());
                }
                offsets.push(parse_uint(p, "an offset")?);
            }
            p.expect_token(&Token::RParen)?;
            AckTarget::Offsets(offsets)
        } else if parse_word(p, "UPTO") {
            p.expect_keyword_is(Keyword::OFFSET)?;
            AckTarget::Upto(parse_uint(p, "an offset")?)
        } else {
            return Err(p.expected::<()>("UPTO OFFSET <n> or OFFSETS (<n>, ...)", p.peek_token()).unwrap_err().into());
        };
        Ok(Self { topic, group, partition, target })
    }
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ACK {} GROUP {}", Name(&self.topic), Quoted(&self.group))?;
        if let Some(n) = self.partition {
            write!(f, " PARTITION {n}")?;
        }
        match &self.target {
            AckTarget::Upto(n) => write!(f, " UPTO OFFSET {n}"),
            AckTarget::Offsets(list) => {
                let parts: Vec<String> = list.iter().map(u64::to_string).collect();
                write!(f, " OFFSETS ({})", parts.join(", "))
            }
        }
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
        write!(f, "RESET CONSUMER GROUP {} ON {}", Quoted(&self.group), Name(&self.topic))?;
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
        write!(f, "DROP CONSUMER GROUP {} ON {}", Quoted(&self.group), Name(&self.topic))
    }
}

#[cfg(test)]
mod tests {
    use crate::ast::test_util::{parse_error, parses_to, verified_stmt};
    use crate::ast::{StartPosition, TopicStatement};

    #[test]
    fn group_statements_round_trip() {
        verified_stmt("ACK app.events GROUP 'g' UPTO OFFSET 41");
        verified_stmt("ACK t GROUP 'g' PARTITION 3 UPTO OFFSET 0");
        let s = verified_stmt("ACK t GROUP 'g' PARTITION 1 OFFSETS (7, 3, 5)");
        let TopicStatement::Ack(a) = s else { panic!() };
        assert_eq!(a.target, super::AckTarget::Offsets(vec![7, 3, 5]));
        parses_to("ack t group 'g' offsets(1,2)", "ACK t GROUP 'g' OFFSETS (1, 2)");
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
        assert!(parse_error("ACK t GROUP 'g' 5").contains("Expected: UPTO OFFSET <n> or OFFSETS (<n>, ...), found: 5"));
        assert!(parse_error("ACK t GROUP 'g' OFFSETS ()").contains("Expected: an offset, found: )"));
        assert!(parse_error("ACK t GROUP 'g' OFFSETS (1,)").contains("Expected: an offset, found: )"));
        let many: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
        assert!(
            parse_error(&format!("ACK t GROUP 'g' OFFSETS ({})", many.join(","))).contains("at most 10000 offsets")
        );
        assert!(parse_error("ACK t GROUP 'g' UPTO OFFSET -5").contains("Expected: an offset, found: -"));
        assert!(parse_error("ACK t UPTO OFFSET 5").contains("Expected: GROUP, found: UPTO"));
        assert!(
            parse_error("RESET CONSUMER GROUP 'g' ON t TO 5")
                .contains("Expected: EARLIEST, LATEST, OFFSET <n> or TIMESTAMP '<rfc3339>', found: 5")
        );
        assert!(parse_error("DROP CONSUMER GROUP 'g'").contains("Expected: ON, found: EOF"));
    }
}
