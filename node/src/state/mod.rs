//! THE deterministic core: the replicated cluster state and [`ClusterState::apply`], the only way
//! it changes.
//!
//! Architecture invariant: nothing in this module reads a clock, randomness, a file or the
//! network, and nothing iterates a `HashMap`. Time arrives inside [`LogEntry::time_ms`], stamped by
//! the leader. Same log, same state, same [`ClusterState::state_hash`] on every replica.
//!
//! The maps are persistent (`imbl`): cloning the state is O(1), so a snapshot builder or a reader
//! takes a point-in-time copy without blocking `apply`.

mod actions;
pub mod audit;
pub mod command;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod namespaces;
pub mod outcome;
mod schedules;
pub mod scheduling;
mod signals;
mod specs;
pub mod templates;
pub mod tokens;
pub mod triggers;
pub mod workflow;

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_proto::v1 as pb;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use command::CreateTokenCommand;
pub use command::{
    Assignment, CancelCommand, Command, CompleteCommand, LogEntry, PauseCommand, PurgeCommand,
    RegisterAgentCommand, Response, RetryCommand, SignalCommand, SubmitCommand,
};
pub use ids::{AgentId, AttemptId, NodeId, StepIndex, WorkflowId};
pub use lifecycle::{PURGE_BATCH_MAX, PurgeDue, PurgeRecord};
pub use namespaces::{
    CreateNamespaceCommand, DEFAULT_NAMESPACE, OverQuota, Quota, Quotas, UpdateNamespaceCommand,
};
pub use outcome::{Outcome, Proposal};
pub use schedules::{
    BackfillScheduleCommand, CreateScheduleCommand, PauseScheduleCommand, Schedule,
};
pub use scheduling::{Agent, Allocation, LiveAttempt, ReadyKey};
pub use templates::{ApplyTemplateCommand, Template, TemplateRef};
pub use triggers::{CreateTriggerCommand, Trigger};
pub use workflow::{ScheduledRun, StepRun, StepState, Workflow, WorkflowState};

/// Events produced by one apply, in order; they feed `Watch` (see `storage::events`).
pub type Events = Vec<pb::WorkflowEvent>;

/// A debug build checks the whole state's invariants after every this many entries (and what
/// each entry touched after every one): see [`ClusterState::check_after_apply`].
pub const INVARIANTS_FULL_EVERY: u64 = 1024;

/// What applying one entry yields.
#[derive(Debug)]
pub struct Applied {
    pub response: Response,
    pub events: Events,
}

