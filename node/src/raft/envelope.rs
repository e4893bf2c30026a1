//! What every Raft message carries besides openraft's payload: the cluster, the sender and the
//! node it expects to reach, each with its data-folder incarnation (`storage::identity`), as gRPC
//! metadata. The answer names the incarnation of the node that answered.
//!
//! The receiver refuses a message ([`Admission`]) from a node id the cluster removed, from a node
//! whose incarnation differs from the one the cluster bound for its id (it came back on another
//! folder), from another cluster, a vote from a non-member, and, over mutual TLS, a message whose
//! sender id is not the node name in its certificate. A message addressed to this node id under
//! another incarnation tells this node that it is not the member the cluster knows: it halts.
//! The sender counts no answer from a node whose incarnation is not the one bound for it.
//!
//! Messages without these headers (a node of an earlier release, during a rolling upgrade) pass
//! until the leader has bound the first data folder, which it does only once every member
//! answers with an incarnation (`raft::bootstrap::bind_incarnations`); from then on they are refused,
//! so leaving the headers off skips no check.

use baton_security::PeerRole;
use baton_security::server::PeerInfo;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::state::{NodeId, PeerView};

const FROM: &str = "baton-from";
const TO: &str = "baton-to";
const CLUSTER: &str = "baton-cluster";
/// In answers: the incarnation of the node that answered.
const ANSWERED_BY: &str = "baton-incarnation";

/// A node and the incarnation of its data folder ("" when not known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressee {
    pub node_id: u64,
    pub incarnation: String,
}

impl Addressee {
    fn encode(&self) -> String {
        format!("{}/{}", self.node_id, self.incarnation)
    }

    fn decode(text: &str) -> Option<Addressee> {
        let (id, incarnation) = text.split_once('/')?;
        Some(Addressee {
            node_id: id.parse().ok()?,
            incarnation: incarnation.to_owned(),
        })
    }
}

/// The headers of one Raft message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub cluster_id: String,
    pub from: Addressee,
    /// The node the sender means to reach, with the incarnation the cluster bound for it.
    pub to: Addressee,
}

impl Envelope {
    /// Adds the headers to an outgoing request.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        for (key, value) in [
            (FROM, self.from.encode()),
            (TO, self.to.encode()),
            (CLUSTER, self.cluster_id.clone()),
        ] {
            if let Ok(value) = MetadataValue::try_from(value.as_str()) {
                metadata.insert(key, value);
            }
        }
    }

    /// The headers of an incoming request; `None` when it carries none (an earlier release).
    pub fn read(metadata: &MetadataMap) -> Result<Option<Envelope>, Status> {
        let header = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let (Some(from), Some(to)) = (header(FROM), header(TO)) else {
            return Ok(None);
        };
        let bad = |what: &str, text: &str| {
            Status::invalid_argument(format!("{what}: {text:?} is not NODE_ID/INCARNATION"))
        };
        Ok(Some(Envelope {
            cluster_id: header(CLUSTER).unwrap_or_default().to_owned(),
            from: Addressee::decode(from).ok_or_else(|| bad(FROM, from))?,
            to: Addressee::decode(to).ok_or_else(|| bad(TO, to))?,
        }))
    }
}

/// Marks an answer with the incarnation of the node that gives it.
pub fn mark_answer(metadata: &mut MetadataMap, incarnation: &str) {
    if let Ok(value) = MetadataValue::try_from(incarnation) {
        metadata.insert(ANSWERED_BY, value);
    }
}

/// The incarnation an answer names, if it names one.
pub fn answered_by(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(ANSWERED_BY).and_then(|v| v.to_str().ok())
}

/// What kind of Raft message is being admitted: votes have one more rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Vote,
    /// Appends, snapshots, leader transfer: only a leader sends these.
    FromLeader,
}

/// The receiver's decision on one message.
#[derive(Debug)]
pub enum Admission {
    Admit,
    /// Refused; the sender is the one at fault.
    Refuse(Status),
    /// The message is meant for this node id under another data folder: this node must not take
    /// part at all. The reason says what to do.
    NotThisNode(String),
}

