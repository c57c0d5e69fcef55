//! Topics: their DDL and routes ([`ddl`]), change capture that turns row changes into messages
//! ([`cdc`]), consumer groups with CONSUME and ACK ([`groups`]), and retention
//! ([`retention`]).

pub mod cdc;
pub mod ddl;
pub mod groups;
pub mod retention;
