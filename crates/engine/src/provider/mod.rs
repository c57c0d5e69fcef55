//! DataFusion providers: the durable catalog, user tables, and the `system` tables.

pub mod catalog;
pub mod system;
pub mod table;
