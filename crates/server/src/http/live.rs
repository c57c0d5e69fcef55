//! Live queries over HTTP (docs/live-queries.md): the WebSocket `GET /v1/api/live` (many
//! subscriptions on one socket, JSON text frames) and Server-Sent Events
//! `GET /v1/api/live/sse` (one subscription per request; `id:` is the position, so a browser's
//! `EventSource` resumes with `Last-Event-ID`). Both authenticate like every endpoint, or with
//! `?access_token=` for browsers, whose WebSocket and EventSource cannot send headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::future::{AbortHandle, Abortable};
use futures::stream::{BoxStream, SelectAll, SplitSink};
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use topicfusion_engine::{LiveEnd, LiveEvent, LiveGroup, LiveRow, Principal, Subscription};

use super::error::ApiError;
use super::{Caller, SharedState};

/// Subscriptions one socket may hold.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 10_000;

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
    let live = state.live.clone();
    Ok(ws.max_message_size(max).on_upgrade(move |socket| async move {
        // On the live-query runtime (lower priority than writers); ends with the socket. Its
        // threads' nice value is inherited by threads they start: no `spawn_blocking` here
        // (engine work goes through `state.run`, on the engine runtime).
        let _ = live.spawn(serve_socket(state, principal, socket)).await;
    }))
}

/// A client frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { id: String, sql: String, from_position: Option<u64>, snapshot: Option<bool> },
    Unsubscribe { id: String },
}

/// One socket: its client frames and the frames of all its subscriptions, in one task. A
/// subscription starts as a stream (subscribing, then its snapshot's frames) in a [`SelectAll`];
/// once its snapshot is complete the stream hands it over to the socket's [`LiveGroup`], whose
/// ready list names the subscriptions with new events: a commit reaching many subscriptions of
/// the socket wakes this task once, it takes just their events, and their frames go out in one
/// write (a task per subscription, with a queue to a writer task, cost the server more than the
/// rest of the delivery; live subscriptions as streams in the `SelectAll`, each woken, polled
/// and queued again per event, cost a third of it).
async fn serve_socket(state: SharedState, principal: Principal, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let mut subs = Subs::default();
    let group = LiveGroup::new();
    'socket: loop {
        // Every client frame received by now is answered before the next write turn (up to
        // WRITE_BATCH of them), not one per turn: a turn writes up to WRITE_BATCH frames, and a
        // busy socket that read its client one frame per turn (when the select! below happened
        // to pick it) answered a client sending a hundred frames a second, and its pings, tens
        // of seconds late. (A pong is queued as its ping is read, and flushed here.)
        let mut read = 0;
        while read < WRITE_BATCH {
            match incoming.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    if on_message(&state, &principal, message, &mut subs, &mut sink).await.is_break() {
                        break 'socket;
                    }
                    read += 1;
                }
                // Closed, or a broken frame.
                Some(_) => break 'socket,
                // Nothing more received yet.
                None => break,
            }
        }
        if read > 0 && sink.flush().await.is_err() {
            break;
        }
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(message)) => {
                    if on_message(&state, &principal, message, &mut subs, &mut sink).await.is_break()
                        || sink.flush().await.is_err()
                    {
                        break;
                    }
                }
                _ => break,
            },
            Some(out) = subs.starting.next(), if !subs.starting.is_empty() => {
                if write_frames(&mut sink, out, &mut subs, &group).await.is_err() {
                    break;
                }
            }
            keys = group.ready() => {
                if write_live(&mut sink, keys, &mut subs, &group).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping the subscriptions ends them.
    drop(subs);
    let _ = sink.close().await;
}

