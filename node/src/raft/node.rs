//! A running Raft member: starting it, bootstrapping the cluster, proposing commands (the leader
//! stamps the time; followers forward to the leader) and linearizable reads (ReadIndex).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto::raft::v1 as pb;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::raft::ReadPolicy;
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::batcher::Batcher;
use super::network::{self, NetworkFactory, Peers};
use super::types::{Raft, RaftNodeId, TypeConfig};
use crate::metrics;
use crate::state::{Command, LogEntry, Response};
use crate::storage::{LogStore, Replica, StateMachineStore};

/// Raft timing. Failover takes roughly one election timeout after the leader's last heartbeat.
#[derive(Clone, Debug)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub log_kept_behind_snapshot: u64,
    /// Commands the leader groups into one entry at most (`batcher`); 1 turns grouping off.
    pub commands_per_entry_max: usize,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 75,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: 20_000,
            log_kept_behind_snapshot: 2_000,
            commands_per_entry_max: 1_024,
        }
    }
}

/// Why a proposal or read did not go through. Says whether the command may have been applied.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    /// Certainly not applied: no leader is known (election under way, or no quorum).
    #[error("no leader is available: {0}")]
    NoLeader(String),
    /// May or may not have been applied: the leader was lost mid-request.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// Certainly not applied: this node is not the leader (internal, for forwarding).
    #[error("node is not the leader")]
    NotLeader { leader: Option<RaftNodeId> },
    /// The Raft core or storage failed; the node cannot serve.
    #[error("raft failed: {0}")]
    Fatal(String),
    /// Certainly not applied: the node (or the leader it forwards to) has
    /// `limits::PROPOSALS_IN_FLIGHT_MAX` proposals in flight. Retry with backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// What a committed proposal returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    pub index: u64,
    pub response: Response,
}

pub struct RaftNode {
    pub id: RaftNodeId,
    pub raft: Raft,
    pub replica: Arc<Replica>,
    pub peers: Peers,
    /// Counted limits: proposals, agent sessions, watches.
    pub admission: crate::limits::Admission,
    /// `--max-commands-per-entry`: a client's batch larger than this is refused, and at 1 (no
    /// `Batch` entries, for a rolling upgrade) every batch is.
    pub commands_per_entry_max: usize,
    batcher: Batcher,
    tasks: Vec<JoinHandle<()>>,
}

/// How long a proposal waits for a leader (election, forwarding retries) before giving up.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(10);

impl RaftNode {
    /// Opens storage under `data_dir` and starts the Raft member.
    pub async fn start(
        id: RaftNodeId,
        data_dir: &Path,
        timing: &RaftTiming,
        peer_dial: BTreeMap<String, String>,
        tls: Option<std::sync::Arc<baton_security::TlsSettings>>,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let log_store = LogStore::open(&data_dir.join("raft"))?;
        let log_opened_ms = started.elapsed().as_millis() as u64;
        let state_machine = StateMachineStore::open(&data_dir.join("snapshots"))?;
        let replica = state_machine.replica();
        let storage_opened = Instant::now();
        let config = openraft::Config {
            cluster_name: "baton".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_timeout_min_ms,
            election_timeout_max: timing.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every_entries),
            max_in_snapshot_log_to_keep: timing.log_kept_behind_snapshot,
            purge_batch_size: 256,
            max_payload_entries: crate::limits::RAFT_ENTRIES_PER_APPEND_MAX as u64,
            install_snapshot_timeout: 2_000,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("invalid raft timing: {e}"))?;
        let peers = Peers::new(peer_dial, tls);
        let raft = Raft::new(
            id,
            Arc::new(config),
            NetworkFactory {
                peers: peers.clone(),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| format!("raft did not start: {e}"))?;
        // Where a restart's time goes: the log store, the snapshot (logged by the store), and
        // openraft re-applying the committed log after the snapshot.
        tracing::info!(
            log_open_ms = log_opened_ms,
            snapshot_load_ms = (storage_opened - started).as_millis() as u64 - log_opened_ms,
            log_replay_ms = storage_opened.elapsed().as_millis() as u64,
            applied = replica.last_applied_index(),
            "storage opened"
        );
        let leadership = raft.metrics();
        replica.set_leader_term(Box::new(move || {
            let m = leadership.borrow_watched();
            (m.state == ServerState::Leader).then_some(m.current_term)
        }));
        let (batcher, batcher_task) = Batcher::start(raft.clone(), timing.commands_per_entry_max);
        let mut node = Self {
            id,
            raft,
            replica,
            peers,
            admission: crate::limits::Admission::default(),
            commands_per_entry_max: timing.commands_per_entry_max,
            batcher,
            tasks: vec![batcher_task],
        };
        node.tasks
            .push(tokio::spawn(watch_metrics(node.raft.clone())));
        Ok(node)
    }

