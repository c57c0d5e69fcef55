//! PostgreSQL's run-time parameters as this server has them: what `SHOW`, `SET`, `RESET`,
//! `current_setting(...)` and `set_config(...)` see. Drivers ask for some on connect (SQLAlchemy:
//! `SHOW transaction isolation level`, `SHOW standard_conforming_strings`) and set others
//! (`application_name`, `extra_float_digits`, `TimeZone`); pools reset them (`RESET ALL`).
//!
//! Values live in the [`Session`]: a `SET` changes only its own session. Parameters that would
//! change how values are read or written (`client_encoding`, `DateStyle`, `bytea_output`, ...)
//! accept only what this server does, and say so; informational ones take any value. Custom
//! parameters with a dot in their name (`myapp.tenant`) work as in PostgreSQL. `SET LOCAL`
//! lasts for the session (there are no multi-statement transactions to end it). `TimeZone`
//! takes any value, but `timestamp` columns hold UTC and are shown as stored.

use datafusion::common::{Result, plan_err};

use crate::session::Session;

/// The PostgreSQL version this server presents (`server_version`, `version()`): drivers pick
/// their SQL by it, and topicfusion speaks the protocol and catalog of PostgreSQL 15.
pub const PG_VERSION: &str = "15.0";
pub const PG_VERSION_NUM: &str = "150000";

/// What `version()` returns: PostgreSQL's form, which SQLAlchemy and others parse.
pub fn version_string() -> String {
    format!("PostgreSQL {PG_VERSION} (topicfusion {} on DataFusion 55)", env!("CARGO_PKG_VERSION"))
}

/// Which values a parameter takes.
#[derive(Debug, Clone, Copy)]
enum Accepts {
    /// Cannot be set.
    ReadOnly,
    /// Any value.
    Any,
    /// One of these (compared case-insensitively, spaces ignored); stored as the first.
    OneOf(&'static [&'static str]),
}

struct Parameter {
    /// PostgreSQL's spelling (`SHOW` names its column so).
    name: &'static str,
    default: &'static str,
    accepts: Accepts,
}

const fn p(name: &'static str, default: &'static str, accepts: Accepts) -> Parameter {
    Parameter { name, default, accepts }
}

use Accepts::{Any, OneOf, ReadOnly};

/// The parameters, by name. `is_superuser` and `session_authorization` depend on the user.
const PARAMETERS: &[Parameter] = &[
    p("application_name", "", Any),
    p("bytea_output", "hex", OneOf(&["hex"])),
    p("client_encoding", "UTF8", OneOf(&["UTF8", "utf-8", "unicode"])),
    p("client_min_messages", "notice", Any),
    p("DateStyle", "ISO, MDY", OneOf(&["ISO, MDY", "ISO", "ISO, YMD", "ISO, DMY"])),
    p("default_table_access_method", "heap", ReadOnly),
    p("default_transaction_isolation", "read committed", Any),
    p("default_transaction_read_only", "off", OneOf(&["off", "false"])),
    p("extra_float_digits", "1", Any),
    p("idle_in_transaction_session_timeout", "0", Any),
    p("integer_datetimes", "on", ReadOnly),
    p("IntervalStyle", "postgres", OneOf(&["postgres"])),
    p("is_superuser", "off", ReadOnly),
    p("jit", "off", OneOf(&["off", "false"])),
    p("lc_collate", "C", ReadOnly),
    p("lc_ctype", "C", ReadOnly),
    p("lc_messages", "C", Any),
    p("lc_monetary", "C", Any),
    p("lc_numeric", "C", Any),
    p("lc_time", "C", Any),
    p("lock_timeout", "0", Any),
    p("max_identifier_length", "63", ReadOnly),
    p("search_path", "\"$user\", public", Any),
    p("server_encoding", "UTF8", ReadOnly),
    p("server_version", PG_VERSION, ReadOnly),
    p("server_version_num", PG_VERSION_NUM, ReadOnly),
    p("session_authorization", "", ReadOnly),
    p("standard_conforming_strings", "on", OneOf(&["on", "true"])),
    p("statement_timeout", "0", Any),
    p("synchronous_commit", "on", Any),
    p("TimeZone", "UTC", Any),
    p("transaction_isolation", "read committed", Any),
    p("transaction_read_only", "off", OneOf(&["off", "false"])),
];

