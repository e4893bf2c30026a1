//! The state machine store: the only caller of [`ClusterState::apply`] for committed entries (through
//! [`faults::apply`], which is that call itself but in a broken build), snapshot building and
//! installing, and the shared read view the API serves from.
//!
//! The state lives in memory and is made durable by the log plus snapshot files: after a restart
//! it is the newest snapshot, and openraft re-applies the committed entries after it. So
//! `applied_state` only ever reports what is durable.
//!
//! Snapshots do not block writes: the builder takes an O(1) clone of the persistent maps under a
//! short read lock, then encodes and writes it on a blocking thread while `apply` goes on. Data and
//! metadata come from that one clone, so a snapshot never claims an index its data does not match.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use parking_lot::{Mutex, RwLock};

use super::archive::Archive;
use super::events::EventLog;
use super::snapshot;
use crate::raft::types::{
    LogId, Membership, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::state::{ApplyCtx, ClusterState, Command, LogEntry, NodeId, PeerView, Response};
use crate::{faults, metrics};

/// What has been applied: the state, and the log position and membership it reflects.
#[derive(Clone, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared between the state machine (the writer) and API readers.
#[derive(Default)]
pub struct Replica {
    applied: RwLock<Applied>,
    /// The state hash at an applied index, computed on demand and kept until the index moves.
    hash_cache: Mutex<Option<(u64, [u8; 32])>>,
    /// Events of applied entries, for Watch.
    pub events: EventLog,
    /// Wakes the scheduler loop (its only waiter) when something was applied. `notify_one`
    /// keeps a permit when the loop is busy in a round, so an entry applied meanwhile is seen
    /// by the next round at once instead of after the loop's fallback timer.
    pub applied_notify: tokio::sync::Notify,
    /// The term this node currently leads, if it leads (set once Raft runs). Decides which
    /// applied entries this node counts in the workflow metrics (see `metrics`).
    leader_term: OnceLock<LeaderTerm>,
    /// What the Raft transport reads on every message, refreshed after each apply: under its own
    /// lock, never held long, so sending and admitting appends never waits behind an apply.
    peer_view: RwLock<Arc<PeerView>>,
}

/// Reads this node's current leadership from Raft: `Some(term)` while it is the leader.
pub type LeaderTerm = Box<dyn Fn() -> Option<u64> + Send + Sync>;

impl Replica {
    /// The cluster id, bound incarnations and removed ids as of the last apply.
    pub fn peer_view(&self) -> Arc<PeerView> {
        self.peer_view.read().clone()
    }

    fn refresh_peer_view(&self) {
        let view = Arc::new(self.applied.read().state.peer_view());
        *self.peer_view.write() = view;
    }

    /// Runs `f` on the applied state under a read lock. Keep `f` short: apply waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read())
    }

    /// An O(1) point-in-time copy, for work too long to do under the lock.
    pub fn view(&self) -> Applied {
        self.applied.read().clone()
    }

    /// Connects the replica to Raft's view of leadership; later calls are ignored.
    pub fn set_leader_term(&self, leader_term: LeaderTerm) {
        let _ = self.leader_term.set(leader_term);
    }

    /// Whether this node counts an entry of `term` in the workflow metrics: only the leader of
    /// that term does, while it still leads. So every entry is counted at most once in the
    /// cluster, and a node re-applying its log after a restart (it leads no old term) counts
    /// nothing twice.
    fn counts_entry_of(&self, term: u64) -> bool {
        self.leader_term
            .get()
            .is_some_and(|leader_term| leader_term() == Some(term))
    }

    pub fn last_applied_index(&self) -> u64 {
        self.applied.read().last_applied.map_or(0, |id| id.index)
    }

    /// The applied index and the state hash there. Hashing is O(state) and runs outside the lock.
    pub fn state_hash(&self) -> (u64, [u8; 32]) {
        let view = self.view();
        let index = view.last_applied.map_or(0, |id| id.index);
        if let Some((cached_index, hash)) = *self.hash_cache.lock()
            && cached_index == index
        {
            return (index, hash);
        }
        let hash = view.state.state_hash();
        *self.hash_cache.lock() = Some((index, hash));
        (index, hash)
    }
}

/// The voters' and learners' ids of a membership.
pub fn member_ids(membership: &Membership) -> Vec<NodeId> {
    membership.nodes().map(|(id, _)| NodeId(*id)).collect()
}

pub struct StateMachineStore {
    replica: Arc<Replica>,
    snapshot_dir: PathBuf,
    /// Where purged workflows are written before a purge applies (`--archive-dir`).
    archive: Option<Archive>,
}

impl StateMachineStore {
    /// Opens the store over `snapshot_dir`, loading the newest snapshot if there is one.
    pub fn open(snapshot_dir: &Path) -> Result<Self, String> {
        super::durable::create_dir_all(snapshot_dir)
            .map_err(|e| format!("cannot create {}: {e}", snapshot_dir.display()))?;
        let mut applied = Applied::default();
        let started = std::time::Instant::now();
        if let Some(file) = snapshot::read_latest(snapshot_dir)
            .map_err(|e| format!("cannot read the latest snapshot: {e}"))?
        {
            let read = started.elapsed();
            applied.state = ClusterState::decode(file.data()).map_err(|e| {
                format!(
                    "snapshot in {} does not decode: {e}",
                    snapshot_dir.display()
                )
            })?;
            applied.last_applied = file.meta.last_log_id;
            applied.membership = file.meta.last_membership.clone();
            tracing::info!(
                index = file.meta.last_log_id.map_or(0, |id| id.index),
                bytes = file.data().len(),
                workflows = applied.state.workflow_count(),
                read_ms = read.as_millis() as u64,
                decode_ms = (started.elapsed() - read).as_millis() as u64,
                "state loaded from snapshot"
            );
        }
        // The events of the entries the snapshot holds are never published here.
        let next_index = applied.last_applied.map_or(1, |id| id.index + 1);
        Ok(Self {
            replica: Arc::new(Replica {
                peer_view: RwLock::new(Arc::new(applied.state.peer_view())),
                applied: RwLock::new(applied),
                hash_cache: Mutex::new(None),
                events: EventLog::starting_at(next_index),
                applied_notify: tokio::sync::Notify::new(),
                leader_term: OnceLock::new(),
            }),
            snapshot_dir: snapshot_dir.to_owned(),
            archive: None,
        })
    }