    /// Forms a new cluster from `members` if this node has never been part of one. Only the
    /// lowest id initializes, so two nodes never race to write different first entries; the others
    /// learn the membership from it. A node with any log or vote skips this: it rejoins.
    pub async fn bootstrap(&self, members: &BTreeMap<RaftNodeId, String>) -> Result<(), String> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| format!("raft failed: {e}"))?;
        if initialized {
            tracing::info!(node = self.id, "existing raft state found: rejoining");
            return Ok(());
        }
        if members.keys().next() != Some(&self.id) {
            tracing::info!(
                node = self.id,
                "waiting for the lowest-id member to form the cluster"
            );
            return Ok(());
        }
        let nodes: BTreeMap<_, _> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => tracing::info!(
                node = self.id,
                members = members.len(),
                "cluster initialized"
            ),
            Err(err) => {
                // Already initialized by an earlier run that crashed before this check.
                tracing::info!(node = self.id, error = %err, "initialize skipped");
            }
        }
        Ok(())
    }

    /// A client's proposal: [`RaftNode::propose`] if this node has room for one more in flight,
    /// else [`NodeError::Overloaded`] at once (nothing proposed).
    pub async fn propose_client(&self, command: Command) -> Result<Proposed, NodeError> {
        let _permit = self
            .admission
            .proposals(command.count())
            .ok_or_else(overloaded)?;
        self.propose(command).await
    }

    /// Proposes `commands` in one entry (admitted as that many client proposals), so they
    /// commit together or not at all; returns the entry's index and one response per command,
    /// in order.
    pub async fn propose_client_batch(
        &self,
        commands: Vec<Command>,
    ) -> Result<(u64, Vec<Response>), NodeError> {
        let count = commands.len();
        let proposed = self.propose_client(Command::Batch(commands)).await?;
        match proposed.response {
            Response::Batch(responses) if responses.len() == count => {
                Ok((proposed.index, responses))
            }
            other => Err(NodeError::Fatal(format!(
                "a batch of {count} applied as {other:?}"
            ))),
        }
    }

    /// Proposes `command` through the leader and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<Proposed, NodeError> {
        let deadline = Instant::now() + PROPOSE_PATIENCE;
        loop {
            let leader = self.raft.current_leader().await;
            let result = match leader {
                Some(leader) if leader == self.id => self.propose_local(command.clone()).await,
                Some(leader) => self.forward(leader, &command).await,
                None => Err(NodeError::NoLeader("election in progress".into())),
            };
            match result {
                // Certainly not applied: safe to try again after the leadership settles.
                Err(NodeError::NotLeader { .. } | NodeError::NoLeader(_))
                    if Instant::now() < deadline =>
                {
                    self.wait_for_leader_change(leader).await;
                }
                Err(NodeError::NotLeader { .. }) => {
                    return Err(NodeError::NoLeader("leadership kept moving".into()));
                }
                other => return other,
            }
        }
    }

    /// Proposes on this node, which must be the leader: queued for the next entry the leader
    /// writes, with whatever other commands are waiting (see `batcher`).
    pub async fn propose_local(&self, command: Command) -> Result<Proposed, NodeError> {
        self.batcher.propose(command).await
    }

    async fn forward(&self, leader: RaftNodeId, command: &Command) -> Result<Proposed, NodeError> {
        let mut client = self.leader_client(leader)?;
        match client.propose(network::encode(command)).await {
            Ok(reply) => network::decode(&reply.into_inner())
                .map_err(|e| NodeError::Unknown(format!("undecodable reply from leader: {e}"))),
            Err(status) => Err(status_to_error(status)),
        }
    }

    fn leader_client(
        &self,
        leader: RaftNodeId,
    ) -> Result<
        baton_proto::raft::v1::raft_service_client::RaftServiceClient<tonic::transport::Channel>,
        NodeError,
    > {
        let addr = self
            .member_addr(leader)
            .ok_or_else(|| NodeError::NoLeader(format!("leader {leader} has no known address")))?;
        self.peers
            .client(&addr)
            .map_err(|e| NodeError::NoLeader(format!("leader {leader} at {addr}: {e}")))
    }

    /// Waits until this node has applied everything committed when the call began (ReadIndex),
    /// so a read that follows sees every write acknowledged before it.
    pub async fn linearize(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + PROPOSE_PATIENCE;
        loop {
            let leader = self.raft.current_leader().await;
            let result = match leader {
                Some(leader) if leader == self.id => self.read_index_local().await.map(|_| ()),
                Some(leader) => self.read_index_remote(leader).await,
                None => Err(NodeError::NoLeader("election in progress".into())),
            };
            match result {
                Err(NodeError::NotLeader { .. } | NodeError::NoLeader(_))
                    if Instant::now() < deadline =>
                {
                    self.wait_for_leader_change(leader).await;
                }
                // A read changes nothing, so an unknown outcome is just a failure to read.
                Err(NodeError::Unknown(e)) => return Err(NodeError::NoLeader(e)),
                other => return other,
            }
        }
    }

    /// On the leader: confirms leadership with a quorum and waits for its own apply. Returns the
    /// read index.
    pub async fn read_index_local(&self) -> Result<u64, NodeError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(read.index()),
            Err(err) => match err.forward_to_leader() {
                Some(f) => Err(NodeError::NotLeader {
                    leader: f.leader_id,
                }),
                None if err.fatal().is_some() => Err(NodeError::Fatal(err.to_string())),
                None => Err(NodeError::NoLeader(err.to_string())),
            },
        }
    }

    async fn read_index_remote(&self, leader: RaftNodeId) -> Result<(), NodeError> {
        let mut client = self.leader_client(leader)?;
        let index = client
            .read_index(pb::ReadIndexRequest {})
            .await
            .map_err(status_to_error)?
            .into_inner()
            .index;
        self.raft
            .wait(Some(PROPOSE_PATIENCE))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|e| {
                NodeError::NoLeader(format!("not caught up to read index {index}: {e}"))
            })?;
        Ok(())
    }

    /// The address of a member, from the applied membership.
    pub fn member_addr(&self, id: RaftNodeId) -> Option<String> {
        self.replica.read(|a| {
            a.membership
                .membership()
                .get_node(&id)
                .map(|node| node.addr.clone())
        })
    }

    async fn wait_for_leader_change(&self, old: Option<RaftNodeId>) {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                {
                    let m = metrics.borrow_watched();
                    if m.current_leader.is_some() && m.current_leader != old {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        // Also retry the same leader after a pause: it may have been briefly unable to serve.
        let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
    }

    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "raft shutdown");
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Whether this node is the leader and a quorum acknowledged it recently enough that no
    /// other leader can have been elected since: followers wait at least the minimum election
    /// timeout after the last heartbeat they acknowledged before they campaign, and openraft's
    /// `last_quorum_acked` is the *send* time of that heartbeat. A deposed leader that has not
    /// noticed yet (partitioned away, paused) answers false here, so it never tells an agent
    /// that a lease was renewed after a new leader may already be counting it down.
    pub fn leadership_confirmed(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader {
            return false;
        }
        // A single voter is its own quorum: no other leader can exist.
        let mut voters = m.membership_config.membership().voter_ids();
        if voters.next() == Some(self.id) && voters.next().is_none() {
            return true;
        }
        self.within_election_timeout(m.last_quorum_acked.map(|acked| acked.into_inner()))
    }

    /// Whether `sent` (the send time of an acknowledged heartbeat) is younger than the minimum
    /// election timeout.
    fn within_election_timeout(
        &self,
        sent: Option<openraft::alias::InstantOf<TypeConfig>>,
    ) -> bool {
        let window = Duration::from_millis(self.raft.config().election_timeout_min);
        sent.is_some_and(|at| openraft::Instant::elapsed(&at) < window)
    }

    /// On the leader: the other voters that acknowledged a heartbeat within the last minimum
    /// election timeout, so are up and reachable now. Empty on a follower.
    pub fn voters_answering(&self) -> Vec<RaftNodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader {
            return Vec::new();
        }
        let answered = |id: RaftNodeId| {
            self.within_election_timeout(
                m.heartbeat
                    .as_ref()
                    .and_then(|acked| acked.get(&id).copied().flatten())
                    .map(|at| at.into_inner()),
            )
        };
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|&id| id != self.id && answered(id))
            .collect()
    }

    /// Resolves once this node is no longer the leader (or its Raft core stopped).
    pub async fn leadership_lost(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_watched().state != ServerState::Leader {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Maps a status from the leader's internal RPC: whether the command may have been applied.
/// The refusal of a proposal past `PROPOSALS_IN_FLIGHT_MAX`.
pub fn overloaded() -> NodeError {
    NodeError::Overloaded(format!(
        "{} proposals in flight on this node; retry with backoff",
        crate::limits::PROPOSALS_IN_FLIGHT_MAX
    ))
}

fn status_to_error(status: tonic::Status) -> NodeError {
    match status.code() {
        // The leader refused before proposing: it is saturated.
        tonic::Code::ResourceExhausted => NodeError::Overloaded(status.message().to_owned()),
        // The leader refused before proposing (it is no longer the leader, or has no quorum).
        tonic::Code::FailedPrecondition => NodeError::NotLeader { leader: None },
        // Refused before the request left: the leader is down or restarting.
        tonic::Code::Unavailable if is_connect_error(&status) => {
            NodeError::NoLeader(status.message().to_owned())
        }
        // Anything else (a reset mid-call, a timeout) may have happened after the proposal.
        _ => NodeError::Unknown(format!("{}: {}", status.code(), status.message())),
    }
}

fn is_connect_error(status: &tonic::Status) -> bool {
    status.message().contains("connect")
}

/// Writes one entry holding `command` through Raft, stamped with this node's clock, and waits
/// until it is applied here. Only the batcher calls it, so every write on the leader is batched.
pub(super) async fn write_entry(raft: &Raft, command: Command) -> Result<Proposed, NodeError> {
    let entry = LogEntry {
        time_ms: wall_clock_ms(),
        command,
    };
    match raft.client_write(entry).await {
        Ok(written) => Ok(Proposed {
            index: written.log_id.index,
            response: written.data,
        }),
        // This node is shutting down: the entry may or may not have been replicated.
        Err(err) if matches!(err.fatal(), Some(openraft::error::Fatal::Stopped)) => Err(
            NodeError::Unknown("the node stopped while the command was in flight".into()),
        ),
        Err(err) => match err.into_api_error() {
            Some(ClientWriteError::ForwardToLeader(f)) => Err(NodeError::NotLeader {
                leader: f.leader_id,
            }),
            Some(ClientWriteError::LogEntryDiscarded(_)) => Err(NodeError::Unknown(
                "leadership changed before the entry was committed".into(),
            )),
            Some(other) => Err(NodeError::Fatal(other.to_string())),
            None => Err(NodeError::Fatal("raft stopped".into())),
        },
    }
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Mirrors openraft's metrics into Prometheus gauges and logs leader changes.
async fn watch_metrics(raft: Raft) {
    let mut rx = raft.metrics();
    let mut last_seen = None;
    let mut last_leader = None;
    let mut followers_reported = std::collections::BTreeSet::new();
    loop {
        {
            let m = rx.borrow_watched();
            if m.current_leader != last_seen {
                tracing::info!(node = m.id, leader = ?m.current_leader, term = m.current_term, "leader changed");
                last_seen = m.current_leader;
            }
            // A new leader, not the gap of an election: losing one and finding the next is one
            // change.
            let new_leader = m.current_leader.is_some() && m.current_leader != last_leader;
            if m.current_leader.is_some() {
                last_leader = m.current_leader;
            }
            metrics::raft(&m, new_leader);
            metrics::replication_lag(&m, &mut followers_reported);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