/// This node, as the receiver sees itself.
pub struct Receiver<'a> {
    pub node_id: u64,
    pub incarnation: &'a str,
    /// The cluster id, bound incarnations and removed ids this node has applied.
    pub view: &'a PeerView,
    /// The voters and learners of this node's effective membership (the latest in its log,
    /// applied or not, as openraft uses it); empty before it has one: a new node learns it from
    /// the leader's first message.
    pub members: &'a [u64],
    /// Whether connections are mutual TLS (then the certificate names the sender).
    pub secure: bool,
}

impl Receiver<'_> {
    /// Decides whether to let a message in. `peer` is the TLS identity of the connection.
    ///
    /// The sender is checked first, so that a sender that is not a member in good standing (of
    /// another cluster, removed, on another folder, or with another node's certificate) is
    /// refused and can never make this node halt.
    pub fn admit(
        &self,
        envelope: Option<&Envelope>,
        peer: Option<&PeerInfo>,
        kind: MessageKind,
    ) -> Admission {
        let Some(envelope) = envelope else {
            // Only a node of an earlier release sends none, and the leader binds folders only
            // once every member runs this release: from the first binding on, none is legitimate
            // (a node without one would skip every check below).
            if self.view.has_bindings() {
                return Admission::Refuse(Status::failed_precondition(format!(
                    "node {}: a raft message must name its sender and receiver ({FROM}, {TO}): \
                     every member of this cluster runs a release that does",
                    self.node_id
                )));
            }
            return Admission::Admit;
        };
        let (from, to) = (&envelope.from, &envelope.to);
        let cluster_id = self.view.cluster_id.as_str();
        if to.node_id != self.node_id {
            return Admission::Refuse(Status::failed_precondition(format!(
                "this is node {}, not node {}: check --peer-dial and the member addresses",
                self.node_id, to.node_id
            )));
        }
        if !envelope.cluster_id.is_empty()
            && !cluster_id.is_empty()
            && envelope.cluster_id != cluster_id
        {
            return Admission::Refuse(Status::failed_precondition(format!(
                "node {} belongs to cluster {cluster_id}, not cluster {}",
                self.node_id, envelope.cluster_id
            )));
        }
        if self.secure {
            let certified = peer
                .and_then(|p| p.identity.as_ref())
                .filter(|identity| identity.role == PeerRole::Node)
                .map(|identity| identity.name.as_str());
            if certified != Some(from.node_id.to_string().as_str()) {
                return Admission::Refuse(Status::permission_denied(format!(
                    "a message from node {} must come with node {}'s certificate, not {}",
                    from.node_id,
                    from.node_id,
                    certified.map_or("none".to_owned(), |name| format!("node {name}'s"))
                )));
            }
        }
        if self.view.was_removed(NodeId(from.node_id)) {
            return Admission::Refuse(Status::permission_denied(format!(
                "node {} was removed from the cluster; its id is never used again",
                from.node_id
            )));
        }
        if let Some(bound) = self.view.incarnation_of(NodeId(from.node_id))
            && bound != from.incarnation
        {
            return Admission::Refuse(Status::permission_denied(format!(
                "node {} runs on data folder {}, but the cluster knows it by {bound}: it lost \
                 its data and must be replaced (`baton cluster remove {}`, then add a new id)",
                from.node_id, from.incarnation, from.node_id
            )));
        }
        if !to.incarnation.is_empty() && to.incarnation != self.incarnation {
            let reason = format!(
                "the cluster knows node {id} by its data folder {known}, but this data folder is \
                 {mine}: it is empty or another folder, so this node must not vote or take \
                 entries as node {id}. Remove the member (`baton cluster remove {id}`), then add \
                 this machine with a new id (`baton cluster add NEW_ID ADDRESS`) on an empty \
                 folder; or start it on node {id}'s own data folder (docs/OPERATIONS.md, \
                 \"Lost or wrong data folder\")",
                id = self.node_id,
                known = to.incarnation,
                mine = self.incarnation,
            );
            // Only a member of this very cluster says so with authority: its cluster is ours, or
            // this node has no state at all (an empty folder). A node restored under the same
            // addresses, still unnamed, refuses a leftover of the old cluster instead.
            let authoritative = !envelope.cluster_id.is_empty()
                && (envelope.cluster_id == cluster_id || self.members.is_empty());
            if authoritative {
                return Admission::NotThisNode(reason);
            }
            return Admission::Refuse(Status::failed_precondition(reason));
        }
        if kind == MessageKind::Vote
            && !self.members.is_empty()
            && !self.members.contains(&from.node_id)
        {
            return Admission::Refuse(Status::permission_denied(format!(
                "node {} is not a member here and cannot ask for votes",
                from.node_id
            )));
        }
        Admission::Admit
    }
}

