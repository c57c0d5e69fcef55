//! The server's configuration: a TOML file (`--config`), command-line overrides and
//! `TOPICFUSION_ROOT_PASSWORD`. Every field has a default; unknown keys and bad values fail at
//! start with a message naming the key. Documented field by field in docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable that overrides `[auth] root_password`.
pub const ROOT_PASSWORD_ENV: &str = "TOPICFUSION_ROOT_PASSWORD";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub topics: TopicsConfig,
    pub auth: AuthConfig,
    pub live: LiveConfig,
    /// Present: this server is one node of a replicated cluster (docs/cluster.md).
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node's place in a cluster replicated with Raft.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: one of `peers`.
    pub node_id: u64,
    /// `HOST:PORT` the node answers its peers' Raft requests on.
    pub raft_listen: String,
    /// Sent with and required on every request between nodes: the same on every node.
    pub secret: String,
    /// Every node of the cluster, this one included: the membership a new cluster starts with.
    pub peers: Vec<PeerConfig>,
    /// A snapshot of the store is taken after this many applied log entries (and the log
    /// purged behind it).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Never form a new cluster: wait to be added to a running one (`ALTER CLUSTER ADD NODE`).
    /// Set it on a node added later or replacing a removed one.
    #[serde(default)]
    pub join: bool,
}

/// One node's addresses as its peers and clients reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// `HOST:PORT` of its Raft listener.
    pub raft: String,
    /// `HOST:PORT` of its HTTP API.
    pub http: String,
    /// `HOST:PORT` of its PostgreSQL protocol.
    pub pg: String,
}

fn default_snapshot_every() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `HOST:PORT` of the HTTP API (port 0: any free port, printed at start).
    pub listen: String,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a shutdown waits for in-flight requests before closing them.
    pub shutdown_timeout_ms: u64,
    /// `HOST:PORT` of the PostgreSQL protocol (port 0: any free port; empty: off).
    pub pg_listen: String,
    /// A PEM certificate chain and its private key: with both, PostgreSQL clients may use TLS.
    pub pg_tls_cert: Option<PathBuf>,
    pub pg_tls_key: Option<PathBuf>,
    /// The largest message a logged-in PostgreSQL client may send (a query's text, a Bind's
    /// parameters, one CopyData); larger ones end the connection with an error. Before login
    /// the limit is 10,000 bytes.
    pub pg_max_message_bytes: usize,
    /// Who may read `GET /metrics`.
    pub metrics: MetricsAccess,
}

/// `[server] metrics`: who may scrape `GET /metrics` (docs/operations.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Any logged-in user (Bearer token or Basic), whatever the role.
    #[default]
    Auth,
    /// Anyone who reaches the listener (for a scraper on a private network).
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// fsync the write-ahead log on every commit (survives power loss, not only crashes); on by
    /// default, as PostgreSQL's synchronous commit. No effect on a cluster node, whose Raft log
    /// is fsynced on every append instead.
    pub sync_writes: bool,
    /// The most row data one UPDATE, DELETE or INSERT ... SELECT may change (bytes).
    pub max_statement_bytes: usize,
    /// The threads that run DML statements' key checks and writes (0: one per core, at least 2).
    pub commit_threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// The wait of an HTTP consume request that names no `timeout_ms`.
    pub default_consume_timeout_ms: u64,
    /// The longest wait of an HTTP consume request; longer requests are clamped to it.
    pub max_consume_timeout_ms: u64,
    /// The claim length of a group CONSUME that names none.
    pub default_visibility_timeout_ms: u64,
    /// Whether role `user` may CONSUME and ACK.
    pub allow_user_role_consume: bool,
    /// How often the retention job runs (0: only on `RUN RETENTION`).
    pub retention_interval_ms: u64,
}