/// Where and when an entry is applied.
#[derive(Clone, Copy, Debug)]
pub struct ApplyCtx {
    /// The entry's Raft log index.
    pub index: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by the bootstrapping node's first entry; empty until then.
    cluster_id: String,
    /// The latest leader time seen. Log time can go backwards across a leader change (clocks
    /// differ), so state time is the max of what it has seen.
    now_ms: u64,
    /// The last id handed out; ids start at 1.
    last_workflow_id: u64,
    // Every persistent map and set decodes through `cautious` (see there): the encoding is
    // imbl's own, unchanged.
    #[serde(deserialize_with = "cautious::map")]
    workflows: OrdMap<WorkflowId, Arc<Workflow>>,
    /// Keys shared with their workflows: an insert into a map node that a reader's clone still
    /// holds copies the node, and a node of `Arc`s copies without allocating (encoded as strings).
    #[serde(deserialize_with = "cautious::map")]
    idempotency_keys: OrdMap<Arc<str>, WorkflowId>,
    /// Every node id ever reserved or made a member, so none is reused for an empty disk.
    #[serde(deserialize_with = "cautious::set")]
    used_node_ids: OrdSet<NodeId>,
    /// The data-folder incarnation each member was first heard with (`BindIncarnation`).
    #[serde(default, deserialize_with = "cautious::map")]
    incarnations: OrdMap<NodeId, String>,
    /// Ids that were members and left: a node under one of them is refused for good.
    #[serde(default, deserialize_with = "cautious::set")]
    removed_node_ids: OrdSet<NodeId>,
    /// Set by `batond restore` and `recover` to the state time of the copy they started from:
    /// the cluster it came from may have handed out ids (and fencing tokens) since, so the first
    /// entry applied afterwards moves every id counter past them ([`ClusterState::reseed`]).
    #[serde(default)]
    reseeded_at_ms: Option<u64>,
    last_agent_id: u64,
    #[serde(deserialize_with = "cautious::map")]
    agents: OrdMap<AgentId, Arc<Agent>>,
    #[serde(deserialize_with = "cautious::map")]
    agent_ids_by_name: OrdMap<String, AgentId>,
    /// The last attempt id handed out: the fencing-token counter.
    last_attempt_id: u64,
    /// Attempts holding a lease, by id.
    #[serde(deserialize_with = "cautious::map")]
    attempts: OrdMap<AttemptId, LiveAttempt>,
    /// Sum of the live attempts' requests, per agent (derived; checked by the invariants).
    #[serde(deserialize_with = "cautious::map")]
    allocated: OrdMap<AgentId, Allocation>,
    /// Ready steps in scheduling order.
    #[serde(deserialize_with = "cautious::set")]
    ready: OrdSet<ReadyKey>,
    /// Steps in backoff: (retry at, workflow, step).
    #[serde(deserialize_with = "cautious::set")]
    backoff: OrdSet<(u64, WorkflowId, StepIndex)>,
    /// `ready`'s steps that have a schedule-to-start deadline, by deadline (derived: rebuilt by
    /// `decode`, checked by the invariants, not encoded, so not in snapshots or the hash).
    #[serde(skip)]
    ready_index: scheduling::ReadyIndex,
    // A refused report changes nothing here (it is counted by the node's metrics instead), so
    // an agent cannot move the state with reports about attempts that are not its own. Snapshots
    // of earlier releases carry a `reports_refused` count; decoding ignores it.
    /// Bearer tokens by id, revoked ones included (ids are never reused). See `tokens.rs`.
    #[serde(default, deserialize_with = "cautious::map")]
    tokens: OrdMap<String, tokens::TokenRecord>,
    /// What is left of purged workflows for the idempotency window (see `lifecycle.rs`). Left
    /// out while empty, so a state that never purged encodes as before.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    purge_records: OrdMap<WorkflowId, PurgeRecord>,
    /// Finished workflows and purge records by due time (derived like `ready_index`).
    #[serde(skip)]
    purge_index: lifecycle::PurgeIndex,
    /// Running workflows with a timeout, by deadline (derived; see `actions.rs`).
    #[serde(skip)]
    timeouts: actions::Timeouts,
    /// Steps awaiting a signal with a timeout, by deadline (derived; see `signals.rs`).
    #[serde(skip)]
    signal_deadlines: signals::SignalDeadlines,
    /// Schedules by name (see `schedules.rs`). Left out while empty, so a state without
    /// schedules encodes as before.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    schedules: OrdMap<Arc<str>, Arc<schedules::Schedule>>,
    /// Templates by name (see `templates.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    templates: OrdMap<Arc<str>, Arc<templates::Template>>,
    /// Webhook triggers by name (see `triggers.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    triggers: OrdMap<Arc<str>, Arc<triggers::Trigger>>,
    /// Namespaces besides `default`, by name (see `namespaces.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    namespaces: OrdMap<Arc<str>, namespaces::Namespace>,
    /// The submit budget of each namespace with a submit rate (see `namespaces.rs`); left out
    /// while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    submit_buckets: OrdMap<Arc<str>, namespaces::Bucket>,
    /// The bucket of each rate-limit key that spent a token and is not full again (see
    /// `keys.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    rate_buckets: OrdMap<keys::ScopedKey, keys::RateBucket>,
    /// `rate_buckets` by the time each is full again (derived).
    #[serde(skip)]
    rate_full: OrdSet<(u64, keys::ScopedKey)>,
    /// The last changes to tokens, namespaces, templates, schedules, triggers and members, with
    /// who asked, by sequence number (see `audit.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    audit: OrdMap<u64, audit::AuditEntry>,
    /// Steps whose attempt was stopped from outside (a cancel, a timeout) and that keep their
    /// concurrency keys and their agent's share until the attempt's lease has surely run out
    /// (see `keys.rs`); left out while empty.
    #[serde(
        default,
        deserialize_with = "cautious::map",
        skip_serializing_if = "OrdMap::is_empty"
    )]
    drains: OrdMap<(WorkflowId, StepIndex), keys::Drain>,
    /// `drains` by attempt (derived).
    #[serde(skip)]
    drained_attempts: OrdMap<AttemptId, (WorkflowId, StepIndex)>,
    /// Workflow concurrency keys: holders and waiters (derived; see `keys.rs`).
    #[serde(skip)]
    workflow_keys: keys::WorkflowKeys,
    /// Running workflows and ready-plus-running steps per namespace (derived).
    #[serde(skip)]
    live_counts: namespaces::LiveCounts,
    /// How many of the events of the entry being applied `live_counts` has seen; 0 between
    /// entries.
    #[serde(skip)]
    live_counted: usize,
    /// Unpaused schedules by the time they next fire, jitter included (derived).
    #[serde(skip)]
    schedule_due: schedules::ScheduleDue,
    /// Decoded specs shared between workflows of equal spec bytes (`specs.rs`): not part of the
    /// state's value (equal whatever it holds), neither encoded nor hashed.
    #[serde(skip)]
    specs: specs::SpecMemo,
}

/// Decoding of imbl collections that does not trust the length the input declares. imbl's own
/// `Deserialize` reserves `Vec::with_capacity(size_hint)` up front, so a 25-byte snapshot
/// declaring a map of 2^31 entries made the decoder allocate 28 GB and abort the process (found
/// by the `snapshot` fuzz target; kept as `fuzz/corpus/snapshot/crash-oom-map-length`). serde's
/// std collections cap their pre-allocation (`size_hint::cautious`), so decode into one of those,
/// then build the persistent collection from it.
mod cautious {
    use std::collections::BTreeMap;

    use imbl::{OrdMap, OrdSet};
    use serde::{Deserialize, Deserializer};

    pub fn map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        Ok(BTreeMap::<K, V>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }

