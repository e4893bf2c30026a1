//! The replicated half of scheduling: agents and their capacity, leased attempts, the ready and
//! backoff queues, and how a step's end moves its workflow along. Deterministic like the rest of
//! `state/`; the leader-only loop that decides *what* to propose lives in `scheduler/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1 as pb;
use baton_proto::validate::{
    backoff_delay_ms, effective_lease_ttl_ms, effective_max_attempts, effective_priority,
};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::command::{Assignment, CompleteCommand, RegisterAgentCommand, Response};
use super::ids::{AgentId, AttemptId, StepIndex, WorkflowId};
use super::workflow::{AttemptOutcome, StepState, Workflow, WorkflowState};
use super::{ApplyCtx, ClusterState, Events};

/// A step lost to this many expired leases fails instead of being requeued again: a step that
/// kills every agent it runs on must not cycle through the fleet forever.
pub const LEASE_EXPIRIES_PER_STEP_MAX: u32 = 5;

/// A registered agent: what it offers. Whether it is connected is leader memory, not state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub slots: u32,
    pub cpu_millis: u32,
    pub memory_mb: u32,
    /// The task types it runs; empty: it did not say, and runs whatever it is given.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub task_types: BTreeSet<String>,
    /// The namespaces whose steps it takes; empty: every namespace's.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub namespaces: BTreeSet<String>,
}

impl Agent {
    /// Whether this agent takes steps of `namespace`.
    pub fn serves(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.contains(namespace)
    }

    /// Whether this agent runs `step`'s task type.
    pub fn runs(&self, step: &pb::StepSpec) -> bool {
        self.task_types.is_empty()
            || task_type(step).is_none_or(|kind| self.task_types.contains(kind))
    }
}

/// The task type an agent must run for `step`: a built-in kind's name or a custom type; `None`
/// for a step without a task (refused by validation).
pub fn task_type(step: &pb::StepSpec) -> Option<&str> {
    use pb::step_spec::Task;
    Some(match step.task.as_ref()? {
        Task::Exec(_) => "exec",
        Task::Http(_) => "http",
        Task::Noop(_) => "noop",
        Task::Sleep(_) => "sleep",
        Task::Custom(custom) => &custom.r#type,
        // Never queued for an agent (see `actions.rs`).
        Task::Wait(_) => "wait",
    })
}

/// What is leased out of an agent's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub slots: u32,
    pub cpu_millis: u32,
    pub memory_mb: u32,
}

impl Allocation {
    /// Whether `request` fits beside this allocation on `agent`.
    pub fn fits(&self, agent: &Agent, request: Allocation) -> bool {
        self.slots + request.slots <= agent.slots
            && self.cpu_millis as u64 + request.cpu_millis as u64 <= agent.cpu_millis as u64
            && self.memory_mb as u64 + request.memory_mb as u64 <= agent.memory_mb as u64
    }

    fn add(&mut self, other: Allocation) {
        self.slots += other.slots;
        self.cpu_millis += other.cpu_millis;
        self.memory_mb += other.memory_mb;
    }

    fn sub(&mut self, other: Allocation) {
        self.slots -= other.slots;
        self.cpu_millis -= other.cpu_millis;
        self.memory_mb -= other.memory_mb;
    }
}

/// A step's demand on an agent.
pub fn step_request(step: &pb::StepSpec) -> Allocation {
    let resources = step.resources.unwrap_or_default();
    Allocation {
        slots: 1,
        cpu_millis: resources.cpu_millis,
        memory_mb: resources.memory_mb,
    }
}

/// Whether an agent's labels satisfy a step's constraints (exact match of every key).
pub fn labels_match(
    constraints: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    constraints.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An attempt that holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAttempt {
    pub workflow_id: WorkflowId,
    pub step: StepIndex,
    pub agent_id: AgentId,
    pub request: Allocation,
    pub lease_ttl_ms: u64,
    pub assigned_at_ms: u64,
}

/// Queue order: higher priority first, then older, then workflow and step for determinism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadyKey {
    /// Negated priority, so ascending order is highest priority first.
    pub neg_priority: i32,
    pub ready_at_ms: u64,
    pub workflow_id: WorkflowId,
    pub step: StepIndex,
}

