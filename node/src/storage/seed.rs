//! Offline rewrites of a data folder, run by `batond restore` and `batond recover` while no node
//! runs on it: both end in the same shape, one snapshot file holding the whole state with a new
//! membership and an empty log, from which openraft starts as from any snapshot.
//!
//! - restore: a backup (a snapshot file from `SaveSnapshot`) seeds an empty folder as one member
//!   of a new cluster. Every member is seeded from the same file with the same membership, so they
//!   start identical at the backup's log position and elect a leader among themselves.
//! - recover: a survivor's own snapshot plus every entry in its log (committed or not: with the
//!   majority gone nobody can tell, so the survivor's log is taken as the truth, like etcd's
//!   `--force-new-cluster`) becomes a single-voter cluster of that node; others then join it.
//!
//! The vote is set to the term of the last entry, so the first election after the rewrite runs
//! at a later term than any entry in the state, and a new leader's entries follow the old ones.
//! Node ids of the new membership are recorded as used (never reused afterwards). The old
//! cluster may have gone on after the copy was taken, so the state is marked reseeded
//! (`ClusterState::reseed`): the first entry the new cluster applies skips every workflow id,
//! agent id and fencing token the old one could have handed out since; data folders the old
//! cluster knew are forgotten (new members bind their own); a restored cluster gets a new
//! cluster id from its first leader, a recovered one keeps its own. The hash printed is the
//! state's as copied, before that marking, to compare with the backup's or the survivor's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership};

use super::state_machine::member_ids;
use super::{Applied, LogStore, StateMachineStore, snapshot};
use crate::raft::types::{SnapshotMeta, StoredMembership, Vote};
use crate::state::{ApplyCtx, ClusterState, Command, LogEntry, NodeId};

/// What a rewrite produced, for the operator.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub index: u64,
    pub term: u64,
    pub state_hash: String,
    pub members: BTreeMap<u64, String>,
    /// Entries taken from the log beyond the survivor's snapshot (recover only).
    pub log_entries_applied: u64,
}

/// Seeds the empty (or absent) `data_dir` of node `node_id` from the backup file `backup`, as a
/// member of a new cluster of `members`.
pub async fn restore(
    backup: &Path,
    data_dir: &Path,
    node_id: u64,
    members: &BTreeMap<u64, String>,
) -> Result<Seeded, String> {
    if !members.contains_key(&node_id) {
        return Err(format!("--node-id {node_id} is not in --initial-cluster"));
    }
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(format!(
            "data dir {} is not empty: restore seeds a new, empty data dir only",
            data_dir.display()
        ));
    }
    let file = snapshot::read_file(backup)?;
    let last = file
        .meta
        .last_log_id
        .ok_or_else(|| format!("{}: the backup holds no log position", backup.display()))?;
    let state = ClusterState::decode(file.data()).map_err(|e| {
        format!(
            "{}: the backup's state does not decode: {e}",
            backup.display()
        )
    })?;
    super::identity::open(data_dir, node_id)?;
    let copy = Applied {
        state,
        last_applied: Some(last),
        membership: file.meta.last_membership.clone(),
    };
    seed(data_dir, node_id, copy, members, None, 0).await
}

