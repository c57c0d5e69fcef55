//! Live queries over HTTP (docs/live-queries.md): the WebSocket `GET /v1/api/live` (many
//! subscriptions on one socket, JSON text frames) and Server-Sent Events
//! `GET /v1/api/live/sse` (one subscription per request; `id:` is the position, so a browser's
//! `EventSource` resumes with `Last-Event-ID`). Both authenticate like every endpoint, or with
//! `?access_token=` for browsers, whose WebSocket and EventSource cannot send headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use topicfusion_engine::{LiveEnd, LiveEvent, LiveRow, Principal, Subscription};

use super::error::ApiError;
use super::{Caller, SharedState};

/// Subscriptions one socket may hold.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 10_000;

/// Frames waiting to be written to one socket; a subscription whose frames do not fit waits,
/// and its rows wait in its own bounded buffer (see the engine's `live` module).
const SOCKET_QUEUE: usize = 256;

#[derive(Deserialize)]
pub struct TokenQuery {
    access_token: Option<String>,
}

/// The caller: the `Authorization` header, else `?access_token=`.
fn caller(state: &SharedState, header: Result<Caller, ApiError>, token: Option<&str>) -> Result<Principal, ApiError> {
    match (header, token) {
        (Ok(Caller(p)), _) => Ok(p),
        (Err(_), Some(token)) => state
            .tokens
            .verify(&state.db, token, chrono::Utc::now().timestamp())
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token: log in again")),
        (Err(e), None) => Err(e),
    }
}

/// `GET /v1/api/live`: upgrades to a WebSocket of subscriptions.
pub async fn websocket(
    State(state): State<SharedState>,
    header: Result<Caller, ApiError>,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let principal = caller(&state, header, query.access_token.as_deref())?;
    let max = state.config.server.max_body_bytes;
    Ok(ws.max_message_size(max).on_upgrade(move |socket| serve_socket(state, principal, socket)))
}

/// A client frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { id: String, sql: String, from_position: Option<u64>, snapshot: Option<bool> },
    Unsubscribe { id: String },
}

