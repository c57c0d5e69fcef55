//! The HTTP API (axum): the router, the shared state, the extractors (JSON bodies with our error
//! shape, the caller's identity) and the bridge that runs engine work on the engine runtime.
//! Endpoints: `auth` (login), `sql`, `topics` (consume, ack), `live` (WebSocket and SSE live
//! queries), `health`, `/metrics` (Prometheus), the web console under `/console/` (`console`);
//! on a cluster's follower
//! what only the leader can do is forwarded to it (`forward`). See docs/http-api.md.

mod console;
pub mod error;
pub mod forward;
mod handlers;
mod live;
mod rows;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use topicfusion_engine::{Database, Principal};

use crate::auth::{LoginThrottle, Tokens, parse_basic, parse_bearer};
use crate::config::Config;
pub use error::{ApiError, ErrorCode};

/// What every handler shares.
pub struct AppState {
    pub db: Arc<Database>,
    pub config: Config,
    pub tokens: Tokens,
    pub throttle: Arc<LoginThrottle>,
    /// Bounds the argon2 verifications running at once.
    pub verifications: tokio::sync::Semaphore,
    /// The runtime engine work runs on, so that RocksDB I/O and query execution never occupy
    /// the threads that accept connections and serve other requests.
    pub engine: Handle,
    /// The runtime WebSockets of live queries are served on (threads of a lower CPU priority).
    pub live: Handle,
    /// On a cluster node: sends what only the leader can do to it (see [`forward`]).
    pub forwarder: Option<forward::Forwarder>,
    /// HTTP and PostgreSQL figures for `/metrics`.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Runs `work` on the engine runtime. Dropping the returned future (the client went away)
    /// aborts the work at its next await point: a long poll stops waiting. Engine work is
    /// cancel-safe there: each commit is one synchronous step.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        crate::bridge::run_on(&self.engine, work).await.map_err(ApiError::internal)
    }

    /// Checks a user's password, after the throttle's wait for a name or address with failed
    /// logins (or refuses with 429 when too many attempts are queued). At most one argon2
    /// verification per core runs at a time (they are slow on purpose).
    pub async fn check_password(&self, user: &str, password: &str, peer: IpAddr) -> Result<Principal, ApiError> {
        let attempt = match self.throttle.admit(user, peer) {
            Ok((wait, attempt)) => {
                tokio::time::sleep(wait).await;
                attempt
            }
            Err(refused) => {
                tracing::warn!(user = crate::auth::shown_user(user), %peer, "login refused: {refused}");
                return Err(ApiError::new(ErrorCode::TooManyRequests, refused.to_string()));
            }
        };
        let principal = if user.len() > topicfusion_engine::MAX_USER_NAME_BYTES
            || password.len() > topicfusion_engine::auth::MAX_PASSWORD_BYTES
        {
            None
        } else {
            let _permit = self.verifications.acquire().await.map_err(ApiError::internal)?;
            let (db, u, p) = (Arc::clone(&self.db), user.to_owned(), password.to_owned());
            let loopback = peer.is_loopback();
            // argon2 is CPU work: run it on the blocking pool.
            tokio::task::spawn_blocking(move || db.verify_password(&u, &p, loopback))
                .await
                .map_err(ApiError::internal)?
        };
        match principal {
            Some(p) => {
                attempt.succeeded();
                Ok(p)
            }
            None => {
                attempt.failed();
                tracing::warn!(user = crate::auth::shown_user(user), %peer, "failed login");
                Err(ApiError::unauthorized("wrong user name or password"))
            }
        }
    }
}

/// The whole API: [`routes`] with [`with_layers`].
pub fn app(state: SharedState) -> Router {
    with_layers(routes(), state)
}

/// The endpoints.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/api/health", get(handlers::health))
        .route("/v1/api/auth/login", post(handlers::login))
        .route("/v1/api/sql", post(handlers::sql))
        .route("/v1/api/topics/consume", post(handlers::consume))
        .route("/v1/api/topics/ack", post(handlers::ack))
        .route("/v1/api/live", get(live::websocket))
        .route("/v1/api/live/sse", get(live::sse))
        .route("/metrics", get(handlers::metrics))
        .route("/console", get(console::redirect))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::file))
}

/// The layers around every endpoint: request metrics, forwarding to a cluster's leader, JSON
/// 404s, the body limit, panics as 500s, request tracing.
pub fn with_layers(routes: Router<SharedState>, state: SharedState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    let routes = routes
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state.metrics), crate::metrics::record_http));
    let routes = match state.forwarder {
        Some(_) => routes.route_layer(axum::middleware::from_fn_with_state(Arc::clone(&state), forward::to_leader)),
        None => routes,
    };
    routes
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::BadRequest, "method not allowed for this endpoint")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(script_challenge))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A 401 offers Basic besides Bearer (`WWW-Authenticate`), for command-line clients; a browser
/// answers that with its own password dialog, even to a script's request. Scripts that say so
/// (`X-Requested-With`, as the web console sends) get the Bearer challenge alone.
async fn script_challenge(request: Request, next: axum::middleware::Next) -> Response {
    let script = request.headers().contains_key("x-requested-with");
    let mut response = next.run(request).await;
    if script && response.headers().contains_key(header::WWW_AUTHENTICATE) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"topicfusion\""));
    }
    response
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

/// A JSON body whose rejections use the API's error shape (400, or 413 over the size limit).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(ErrorCode::PayloadTooLarge, "request body is over server.max_body_bytes");
    }
    ApiError::bad_request(match rejection {
        JsonRejection::MissingJsonContentType(_) => "expected Content-Type: application/json".to_owned(),
        other => other.body_text(),
    })
}

/// The authenticated caller: `Authorization: Bearer <token>` or `Basic` (checked once per
/// request: a caller the forwarding middleware checked is kept in the request's extensions).
#[derive(Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        if let Some(checked) = parts.extensions.get::<Caller>() {
            return Ok(checked.clone());
        }
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized("missing Authorization header: use Bearer <token> or Basic"));
        };
        let value = value.to_str().map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
        if let Some(token) = parse_bearer(value) {
            return match state.tokens.verify(&state.db, token, chrono::Utc::now().timestamp()) {
                Some(p) => Ok(Caller(p)),
                None => Err(ApiError::unauthorized("invalid or expired token: log in again")),
            };
        }
        if let Some((user, password)) = parse_basic(value) {
            return state.check_password(&user, &password, peer_ip(parts)).await.map(Caller);
        }
        Err(ApiError::unauthorized("unsupported Authorization header: use Bearer <token> or Basic"))
    }
}

/// The client's address (unspecified, so never loopback, when unknown).
pub fn peer_ip(parts: &Parts) -> IpAddr {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(addr)| addr.ip())
}