/// What the scheduler asks of the ready queue besides its order, derived from `ready`, the
/// specs and the workflows' namespaces, so neither snapshotted nor hashed: rebuilt on decode
/// ([`ClusterState::decode`]) and checked by the invariants.
/// - Ready steps that have a schedule-to-start deadline, by deadline: "is a ready step
///   overdue?" in O(log n), where scanning the queue with a workflow lookup per step took 10% of
///   a loaded leader's CPU with a backlog.
/// - Each namespace's ready steps in queue order, so placement can take from every namespace in
///   a fair order however long one namespace's backlog is (`planning::placement`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ReadyIndex {
    by_deadline: OrdSet<(u64, ReadyKey)>,
    of_key: OrdMap<ReadyKey, u64>,
    by_namespace: OrdMap<Arc<str>, OrdSet<ReadyKey>>,
    /// Step concurrency keys: their holders and the steps waiting for them (`keys.rs`). A
    /// waiting step is ready but not queued; its schedule-to-start deadline is indexed here.
    pub(super) keys: super::keys::StepKeys,
}

impl ReadyIndex {
    /// Indexes a step just put in the ready queue.
    pub(super) fn insert(&mut self, key: ReadyKey, timeout_ms: u64, namespace: &Arc<str>) {
        self.queue(key, namespace);
        self.insert_deadline(key, timeout_ms);
    }

    /// Puts a step in its namespace's queue (its deadline, if any, is indexed already).
    pub(super) fn queue(&mut self, key: ReadyKey, namespace: &Arc<str>) {
        self.by_namespace
            .entry(namespace.clone())
            .or_default()
            .insert(key);
    }

    /// Indexes a ready step's schedule-to-start deadline, queued or waiting for its key.
    fn insert_deadline(&mut self, key: ReadyKey, timeout_ms: u64) {
        if timeout_ms == 0 {
            return;
        }
        let deadline = key.ready_at_ms.saturating_add(timeout_ms);
        self.by_deadline.insert((deadline, key));
        self.of_key.insert(key, deadline);
    }

    /// Forgets a step of `namespace` taken out of the ready queue.
    pub(super) fn remove(&mut self, key: &ReadyKey, namespace: &str) {
        if let Some(deadline) = self.of_key.remove(key) {
            self.by_deadline.remove(&(deadline, *key));
        }
        if let Some(queue) = self.by_namespace.get_mut(namespace) {
            queue.remove(key);
            if queue.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }

    /// Each namespace that has ready steps, with them in queue order.
    pub(super) fn namespaces(&self) -> impl Iterator<Item = (&Arc<str>, &OrdSet<ReadyKey>)> {
        self.by_namespace.iter()
    }

    fn due(&self, now_ms: u64) -> impl Iterator<Item = &ReadyKey> {
        self.by_deadline
            .iter()
            .take_while(move |(deadline, _)| *deadline <= now_ms)
            .map(|(_, key)| key)
    }

    fn any_due(&self, now_ms: u64) -> bool {
        self.by_deadline
            .get_min()
            .is_some_and(|(deadline, _)| *deadline <= now_ms)
    }
}

/// Queues a ready step of `workflow` (with its schedule-to-start deadline), unless the workflow
/// is paused or waits for its concurrency key (its ready steps wait outside the queue until it is
/// resumed or takes the key), or the step's own concurrency key is full (it waits in the key's
/// queue: `keys.rs`).
pub(super) fn enqueue(
    ready: &mut OrdSet<ReadyKey>,
    index: &mut ReadyIndex,
    workflow: &Workflow,
    step: StepIndex,
) {
    if workflow.paused_at_ms != 0 || workflow.waiting_for_key {
        return;
    }
    let key = ready_key(workflow, step);
    if let Some((concurrency_key, limit)) = super::keys::step_key(workflow, step)
        && !index.keys.take(&concurrency_key, limit, key)
    {
        // It waits for its key, its schedule-to-start deadline running.
        index.insert_deadline(key, start_timeout_ms(workflow, step));
        return;
    }
    ready.insert(key);
    index.insert(key, start_timeout_ms(workflow, step), &workflow.namespace);
}

/// A step's schedule-to-start timeout (0: none).
pub(super) fn start_timeout_ms(workflow: &Workflow, step: StepIndex) -> u64 {
    workflow.spec.steps[step.get()].schedule_to_start_timeout_ms
}

impl ClusterState {
    /// The deadline index as `ready` and the specs say it should be. A ready step of a missing
    /// workflow or step (a corrupt snapshot) is left out here, and the invariants catch it.
    pub(super) fn derive_ready_index(&self) -> ReadyIndex {
        let mut index = ReadyIndex {
            keys: self.derive_keys().1,
            ..Default::default()
        };
        let timeout_ms = |workflow: &Workflow, key: &ReadyKey| {
            workflow
                .spec
                .steps
                .get(key.step.get())
                .map_or(0, |s| s.schedule_to_start_timeout_ms)
        };
        for key in &self.ready {
            let Some(workflow) = self.workflows.get(&key.workflow_id) else {
                continue;
            };
            index.insert(*key, timeout_ms(workflow, key), &workflow.namespace);
        }
        for key in index.keys.waiting().collect::<Vec<_>>() {
            if let Some(workflow) = self.workflows.get(&key.workflow_id) {
                index.insert_deadline(key, timeout_ms(workflow, &key));
            }
        }
        index
    }

