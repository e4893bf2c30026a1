//! The audit trail of changes to what the cluster holds besides workflows: tokens, namespaces,
//! templates, schedules, triggers and members, each with who asked.
//!
//! The API wraps each such command in [`Command::Audited`] with the caller's identity (the
//! bearer token's name and id, the client certificate's; `security::actor`). Applying it applies
//! the command, and when the command changed something, appends an [`AuditEntry`] to a ring in
//! the replicated state: the last [`AUDIT_ENTRIES_MAX`], so snapshots stay bounded however long
//! the cluster lives. Membership changes are made by Raft itself, so the API records them after
//! they complete with a [`Command::Note`].
//!
//! What is done to workflows (submit, cancel, pause, resume, retry, signal) is not here: each is
//! an event with its actor in the workflow's own history, kept as long as the workflow (and
//! archived with it). `baton audit` reads both.

use serde::{Deserialize, Serialize};

use super::command::{Command, Response};
use super::namespaces::split_scoped;
use super::{ApplyCtx, ClusterState, Events};
use baton_proto::v1 as pb;
use prost::Message;

/// How many audit entries the state keeps; the oldest go first.
pub const AUDIT_ENTRIES_MAX: usize = 10_000;

/// One change and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log index of the entry that made the change.
    pub index: u64,
    /// The state's time when it applied.
    pub time_ms: u64,
    /// Who asked (`token NAME (ID) via CERTIFICATE`); empty on an insecure cluster.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// The namespace it changed; empty: the cluster's own (tokens, members, namespaces).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// What was done: `token.create`, `namespace.delete`, `schedule.pause`, `member.add`...
    pub action: String,
    /// What it was done to: a name, an id.
    pub target: String,
    /// Anything else worth knowing (a role, a quota, a range).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A change made outside the state machine, recorded by [`Command::Note`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteCommand {
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What an audited command is about: (namespace, action, target, detail).
type About = (String, &'static str, String, String);

impl ClusterState {
    /// [`Command::Audited`]: applies `command`, and records it with `actor` if it changed
    /// anything.
    pub(super) fn audited(
        &mut self,
        ctx: ApplyCtx,
        actor: String,
        command: Command,
        events: &mut Events,
    ) -> Response {
        if matches!(command, Command::Audited { .. } | Command::Batch(_)) {
            return Response::Rejected {
                reason: "an audited command holds one command".into(),
            };
        }
        let about = self.about(&command);
        let response = self.execute(ctx, command, events);
        if let Some((namespace, action, target, detail)) = about
            && changed(&response)
        {
            self.record(
                ctx,
                AuditEntry {
                    index: ctx.index,
                    time_ms: self.now_ms,
                    actor,
                    namespace,
                    action: action.to_owned(),
                    target,
                    detail,
                },
            );
        }
        response
    }

    /// [`Command::Note`].
    pub(super) fn note(&mut self, ctx: ApplyCtx, note: NoteCommand) -> Response {
        self.record(
            ctx,
            AuditEntry {
                index: ctx.index,
                time_ms: self.now_ms,
                actor: note.actor,
                namespace: String::new(),
                action: note.action,
                target: note.target,
                detail: note.detail,
            },
        );
        Response::Done
    }

    fn record(&mut self, _ctx: ApplyCtx, entry: AuditEntry) {
        let seq = self.audit.get_max().map_or(1, |(seq, _)| seq + 1);
        self.audit.insert(seq, entry);
        while self.audit.len() > AUDIT_ENTRIES_MAX
            && let Some((oldest, _)) = self.audit.get_min()
        {
            let oldest = *oldest;
            self.audit.remove(&oldest);
        }
    }

    /// The audit entries kept, oldest first.
    pub fn audit_entries(&self) -> impl DoubleEndedIterator<Item = &AuditEntry> {
        self.audit.values()
    }

    /// What `command` changes, described for the trail; None for a command that is not
    /// audited (workflow commands, the leader's own).
    fn about(&self, command: &Command) -> Option<About> {
        let scoped = |scoped: &str| {
            let (namespace, name) = split_scoped(scoped);
            (cluster_namespace(namespace), name.to_owned())
        };
        let in_namespace =
            |namespace: &str| cluster_namespace(super::namespaces::or_default(namespace));
        Some(match command {
            Command::CreateToken(create) => {
                let detail = if create.namespaces.is_empty() {
                    format!("role {}", create.role)
                } else {
                    let grants: Vec<String> = create
                        .namespaces
                        .iter()
                        .map(|(namespace, role)| format!("{namespace}={role}"))
                        .collect();
                    format!("roles {}", grants.join(", "))
                };
                (
                    String::new(),
                    "token.create",
                    format!("{} ({})", create.name, create.id),
                    detail,
                )
            }
            Command::RevokeToken { id } => {
                let target = match self.live_token(id) {
                    Some(record) => format!("{} ({id})", record.name),
                    None => id.clone(),
                };
                (String::new(), "token.revoke", target, String::new())
            }
            Command::CreateNamespace(create) => (
                String::new(),
                "namespace.create",
                create.name.clone(),
                format!("weight {}", create.weight.max(1)),
            ),
            Command::UpdateNamespace(update) => {
                let mut changes = Vec::new();
                if update.description.is_some() {
                    changes.push("description".to_owned());
                }
                for (name, value) in [
                    ("max_running_workflows", update.running_workflows),
                    ("max_active_steps", update.active_steps),
                    (
                        "submits_per_second",
                        update.submits_per_second.map(u64::from),
                    ),
                    ("submit_burst", update.submit_burst.map(u64::from)),
                    ("weight", update.weight.map(u64::from)),
                ] {
                    if let Some(value) = value {
                        changes.push(format!("{name}={value}"));
                    }
                }
                (
                    String::new(),
                    "namespace.update",
                    update.name.clone(),
                    changes.join(", "),
                )
            }
            Command::DeleteNamespace { name } => (
                String::new(),
                "namespace.delete",
                name.clone(),
                String::new(),
            ),
            Command::ApplyTemplate(apply) => {
                let name = pb::WorkflowSpec::decode(apply.spec.as_slice())
                    .map(|s| s.name)
                    .unwrap_or_default();
                (
                    in_namespace(&apply.namespace),
                    "template.apply",
                    name,
                    String::new(),
                )
            }
            Command::DeleteTemplate { name } => {
                let (namespace, name) = scoped(name);
                (namespace, "template.delete", name, String::new())
            }
            Command::CreateSchedule(create) => {
                let name = pb::ScheduleSpec::decode(create.spec.as_slice())
                    .map(|s| s.name)
                    .unwrap_or_default();
                let action = if create.replace {
                    "schedule.replace"
                } else {
                    "schedule.create"
                };
                (in_namespace(&create.namespace), action, name, String::new())
            }
            Command::PauseSchedule(pause) => {
                let (namespace, name) = scoped(&pause.name);
                let action = if pause.paused {
                    "schedule.pause"
                } else {
                    "schedule.resume"
                };
                (namespace, action, name, String::new())
            }
            Command::DeleteSchedule { name } => {
                let (namespace, name) = scoped(name);
                (namespace, "schedule.delete", name, String::new())
            }
            Command::TriggerSchedule { name } => {
                let (namespace, name) = scoped(name);
                (namespace, "schedule.trigger", name, String::new())
            }
            Command::BackfillSchedule(backfill) => {
                let (namespace, name) = scoped(&backfill.name);
                (
                    namespace,
                    "schedule.backfill",
                    name,
                    format!("from {} to {} (ms)", backfill.from_ms, backfill.to_ms),
                )
            }
            Command::CreateTrigger(create) => {
                let name = pb::TriggerSpec::decode(create.spec.as_slice())
                    .map(|s| s.name)
                    .unwrap_or_default();
                let action = if create.replace {
                    "trigger.replace"
                } else {
                    "trigger.create"
                };
                (in_namespace(&create.namespace), action, name, String::new())
            }
            Command::DeleteTrigger { name } => {
                let (namespace, name) = scoped(name);
                (namespace, "trigger.delete", name, String::new())
            }
            _ => return None,
        })
    }
}

/// A namespace as the trail shows it: `default` for `default`'s templates and schedules.
fn cluster_namespace(namespace: &str) -> String {
    super::namespaces::or_default(namespace).to_owned()
}

/// Whether a command's response says it changed the state.
fn changed(response: &Response) -> bool {
    match response {
        Response::Rejected { .. }
        | Response::NotFound { .. }
        | Response::NoTemplate { .. }
        | Response::NoSchedule { .. }
        | Response::NoTrigger { .. }
        | Response::TriggerExists { .. }
        | Response::NamespaceExists { .. }
        | Response::NoNamespace { .. }
        | Response::OverQuota(_) => false,
        Response::TokenRevoked { was_live } => *was_live,
        Response::ScheduleChanged { changed } => *changed,
        Response::TemplateApplied { created, .. } => *created,
        _ => true,
    }
}

/// What `baton audit` asks for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Changes at or after this time.
    pub since_ms: u64,
    /// Workflow, template, schedule and trigger changes only of these namespaces; None: of
    /// every one.
    pub namespaces: Option<std::collections::BTreeSet<String>>,
    /// Whether the cluster's own changes (tokens, namespaces, members) are included.
    pub cluster: bool,
    /// At most this many, newest first.
    pub limit: usize,
}

