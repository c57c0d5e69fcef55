//! One node of a cluster: its Raft log (`<dir>/log`), state machine (over the node's store),
//! snapshot (`<dir>/snapshot`) and transport, started together; and the leader's write path.
//!
//! A started node makes its store a replica (`Store::replicate_through`): every write to the
//! store, `Store::commit` as the engine calls it, is prepared from the store's applied state
//! (offsets, timestamp, keys), proposed, and returns once a majority holds it and this node
//! applied it. The store serializes replicated writes from prepare to apply, so each is prepared
//! from the state the previous one left, and before the first write of a term the [`Proposer`]
//! waits until the store has applied every entry of the terms before (openraft's
//! `ensure_linearizable`: leadership confirmed by a quorum, the new leader's blank entry
//! applied), so nothing is prepared from a state missing a committed entry. A command prepared
//! before a leadership change applies as `Stale` if its partitions moved meanwhile (nothing
//! written, no offset reused) and is refused; its other keys (rows, group positions, sequences)
//! carry no such check, which is why the serialization and the fence above matter. On a
//! follower a write fails with `StorageError::NotLeader`, naming the leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{LogId, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use topicfusion_storage::{Command, Commit, Replicator, StorageError, Store};

use crate::log_store::LogStore;
use crate::network::{Network, router};
use crate::state_machine::{ChangeWatch, StateMachine};
use crate::{ApplyOutcome, NodeAddr, TypeConfig};

/// The largest command one log entry carries (a request to a follower must fit in
/// [`crate::network::MAX_BODY_BYTES`]).
pub const MAX_COMMAND_BYTES: usize = 64 << 20;

/// How long a leader may go without answers from a majority of the voters before it refuses
/// new writes (and reports the quorum lost): openraft 0.9 has no check-quorum step-down, so a
/// leader cut off from the others would take writes that wait until it is back in contact.
pub const QUORUM_LOST_AFTER: Duration = Duration::from_secs(3);

/// Whether node `id` heard from a majority of every voter set of `membership` (itself counted)
/// within [`QUORUM_LOST_AFTER`].
fn in_contact(id: u64, membership: &openraft::Membership<u64, NodeAddr>, answered: &crate::network::Answered) -> bool {
    let answered = answered.lock().unwrap_or_else(|e| e.into_inner());
    membership.get_joint_config().iter().all(|voters| {
        let heard = voters
            .iter()
            .filter(|&&v| v == id || answered.get(&v).is_some_and(|t| t.elapsed() < QUORUM_LOST_AFTER))
            .count();
        heard * 2 > voters.len()
    })
}

/// What a node needs to know about its cluster.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's id, a key of `peers`.
    pub id: u64,
    /// Every node's addresses, this one's included: the membership a new cluster starts with.
    pub peers: BTreeMap<u64, NodeAddr>,
    /// Sent with and required on every RPC between nodes.
    pub secret: String,
    /// A snapshot is built after this many applied entries, and the log purged up to it.
    pub snapshot_every: u64,
    /// Called when the store changed under the node's in-memory state (see [`ChangeWatch`]).
    pub on_change: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Never form a cluster: wait to be added to an existing one (`ALTER CLUSTER ADD NODE`). For
    /// a node added later or replacing a removed one, which would otherwise, as the lowest id
    /// of its `peers` with an empty log, start a cluster of its own.
    pub join: bool,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig").field("id", &self.id).field("peers", &self.peers).finish_non_exhaustive()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("Raft: {0}")]
    Raft(String),
    /// A membership change refused as asked (an unknown node, a change in progress, ...).
    #[error("{0}")]
    Membership(String),
}

/// Reloads of the engine's in-memory state, run on a thread of their own: the state machine asks
/// for one without waiting (its apply must never wait for engine locks a writer holds while it
/// waits for that apply), requests coalesce, and [`Reloads::run_now`] runs one and returns after.
#[derive(Clone)]
struct Reloads {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    hook: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Reloads {
    fn start(hook: Option<Arc<dyn Fn() + Send + Sync>>) -> Result<Self, ClusterError> {
        let Some(hook) = hook else { return Ok(Self { wake: None, hook: None }) };
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let run = Arc::clone(&hook);
        std::thread::Builder::new()
            .name("tf-reload".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    run();
                }
            })
            .map_err(|e| ClusterError::Raft(format!("cannot start the reload thread: {e}")))?;
        Ok(Self { wake: Some(wake), hook: Some(hook) })
    }

    /// Asks for a reload after this call (one already asked for covers it).
    fn request(&self) {
        if let Some(w) = &self.wake {
            let _ = w.try_send(());
        }
    }

    /// Runs a reload on a blocking thread and returns once it is done.
    async fn run_now(&self) {
        if let Some(hook) = self.hook.clone() {
            let _ = tokio::task::spawn_blocking(move || hook()).await;
        }
    }
}