    pub(super) fn register_agent(
        &mut self,
        ctx: ApplyCtx,
        cmd: RegisterAgentCommand,
        events: &mut Events,
    ) -> Response {
        let id = match self.agent_ids_by_name.get(&cmd.name) {
            Some(&id) => id,
            None => {
                self.last_agent_id += 1;
                let id = AgentId(self.last_agent_id);
                self.agent_ids_by_name.insert(cmd.name.clone(), id);
                id
            }
        };
        self.agents.insert(
            id,
            Arc::new(Agent {
                id,
                name: cmd.name,
                labels: cmd.labels,
                slots: cmd.slots,
                cpu_millis: cmd.cpu_millis,
                memory_mb: cmd.memory_mb,
                task_types: cmd.task_types.into_iter().collect(),
                namespaces: cmd.namespaces.into_iter().collect(),
            }),
        );
        // An agent back with less capacity than it holds (restarted with fewer slots): requeue
        // its newest attempts until the rest fit, so no agent is ever over-allocated.
        loop {
            let agent = &self.agents[&id];
            // Its live attempts' share: what stopped attempts still hold comes back on its own.
            let mut used = self.allocation(id);
            for drain in self.drains.values().filter(|d| d.agent_id == id) {
                used.sub(drain.request);
            }
            let over = used.slots > agent.slots
                || used.cpu_millis > agent.cpu_millis
                || used.memory_mb > agent.memory_mb;
            if !over {
                break;
            }
            // What stopped attempts still hold (`keys.rs`) comes back by time alone.
            let Some(newest) = self
                .attempts
                .iter()
                .rev()
                .find(|(_, live)| live.agent_id == id)
                .map(|(attempt, _)| *attempt)
            else {
                break;
            };
            self.expire_leases(ctx, vec![newest], events);
        }
        Response::AgentRegistered { agent_id: id }
    }

    pub(super) fn assign(
        &mut self,
        ctx: ApplyCtx,
        batch: Vec<Assignment>,
        events: &mut Events,
    ) -> Response {
        let mut attempts = Vec::with_capacity(batch.len());
        for a in batch {
            attempts.push(self.assign_one(ctx, a, events));
        }
        self.drop_full_rate_buckets();
        Response::Assigned { attempts }
    }