    pub fn set<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        Ok(Vec::<T>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// Ids a cluster can hand out per ms at most, for skipping past them after a restore: a million a
/// second, several times the fastest leader measured (docs/PERFORMANCE.md).
pub const IDS_PER_MS_MAX: u64 = 1_000;
/// Ids skipped after a restore on top of the rate-based skip, for clocks that disagree.
pub const RESEED_ID_MARGIN: u64 = 1_000_000_000;

/// The part of the state the Raft transport reads on every message (`raft::envelope`): kept by the
/// replica apart from the state's lock, which `apply` holds for a whole entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerView {
    pub cluster_id: String,
    incarnations: OrdMap<NodeId, String>,
    removed_node_ids: OrdSet<NodeId>,
}

impl PeerView {
    /// The data-folder incarnation bound for `node_id`, if any.
    pub fn incarnation_of(&self, node_id: NodeId) -> Option<&str> {
        self.incarnations.get(&node_id).map(String::as_str)
    }

    /// Whether `node_id` was a member and was removed.
    pub fn was_removed(&self, node_id: NodeId) -> bool {
        self.removed_node_ids.contains(&node_id)
    }

    /// Whether any member's folder is bound: the leader binds only once every member speaks the
    /// envelope, so from then on a message without one is refused.
    pub fn has_bindings(&self) -> bool {
        !self.incarnations.is_empty()
    }
}

/// Filters and paging of [`ClusterState::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub states: Vec<WorkflowState>,
    pub name_prefix: String,
    pub labels: BTreeMap<String, String>,
    /// Only workflows with an id below this (the page token); None = from the newest.
    pub before: Option<WorkflowId>,
    pub limit: usize,
    /// Only the runs of schedules of this name (in the namespaces listed).
    pub schedule: Option<String>,
    /// Only workflows of these namespaces; None: of every one.
    pub namespaces: Option<std::collections::BTreeSet<String>>,
}

impl ClusterState {
    /// The only way replicated state changes.
    pub fn apply(&mut self, ctx: ApplyCtx, entry: LogEntry) -> Applied {
        self.now_ms = self.now_ms.max(entry.time_ms);
        // The first entry a reseeded cluster proposes carries the new cluster's time; a Raft
        // membership entry carries none (time 0), so it never takes the skip.
        let has_time = !matches!(entry.command, Command::Membership { .. });
        if has_time && let Some(copied_at_ms) = self.reseeded_at_ms.take() {
            self.skip_ids_handed_out_since(copied_at_ms);
        }
        let mut events = Events::new();
        self.live_counted = 0;
        let response = match entry.command {
            Command::Batch(commands) => Response::Batch(
                commands
                    .into_iter()
                    .map(|command| self.execute_recorded(ctx, command, &mut events))
                    .collect(),
            ),
            command => self.execute_recorded(ctx, command, &mut events),
        };
        self.live_counted = 0;
        // O(state): on every apply in unit and property tests, where states are small.
        #[cfg(test)]
        self.check_invariants();
        // Every debug build (the process tests', the chaos suite's batond): what this entry
        // touched on every apply, the whole state every INVARIANTS_FULL_EVERY entries.
        #[cfg(all(debug_assertions, not(test)))]
        self.check_after_apply(ctx.index, &events);
        Applied { response, events }
    }

    /// Applies one command and records the events it derived in their workflows' histories.
    fn execute_recorded(
        &mut self,
        ctx: ApplyCtx,
        command: Command,
        events: &mut Events,
    ) -> Response {
        let start = events.len();
        let response = self.execute(ctx, command, events);
        // Before the signals: a buffered run a schedule starts here may begin with a wait step.
        self.schedule_runs_ended(ctx, start, events);
        // Keys given back by what this command ended, and the waiters that take them.
        self.settle_keys(ctx, start, events);
        self.await_signals(ctx, start, events);
        self.record_history(&mut events[start..]);
        self.count_live_so_far(events);
        response
    }