/// `[live]`: the memory bounds of live queries (docs/live-queries.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Changed rows of watched tables kept to resume from a position.
    pub history_rows: usize,
    /// Rows one subscriber may have waiting before it is ended as too slow.
    pub buffer_rows: usize,
    /// Open live queries on this server.
    pub max_subscriptions: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        let d = topicfusion_engine::LiveOptions::default();
        Self { history_rows: d.history_rows, buffer_rows: d.buffer_rows, max_subscriptions: d.max_subscriptions }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The password `root` gets when it has none (first start). Empty: no password, accepted
    /// only on loopback connections.
    pub root_password: String,
    /// How long a login token is valid.
    pub token_ttl_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            pg_listen: "127.0.0.1:5433".into(),
            pg_tls_cert: None,
            pg_tls_key: None,
            pg_max_message_bytes: 64 << 20,
            metrics: MetricsAccess::Auth,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            sync_writes: true,
            max_statement_bytes: topicfusion_engine::database::DEFAULT_MAX_STATEMENT_BYTES,
            commit_threads: 0,
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            default_consume_timeout_ms: 0,
            max_consume_timeout_ms: 30_000,
            default_visibility_timeout_ms: 60_000,
            allow_user_role_consume: false,
            retention_interval_ms: 60_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { root_password: String::new(), token_ttl_seconds: 3600 }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config value {key} = {value}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

/// The longest wait the engine allows for a CONSUME (`max_consume_timeout_ms` cannot exceed it).
pub const ENGINE_MAX_TIMEOUT_MS: u64 = topicfusion_engine::topics::groups::MAX_TIMEOUT_MS;

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            // toml's message names the key and shows the line; keep it on one line.
            message: topicfusion_engine::one_line(&e.to_string(), 1000),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `TOPICFUSION_ROOT_PASSWORD` (if set) over the file's `root_password`.
    pub fn apply_env(&mut self) {
        if let Ok(p) = std::env::var(ROOT_PASSWORD_ENV) {
            self.auth.root_password = p;
        }
    }

    /// Checks every value; the first bad one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: &str| {
            Err(ConfigError::Invalid { key, value, reason: reason.to_owned() })
        };
        if self.listen_addr().is_err() {
            return invalid(
                "server.listen",
                format!("{:?}", self.server.listen),
                "expected HOST:PORT, e.g. 127.0.0.1:8080",
            );
        }
        if self.pg_listen_addr().is_err() {
            return invalid(
                "server.pg_listen",
                format!("{:?}", self.server.pg_listen),
                "expected HOST:PORT, e.g. 127.0.0.1:5433, or \"\" for off",
            );
        }
        if self.server.pg_tls_cert.is_some() != self.server.pg_tls_key.is_some() {
            return invalid(
                "server.pg_tls_cert",
                format!("{:?}", self.server.pg_tls_cert),
                "server.pg_tls_cert and server.pg_tls_key go together",
            );
        }
        if self.server.max_body_bytes < 1024 || self.server.max_body_bytes > 1 << 30 {
            return invalid(
                "server.max_body_bytes",
                self.server.max_body_bytes.to_string(),
                "must be between 1024 and 1073741824",
            );
        }
        if self.server.pg_max_message_bytes < 64 << 10 || self.server.pg_max_message_bytes > 1 << 30 {
            return invalid(
                "server.pg_max_message_bytes",
                self.server.pg_max_message_bytes.to_string(),
                "must be between 65536 and 1073741824",
            );
        }
        if self.server.shutdown_timeout_ms > 600_000 {
            return invalid(
                "server.shutdown_timeout_ms",
                self.server.shutdown_timeout_ms.to_string(),
                "at most 600000",
            );
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return invalid("storage.data_dir", "\"\"".into(), "must not be empty");
        }
        if self.storage.max_statement_bytes < 1 << 20 {
            return invalid(
                "storage.max_statement_bytes",
                self.storage.max_statement_bytes.to_string(),
                "at least 1048576 (1 MiB)",
            );
        }
        for (key, value) in [
            ("live.history_rows", self.live.history_rows),
            ("live.buffer_rows", self.live.buffer_rows),
            ("live.max_subscriptions", self.live.max_subscriptions),
        ] {
            if value == 0 || value > 100_000_000 {
                return invalid(key, value.to_string(), "from 1 to 100000000");
            }
        }
        if self.storage.commit_threads > 256 {
            return invalid(
                "storage.commit_threads",
                self.storage.commit_threads.to_string(),
                "at most 256 (0: one per core)",
            );
        }
        let t = &self.topics;
        if t.max_consume_timeout_ms > ENGINE_MAX_TIMEOUT_MS {
            return invalid(
                "topics.max_consume_timeout_ms",
                t.max_consume_timeout_ms.to_string(),
                &format!("at most {ENGINE_MAX_TIMEOUT_MS}"),
            );
        }
        if t.default_consume_timeout_ms > t.max_consume_timeout_ms {
            return invalid(
                "topics.default_consume_timeout_ms",
                t.default_consume_timeout_ms.to_string(),
                "must not exceed topics.max_consume_timeout_ms",
            );
        }
        let max_vis = topicfusion_engine::topics::groups::MAX_VISIBILITY_TIMEOUT_MS;
        if t.default_visibility_timeout_ms == 0 || t.default_visibility_timeout_ms > max_vis {
            return invalid(
                "topics.default_visibility_timeout_ms",
                t.default_visibility_timeout_ms.to_string(),
                &format!("must be between 1 and {max_vis}"),
            );
        }
        if t.retention_interval_ms > 24 * 3600 * 1000 {
            return invalid(
                "topics.retention_interval_ms",
                t.retention_interval_ms.to_string(),
                "at most 86400000 (a day)",
            );
        }
        if self.auth.token_ttl_seconds == 0 || self.auth.token_ttl_seconds > 31 * 24 * 3600 {
            return invalid(
                "auth.token_ttl_seconds",
                self.auth.token_ttl_seconds.to_string(),
                "must be between 1 and 2678400",
            );
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.server.listen.parse()
    }

    /// The PostgreSQL protocol's address, `None` when it is off.
    pub fn pg_listen_addr(&self) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
        match self.server.pg_listen.trim() {
            "" => Ok(None),
            addr => addr.parse().map(Some),
        }
    }
}