#[cfg(test)]
mod tests {
    use baton_security::PeerIdentity;

    use super::*;
    use crate::state::{ApplyCtx, ClusterState, Command, LogEntry};

    fn envelope(from: (u64, &str), to: (u64, &str)) -> Envelope {
        Envelope {
            cluster_id: "c1".into(),
            from: Addressee {
                node_id: from.0,
                incarnation: from.1.into(),
            },
            to: Addressee {
                node_id: to.0,
                incarnation: to.1.into(),
            },
        }
    }

    fn peer(role: PeerRole, name: &str) -> PeerInfo {
        PeerInfo {
            identity: Some(PeerIdentity::new(role, name)),
            remote_addr: None,
        }
    }

    #[test]
    fn headers_round_trip_and_their_absence_is_an_earlier_release() {
        let sent = envelope((2, "aa"), (3, ""));
        let mut metadata = MetadataMap::new();
        sent.stamp(&mut metadata);
        assert_eq!(Envelope::read(&metadata).unwrap(), Some(sent));
        assert_eq!(Envelope::read(&MetadataMap::new()).unwrap(), None);
        let mut bad = MetadataMap::new();
        bad.insert(FROM, MetadataValue::from_static("two"));
        bad.insert(TO, MetadataValue::from_static("3/"));
        let err = Envelope::read(&bad).unwrap_err();
        assert!(err.message().contains("baton-from"), "{err}");
        mark_answer(&mut metadata, "bb");
        assert_eq!(answered_by(&metadata), Some("bb"));
    }

