//! A workflow's life after it ends: its durable history, kept in the state with it, and its
//! purge once its retention has passed (see [`Command::Purge`]).
//!
//! **History.** Every event `apply` derives for a workflow is also appended to that workflow's
//! `history` (length-delimited protobuf), in the order and with the
//! index it was published with. It lives in the state, so it is the same on every replica, in
//! snapshots and across restarts, until the workflow is purged; `GetHistory` and a Watch of one
//! workflow read it.
//!
//! **Purge.** A finished workflow is due once `finished_at_ms + retention` is at or before the
//! state's time, where retention is its spec's `retention_ms` or, when 0, the default the leader
//! put in the command. The leader finds due workflows through [`PurgeIndex`] (derived, O(log n)
//! a round) and proposes at most [`PURGE_BATCH_MAX`] per command; apply checks each again. A
//! purged workflow leaves a [`PurgeRecord`] (its purge time and idempotency key) for the
//! idempotency window, so a retried submit still gets its id back and `Get` can say when it
//! went; later purges forget records past the window, at most [`PURGE_RECORDS_MAX`] a command.

use std::sync::Arc;

use baton_proto::v1 as pb;
use imbl::OrdSet;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::command::{Command, LogEntry, PurgeCommand, Response};
use super::ids::WorkflowId;
use super::workflow::Workflow;
use super::{ApplyCtx, ClusterState, Events};

/// Workflows one purge command removes at most: the leader's entry stays small, and an archive
/// writes one file per entry.
pub const PURGE_BATCH_MAX: usize = 256;
/// Purge records one command forgets at most.
pub const PURGE_RECORDS_MAX: usize = 4096;

/// What is left of a purged workflow for the idempotency window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub purged_at_ms: u64,
    /// Its idempotency key as the key index holds it (scoped by namespace; empty: none), still
    /// mapped to its id there.
    pub idempotency_key: Arc<str>,
}

/// Finished workflows and purge records by the time they fall due (derived from the state:
/// rebuilt by `decode`, checked by the invariants, never encoded).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PurgeIndex {
    /// Finished workflows that take the cluster default retention, by finish time.
    by_finish: OrdSet<(u64, WorkflowId)>,
    /// Finished workflows with a retention of their own, by the time it ends.
    by_deadline: OrdSet<(u64, WorkflowId)>,
    /// Purge records, by purge time.
    records: OrdSet<(u64, WorkflowId)>,
}

impl PurgeIndex {
    fn key(workflow: &Workflow) -> (bool, (u64, WorkflowId)) {
        match workflow.spec.retention_ms {
            0 => (false, (workflow.finished_at_ms, workflow.id)),
            own => (
                true,
                (workflow.finished_at_ms.saturating_add(own), workflow.id),
            ),
        }
    }

    fn insert(&mut self, workflow: &Workflow) {
        match Self::key(workflow) {
            (false, key) => self.by_finish.insert(key),
            (true, key) => self.by_deadline.insert(key),
        };
    }

    fn remove(&mut self, workflow: &Workflow) {
        match Self::key(workflow) {
            (false, key) => self.by_finish.remove(&key),
            (true, key) => self.by_deadline.remove(&key),
        };
    }
}

/// What the leader's round found due: see [`ClusterState::purge_due`].
#[derive(Debug, Default, PartialEq)]
pub struct PurgeDue {
    pub workflows: Vec<WorkflowId>,
    /// Some purge record is past the idempotency window.
    pub records: bool,
}

impl PurgeDue {
    pub fn is_empty(&self) -> bool {
        self.workflows.is_empty() && !self.records
    }
}

/// How long `workflow` is kept once finished.
pub fn retention_ms(workflow: &Workflow, default_retention_ms: u64) -> u64 {
    match workflow.spec.retention_ms {
        0 => default_retention_ms,
        own => own,
    }
}

