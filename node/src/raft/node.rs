//! A running Raft member: starting it, bootstrapping the cluster, proposing commands (the leader
//! stamps the time; followers forward to the leader) and linearizable reads (ReadIndex).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::raft::v1 as pb;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::raft::ReadPolicy;
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::batcher::Batcher;
use super::clock::LeaderClock;
use super::network::{self, NetworkFactory, Peers};
use super::types::{Raft, RaftNodeId, TypeConfig};
use crate::metrics;
use crate::state::{Command, LogEntry, NodeId, Response};
use crate::storage::disk::DiskWatcher;
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
    /// Certainly not applied: the leader's data disk is below its reserve, and the command would
    /// add workflows (see [`RaftNode::propose_local`]). The message names the node, the disk, its
    /// free space and the reserve. Retry once space is freed, or leadership moved to a node with
    /// room.
    #[error("{0}")]
    DiskLow(String),
}

/// Metadata key of a leader's RESOURCE_EXHAUSTED answer to a forwarded proposal saying why it
/// refused, so the follower passes the same refusal on (a [`NodeError::DiskLow`] stays one).
pub const REFUSAL_METADATA: &str = "baton-refusal";
/// [`REFUSAL_METADATA`]'s value for [`NodeError::DiskLow`].
pub const REFUSAL_DISK_LOW: &str = "disk-low";

/// What a committed proposal returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    pub index: u64,
    pub response: Response,
}

pub struct RaftNode {
    pub id: RaftNodeId,
    /// This node's data-folder incarnation (`storage::identity`).
    pub incarnation: String,
    pub raft: Raft,
    pub replica: Arc<Replica>,
    pub peers: Peers,
    /// Counted limits: proposals, agent sessions, watches.
    pub admission: crate::limits::Admission,
    /// The data disk's free space against `--disk-reserve-mb` (see `storage::disk`).
    pub disk: Arc<DiskWatcher>,
    /// `--max-commands-per-entry`: a client's batch larger than this is refused, and at 1 (no
    /// `Batch` entries, for a rolling upgrade) every batch is.
    pub commands_per_entry_max: usize,
    batcher: Batcher,
    /// The time the leader stamps into entries (see `clock`); the scheduler's time too.
    pub clock: Arc<LeaderClock>,
    tasks: Vec<JoinHandle<()>>,
    /// Why this node cannot go on, once it cannot (see [`RaftNode::halted`]).
    halted: tokio::sync::watch::Sender<Option<String>>,
    /// Resolves once the Raft log's database is closed; awaited by [`RaftNode::shutdown`].
    log_closed: tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

/// How long a proposal waits for a leader (election, forwarding retries) before giving up.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(10);

impl RaftNode {
    /// Opens storage under `data_dir` and starts the Raft member, watching the free space of
    /// `data_dir`'s disk against `disk_reserve_bytes` (0: no reserve).
    pub async fn start(
        id: RaftNodeId,
        incarnation: String,
        data_dir: &Path,
        disk_reserve_bytes: u64,
        timing: &RaftTiming,
        peer_dial: BTreeMap<String, String>,
        tls: Option<std::sync::Arc<baton_security::TlsSettings>>,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let log_store = LogStore::open(&data_dir.join("raft"))?;
        let log_closed = Box::pin(log_store.closed());
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
            // Standard Raft: a restarted leader campaigns for a new term. openraft's default lets
            // it resume its old term at once, which a power cut makes unsafe: the leader's own
            // unsynced tail is lost while followers hold (and acknowledged) those entries, and
            // the resumed leader writes different entries under the same term and indexes. The
            // chaos suite's power cuts found two replicas with different entries at one log id.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("invalid raft timing: {e}"))?;
        let peers = Peers::new(
            network::Local {
                node_id: id,
                incarnation: incarnation.clone(),
                replica: replica.clone(),
            },
            peer_dial,
            tls,
        );
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
        let clock = LeaderClock::new(id, raft.clone(), peers.clone(), replica.clone());
        let (batcher, batcher_task) =
            Batcher::start(raft.clone(), clock.clone(), timing.commands_per_entry_max);
        let (disk, disk_task) = DiskWatcher::start(id, data_dir, disk_reserve_bytes);
        let mut node = Self {
            id,
            incarnation,
            raft,
            replica,
            peers,
            admission: crate::limits::Admission::default(),
            disk,
            commands_per_entry_max: timing.commands_per_entry_max,
            batcher,
            clock: clock.clone(),
            tasks: vec![
                batcher_task,
                tokio::spawn(clock.resync_while_leading()),
                disk_task,
            ],
            halted: tokio::sync::watch::channel(None).0,
            log_closed: tokio::sync::Mutex::new(Some(log_closed)),
        };
        node.tasks
            .push(tokio::spawn(watch_metrics(node.raft.clone())));
        node.tasks.push(tokio::spawn(halt_when_raft_fails(
            node.raft.clone(),
            node.halted.clone(),
            data_dir.to_owned(),
        )));
        node.tasks.push(tokio::spawn(bind_incarnations(
            id,
            node.incarnation.clone(),
            node.raft.clone(),
            node.peers.clone(),
            node.batcher.clone(),
        )));
        Ok(node)
    }

