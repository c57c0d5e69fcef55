//! Forwarding to the cluster's leader: on a cluster node, a request that this node refused
//! because it is not the leader (a write, a group CONSUME, an ACK: the engine's not-leader
//! error, nothing of the request done here) is sent on to the leader with the same method,
//! path, body and credentials, and the leader's answer returned as if the client had gone
//! there. Reads never reach the leader: they run on this node and succeed.
//!
//! Only a request refused before any of it ran is forwarded (the error response carries
//! [`Forwardable`]): when earlier statements of a multi-statement request completed here, the
//! not-leader error goes back to the client, which must not have them run twice. A forwarded
//! request carries [`FORWARDED_BY`] and is never forwarded again (a leader that lost its place
//! meanwhile answers 421 itself); when no other leader is known (an election is on) or no
//! connection to it can be made, the client gets this node's 421 (nothing ran anywhere). A
//! request sent that gets no answer (the leader died with it) is a 502 `leader_unanswered`: it
//! may have run.

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use topicfusion_cluster::node::StatusView;

use super::error::{ApiError, ErrorCode};
use super::{Caller, SharedState};

/// Set on a request a node forwards (its value: that node's id).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-topicfusion-forwarded-by");
/// Set on the answer to a forwarded request (its value: the id of the leader that answered).
pub const ANSWERED_BY: HeaderName = HeaderName::from_static("x-topicfusion-answered-by");

/// The marker an error response carries when nothing of its request was done on this node.
#[derive(Debug, Clone, Copy)]
pub struct Forwardable;

/// A cluster node's view of its leader and the client it forwards with.
pub struct Forwarder {
    status: StatusView,
    client: reqwest::Client,
    node_id: u64,
}

/// The endpoints whose requests may be forwarded (the others never get a not-leader error).
const FORWARDED_PATHS: [&str; 3] = ["/v1/api/sql", "/v1/api/topics/consume", "/v1/api/topics/ack"];

/// The longest a forwarded request may wait for the leader's answer: the longest a request may
/// legitimately take there (a CONSUME long poll, an `ALTER CLUSTER ADD NODE` waiting for the
/// node to catch up) and a margin. A leader that hangs (paused, cut off) is thus given up on.
const FORWARD_TIMEOUT: std::time::Duration =
    std::time::Duration::from_millis(topicfusion_engine::topics::groups::MAX_TIMEOUT_MS + 60_000);

impl Forwarder {
    pub fn new(node_id: u64, status: StatusView) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(FORWARD_TIMEOUT)
            .tcp_keepalive(std::time::Duration::from_secs(10))
            // Never follow a redirect with the client's credentials.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client that forwards to the leader: {e}"))?;
        Ok(Self { status, client, node_id })
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> &StatusView {
        &self.status
    }
}

/// The middleware (see the module doc). Without a cluster, runs the request as it is.
pub async fn to_leader(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let Some(forwarder) = &state.forwarder else { return next.run(request).await };
    if request.headers().contains_key(&FORWARDED_BY) || !FORWARDED_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    // The caller is checked first (no body is read for a stranger), once: the handler finds it
    // in the extensions.
    let (mut parts, body) = request.into_parts();
    match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
        }
        Err(refused) => return refused.into_response(),
    }
    // The body is kept to send it on: read it here, within the same limit the handlers have.
    let body = match axum::body::to_bytes(body, state.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return body_error(e).into_response(),
    };
    let (method, uri, headers) = (parts.method.clone(), parts.uri.clone(), parts.headers.clone());
    let response = next.run(Request::from_parts(parts, Body::from(body.clone()))).await;
    if response.extensions().get::<Forwardable>().is_none() {
        return response;
    }
    let Some((leader, addr)) = forwarder.status.other_leader() else { return response };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut sent = forwarder
        .client
        .request(method, format!("http://{}{path}", addr.http))
        .header(&FORWARDED_BY, forwarder.node_id)
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = headers.get(&name) {
            sent = sent.header(name, value);
        }
    }
    match relay(sent).await {
        Ok(mut answer) => {
            answer.headers_mut().insert(ANSWERED_BY, HeaderValue::from(leader));
            answer
        }
        Err(e) if e.is_connect() => {
            tracing::warn!(leader, http = %addr.http, error = %e, "cannot connect to the leader to forward a request");
            response
        }
        Err(e) => {
            tracing::warn!(leader, http = %addr.http, error = %e, "a request forwarded to the leader got no answer");
            ApiError::new(
                ErrorCode::LeaderUnanswered,
                format!(
                    "the request was forwarded to the cluster's leader, node {leader} (HTTP {}), which did not answer \
                     ({e}): it may or may not have run; check before retrying",
                    addr.http
                ),
            )
            .into_response()
        }
    }
}

/// Sends the request and turns the leader's answer into ours (status, content type, body).
async fn relay(request: reqwest::RequestBuilder) -> Result<Response, reqwest::Error> {
    let answer = request.send().await?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let www_authenticate = answer.headers().get(header::WWW_AUTHENTICATE).cloned();
    let body = answer.bytes().await?;
    let mut response = (status, body).into_response();
    for (name, value) in [(header::CONTENT_TYPE, content_type), (header::WWW_AUTHENTICATE, www_authenticate)] {
        if let Some(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// A body that could not be read: over `server.max_body_bytes` (413), or cut off (400).
fn body_error(e: axum::Error) -> ApiError {
    let source = e.into_inner();
    if source.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
        ApiError::new(ErrorCode::PayloadTooLarge, "request body is over server.max_body_bytes")
    } else {
        ApiError::bad_request(format!("cannot read the request body: {source}"))
    }
}
