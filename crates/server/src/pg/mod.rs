//! The PostgreSQL wire protocol (pgwire): psql, pgbench and Postgres drivers (psycopg, asyncpg,
//! pg8000, SQLAlchemy, JDBC, ...) run the whole dialect over `[server] pg_listen`.
//!
//! - [`auth`]: SCRAM-SHA-256 logins against the same users as HTTP (TLS when
//!   `pg_tls_cert`/`pg_tls_key` are set), slowed down after failures like HTTP logins.
//! - [`query`]: the simple and extended query protocols and COPY, each connection in its own
//!   engine session (settings, transaction block, cursors).
//! - [`encode`] and [`params`]: values to and from the wire; [`copy`]: COPY's data formats.
//! - [`limits`]: the largest message a client may send, checked before it is buffered.
//!
//! Connections run on the engine runtime: a statement runs on the connection's own task, with
//! no hop between runtimes. A cancel request ends a statement at its next await point: a
//! waiting CONSUME returns nothing. A client that closed its connection is noticed when the
//! statement answers (a waiting CONSUME at its timeout, a FETCH from a live cursor at its next
//! change); a streaming `SUBSCRIBE` watches the socket and ends as soon as the client is gone.
//!
//! There are no multi-statement transactions: `BEGIN` and `COMMIT` are accepted so drivers
//! work, every statement commits on its own, and `ROLLBACK` arrives with a warning that nothing
//! was undone.

pub mod auth;
pub mod copy;
pub mod encode;
pub mod introspection;
pub mod limits;
pub mod live;
pub mod params;
pub mod query;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ClientInfo, ConnectionManager, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use pgwire::tokio::tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Framed, FramedParts};
use topicfusion_engine::Database;

use self::auth::{Logins, ScramLogin};
use self::limits::{LimitedIo, MessageLimit, PRE_LOGIN_MAX_MESSAGE_BYTES};
use self::query::Queries;

/// How long a client has to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What every PostgreSQL connection shares.
pub struct PgState {
    pub db: Arc<Database>,
    pub tls: Option<TlsAcceptor>,
    pub logins: Arc<Logins>,
    /// The largest message a logged-in client may send.
    pub max_message_bytes: usize,
    /// Counts open connections (`topicfusion_pg_connections`).
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

impl PgState {
    pub fn connections(&self) -> &Arc<ConnectionManager> {
        &self.logins.connections
    }
}

/// The handlers of one connection.
struct ConnectionHandlers {
    startup: Arc<ScramLogin>,
    queries: Arc<Queries>,
    cancel: Arc<DefaultCancelHandler>,
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
}

/// A connection's socket descriptor: open while the connection's handlers run (the socket is
/// closed only after the connection's loop ends).
pub struct PeerSocket(std::os::fd::RawFd);

/// Serves one accepted TCP connection until it closes: TLS negotiation, login, then messages
/// until the client terminates (pgwire's `process_socket`, with the message limit added).
pub async fn serve_connection(state: Arc<PgState>, socket: tokio::net::TcpStream) {
    let handlers = ConnectionHandlers {
        startup: Arc::new(ScramLogin::new(Arc::clone(&state.logins))),
        queries: Arc::new(Queries::new(Arc::clone(&state.db))),
        cancel: Arc::new(DefaultCancelHandler::new(Arc::clone(state.connections()))),
    };
    // For a live query streaming to the client to watch the socket (see `live::client_gone`).
    let peer = PeerSocket(std::os::fd::AsRawFd::as_raw_fd(&socket));
    let login_deadline = tokio::time::sleep(LOGIN_TIMEOUT);
    tokio::pin!(login_deadline);
    let negotiated = tokio::select! {
        _ = &mut login_deadline => return,
        s = negotiate_tls::<query::Prepared>(socket, state.tls.clone()) => s,
    };
    let framed = match negotiated {
        Ok(Some(framed)) => framed,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "postgres connection ended during TLS negotiation");
            return;
        }
    };
    // The message limit watches every byte after the negotiation (and those already read).
    let limit = Arc::new(AtomicUsize::new(PRE_LOGIN_MAX_MESSAGE_BYTES));
    let mut watcher = MessageLimit::new(Arc::clone(&limit));
    let mut framed = framed;
    if let Err(e) = watcher.observe(framed.read_buffer()) {
        // The startup packet's header, already read, announces too much: say so, then close.
        tracing::debug!(error = %e, "postgres connection refused");
        let info: ErrorInfo = fatal("54000", e.to_string()).into();
        let _ = framed.send(PgWireBackendMessage::ErrorResponse(info.into())).await;
        return;
    }
    let old = framed.into_parts();
    let mut parts = FramedParts::new(LimitedIo::new(old.io, watcher), old.codec);
    parts.read_buf = old.read_buf;
    parts.write_buf = old.write_buf;
    let mut socket = Framed::from_parts(parts);
    socket.session_extensions().insert(peer);

    let ConnectionHandlers { startup, queries, cancel } = handlers;
    loop {
        let logging_in = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        let next = if logging_in {
            tokio::select! {
                _ = &mut login_deadline => None,
                m = socket.next() => m,
            }
        } else {
            socket.next().await
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // A message over the limit (or one that does not decode): say so, then close.
                let message = e.to_string();
                tracing::debug!(error = %message, "postgres connection closed");
                let info: ErrorInfo = fatal("54000", message).into();
                let _ = socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await;
                break;
            }
            None => break,
        };
        // Terminate: the client is leaving (asyncpg waits for the server to close).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let processed = process_message(
            message,
            &mut socket,
            Arc::clone(&startup),
            Arc::clone(&queries),
            Arc::clone(&queries),
            Arc::clone(&queries),
            Arc::clone(&cancel),
        )
        .await;
        if let Err(e) = processed {
            let info: ErrorInfo = e.into();
            if info.is_fatal() {
                // A FATAL error (a failed login) ends the connection: the error and nothing
                // after it (pgwire would send ReadyForQuery first, which asyncpg trips over).
                let _ = socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await;
                break;
            }
            if process_error(&mut socket, PgWireError::UserError(Box::new(info)), extended_query).await.is_err() {
                break;
            }
        }
        if logging_in
            && !matches!(
                socket.state(),
                PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
            )
        {
            limit.store(state.max_message_bytes, Ordering::Relaxed);
        }
    }
}