/// Runs one client message and queues its answer; `Break`: the socket closes.
async fn on_message(
    state: &SharedState,
    principal: &Principal,
    message: WsMessage,
    subs: &mut Subs,
    sink: &mut SplitSink<WebSocket, WsMessage>,
) -> ControlFlow<()> {
    let reply = match message {
        WsMessage::Text(text) => on_client_frame(state, principal, text.as_str(), subs).await,
        WsMessage::Close(_) => return ControlFlow::Break(()),
        WsMessage::Binary(_) => Reply::Frame(error_frame(None, "bad_request", "frames are JSON text")),
        _ => return ControlFlow::Continue(()),
    };
    let (frame, close) = match reply {
        Reply::Frame(frame) => (frame, false),
        Reply::Close(frame) => (frame, true),
        Reply::None => return ControlFlow::Continue(()),
    };
    // Flushed once the turn's client frames are answered (or by the close).
    if sink.feed(text_message(frame.to_string())).await.is_err() || close {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// A socket's subscriptions.
#[derive(Default)]
struct Subs {
    /// By the client's id: each one's key, and the handle that aborts its starting stream.
    open: HashMap<String, Open>,
    /// Subscribing or sending their snapshot: streams of frames.
    starting: Starting,
    /// Live (snapshot complete), by key: read when the socket's group names them.
    live: HashMap<u64, (Arc<str>, Subscription)>,
    /// The key of the next subscription (the client may reuse an id once it ended).
    next_key: u64,
}

struct Open {
    key: u64,
    abort: AbortHandle,
}

impl Subs {
    /// Forgets subscription `key` (named `id` by the client) once it ended.
    fn ended(&mut self, id: &str, key: u64) {
        self.live.remove(&key);
        if self.open.get(id).is_some_and(|open| open.key == key) {
            self.open.remove(id);
        }
    }
}

/// The streams of subscriptions being started, each abortable by its unsubscribe.
type Starting = SelectAll<Abortable<BoxStream<'static, Out>>>;

/// What a starting subscription's stream yields: a frame; that it ended (after its last frame);
/// or, last, the subscription itself, its snapshot complete, to join the socket's group.
enum Out {
    Frame(WsMessage),
    Ended(Arc<str>, u64),
    Live(Arc<str>, u64, Subscription),
}

/// The answer to a client frame; `Close`: the socket closes after it; `None`: it comes from the
/// subscription's stream (`subscribed` or the error).
enum Reply {
    Frame(Json),
    Close(Json),
    None,
}

/// Writes `first` and every other frame of a starting subscription ready now (up to
/// [`WRITE_BATCH`], so that the client's own frames are read between), then flushes them in
/// one write.
async fn write_frames(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    first: Out,
    subs: &mut Subs,
    group: &Arc<LiveGroup>,
) -> Result<(), axum::Error> {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        match out {
            Out::Frame(frame) => {
                sink.feed(frame).await?;
                written += 1;
            }
            Out::Ended(id, key) => subs.ended(&id, key),
            Out::Live(id, key, subscription) => {
                // Rings the group once for what is already queued (read at the next turn).
                let joined = subscription.join(group, key);
                debug_assert!(joined, "a subscription handed over with its snapshot incomplete");
                subs.live.insert(key, (id, subscription));
            }
        }
        if written < WRITE_BATCH {
            // Polled with a no-op waker: the select! polls it again before it waits.
            next = subs.starting.next().now_or_never().flatten();
        }
    }
    sink.flush().await
}

/// Writes the queued events of the live subscriptions `keys` names (up to [`WRITE_BATCH`]
/// frames: the rest are named again for the next turn, after the client's frames are read),
/// then flushes them in one write.
async fn write_live(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    keys: Vec<u64>,
    subs: &mut Subs,
    group: &LiveGroup,
) -> Result<(), axum::Error> {
    let mut written = 0;
    for (i, &key) in keys.iter().enumerate() {
        if written >= WRITE_BATCH {
            group.requeue(keys[i..].iter().copied());
            break;
        }
        // A key repeats when its inbox was rung again before this turn; gone once it ended.
        while let Some((id, subscription)) = subs.live.get_mut(&key) {
            if written >= WRITE_BATCH {
                group.requeue([key]);
                break;
            }
            let event = match subscription.try_next() {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(event) => event,
            };
            let Some(event) = event else {
                let id = Arc::clone(id);
                subs.ended(&id, key);
                break;
            };
            let (frame, end) = render(id, subscription, event);
            sink.feed(text_message(frame)).await?;
            written += 1;
            if end {
                let id = Arc::clone(id);
                subs.ended(&id, key);
                break;
            }
        }
    }
    sink.flush().await
}

/// Frames written to a socket in one turn (of starting subscriptions, or of live ones) before
/// it is flushed and its client's frames are read again; also the most client frames answered
/// in one turn.
const WRITE_BATCH: usize = 1024;

/// Runs a client frame: subscribe (a stream of the subscription's frames joins
/// `subs.starting`) or unsubscribe.
async fn on_client_frame(state: &SharedState, principal: &Principal, text: &str, subs: &mut Subs) -> Reply {
    let frame = match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => frame,
        Err(e) => {
            let message = format!("not a subscribe or unsubscribe frame: {e}");
            return Reply::Frame(error_frame(None, "bad_request", &message));
        }
    };
    match frame {
        ClientFrame::Subscribe { id, sql, from_position, snapshot } => {
            if subs.open.contains_key(&id) {
                return Reply::Frame(error_frame(Some(&id), "bad_request", "a subscription with this id is open"));
            }
            if subs.open.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET {
                let message = format!("a socket holds at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions");
                return Reply::Frame(error_frame(Some(&id), "bad_request", &message));
            }
            // The user as they are now (a dropped user's socket subscribes no more).
            let Some(principal) = state.db.principal(&principal.name) else {
                return Reply::Close(error_frame(Some(&id), "unauthorized", "the user no longer exists"));
            };
            // Subscribing (a snapshot may wait for its turn) runs in the subscription's stream,
            // not here: the socket's other subscriptions and frames go on meanwhile.
            let (abort, registration) = AbortHandle::new_pair();
            let state = SharedState::clone(state);
            let key = subs.next_key;
            subs.next_key += 1;
            let name: Arc<str> = Arc::from(id.as_str());
            let started = futures::stream::once(async move {
                match subscribe(&state, &principal, &sql, snapshot, from_position).await {
                    Ok(subscription) => {
                        let reply = json!({ "type": "subscribed", "id": &*name, "position": subscription.position });
                        futures::stream::once(std::future::ready(Out::Frame(text_message(reply.to_string()))))
                            .chain(starting_frames(name, key, subscription))
                            .boxed()
                    }
                    Err(e) => {
                        let error = error_frame(Some(&name), e.code.as_str(), &e.message);
                        futures::stream::iter([Out::Frame(text_message(error.to_string())), Out::Ended(name, key)])
                            .boxed()
                    }
                }
            })
            .flatten();
            subs.starting.push(Abortable::new(started.boxed(), registration));
            subs.open.insert(id, Open { key, abort });
            Reply::None
        }
        ClientFrame::Unsubscribe { id } => match subs.open.remove(&id) {
            Some(open) => {
                // A starting stream ends at its next poll; either way the subscription is
                // dropped (ended).
                open.abort.abort();
                subs.live.remove(&open.key);
                Reply::Frame(json!({ "type": "unsubscribed", "id": id }))
            }
            None => Reply::Frame(error_frame(Some(&id), "not_found", "no open subscription has this id")),
        },
    }
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

/// A starting subscription's frames (its snapshot's, rendered), then either `Out::Ended` (it
/// ended) or, once its snapshot is complete (at once without one), `Out::Live` handing it over.
fn starting_frames(id: Arc<str>, key: u64, subscription: Subscription) -> BoxStream<'static, Out> {
    enum Phase {
        Snapshot(Subscription),
        Ended,
        Done,
    }
    futures::stream::unfold(Phase::Snapshot(subscription), move |phase| {
        let id = Arc::clone(&id);
        async move {
            let mut subscription = match phase {
                Phase::Snapshot(subscription) => subscription,
                Phase::Ended => return Some((Out::Ended(id, key), Phase::Done)),
                Phase::Done => return None,
            };
            if !subscription.has_snapshot() {
                return Some((Out::Live(id, key, subscription), Phase::Done));
            }
            let Some(event) = subscription.next().await else {
                return Some((Out::Ended(id, key), Phase::Done));
            };
            let (frame, end) = render(&id, &subscription, event);
            let next = if end { Phase::Ended } else { Phase::Snapshot(subscription) };
            Some((Out::Frame(text_message(frame)), next))
        }
    })
    .boxed()
}

