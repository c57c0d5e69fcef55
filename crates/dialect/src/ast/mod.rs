//! The AST of the topic statements, one file per statement family; each file also holds the
//! parser of its family and its round-trip tests.

mod cluster;
mod consume;
mod copy;
mod group;
mod session;
mod subscribe;
mod topic;
mod user;

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::parser::Parser;

pub use cluster::ClusterStatement;
pub use consume::{Consume, ConsumeOption, StartPosition};
pub use copy::{CopyEndpoint, CopyFormat, CopyFrom, CopyOptions, CopySource, CopyStatement, CopyTo};
pub use group::{Ack, AckTarget, DropConsumerGroup, MAX_ACK_OFFSETS, ResetConsumerGroup};
pub use session::{CursorDirection, SessionStatement};
pub use subscribe::Subscribe;
pub use topic::{
    AddSource, AlterTopic, AlterTopicAction, ClearTopic, CreateTopic, DropTopic, MAX_RETENTION_BYTES,
    MAX_RETENTION_SECONDS, PayloadMode, RunRetention, SourceOp, TopicOption,
};
pub use user::{AlterUser, AlterUserAction, CreateUser, DropUser, MAX_USER_NAME_BYTES, Role, UserStatement};

use crate::parser::{is_word, parse_word};

/// Every statement the dialect adds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum TopicStatement {
    CreateTopic(CreateTopic),
    DropTopic(DropTopic),
    ClearTopic(ClearTopic),
    AlterTopic(AlterTopic),
    /// `SHOW TOPICS`
    ShowTopics,
    Consume(Consume),
    Ack(Ack),
    ResetConsumerGroup(ResetConsumerGroup),
    DropConsumerGroup(DropConsumerGroup),
    /// `RUN RETENTION [ON <topic>]`
    RunRetention(RunRetention),
}

impl TopicStatement {
    /// Parses one topic statement (the caller has checked that it starts like one).
    pub fn parse(p: &mut Parser<'_>) -> Result<Self> {
        let first = p.peek_token().token;
        let second = p.peek_nth_token(1).token;
        let stmt = if is_word(&first, "CREATE") {
            TopicStatement::CreateTopic(CreateTopic::parse(p)?)
        } else if is_word(&first, "DROP") && is_word(&second, "TOPIC") {
            TopicStatement::DropTopic(DropTopic::parse(p)?)
        } else if is_word(&first, "DROP") {
            TopicStatement::DropConsumerGroup(DropConsumerGroup::parse(p)?)
        } else if is_word(&first, "CLEAR") {
            TopicStatement::ClearTopic(ClearTopic::parse(p)?)
        } else if is_word(&first, "ALTER") {
            TopicStatement::AlterTopic(AlterTopic::parse(p)?)
        } else if is_word(&first, "SHOW") {
            p.next_token();
            parse_word(p, "TOPICS");
            TopicStatement::ShowTopics
        } else if is_word(&first, "CONSUME") {
            TopicStatement::Consume(Consume::parse(p)?)
        } else if is_word(&first, "ACK") {
            TopicStatement::Ack(Ack::parse(p)?)
        } else if is_word(&first, "RESET") {
            TopicStatement::ResetConsumerGroup(ResetConsumerGroup::parse(p)?)
        } else if is_word(&first, "RUN") {
            TopicStatement::RunRetention(RunRetention::parse(p)?)
        } else {
            return Err(p.expected::<()>("a topic statement", p.peek_token()).unwrap_err().into());
        };
        Ok(stmt)
    }
}

impl TopicStatement {
    /// The SQL expressions the statement carries (a route's filter and PARTITION BY).
    pub fn expressions(&self) -> Vec<&datafusion_sql::sqlparser::ast::Expr> {
        match self {
            TopicStatement::AlterTopic(AlterTopic { action: AlterTopicAction::AddSource(a), .. }) => {
                a.filter.iter().chain(a.partition_by.iter()).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for TopicStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicStatement::CreateTopic(s) => s.fmt(f),
            TopicStatement::DropTopic(s) => s.fmt(f),
            TopicStatement::ClearTopic(s) => s.fmt(f),
            TopicStatement::AlterTopic(s) => s.fmt(f),
            TopicStatement::ShowTopics => f.write_str("SHOW TOPICS"),
            TopicStatement::Consume(s) => s.fmt(f),
            TopicStatement::Ack(s) => s.fmt(f),
            TopicStatement::ResetConsumerGroup(s) => s.fmt(f),
            TopicStatement::DropConsumerGroup(s) => s.fmt(f),
            TopicStatement::RunRetention(s) => s.fmt(f),
        }
    }
}

/// Prints a table or topic name so that it parses back to the same name: quoted parts with
/// their quote characters doubled (sqlparser 0.62 prints `"a""b"` as `"a"b"`).
pub(crate) struct Name<'a>(pub &'a datafusion_sql::sqlparser::ast::ObjectName);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            match part.as_ident() {
                Some(ident) => match ident.quote_style {
                    Some(q) => {
                        let doubled = format!("{q}{q}");
                        write!(f, "{q}{}{q}", ident.value.replace(q, &doubled))?
                    }
                    None => f.write_str(&ident.value)?,
                },
                None => write!(f, "{part}")?,
            }
        }
        Ok(())
    }
}

/// Prints a string as a single-quoted SQL literal.
pub(crate) struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.0.replace('\'', "''"))
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::parser::{Statement, parse_sql};

    /// Parses one topic statement, prints it, and checks the text round-trips exactly.
    pub fn verified_stmt(sql: &str) -> super::TopicStatement {
        parses_to(sql, sql)
    }

    /// Parses `sql`, checks it prints as `canonical`, and that `canonical` reparses to the same AST.
    pub fn parses_to(sql: &str, canonical: &str) -> super::TopicStatement {
        let mut stmts = parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(stmts.len(), 1, "{sql}");
        let Statement::Topic(stmt) = stmts.remove(0).statement else { panic!("not a topic statement: {sql}") };
        assert_eq!(stmt.to_string(), canonical);
        let again = parse_sql(canonical).unwrap().remove(0).statement;
        assert_eq!(again, Statement::Topic(stmt.clone()));
        stmt
    }

    /// The parse error of `sql`, as text.
    pub fn parse_error(sql: &str) -> String {
        match parse_sql(sql) {
            Ok(s) => panic!("expected an error for {sql}, parsed {s:?}"),
            Err(e) => e.to_string(),
        }
    }
}