/// Makes this node a writing leader in each term it leads: waits until its store has applied
/// every entry of the terms before (openraft's `ensure_linearizable`), reloads the engine's
/// memory from it, and only then lets writes prepare (`fenced_term`). Until then writes are
/// refused at once, so no writer holding engine locks waits for the reload that needs them.
///
/// Entries of the term already in the log when the fence completes are not this process's
/// proposals (a node restarted as leader of its old term keeps its log): `own_from` is set past
/// them first, so they are applied as another node's ([`ChangeWatch::own_from`]).
async fn fence(raft: Raft<TypeConfig>, fenced_term: Arc<AtomicU64>, own_from: Arc<AtomicU64>, reloads: Reloads) {
    let mut metrics = raft.metrics();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (m.state.is_leader(), m.current_term)
        };
        if leading && fenced_term.load(Ordering::Acquire) != term {
            match raft.ensure_linearizable().await {
                Ok(_) => {
                    reloads.run_now().await;
                    // Still this term's leader: else the next round fences the new term.
                    let m = raft.metrics().borrow().clone();
                    if m.state.is_leader() && m.current_term == term {
                        // No write of this term is proposed before `fenced_term` is set: every
                        // entry past the log's end now is one of this process's writers'.
                        let next = m.last_log_index.map_or(0, |i| i + 1);
                        own_from.store(next, Ordering::Release);
                        fenced_term.store(term, Ordering::Release);
                    }
                }
                Err(e) => {
                    tracing::debug!("leadership of term {term} not confirmed yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A running node.
pub struct Node {
    id: u64,
    raft: Raft<TypeConfig>,
    state_machine: StateMachine,
    server: tokio::task::JoinHandle<()>,
    answered: crate::network::Answered,
    fenced_term: Arc<AtomicU64>,
}

/// One node of the cluster as this node sees it (a row of `system.cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `learner`, `candidate`, or `unreachable` (seen from the leader: no
    /// answer to its RPCs for 3 s).
    pub role: &'static str,
    /// The term this node is in.
    pub term: u64,
    /// This node's own; another node's as far as the leader knows it replicated (else unknown).
    pub last_log_index: Option<u64>,
    /// This node's own only.
    pub last_applied_index: Option<u64>,
    pub addr: NodeAddr,
}

/// A handle that reports the cluster as its node sees it; cheap to clone.
#[derive(Clone)]
pub struct StatusView {
    id: u64,
    raft: Raft<TypeConfig>,
    answered: crate::network::Answered,
}

impl StatusView {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The leader this node knows of (itself included).
    pub fn leader_id(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this node leads but has had no answer from a majority of the voters for
    /// [`QUORUM_LOST_AFTER`] (it refuses writes meanwhile).
    pub fn quorum_lost(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state.is_leader() && !in_contact(self.id, m.membership_config.membership(), &self.answered)
    }

    /// The leader this node knows of, when it is another node: where a write sent here belongs.
    pub fn other_leader(&self) -> Option<(u64, NodeAddr)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader.filter(|&id| id != self.id)?;
        m.membership_config.membership().get_node(&id).map(|addr| (id, addr.clone()))
    }

    /// Every node of the membership, this one included, in id order.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        use openraft::ServerState;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let leading = m.state.is_leader();
        let answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        membership
            .nodes()
            .map(|(&id, addr)| {
                let me = id == self.id;
                let role = if me {
                    match m.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Learner => "learner",
                        ServerState::Candidate => "candidate",
                        ServerState::Shutdown => "unreachable",
                    }
                } else if leading && answered.get(&id).is_none_or(|t| t.elapsed() >= Duration::from_secs(3)) {
                    "unreachable"
                } else if m.current_leader == Some(id) {
                    "leader"
                } else if voters.contains(&id) {
                    "follower"
                } else {
                    "learner"
                };
                let (last_log_index, last_applied_index) = if me {
                    (m.last_log_index, m.last_applied.map(|l| l.index))
                } else if leading {
                    (m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).map(|l| l.index), None)
                } else {
                    (None, None)
                };
                NodeStatus {
                    node_id: id,
                    role,
                    term: m.current_term,
                    last_log_index,
                    last_applied_index,
                    addr: addr.clone(),
                }
            })
            .collect()
    }
}

/// Changes the membership (`ALTER CLUSTER ADD|REMOVE NODE`) on the leader: openraft's joint
/// consensus, each step a log entry. Cheap to clone; callable from any Tokio runtime.
#[derive(Clone)]
pub struct Members {
    raft: Raft<TypeConfig>,
}

