//! Leadership on this node: whether it leads and whether a quorum confirmed it lately (what agent
//! leases rely on), which voters answer, handing leadership over (a transfer, or away from a
//! leader whose data disk is low), and waiting for it to be lost.

use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::node::RaftNode;
use super::status::matched_index;
use super::types::{RaftNodeId, TypeConfig};

impl RaftNode {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
