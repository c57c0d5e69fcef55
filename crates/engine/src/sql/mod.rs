//! The SQL layer: planning ([`planner`], the DML and topic-command plans in [`plan`]), their
//! operators ([`exec`]), the table, system and `pg_catalog` providers ([`provider`]), table and
//! schema DDL ([`ddl`]), and what PostgreSQL clients need of SQL ([`postgres`]). It turns
//! statements into work for the layers below: writes ([`crate::write`]), topics
//! ([`crate::topics`]), the catalog ([`crate::catalog`]).

pub mod ddl;
pub mod exec;
pub mod plan;
pub mod planner;
pub mod postgres;
pub mod provider;
