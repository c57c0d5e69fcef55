//! Cluster statements: `ALTER CLUSTER ADD NODE` and `ALTER CLUSTER REMOVE NODE`, the changes of
//! a replicated cluster's membership (docs/cluster.md).

use std::fmt;

use datafusion_common::Result;
use datafusion_sql::sqlparser::parser::Parser;

use super::Quoted;
use crate::parser::{expect_word, is_word, parse_positive, parse_string, parse_word};

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum ClusterStatement {
    /// `ALTER CLUSTER ADD NODE <id> '<raft address>' HTTP '<address>' PG '<address>'`
    AddNode { id: u64, raft: String, http: String, pg: String },
    /// `ALTER CLUSTER REMOVE NODE <id>`
    RemoveNode { id: u64 },
}

impl ClusterStatement {
    /// Whether the statement starts `ALTER CLUSTER`.
    pub(crate) fn claims(p: &Parser<'_>) -> bool {
        is_word(&p.peek_nth_token(0).token, "ALTER") && is_word(&p.peek_nth_token(1).token, "CLUSTER")
    }

    /// Parses one cluster statement (the caller has checked [`Self::claims`]).
    pub fn parse(p: &mut Parser<'_>) -> Result<Self> {
        expect_word(p, "ALTER")?;
        expect_word(p, "CLUSTER")?;
        let add = if parse_word(p, "ADD") {
            true
        } else if parse_word(p, "REMOVE") {
            false
        } else {
            return Err(p.expected::<()>("ADD NODE or REMOVE NODE", p.peek_token()).unwrap_err().into());
        };
        expect_word(p, "NODE")?;
        let id = parse_positive(p, "a node id (1 or more)")?;
        if !add {
            return Ok(ClusterStatement::RemoveNode { id });
        }
        let raft = parse_string(p, "the node's Raft address in single quotes ('IP:PORT')")?;
        expect_word(p, "HTTP")?;
        let http = parse_string(p, "the node's HTTP address in single quotes ('IP:PORT')")?;
        expect_word(p, "PG")?;
        let pg = parse_string(p, "the node's PostgreSQL address in single quotes ('IP:PORT')")?;
        Ok(ClusterStatement::AddNode { id, raft, http, pg })
    }
}

impl fmt::Display for ClusterStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterStatement::AddNode { id, raft, http, pg } => {
                write!(f, "ALTER CLUSTER ADD NODE {id} {} HTTP {} PG {}", Quoted(raft), Quoted(http), Quoted(pg))
            }
            ClusterStatement::RemoveNode { id } => write!(f, "ALTER CLUSTER REMOVE NODE {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::test_util::parse_error;
    use crate::parser::{Statement, parse_sql};

    /// Parses `sql`, checks it prints as `canonical` and that `canonical` parses the same.
    fn parses_to(sql: &str, canonical: &str) -> ClusterStatement {
        let parse = |sql: &str| match parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).remove(0).statement {
            Statement::Cluster(c) => c,
            other => panic!("not a cluster statement: {other:?}"),
        };
        let c = parse(sql);
        assert_eq!(c.to_string(), canonical);
        assert_eq!(parse(canonical), c);
        c
    }

    #[test]
    fn cluster_statements_round_trip() {
        let c = parses_to(
            "alter cluster add node 4 '10.0.0.4:7000' http '10.0.0.4:8080' pg '10.0.0.4:5432'",
            "ALTER CLUSTER ADD NODE 4 '10.0.0.4:7000' HTTP '10.0.0.4:8080' PG '10.0.0.4:5432'",
        );
        assert_eq!(
            c,
            ClusterStatement::AddNode {
                id: 4,
                raft: "10.0.0.4:7000".into(),
                http: "10.0.0.4:8080".into(),
                pg: "10.0.0.4:5432".into()
            }
        );
        assert_eq!(
            parses_to(
                "ALTER CLUSTER REMOVE NODE 18446744073709551615",
                "ALTER CLUSTER REMOVE NODE 18446744073709551615"
            ),
            ClusterStatement::RemoveNode { id: u64::MAX }
        );
    }

    #[test]
    fn cluster_statement_errors() {
        for (sql, want) in [
            ("ALTER CLUSTER", "Expected: ADD NODE or REMOVE NODE, found: EOF"),
            ("ALTER CLUSTER DROP NODE 1", "Expected: ADD NODE or REMOVE NODE, found: DROP"),
            ("ALTER CLUSTER REMOVE 1", "Expected: NODE, found: 1"),
            ("ALTER CLUSTER REMOVE NODE 0", "Expected: a node id (1 or more), found: 0"),
            ("ALTER CLUSTER REMOVE NODE -1", "Expected: a node id (1 or more), found: -"),
            ("ALTER CLUSTER REMOVE NODE 18446744073709551616", "Could not parse '18446744073709551616' as u64"),
            ("ALTER CLUSTER REMOVE NODE 1.5", "Could not parse '1.5' as u64"),
            ("ALTER CLUSTER ADD NODE 4 '127.0.0.1:1'", "Expected: HTTP, found: EOF"),
            ("ALTER CLUSTER ADD NODE 4 127 HTTP 'a' PG 'b'", "Expected: the node's Raft address in single quotes"),
            ("ALTER CLUSTER ADD NODE 4 'a' HTTP 'b' PG 'c' extra", "Expected: end of statement, found: extra"),
        ] {
            let e = parse_error(sql);
            assert!(e.contains(want), "{sql}: {e}");
        }
    }
}