async fn serve_socket(state: SharedState, principal: Principal, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut frames) = mpsc::channel::<WsMessage>(SOCKET_QUEUE);
    let writer = tokio::spawn(async move {
        // Every frame waiting goes out in one write (a commit reaching many subscriptions of a
        // socket is many frames: one system call each would cost the server more than the rest
        // of their delivery).
        'write: while let Some(frame) = frames.recv().await {
            if sink.feed(frame).await.is_err() {
                break;
            }
            while let Ok(more) = frames.try_recv() {
                if sink.feed(more).await.is_err() {
                    break 'write;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut subscriptions: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(Ok(message)) = incoming.next().await {
        let text = match message {
            WsMessage::Text(text) => text,
            WsMessage::Close(_) => break,
            WsMessage::Binary(_) => {
                send(&out, error_frame(None, "bad_request", "frames are JSON text")).await;
                continue;
            }
            _ => continue,
        };
        subscriptions.retain(|_, task| !task.is_finished());
        let frame = match serde_json::from_str::<ClientFrame>(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                send(&out, error_frame(None, "bad_request", &format!("not a subscribe or unsubscribe frame: {e}")))
                    .await;
                continue;
            }
        };
        match frame {
            ClientFrame::Subscribe { id, sql, from_position, snapshot } => {
                if subscriptions.contains_key(&id) {
                    send(&out, error_frame(Some(&id), "bad_request", "a subscription with this id is open")).await;
                    continue;
                }
                if subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET {
                    let message = format!("a socket holds at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions");
                    send(&out, error_frame(Some(&id), "bad_request", &message)).await;
                    continue;
                }
                // The user as they are now (a dropped user's socket subscribes no more).
                let Some(principal) = state.db.principal(&principal.name) else {
                    send(&out, error_frame(Some(&id), "unauthorized", "the user no longer exists")).await;
                    break;
                };
                match subscribe(&state, &principal, &sql, snapshot, from_position).await {
                    Ok(subscription) => {
                        let position = subscription.position;
                        send(&out, json!({ "type": "subscribed", "id": id, "position": position })).await;
                        let task = tokio::spawn(pump_socket(id.clone(), subscription, out.clone()));
                        subscriptions.insert(id, task);
                    }
                    Err(e) => {
                        send(&out, error_frame(Some(&id), e.code.as_str(), &e.message)).await;
                    }
                }
            }
            ClientFrame::Unsubscribe { id } => match subscriptions.remove(&id) {
                Some(task) => {
                    // Dropping the subscription (with the task) ends it.
                    task.abort();
                    send(&out, json!({ "type": "unsubscribed", "id": id })).await;
                }
                None => {
                    send(&out, error_frame(Some(&id), "not_found", "no open subscription has this id")).await;
                }
            },
        }
    }
    for (_, task) in subscriptions {
        task.abort();
    }
    drop(out);
    let _ = writer.await;
}

/// Starts a subscription on the engine runtime; errors in the API's shape.
async fn subscribe(
    state: &SharedState,
    principal: &Principal,
    sql: &str,
    snapshot: Option<bool>,
    from: Option<u64>,
) -> Result<Subscription, LiveError> {
    let (db, principal, sql) = (Arc::clone(&state.db), principal.clone(), sql.to_owned());
    match state.run(async move { db.subscribe(&principal, &sql, snapshot, from).await }).await {
        Ok(Ok(subscription)) => Ok(subscription),
        Ok(Err(e)) => Err(LiveError::of(e)),
        Err(e) => Err(LiveError { code: e.code.as_str().to_owned(), message: e.message }),
    }
}

struct LiveError {
    code: String,
    message: String,
}

impl LiveError {
    fn of(e: topicfusion_engine::ExecuteError) -> Self {
        if let datafusion::error::DataFusionError::External(inner) = &e.source
            && let Some(end) = inner.downcast_ref::<LiveEnd>()
        {
            return Self { code: end.code.to_owned(), message: end.message.clone() };
        }
        let api = ApiError::from_execute(e);
        Self { code: api.code.as_str().to_owned(), message: api.message }
    }
}

/// Forwards one subscription's rows to the socket until it ends (or the socket goes).
async fn pump_socket(id: String, mut subscription: Subscription, out: mpsc::Sender<WsMessage>) {
    while let Some(event) = subscription.next().await {
        let frame = match event {
            LiveEvent::Rows(rows) => {
                let rows: Vec<Json> = rows.iter().map(|r| row_json(&subscription, r)).collect();
                json!({ "type": "rows", "id": id, "rows": rows })
            }
            LiveEvent::Ready { position } => json!({ "type": "ready", "id": id, "position": position }),
            LiveEvent::Progress { position } => json!({ "type": "progress", "id": id, "position": position }),
            LiveEvent::End(end) => {
                send(&out, error_frame(Some(&id), end.code, &end.message)).await;
                return;
            }
        };
        if !send(&out, frame).await {
            return;
        }
    }
}

/// `{"op", "position", "row", "old"?}`: a row as both transports send it.
fn row_json(subscription: &Subscription, row: &LiveRow) -> Json {
    let mut object = json!({
        "op": row.op.as_str(),
        "position": row.position,
        "row": subscription.row_object(&row.row),
    });
    if let Some(old) = &row.old {
        object["old"] = Json::Object(subscription.row_object(old));
    }
    object
}

fn error_frame(id: Option<&str>, code: &str, message: &str) -> Json {
    let message = topicfusion_engine::one_line(message, super::error::MAX_MESSAGE_CHARS);
    json!({ "type": "error", "id": id, "error": { "code": code, "message": message } })
}

async fn send(out: &mpsc::Sender<WsMessage>, frame: Json) -> bool {
    out.send(WsMessage::Text(frame.to_string().into())).await.is_ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    sql: String,
    from_position: Option<u64>,
    snapshot: Option<bool>,
    access_token: Option<String>,
}

/// `GET /v1/api/live/sse?sql=...`: one subscription as Server-Sent Events. A `Last-Event-ID`
/// header (an `EventSource` reconnecting) resumes after that position, without a snapshot.
pub async fn sse(
    State(state): State<SharedState>,
    header: Result<Caller, ApiError>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let principal = caller(&state, header, query.access_token.as_deref())?;
    let last_event = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not a position"))?,
        ),
        None => None,
    };
    let (snapshot, from) = match last_event {
        Some(position) => (Some(false), Some(position)),
        None => (query.snapshot, query.from_position),
    };
    let subscription = match subscribe(&state, &principal, &query.sql, snapshot, from).await {
        Ok(s) => s,
        // The API's error shape with the code the WebSocket's error frame has.
        Err(e) => {
            let status = match e.code.as_str() {
                "forbidden" => axum::http::StatusCode::FORBIDDEN,
                "unauthorized" => axum::http::StatusCode::UNAUTHORIZED,
                "internal" => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "not_leader" => axum::http::StatusCode::MISDIRECTED_REQUEST,
                _ => axum::http::StatusCode::BAD_REQUEST,
            };
            let body = json!({ "error": { "code": e.code, "message": e.message } });
            return Ok((status, axum::Json(body)).into_response());
        }
    };
    Ok(Sse::new(sse_events(subscription)).keep_alive(KeepAlive::default()).into_response())
}

/// The subscription as SSE events: `subscribed` (`id:` its position when it resumes), each row
/// as a `data:` event (the last row of a commit with `id:` = its position; snapshot rows have
/// none, so a reconnect during the snapshot starts over), `ready` when the snapshot is complete
/// and `progress` when commits that did not concern it passed (both with `id:` = the position),
/// `error` when it ends.
fn sse_events(subscription: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut first = Event::default().event("subscribed").data(json!({ "position": subscription.position }).to_string());
    if !subscription.has_snapshot() {
        first = first.id(subscription.position.to_string());
    }
    let rows = futures::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        let events = match subscription.next().await? {
            // `id:` (what Last-Event-ID resumes after) only on the last row of a commit, so a
            // reconnect in the middle of one gets it again whole; none on snapshot rows.
            LiveEvent::Rows(rows) => {
                let last = rows.len().saturating_sub(1);
                rows.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let event = Event::default().data(row_json(&subscription, r).to_string());
                        if r.op == topicfusion_engine::LiveOp::Snapshot || i < last {
                            event
                        } else {
                            event.id(r.position.to_string())
                        }
                    })
                    .collect::<Vec<_>>()
            }
            LiveEvent::Ready { position } => vec![
                Event::default()
                    .event("ready")
                    .id(position.to_string())
                    .data(json!({ "position": position }).to_string()),
            ],
            LiveEvent::Progress { position } => vec![
                Event::default()
                    .event("progress")
                    .id(position.to_string())
                    .data(json!({ "position": position }).to_string()),
            ],
            LiveEvent::End(end) => {
                let data = json!({ "code": end.code, "message": end.message }).to_string();
                return Some((vec![Event::default().event("error").data(data)], None));
            }
        };
        Some((events, Some(subscription)))
    });
    futures::stream::once(async move { first }).chain(rows.flat_map(futures::stream::iter)).map(Ok)
}