    /// Archives every workflow a purge entry removes before applying it (see `archive`).
    pub fn with_archive(mut self, archive: Option<Archive>) -> Self {
        self.archive = archive;
        self
    }

    /// Writes what `entry` purges to the archive, if this node keeps one. Read from the applied
    /// state under a short read lock (this store is its only writer, so the entry applies to
    /// exactly that state), and written before the write lock is taken: readers never wait on
    /// the archive's fsync.
    fn archive_purged(&self, index: u64, entry: &LogEntry) -> io::Result<()> {
        let Some(archive) = &self.archive else {
            return Ok(());
        };
        if !entry.command.purges() {
            return Ok(());
        }
        let (purged_at_ms, doomed) = self
            .replica
            .read(|applied| applied.state.workflows_to_purge(index, entry));
        if doomed.is_empty() {
            return Ok(());
        }
        archive.write(index, purged_at_ms, &doomed)
    }

    pub fn replica(&self) -> Arc<Replica> {
        self.replica.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self
            .replica
            .read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            if let EntryPayload::Normal(log_entry) = &entry.payload {
                // An error stops the Raft core before the purge applies (see `archive`).
                self.archive_purged(entry.log_id.index, log_entry)?;
            }
            let response = {
                let mut applied = self.replica.applied.write();
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(log_entry) => {
                        let result = faults::apply(
                            &mut applied.state,
                            ApplyCtx {
                                index: entry.log_id.index,
                            },
                            log_entry,
                        );
                        // Metrics come from what apply returned, never from inside it.
                        if self.replica.counts_entry_of(entry.log_id.leader_id.term) {
                            metrics::applied_events(&applied.state, &result.events);
                        }
                        self.replica.events.publish(result.events);
                        result.response
                    }
                    EntryPayload::Membership(membership) => {
                        // Into the state as a command like any other (no time: the state's
                        // clock moves only with the leader's stamps).
                        let command = Command::Membership {
                            previous: member_ids(applied.membership.membership()),
                            members: member_ids(&membership),
                        };
                        let result = faults::apply(
                            &mut applied.state,
                            ApplyCtx {
                                index: entry.log_id.index,
                            },
                            LogEntry {
                                time_ms: 0,
                                command,
                            },
                        );
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        result.response
                    }
                }
            };
            metrics::applied_index(entry.log_id.index);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        self.replica.refresh_peer_view();
        self.replica.applied_notify.notify_one();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            view: self.replica.view(),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        // Decode before touching anything: a bad snapshot leaves the replica as it was. Off the
        // runtime: a big state takes seconds.
        let dir = self.snapshot_dir.clone();
        let file_meta = meta.clone();
        let state = tokio::task::spawn_blocking(move || -> io::Result<ClusterState> {
            let data = snapshot.into_bytes()?;
            let state = ClusterState::decode(&data).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("received snapshot does not decode: {e}"),
                )
            })?;
            snapshot::write(&dir, &file_meta, &data)?;
            Ok(state)
        })
        .await
        .map_err(io::Error::other)??;
        let mut applied = self.replica.applied.write();
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        drop(applied);
        self.replica
            .events
            .skipped_to(meta.last_log_id.map_or(0, |id| id.index));
        self.replica.refresh_peer_view();
        metrics::applied_index(meta.last_log_id.map_or(0, |id| id.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.snapshot_dir.clone();
        let latest = tokio::task::spawn_blocking(move || snapshot::latest_meta(&dir))
            .await
            .map_err(io::Error::other)??;
        Ok(latest.map(|(meta, path)| Snapshot {
            meta,
            snapshot: SnapshotData::File(path),
        }))
    }
}

/// Builds a snapshot from a point-in-time view taken when openraft asked for the builder.
pub struct SnapshotBuilder {
    view: Applied,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let meta = SnapshotMeta {
            last_log_id: self.view.last_applied,
            last_membership: self.view.membership.clone(),
        };
        let state = self.view.state.clone();
        let dir = self.snapshot_dir.clone();
        let file_meta = meta.clone();
        let started = std::time::Instant::now();
        // The data is dropped once written: openraft keeps only the metadata of what it built.
        let (path, bytes) = tokio::task::spawn_blocking(move || -> io::Result<(PathBuf, usize)> {
            let data = state.encode();
            Ok((snapshot::write(&dir, &file_meta, &data)?, data.len()))
        })
        .await
        .map_err(io::Error::other)??;
        metrics::snapshot_built(
            meta.last_log_id.map_or(0, |id| id.index),
            bytes,
            started.elapsed(),
        );
        tracing::info!(
            index = meta.last_log_id.map_or(0, |id| id.index),
            bytes,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::File(path),
        })
    }
}
