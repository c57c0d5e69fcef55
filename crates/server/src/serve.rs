//! `topicfusion serve`: opens the data dir, creates `root` on first start, serves the HTTP API
//! and the PostgreSQL protocol, and shuts down cleanly on SIGINT/SIGTERM: stop accepting, end
//! long polls, let in-flight requests finish (bounded by `server.shutdown_timeout_ms`), sync the
//! WAL, close RocksDB.
//!
//! Two runtimes: the front runtime accepts connections and runs HTTP handlers and PostgreSQL
//! sessions; the engine runtime runs statements, commits and long polls. A slow synced commit or
//! a heavy query therefore never holds up another client's request or a health check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use topicfusion_engine::{Database, DatabaseOptions, Durability};

use crate::auth::{LoginThrottle, TOKEN_SECRET, Tokens};
use crate::config::Config;
use crate::http::{AppState, app};
use crate::pg::PgState;
use crate::pg::auth::Logins;

/// `[storage] commit_threads` when it is 0 on a cluster node (see `run`).
const CLUSTER_COMMIT_THREADS: usize = 32;

/// The name of the secret unknown users' SCRAM salts are derived from.
const SCRAM_SALT_SECRET: &str = "scram_unknown_user_salt";

/// Runs the server until SIGINT or SIGTERM. Blocks the calling thread.
pub fn run(config: Config) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let engine_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores * 2).max(4))
        .thread_name("tf-engine")
        // Parsing and planning recurse over expression trees: give them room (virtual memory:
        // only the pages used are committed). Statements nested over 128 levels are refused and
        // taken apart without recursion; the rest of sqlparser's error paths drop what they built.
        .thread_stack_size(256 * 1024 * 1024)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the engine runtime: {e}"))?;
    let http_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .thread_name("tf-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    // Live queries' WebSockets are served on threads of their own at a lower CPU priority, as
    // the engine's dispatcher runs (`live::lower_thread_priority`): writers first.
    let live_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .thread_name("tf-live")
        .on_thread_start(topicfusion_engine::live::lower_thread_priority)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the live-query runtime: {e}"))?;

    let options = DatabaseOptions {
        // A cluster node's commits are durable in a majority's fsynced Raft logs; its store is
        // rebuilt from the log after a power loss, so it needs no fsync of its own.
        durability: if config.storage.sync_writes && config.cluster.is_none() {
            Durability::Sync
        } else {
            Durability::Process
        },
        visibility_timeout_ms: config.topics.default_visibility_timeout_ms,
        allow_user_role_consume: config.topics.allow_user_role_consume,
        max_statement_bytes: config.storage.max_statement_bytes,
        // A cluster node's commit threads mostly wait for replication round trips: more of them
        // let more statements share each proposal.
        commit_threads: match (config.storage.commit_threads, &config.cluster) {
            (0, Some(_)) => CLUSTER_COMMIT_THREADS,
            (n, _) => n,
        },
        retention_interval_ms: config.topics.retention_interval_ms,
        live: topicfusion_engine::LiveOptions {
            history_rows: config.live.history_rows,
            buffer_rows: config.live.buffer_rows,
            max_subscriptions: config.live.max_subscriptions,
            ..Default::default()
        },
        ..DatabaseOptions::default()
    };
    let data_dir = config.storage.data_dir.clone();
    let db = {
        // Opening compiles route filters with DataFusion, which wants a runtime around it.
        let _guard = engine_rt.enter();
        Database::open(&data_dir, options).map_err(|e| crate::open_error(&data_dir, &e))?
    };
    let db = Arc::new(db);
    // A cluster node: its Raft log, state machine and transport run on a runtime of their own,
    // so statements blocked on a replicated commit never hold up heartbeats or applies.
    let cluster = match &config.cluster {
        Some(c) => {
            engine_rt.block_on(refuse_single_node_data(&db, &data_dir))?;
            Some(start_cluster_node(c, &data_dir, &db)?)
        }
        None => None,
    };
    let root_password = Some(config.auth.root_password.as_str()).filter(|p| !p.is_empty());
    let no_password = until_replicated(cluster.is_some(), || db.ensure_root(root_password))
        .map_err(|e| format!("cannot create user root: {e}"))?;
    if no_password {
        tracing::warn!(
            "user root has no password: it can log in only from loopback connections; set [auth] root_password or TOPICFUSION_ROOT_PASSWORD"
        );
    }
    let secret = until_replicated(cluster.is_some(), || db.secret(TOKEN_SECRET, 32))
        .map_err(|e| format!("cannot read the token secret: {e}"))?;
    let throttle = Arc::new(LoginThrottle::default());
    let metrics = crate::metrics::ServerMetrics::register(&db);
    let state = Arc::new(AppState {
        metrics: Arc::clone(&metrics),
        db: Arc::clone(&db),
        tokens: Tokens::new(secret, config.auth.token_ttl_seconds),
        throttle: Arc::clone(&throttle),
        verifications: tokio::sync::Semaphore::new(cores.max(1)),
        engine: engine_rt.handle().clone(),
        live: live_rt.handle().clone(),
        config: config.clone(),
        forwarder: match &cluster {
            Some((node, _)) => Some(crate::http::forward::Forwarder::new(node.id(), node.status())?),
            None => None,
        },
    });

    let addr = config.listen_addr().map_err(|e| format!("invalid server.listen: {e}"))?;
    let pg_addr = config.pg_listen_addr().map_err(|e| format!("invalid server.pg_listen: {e}"))?;
    let (tls, cert_hash) = match (&config.server.pg_tls_cert, &config.server.pg_tls_key) {
        (Some(cert), Some(key)) => {
            let (tls, cert_pem) = tls_acceptor(cert, key)?;
            let hash = crate::pg::auth::certificate_hash(&cert_pem)
                .map_err(|e| tracing::warn!(error = %e, "SCRAM channel binding is off"))
                .ok();
            (Some(tls), hash)
        }
        _ => (None, None),
    };
    let pg_state = Arc::new(PgState {
        db: Arc::clone(&db),
        tls,
        logins: Arc::new(Logins {
            db: Arc::clone(&db),
            throttle,
            fake_salt_key: until_replicated(cluster.is_some(), || db.secret(SCRAM_SALT_SECRET, 32))
                .map_err(|e| format!("cannot read a secret: {e}"))?,
            cert_hash,
            connections: Default::default(),
        }),
        max_message_bytes: config.server.pg_max_message_bytes,
        metrics,
    });
    let shutdown_timeout = Duration::from_millis(config.server.shutdown_timeout_ms);
    let engine = engine_rt.handle().clone();
    let served = http_rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let pg_listener = match pg_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| format!("cannot listen on {a}: {e}"))?),
            None => None,
        };
        // The lines scripts wait for (the real ports when listening on port 0), in one write.
        let mut lines = format!("listening on http://{local}\n");
        if let Some(l) = &pg_listener {
            lines.push_str(&format!("listening on postgres://{}\n", l.local_addr().map_err(|e| e.to_string())?));
        }
        print!("{lines}");
        tracing::info!(%local, data_dir = %data_dir.display(), "serving");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(pg_listener) = pg_listener {
            tokio::spawn(accept_postgres(pg_listener, pg_state, engine, stop_rx.clone()));
        }
        let signal_db = Arc::clone(&state.db);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: ending long polls, finishing in-flight requests");
            signal_db.begin_shutdown();
            let _ = stop_tx.send(true);
        });
        let mut graceful_rx = stop_rx.clone();
        // TCP_NODELAY on every connection, as on PostgreSQL's: a WebSocket or SSE frame must
        // leave at once, not wait (Nagle) for the client's delayed ACK of the frame before it
        // (up to 40 ms: the first live rows after a subscribe arrived 40 ms late without it).
        let listener = axum::serve::ListenerExt::tap_io(listener, |socket: &mut tokio::net::TcpStream| {
            let _ = socket.set_nodelay(true);
        });
        let server = axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = graceful_rx.wait_for(|stop| *stop).await;
            });
        let mut deadline_rx = stop_rx;
        tokio::select! {
            r = server => r.map_err(|e| format!("server error: {e}")),
            _ = async {
                let _ = deadline_rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(shutdown_timeout).await;
            } => {
                tracing::warn!("in-flight requests did not finish within server.shutdown_timeout_ms; closing them");
                Ok(())
            }
        }
    });
    http_rt.shutdown_timeout(Duration::from_secs(1));
    live_rt.shutdown_timeout(Duration::from_secs(1));
    engine_rt.shutdown_timeout(Duration::from_secs(5));
    if let Some((node, raft_rt)) = cluster {
        raft_rt.block_on(node.shutdown());
        raft_rt.shutdown_timeout(Duration::from_secs(2));
    }
    served?;
    db.sync_wal().map_err(|e| format!("cannot sync the WAL at shutdown: {e}"))?;
    match Arc::try_unwrap(db) {
        Ok(db) => drop(db),
        Err(_) => tracing::warn!("engine still referenced at shutdown; RocksDB closes at exit"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Refuses to make a cluster node of a data dir that served a single node: its tables, topics
/// and users are in no Raft log, so the other nodes would never have them.
async fn refuse_single_node_data(db: &Database, data_dir: &std::path::Path) -> Result<(), String> {
    if data_dir.join("raft").exists() || db.store().last_applied().is_some() {
        return Ok(());
    }
    let sql = "SELECT (SELECT count(*) FROM system.tables) + (SELECT count(*) FROM system.topics) \
               + (SELECT count(*) FROM system.users WHERE name <> 'root')";
    let results = db.execute(sql).await.map_err(|e| format!("cannot inspect the data dir: {}", e.message()))?;
    let objects = results
        .first()
        .and_then(|r| r.batches.first())
        .and_then(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().map(|a| a.value(0)))
        .ok_or("cannot inspect the data dir: no count")?;
    if objects > 0 {
        return Err(format!(
            "{} holds a single-node database ({objects} tables, topics or users besides root): a cluster node starts \
             from an empty data dir (converting one is not supported; see docs/cluster.md)",
            data_dir.display()
        ));
    }
    Ok(())
}

/// Starts this server's cluster node (`[cluster]`) over the database's store, on a runtime of
/// its own; the node's in-memory state is rebuilt from the store whenever entries of another
/// node are applied or a snapshot is installed.
fn start_cluster_node(
    c: &crate::config::ClusterConfig,
    data_dir: &std::path::Path,
    db: &Arc<Database>,
) -> Result<(topicfusion_cluster::node::Node, tokio::runtime::Runtime), String> {
    use topicfusion_cluster::NodeAddr;
    use topicfusion_cluster::node::{Node, NodeConfig};
    if let Some(warning) = c.warning() {
        tracing::warn!("{warning}");
    }
    let raft_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tf-raft")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Raft runtime: {e}"))?;
    let peers = c
        .peers
        .iter()
        .map(|p| (p.id, NodeAddr { raft: p.raft.clone(), http: p.http.clone(), pg: p.pg.clone() }))
        .collect();
    let reloaded = Arc::clone(db);
    let config = NodeConfig {
        id: c.node_id,
        peers,
        secret: c.secret.clone(),
        snapshot_every: c.snapshot_every,
        join: c.join,
        on_change: Some(Arc::new(move || {
            if let Err(e) = reloaded.reload_from_store() {
                tracing::error!(error = %e, "cannot reload the catalog and users after applying the cluster's log");
            }
        })),
    };
    let raft_dir = data_dir.join("raft");
    let store = Arc::clone(db.store());
    let addr = c.raft_listen.clone();
    let node = raft_rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        Node::start(config, &raft_dir, store, listener).await.map_err(|e| format!("cannot start the cluster node: {e}"))
    })?;
    db.set_cluster(Arc::new(ClusterView { status: node.status(), members: node.members() }));
    tracing::info!(node_id = c.node_id, raft = %c.raft_listen, "cluster node started");
    Ok((node, raft_rt))
}