impl ClusterState {
    /// The audit trail the query selects, newest first: the state's trail of changes, and the
    /// changes to workflows (submits, cancels, pauses, resumes, retries, signals) from the
    /// histories of the workflows it holds. O(workflows) to filter; a workflow's history is read
    /// only if it may hold a change newer than the `limit` found so far.
    pub fn audit_records(&self, query: &AuditQuery) -> Vec<pb::AuditRecord> {
        let readable = |namespace: &str| {
            query
                .namespaces
                .as_ref()
                .is_none_or(|set| set.contains(namespace))
        };
        let mut records: Vec<pb::AuditRecord> = self
            .audit
            .values()
            .filter(|e| e.time_ms >= query.since_ms)
            .filter(|e| match e.namespace.is_empty() {
                true => query.cluster,
                false => readable(&e.namespace),
            })
            .map(|e| pb::AuditRecord {
                index: e.index,
                time_ms: e.time_ms,
                actor: e.actor.clone(),
                namespace: e.namespace.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                detail: e.detail.clone(),
                workflow_id: 0,
            })
            .collect();
        // The time of the `limit`-th newest record so far: a workflow whose last possible change
        // is older cannot add one (a running workflow can change any time).
        let mut times: std::collections::BinaryHeap<std::cmp::Reverse<u64>> = records
            .iter()
            .map(|r| std::cmp::Reverse(r.time_ms))
            .collect();
        let trim = |times: &mut std::collections::BinaryHeap<std::cmp::Reverse<u64>>| {
            while times.len() > query.limit {
                times.pop();
            }
        };
        trim(&mut times);
        for workflow in self.workflows.values().rev() {
            if !readable(&workflow.namespace) {
                continue;
            }
            let latest_ms = match workflow.state.is_terminal() {
                true => workflow.finished_at_ms,
                false => u64::MAX,
            };
            let kth = match times.len() >= query.limit {
                true => times.peek().map_or(0, |t| t.0),
                false => 0,
            };
            if latest_ms < query.since_ms || latest_ms < kth {
                continue;
            }
            for event in super::lifecycle::decode_history(workflow) {
                if event.time_ms < query.since_ms {
                    continue;
                }
                // Older than the `limit` newest so far: it would be cut.
                if times.len() >= query.limit && times.peek().is_some_and(|t| event.time_ms < t.0) {
                    continue;
                }
                let Some((action, detail)) = workflow_change(workflow, &event) else {
                    continue;
                };
                times.push(std::cmp::Reverse(event.time_ms));
                trim(&mut times);
                records.push(pb::AuditRecord {
                    index: event.index,
                    time_ms: event.time_ms,
                    actor: event.actor,
                    namespace: workflow.namespace.to_string(),
                    action: action.to_owned(),
                    target: format!("workflow {} ({})", workflow.id, workflow.spec.name),
                    detail,
                    workflow_id: workflow.id.0,
                });
                // Bounded however many changes match: cut to the newest from time to time.
                if records.len() >= 2 * query.limit.max(1) {
                    records.sort_by_key(|r| std::cmp::Reverse((r.time_ms, r.index)));
                    records.truncate(query.limit);
                }
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse((r.time_ms, r.index)));
        records.truncate(query.limit);
        records
    }
}

/// The change an event of a workflow's history records, if it is one someone asked for:
/// (action, detail).
fn workflow_change(
    workflow: &super::Workflow,
    event: &pb::WorkflowEvent,
) -> Option<(&'static str, String)> {
    use pb::EventKind as K;
    Some(match event.kind() {
        K::WorkflowSubmitted => ("workflow.submit", String::new()),
        K::WorkflowFinished if event.workflow_state() == pb::WorkflowState::Cancelled => {
            ("workflow.cancel", event.message.clone())
        }
        K::WorkflowPaused => ("workflow.pause", String::new()),
        K::WorkflowResumed => ("workflow.resume", String::new()),
        K::WorkflowRetried => ("workflow.retry", event.message.clone()),
        // A `wait` step answered by a signal (`signals.rs` words its message so; a wait step's
        // timeout does not). Only a wait step: another step's message is its own output.
        K::StepFinished
            if event.message.starts_with("signal ")
                && workflow
                    .spec
                    .steps
                    .iter()
                    .find(|s| s.name == event.step)
                    .is_some_and(super::namespaces::is_wait) =>
        {
            (
                "workflow.signal",
                format!("step {}: {}", event.step, event.message),
            )
        }
        _ => return None,
    })
}
