//! Change capture: the router and the JSON encoding of messages.

pub mod payload;
pub mod router;