impl Members {
    /// Adds node `id` at `addr`: first as a learner that receives the log (or a snapshot), then,
    /// once it has caught up with the entry that added it (waiting up to `catch_up`), as a
    /// voter. A node that does not catch up in time stays a learner (the error says so): add it
    /// again once it runs, or remove it.
    pub async fn add(&self, id: u64, addr: NodeAddr, catch_up: Duration) -> Result<(), ClusterError> {
        if id == 0 {
            return Err(ClusterError::Membership("node ids start at 1".into()));
        }
        for (what, a) in [("RAFT", &addr.raft), ("HTTP", &addr.http), ("PG", &addr.pg)] {
            if a.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                return Err(ClusterError::Membership(format!("{what} address '{a}' is not HOST:PORT")));
            }
        }
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let configs = membership.get_joint_config();
        if configs.iter().all(|c| c.contains(&id)) {
            return Err(ClusterError::Membership(format!("node {id} is already a voting member of the cluster")));
        }
        if let Some((other, _)) = membership.nodes().find(|(n, a)| **n != id && a.raft == addr.raft) {
            return Err(ClusterError::Membership(format!("node {other} already has RAFT address {}", addr.raft)));
        }
        match membership.get_node(&id) {
            Some(known) if known != &addr => {
                return Err(ClusterError::Membership(format!(
                    "node {id} is already a member with other addresses (RAFT {}, HTTP {}, PG {}): remove it first",
                    known.raft, known.http, known.pg
                )));
            }
            _ => {}
        }
        // A change a leadership loss cut in half (a learner, or a joint configuration whose new
        // half has the node) goes on from where it is: the node already receives the log.
        if !configs.iter().any(|c| c.contains(&id)) {
            let added = self.raft.add_learner(id, addr.clone(), false).await.map_err(membership_error)?;
            let caught_up = self
                .raft
                .wait(Some(catch_up))
                .metrics(
                    |m| {
                        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
                        matched.is_some_and(|l| l.index >= added.log_id.index) || !m.state.is_leader()
                    },
                    "the new node caught up",
                )
                .await;
            if !self.raft.metrics().borrow().state.is_leader() {
                return Err(half_done(id, "added as a learner"));
            }
            if caught_up.is_err() {
                return Err(ClusterError::Membership(format!(
                    "node {id} has not caught up within {} s (is it running, with this cluster's secret, its RAFT \
                     address {} reachable from the leader?); it stays a learner receiving the log: run ALTER CLUSTER \
                     ADD NODE again once it runs, or ALTER CLUSTER REMOVE NODE {id}",
                    catch_up.as_secs(),
                    addr.raft
                )));
            }
        }
        let voters = std::collections::BTreeSet::from([id]);
        let leading = self.raft.metrics().borrow().state.is_leader();
        match self.raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.after_step(e, leading, id, "added as a learner")),
        }
    }

    /// Removes node `id` (a voter or a learner) from the membership. The node's process is not
    /// stopped: stop it after (a removed voter left running campaigns for leadership).
    pub async fn remove(&self, id: u64) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::Membership(format!("node {id} is not a member of the cluster")));
        }
        let ids = std::collections::BTreeSet::from([id]);
        let change = if membership.voter_ids().any(|v| v == id) {
            if membership.voter_ids().count() == 1 {
                return Err(ClusterError::Membership(format!("node {id} is the cluster's last voting member")));
            }
            openraft::ChangeMembers::RemoveVoters(ids)
        } else {
            openraft::ChangeMembers::RemoveNodes(ids)
        };
        let leading = self.raft.metrics().borrow().state.is_leader();
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.after_step(e, leading, id, "being removed")),
        }
    }

    /// The error of a `change_membership` call: when this node led as it began and lost
    /// leadership after its first step committed (the membership is now joint), not the
    /// retryable not-leader error (the leader would not run the statement from the start) but one
    /// saying the change is half done. On a follower, the not-leader error (forwarded over HTTP).
    fn after_step(
        &self,
        e: RaftError<u64, ClientWriteError<u64, NodeAddr>>,
        leading: bool,
        id: u64,
        state: &str,
    ) -> ClusterError {
        let joint = self.raft.metrics().borrow().membership_config.membership().get_joint_config().len() > 1;
        match membership_error(e) {
            ClusterError::Storage(StorageError::NotLeader { .. }) if leading && joint => half_done(id, state),
            other => other,
        }
    }
}

/// A membership change a leadership loss interrupted after a step of it committed.
fn half_done(id: u64, state: &str) -> ClusterError {
    ClusterError::Membership(format!(
        "leadership changed while node {id} was {state}: the change is half done; run the same ALTER CLUSTER \
         statement on the new leader to finish it (see system.cluster)"
    ))
}

/// A refused membership change: on a follower the not-leader error naming the leader (as a write
/// gets), else why.
fn membership_error(e: RaftError<u64, ClientWriteError<u64, NodeAddr>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => {
            ClusterError::Storage(not_leader(to.leader_id.zip(to.leader_node)))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ClusterError::Membership(e.to_string()),
        RaftError::Fatal(e) => ClusterError::Storage(StorageError::Replication(e.to_string())),
    }
}

/// Proposes the store's writes (see the module doc): the store's [`Replicator`].
struct Proposer {
    raft: Raft<TypeConfig>,
    /// The runtime the Raft node runs on: proposals are made there, the writer waits.
    runtime: tokio::runtime::Handle,
    /// The term in which this node writes as leader: set once its first write of the term
    /// waited for the store to apply the terms before; cleared when a write fails (see
    /// [`ChangeWatch::own_term`]).
    fenced_term: Arc<AtomicU64>,
    /// This node's id and when each peer last answered it (see [`QUORUM_LOST_AFTER`]).
    id: u64,
    answered: crate::network::Answered,
}