/// How long `ALTER CLUSTER ADD NODE` waits for the new node to catch up before it votes.
const ADD_NODE_CATCH_UP: Duration = Duration::from_secs(60);

/// The engine's view of the cluster: `system.cluster` from the node's view, `ALTER CLUSTER`
/// through its membership changes.
struct ClusterView {
    status: topicfusion_cluster::node::StatusView,
    members: topicfusion_cluster::node::Members,
}

/// A refused membership change as the engine classifies errors (not-leader: SQLSTATE 25006).
fn membership_error(e: topicfusion_cluster::node::ClusterError) -> datafusion::error::DataFusionError {
    use topicfusion_cluster::node::ClusterError;
    match e {
        ClusterError::Storage(e) => datafusion::error::DataFusionError::External(Box::new(e)),
        ClusterError::Membership(m) => datafusion::error::DataFusionError::Execution(m),
        e @ ClusterError::Raft(_) => datafusion::error::DataFusionError::Execution(e.to_string()),
    }
}

#[async_trait::async_trait]
impl topicfusion_engine::core::Cluster for ClusterView {
    fn nodes(&self) -> Vec<topicfusion_engine::core::ClusterNode> {
        self.status
            .nodes()
            .into_iter()
            .map(|n| topicfusion_engine::core::ClusterNode {
                node_id: n.node_id,
                role: n.role.to_owned(),
                term: n.term,
                last_log_index: n.last_log_index,
                last_applied_index: n.last_applied_index,
                raft_address: n.addr.raft,
                http_address: n.addr.http,
                pg_address: n.addr.pg,
            })
            .collect()
    }

