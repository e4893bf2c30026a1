//! What the rest of the node sees of Raft: this node's role, term, leader and indexes
//! ([`RaftStatus`], and a [`StatusWatch`] of its changes), the members, and the membership and
//! snapshot operations the admin API runs. Our own small types, so openraft's stay in `raft/` and
//! `storage/` and an openraft bump stops here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState};

use super::node::RaftNode;
use super::types::{RaftNodeId, TypeConfig};
use crate::metrics;

/// This node's part in the Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// The Raft core stopped (shut down, or halted on a fatal error).
    Shutdown,
}

impl Role {
    /// The name `cluster status` shows.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// This node's view of the Raft group at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: RaftNodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<RaftNodeId>,
    /// The last index in this node's log; `None` before it took any entry.
    pub last_log_index: Option<u64>,
    /// The last index this node knows committed, and the term of that entry.
    pub committed_index: u64,
    pub committed_term: u64,
    pub applied_index: u64,
    /// The last index in this node's snapshot, if it has one.
    pub snapshot_index: Option<u64>,
    pub purged_index: u64,
    /// Whether this node is in the membership it applies (a voter or a learner).
    pub member: bool,
}

impl RaftStatus {
    fn of(m: &RaftMetrics<TypeConfig>) -> Self {
        Self {
            id: m.id,
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map_or(0, |l| l.index),
            committed_term: m.local_committed.map_or(0, |l| l.leader_id.term),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            member: m.membership_config.membership().get_node(&m.id).is_some(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}

/// A member of the applied membership, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: RaftNodeId,
    pub addr: String,
    pub voter: bool,
    /// On the leader: the last index the member is known to hold.
    pub matched_index: Option<u64>,
}

/// Follows [`RaftStatus`] as it changes.
pub struct StatusWatch {
    rx: openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
}

impl StatusWatch {
    pub fn current(&self) -> RaftStatus {
        RaftStatus::of(&self.rx.borrow_watched())
    }

    /// Waits for the next change; `false` once the Raft core is gone and nothing will change.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until `until` holds of the status, at most `patience`; the status that satisfied
    /// it, or `None` on timeout (or once the Raft core is gone).
    pub async fn wait(
        &mut self,
        patience: Duration,
        until: impl Fn(&RaftStatus) -> bool,
    ) -> Option<RaftStatus> {
        let wait = async {
            loop {
                let status = self.current();
                if until(&status) {
                    return Some(status);
                }
                if !self.changed().await {
                    return None;
                }
            }
        };
        tokio::time::timeout(patience, wait).await.ok().flatten()
    }
}

/// Why a membership change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Certainly not applied: leadership moved away from this node during the change.
    #[error("leadership moved during the change; retry")]
    LeaderMoved,
    /// Raft refused the change (another change under way, a node that is not caught up...).
    #[error("membership change refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

type ClientWriteRaftError = openraft::error::RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

impl From<ClientWriteRaftError> for MembershipError {
    fn from(err: ClientWriteRaftError) -> Self {
        match err.api_error() {
            Some(ClientWriteError::ForwardToLeader(_)) => MembershipError::LeaderMoved,
            Some(ClientWriteError::ChangeMembershipError(e)) => {
                MembershipError::Refused(e.to_string())
            }
            _ => MembershipError::Failed(err.to_string()),
        }
    }
}

/// Why [`RaftNode::build_snapshot`] did not build one.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The Raft core would not take the request (it stopped, say).
    #[error("snapshot refused: {0}")]
    Refused(String),
    /// No snapshot covering the index was built in time.
    #[error("snapshot not built: {0}")]
    NotBuilt(String),
}

impl RaftNode {
    pub fn status(&self) -> RaftStatus {
        RaftStatus::of(&self.raft.metrics().borrow_watched())
    }

    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch {
            rx: self.raft.metrics(),
        }
    }

    /// The leader this node knows of, if any (on the leader: itself, once it confirmed it).
    pub async fn current_leader(&self) -> Option<RaftNodeId> {
        self.raft.current_leader().await
    }

    /// The members of the applied membership, voters first by id.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched_index(&m, *id),
            })
            .collect()
    }

    /// Adds `id` at `addr` as a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: RaftNodeId, addr: &str) -> Result<(), MembershipError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await?;
        Ok(())
    }

    /// Makes learner `id` a voter.
    pub async fn promote_voter(&self, id: RaftNodeId) -> Result<(), MembershipError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// Removes member `id` (a voter, or a learner when `voter` is false).
    pub async fn remove_member(&self, id: RaftNodeId, voter: bool) -> Result<(), MembershipError> {
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft.change_membership(change, false).await?;
        Ok(())
    }

    /// Builds a snapshot covering at least index `covering`; the index of the snapshot built.
    /// openraft ignores a trigger while a build is under way (one started by the snapshot policy,
    /// say), and that build may end below the wanted index; so the trigger is repeated until a
    /// snapshot covers it, for at most `patience`.
    pub async fn build_snapshot(
        &self,
        covering: u64,
        patience: Duration,
    ) -> Result<u64, SnapshotError> {
        const RETRIGGER_EVERY: Duration = Duration::from_millis(500);
        let deadline = Instant::now() + patience;
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| SnapshotError::Refused(e.to_string()))?;
            let built = self
                .raft
                .wait(Some(RETRIGGER_EVERY))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= covering),
                    "snapshot built",
                )
                .await;
            match built {
                Ok(metrics) => return Ok(metrics.snapshot.map_or(0, |s| s.index)),
                Err(WaitError::Timeout(..)) if Instant::now() < deadline => {}
                Err(e) => return Err(SnapshotError::NotBuilt(e.to_string())),
            }
        }
    }
}

/// The last log index `follower` is known to hold, from the leader's replication metrics.
pub(super) fn matched_index(m: &RaftMetrics<TypeConfig>, follower: RaftNodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&follower).copied().flatten())
        .map(|l| l.index)
}

/// Mirrors the Raft status into Prometheus gauges and logs leader changes.
pub(super) async fn watch_metrics(mut watch: StatusWatch) {
    let mut last_seen = None;
    let mut last_leader = None;
    let mut followers_reported = BTreeSet::new();
    loop {
        let (status, lag) = {
            let m = watch.rx.borrow_watched();
            (RaftStatus::of(&m), replication_lag(&m))
        };
        if status.leader != last_seen {
            tracing::info!(node = status.id, leader = ?status.leader, term = status.term, "leader changed");
            last_seen = status.leader;
        }
        // A new leader, not the gap of an election: losing one and finding the next is one
        // change.
        let new_leader = status.leader.is_some() && status.leader != last_leader;
        if status.leader.is_some() {
            last_leader = status.leader;
        }
        metrics::raft(&status, new_leader);
        metrics::replication_lag(&lag, &mut followers_reported);
        if !watch.changed().await {
            return;
        }
    }
}

/// On the leader, how many entries each follower is behind its last log index; empty elsewhere.
fn replication_lag(m: &RaftMetrics<TypeConfig>) -> BTreeMap<RaftNodeId, u64> {
    let last_log = m.last_log_index.unwrap_or(0);
    match &m.replication {
        Some(replication) if m.state == ServerState::Leader => replication
            .iter()
            .filter(|(id, _)| **id != m.id)
            .map(|(id, matched)| {
                let matched = matched.map_or(0, |log_id| log_id.index);
                (*id, last_log.saturating_sub(matched))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}