impl ClusterState {
    /// [`Command::Purge`].
    pub(super) fn purge(
        &mut self,
        ctx: ApplyCtx,
        purge: PurgeCommand,
        events: &mut Events,
    ) -> Response {
        let now_ms = self.now_ms;
        let mut workflows = 0;
        for id in purge.workflows {
            let Some(workflow) = self.workflows.get(&id) else {
                continue;
            };
            if !self.purge_is_due(workflow, purge.default_retention_ms, now_ms) {
                continue;
            }
            let workflow = self.workflows.remove(&id).expect("checked above");
            self.purge_index.remove(&workflow);
            self.purge_records.insert(
                id,
                PurgeRecord {
                    purged_at_ms: now_ms,
                    idempotency_key: workflow.index_key(),
                },
            );
            self.purge_index.records.insert((now_ms, id));
            let retention = retention_ms(&workflow, purge.default_retention_ms);
            events.push(self.event(ctx, id, pb::EventKind::WorkflowPurged, |e| {
                if !super::namespaces::is_default(&workflow.namespace) {
                    e.namespace = workflow.namespace.to_string();
                }
                e.workflow_state = workflow.state.to_proto() as i32;
                e.message = format!(
                    "retention of {} ended",
                    baton_proto::spec::format_duration_ms(retention)
                );
            }));
            workflows += 1;
        }
        let mut records = 0;
        while records < PURGE_RECORDS_MAX as u32
            && let Some(&(purged_at_ms, id)) = self.purge_index.records.get_min()
            && purged_at_ms.saturating_add(purge.idempotency_window_ms) <= now_ms
        {
            self.purge_index.records.remove(&(purged_at_ms, id));
            if let Some(record) = self.purge_records.remove(&id)
                && !record.idempotency_key.is_empty()
                && self.idempotency_keys.get(&record.idempotency_key) == Some(&id)
            {
                self.idempotency_keys.remove(&record.idempotency_key);
            }
            records += 1;
        }
        Response::Purged { workflows, records }
    }

    /// Whether `workflow` has finished and its retention has passed by `now_ms`.
    /// A workflow whose stopped attempts still hold their concurrency keys (`keys.rs`) stays
    /// until they are given back, at most a lease later.
    fn purge_is_due(&self, workflow: &Workflow, default_retention_ms: u64, now_ms: u64) -> bool {
        workflow.state.is_terminal()
            && !self.drains_of(workflow.id)
            && workflow
                .finished_at_ms
                .saturating_add(retention_ms(workflow, default_retention_ms))
                <= now_ms
    }

