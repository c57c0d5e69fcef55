//! What the engine does for PostgreSQL clients, independent of the wire: the `pg_catalog`
//! schema ([`catalog`]), `$n` parameters ([`params`]), and PostgreSQL's reading of literals,
//! type names ([`literals`]) and casts ([`casts`]), and its repeated output names
//! ([`output_names`]). What depends on a session (run-time
//! parameters, `current_setting` and the other session functions) is in
//! [`crate::session::settings`] and [`crate::session::functions`].

pub mod casts;
pub mod catalog;
pub mod literals;
pub mod output_names;
pub mod params;

pub use catalog::{install_pg_catalog, parse_catalog_query, rewrite_catalog_queries};
pub use params::{ParamValue, bind_parameters, parameter_count};
