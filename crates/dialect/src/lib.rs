//! The topicfusion SQL dialect: a parser for the topic statements (`CREATE TOPIC`, `ALTER TOPIC`,
//! `CONSUME`, `ACK`, ...) layered over DataFusion's parser, and their typed AST. No storage.

pub mod ast;
pub mod parser;
#[cfg(test)]
mod proptests;
pub mod values;

pub use ast::*;
pub use parser::{
    MAX_EXPR_DEPTH, MAX_GROUP_NAME_BYTES, ParsedStatement, Statement, Statements, check_sql_depth, parse_expr_checked,
    parse_sql,
};
pub use values::{Literal, ValuesInsert, literal_of, scan_values_insert};

/// The sqlparser version DataFusion uses, re-exported so every crate agrees on it.
pub use datafusion_sql::sqlparser;
