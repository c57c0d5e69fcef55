//! DataFusion providers: the durable catalog, user tables, the `system` tables, and our part of
//! `pg_catalog`.

pub mod catalog;
pub mod pg_catalog;
pub mod system;
pub mod table;