/// `HOST:PORT` with a host and a port (a name or an address: peers may be other machines).
fn host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: &str| {
            Err(ConfigError::Invalid { key, value, reason: reason.to_owned() })
        };
        if self.raft_listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "cluster.raft_listen",
                format!("{:?}", self.raft_listen),
                "expected IP:PORT, e.g. 127.0.0.1:7001",
            );
        }
        if self.secret.trim().len() < 16 {
            return invalid("cluster.secret", "(hidden)".into(), "at least 16 characters, the same on every node");
        }
        if self.snapshot_every < 100 {
            return invalid("cluster.snapshot_every", self.snapshot_every.to_string(), "at least 100");
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 || !ids.insert(p.id) {
                return invalid("cluster.peers", format!("id = {}", p.id), "node ids are unique and at least 1");
            }
            for (key, addr) in [("raft", &p.raft), ("http", &p.http), ("pg", &p.pg)] {
                if !host_port(addr) {
                    return invalid(
                        "cluster.peers",
                        format!("{key} = {addr:?} (node {})", p.id),
                        "expected HOST:PORT with a port from 1 to 65535",
                    );
                }
            }
        }
        if !ids.contains(&self.node_id) {
            return invalid("cluster.node_id", self.node_id.to_string(), "must be the id of one of cluster.peers");
        }
        Ok(())
    }

    /// A likely mistake that is not always one: `raft_listen` on another port than this node's
    /// `raft` address in `peers` (right behind a port mapping, wrong otherwise).
    pub fn warning(&self) -> Option<String> {
        let me = self.peers.iter().find(|p| p.id == self.node_id)?;
        let port = |a: &str| a.rsplit_once(':').map(|(_, p)| p.to_owned());
        (port(&self.raft_listen) != port(&me.raft)).then(|| {
            format!(
                "cluster.raft_listen {:?} is not on the port of this node's raft address {:?} in cluster.peers: the \
                 other nodes reach it there (fine behind a port mapping, a mistake otherwise)",
                self.raft_listen, me.raft
            )
        })
    }
}
