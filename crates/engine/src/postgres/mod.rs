//! What the engine does for PostgreSQL clients, independent of the wire: the `pg_catalog`
//! schema ([`catalog`]), `$n` parameters ([`params`]), run-time parameters such as
//! `application_name` and `TimeZone` ([`settings`]), the server and session functions drivers
//! call ([`functions`]), and PostgreSQL's reading of literals, type names ([`literals`]) and
//! casts ([`casts`]).

pub mod casts;
pub mod catalog;
pub mod functions;
pub mod literals;
pub mod params;
pub mod settings;

pub use catalog::{install_pg_catalog, parse_catalog_query, rewrite_catalog_queries};
pub use params::{ParamValue, bind_parameters, parameter_count};