    fn assign_one(
        &mut self,
        ctx: ApplyCtx,
        a: Assignment,
        events: &mut Events,
    ) -> Option<AttemptId> {
        let agent = self.agents.get(&a.agent_id)?.clone();
        let workflow = self.workflows.get(&a.workflow_id)?;
        if workflow.state != WorkflowState::Running || workflow.paused_at_ms != 0 {
            return None;
        }
        let spec_step = workflow.spec.steps.get(a.step.get())?;
        let run = &workflow.steps[a.step.get()];
        if run.state != StepState::Ready
            || !labels_match(&spec_step.constraints, &agent.labels)
            || !agent.runs(spec_step)
            || !agent.serves(&workflow.namespace)
        {
            return None;
        }
        let request = step_request(spec_step);
        let allocated = self.allocated.get(&a.agent_id).copied().unwrap_or_default();
        if !allocated.fits(&agent, request) {
            return None;
        }
        let key = ready_key(workflow, a.step);
        if !self.ready.contains(&key) {
            // Ready but not queued: it waits for its concurrency key.
            return None;
        }
        let lease_ttl_ms = effective_lease_ttl_ms(spec_step);
        // Last: taking the token is the one check that changes the state.
        if let Some((rate_key, rate)) = super::keys::rate_key(workflow, a.step)
            && !self.spend_rate_token(&rate_key, rate)
        {
            return None;
        }
        self.last_attempt_id += 1;
        let attempt_id = AttemptId(self.last_attempt_id);
        let now_ms = self.now_ms;
        let workflow = Arc::make_mut(
            self.workflows
                .get_mut(&a.workflow_id)
                .expect("checked above"),
        );
        workflow.revision = ctx.index;
        let run = &mut workflow.steps[a.step.get()];
        run.state = StepState::Running;
        run.attempts += 1;
        run.attempt_id = attempt_id;
        run.agent = agent.name.clone();
        run.started_at_ms = now_ms;
        run.finished_at_ms = 0;
        // The previous attempt's result, if any, is in `run.earlier` now.
        run.output.clear();
        run.error.clear();
        run.exit_code = None;
        let step_name = workflow.spec.steps[a.step.get()].name.clone();
        self.ready.remove(&key);
        self.ready_index.remove(&key, &workflow.namespace);
        self.attempts.insert(
            attempt_id,
            LiveAttempt {
                workflow_id: a.workflow_id,
                step: a.step,
                agent_id: a.agent_id,
                request,
                lease_ttl_ms,
                assigned_at_ms: now_ms,
            },
        );
        self.allocated.entry(a.agent_id).or_default().add(request);
        events.push(
            self.event(ctx, a.workflow_id, pb::EventKind::StepAssigned, |e| {
                e.step = step_name;
                e.attempt_id = attempt_id.0;
                e.agent = agent.name.clone();
                e.step_state = pb::StepState::Running as i32;
            }),
        );
        Some(attempt_id)
    }

    pub(super) fn complete(
        &mut self,
        ctx: ApplyCtx,
        cmd: CompleteCommand,
        events: &mut Events,
    ) -> Response {
        // Identity and fencing token together: the attempt must be live (its token current) AND
        // leased to the reporting agent. A refusal changes nothing.
        let Some(live) = self.attempts.get(&cmd.attempt_id) else {
            return Response::ReportRefused {
                reason: format!(
                    "attempt {} is not running (unknown, finished, expired or cancelled)",
                    cmd.attempt_id
                ),
            };
        };
        if live.agent_id != cmd.agent_id {
            return Response::ReportRefused {
                reason: format!(
                    "attempt {} is leased to agent {}, not agent {}",
                    cmd.attempt_id, live.agent_id, cmd.agent_id
                ),
            };
        }
        let live = self.release(cmd.attempt_id).expect("checked above");
        let now_ms = self.now_ms;
        let workflow = self.workflow_changed(live.workflow_id, ctx);
        let step = live.step.get();
        let spec_step = workflow.spec.steps[step].clone();
        let run = &mut workflow.steps[step];
        debug_assert_eq!(
            run.attempt_id, cmd.attempt_id,
            "a live attempt is its step's current one"
        );
        run.finished_at_ms = now_ms;
        let (output_bytes, error_bytes) = (cmd.output.len() as u64, cmd.error.len() as u64);
        run.output = truncate_utf8(cmd.output, OUTPUT_BYTES_MAX);
        run.error = truncate_utf8(cmd.error, OUTPUT_BYTES_MAX);
        run.exit_code = cmd.exit_code;
        let name = spec_step.name.clone();
        if cmd.success {
            run.state = StepState::Succeeded;
            events.push(
                self.event(ctx, live.workflow_id, pb::EventKind::StepFinished, |e| {
                    e.step = name;
                    e.attempt_id = cmd.attempt_id.0;
                    e.step_state = pb::StepState::Succeeded as i32;
                    e.output_bytes = output_bytes;
                    e.error_bytes = error_bytes;
                }),
            );
            self.step_finished(ctx, live.workflow_id, live.step, events);
            return Response::Completed;
        }
        run.failures += 1;
        if run.failures < effective_max_attempts(&spec_step) {
            run.end_attempt(AttemptOutcome::Failed);
            let delay_ms = backoff_delay_ms(&spec_step, run.failures);
            run.state = StepState::Backoff;
            run.retry_at_ms = now_ms.saturating_add(delay_ms);
            let retry_at_ms = run.retry_at_ms;
            let message = format!(
                "attempt failed: {}; retrying in {delay_ms} ms",
                last_line(&run.error)
            );
            self.backoff
                .insert((retry_at_ms, live.workflow_id, live.step));
            events.push(
                self.event(ctx, live.workflow_id, pb::EventKind::StepRetrying, |e| {
                    e.step = name;
                    e.attempt_id = cmd.attempt_id.0;
                    e.step_state = pb::StepState::Backoff as i32;
                    e.message = message;
                    e.output_bytes = output_bytes;
                    e.error_bytes = error_bytes;
                }),
            );
        } else {
            run.state = StepState::Failed;
            let message = last_line(&run.error).to_owned();
            events.push(
                self.event(ctx, live.workflow_id, pb::EventKind::StepFinished, |e| {
                    e.step = name;
                    e.attempt_id = cmd.attempt_id.0;
                    e.step_state = pb::StepState::Failed as i32;
                    e.message = message;
                    e.output_bytes = output_bytes;
                    e.error_bytes = error_bytes;
                }),
            );
            self.step_finished(ctx, live.workflow_id, live.step, events);
        }
        Response::Completed
    }