    /// Applies one command; a batch here is one nested in another, and is refused.
    fn execute(&mut self, ctx: ApplyCtx, command: Command, events: &mut Events) -> Response {
        match command {
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id;
                }
                Response::Done
            }
            Command::Submit(submit) => self.submit(ctx, submit, events),
            Command::Cancel(cancel) => self.cancel(ctx, cancel, events),
            Command::ReserveNodeId { node_id } => {
                self.used_node_ids.insert(node_id);
                Response::Done
            }
            Command::Membership { previous, members } => {
                self.note_members(&previous, &members);
                Response::Done
            }
            Command::RegisterAgent(register) => self.register_agent(ctx, register, events),
            Command::Assign { assignments } => self.assign(ctx, assignments, events),
            Command::Complete(complete) => self.complete(ctx, complete, events),
            Command::ExpireLeases { attempts } => self.expire_leases(ctx, attempts, events),
            Command::Tick => self.tick(ctx, events),
            Command::CreateToken(create) => self.create_token(create),
            Command::RevokeToken { id } => self.revoke_token(&id),
            Command::BindIncarnation {
                node_id,
                incarnation,
            } => self.bind_incarnation(node_id, incarnation),
            Command::Purge(purge) => self.purge(ctx, purge, events),
            Command::Pause(pause) => self.pause(ctx, pause, events),
            Command::Retry(retry) => self.retry(ctx, retry, events),
            Command::Signal(signal) => self.signal(ctx, signal, events),
            Command::ApplyTemplate(apply) => self.apply_template(apply),
            Command::DeleteTemplate { name } => self.delete_template(&name),
            Command::CreateSchedule(create) => self.create_schedule(create),
            Command::PauseSchedule(pause) => self.pause_schedule(pause),
            Command::DeleteSchedule { name } => self.delete_schedule(&name),
            Command::TriggerSchedule { name } => self.trigger_schedule(ctx, &name, events),
            Command::BackfillSchedule(backfill) => self.backfill_schedule(ctx, backfill, events),
            Command::CreateTrigger(create) => self.create_trigger(create),
            Command::DeleteTrigger { name } => self.delete_trigger(&name),
            Command::CreateNamespace(create) => self.create_namespace(create),
            Command::DeleteNamespace { name } => self.delete_namespace(&name),
            Command::UpdateNamespace(update) => self.update_namespace(update),
            Command::Audited { actor, command } => self.audited(ctx, actor, *command, events),
            Command::Note(note) => self.note(ctx, note),
            Command::Batch(_) => Response::Rejected {
                reason: "a batch inside a batch".into(),
            },
        }
    }

    /// The first incarnation heard for a node id stays; another one is refused (the node came
    /// back on another data folder and must be replaced, not re-bound).
    fn bind_incarnation(&mut self, node_id: NodeId, incarnation: String) -> Response {
        match self.incarnations.get(&node_id) {
            Some(bound) if *bound == incarnation => Response::Done,
            Some(bound) => Response::Rejected {
                reason: format!(
                    "node {node_id} is bound to data folder {bound}, not {incarnation}"
                ),
            },
            None => {
                self.incarnations.insert(node_id, incarnation);
                Response::Done
            }
        }
    }

    /// Prepares a copy of a cluster's state (a backup, or a survivor's data) to seed a cluster:
    /// ids the old cluster may have handed out after the copy are skipped at the first entry the
    /// new one applies, so no workflow id, agent id or fencing token is ever handed out twice;
    /// the data folders the old cluster knew are forgotten (but `survivor`'s, for recover); and a
    /// restored cluster is a new cluster (its first leader names it), while a recovered one keeps
    /// its name.
    pub fn reseed(&mut self, survivor: Option<NodeId>) {
        self.reseeded_at_ms = Some(self.now_ms);
        self.incarnations = self
            .incarnations
            .iter()
            .filter(|(id, _)| Some(**id) == survivor)
            .map(|(id, incarnation)| (*id, incarnation.clone()))
            .collect();
        if survivor.is_none() {
            self.cluster_id.clear();
        }
    }

    /// Moves every id counter past what a cluster could have handed out between `since_ms` (the
    /// copy's state time) and this entry's time, at [`IDS_PER_MS_MAX`], plus
    /// [`RESEED_ID_MARGIN`]. Deterministic: it reads only the state and the entry's time.
    fn skip_ids_handed_out_since(&mut self, since_ms: u64) {
        let skip = self
            .now_ms
            .saturating_sub(since_ms)
            .saturating_mul(IDS_PER_MS_MAX)
            .saturating_add(RESEED_ID_MARGIN);
        for counter in [
            &mut self.last_workflow_id,
            &mut self.last_attempt_id,
            &mut self.last_agent_id,
        ] {
            *counter = counter.saturating_add(skip);
        }
    }

    /// The data-folder incarnation recorded for `node_id`, if the leader has heard from it.
    pub fn incarnation_of(&self, node_id: NodeId) -> Option<&str> {
        self.incarnations.get(&node_id).map(String::as_str)
    }

    /// What the Raft transport checks on every message (an O(1) copy: persistent maps).
    pub fn peer_view(&self) -> PeerView {
        PeerView {
            cluster_id: self.cluster_id.clone(),
            incarnations: self.incarnations.clone(),
            removed_node_ids: self.removed_node_ids.clone(),
        }
    }

    /// [`Command::Membership`]: the members (voters and learners) before and after, so that their
    /// ids are never handed out again and those that left are refused for good. (The previous
    /// membership comes from what the storage layer applied, which every snapshot carries: the
    /// same on every replica.)
    fn note_members(&mut self, previous: &[NodeId], current: &[NodeId]) {
        for id in current {
            self.used_node_ids.insert(*id);
            // A restored cluster may take back an id the old one had removed: it is a new
            // cluster (see `reseed`).
            self.removed_node_ids.remove(id);
        }
        for left in previous.iter().filter(|id| !current.contains(id)) {
            self.removed_node_ids.insert(*left);
        }
    }

    /// Whether `node_id` was a member and was removed (it can never take part again).
    pub fn was_removed(&self, node_id: NodeId) -> bool {
        self.removed_node_ids.contains(&node_id)
    }

    fn submit(&mut self, ctx: ApplyCtx, submit: SubmitCommand, events: &mut Events) -> Response {
        self.submit_run(ctx, submit, None, events)
    }

    /// The workflow idempotency key `key` of namespace `namespace` (empty: `default`) names,
    /// if any.
    pub fn workflow_for_key(&self, namespace: &str, key: &str) -> Option<WorkflowId> {
        let scoped = namespaces::scoped_key(namespaces::or_default(namespace), key);
        self.idempotency_keys.get(&scoped).copied()
    }

    /// A submit, by a client or (with `schedule`) by a schedule.
    fn submit_run(
        &mut self,
        ctx: ApplyCtx,
        submit: SubmitCommand,
        schedule: Option<ScheduledRun>,
        events: &mut Events,
    ) -> Response {
        let Some(namespace) = self.namespace_arc(namespaces::or_default(&submit.namespace)) else {
            return Response::Rejected {
                reason: format!("namespace {} does not exist", submit.namespace),
            };
        };
        // In `default`, the index and the workflow share one key.
        let idempotency_key: Arc<str> = Arc::from(submit.idempotency_key);
        let key = (!idempotency_key.is_empty()).then(|| match namespaces::is_default(&namespace) {
            true => idempotency_key.clone(),
            false => namespaces::scoped_key(&namespace, &idempotency_key),
        });
        if let Some(key) = &key
            && let Some(&workflow_id) = self.idempotency_keys.get(key)
        {
            return Response::Submitted {
                workflow_id,
                created: false,
            };
        }
        let spec = match self.specs.decode(&submit.spec) {
            Ok(spec) => spec,
            Err(err) => {
                return Response::Rejected {
                    reason: format!("spec does not decode: {err}"),
                };
            }
        };
        let steps = match resolve_steps(&spec) {
            Ok(steps) => steps,
            Err(reason) => return Response::Rejected { reason },
        };
        // Its first steps, but for wait steps (they wait for a signal, not for an agent).
        let keys = match keys::Keys::render(&spec, &submit.params) {
            Ok(keys) => keys,
            Err(error) => {
                return Response::Rejected {
                    reason: error.to_string(),
                };
            }
        };
        let roots = steps
            .iter()
            .zip(&spec.steps)
            .filter(|(run, step)| run.deps.is_empty() && !namespaces::is_wait(step))
            .count() as u64;
        if !self.quotas(&namespace).is_none() {
            self.count_live_so_far(events);
            if let Some(over) = self.over_quota(&namespace, roots, true, Default::default()) {
                return Response::OverQuota(over);
            }
        }
        self.draw_submit(&namespace);
        self.last_workflow_id += 1;
        let id = WorkflowId(self.last_workflow_id);
        let spec_timeout_ms = spec.timeout_ms;
        let mut workflow = Workflow {
            id,
            namespace,
            spec,
            idempotency_key,
            state: WorkflowState::Running,
            created_at_ms: self.now_ms,
            finished_at_ms: 0,
            reason: String::new(),
            revision: ctx.index,
            steps,
            paused_at_ms: 0,
            retries: 0,
            params: submit.params,
            deadline_ms: match spec_timeout_ms {
                0 => 0,
                timeout => self.now_ms.saturating_add(timeout),
            },
            history: Vec::new(),
            schedule,
            template: submit.template,
            keys,
            waiting_for_key: false,
        };
        workflow.waiting_for_key = self.take_workflow_key(&workflow);
        for step in workflow.steps.iter_mut().filter(|s| s.deps.is_empty()) {
            step.state = StepState::Ready;
            step.ready_at_ms = self.now_ms;
        }
        let roots: Vec<StepIndex> = (0..workflow.steps.len() as u32)
            .map(StepIndex)
            .filter(|i| workflow.steps[i.get()].state == StepState::Ready)
            .collect();
        events.push(self.event(ctx, id, pb::EventKind::WorkflowSubmitted, |e| {
            e.workflow_state = pb::WorkflowState::Running as i32;
            e.message = workflow.spec.name.clone();
            e.actor = submit.actor;
        }));
        if workflow.waiting_for_key {
            events.push(self.key_waiting_event(ctx, &workflow));
        }
        for &step in &roots {
            scheduling::enqueue(&mut self.ready, &mut self.ready_index, &workflow, step);
            events.push(self.event(ctx, id, pb::EventKind::StepReady, |e| {
                e.step = workflow.spec.steps[step.get()].name.clone();
                e.step_state = pb::StepState::Ready as i32;
            }));
        }
        self.workflows.insert(id, Arc::new(workflow));
        if let Some(key) = key {
            self.idempotency_keys.insert(key, id);
        }
        Response::Submitted {
            workflow_id: id,
            created: true,
        }
    }

    fn cancel(&mut self, ctx: ApplyCtx, cancel: CancelCommand, events: &mut Events) -> Response {
        let Some(workflow) = self.workflows.get(&cancel.workflow_id) else {
            return Response::NotFound {
                workflow_id: cancel.workflow_id,
            };
        };
        if workflow.state.is_terminal() {
            return Response::Cancelled {
                state: workflow.state,
            };
        }
        let reason = if cancel.reason.is_empty() {
            "cancelled".to_owned()
        } else {
            cancel.reason
        };
        self.end_workflow(
            ctx,
            cancel.workflow_id,
            WorkflowState::Cancelled,
            reason,
            cancel.actor,
            events,
        );
        Response::Cancelled {
            state: WorkflowState::Cancelled,
        }
    }

    /// Ends running workflow `id` from outside its steps (a cancel, its timeout) as `state`:
    /// running attempts lose their leases (the leader tells their agents to stop), queued and
    /// backing-off steps leave their queues, every unfinished step is cancelled.
    pub(super) fn end_workflow(
        &mut self,
        ctx: ApplyCtx,
        id: WorkflowId,
        state: WorkflowState,
        reason: String,
        actor: String,
        events: &mut Events,
    ) {
        let now_ms = self.now_ms;
        let workflow = &self.workflows[&id];
        let mut released = Vec::new();
        let mut waiting = Vec::new();
        for (i, run) in workflow.steps.iter().enumerate() {
            match run.state {
                StepState::Running => released.push(run.attempt_id),
                StepState::AwaitingSignal => waiting.push(StepIndex(i as u32)),
                StepState::Ready => {
                    let key = scheduling::ready_key(workflow, StepIndex(i as u32));
                    self.ready.remove(&key);
                    self.ready_index.remove(&key, &workflow.namespace);
                }
                StepState::Backoff => {
                    self.backoff
                        .remove(&(run.retry_at_ms, id, StepIndex(i as u32)));
                }
                _ => {}
            }
        }
        for attempt in released {
            if let Some(live) = self.release(attempt) {
                self.drain(&live, attempt);
            }
        }
        for step in waiting {
            self.forget_signal_deadline(id, step);
        }
        let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("checked above"));
        workflow.state = state;
        workflow.finished_at_ms = now_ms;
        workflow.reason = reason;
        workflow.revision = ctx.index;
        for step in workflow.steps.iter_mut().filter(|s| !s.state.is_terminal()) {
            step.state = StepState::Cancelled;
            step.finished_at_ms = now_ms;
        }
        let reason = workflow.reason.clone();
        events.push(self.event(ctx, id, pb::EventKind::WorkflowFinished, |e| {
            e.workflow_state = state.to_proto() as i32;
            e.message = reason;
            e.actor = actor;
        }));
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn workflow(&self, id: WorkflowId) -> Option<&Arc<Workflow>> {
        self.workflows.get(&id)
    }

    pub fn workflow_count(&self) -> usize {
        self.workflows.len()
    }

    pub fn is_node_id_used(&self, id: NodeId) -> bool {
        self.used_node_ids.contains(&id)
    }

    /// Newest first. Returns the page and the id to continue before, if more may follow.
    pub fn list(&self, query: &ListQuery) -> (Vec<Arc<Workflow>>, Option<WorkflowId>) {
        let upper = query.before.unwrap_or(WorkflowId(u64::MAX));
        let mut page = Vec::with_capacity(query.limit.min(1024));
        let mut iter = self.workflows.range(..upper).rev();
        for (_, workflow) in iter.by_ref() {
            if query.matches(workflow) {
                page.push(workflow.clone());
                if page.len() == query.limit {
                    break;
                }
            }
        }
        let more = page.len() == query.limit && iter.next().is_some();
        let next = more.then(|| page.last().map(|w| w.id)).flatten();
        (page, next)
    }

    /// How many of the newest `limit` workflows are in each state, and whether older ones were
    /// left out (the console's counts: bounded, so a page never scans a huge state).
    /// `namespaces`: only workflows of these (None: of every one), among the newest `limit`.
    pub fn state_counts(
        &self,
        limit: usize,
        namespaces: Option<&std::collections::BTreeSet<String>>,
    ) -> (BTreeMap<&'static str, usize>, bool) {
        let mut counts = BTreeMap::new();
        let mut iter = self.workflows.values().rev();
        for workflow in iter
            .by_ref()
            .take(limit)
            .filter(|w| namespaces.is_none_or(|set| set.contains(&*w.namespace)))
        {
            let name = baton_proto::names::workflow_state_name(workflow.state.to_proto() as i32);
            *counts.entry(name).or_insert(0) += 1;
        }
        (counts, iter.next().is_some())
    }

    /// The canonical encoding: the snapshot payload, and what the state hash is taken over.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("cluster state encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        let memo = specs::SpecMemo::default();
        let mut state: Self = specs::decoding_with(&memo, || rmp_serde::from_slice(bytes))?;
        state.specs = memo;
        state.ready_index = state.derive_ready_index();
        state.purge_index = state.derive_purge_index();
        state.timeouts = state.derive_timeouts();
        state.signal_deadlines = state.derive_signal_deadlines();
        state.schedule_due = state.derive_schedule_due();
        state.live_counts = state.derive_live_counts();
        state.workflow_keys = state.derive_keys().0;
        state.rate_full = state.derive_rate_full();
        state.drained_attempts = state.derive_drained_attempts();
        Ok(state)
    }

    /// SHA-256 of the canonical encoding. O(state): callers cache it per applied index.
    pub fn state_hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The invariants a debug build checks after applying the entry at `index` that yielded
    /// `events`: those of every workflow it touched and the cluster-wide ones that cost
    /// O(live attempts), so O(entry) in all; and every [`INVARIANTS_FULL_EVERY`] entries
    /// [`ClusterState::check_invariants`] over the whole state (what no event names is caught
    /// there). A failure is a bug in `apply`, so it panics, naming the relation.
    pub fn check_after_apply(&self, index: u64, events: &[pb::WorkflowEvent]) {
        if index.is_multiple_of(INVARIANTS_FULL_EVERY) {
            self.check_invariants();
            return;
        }
        self.check_leases();
        let mut touched: Vec<WorkflowId> =
            events.iter().map(|e| WorkflowId(e.workflow_id)).collect();
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            if let Some(workflow) = self.workflows.get(&id) {
                self.check_workflow(workflow);
            }
        }
    }

    /// One workflow's relations with the indexes that hold its steps: a ready step is queued,
    /// a step in backoff is in the backoff set, a running step holds the live attempt that
    /// names it, a finished workflow has only finished steps, its idempotency key maps to it.
    fn check_workflow(&self, workflow: &Workflow) {
        let id = workflow.id;
        assert!(
            id.0 <= self.last_workflow_id,
            "workflow id {id} beyond last {}",
            self.last_workflow_id
        );
        assert_eq!(
            workflow.steps.len(),
            workflow.spec.steps.len(),
            "workflow {id}: steps"
        );
        assert!(
            self.namespace_exists(&workflow.namespace),
            "workflow {id}: its namespace {} does not exist",
            workflow.namespace
        );
        if !workflow.idempotency_key.is_empty() {
            assert_eq!(
                self.idempotency_keys.get(&workflow.index_key()),
                Some(&id),
                "workflow {id}: its idempotency key maps elsewhere"
            );
        }
        if workflow.state.is_terminal() {
            assert!(
                workflow.steps.iter().all(|s| s.state.is_terminal()),
                "finished workflow {id} has unfinished steps"
            );
        }
        for (i, run) in workflow.steps.iter().enumerate() {
            let step = StepIndex(i as u32);
            match run.state {
                StepState::Ready => assert_eq!(
                    self.ready.contains(&scheduling::ready_key(workflow, step)),
                    workflow.paused_at_ms == 0
                        && !workflow.waiting_for_key
                        && !self.ready_index.keys.waits(id, step),
                    "workflow {id} step {i}: ready but not queued, or queued while paused or \
                     waiting for a key"
                ),
                StepState::Backoff => assert!(
                    self.backoff.contains(&(run.retry_at_ms, id, step)),
                    "workflow {id} step {i}: in backoff but not in the backoff set"
                ),
                StepState::AwaitingSignal => assert!(
                    !self.ready.contains(&scheduling::ready_key(workflow, step)),
                    "workflow {id} step {i}: awaiting a signal but queued for an agent"
                ),
                StepState::Running => {
                    let live = self.attempts.get(&run.attempt_id);
                    assert!(
                        live.is_some_and(|l| l.workflow_id == id && l.step == step),
                        "workflow {id} step {i}: running without its live attempt {}",
                        run.attempt_id
                    );
                }
                _ => {}
            }
            // Earlier attempts: each one started, oldest first, none after the current one (the
            // last is the current one itself between its end and the next assignment).
            assert!(
                run.earlier.len() <= run.attempts as usize,
                "workflow {id} step {i}: {} earlier attempts of {} started",
                run.earlier.len(),
                run.attempts
            );
            assert!(
                run.earlier
                    .windows(2)
                    .all(|w| w[0].attempt_id < w[1].attempt_id)
                    && run
                        .earlier
                        .last()
                        .is_none_or(|e| e.attempt_id <= run.attempt_id),
                "workflow {id} step {i}: earlier attempts out of order"
            );
        }
    }

    /// Live attempts against their steps and the agents' allocations: O(live attempts).
    fn check_leases(&self) {
        let mut allocated: BTreeMap<AgentId, Allocation> = BTreeMap::new();
        for (attempt_id, live) in &self.attempts {
            let workflow = &self.workflows[&live.workflow_id];
            let run = &workflow.steps[live.step.get()];
            assert_eq!(
                run.state,
                StepState::Running,
                "live attempt {attempt_id} of a step not running"
            );
            assert_eq!(
                run.attempt_id, *attempt_id,
                "live attempt {attempt_id} is not its step's current one"
            );
            assert!(attempt_id.0 <= self.last_attempt_id);
            let a = allocated.entry(live.agent_id).or_default();
            a.slots += live.request.slots;
            a.cpu_millis += live.request.cpu_millis;
            a.memory_mb += live.request.memory_mb;
        }
        // Live attempts alone never exceed an agent (one back with fewer slots loses its newest
        // attempts); stopped attempts keep their share until they have surely stopped
        // (`keys.rs`), beyond it if the agent came back smaller.
        for (agent_id, a) in &allocated {
            let agent = &self.agents[agent_id];
            assert!(
                a.slots <= agent.slots
                    && a.cpu_millis <= agent.cpu_millis
                    && a.memory_mb <= agent.memory_mb,
                "agent {agent_id} over-allocated: {a:?} of {agent:?}"
            );
        }
        for drain in self.drains.values() {
            let a = allocated.entry(drain.agent_id).or_default();
            a.slots += drain.request.slots;
            a.cpu_millis += drain.request.cpu_millis;
            a.memory_mb += drain.request.memory_mb;
        }
        for (agent_id, a) in &allocated {
            assert_eq!(
                self.allocated.get(agent_id),
                Some(a),
                "allocation of agent {agent_id} drifted"
            );
        }
        assert_eq!(
            allocated.len(),
            self.allocated.len(),
            "allocation kept for an idle agent"
        );
    }

    /// Relations that hold after every apply, over the whole state: O(state). A failure is a
    /// bug in `apply`, so it panics.
    pub fn check_invariants(&self) {
        if let Some((last, _)) = self.workflows.get_max() {
            assert!(
                last.0 <= self.last_workflow_id,
                "workflow id {last} beyond last {}",
                self.last_workflow_id
            );
        }
        for (key, id) in &self.idempotency_keys {
            let owner = match (self.workflows.get(id), self.purge_records.get(id)) {
                (Some(workflow), _) => &workflow.index_key(),
                (None, Some(record)) => &record.idempotency_key.clone(),
                (None, None) => panic!("idempotency key {key:?} names missing workflow {id}"),
            };
            assert_eq!(owner, key);
        }
        self.check_purge_records();
        self.check_leases();
        for workflow in self.workflows.values() {
            self.check_workflow(workflow);
        }
        for key in &self.ready {
            assert_eq!(
                self.workflows[&key.workflow_id].steps[key.step.get()].state,
                StepState::Ready
            );
        }
        self.check_live_counts();
        self.check_keys();
        assert_eq!(
            self.rate_full,
            self.derive_rate_full(),
            "the rate bucket index does not match the buckets"
        );
        assert_eq!(
            self.ready_index,
            self.derive_ready_index(),
            "the deadline index does not match the ready queue"
        );
        assert_eq!(
            self.timeouts,
            self.derive_timeouts(),
            "the timeout index does not match the running workflows"
        );
        assert_eq!(
            self.signal_deadlines,
            self.derive_signal_deadlines(),
            "the signal deadline index does not match the waiting steps"
        );
        self.check_schedules();
        for (_, workflow_id, step) in &self.backoff {
            assert_eq!(
                self.workflows[workflow_id].steps[step.get()].state,
                StepState::Backoff
            );
        }
        let mut leased: BTreeMap<WorkflowId, usize> = BTreeMap::new();
        for live in self.attempts.values() {
            *leased.entry(live.workflow_id).or_default() += 1;
        }
        let mut queued: BTreeMap<WorkflowId, usize> = BTreeMap::new();
        for key in &self.ready {
            *queued.entry(key.workflow_id).or_default() += 1;
        }
        for (id, workflow) in &self.workflows {
            assert_eq!(*id, workflow.id);
            let running = workflow
                .steps
                .iter()
                .filter(|s| s.state == StepState::Running)
                .count();
            assert_eq!(
                running,
                leased.get(id).copied().unwrap_or(0),
                "workflow {id}: running steps without a lease"
            );
            let ready = workflow
                .steps
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.state == StepState::Ready
                        && workflow.paused_at_ms == 0
                        && !workflow.waiting_for_key
                        && !self.ready_index.keys.waits(*id, StepIndex(*i as u32))
                })
                .count();
            assert_eq!(
                ready,
                queued.get(id).copied().unwrap_or(0),
                "workflow {id}: ready steps missing from the queue (or queued while paused)"
            );
            assert_eq!(workflow.steps.len(), workflow.spec.steps.len());
            if workflow.state.is_terminal() {
                assert!(
                    workflow.steps.iter().all(|s| s.state.is_terminal()),
                    "finished workflow {id} has unfinished steps"
                );
            }
        }
    }
}