    /// For the leader's round: workflows due at `now_ms` (at most `max`, oldest due first), and
    /// whether purge records are past `window_ms`. O(log n + max).
    pub fn purge_due(
        &self,
        now_ms: u64,
        default_retention_ms: u64,
        window_ms: u64,
        max: usize,
    ) -> PurgeDue {
        let by_finish = self
            .purge_index
            .by_finish
            .iter()
            .take_while(|(finished, _)| finished.saturating_add(default_retention_ms) <= now_ms)
            .map(|(_, id)| *id);
        let by_deadline = self
            .purge_index
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now_ms)
            .map(|(_, id)| *id);
        // Not those whose stopped attempts still hold keys (`purge_is_due` refuses them).
        let workflows = by_finish
            .chain(by_deadline)
            .filter(|id| !self.drains_of(*id))
            .take(max)
            .collect();
        let records = self
            .purge_index
            .records
            .get_min()
            .is_some_and(|(at, _)| at.saturating_add(window_ms) <= now_ms);
        PurgeDue { workflows, records }
    }

    /// The workflows applying `entry` at `index` will purge, in the order it purges them, as
    /// they are before it, each with the retention that ended, and the state time of the purge:
    /// what an archive must hold before the entry is applied. Found by applying the entry to an
    /// O(1) copy of the state and reading its `WORKFLOW_PURGED` events, so it is exactly what the
    /// entry will do, whatever else it holds (a retry of the same workflow before the purge, in
    /// one batch, keeps it). Pure, like `apply`; entries without a purge cost nothing.
    pub fn workflows_to_purge(
        &self,
        index: u64,
        entry: &LogEntry,
    ) -> (u64, Vec<(Arc<Workflow>, u64)>) {
        let now_ms = self.now_ms.max(entry.time_ms);
        if !entry.command.purges() {
            return (now_ms, Vec::new());
        }
        let commands: &[Command] = match &entry.command {
            Command::Batch(commands) => commands,
            command => std::slice::from_ref(command),
        };
        let mut probe = self.clone();
        let applied = probe.apply(ApplyCtx { index }, entry.clone());
        let doomed = applied
            .events
            .iter()
            .filter(|e| e.kind == pb::EventKind::WorkflowPurged as i32)
            .filter_map(|e| {
                let id = WorkflowId(e.workflow_id);
                let workflow = self.workflows.get(&id)?;
                // The default of the first purge naming it: the one that purged it.
                let default_ms = commands
                    .iter()
                    .find_map(|c| match c {
                        Command::Purge(p) if p.workflows.contains(&id) => {
                            Some(p.default_retention_ms)
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                Some((workflow.clone(), retention_ms(workflow, default_ms)))
            })
            .collect();
        (now_ms, doomed)
    }

    /// What is left of a purged workflow, while its record is kept.
    pub fn purge_record(&self, id: WorkflowId) -> Option<&PurgeRecord> {
        self.purge_records.get(&id)
    }

    /// Whether `id` was handed out: a workflow that is not in the state was purged (or, after a
    /// restore, skipped).
    pub fn was_handed_out(&self, id: WorkflowId) -> bool {
        id.0 >= 1 && id.0 <= self.last_workflow_id
    }

    /// The history of workflow `id`, oldest first, each event as it was published.
    pub fn history(&self, id: WorkflowId) -> Option<Vec<pb::WorkflowEvent>> {
        let workflow = self.workflows.get(&id)?;
        Some(decode_history(workflow))
    }

    /// Appends the events one command derived to their workflows' histories, and keeps the
    /// derived indexes that follow a workflow's life (purge order, timeouts). Called after each command, so a batch records
    /// exactly what consecutive entries would.
    /// An event of a namespace other than `default` is published with its namespace (watchers
    /// filter on it); the history leaves it out, since its workflow says it.
    pub(super) fn record_history(&mut self, events: &mut [pb::WorkflowEvent]) {
        for event in events {
            if event.kind == pb::EventKind::WorkflowPurged as i32 {
                continue;
            }
            let Some(workflow) = self.workflows.get_mut(&WorkflowId(event.workflow_id)) else {
                continue;
            };
            let workflow = Arc::make_mut(workflow);
            event
                .encode_length_delimited(&mut workflow.history)
                .expect("a Vec grows as needed");
            if !super::namespaces::is_default(&workflow.namespace) {
                event.namespace = workflow.namespace.to_string();
            }
            // The derived indexes follow the workflow's life: a deadline from submit or retry
            // (see `actions.rs`), a place in the purge order once it finished.
            let deadline = (workflow.deadline_ms, workflow.id);
            match event.kind() {
                pb::EventKind::WorkflowSubmitted | pb::EventKind::WorkflowRetried
                    if deadline.0 != 0 =>
                {
                    self.timeouts.insert(deadline);
                }
                pb::EventKind::WorkflowFinished => {
                    workflow.history.shrink_to_fit();
                    self.purge_index.insert(workflow);
                    self.timeouts.remove(&deadline);
                }
                _ => {}
            }
        }
    }

    /// Takes workflow `id` out of the purge order (a retry makes it run again).
    pub(super) fn purge_index_remove(&mut self, id: WorkflowId) {
        if let Some(workflow) = self.workflows.get(&id)
            && workflow.state.is_terminal()
        {
            self.purge_index.remove(workflow);
        }
    }

    /// The purge index as the workflows and records say it should be.
    pub(super) fn derive_purge_index(&self) -> PurgeIndex {
        let mut index = PurgeIndex::default();
        for workflow in self.workflows.values() {
            if workflow.state.is_terminal() {
                index.insert(workflow);
            }
        }
        for (id, record) in &self.purge_records {
            index.records.insert((record.purged_at_ms, *id));
        }
        index
    }

    /// Purge records against the workflows and the key index: O(records).
    pub(super) fn check_purge_records(&self) {
        for (id, record) in &self.purge_records {
            assert!(
                !self.workflows.contains_key(id),
                "workflow {id} is both present and purged"
            );
            assert!(
                id.0 <= self.last_workflow_id,
                "purge record {id} beyond last"
            );
            if !record.idempotency_key.is_empty() {
                assert_eq!(
                    self.idempotency_keys.get(&record.idempotency_key),
                    Some(id),
                    "purged workflow {id}: its idempotency key maps elsewhere"
                );
            }
        }
        assert_eq!(
            self.purge_index,
            self.derive_purge_index(),
            "the purge index does not match the workflows and records"
        );
    }
}

/// A workflow's history as events.
pub fn decode_history(workflow: &Workflow) -> Vec<pb::WorkflowEvent> {
    let mut bytes = workflow.history.as_slice();
    let mut events = Vec::new();
    while !bytes.is_empty() {
        // Written by `append_event` on this replica or another: it decodes, or the state is
        // corrupt (a snapshot's checksum caught that before).
        let Ok(mut event) = pb::WorkflowEvent::decode_length_delimited(&mut bytes) else {
            break;
        };
        if !super::namespaces::is_default(&workflow.namespace) {
            event.namespace = workflow.namespace.to_string();
        }
        events.push(event);
    }
    events
}