impl Proposer {
    /// Runs `f` on the node's runtime and waits for its result (the caller may be any thread
    /// that may block, not an async task).
    fn wait<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }
}

fn not_leader(leader: Option<(u64, NodeAddr)>) -> StorageError {
    StorageError::NotLeader {
        leader: leader.map(|(id, n)| format!("node {id} (PostgreSQL {}, HTTP {})", n.pg, n.http)),
    }
}

impl Replicator for Proposer {
    fn ready(&self) -> topicfusion_storage::Result<()> {
        // Never waits: a writer may hold engine locks that the fence's reload needs.
        let m = self.raft.metrics().borrow().clone();
        if m.state.is_leader() && self.fenced_term.load(Ordering::Acquire) == m.current_term {
            if !in_contact(self.id, m.membership_config.membership(), &self.answered) {
                return Err(StorageError::NotLeader {
                    leader: Some(format!(
                        "unknown: this node was elected in term {} but has had no answer from a majority of the \
                         voters for {} s (cut off from them?); nothing was written, retry on another node",
                        m.current_term,
                        QUORUM_LOST_AFTER.as_secs()
                    )),
                });
            }
            return Ok(());
        }
        if m.state.is_leader() {
            return Err(StorageError::NotLeader {
                leader: Some(format!(
                    "this node, once it has applied the previous leader's entries (retry), term {}",
                    m.current_term
                )),
            });
        }
        let leader = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).map(|addr| (id, addr.clone())));
        Err(not_leader(leader))
    }

    fn replicate(&self, command: Command) -> topicfusion_storage::Result<u64> {
        let command = command.encode();
        // A command every node would apply as nothing is refused here, before it is proposed.
        Command::decode(&command).map_err(|e| StorageError::Replication(format!("not a valid command: {e}")))?;
        if command.len() > MAX_COMMAND_BYTES {
            return Err(StorageError::Replication(format!(
                "a write of {} bytes, over the {} MiB one log entry may hold",
                command.len(),
                MAX_COMMAND_BYTES >> 20
            )));
        }
        let raft = self.raft.clone();
        let written = self.wait(async move { raft.client_write(command).await });
        if !matches!(written, Some(Ok(_))) {
            // Leadership may be lost: entries of this term that still commit are applied as
            // another node's (the memory of this node is reloaded for them).
            self.fenced_term.store(0, Ordering::Release);
        }
        match written {
            Some(Ok(written)) => match written.data {
                ApplyOutcome::Applied => Ok(written.log_id.index),
                // Retryable like a write sent to a follower: nothing was written.
                ApplyOutcome::Stale => Err(StorageError::NotLeader {
                    leader: Some(
                        "unknown: leadership changed while the write was proposed; nothing was written, retry".into(),
                    ),
                }),
                ApplyOutcome::Rejected => {
                    Err(StorageError::Replication(format!("entry {} applied as nothing", written.log_id)))
                }
            },
            Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to)))) => {
                Err(not_leader(to.leader_id.zip(to.leader_node)))
            }
            Some(Err(e)) => Err(StorageError::Replication(e.to_string())),
            None => Err(StorageError::Replication("the node stopped".into())),
        }
    }
}