    /// Stops this node for good: `reason` becomes what [`RaftNode::halted`] returns (the first
    /// reason wins). For faults the node cannot serve through: its Raft core stopped on a storage
    /// error, or the cluster knows this node id by another data folder. `batond` then exits
    /// non-zero, naming the reason, so systemd or Kubernetes restarts it (or an operator reads
    /// why it must not be).
    pub fn halt(&self, reason: String) {
        set_halted(&self.halted, reason);
    }

    /// Resolves with the reason once this node has halted ([`RaftNode::halt`]): its Raft core
    /// stopped by itself (a storage error: a full disk, a failed fsync; a panic), or this node
    /// found it must not take part. A node that halted never reports live again.
    pub async fn halted(&self) -> String {
        let mut halted = self.halted.subscribe();
        loop {
            if let Some(reason) = halted.borrow_and_update().clone() {
                return reason;
            }
            if halted.changed().await.is_err() {
                // The sender lives in `self`, which outlives this borrow.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forms a new cluster from `members` (`--initial-cluster`) if this node has never been part
    /// of one, or finds out that it must not take part. Runs until it knows; call it in a task.
    ///
    /// A node with no Raft state at all is either a new member or a member whose data folder was
    /// lost (or is not its own). It asks the others ([`RaftNode::hello`]) before anything else:
    /// - a peer that belongs to a formed cluster in which this id is bound to another data
    ///   folder: this node must not vote or take entries under the id; `Err` names the recovery;
    /// - a peer of a formed cluster that does not list this id: a misconfiguration; `Err`;
    /// - a formed cluster that lists this id, not bound yet: a member that starts late; it waits
    ///   to hear from the leader;
    /// - nobody formed: only the lowest id initializes, and only once a majority of the members
    ///   (itself included) answered that they hold no cluster, so the lowest id never forms a
    ///   second cluster beside a live one (it cannot tell a new cluster from a lost folder alone).
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
        let lowest = members.keys().next() == Some(&self.id);
        let majority = members.len() / 2 + 1;
        let mut waiting_logged = false;
        loop {
            let answers = self.hello_all(members).await;
            match bootstrap_decision(self.id, &self.incarnation, &answers) {
                Err(reason) => return Err(reason),
                Ok(Some(why)) => {
                    tracing::info!(node = self.id, "{why}");
                    return Ok(());
                }
                Ok(None) if !lowest => {
                    tracing::info!(
                        node = self.id,
                        "waiting for the lowest-id member to form the cluster"
                    );
                    return Ok(());
                }
                Ok(None) if answers.len() + 1 >= majority => break,
                Ok(None) => {
                    if !waiting_logged {
                        tracing::info!(
                            node = self.id,
                            answered = answers.len() + 1,
                            needed = majority,
                            "waiting for a majority of --initial-cluster to answer before \
                             forming the cluster"
                        );
                        waiting_logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
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

    /// Asks every other member of `members` who it is ([`pb::HelloResponse`]), each with a
    /// deadline of a second; those that do not answer are left out.
    async fn hello_all(&self, members: &BTreeMap<RaftNodeId, String>) -> Vec<pb::HelloResponse> {
        let asks = members
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, addr)| self.peers.hello(addr, Duration::from_secs(1)));
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
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
    ///
    /// Every proposal the leader admits passes here (its clients', those followers forward, its
    /// own loops'), so this is where a low data disk refuses new workflows
    /// ([`NodeError::DiskLow`]) while everything that moves admitted work along still goes
    /// through. A follower does not check its own disk: it forwards, and the leader decides.
    pub async fn propose_local(&self, command: Command) -> Result<Proposed, NodeError> {
        if command.adds_workflows() && self.disk.is_low() {
            return Err(NodeError::DiskLow(self.disk.refusal()));
        }
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
        // openraft's workers hold log readers a little longer than its core: the data folder
        // is free for the next open (a restart in the same process) only once they are gone.
        if let Some(closed) = self.log_closed.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(10), closed)
                .await
                .is_err()
        {
            tracing::warn!("the raft log was still open 10 s after shutdown");
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

    /// While this node leads with its data disk low, hands leadership to a voter that answers
    /// and whose own disk is not low ([`successor`]), trying again every
    /// [`DISK_HANDOFF_RETRY`] while the disk stays low and the node leads. With no such voter it
    /// stays leader: reads, agents and admitted work go on, and `propose_local` goes on refusing
    /// new workflows. Runs until its task is aborted.
    pub async fn hand_off_while_disk_low(&self) {
        let mut every = tokio::time::interval(crate::storage::disk::CHECK_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Said once per spell of being stuck, not every few seconds.
        let mut staying_said = false;
        loop {
            every.tick().await;
            if !self.disk.is_low() || !self.is_leader() {
                staying_said = false;
                continue;
            }
            match self.hand_off_once().await {
                Ok(to) => {
                    tracing::info!(node = self.id, to, "data disk low: leadership handed over");
                    staying_said = false;
                }
                Err(why) if !staying_said => {
                    tracing::warn!(
                        node = self.id,
                        reason = %why,
                        "data disk low: staying leader (refusing new workflows)"
                    );
                    staying_said = true;
                }
                Err(why) => tracing::debug!(node = self.id, reason = %why, "no handover yet"),
            }
            tokio::time::sleep(DISK_HANDOFF_RETRY).await;
        }
    }

    /// One attempt of [`RaftNode::hand_off_while_disk_low`]: asks the voters that answer
    /// heartbeats whether their disks are low, and transfers leadership to the best one that is
    /// not; `Ok` once a newer term shows (the voter campaigned), else why not.
    async fn hand_off_once(&self) -> Result<RaftNodeId, String> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let answering = self.voters_answering();
        if answering.is_empty() {
            return Err("no other voter answers heartbeats".into());
        }
        let matched = |id: RaftNodeId| matched_index(&metrics, id);
        let asks = answering.iter().map(|&id| async move {
            let answer = match self.member_addr(id) {
                Some(addr) => self.peers.hello(&addr, HELLO_PATIENCE).await,
                None => None,
            };
            Candidate {
                id,
                matched: matched(id),
                // An answer from another node at that address says nothing about this one.
                disk_low: answer.filter(|a| a.node_id == id).map(|a| a.disk_low),
            }
        });
        let candidates = futures::future::join_all(asks).await;
        let Some(to) = successor(&candidates) else {
            let said: Vec<String> = candidates
                .iter()
                .map(|c| match c.disk_low {
                    Some(true) => format!("node {}: disk low", c.id),
                    Some(false) => format!("node {}: room", c.id),
                    None => format!("node {}: no answer", c.id),
                })
                .collect();
            return Err(format!(
                "no other voter has room on its data disk ({})",
                said.join(", ")
            ));
        };
        tracing::info!(node = self.id, to, "data disk low: transferring leadership");
        self.transfer_leadership(to, self.takeover_timeout())
            .await
            .map_err(|e| e.to_string())?;
        Ok(to)
    }

    /// How long a voter asked to take leadership may take to campaign: it does so at once, so a
    /// newer term shows within an election or two, or it is not taking over.
    pub fn takeover_timeout(&self) -> Duration {
        Duration::from_millis(3 * self.raft.config().election_timeout_max)
    }

    /// Asks voter `to` to take leadership and waits, at most `patience`, until a newer term shows
    /// (the leader sends no heartbeats while it transfers, so that is the signal left to watch).
    pub async fn transfer_leadership(
        &self,
        to: RaftNodeId,
        patience: Duration,
    ) -> Result<(), TransferError> {
        let term = self.raft.metrics().borrow_watched().current_term;
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| TransferError::Refused(format!("leader transfer to node {to}: {e}")))?;
        self.raft
            .wait(Some(patience))
            .metrics(|m| m.current_term > term, "a newer term")
            .await
            .map_err(|_| TransferError::NotTakenOver { to, patience })?;
        Ok(())
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

/// How often a leader whose data disk stays low tries again to hand leadership over.
pub const DISK_HANDOFF_RETRY: Duration = Duration::from_secs(3);
/// How long the leader waits for each voter's Hello when looking for a successor.
const HELLO_PATIENCE: Duration = Duration::from_secs(1);

/// A voter a leader with a low data disk could hand leadership to.
#[derive(Clone, Debug)]
struct Candidate {
    id: RaftNodeId,
    /// The last log index the leader knows it holds.
    matched: Option<u64>,
    /// What it said of its own data disk (`Hello`); `None` if it did not answer.
    disk_low: Option<bool>,
}

/// The voter to hand leadership to: one that answered that its disk is not low, the most up to
/// date first (it takes over without waiting to catch up), the lowest id among equals.
fn successor(candidates: &[Candidate]) -> Option<RaftNodeId> {
    candidates
        .iter()
        .filter(|c| c.disk_low == Some(false))
        .max_by_key(|c| (c.matched, std::cmp::Reverse(c.id)))
        .map(|c| c.id)
}

/// Why a leadership transfer did not happen ([`RaftNode::transfer_leadership`]).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// openraft refused it (its core stopped, say).
    #[error("{0}")]
    Refused(String),
    /// The voter asked did not campaign (it is stopping too, or cut off).
    #[error("node {to} did not take over within {patience:?}")]
    NotTakenOver { to: RaftNodeId, patience: Duration },
}

/// The last log index a follower is known to have matched, from the leader's metrics.
pub fn matched_index(
    metrics: &openraft::RaftMetrics<TypeConfig>,
    follower: RaftNodeId,
) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&follower).copied().flatten())
        .map(|l| l.index)
}

/// What a node without Raft state learns from the other members' answers (see
/// [`RaftNode::bootstrap`]): `Err` to refuse to take part, `Ok(Some(why))` to wait to be contacted
/// by a formed cluster, `Ok(None)` when nobody answered that a cluster is formed.
fn bootstrap_decision(
    node_id: RaftNodeId,
    incarnation: &str,
    answers: &[pb::HelloResponse],
) -> Result<Option<String>, String> {
    // A peer of an earlier release names its cluster but not its members.
    let formed = |a: &pb::HelloResponse| !a.members.is_empty() || !a.cluster_id.is_empty();
    for answer in answers.iter().filter(|a| formed(a)) {
        let listed = answer.members.contains(&node_id);
        if listed
            && !answer.caller_incarnation.is_empty()
            && answer.caller_incarnation != incarnation
        {
            return Err(format!(
                "node {node_id} is already a member of cluster {cluster} (node {peer} says so), \
                 bound to data folder {known}; this data folder ({incarnation}) is new, so node \
                 {node_id}'s data is lost or elsewhere. This node must not vote or take entries \
                 as node {node_id}. Remove the member (`baton cluster remove {node_id}`), then add \
                 this machine with a new id (`baton cluster add NEW_ID ADDRESS`, started without \
                 --initial-cluster on an empty folder); or start it on node {node_id}'s own data \
                 folder (docs/OPERATIONS.md, \"Lost or wrong data folder\")",
                cluster = answer.cluster_id,
                peer = answer.node_id,
                known = answer.caller_incarnation,
            ));
        }
        if !listed && !answer.members.is_empty() {
            return Err(format!(
                "the members in --initial-cluster already formed cluster {} without node \
                 {node_id} (node {} says so): start this node without --initial-cluster and add \
                 it with `baton cluster add {node_id} ADDRESS`",
                answer.cluster_id, answer.node_id
            ));
        }
    }
    Ok(answers.iter().find(|a| formed(a)).map(|a| {
        format!(
            "node {} belongs to a formed cluster {}: waiting to hear from its leader",
            a.node_id, a.cluster_id
        )
    }))
}

/// Maps a status from the leader's internal RPC: whether the command may have been applied.
/// The refusal of a proposal past `PROPOSALS_IN_FLIGHT_MAX`.
pub fn overloaded() -> NodeError {
    NodeError::Overloaded(format!(
        "{} proposals in flight on this node; retry with backoff",
        crate::limits::PROPOSALS_IN_FLIGHT_MAX
    ))
}

///
/// Only two things prove a forwarded command was not applied: the connection to the leader could
/// not be made (so the request never left), or the leader answered that it refused before
/// proposing. Everything else (the connection lost mid-call, a reset, a timeout, an answer that
/// says nothing about how far it got) is an unknown outcome: the caller is told so, and never
/// retried here, since a retry could apply the command twice.
fn status_to_error(status: tonic::Status) -> NodeError {
    if baton_proto::status::has_source::<tonic::ConnectError>(&status) {
        return NodeError::NoLeader(format!("the leader is unreachable: {}", status.message()));
    }
    // A status with a source was made on this side from a transport error, after the
    // connection was up: the request may have reached the leader.
    if std::error::Error::source(&status).is_some() {
        return NodeError::Unknown(format!(
            "the connection to the leader broke during the call: {}",
            status.message()
        ));
    }
    match status.code() {
        // The leader refused before proposing: its data disk is low.
        tonic::Code::ResourceExhausted
            if status
                .metadata()
                .get(REFUSAL_METADATA)
                .is_some_and(|v| v == REFUSAL_DISK_LOW) =>
        {
            NodeError::DiskLow(status.message().to_owned())
        }
        // The leader refused before proposing: it is saturated.
        tonic::Code::ResourceExhausted => NodeError::Overloaded(status.message().to_owned()),
        // The leader refused before proposing (it is no longer the leader, or has no quorum).
        tonic::Code::FailedPrecondition => NodeError::NotLeader { leader: None },
        _ => NodeError::Unknown(format!("{}: {}", status.code(), status.message())),
    }
}

/// Writes one entry holding `command` through Raft, stamped with the leader's clock (see
/// `clock`), and waits until it is applied here. Only the batcher calls it, so every write on the
/// leader is batched.
pub(super) async fn write_entry(
    raft: &Raft,
    clock: &LeaderClock,
    command: Command,
) -> Result<Proposed, NodeError> {
    let entry = LogEntry {
        time_ms: clock.now_ms().await,
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

/// Halts the node when its Raft core stops by itself: a storage error (a full disk, a failed
/// write or fsync) or a panic. openraft stops the core on any storage error, since the log may no
/// longer match what was acknowledged; the node must not go on answering as if it were a member.
async fn halt_when_raft_fails(
    raft: Raft,
    halted: tokio::sync::watch::Sender<Option<String>>,
    data_dir: std::path::PathBuf,
) {
    let mut rx = raft.metrics();
    loop {
        let failure = match &rx.borrow_watched().running_state {
            Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
            Err(fatal) => Some(fatal_reason(&fatal.to_string(), &data_dir)),
        };
        if let Some(reason) = failure {
            set_halted(&halted, reason);
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// On the leader: records the data-folder incarnation of every member the first time it is heard
/// (its own included), so that from then on a node under that id on another folder is refused.
/// Only once every member runs this release (see below); from the first binding on, receivers
/// require every Raft message to carry its envelope (`envelope`).
async fn bind_incarnations(
    id: RaftNodeId,
    incarnation: String,
    raft: Raft,
    peers: Peers,
    batcher: Batcher,
) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let members: Vec<RaftNodeId> = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            if m.state != ServerState::Leader {
                continue;
            }
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        let heard = peers.heard_unbound();
        let heard_ids: Vec<RaftNodeId> = heard.iter().map(|(node, _)| *node).collect();
        if !every_member_speaks(id, &members, &heard_ids, |m| peers.bound(m).is_some()) {
            continue;
        }
        let mut binds: Vec<(RaftNodeId, String)> = heard
            .into_iter()
            .filter(|(node, _)| members.contains(node))
            .collect();
        if members.contains(&id) && peers.bound(id).is_none() {
            binds.push((id, incarnation.clone()));
        }
        for (node_id, incarnation) in binds {
            let command = Command::BindIncarnation {
                node_id: NodeId(node_id),
                incarnation: incarnation.clone(),
            };
            match batcher.propose(command).await {
                Ok(_) => tracing::info!(node = node_id, %incarnation, "member's data folder bound"),
                Err(err) => tracing::debug!(node = node_id, error = %err, "binding deferred"),
            }
        }
    }
}

/// Whether every member but `me` has answered with an incarnation (is bound already, or was
/// heard): a node of an earlier release cannot decode `BindIncarnation` (the append would fail
/// on it, again and again) and answers without one, so the leader binds nothing until then.
fn every_member_speaks(
    me: RaftNodeId,
    members: &[RaftNodeId],
    heard: &[RaftNodeId],
    bound: impl Fn(RaftNodeId) -> bool,
) -> bool {
    members
        .iter()
        .all(|&member| member == me || bound(member) || heard.contains(&member))
}

/// Records why the node halted; the first reason wins.
fn set_halted(halted: &tokio::sync::watch::Sender<Option<String>>, reason: String) {
    halted.send_if_modified(|halted| {
        if halted.is_some() {
            return false;
        }
        tracing::error!(reason = %reason, "node halted");
        *halted = Some(reason);
        true
    });
}

/// What a fatal Raft error means for the operator.
fn fatal_reason(error: &str, data_dir: &Path) -> String {
    if crate::storage::log_store::is_disk_full(error) {
        format!(
            "the data disk of {} is full ({error}): nothing acknowledged is lost; free space on \
             it and start the node again (it catches up from the others; docs/OPERATIONS.md, \
             \"Full disk\")",
            data_dir.display()
        )
    } else {
        format!("the raft core stopped on a storage error: {error}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node_id: u64, cluster: &str, members: &[u64], caller: &str) -> pb::HelloResponse {
        pb::HelloResponse {
            cluster_id: cluster.into(),
            node_id,
            members: members.to_vec(),
            caller_incarnation: caller.into(),
            ..Default::default()
        }
    }

    /// What the forwarding follower makes of real transport failures: a leader that cannot be
    /// reached certainly did not apply the command; one that took the request and then lost the
    /// connection may have.
    #[tokio::test]
    async fn a_forward_that_loses_the_leaders_answer_is_unknown_not_refused() {
        use baton_proto::raft::v1::raft_service_client::RaftServiceClient;
        let propose = |addr: String| async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            RaftServiceClient::new(channel)
                .propose(network::encode(&Command::Tick))
                .await
                .expect_err("no leader answers")
        };

        // Nobody listens: the request never left.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let status = propose(addr).await;
        assert!(
            matches!(status_to_error(status.clone()), NodeError::NoLeader(_)),
            "{status:?}"
        );

        // A "leader" that reads the whole request and then drops the connection unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let swallow = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            // The preface, SETTINGS, HEADERS and DATA of the call: read until the client
            // waits for an answer, then hang up.
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await;
        });
        let status = propose(addr).await;
        swallow.await.unwrap();
        assert!(
            matches!(status_to_error(status.clone()), NodeError::Unknown(_)),
            "{status:?}"
        );

        // The leader's own refusals say the command was not proposed.
        assert!(matches!(
            status_to_error(tonic::Status::failed_precondition("not the leader")),
            NodeError::NotLeader { .. }
        ));
        assert!(matches!(
            status_to_error(tonic::Status::resource_exhausted("full")),
            NodeError::Overloaded(_)
        ));
        // An answer that does not say how far it got is unknown.
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Aborted,
            tonic::Code::Internal,
        ] {
            assert!(matches!(
                status_to_error(tonic::Status::new(code, "?")),
                NodeError::Unknown(_)
            ));
        }
    }

    #[test]
    fn leadership_goes_to_the_most_up_to_date_voter_with_room_or_nowhere() {
        let c = |id, matched, disk_low| Candidate {
            id,
            matched,
            disk_low,
        };
        // The most up-to-date voter is low: the next one with room, however far behind.
        assert_eq!(
            successor(&[
                c(2, Some(90), Some(false)),
                c(3, Some(100), Some(true)),
                c(4, Some(95), Some(false)),
            ]),
            Some(4)
        );
        // Equals: the lowest id.
        assert_eq!(
            successor(&[c(3, Some(7), Some(false)), c(2, Some(7), Some(false))]),
            Some(2)
        );
        // Every voter low, or silent: nobody; the leader stays.
        assert_eq!(
            successor(&[c(2, Some(100), Some(true)), c(3, Some(100), None)]),
            None
        );
        assert_eq!(successor(&[]), None);
    }

    #[test]
    fn a_forwarded_disk_refusal_stays_one() {
        let mut status = tonic::Status::resource_exhausted("node 1: data disk /d has 3 MiB free");
        status
            .metadata_mut()
            .insert(REFUSAL_METADATA, REFUSAL_DISK_LOW.parse().unwrap());
        match status_to_error(status) {
            NodeError::DiskLow(message) => {
                assert_eq!(message, "node 1: data disk /d has 3 MiB free")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_disk_halt_names_the_data_dir() {
        let reason = fatal_reason(
            "storage error: write logs: IO error: No space left on device: While appending",
            Path::new("/var/lib/baton"),
        );
        assert!(
            reason.starts_with("the data disk of /var/lib/baton is full (storage error"),
            "{reason}"
        );
        let reason = fatal_reason("storage error: checksum mismatch", Path::new("/d"));
        assert!(
            reason.starts_with("the raft core stopped on a storage error"),
            "{reason}"
        );
    }

    /// A leader binds folders only once every other member answered with an incarnation: one
    /// node of an earlier release (it cannot read the entry) holds every binding back.
    #[test]
    fn folders_are_bound_only_once_every_member_speaks_the_envelope() {
        let none_bound = |_: RaftNodeId| false;
        assert!(every_member_speaks(1, &[1, 2, 3], &[2, 3], none_bound));
        assert!(!every_member_speaks(1, &[1, 2, 3], &[2], none_bound));
        assert!(every_member_speaks(1, &[1, 2, 3], &[2], |m| m == 3));
        assert!(every_member_speaks(1, &[1], &[], none_bound));
    }

    #[test]
    fn a_node_without_state_learns_from_the_others_whether_to_take_part() {
        // Nobody formed a cluster yet: the lowest id may form one (given a majority answered).
        assert_eq!(
            bootstrap_decision(1, "new", &[answer(2, "", &[], ""), answer(3, "", &[], "")]),
            Ok(None)
        );
        assert_eq!(bootstrap_decision(1, "new", &[]), Ok(None));
        // The cluster exists and knows node 1 by another folder: the lost-folder case.
        let err = bootstrap_decision(
            1,
            "new",
            &[answer(2, "c1", &[1, 2, 3], "old"), answer(3, "", &[], "")],
        )
        .unwrap_err();
        assert!(
            err.contains("node 1 is already a member of cluster c1"),
            "{err}"
        );
        assert!(err.contains("baton cluster remove 1"), "{err}");
        // The cluster formed moments ago and has not bound node 1 yet: a late starter.
        assert!(matches!(
            bootstrap_decision(1, "new", &[answer(2, "", &[1, 2, 3], "")]),
            Ok(Some(_))
        ));
        // Bound to this very folder (its raft state was lost but not its identity): wait.
        assert!(matches!(
            bootstrap_decision(1, "same", &[answer(2, "c1", &[1, 2, 3], "same")]),
            Ok(Some(_))
        ));
        // A cluster formed without this id: started with the wrong flags.
        let err = bootstrap_decision(4, "new", &[answer(2, "c1", &[1, 2, 3], "")]).unwrap_err();
        assert!(err.contains("without node 4"), "{err}");
        // A peer of an earlier release names its cluster only: never form a second one.
        assert!(matches!(
            bootstrap_decision(1, "new", &[answer(2, "c1", &[], "")]),
            Ok(Some(_))
        ));
    }
}
