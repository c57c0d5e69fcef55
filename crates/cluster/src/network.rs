//! Node-to-node transport: openraft's three RPCs (append entries, vote, install a snapshot chunk)
//! as HTTP POSTs to the peer's Raft address (`http://<raft>/raft/{append,vote,snapshot}`), on
//! the stack the server already runs (axum serving, reqwest calling, pooled keep-alive
//! connections). Every request carries the cluster secret (`Authorization: Bearer <secret>`),
//! checked in constant time before the body is read.
//!
//! Bodies: `header_len:u32 header(JSON)` then a binary tail: for append entries, each entry as
//! `len:u32` and the bytes the Raft log stores it as (a command stays the bytes it is, not a
//! JSON array of numbers); for a snapshot chunk, the chunk's bytes; nothing for a vote. Responses
//! are JSON: `{"Ok": response}` or `{"Err": the receiver's RaftError}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, Raft};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::log_store::{entry_from_wire, entry_to_wire};
use crate::{NodeAddr, TypeConfig};

/// The largest request body a node reads: a batch of entries or a snapshot chunk.
pub const MAX_BODY_BYTES: usize = 256 << 20;
/// Entries sent in one append request, at most (one larger entry goes alone): openraft 0.9 gives
/// the request one heartbeat interval to be sent, decoded and fsynced.
const APPEND_BUDGET_BYTES: usize = 8 << 20;

/// Opens a [`Peer`] per target node; shares one connection pool.
#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    secret: Arc<str>,
    answered: Answered,
}

/// When each peer last answered one of this node's RPCs.
pub type Answered = Arc<std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>>;

impl Network {
    /// When each peer last answered (shared with whoever reports the cluster's state).
    pub fn answered(&self) -> Answered {
        Arc::clone(&self.answered)
    }

    pub fn new(secret: &str) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client with default TLS-less settings builds");
        Self { client, secret: secret.into(), answered: Answered::default() }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Peer {
        Peer {
            client: self.client.clone(),
            secret: Arc::clone(&self.secret),
            answered: Arc::clone(&self.answered),
            target,
            base: format!("http://{}/raft", node.raft),
        }
    }
}

/// The RPCs to one peer.
pub struct Peer {
    client: reqwest::Client,
    secret: Arc<str>,
    answered: Answered,
    target: u64,
    base: String,
}

#[derive(Serialize, Deserialize)]
struct AppendHeader {
    vote: openraft::Vote<u64>,
    prev_log_id: Option<openraft::LogId<u64>>,
    leader_commit: Option<openraft::LogId<u64>>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: openraft::Vote<u64>,
    meta: openraft::SnapshotMeta<u64, NodeAddr>,
    offset: u64,
    done: bool,
}

fn frame(header: &impl Serialize, tail_len: usize) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("RPC headers serialize");
    let mut out = Vec::with_capacity(4 + header.len() + tail_len);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

fn unframe<H: DeserializeOwned>(body: &[u8]) -> Result<(H, &[u8]), String> {
    let (len, rest) = body.split_first_chunk::<4>().ok_or("a truncated RPC body")?;
    let (header, tail) = rest.split_at_checked(u32::from_be_bytes(*len) as usize).ok_or("a truncated RPC header")?;
    Ok((serde_json::from_slice(header).map_err(|e| format!("a malformed RPC header: {e}"))?, tail))
}