impl Node {
    /// Starts the node: opens its log in `dir`, applies to `store`, answers peers on `listener`.
    /// The node with the lowest id of a cluster that never started initializes it with `peers`
    /// (unless `join`).
    pub async fn start(
        config: NodeConfig,
        dir: &Path,
        store: Arc<Store>,
        listener: TcpListener,
    ) -> Result<Self, ClusterError> {
        if config.secret.trim().is_empty() {
            return Err(ClusterError::Raft("the cluster secret is empty".into()));
        }
        let raft_config = openraft::Config {
            cluster_name: "topicfusion".into(),
            // openraft 0.9 lets a follower that heard its leader stand for election only after
            // the leader's lease (election_timeout_max) plus its own random election timeout,
            // and it grants no vote within the lease: with 400-800 ms a dead leader is replaced
            // 1.2-1.6 s after its last heartbeat (600-1200 ms made that 1.8-2.4 s), while a
            // live leader's heartbeats come five times per lease. openraft 0.9 also gives each
            // append RPC the heartbeat interval as its timeout (transfer, decode and the
            // follower's fsync): 150 ms, with at most 64 entries or 8 MiB per request.
            heartbeat_interval: 150,
            election_timeout_min: 400,
            election_timeout_max: 800,
            max_payload_entries: 64,
            install_snapshot_timeout: 30_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // Entries kept behind a snapshot for followers that lag a little (further behind,
            // they get the snapshot).
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1_000),
            snapshot_max_chunk_size: 4 << 20,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ClusterError::Raft(e.to_string()))?);
        let log_dir = dir.join("log");
        let mut log =
            LogStore::open(&log_dir).map_err(|e| ClusterError::Raft(format!("cannot open the Raft log: {e}")))?;
        let empty_log = log.get_log_state().await.map_err(|e| ClusterError::Raft(e.to_string()))?.last_log_id.is_none()
            && log.read_vote().await.map_err(|e| ClusterError::Raft(e.to_string()))?.is_none();
        if empty_log && store.last_applied().is_some() {
            return Err(ClusterError::Raft(format!(
                "the store holds replicated data but the Raft log in {} is empty: restore the log, or empty the data \
                 dir so that the node catches up from the cluster",
                log_dir.display()
            )));
        }
        let state_machine = {
            let store = Arc::clone(&store);
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || StateMachine::open(store, &dir))
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?
                .map_err(|e| ClusterError::Raft(format!("cannot open the state machine: {e}")))?
        };
        let log = log.purge_only_durable(state_machine.durable());
        // Before Raft starts: entries it applies again at start are reported too.
        let fenced_term = Arc::new(AtomicU64::new(0));
        let own_from = Arc::new(AtomicU64::new(u64::MAX));
        let reloads = Reloads::start(config.on_change.clone())?;
        let requested = reloads.clone();
        state_machine.watch_changes(ChangeWatch {
            node: config.id,
            own_term: Arc::clone(&fenced_term),
            own_from: Arc::clone(&own_from),
            changed: Arc::new(move || requested.request()),
        });
        let network = Network::new(&config.secret);
        let answered = network.answered();
        let raft = Raft::new(config.id, raft_config, network, log, state_machine.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let app = router(raft.clone(), &config.secret);
        let server = tokio::spawn(async move {
            // TCP_NODELAY, as the client side sets it: a small RPC answer never waits for an ACK.
            let listener = axum::serve::ListenerExt::tap_io(listener, |socket: &mut tokio::net::TcpStream| {
                let _ = socket.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the Raft listener stopped: {e}");
            }
        });
        let proposer = Proposer {
            raft: raft.clone(),
            runtime: tokio::runtime::Handle::current(),
            fenced_term: Arc::clone(&fenced_term),
            id: config.id,
            answered: Arc::clone(&answered),
        };
        tokio::spawn(fence(raft.clone(), Arc::clone(&fenced_term), own_from, reloads.clone()));
        // What the store holds now may be more than what the engine loaded (entries applied
        // again from the log at start, a kept snapshot installed).
        reloads.request();
        state_machine.store().replicate_through(Arc::new(proposer))?;
        let node = Self { id: config.id, raft, state_machine, server, answered, fenced_term };
        if !config.join
            && config.peers.keys().next() == Some(&config.id)
            && !node.raft.is_initialized().await.map_err(|e| ClusterError::Raft(e.to_string()))?
        {
            match node.raft.initialize(config.peers).await {
                // Another start got there first (the log is no longer empty): nothing to do.
                Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            }
        }
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this node takes writes now: it leads, and has applied and reloaded what the
    /// terms before left (see `fence`).
    pub fn is_writable(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state.is_leader() && self.fenced_term.load(Ordering::Acquire) == m.current_term
    }

    /// Changes the cluster's membership (`ALTER CLUSTER`).
    pub fn members(&self) -> Members {
        Members { raft: self.raft.clone() }
    }

    /// Reports the cluster as this node sees it (`system.cluster`).
    pub fn status(&self) -> StatusView {
        StatusView { id: self.id, raft: self.raft.clone(), answered: Arc::clone(&self.answered) }
    }

    /// The Raft handle: metrics, membership changes, waits.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The store this node applies to.
    pub fn store(&self) -> &Arc<Store> {
        self.state_machine.store()
    }

    /// Writes `commit` through the store (see the module doc) on a blocking thread; returns the
    /// last entry applied once it is applied (its own, or a later one).
    pub async fn write(&self, commit: Commit) -> Result<LogId<u64>, StorageError> {
        let store = Arc::clone(self.store());
        tokio::task::spawn_blocking(move || {
            store.commit(commit)?;
            let applied = store.last_applied().ok_or(StorageError::Replication("nothing applied".into()))?;
            Ok(LogId::new(openraft::CommittedLeaderId::new(applied.term, applied.node), applied.index))
        })
        .await
        .map_err(|e| StorageError::Replication(format!("the write task ended: {e}")))?
    }

    /// Waits up to `timeout` until this node knows a leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(metrics.current_leader.expect("waited for a leader"))
    }

    /// Stops the node: Raft first (no more applies), then the listener.
    pub async fn shutdown(self) {
        let _ = self.raft.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
    }
}

#[cfg(test)]
mod tests {
    use topicfusion_storage::{ChangeOp, Durability, NewMessage, PartitionOp, WriteBatch};

    use super::*;

    const SECRET: &str = "test-secret";
    const WAIT: Duration = Duration::from_secs(20);

    struct Dirs {
        store: tempfile::TempDir,
        raft: tempfile::TempDir,
    }