    pub(super) fn expire_leases(
        &mut self,
        ctx: ApplyCtx,
        attempts: Vec<AttemptId>,
        events: &mut Events,
    ) -> Response {
        for attempt_id in attempts {
            // A stopped attempt's lease that lapsed: what it held comes back. Already reported,
            // or expired by an earlier entry: nothing to do.
            let Some(live) = self.release(attempt_id) else {
                self.end_drain(ctx, attempt_id, events);
                continue;
            };
            let now_ms = self.now_ms;
            let workflow = self.workflow_changed(live.workflow_id, ctx);
            let step = live.step.get();
            let name = workflow.spec.steps[step].name.clone();
            let run = &mut workflow.steps[step];
            run.lease_expiries += 1;
            run.finished_at_ms = now_ms;
            let give_up = run.lease_expiries >= LEASE_EXPIRIES_PER_STEP_MAX;
            if give_up {
                run.state = StepState::Failed;
                run.error = format!(
                    "lease expired {} times; the step's agents keep dying or losing contact",
                    run.lease_expiries
                );
            } else {
                run.end_attempt(AttemptOutcome::LeaseExpired);
                run.state = StepState::Ready;
                run.ready_at_ms = now_ms;
            }
            let expired = self.event(
                ctx,
                live.workflow_id,
                pb::EventKind::StepLeaseExpired,
                |e| {
                    e.step = name.clone();
                    e.attempt_id = attempt_id.0;
                    e.message = format!(
                        "lease of attempt {attempt_id} expired on agent {}",
                        live.agent_id
                    );
                },
            );
            events.push(expired);
            if give_up {
                self.step_finished(ctx, live.workflow_id, live.step, events);
            } else {
                let workflow = self.workflows.get(&live.workflow_id).expect("exists");
                enqueue(&mut self.ready, &mut self.ready_index, workflow, live.step);
                events.push(
                    self.event(ctx, live.workflow_id, pb::EventKind::StepReady, |e| {
                        e.step = name;
                        e.step_state = pb::StepState::Ready as i32;
                    }),
                );
            }
        }
        Response::Done
    }

    pub(super) fn tick(&mut self, ctx: ApplyCtx, events: &mut Events) -> Response {
        let now_ms = self.now_ms;
        // Retries whose backoff has run out.
        while let Some(&(retry_at_ms, workflow_id, step)) = self.backoff.get_min() {
            if retry_at_ms > now_ms {
                break;
            }
            self.backoff.remove(&(retry_at_ms, workflow_id, step));
            let Some(workflow) = self.workflows.get_mut(&workflow_id) else {
                continue;
            };
            let workflow = Arc::make_mut(workflow);
            workflow.revision = ctx.index;
            let name = workflow.spec.steps[step.get()].name.clone();
            let run = &mut workflow.steps[step.get()];
            run.state = StepState::Ready;
            run.ready_at_ms = now_ms;
            enqueue(&mut self.ready, &mut self.ready_index, workflow, step);
            events.push(self.event(ctx, workflow_id, pb::EventKind::StepReady, |e| {
                e.step = name;
                e.step_state = pb::StepState::Ready as i32;
            }));
        }
        // Ready steps past their schedule-to-start deadline fail, visibly, instead of waiting
        // forever (no agent matches, or the fleet is full).
        for key in self.overdue_ready() {
            let workflow = Arc::make_mut(
                self.workflows
                    .get_mut(&key.workflow_id)
                    .expect("ready step's workflow exists"),
            );
            self.ready.remove(&key);
            self.ready_index.remove(&key, &workflow.namespace);
            workflow.revision = ctx.index;
            let spec_step = &workflow.spec.steps[key.step.get()];
            let name = spec_step.name.clone();
            let message = format!(
                "not started within {} ms of becoming ready (schedule-to-start timeout)",
                spec_step.schedule_to_start_timeout_ms
            );
            let run = &mut workflow.steps[key.step.get()];
            run.state = StepState::Failed;
            run.finished_at_ms = now_ms;
            run.error = message.clone();
            events.push(
                self.event(ctx, key.workflow_id, pb::EventKind::StepFinished, |e| {
                    e.step = name;
                    e.step_state = pb::StepState::Failed as i32;
                    e.message = message;
                }),
            );
            self.step_finished(ctx, key.workflow_id, key.step, events);
        }
        // Waits past their timeout fail; workflows past their whole-run timeout end, as a
        // cancel would end them.
        self.expire_signals(ctx, events);
        self.time_out_due(ctx, events);
        // Schedules whose time has come start their runs.
        self.fire_schedules(ctx, events);
        Response::Done
    }