/// An event of subscription `id` as its frame, and whether it ended the subscription.
fn render(id: &str, subscription: &Subscription, event: LiveEvent) -> (String, bool) {
    match event {
        LiveEvent::Rows(rows) => (rows_frame(id, subscription, &rows), false),
        LiveEvent::Ready { position } => {
            (json!({ "type": "ready", "id": id, "position": position }).to_string(), false)
        }
        LiveEvent::Progress { position } => {
            (json!({ "type": "progress", "id": id, "position": position }).to_string(), false)
        }
        LiveEvent::End(end) => (error_frame(Some(id), end.code, &end.message).to_string(), true),
    }
}

/// `{"type":"rows","id":..,"rows":[...]}`, written as text.
fn rows_frame(id: &str, subscription: &Subscription, rows: &[LiveRow]) -> String {
    let mut out = Vec::with_capacity(48 + id.len() + rows.len() * 128);
    out.extend_from_slice(br#"{"type":"rows","id":"#);
    serde_json::to_writer(&mut out, id).expect("a string serializes");
    out.extend_from_slice(br#","rows":["#);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        subscription.write_row(&mut out, row);
    }
    out.extend_from_slice(b"]}");
    utf8(out)
}

/// The text of JSON written as bytes (always UTF-8: every string in it came from a `String`).
fn utf8(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A row as the SSE `data:` of its event.
fn row_text(subscription: &Subscription, row: &LiveRow) -> String {
    let mut out = Vec::with_capacity(128);
    subscription.write_row(&mut out, row);
    utf8(out)
}

fn error_frame(id: Option<&str>, code: &str, message: &str) -> Json {
    let message = topicfusion_engine::one_line(message, super::error::MAX_MESSAGE_CHARS);
    json!({ "type": "error", "id": id, "error": { "code": code, "message": message } })
}

fn text_message(text: String) -> WsMessage {
    WsMessage::Text(text.into())
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
                        let event = Event::default().data(row_text(&subscription, r));
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