    fn dirs() -> Dirs {
        Dirs { store: tempfile::tempdir().unwrap(), raft: tempfile::tempdir().unwrap() }
    }

    async fn start(id: u64, peers: &BTreeMap<u64, NodeAddr>, dirs: &Dirs, listener: TcpListener) -> Node {
        let store = Arc::new(Store::open(dirs.store.path(), Durability::Process).unwrap());
        let config = NodeConfig {
            id,
            peers: peers.clone(),
            secret: SECRET.into(),
            snapshot_every: 100_000,
            on_change: None,
            join: false,
        };
        Node::start(config, dirs.raft.path(), store, listener).await.unwrap()
    }

    fn addr(listener: &TcpListener) -> NodeAddr {
        let raft = listener.local_addr().unwrap().to_string();
        NodeAddr { raft, http: "127.0.0.1:1".into(), pg: "127.0.0.1:2".into() }
    }

    fn message(partition: u32, payload: String) -> Commit {
        let m = NewMessage {
            topic_id: 1,
            partition,
            op: ChangeOp::Insert,
            source_table: "s.t".into(),
            key: "{}".into(),
            payload,
        };
        let mut batch = WriteBatch::default();
        batch.put(format!("\x02row-{}", m.payload), b"v");
        Commit { batch, messages: vec![m].into(), ..Default::default() }
    }

    /// Waits until `node` has applied entry `index`.
    async fn applied(node: &Node, index: u64) {
        node.raft.wait(Some(WAIT)).applied_index_at_least(Some(index), "caught up").await.unwrap();
    }

    /// The leader the live `nodes` agree on, once they do (and not the dead node `dead`).
    async fn leader_of(nodes: &[Node], dead: Option<u64>) -> &Node {
        let m = nodes[0]
            .raft
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some() && m.current_leader != dead, "a live leader")
            .await
            .unwrap();
        let id = m.current_leader.unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while !nodes.iter().any(|n| n.id == id && n.is_writable()) {
            assert!(std::time::Instant::now() < deadline, "node {id} leads but never takes writes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for n in nodes {
            n.raft.wait(Some(WAIT)).metrics(|m| m.current_leader == Some(id), "the same leader").await.unwrap();
        }
        nodes.iter().find(|n| n.id == id).expect("the leader is one of the live nodes")
    }

