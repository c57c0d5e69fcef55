//! Physical operators, one per file.

pub mod table_write;
pub mod topic_command;