    /// Ready steps whose schedule-to-start deadline has passed at the state's time.
    pub fn overdue_ready(&self) -> Vec<ReadyKey> {
        let now_ms = self.now_ms;
        self.overdue_ready_at(now_ms)
    }

    /// Ready steps whose schedule-to-start deadline has passed at `now_ms` (the leader asks with
    /// its clock to decide whether a Tick is due).
    pub fn overdue_ready_at(&self, now_ms: u64) -> Vec<ReadyKey> {
        let mut due: Vec<ReadyKey> = self.ready_index.due(now_ms).copied().collect();
        // In queue order, as they are failed in that order.
        due.sort_unstable();
        due
    }

    /// Whether a Tick at `now_ms` would change anything.
    pub fn tick_due(&self, now_ms: u64) -> bool {
        self.backoff_due(now_ms)
            || self.any_overdue_ready_at(now_ms)
            || self.timeout_due(now_ms)
            || self.signal_timeout_due(now_ms)
            || self.schedule_due_at(now_ms)
    }

    /// Whether a retry's backoff has ended by `now_ms`. O(log n).
    pub fn backoff_due(&self, now_ms: u64) -> bool {
        self.backoff
            .get_min()
            .is_some_and(|&(at, _, _)| at <= now_ms)
    }

    /// Whether a ready step is past its schedule-to-start deadline at `now_ms`. O(log n).
    pub fn any_overdue_ready_at(&self, now_ms: u64) -> bool {
        self.ready_index.any_due(now_ms)
    }

    /// Removes a live attempt and gives its capacity back.
    pub(super) fn release(&mut self, attempt_id: AttemptId) -> Option<LiveAttempt> {
        let live = self.attempts.remove(&attempt_id)?;
        self.unallocate(live.agent_id, live.request);
        Some(live)
    }

    /// Counts `request` against agent `id`'s capacity.
    pub(super) fn allocate(&mut self, id: AgentId, request: Allocation) {
        self.allocated.entry(id).or_default().add(request);
    }

    /// Gives `request` of agent `id`'s capacity back.
    pub(super) fn unallocate(&mut self, id: AgentId, request: Allocation) {
        if let Some(allocated) = self.allocated.get_mut(&id) {
            allocated.sub(request);
            if *allocated == Allocation::default() {
                self.allocated.remove(&id);
            }
        }
    }