/// Rewrites the data dir of node `node_id` (a survivor of a cluster that lost its majority for
/// good) into a single-voter cluster of this node at `address`. A copy of the folder as it was is
/// kept beside it first (`<data_dir>.before-recover-<unix seconds>`).
pub async fn recover(data_dir: &Path, node_id: u64, address: &str) -> Result<Seeded, String> {
    if !data_dir.join("IDENTITY").is_file() {
        return Err(format!(
            "data dir {} has no IDENTITY file: recover works on a node's existing data dir",
            data_dir.display()
        ));
    }
    super::identity::open(data_dir, node_id)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut copy = data_dir.as_os_str().to_owned();
    copy.push(format!(".before-recover-{stamp}"));
    copy_dir(data_dir, Path::new(&copy))
        .map_err(|e| format!("cannot keep a copy of {}: {e}", data_dir.display()))?;
    tracing::info!(copy = %Path::new(&copy).display(), "kept a copy of the data dir");

    // The state as the survivor has it: its snapshot, then every entry of its log after it,
    // applied by the same code as in a running node.
    let mut state_machine = StateMachineStore::open(&data_dir.join("snapshots"))?;
    let mut log = LogStore::open(&data_dir.join("raft"))?;
    let log_state = log
        .get_log_state()
        .await
        .map_err(|e| format!("raft log: {e}"))?;
    let (applied, _) = state_machine
        .applied_state()
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    let from = applied.map_or(0, |id| id.index + 1);
    if applied.is_none() && log_state.last_purged_log_id.is_some() {
        return Err(
            "the raft log is purged but no snapshot covers it: the data dir is damaged".into(),
        );
    }
    let entries = log
        .try_get_log_entries(from..)
        .await
        .map_err(|e| format!("raft log: {e}"))?;
    if let Some(first) = entries.first()
        && first.log_id.index > from.max(1)
    {
        return Err(format!(
            "the raft log starts at {} but the snapshot ends at {}: the data dir is damaged",
            first.log_id.index,
            from.saturating_sub(1)
        ));
    }
    let applied_count = entries.len() as u64;
    let stream = futures::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    state_machine
        .apply(stream)
        .await
        .map_err(|e| format!("re-applying the log: {e}"))?;
    let view = state_machine.replica().view();
    let last = view
        .last_applied
        .ok_or("the data dir holds no state at all: nothing to recover")?;
    drop(state_machine);
    // The log is now in the snapshot: purge it whole so the new membership is the only one.
    log.purge(last)
        .await
        .map_err(|e| format!("raft log: {e}"))?;
    drop(log);
    let members = BTreeMap::from([(node_id, address.to_owned())]);
    seed(
        data_dir,
        node_id,
        view,
        &members,
        Some(NodeId(node_id)),
        applied_count,
    )
    .await
}

/// Writes `copy` (a state at a log position, with the membership it had there) as the data dir's
/// only snapshot, with the membership `members`, and a vote at the last entry's term.
async fn seed(
    data_dir: &Path,
    node_id: u64,
    copy: Applied,
    members: &BTreeMap<u64, String>,
    survivor: Option<NodeId>,
    log_entries_applied: u64,
) -> Result<Seeded, String> {
    let Applied {
        mut state,
        last_applied,
        membership: previous,
    } = copy;
    let last = last_applied.ok_or("the copy holds no log position")?;
    // What the operator compares with the backup's (`snapshot save`) or the survivor's hash.
    let state_hash = hex::encode(state.state_hash());
    // The new membership first, as a command: `reseed` must stay the last change before the
    // new cluster's first entry (that entry's time is what its id skip counts from).
    let command = Command::Membership {
        previous: member_ids(previous.membership()),
        members: members.keys().map(|&id| NodeId(id)).collect(),
    };
    state.apply(
        ApplyCtx { index: last.index },
        LogEntry {
            time_ms: 0,
            command,
        },
    );
    state.reseed(survivor);
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let membership =
        Membership::new(vec![voters], nodes).map_err(|e| format!("new membership: {e}"))?;
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
    };
    let data = state.encode();
    let snapshot_dir = data_dir.join("snapshots");
    super::durable::create_dir_all(&snapshot_dir)
        .map_err(|e| format!("cannot create {}: {e}", snapshot_dir.display()))?;
    snapshot::write(&snapshot_dir, &meta, &data)
        .map_err(|e| format!("writing the snapshot: {e}"))?;
    let mut log = LogStore::open(&data_dir.join("raft"))?;
    let vote = log
        .read_vote()
        .await
        .map_err(|e| format!("raft log: {e}"))?;
    if vote.is_none_or(|v| v.leader_id.term < last.leader_id.term) {
        log.save_vote(&Vote::new(last.leader_id.term, node_id))
            .await
            .map_err(|e| format!("raft log: {e}"))?;
    }
    Ok(Seeded {
        index: last.index,
        term: last.leader_id.term,
        state_hash,
        members: members.clone(),
        log_entries_applied,
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