    /// A node does not start with an empty secret (its RPCs would be refused without a word),
    /// nor on a store that applied replicated entries beside an empty Raft log (it would
    /// initialize a new cluster over old data).
    #[tokio::test]
    async fn a_node_refuses_an_empty_secret_and_a_store_whose_log_is_gone() {
        let d = dirs();
        let store = Arc::new(Store::open(d.store.path(), Durability::Process).unwrap());
        let refusal = |started: Result<Node, ClusterError>| match started {
            Ok(_) => panic!("the node started"),
            Err(e) => e.to_string(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers = BTreeMap::from([(1, addr(&listener))]);
        let config = NodeConfig {
            id: 1,
            peers: peers.clone(),
            secret: " ".into(),
            snapshot_every: 100,
            on_change: None,
            join: false,
        };
        let refused = refusal(Node::start(config, d.raft.path(), Arc::clone(&store), listener).await);
        assert!(refused.contains("secret is empty"), "{refused}");

        let applied = store
            .apply(topicfusion_storage::AppliedId { index: 1, term: 1, node: 1 }, topicfusion_storage::Payload::Blank);
        assert!(matches!(applied, Ok(topicfusion_storage::Applied::Written(_))));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config =
            NodeConfig { id: 1, peers, secret: SECRET.into(), snapshot_every: 100, on_change: None, join: false };
        let refused = refusal(Node::start(config, d.raft.path(), store, listener).await);
        assert!(refused.contains("Raft log") && refused.contains("is empty"), "{refused}");
    }

    /// A leader whose followers are gone refuses writes at once after [`QUORUM_LOST_AFTER`]
    /// (instead of letting them wait for a majority that may never come back), and says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_without_a_majority_refuses_writes() {
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: BTreeMap<u64, NodeAddr> = (1..=3).map(|i| (i, addr(&listeners[i as usize - 1]))).collect();
        let all_dirs: Vec<Dirs> = (0..3).map(|_| dirs()).collect();
        let mut nodes = Vec::new();
        for (i, (d, l)) in all_dirs.iter().zip(listeners).enumerate() {
            nodes.push(start(i as u64 + 1, &peers, d, l).await);
        }
        let leader_id = leader_of(&nodes, None).await.id;
        let create =
            Commit { partition_ops: vec![PartitionOp::Create { topic_id: 1, partition: 0 }], ..Default::default() };
        nodes.iter().find(|n| n.id == leader_id).unwrap().write(create).await.unwrap();
        let leader = nodes.iter().position(|n| n.id == leader_id).unwrap();
        assert!(!nodes[leader].status().quorum_lost());
        let leader = nodes.remove(leader);
        for n in nodes {
            n.shutdown().await;
        }
        let deadline = std::time::Instant::now() + WAIT;
        while !leader.status().quorum_lost() {
            assert!(std::time::Instant::now() < deadline, "the leader never noticed it is alone");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(5), leader.write(message(0, "alone".into())))
            .await
            .expect("refused at once, not left waiting");
        match refused {
            Err(StorageError::NotLeader { leader: Some(why) }) => {
                assert!(why.contains("no answer from a majority of the voters"), "{why}")
            }
            other => panic!("a write without a majority: {other:?}"),
        }
        leader.shutdown().await;
    }

    /// A node started to `join` never forms a cluster, even as the lowest id of its peers; one
    /// that may, does.
    #[tokio::test]
    async fn a_joining_node_waits_to_be_added() {
        for join in [true, false] {
            let d = dirs();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peers = BTreeMap::from([(1, addr(&listener))]);
            let store = Arc::new(Store::open(d.store.path(), Durability::Process).unwrap());
            let config = NodeConfig { id: 1, peers, secret: SECRET.into(), snapshot_every: 100, on_change: None, join };
            let node = Node::start(config, d.raft.path(), store, listener).await.unwrap();
            assert_eq!(node.raft.is_initialized().await.unwrap(), !join);
            node.shutdown().await;
        }
    }

    /// Three nodes on loopback: the writes of the leader reach every node byte for byte; a
    /// follower refuses writes and names the leader; the leader stopped, the two others elect
    /// one and go on with gap-free offsets; the stopped node restarted on its data catches up
    /// from the log; a node added after the log was purged catches up
    /// from a snapshot and becomes a voter, then is removed; an RPC without the secret is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_replicate_fail_over_and_rebuild_a_node_from_a_snapshot() {
        let mut listeners = Vec::new();
        for _ in 0..4 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: BTreeMap<u64, NodeAddr> = (1..=3).map(|i| (i, addr(&listeners[i as usize - 1]))).collect();
        let fourth = addr(&listeners[3]);
        let all_dirs: Vec<Dirs> = (0..4).map(|_| dirs()).collect();
        let mut listeners = listeners.into_iter();
        let mut nodes = Vec::new();
        for (i, d) in all_dirs.iter().take(3).enumerate() {
            nodes.push(start(i as u64 + 1, &peers, d, listeners.next().unwrap()).await);
        }

        let leader = leader_of(&nodes, None).await;
        let create = Commit {
            partition_ops: vec![
                PartitionOp::Create { topic_id: 1, partition: 0 },
                PartitionOp::Create { topic_id: 1, partition: 1 },
            ],
            ..Default::default()
        };
        leader.write(create).await.unwrap();
        let mut last = LogId::default();
        for i in 0..20 {
            last = leader.write(message(i % 2, format!("a{i}"))).await.unwrap();
        }
        for n in &nodes {
            applied(n, last.index).await;
        }
        let exports: Vec<Vec<u8>> = nodes.iter().map(|n| n.store().export().unwrap().bytes).collect();
        assert!(exports.iter().all(|e| e == &exports[0]), "every node holds the same bytes");
        for n in &nodes {
            assert_eq!(n.store().partition_state(1, 0).unwrap().next_offset, 10);
        }

        let seen = leader.status().nodes();
        assert_eq!(seen.iter().map(|n| (n.node_id, n.role)).collect::<Vec<_>>(), {
            let mut want: Vec<_> = (1..=3).map(|i| (i, if i == leader.id { "leader" } else { "follower" })).collect();
            want.sort();
            want
        });
        assert!(seen.iter().all(|n| n.last_log_index >= Some(last.index) && n.addr == peers[&n.node_id]));
        let follower = nodes.iter().find(|n| n.id != leader.id).unwrap();
        let from_follower = follower.status().nodes();
        let me = from_follower.iter().find(|n| n.node_id == follower.id).unwrap();
        assert_eq!((me.role, me.last_applied_index), ("follower", Some(last.index)));
        assert_eq!(from_follower.iter().find(|n| n.node_id == leader.id).unwrap().role, "leader");
        match follower.write(message(0, "refused".into())).await {
            Err(e @ StorageError::NotLeader { .. }) => {
                let said = e.to_string();
                let leader_addr = &peers[&leader.id];
                assert!(said.contains(&format!("node {}", leader.id)), "{said}");
                assert!(said.contains(&leader_addr.pg) && said.contains(&leader_addr.http), "{said}");
            }
            other => panic!("a follower wrote: {other:?}"),
        }
        // A follower's store refuses writes through any path.
        let direct = tokio::task::block_in_place(|| follower.store().commit(message(0, "also refused".into())));
        assert!(matches!(direct, Err(StorageError::NotLeader { .. })));

        // Without the secret, or with another one: refused before the body is read.
        let client = reqwest::Client::new();
        for auth in [None, Some("Bearer wrong"), Some("Bearer test-secreT")] {
            let mut request = client.post(format!("http://{}/raft/vote", peers[&1].raft)).body("{}");
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            assert_eq!(request.send().await.unwrap().status(), reqwest::StatusCode::UNAUTHORIZED);
        }
        let garbage = client
            .post(format!("http://{}/raft/append", peers[&1].raft))
            .bearer_auth(SECRET)
            .body(vec![0xff, 0xff, 0xff, 0xff, 1])
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), reqwest::StatusCode::BAD_REQUEST);

        // The leader dies; the two others elect one and go on from the same offsets.
        let leader_id = leader.id;
        let position = nodes.iter().position(|n| n.id == leader_id).unwrap();
        nodes.remove(position).shutdown().await;
        let leader = leader_of(&nodes, Some(leader_id)).await;
        // The new leader reports the dead one unreachable once it has not answered for 3 s.
        let deadline = std::time::Instant::now() + WAIT;
        while leader.status().nodes().iter().find(|n| n.node_id == leader_id).unwrap().role != "unreachable" {
            assert!(std::time::Instant::now() < deadline, "the dead node is never reported unreachable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..6 {
            last = leader.write(message(0, format!("b{i}"))).await.unwrap();
        }
        for n in &nodes {
            applied(n, last.index).await;
            assert_eq!(n.store().partition_state(1, 0).unwrap().next_offset, 16);
            let offsets: Vec<u64> =
                n.store().read_messages(1, 0, 0, u64::MAX, 100).unwrap().iter().map(|m| m.offset).collect();
            assert_eq!(offsets, (0..16).collect::<Vec<_>>());
        }

        // The dead node restarts on its data and catches up from the log.
        let dead_dirs = &all_dirs[leader_id as usize - 1];
        let mut listener = TcpListener::bind(&peers[&leader_id].raft).await;
        for _ in 0..50 {
            if listener.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            listener = TcpListener::bind(&peers[&leader_id].raft).await;
        }
        let restarted = start(leader_id, &peers, dead_dirs, listener.unwrap()).await;
        applied(&restarted, last.index).await;
        assert_eq!(restarted.store().partition_state(1, 0).unwrap().next_offset, 16);
        nodes.push(restarted);
        let leader = leader_of(&nodes, None).await;

        // The log purged to its end: a new node can only catch up from a snapshot.
        leader.raft.trigger().snapshot().await.unwrap();
        let waits = leader.raft.wait(Some(WAIT));
        waits.metrics(|m| m.snapshot >= Some(last), "a snapshot at the last entry").await.unwrap();
        leader.raft.trigger().purge_log(last.index).await.unwrap();
        waits.metrics(|m| m.purged >= Some(last), "purged").await.unwrap();
        let new = start(4, &BTreeMap::new(), &all_dirs[3], listeners.next().unwrap()).await;
        // ALTER CLUSTER ADD NODE: on a follower refused naming the leader; on the leader the
        // node joins as a learner, catches up, then votes.
        let follower = nodes.iter().find(|n| n.id != leader.id).unwrap();
        let refused = follower.members().add(4, fourth.clone(), WAIT).await.unwrap_err();
        assert!(matches!(refused, ClusterError::Storage(StorageError::NotLeader { leader: Some(_) })), "{refused}");
        let bad = NodeAddr { raft: "nowhere".into(), ..fourth.clone() };
        let refused = leader.members().add(4, bad, WAIT).await.unwrap_err().to_string();
        assert_eq!(refused, "RAFT address 'nowhere' is not HOST:PORT");
        leader.members().add(4, fourth.clone(), WAIT).await.unwrap();
        let voters =
            |n: &Node| n.raft.metrics().borrow().membership_config.membership().voter_ids().collect::<Vec<_>>();
        assert_eq!(voters(leader), [1, 2, 3, 4]);
        // The store's own applied id (openraft's metrics may not show the last apply yet).
        let membership_applied = leader.store().last_applied().unwrap();
        applied(&new, membership_applied.index).await;
        assert!(new.store().export().unwrap().bytes == leader.store().export().unwrap().bytes, "the same bytes");
        assert!(new.raft.metrics().borrow().snapshot.is_some(), "caught up from a snapshot, not the log");
        let refused = leader.members().add(4, fourth, WAIT).await.unwrap_err().to_string();
        assert_eq!(refused, "node 4 is already a voting member of the cluster");
        // And it follows the entries after it.
        last = leader.write(message(1, "after the snapshot".into())).await.unwrap();
        applied(&new, last.index).await;
        assert_eq!(new.store().partition_state(1, 1).unwrap().next_offset, 11);
        // ALTER CLUSTER REMOVE NODE: an unknown node refused; a voter removed, the others go on.
        let refused = leader.members().remove(9).await.unwrap_err().to_string();
        assert_eq!(refused, "node 9 is not a member of the cluster");
        leader.members().remove(4).await.unwrap();
        assert_eq!(voters(leader), [1, 2, 3]);
        assert!(leader.status().nodes().iter().all(|n| n.node_id != 4));
        last = leader.write(message(1, "after the removal".into())).await.unwrap();
        for n in &nodes {
            applied(n, last.index).await;
        }

        new.shutdown().await;
        for n in nodes {
            n.shutdown().await;
        }
    }
}