    async fn add_node(&self, id: u64, raft: String, http: String, pg: String) -> datafusion::common::Result<()> {
        let addr = topicfusion_cluster::NodeAddr { raft, http, pg };
        self.members.add(id, addr, ADD_NODE_CATCH_UP).await.map_err(membership_error)
    }

    async fn remove_node(&self, id: u64) -> datafusion::common::Result<()> {
        self.members.remove(id).await.map_err(membership_error)
    }
}

/// Runs a start-up write (root's password, a secret) that must be the same on every node: a
/// cluster's leader writes it through the log; another node waits until it has applied it
/// (the write is then a read) or becomes the leader. Without a cluster, runs it once.
fn until_replicated<T>(
    clustered: bool,
    mut write: impl FnMut() -> datafusion::common::Result<T>,
) -> datafusion::common::Result<T> {
    let mut waiting = false;
    loop {
        match write() {
            Err(e) if clustered && topicfusion_engine::ErrorKind::of(&e) == topicfusion_engine::ErrorKind::ReadOnly => {
                if !waiting {
                    tracing::info!("waiting for the cluster's leader to write the start-up state: {e}");
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            done => return done,
        }
    }
}

/// Accepts PostgreSQL connections until the server stops; each runs in its own task on the
/// engine runtime, its socket registered with that runtime's I/O driver: a statement arriving
/// wakes the engine thread that runs it, not a front-runtime thread that would hand it over
/// (one thread wake-up more per statement).
async fn accept_postgres(
    listener: tokio::net::TcpListener,
    state: Arc<PgState>,
    engine: tokio::runtime::Handle,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    // Deregistered from this runtime's driver; still non-blocking.
                    let socket = match socket.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hand a PostgreSQL connection to the engine runtime");
                            continue;
                        }
                    };
                    let state = Arc::clone(&state);
                    let open = state.metrics.pg_connection();
                    engine.spawn(async move {
                        let _open = open;
                        match tokio::net::TcpStream::from_std(socket) {
                            Ok(socket) => crate::pg::serve_connection(state, socket).await,
                            Err(e) => tracing::warn!(error = %e, "cannot register a PostgreSQL connection"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a PostgreSQL connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
        }
    }
}

/// The TLS acceptor of the PostgreSQL protocol, and the certificate's PEM (for SCRAM channel
/// binding).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(pgwire::tokio::tokio_rustls::TlsAcceptor, Vec<u8>), String> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read server.pg_tls_cert {}: {e}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid server.pg_tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("invalid server.pg_tls_cert {}: no certificate in it", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("invalid server.pg_tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("cannot use the TLS certificate and key: {e}"))?;
    Ok((pgwire::tokio::tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