impl ListQuery {
    fn matches(&self, workflow: &Workflow) -> bool {
        (self.states.is_empty() || self.states.contains(&workflow.state))
            && workflow.spec.name.starts_with(&self.name_prefix)
            && self
                .labels
                .iter()
                .all(|(k, v)| workflow.spec.labels.get(k) == Some(v))
            && self.schedule.as_deref().is_none_or(|name| {
                workflow
                    .schedule
                    .as_ref()
                    .is_some_and(|s| namespaces::split_scoped(&s.name).1 == name)
            })
            && self
                .namespaces
                .as_ref()
                .is_none_or(|set| set.contains(&*workflow.namespace))
    }
}

/// Resolves each step's dependencies to indexes and checks the graph is a DAG. The API validates
/// every spec before proposing it; this re-check keeps a spec from another path (or a node of
/// another version) from leaving a workflow that can never finish.
fn resolve_steps(spec: &pb::WorkflowSpec) -> Result<Vec<StepRun>, String> {
    if spec.steps.is_empty() {
        return Err("workflow has no steps".to_owned());
    }
    let mut index_of = BTreeMap::new();
    for (i, step) in spec.steps.iter().enumerate() {
        if index_of
            .insert(step.name.as_str(), StepIndex(i as u32))
            .is_some()
        {
            return Err(format!("duplicate step name {:?}", step.name));
        }
    }
    let mut steps = Vec::with_capacity(spec.steps.len());
    for step in &spec.steps {
        let mut deps = Vec::with_capacity(step.depends_on.len());
        for dep in &step.depends_on {
            let &i = index_of
                .get(dep.as_str())
                .ok_or_else(|| format!("step {:?} depends on unknown step {dep:?}", step.name))?;
            deps.push(i);
        }
        steps.push(StepRun::new(deps));
    }
    for i in 0..steps.len() {
        for d in steps[i].deps.clone() {
            steps[d.get()].dependents.push(StepIndex(i as u32));
        }
    }
    // Kahn's algorithm: a DAG drains completely.
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for &d in &step.deps {
            dependents[d.get()].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut drained = 0;
    while let Some(i) = ready.pop() {
        drained += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if drained != steps.len() {
        return Err("dependency cycle".to_owned());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests;