impl Peer {
    async fn call<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        rpc: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<T, RPCError<u64, NodeAddr, RaftError<u64, E>>> {
        let sent = self
            .client
            .post(format!("{}/{rpc}", self.base))
            .bearer_auth(&self.secret)
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // Not reached at all: openraft backs off before trying again.
            Err(e) if e.is_connect() => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let status = response.status();
        let body = response.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1)));
        }
        if !status.is_success() {
            let reason =
                format!("node {} answered {rpc} with {status}: {}", self.target, String::from_utf8_lossy(&body));
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(reason))));
        }
        self.answered.lock().unwrap_or_else(|e| e.into_inner()).insert(self.target, std::time::Instant::now());
        match serde_json::from_slice::<Result<T, RaftError<u64, E>>>(&body) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        let entries: Vec<Vec<u8>> = rpc.entries.iter().map(entry_to_wire).collect();
        let size: usize = entries.iter().map(|e| 4 + e.len()).sum();
        if size > APPEND_BUDGET_BYTES && entries.len() > 1 {
            // openraft retries at once with fewer entries.
            let fewer =
                (entries.len() as u64 * APPEND_BUDGET_BYTES as u64 / size as u64).clamp(1, entries.len() as u64 - 1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fewer)));
        }
        let header = AppendHeader { vote: rpc.vote, prev_log_id: rpc.prev_log_id, leader_commit: rpc.leader_commit };
        let mut body = frame(&header, size);
        for e in entries {
            body.extend_from_slice(&(e.len() as u32).to_be_bytes());
            body.extend_from_slice(&e);
        }
        self.call("append", body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>> {
        let header = SnapshotHeader { vote: rpc.vote, meta: rpc.meta, offset: rpc.offset, done: rpc.done };
        let mut body = frame(&header, rpc.data.len());
        body.extend_from_slice(&rpc.data);
        self.call("snapshot", body, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        self.call("vote", frame(&rpc, 0), &option).await
    }
}

#[derive(Clone)]
struct Receiver {
    raft: Raft<TypeConfig>,
    secret: Arc<str>,
}

/// The routes that answer peers' RPCs with `raft`, for requests that carry `secret`.
pub fn router(raft: Raft<TypeConfig>, secret: &str) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .with_state(Receiver { raft, secret: secret.into() })
}

/// Checks the secret, then reads the body (so no unauthenticated request is read in full).
async fn authenticated(receiver: &Receiver, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let expected = receiver.secret.as_bytes();
    let equal = given.is_some_and(|g| {
        g.len() == expected.len() && g.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if !equal {
        return Err((StatusCode::UNAUTHORIZED, "wrong or missing cluster secret").into_response());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the RPC body: {e}")).into_response())
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, reason).into_response()
}

fn answer<T: Serialize, E: Serialize>(result: Result<T, E>) -> Response {
    axum::Json(result).into_response()
}

async fn append(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let body = match authenticated(&receiver, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (header, mut tail): (AppendHeader, _) = match unframe(&body) {
        Ok(parts) => parts,
        Err(e) => return bad_request(e),
    };
    let mut entries = Vec::new();
    while !tail.is_empty() {
        let Some((len, rest)) = tail.split_first_chunk::<4>() else { return bad_request("a truncated entry".into()) };
        let Some((entry, rest)) = rest.split_at_checked(u32::from_be_bytes(*len) as usize) else {
            return bad_request("a truncated entry".into());
        };
        match entry_from_wire(entry) {
            Ok(e) => entries.push(e),
            Err(e) => return bad_request(e.to_string()),
        }
        tail = rest;
    }
    let rpc = AppendEntriesRequest {
        vote: header.vote,
        prev_log_id: header.prev_log_id,
        entries,
        leader_commit: header.leader_commit,
    };
    answer(receiver.raft.append_entries(rpc).await)
}

async fn vote(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let body = match authenticated(&receiver, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match unframe::<VoteRequest<u64>>(&body) {
        Ok((rpc, [])) => answer(receiver.raft.vote(rpc).await),
        Ok(_) => bad_request("a vote carries nothing after its header".into()),
        Err(e) => bad_request(e),
    }
}

async fn snapshot(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    let body = match authenticated(&receiver, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (header, data): (SnapshotHeader, _) = match unframe(&body) {
        Ok(parts) => parts,
        Err(e) => return bad_request(e),
    };
    let rpc = InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: data.to_vec(),
        done: header.done,
    };
    answer(receiver.raft.install_snapshot(rpc).await)
}
