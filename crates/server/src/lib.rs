//! The topicfusion server and CLI: configuration ([`config`]), authentication ([`auth`]), the
//! HTTP API ([`http`], with the web console), the PostgreSQL protocol ([`pg`]), what `/metrics`
//! adds to the engine's figures ([`metrics`]), `topicfusion serve` ([`serve`]) and
//! the client of `sql --url` ([`client`]). The binary (`main.rs`) is only argument parsing and output.

pub mod auth;
pub mod bridge;
pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pg;
pub mod serve;

use std::path::Path;

/// A one-line message for a data dir that cannot be opened; a dir held by another process (a
/// running server) suggests connecting to it instead.
pub fn open_error(dir: &Path, e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    if text.contains("LOCK") || text.contains("lock") {
        format!(
            "data dir {} is in use by another process (a running `topicfusion serve`?): connect to it with `topicfusion sql --url http://HOST:PORT`",
            dir.display()
        )
    } else {
        format!("cannot open data dir {}: {}", dir.display(), topicfusion_engine::one_line(&text, 1000))
    }
}