    #[test]
    fn each_rule_refuses_what_it_is_for_and_nothing_else() {
        let mut state = ClusterState::default();
        let ids = |ids: &[u64]| ids.iter().map(|id| NodeId(*id)).collect::<Vec<_>>();
        for command in [
            Command::Membership {
                previous: Vec::new(),
                members: ids(&[1, 2, 3, 4]),
            },
            Command::Membership {
                previous: ids(&[1, 2, 3, 4]),
                members: ids(&[1, 2, 3]),
            },
            Command::InitCluster {
                cluster_id: "c1".into(),
            },
            Command::BindIncarnation {
                node_id: NodeId(2),
                incarnation: "aa".into(),
            },
        ] {
            state.apply(
                ApplyCtx { index: 1 },
                LogEntry {
                    time_ms: 0,
                    command,
                },
            );
        }
        let view = state.peer_view();
        let receiver = Receiver {
            node_id: 3,
            incarnation: "cc",
            view: &view,
            members: &[1, 2, 3],
            secure: true,
        };
        let node2 = peer(PeerRole::Node, "2");
        let admit = |e: &Envelope, p: &PeerInfo, kind| receiver.admit(Some(e), Some(p), kind);
        let ok = envelope((2, "aa"), (3, "cc"));
        assert!(matches!(
            admit(&ok, &node2, MessageKind::Vote),
            Admission::Admit
        ));
        assert!(matches!(
            admit(
                &envelope((2, "aa"), (3, "")),
                &node2,
                MessageKind::FromLeader
            ),
            Admission::Admit
        ));
        let refused = |a: Admission| match a {
            Admission::Refuse(status) => status.message().to_owned(),
            other => panic!("admitted or halted: {other:?}"),
        };
        let m = refused(admit(&ok, &peer(PeerRole::Node, "1"), MessageKind::Vote));
        assert!(m.contains("node 2's certificate, not node 1's"), "{m}");
        let m = refused(admit(&ok, &peer(PeerRole::Client, "2"), MessageKind::Vote));
        assert!(m.contains("not none"), "{m}");
        let m = refused(admit(
            &envelope((2, "dd"), (3, "cc")),
            &node2,
            MessageKind::FromLeader,
        ));
        assert!(m.contains("lost its data"), "{m}");
        let m = refused(admit(
            &envelope((4, ""), (3, "cc")),
            &peer(PeerRole::Node, "4"),
            MessageKind::FromLeader,
        ));
        assert!(m.contains("node 4 was removed"), "{m}");
        let m = refused(admit(
            &envelope((5, "ee"), (3, "cc")),
            &peer(PeerRole::Node, "5"),
            MessageKind::Vote,
        ));
        assert!(m.contains("cannot ask for votes"), "{m}");
        assert!(matches!(
            admit(
                &envelope((5, "ee"), (3, "cc")),
                &peer(PeerRole::Node, "5"),
                MessageKind::FromLeader
            ),
            Admission::Admit
        ));
        let mut other_cluster = ok.clone();
        other_cluster.cluster_id = "c2".into();
        let m = refused(admit(&other_cluster, &node2, MessageKind::FromLeader));
        assert!(m.contains("belongs to cluster c1, not cluster c2"), "{m}");
        let m = refused(admit(
            &envelope((2, "aa"), (4, "")),
            &node2,
            MessageKind::Vote,
        ));
        assert!(m.contains("this is node 3, not node 4"), "{m}");

        // A member of this cluster that knows node 3 by another folder: node 3 must not go on.
        let wrong_folder = envelope((2, "aa"), (3, "zz"));
        match admit(&wrong_folder, &node2, MessageKind::FromLeader) {
            Admission::NotThisNode(reason) => {
                assert!(reason.contains("baton cluster remove 3"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The same words from a sender that is not a member in good standing halt nothing.
        for (sender, certificate) in [((4, ""), "4"), ((2, "dd"), "2"), ((2, "aa"), "1")] {
            let mut stale = wrong_folder.clone();
            stale.from.node_id = sender.0;
            stale.from.incarnation = sender.1.into();
            refused(admit(
                &stale,
                &peer(PeerRole::Node, certificate),
                MessageKind::FromLeader,
            ));
        }
        // Nor from one whose cluster is not named yet, to a node that has state (restored).
        let mut unnamed = wrong_folder.clone();
        unnamed.cluster_id.clear();
        refused(admit(&unnamed, &node2, MessageKind::FromLeader));
        // A node with no state at all (an empty folder) halts on a formed cluster's word.
        let fresh_view = PeerView::default();
        let fresh = Receiver {
            view: &fresh_view,
            members: &[],
            ..receiver
        };
        assert!(matches!(
            fresh.admit(Some(&wrong_folder), Some(&node2), MessageKind::FromLeader),
            Admission::NotThisNode(_)
        ));

        // Once folders are bound, a message without an envelope skips nothing: it is refused.
        let m = refused(receiver.admit(None, Some(&node2), MessageKind::FromLeader));
        assert!(m.contains("must name its sender and receiver"), "{m}");
        // Before any binding (a rolling upgrade from a release without envelopes) it passes.
        assert!(matches!(
            fresh.admit(None, Some(&node2), MessageKind::Vote),
            Admission::Admit
        ));
        let insecure = Receiver {
            secure: false,
            ..receiver
        };
        assert!(matches!(
            insecure.admit(Some(&ok), None, MessageKind::Vote),
            Admission::Admit
        ));
    }
}
