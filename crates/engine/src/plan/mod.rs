//! Logical plan nodes, one per file, and the checked arithmetic the DML rewrite puts in their
//! inputs.

pub mod checked_arithmetic;
pub mod table_write;
pub mod topic_command;