fn find(name: &str) -> Option<&'static Parameter> {
    PARAMETERS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// A parameter name as written (`SHOW TIME ZONE`, `SHOW transaction isolation level`) in
/// PostgreSQL's one-word form.
pub fn canonical_name(words: &[String]) -> String {
    let joined = words.iter().map(|w| w.to_ascii_lowercase()).collect::<Vec<_>>().join(" ");
    match joined.as_str() {
        "time zone" => "timezone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "session authorization" => "session_authorization".into(),
        _ => words.join("."),
    }
}

/// Who the session runs as, for the parameters that depend on it.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub user: &'a str,
    pub superuser: bool,
}

/// `(PostgreSQL's spelling of the name, current value)` of a parameter, or `None` when it is
/// unknown (a custom `a.b` parameter never set is unknown, as in PostgreSQL).
pub fn show(session: &Session, name: &str, who: Identity<'_>) -> Option<(String, String)> {
    let key = name.to_ascii_lowercase();
    if let Some(v) = session.settings.get(&key) {
        let name = find(&key).map_or(key.clone(), |p| p.name.to_owned());
        return Some((name, v.clone()));
    }
    let p = find(&key)?;
    let value = match p.name {
        "is_superuser" => if who.superuser { "on" } else { "off" }.to_owned(),
        "session_authorization" => who.user.to_owned(),
        _ => p.default.to_owned(),
    };
    Some((p.name.to_owned(), value))
}

/// Every parameter's `(name, value)`, for `SHOW ALL`'s PostgreSQL part and the ParameterStatus
/// messages a connection starts with.
pub fn all(session: &Session, who: Identity<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = PARAMETERS.iter().filter_map(|p| show(session, p.name, who)).collect();
    for (k, v) in &session.settings {
        if find(k).is_none() {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

fn unknown(name: &str) -> Result<()> {
    plan_err!("unrecognized configuration parameter \"{name}\"")
}

/// `SET name = value`, `set_config(name, value, ...)`; `None` sets the default (`SET name TO
/// DEFAULT`). Returns the value as stored.
pub fn set(session: &mut Session, name: &str, value: Option<&str>) -> Result<String> {
    let key = name.to_ascii_lowercase();
    let Some(p) = find(&key) else {
        // Custom parameters (`myapp.tenant`) as in PostgreSQL; anything else is unknown.
        if !key.contains('.') || key.starts_with('.') || key.ends_with('.') {
            unknown(name)?;
        }
        let value = value.unwrap_or_default().to_owned();
        session.settings.insert(key, value.clone());
        return Ok(value);
    };
    let Some(value) = value else {
        session.settings.remove(&key);
        return Ok(p.default.to_owned());
    };
    let stored = match p.accepts {
        ReadOnly => return plan_err!("parameter \"{}\" cannot be changed", p.name),
        Any => value.to_owned(),
        OneOf(values) => {
            let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
            if !values.iter().any(|v| norm(v) == norm(value)) {
                return plan_err!(
                    "invalid value for parameter \"{}\": \"{value}\" (this server supports only {})",
                    p.name,
                    values[0]
                );
            }
            if p.name == "DateStyle" { p.default.to_owned() } else { values[0].to_owned() }
        }
    };
    if p.name == "extra_float_digits" && !matches!(value.trim().parse::<i32>(), Ok(-15..=3)) {
        return plan_err!("invalid value for parameter \"extra_float_digits\": \"{value}\" (an integer from -15 to 3)");
    }
    session.settings.insert(key, stored.clone());
    Ok(stored)
}

/// `RESET name`.
pub fn reset(session: &mut Session, name: &str) -> Result<()> {
    let key = name.to_ascii_lowercase();
    if find(&key).is_none() && !key.contains('.') {
        return unknown(name);
    }
    session.settings.remove(&key);
    Ok(())
}
