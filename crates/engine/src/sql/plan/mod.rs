//! Logical plan nodes, one per file, the checked arithmetic the DML rewrite puts in their
//! inputs, and the planning of `UPDATE ... FROM`.

pub mod checked_arithmetic;
pub mod table_write;
pub mod topic_command;
pub mod update_from;
