//! The endpoint handlers: health, login, SQL, consume and ack. Each parses its body, checks the
//! caller, runs the engine call on the engine runtime and shapes the JSON answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use topicfusion_engine::topics::groups::DEFAULT_CONSUME_LIMIT;
use topicfusion_engine::{AckTarget, ConsumeRequest, Message, StartPosition};

use super::error::{ApiError, ErrorCode};
use super::rows::write_result;
use super::{ApiJson, Caller, SharedState};

/// `ok`; on a cluster node also its role and the leader it knows, and 503 `no_quorum` while it
/// leads without answers from a majority (it refuses writes then).
pub async fn health(State(state): State<SharedState>) -> Response {
    let mut body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "long_polls": state.db.waiting_consumers(),
    });
    let Some(forwarder) = &state.forwarder else { return Json(body).into_response() };
    let status = forwarder.status();
    let me = status.nodes().into_iter().find(|n| n.node_id == status.id());
    body["cluster"] = serde_json::json!({
        "node_id": status.id(),
        "role": me.map(|n| n.role),
        "leader": status.leader_id(),
    });
    if status.quorum_lost() {
        body["status"] = "no_quorum".into();
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(body).into_response()
}

/// `GET /metrics`: every figure in Prometheus' text format 0.0.4 (docs/operations.md); with
/// `[server] metrics = "auth"` (the default) only for a logged-in caller.
pub async fn metrics(
    State(state): State<SharedState>,
    mut parts: axum::http::request::Parts,
) -> Result<Response, ApiError> {
    // "open" checks no credentials at all (stale ones of a scraper cost nothing).
    if state.config.server.metrics == crate::config::MetricsAccess::Auth {
        Caller::from_request_parts(&mut parts, &state).await?;
    }
    let db = Arc::clone(&state.db);
    // Reading the state scans the stored group positions: on the blocking pool.
    let families = tokio::task::spawn_blocking(move || db.gather_metrics()).await.map_err(ApiError::internal)?;
    let encoder = prometheus::TextEncoder::new();
    let text = encoder.encode_to_string(&families).map_err(ApiError::internal)?;
    Ok(([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
}

pub async fn login(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = state.check_password(&req.username, &req.password, peer.ip()).await?;
    let Some((_, tag)) = state.db.user_credentials(&principal.name) else {
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    let now = chrono::Utc::now().timestamp();
    let (token, exp) = state.tokens.issue(&principal.name, &tag, now);
    let expires_at = chrono::DateTime::from_timestamp(exp, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
    tracing::info!(user = principal.name, role = %principal.role, "login");
    Ok(Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": expires_at,
        "user": principal.name,
        "role": principal.role.to_string(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
}

pub async fn sql(
    State(state): State<SharedState>,
    Caller(principal): Caller,
    ApiJson(req): ApiJson<SqlRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let db = Arc::clone(&state.db);
    let results = state.run(async move { db.execute_as(&principal, &req.sql).await }).await?;
    let results = match results {
        Ok(results) => results,
        Err(mut e) => {
            // The statements before the failing one committed: their results (a CONSUME's
            // claimed messages among them) go with the error.
            let completed = std::mem::take(&mut e.completed);
            let mut error = ApiError::from_execute(e);
            if !completed.is_empty() {
                error.completed = Some(results_json(&completed)?);
            }
            return Err(error);
        }
    };
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"results\":");
    body.extend_from_slice(results_json(&results)?.get().as_bytes());
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    body.extend_from_slice(format!(",\"took_ms\":{took_ms:.3}}}").as_bytes());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Statements' results as a JSON array.
fn results_json(results: &[topicfusion_engine::StatementResult]) -> Result<Box<RawValue>, ApiError> {
    let mut body = Vec::with_capacity(256);
    body.push(b'[');
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_result(&mut body, &r.schema, &r.batches).map_err(ApiError::internal)?;
    }
    body.push(b']');
    let text = String::from_utf8(body).map_err(ApiError::internal)?;
    RawValue::from_string(text).map_err(ApiError::internal)
}

/// Where a consume without a stored group position starts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    topic_id: String,
    group_id: Option<String>,
    partition_id: Option<u32>,
    start: Option<Start>,
    limit: Option<u64>,
    timeout_ms: Option<u64>,
    visibility_timeout_ms: Option<u64>,
    max_deliveries: Option<u64>,
    dead_letter_topic: Option<String>,
    max_bytes: Option<u64>,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    topic_id: &'a str,
    partition_id: u32,
    offset: u64,
    timestamp_ms: i64,
    op: &'a str,
    source_table: &'a str,
    key: &'a RawValue,
    payload: &'a RawValue,
}

fn check_topic(state: &SharedState, topic: &str) -> Result<(), ApiError> {
    if state.db.topic_exists(topic) {
        Ok(())
    } else {
        let shown: String = topic.chars().take(200).collect();
        Err(ApiError::new(ErrorCode::NotFound, format!("topic {shown} does not exist")))
    }
}

pub async fn consume(
    State(state): State<SharedState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<ConsumeBody>,
) -> Result<Response, ApiError> {
    check_topic(&state, &body.topic_id)?;
    let topics = &state.config.topics;
    let timeout_ms = body.timeout_ms.unwrap_or(topics.default_consume_timeout_ms).min(topics.max_consume_timeout_ms);
    let limit = body.limit.unwrap_or(DEFAULT_CONSUME_LIMIT);
    let request = ConsumeRequest {
        group: body.group_id,
        partition: body.partition_id,
        start: body.start.map(|s| match s {
            Start::Earliest => StartPosition::Earliest,
            Start::Latest => StartPosition::Latest,
            Start::Offset(n) => StartPosition::Offset(n),
            Start::Timestamp(t) => StartPosition::Timestamp(t),
        }),
        limit,
        timeout_ms,
        visibility_timeout_ms: body.visibility_timeout_ms,
        max_deliveries: body.max_deliveries,
        max_bytes: body.max_bytes,
        dead_letter_topic: body.dead_letter_topic,
    };
    let db = Arc::clone(&state.db);
    let topic = body.topic_id;
    let messages: Vec<Message> = {
        let topic = topic.clone();
        state.run(async move { db.consume_as(&principal, &topic, &request).await }).await?
    }
    .map_err(ApiError::from_engine)?;
    let json: Vec<MessageJson> = messages
        .iter()
        .map(|m| {
            Ok(MessageJson {
                topic_id: &topic,
                partition_id: m.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                op: m.op.as_str(),
                source_table: &m.source_table,
                key: raw(&m.key)?,
                payload: raw(&m.payload)?,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let has_more = messages.len() as u64 == limit && limit > 0;
    // Serialized straight from the stored JSON text (no intermediate JSON tree).
    let body = serde_json::to_vec(&ConsumeResponse { messages: json, has_more }).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Serialize)]
struct ConsumeResponse<'a> {
    messages: Vec<MessageJson<'a>>,
    has_more: bool,
}

/// A stored message key or payload (JSON text written by the engine) as a JSON value.
fn raw(text: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("stored message is not JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    topic_id: String,
    group_id: String,
    partition_id: Option<u32>,
    /// Cumulative: everything up to this offset.
    upto_offset: Option<u64>,
    /// Exactly these offsets.
    offsets: Option<Vec<u64>>,
}

pub async fn ack(
    State(state): State<SharedState>,
    Caller(principal): Caller,
    ApiJson(body): ApiJson<AckBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = match (body.upto_offset, body.offsets) {
        (Some(n), None) => AckTarget::Upto(n),
        (None, Some(list)) => AckTarget::Offsets(list),
        _ => return Err(ApiError::bad_request("give either upto_offset or offsets")),
    };
    check_topic(&state, &body.topic_id)?;
    let db = Arc::clone(&state.db);
    let position = state
        .run(async move { db.ack_as(&principal, &body.topic_id, &body.group_id, body.partition_id, &target).await })
        .await?
        .map_err(ApiError::from_engine)?;
    // Everything below the position is acknowledged; null while offset 0 is not.
    Ok(Json(serde_json::json!({ "acknowledged_offset": position.checked_sub(1), "position": position })))
}
