//! A running Raft member: starting it, proposing commands (the leader stamps the time; followers
//! forward to the leader), linearizable reads (ReadIndex), halting and shutting down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::raft::v1 as pb;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::raft::ReadPolicy;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::batcher::Batcher;
use super::clock::LeaderClock;
use super::error::{NodeError, overloaded, status_to_error};
use super::network::{self, NetworkFactory, Peers};
use super::types::{Raft, RaftNodeId};
use crate::state::{Command, LogEntry, Outcome, Proposal, Response};
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
    /// Longest a command waits for others to share its entry while commands keep arriving
    /// (`batcher`); zero writes each group as soon as an entry may start.
    pub entry_linger: std::time::Duration,
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
            entry_linger: std::time::Duration::from_millis(5),
        }
    }
}

/// A committed proposal's outcome, of its command's own type (`state::outcome`).
#[derive(Debug, Clone)]
pub struct Decided<O> {
    pub index: u64,
    pub outcome: O,
}

/// The outcome `response` says for a command of outcome type `O`. A response of another kind
/// is a bug (the state answered the command with something it cannot answer): `Fatal`.
pub fn outcome<O: Outcome>(response: Response) -> Result<O, NodeError> {
    O::from_response(response)
        .map_err(|other| NodeError::Fatal(format!("a {} applied as {other:?}", O::COMMAND)))
}

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
    /// openraft's handle: for `raft/` alone (the rest of the node uses `status` and the methods
    /// here).
    pub(super) raft: Raft,
    pub replica: Arc<Replica>,
    pub peers: Peers,
    /// Counted limits: proposals, agent sessions, watches.
    pub admission: crate::limits::Admission,
    /// The data disk's free space against `--disk-reserve-mb` (see `storage::disk`).
    pub disk: Arc<DiskWatcher>,
    /// `--max-commands-per-entry`: a client's batch larger than this is refused, and at 1 (no
    /// `Batch` entries, for a rolling upgrade) every batch is.
    pub commands_per_entry_max: usize,
    pub(super) batcher: Batcher,
    /// The time the leader stamps into entries (see `clock`); the scheduler's time too.
    pub clock: Arc<LeaderClock>,
    tasks: Vec<JoinHandle<()>>,
    /// Why this node cannot go on, once it cannot (see [`RaftNode::halted`]).
    halted: tokio::sync::watch::Sender<Option<String>>,
    /// Resolves once the Raft log's database is closed; awaited by [`RaftNode::shutdown`].
    log_closed: tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

/// How a node keeps its data, beyond where.
pub struct StorageSettings {
    /// `--disk-reserve-mb` in bytes; 0: no reserve.
    pub disk_reserve_bytes: u64,
    /// `--archive-dir`: where purged workflows are written before a purge applies.
    pub archive: Option<crate::storage::archive::Archive>,
}

/// How long a proposal waits for a leader (election, forwarding retries) before giving up.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(10);

impl RaftNode {
    /// Opens storage under `data_dir` and starts the Raft member, watching the free space of
    /// `data_dir`'s disk against the reserve (see [`StorageSettings`]).
    pub async fn start(
        id: RaftNodeId,
        incarnation: String,
        data_dir: &Path,
        storage: StorageSettings,
        timing: &RaftTiming,
        peer_dial: BTreeMap<String, String>,
        tls: Option<std::sync::Arc<baton_security::TlsSettings>>,
    ) -> Result<Self, String> {
        let StorageSettings {
            disk_reserve_bytes,
            archive,
        } = storage;
        let started = Instant::now();
        let log_store = LogStore::open(&data_dir.join("raft"))?;
        let log_closed = Box::pin(log_store.closed());
        let log_opened_ms = started.elapsed().as_millis() as u64;
        let state_machine =
            StateMachineStore::open(&data_dir.join("snapshots"))?.with_archive(archive);
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
        let (batcher, batcher_task) = Batcher::start(raft.clone(), clock.clone(), timing);
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
        node.tasks.push(tokio::spawn(super::status::watch_metrics(
            node.status_watch(),
        )));
        node.tasks.push(tokio::spawn(halt_when_raft_fails(
            node.raft.clone(),
            node.halted.clone(),
            data_dir.to_owned(),
        )));
        node.tasks
            .push(tokio::spawn(super::bootstrap::bind_incarnations(
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

    /// A client's proposal: [`RaftNode::propose`] if this node has room for one more in flight,
    /// else [`NodeError::Overloaded`] at once (nothing proposed).
    pub async fn propose_client(&self, command: Command) -> Result<Proposed, NodeError> {
        let _permit = self
            .admission
            .proposals(command.count())
            .ok_or_else(overloaded)?;
        self.propose(command).await
    }

    /// [`RaftNode::propose_client`] for a command with an outcome type of its own.
    pub async fn propose_client_for<P: Proposal>(
        &self,
        proposal: P,
    ) -> Result<Decided<P::Outcome>, NodeError> {
        let proposed = self.propose_client(proposal.into()).await?;
        Ok(Decided {
            index: proposed.index,
            outcome: outcome(proposed.response)?,
        })
    }

    /// [`RaftNode::propose`] for a command with an outcome type of its own.
    pub async fn propose_for<P: Proposal>(
        &self,
        proposal: P,
    ) -> Result<Decided<P::Outcome>, NodeError> {
        let proposed = self.propose(proposal.into()).await?;
        Ok(Decided {
            index: proposed.index,
            outcome: outcome(proposed.response)?,
        })
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
        if crate::faults::active(crate::faults::Broken::StaleReads) {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