    /// A step reached a terminal state: decide its waiting dependents (ready or skipped, by their
    /// `when`), and end the workflow when every step has ended.
    pub(super) fn step_finished(
        &mut self,
        ctx: ApplyCtx,
        workflow_id: WorkflowId,
        step: StepIndex,
        events: &mut Events,
    ) {
        let now_ms = self.now_ms;
        let workflow = Arc::make_mut(
            self.workflows
                .get_mut(&workflow_id)
                .expect("workflow exists"),
        );
        // Iterative: a skip can cascade down a long chain.
        let mut finished = vec![step];
        let mut newly_ready = Vec::new();
        let mut skipped = Vec::new();
        while let Some(done) = finished.pop() {
            let dependents = workflow.steps[done.get()].dependents.clone();
            for d in dependents {
                let run = &workflow.steps[d.get()];
                if run.state != StepState::Waiting {
                    continue;
                }
                let deps: Vec<StepState> = run
                    .deps
                    .iter()
                    .map(|&i| workflow.steps[i.get()].state)
                    .collect();
                if !deps.iter().all(|s| s.is_terminal()) {
                    continue;
                }
                let when = pb::RunCondition::try_from(workflow.spec.steps[d.get()].when)
                    .unwrap_or_default();
                let runs = match when {
                    pb::RunCondition::Always => true,
                    pb::RunCondition::Failure => deps.contains(&StepState::Failed),
                    pb::RunCondition::Unspecified | pb::RunCondition::Success => {
                        deps.iter().all(|&s| s == StepState::Succeeded)
                    }
                };
                let run = &mut workflow.steps[d.get()];
                if runs {
                    run.state = StepState::Ready;
                    run.ready_at_ms = now_ms;
                    newly_ready.push(d);
                } else {
                    run.state = StepState::Skipped;
                    run.finished_at_ms = now_ms;
                    skipped.push(d);
                    finished.push(d);
                }
            }
        }
        // Ends the workflow once, by the step that finished its last one: called again for
        // another step of a workflow already ended (a retry calls it per finished dependency)
        // it changes nothing.
        let all_done = workflow.state == WorkflowState::Running
            && workflow.steps.iter().all(|s| s.state.is_terminal());
        if all_done {
            let failed = workflow.steps.iter().any(|s| s.state == StepState::Failed);
            workflow.state = if failed {
                WorkflowState::Failed
            } else {
                WorkflowState::Succeeded
            };
            workflow.finished_at_ms = now_ms;
            if failed {
                let names: Vec<&str> = workflow
                    .steps
                    .iter()
                    .zip(&workflow.spec.steps)
                    .filter(|(run, _)| run.state == StepState::Failed)
                    .map(|(_, spec)| spec.name.as_str())
                    .collect();
                workflow.reason = format!("step(s) failed: {}", names.join(", "));
            }
        }
        let workflow = self.workflows.get(&workflow_id).expect("exists").clone();
        for d in skipped {
            events.push(
                self.event(ctx, workflow_id, pb::EventKind::StepSkipped, |e| {
                    e.step = workflow.spec.steps[d.get()].name.clone();
                    e.step_state = pb::StepState::Skipped as i32;
                }),
            );
        }
        for d in newly_ready {
            enqueue(&mut self.ready, &mut self.ready_index, &workflow, d);
            events.push(self.event(ctx, workflow_id, pb::EventKind::StepReady, |e| {
                e.step = workflow.spec.steps[d.get()].name.clone();
                e.step_state = pb::StepState::Ready as i32;
            }));
        }
        if all_done {
            events.push(
                self.event(ctx, workflow_id, pb::EventKind::WorkflowFinished, |e| {
                    e.workflow_state = workflow.state.to_proto() as i32;
                    e.message = workflow.reason.clone();
                }),
            );
        }
    }

    /// A workflow this entry changes, made unique for writing and stamped with the entry's index.
    /// Only for workflows the state references (live attempts, queued steps): a missing one is a
    /// broken invariant.
    fn workflow_changed(&mut self, id: WorkflowId, ctx: ApplyCtx) -> &mut Workflow {
        let workflow = Arc::make_mut(
            self.workflows
                .get_mut(&id)
                .expect("a workflow the state references exists"),
        );
        workflow.revision = ctx.index;
        workflow
    }

    /// An event at this entry's index and the state's time.
    pub(super) fn event(
        &self,
        ctx: ApplyCtx,
        workflow_id: WorkflowId,
        kind: pb::EventKind,
        fill: impl FnOnce(&mut pb::WorkflowEvent),
    ) -> pb::WorkflowEvent {
        let mut event = pb::WorkflowEvent {
            index: ctx.index,
            workflow_id: workflow_id.0,
            time_ms: self.now_ms,
            kind: kind as i32,
            ..Default::default()
        };
        fill(&mut event);
        event
    }

