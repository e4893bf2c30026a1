//! The openraft type configuration: the one place that names openraft's generic types. Everything
//! else in the node uses these aliases, so an openraft bump touches this module and its siblings.

use std::fmt;

use crate::state::{LogEntry, Response};
use crate::storage::StateMachineStore;

openraft::declare_raft_types!(
    /// Baton's Raft: log entries carry a [`LogEntry`], applying one yields a [`Response`].
    pub TypeConfig:
        D = LogEntry,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        // Standard Raft: at most one leader per term, so terms read the way operators expect.
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type RaftNodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<RaftNodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Snapshots travel and rest as the encoded state, named by their file at rest (see
/// `storage::snapshot`).
pub type SnapshotData = crate::storage::snapshot::SnapshotData;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type IoFlushed = openraft::storage::IOFlushed<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.command.kind(), self.time_ms)
    }
}
