//! How a node joins: forming a new cluster (only the lowest id, only once a majority says none
//! exists), or finding out it must not take part (its id is bound to another data folder); and,
//! on the leader, binding each member's data-folder incarnation once every member speaks the
//! envelope (see `envelope`).

use std::collections::BTreeMap;
use std::time::Duration;

use baton_proto::raft::v1 as pb;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ServerState};

use super::batcher::Batcher;
use super::network::Peers;
use super::node::RaftNode;
use super::types::{Raft, RaftNodeId};
use crate::state::{Command, NodeId};

impl RaftNode {
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

/// On the leader: records the data-folder incarnation of every member the first time it is heard
/// (its own included), so that from then on a node under that id on another folder is refused.
/// Only once every member runs this release (see below); from the first binding on, receivers
/// require every Raft message to carry its envelope (`envelope`).
pub(super) async fn bind_incarnations(
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