    pub fn agents(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    pub fn agent(&self, id: AgentId) -> Option<&Arc<Agent>> {
        self.agents.get(&id)
    }

    pub fn allocation(&self, id: AgentId) -> Allocation {
        self.allocated.get(&id).copied().unwrap_or_default()
    }

    pub fn live_attempts(&self) -> impl Iterator<Item = (&AttemptId, &LiveAttempt)> {
        self.attempts.iter()
    }

    pub fn live_attempt(&self, id: AttemptId) -> Option<&LiveAttempt> {
        self.attempts.get(&id)
    }

    /// The ready queue in scheduling order.
    pub fn ready_queue(&self) -> impl Iterator<Item = &ReadyKey> {
        self.ready.iter()
    }

    /// Whether a report by `agent` about `attempt` would certainly be refused, judged on this
    /// (possibly older) state: the attempt id was handed out and is no longer live, or it is live
    /// and leased to another agent. Attempt ids are never reused and an attempt never changes
    /// agent, so a refusal seen on an older state holds on every later one; an attempt this
    /// state has not seen yet is not judged (None).
    pub fn report_refusal(&self, attempt: AttemptId, agent: AgentId) -> Option<String> {
        if attempt.0 == 0 || attempt.0 > self.last_attempt_id {
            return None;
        }
        match self.attempts.get(&attempt) {
            None => Some(format!(
                "attempt {attempt} is not running (finished, expired or cancelled)"
            )),
            Some(live) if live.agent_id != agent => Some(format!(
                "attempt {attempt} is leased to agent {}, not agent {agent}",
                live.agent_id
            )),
            Some(_) => None,
        }
    }

    /// Why a ready step is still waiting, when it can be told from the state alone.
    pub fn pending_reason(&self, workflow: &Workflow, step: StepIndex) -> Option<String> {
        if workflow.steps[step.get()].state == StepState::AwaitingSignal
            && let Some(pb::step_spec::Task::Wait(wait)) = &workflow.spec.steps[step.get()].task
        {
            // Shown after "waiting:" by `baton get`.
            return Some(format!(
                "signal {:?} (baton signal {} {})",
                wait.signal,
                workflow.id,
                workflow.spec.steps[step.get()].name
            ));
        }
        if workflow.steps[step.get()].state != StepState::Ready {
            return None;
        }
        if workflow.paused_at_ms != 0 {
            return Some("the workflow is paused (baton resume)".to_owned());
        }
        if let Some(reason) = self.key_reason(workflow, step) {
            return Some(reason);
        }
        let spec_step = &workflow.spec.steps[step.get()];
        let request = step_request(spec_step);
        if self.agents.is_empty() {
            return Some("no agent is registered".to_owned());
        }
        if !self.agents.values().any(|a| a.runs(spec_step)) {
            return Some(format!(
                "no registered agent runs task type {:?}",
                task_type(spec_step).unwrap_or_default()
            ));
        }
        if !self.agents.values().any(|a| a.serves(&workflow.namespace)) {
            return Some(format!(
                "no registered agent serves namespace {} (baton agent --namespaces)",
                workflow.namespace
            ));
        }
        let matching: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| {
                labels_match(&spec_step.constraints, &a.labels)
                    && a.runs(spec_step)
                    && a.serves(&workflow.namespace)
            })
            .map(|a| a.as_ref())
            .collect();
        if matching.is_empty() {
            let constraints: Vec<String> = spec_step
                .constraints
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Some(format!(
                "no registered agent has labels {}",
                constraints.join(",")
            ));
        }
        if !matching
            .iter()
            .any(|a| Allocation::default().fits(a, request))
        {
            return Some(format!(
                "no matching agent is large enough (needs {} cpu millis, {} MB)",
                request.cpu_millis, request.memory_mb
            ));
        }
        Some("waiting for a free agent".to_owned())
    }
}

pub(super) fn ready_key(workflow: &Workflow, step: StepIndex) -> ReadyKey {
    ReadyKey {
        neg_priority: -effective_priority(&workflow.spec.steps[step.get()], &workflow.spec),
        ready_at_ms: workflow.steps[step.get()].ready_at_ms,
        workflow_id: workflow.id,
        step,
    }
}

/// The last non-empty line of an attempt's error, for event messages (kept in the workflow's
/// history): at most [`EVENT_LINE_BYTES_MAX`], its start kept.
pub(super) fn last_line(text: &str) -> &str {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if line.len() <= EVENT_LINE_BYTES_MAX {
        return line;
    }
    let mut cut = EVENT_LINE_BYTES_MAX;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    &line[..cut]
}

/// The longest error line an event carries (the whole error stays on the step).
pub const EVENT_LINE_BYTES_MAX: usize = 1024;

/// Keeps the last `max` bytes (the end of a log is what explains a failure), on a char boundary.
pub fn truncate_utf8(mut text: String, max: usize) -> String {
    let start = text.len() - tail_utf8(&text, max).len();
    text.drain(..start);
    text
}

/// The last `max` bytes of `text` at most, starting on a char boundary.
pub fn tail_utf8(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
