//! Concurrency keys and rate limits: semaphores and token buckets by name, per namespace.
//!
//! **Keys.** A workflow's `concurrency`, and each step's `concurrency` and `rate_limit`, name a
//! key that may use the workflow's parameters and input (`deploy-{{ params.env }}`). Keys are
//! rendered once, at submit ([`Keys`] on the workflow), and scoped by the namespace: two teams'
//! `deploy-prod` are two keys.
//!
//! **A workflow key** admits `limit` running workflows. A workflow that finds its key full at
//! submit (or at a retry) runs, but waits: `waiting_for_key`, its ready steps outside the ready
//! queue as a paused workflow's are. When a holder ends, the first waiter (by id, so by submit
//! order) takes the key and its ready steps are queued.
//!
//! **A step key** admits `limit` steps of the namespace at once. A step holds it from the moment
//! it is queued for an agent until its attempt ends: queued or running, and across a lease that
//! expires (the requeued step keeps its place). A step that finds its key full waits in the key's
//! own queue, by priority and age, outside the ready queue: placement never sees it, so a hot key
//! with thousands waiting costs a scheduling round nothing, and no round can start more than the
//! limit. A step whose attempt ends (done, failed into backoff) or whose workflow is paused gives
//! its key back, and the key's first waiter is queued in the same entry. The schedule-to-start
//! timeout counts the time spent waiting for the key.
//!
//! **Drains.** A running step stopped from outside (a cancel, a timeout) keeps its keys and its
//! share of its agent until the leader knows its attempt stopped: the agent's heartbeat no longer
//! lists it, or its lease lapses in the leader's book, and the leader proposes `ExpireLeases`
//! ([`ClusterState::drain`]). An agent cut off from the leader only stops at its lease's end, so
//! freeing either sooner could run two holders at once (the simulation found both).
//!
//! Holders and waiters are derived (rebuilt on decode, checked by the invariants): what holds is
//! a fact of the replicated state (a step queued, running or drained, a workflow not
//! `waiting_for_key`, or ended with a drained step).
//! `execute_recorded` settles the keys of every workflow an entry's command touched
//! ([`ClusterState::settle_keys`]) and admits waiters.
//!
//! **A rate limit** is a token bucket per key in the replicated state, refilled by the state's
//! time: each assignment of a step with the key takes a token, and an `Assign` that finds the
//! bucket empty leaves the step ready. A failover neither refills nor empties it, and a leader
//! whose clock is behind refills nothing. Placement reads the same buckets, so it does not
//! propose what the entry would refuse.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_proto::validate::{SpecError, render_key};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::ids::{AttemptId, StepIndex, WorkflowId};
use super::scheduling::{ReadyKey, ready_key};
use super::workflow::{StepState, Workflow};
use super::{ApplyCtx, ClusterState, Events};

/// A workflow's keys as rendered at submit, without the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// The workflow's concurrency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Arc<str>>,
    /// Each step's concurrency key, in spec order; empty when no step has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Option<Arc<str>>>,
    /// Each step's rate-limit key, in spec order; empty when no step has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<Option<Arc<str>>>,
}

impl Keys {
    /// The keys of `spec` rendered with the workflow's input and `params`; None when it names
    /// none. A wait step's keys are ignored (validation refuses them: it runs on no agent).
    pub fn render(
        spec: &pb::WorkflowSpec,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Arc<Keys>>, SpecError> {
        let render = |field: String, template: &str| {
            render_key(template, &spec.input, params)
                .map(Arc::<str>::from)
                .map_err(|why| SpecError {
                    field,
                    message: format!("key {why}"),
                })
        };
        let mut keys = Keys::default();
        if let Some(concurrency) = &spec.concurrency {
            keys.workflow = Some(render("concurrency.key".into(), &concurrency.key)?);
        }
        let runs_on_agent =
            |step: &pb::StepSpec| !matches!(step.task, Some(pb::step_spec::Task::Wait(_)));
        if spec
            .steps
            .iter()
            .any(|s| s.concurrency.is_some() && runs_on_agent(s))
        {
            keys.steps = spec
                .steps
                .iter()
                .enumerate()
                .map(|(i, step)| match &step.concurrency {
                    Some(c) if runs_on_agent(step) => {
                        render(format!("steps[{i}].concurrency.key"), &c.key).map(Some)
                    }
                    _ => Ok(None),
                })
                .collect::<Result<_, _>>()?;
        }
        if spec
            .steps
            .iter()
            .any(|s| s.rate_limit.is_some() && runs_on_agent(s))
        {
            keys.rates = spec
                .steps
                .iter()
                .enumerate()
                .map(|(i, step)| match &step.rate_limit {
                    Some(r) if runs_on_agent(step) => {
                        render(format!("steps[{i}].rate_limit.key"), &r.key).map(Some)
                    }
                    _ => Ok(None),
                })
                .collect::<Result<_, _>>()?;
        }
        Ok((keys != Keys::default()).then(|| Arc::new(keys)))
    }

    fn step(&self, step: StepIndex) -> Option<&Arc<str>> {
        self.steps.get(step.get())?.as_ref()
    }

    fn rate(&self, step: StepIndex) -> Option<&Arc<str>> {
        self.rates.get(step.get())?.as_ref()
    }
}

/// What a step stopped from outside still holds until its attempt has surely stopped (see
/// [`ClusterState::drain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The attempt that was stopped: the leader keeps its lease running in its lease book, and
    /// ends the drain as it would expire the lease (`ExpireLeases`).
    pub attempt_id: super::ids::AttemptId,
    /// The agent it ran on, and the share of it the attempt held.
    pub agent_id: super::ids::AgentId,
    pub request: super::scheduling::Allocation,
    pub lease_ttl_ms: u64,
}

/// A key of a namespace: (namespace, key).
pub type ScopedKey = (Arc<str>, Arc<str>);

/// `step`'s concurrency key, scoped, and its limit.
pub(super) fn step_key(workflow: &Workflow, step: StepIndex) -> Option<(ScopedKey, u32)> {
    let key = workflow.keys.as_ref()?.step(step)?;
    let limit = workflow.spec.steps[step.get()].concurrency.as_ref()?.limit;
    Some(((workflow.namespace.clone(), key.clone()), limit))
}

/// The workflow's concurrency key, scoped, and its limit.
pub(super) fn workflow_key(workflow: &Workflow) -> Option<(ScopedKey, u32)> {
    let key = workflow.keys.as_ref()?.workflow.as_ref()?;
    let limit = workflow.spec.concurrency.as_ref()?.limit;
    Some(((workflow.namespace.clone(), key.clone()), limit))
}

/// `step`'s rate-limit key, scoped, and its bucket's shape.
pub fn rate_key(workflow: &Workflow, step: StepIndex) -> Option<(ScopedKey, Rate)> {
    let key = workflow.keys.as_ref()?.rate(step)?;
    let limit = workflow.spec.steps[step.get()].rate_limit.as_ref()?;
    Some(((workflow.namespace.clone(), key.clone()), Rate::of(limit)))
}

/// One key's holders and waiters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot<H: Ord + Clone, W: Ord + Clone> {
    holders: OrdSet<H>,
    waiting: OrdSet<W>,
}

impl<H: Ord + Clone, W: Ord + Clone> Default for Slot<H, W> {
    fn default() -> Self {
        Slot {
            holders: OrdSet::new(),
            waiting: OrdSet::new(),
        }
    }
}

impl<H: Ord + Clone, W: Ord + Clone> Slot<H, W> {
    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiting.is_empty()
    }
}

/// Step keys: holders (queued or running steps) and waiters in queue order (derived).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct StepKeys {
    slots: OrdMap<ScopedKey, Slot<(WorkflowId, StepIndex), ReadyKey>>,
    /// Each waiting step's place in its key's queue.
    waits: OrdMap<(WorkflowId, StepIndex), ReadyKey>,
}

impl StepKeys {
    /// Takes `key` for the step queued under `ready` if it holds it already or the key has
    /// room; otherwise queues it behind the key's other waiters. True: it holds the key.
    pub(super) fn take(&mut self, key: &ScopedKey, limit: u32, ready: ReadyKey) -> bool {
        let id = (ready.workflow_id, ready.step);
        let slot = self.slots.entry(key.clone()).or_default();
        if slot.holders.contains(&id) {
            return true;
        }
        // Behind the steps already waiting, even with room: the settle after this command
        // admits them in queue order (priority, then age).
        if slot.holders.len() < limit as usize && slot.waiting.is_empty() {
            slot.holders.insert(id);
            return true;
        }
        slot.waiting.insert(ready);
        self.waits.insert(id, ready);
        false
    }

    /// Every step waiting for a key.
    pub(super) fn waiting(&self) -> impl Iterator<Item = ReadyKey> + '_ {
        self.waits.values().copied()
    }

    /// Whether the step waits for its key.
    pub(super) fn waits(&self, workflow: WorkflowId, step: StepIndex) -> bool {
        self.waits.contains_key(&(workflow, step))
    }

    /// Holders of `key` and steps waiting for it.
    pub fn count(&self, key: &ScopedKey) -> (usize, usize) {
        self.slots
            .get(key)
            .map_or((0, 0), |s| (s.holders.len(), s.waiting.len()))
    }

    /// Brings one keyed step up to date: `holds` whether it is queued or running, `waits` its
    /// queue key when it is ready for an agent but neither. True when it gave the key back.
    fn settle(
        &mut self,
        key: &ScopedKey,
        id: (WorkflowId, StepIndex),
        holds: bool,
        waits: Option<ReadyKey>,
    ) -> bool {
        let mut freed = false;
        if let Some(slot) = self.slots.get_mut(key) {
            if !holds && slot.holders.remove(&id).is_some() {
                freed = true;
            }
            if let Some(was) = self.waits.get(&id).copied()
                && Some(was) != waits
            {
                slot.waiting.remove(&was);
                self.waits.remove(&id);
            }
            if let Some(ready) = waits
                && !self.waits.contains_key(&id)
                && !holds
            {
                slot.waiting.insert(ready);
                self.waits.insert(id, ready);
            }
            if slot.is_empty() {
                self.slots.remove(key);
            }
        }
        freed
    }

    /// The first waiter of `key`, if the key has room for it by `limit_of` (its own limit).
    fn admit(&mut self, key: &ScopedKey, limit_of: impl Fn(&ReadyKey) -> u32) -> Option<ReadyKey> {
        let slot = self.slots.get_mut(key)?;
        let first = *slot.waiting.get_min()?;
        if slot.holders.len() >= limit_of(&first) as usize {
            return None;
        }
        slot.waiting.remove(&first);
        let id = (first.workflow_id, first.step);
        slot.holders.insert(id);
        self.waits.remove(&id);
        Some(first)
    }
}

/// Workflow keys: holders (running, admitted) and waiters by id (derived).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct WorkflowKeys {
    slots: OrdMap<ScopedKey, Slot<WorkflowId, WorkflowId>>,
}

impl WorkflowKeys {
    /// Takes `key` for workflow `id` if it has room, else queues it. True: it holds the key.
    fn take(&mut self, key: &ScopedKey, limit: u32, id: WorkflowId) -> bool {
        let slot = self.slots.entry(key.clone()).or_default();
        if slot.holders.contains(&id) {
            return true;
        }
        if slot.holders.len() < limit as usize && slot.waiting.is_empty() {
            slot.holders.insert(id);
            return true;
        }
        slot.waiting.insert(id);
        false
    }

    /// Workflow `id` ended: out of the key. True when it held it.
    fn release(&mut self, key: &ScopedKey, id: WorkflowId) -> bool {
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        let held = slot.holders.remove(&id).is_some();
        slot.waiting.remove(&id);
        if slot.is_empty() {
            self.slots.remove(key);
        }
        held
    }

    /// Holders of `key` and workflows waiting for it.
    pub fn count(&self, key: &ScopedKey) -> (usize, usize) {
        self.slots
            .get(key)
            .map_or((0, 0), |s| (s.holders.len(), s.waiting.len()))
    }
}

/// A rate limit's shape, in 1/60,000ths of a token (so both per-second and per-minute rates
/// refill a whole number of units per millisecond).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Units per millisecond.
    per_ms: u64,
    /// Units a full bucket holds.
    capacity: u64,
}

/// Units of one token.
const TOKEN: u64 = 60_000;

impl Rate {
    pub fn of(limit: &pb::RateLimit) -> Rate {
        Rate {
            per_ms: u64::from(limit.per_second) * 60 + u64::from(limit.per_minute),
            capacity: u64::from(limit.burst.max(1)) * TOKEN,
        }
    }
}

/// A rate-limit key's bucket: what it held at `at_ms` (state time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateBucket {
    units: u64,
    at_ms: u64,
    /// When it is full again at the rate of the step that last spent from it.
    full_at_ms: u64,
}

impl RateBucket {
    /// What it holds at `now_ms` (never before `at_ms`: time that went back refills nothing).
    fn at(self, rate: Rate, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.units
            .saturating_add(elapsed.saturating_mul(rate.per_ms))
            .min(rate.capacity)
    }
}

/// Whole tokens in `bucket` (None: a full one) at `now_ms`.
pub fn tokens_at(bucket: Option<&RateBucket>, rate: Rate, now_ms: u64) -> u64 {
    bucket.map_or(rate.capacity, |b| b.at(rate, now_ms)) / TOKEN
}

/// Milliseconds from `now_ms` until `bucket` holds a whole token (0: it does).
pub fn next_token_ms(bucket: Option<&RateBucket>, rate: Rate, now_ms: u64) -> u64 {
    let held = bucket.map_or(rate.capacity, |b| b.at(rate, now_ms));
    if held >= TOKEN || rate.per_ms == 0 {
        return 0;
    }
    (TOKEN - held).div_ceil(rate.per_ms)
}

impl ClusterState {
    /// The bucket of a rate-limit key (None: full, or never used).
    pub fn rate_bucket(&self, key: &ScopedKey) -> Option<&RateBucket> {
        self.rate_buckets.get(key)
    }

    /// Takes a token for `key` at the state's time; false (and nothing changes) when it has
    /// none.
    pub(super) fn spend_rate_token(&mut self, key: &ScopedKey, rate: Rate) -> bool {
        let now_ms = self.now_ms;
        let old = self.rate_buckets.get(key).copied();
        let held = old.map_or(rate.capacity, |b| b.at(rate, now_ms));
        if held < TOKEN {
            return false;
        }
        if let Some(old) = old {
            self.rate_full.remove(&(old.full_at_ms, key.clone()));
        }
        let units = held - TOKEN;
        let bucket = RateBucket {
            units,
            at_ms: now_ms,
            full_at_ms: now_ms.saturating_add((rate.capacity - units).div_ceil(rate.per_ms.max(1))),
        };
        self.rate_buckets.insert(key.clone(), bucket);
        self.rate_full.insert((bucket.full_at_ms, key.clone()));
        true
    }

    /// Forgets the buckets that are full again by the state's time (absent means full), so a
    /// key no step uses any more does not stay forever. O(log n) per bucket dropped.
    pub(super) fn drop_full_rate_buckets(&mut self) {
        while let Some((full_at_ms, key)) = self.rate_full.get_min().cloned()
            && full_at_ms <= self.now_ms
        {
            self.rate_full.remove(&(full_at_ms, key.clone()));
            self.rate_buckets.remove(&key);
        }
    }

    /// The buckets by the time they are full again, as the buckets say (derived).
    pub(super) fn derive_rate_full(&self) -> OrdSet<(u64, ScopedKey)> {
        self.rate_buckets
            .iter()
            .map(|(key, bucket)| (bucket.full_at_ms, key.clone()))
            .collect()
    }

    /// The event that says a workflow waits for its key.
    pub(super) fn key_waiting_event(
        &self,
        ctx: ApplyCtx,
        workflow: &Workflow,
    ) -> pb::WorkflowEvent {
        let (key, limit) = workflow_key(workflow).expect("a workflow waiting for a key has one");
        let (holders, waiting) = self.workflow_keys.count(&key);
        let message = format!(
            "waits for concurrency key {:?}: {holders} of {limit} running, {waiting} waiting",
            &*key.1
        );
        self.event(ctx, workflow.id, pb::EventKind::KeyWaiting, |e| {
            e.workflow_state = pb::WorkflowState::Running as i32;
            e.message = message;
        })
    }

    /// Per namespace with any: (workflows, steps) waiting for a concurrency key. O(keys).
    pub fn key_waiting_by_namespace(&self) -> std::collections::BTreeMap<Arc<str>, (u64, u64)> {
        let mut out: std::collections::BTreeMap<Arc<str>, (u64, u64)> = Default::default();
        for ((namespace, _), slot) in &self.workflow_keys.slots {
            out.entry(namespace.clone()).or_default().0 += slot.waiting.len() as u64;
        }
        for ((namespace, _), slot) in &self.ready_index.keys.slots {
            out.entry(namespace.clone()).or_default().1 += slot.waiting.len() as u64;
        }
        out
    }

    /// Takes the workflow key for a workflow starting (at submit or retry): whether it must
    /// wait. `workflow` is not in the state yet (submit) or is being rebuilt (retry).
    pub(super) fn take_workflow_key(&mut self, workflow: &Workflow) -> bool {
        match workflow_key(workflow) {
            Some((key, limit)) => !self.workflow_keys.take(&key, limit, workflow.id),
            None => false,
        }
    }

    /// After a command: the keys of every workflow it touched (named by the events from
    /// `start`) given back by what ended, and their waiters admitted, workflows first (their
    /// steps may then take step keys). Admitting a workflow records an event.
    pub(super) fn settle_keys(&mut self, ctx: ApplyCtx, start: usize, events: &mut Events) {
        let touched: BTreeSet<WorkflowId> = events[start..]
            .iter()
            .map(|e| WorkflowId(e.workflow_id))
            .filter(|id| id.0 != 0)
            .collect();
        self.settle_workflows(ctx, touched, events);
    }

    /// [`Self::settle_keys`] for the workflows `touched`.
    fn settle_workflows(
        &mut self,
        ctx: ApplyCtx,
        touched: BTreeSet<WorkflowId>,
        events: &mut Events,
    ) {
        let mut workflow_keys = BTreeSet::new();
        let mut step_keys = BTreeSet::new();
        for id in &touched {
            let Some(workflow) = self.workflows.get(id) else {
                continue;
            };
            if workflow.keys.is_none() {
                continue;
            }
            if let Some((key, _)) = workflow_key(workflow) {
                if workflow.state.is_terminal() && !self.drains_of(*id) {
                    self.workflow_keys.release(&key, *id);
                    if workflow.waiting_for_key {
                        Arc::make_mut(self.workflows.get_mut(id).expect("exists"))
                            .waiting_for_key = false;
                    }
                }
                workflow_keys.insert(key);
            }
            self.settle_step_keys(*id, &mut step_keys);
        }
        for key in workflow_keys {
            while let Some(id) = self.admit_workflow(&key) {
                self.settle_step_keys(id, &mut step_keys);
                let message = format!("took concurrency key {:?}", &*key.1);
                events.push(self.event(ctx, id, pb::EventKind::KeyAcquired, |e| {
                    e.workflow_state = pb::WorkflowState::Running as i32;
                    e.message = message;
                }));
                let workflow = Arc::make_mut(self.workflows.get_mut(&id).expect("exists"));
                workflow.revision = ctx.index;
            }
        }
        for key in step_keys {
            let workflows = &self.workflows;
            while let Some(ready) = self.ready_index.keys.admit(&key, |first| {
                workflows
                    .get(&first.workflow_id)
                    .and_then(|w| w.spec.steps[first.step.get()].concurrency.as_ref())
                    .map_or(u32::MAX, |c| c.limit)
            }) {
                let namespace = key.0.clone();
                self.ready.insert(ready);
                self.ready_index.queue(ready, &namespace);
            }
        }
    }

    /// The first workflow waiting for `key` takes it if it has room: it stops waiting and its
    /// ready steps are queued.
    fn admit_workflow(&mut self, key: &ScopedKey) -> Option<WorkflowId> {
        let slot = self.workflow_keys.slots.get_mut(key)?;
        // A paused waiter keeps its place but takes nothing until it is resumed (its resume
        // touches it, and admission runs again).
        let workflows = &self.workflows;
        let limit_of = |id: &WorkflowId| {
            workflows
                .get(id)
                .and_then(|w| w.spec.concurrency.as_ref())
                .map_or(u32::MAX, |c| c.limit) as usize
        };
        // Full for the first in line: nothing to look for (without scanning paused waiters).
        if slot.holders.len() >= limit_of(slot.waiting.get_min()?) {
            return None;
        }
        let first = slot
            .waiting
            .iter()
            .copied()
            .find(|id| workflows.get(id).is_some_and(|w| w.paused_at_ms == 0))?;
        if slot.holders.len() >= limit_of(&first) {
            return None;
        }
        slot.waiting.remove(&first);
        slot.holders.insert(first);
        let now_ms = self.now_ms;
        let workflow = Arc::make_mut(self.workflows.get_mut(&first).expect("a waiter exists"));
        workflow.waiting_for_key = false;
        let ready: Vec<StepIndex> = (0..workflow.steps.len() as u32)
            .map(StepIndex)
            .filter(|s| workflow.steps[s.get()].state == StepState::Ready)
            .collect();
        for step in ready {
            // The workflow had not started: its steps are ready from now, so their
            // schedule-to-start deadlines do not count the wait for the workflow's key.
            workflow.steps[step.get()].ready_at_ms = now_ms;
            super::scheduling::enqueue(&mut self.ready, &mut self.ready_index, workflow, step);
        }
        Some(first)
    }

    /// Whether any step of workflow `id` still holds its keys after its attempt was stopped.
    pub(super) fn drains_of(&self, id: WorkflowId) -> bool {
        self.drained_lease_of(id).is_some()
    }

    /// The longest lease among workflow `id`'s stopped attempts that still hold what they held.
    pub(super) fn drained_lease_of(&self, id: WorkflowId) -> Option<u64> {
        self.drains
            .range((id, StepIndex(0))..=(id, StepIndex(u32::MAX)))
            .map(|(_, drain)| drain.lease_ttl_ms)
            .max()
    }

    /// `drains` by attempt (derived).
    pub(super) fn derive_drained_attempts(&self) -> OrdMap<AttemptId, (WorkflowId, StepIndex)> {
        self.drains
            .iter()
            .map(|(&key, drain)| (drain.attempt_id, key))
            .collect()
    }

    /// The stopped attempts that still hold their agent's share and their keys, for the leader's
    /// lease book.
    pub fn drains(&self) -> impl Iterator<Item = &Drain> {
        self.drains.values()
    }

    /// Whether attempt `id` was stopped and still holds what it held.
    pub fn is_drained(&self, id: AttemptId) -> bool {
        self.drained_attempts.contains_key(&id)
    }

    /// A running step of a workflow that ends from outside (a cancel, its timeout) keeps what
    /// it held until its attempt has surely stopped: its concurrency keys (the step's and the
    /// workflow's) and its share of its agent. Its agent is told to stop now, but one cut off
    /// from the leader stops only when its lease runs out. So the leader keeps the attempt's
    /// lease running in its lease book, on its own clock like any lease, and ends the drain
    /// with `ExpireLeases` when the lease lapses, or sooner once the agent's heartbeat shows it
    /// no longer runs the attempt. Until then no other holder of its key may start, and its
    /// agent is offered nothing in its place.
    pub(super) fn drain(&mut self, live: &super::scheduling::LiveAttempt, attempt_id: AttemptId) {
        let key = (live.workflow_id, live.step);
        let drain = Drain {
            attempt_id,
            agent_id: live.agent_id,
            request: live.request,
            lease_ttl_ms: live.lease_ttl_ms,
        };
        if let Some(old) = self.drains.insert(key, drain) {
            self.drained_attempts.remove(&old.attempt_id);
            self.unallocate(old.agent_id, old.request);
        }
        self.drained_attempts.insert(attempt_id, key);
        self.allocate(live.agent_id, live.request);
    }

    /// Ends the drain of a stopped attempt (its lease lapsed in the leader's book, or its agent
    /// showed it stopped): its share and keys come back, and waiters take them. False when the
    /// attempt holds no drain.
    pub(super) fn end_drain(
        &mut self,
        ctx: ApplyCtx,
        attempt_id: AttemptId,
        events: &mut Events,
    ) -> bool {
        let Some(key) = self.drained_attempts.remove(&attempt_id) else {
            return false;
        };
        if let Some(drain) = self.drains.remove(&key) {
            self.unallocate(drain.agent_id, drain.request);
        }
        self.settle_workflows(ctx, BTreeSet::from([key.0]), events);
        true
    }

    /// Brings the step keys of workflow `id`'s steps up to date; collects the keys it touched.
    fn settle_step_keys(&mut self, id: WorkflowId, keys: &mut BTreeSet<ScopedKey>) {
        let Some(workflow) = self.workflows.get(&id) else {
            return;
        };
        let Some(rendered) = workflow.keys.as_ref() else {
            return;
        };
        for i in 0..rendered.steps.len() {
            let step = StepIndex(i as u32);
            let Some((key, _)) = step_key(workflow, step) else {
                continue;
            };
            let run = &workflow.steps[i];
            let ready = ready_key(workflow, step);
            let holds = run.state == StepState::Running
                || (run.state == StepState::Ready && self.ready.contains(&ready))
                || self.drains.contains_key(&(id, step));
            let waits = (run.state == StepState::Ready
                && !holds
                && workflow.paused_at_ms == 0
                && !workflow.waiting_for_key)
                .then_some(ready);
            self.ready_index.keys.settle(&key, (id, step), holds, waits);
            keys.insert(key);
        }
    }

    /// The key indexes as the state says they should be.
    pub(super) fn derive_keys(&self) -> (WorkflowKeys, StepKeys) {
        let mut workflow_keys = WorkflowKeys::default();
        let mut step_keys = StepKeys::default();
        for workflow in self.workflows.values() {
            let draining = self.drains_of(workflow.id);
            if workflow.keys.is_none() || (workflow.state.is_terminal() && !draining) {
                continue;
            }
            if let Some((key, _)) = workflow_key(workflow) {
                let slot = workflow_keys.slots.entry(key).or_default();
                match workflow.waiting_for_key && !workflow.state.is_terminal() {
                    true => slot.waiting.insert(workflow.id),
                    false => slot.holders.insert(workflow.id),
                };
            }
            for (i, run) in workflow.steps.iter().enumerate() {
                let step = StepIndex(i as u32);
                let Some((key, _)) = step_key(workflow, step) else {
                    continue;
                };
                let ready = ready_key(workflow, step);
                let queued = run.state == StepState::Ready && self.ready.contains(&ready);
                let draining = self.drains.contains_key(&(workflow.id, step));
                if run.state == StepState::Running || queued || draining {
                    let slot = step_keys.slots.entry(key).or_default();
                    slot.holders.insert((workflow.id, step));
                } else if run.state == StepState::Ready
                    && workflow.paused_at_ms == 0
                    && !workflow.waiting_for_key
                {
                    let slot = step_keys.slots.entry(key).or_default();
                    slot.waiting.insert(ready);
                    step_keys.waits.insert((workflow.id, step), ready);
                }
            }
        }
        (workflow_keys, step_keys)
    }

    /// Holders never past their limit: of every key, no more holders than the largest limit
    /// among them (a key is taken only below the taker's own limit).
    pub(super) fn check_keys(&self) {
        assert_eq!(
            self.drained_attempts,
            self.derive_drained_attempts(),
            "the drain index does not match the drains"
        );
        for (id, step) in self.drains.keys() {
            let workflow = self.workflows.get(id).expect("a draining workflow exists");
            assert_ne!(
                workflow.steps[step.get()].state,
                StepState::Running,
                "a draining step runs again"
            );
        }
        let (workflow_keys, step_keys) = self.derive_keys();
        assert_eq!(
            self.workflow_keys, workflow_keys,
            "the workflow key index does not match the workflows"
        );
        assert_eq!(
            self.ready_index.keys, step_keys,
            "the step key index does not match the steps"
        );
        for slot in workflow_keys.slots.values() {
            let limit = slot
                .holders
                .iter()
                .filter_map(|id| self.workflows[id].spec.concurrency.as_ref())
                .map(|c| c.limit as usize)
                .max()
                .unwrap_or(0);
            assert!(slot.holders.len() <= limit, "a workflow key past its limit");
        }
        for slot in step_keys.slots.values() {
            let limit = slot
                .holders
                .iter()
                .filter_map(|(id, step)| {
                    self.workflows[id].spec.steps[step.get()]
                        .concurrency
                        .as_ref()
                })
                .map(|c| c.limit as usize)
                .max()
                .unwrap_or(0);
            assert!(slot.holders.len() <= limit, "a step key past its limit");
        }
    }

    /// Why a ready step waits for a key, when it does.
    pub(super) fn key_reason(&self, workflow: &Workflow, step: StepIndex) -> Option<String> {
        if workflow.waiting_for_key {
            let (key, limit) = workflow_key(workflow)?;
            let (holders, waiting) = self.workflow_keys.count(&key);
            return Some(format!(
                "the workflow waits for concurrency key {:?} ({holders} of {limit} running, {waiting} waiting)",
                &*key.1
            ));
        }
        if self.ready_index.keys.waits(workflow.id, step) {
            let (key, limit) = step_key(workflow, step)?;
            let (holders, waiting) = self.ready_index.keys.count(&key);
            return Some(format!(
                "concurrency key {:?} ({holders} of {limit} held, {waiting} waiting)",
                &*key.1
            ));
        }
        let (key, rate) = rate_key(workflow, step)?;
        let wait_ms = next_token_ms(self.rate_buckets.get(&key), rate, self.now_ms);
        (wait_ms > 0).then(|| {
            format!(
                "rate limit {:?}: its next token in {}",
                &*key.1,
                baton_proto::spec::format_duration_ms(wait_ms)
            )
        })
    }
}
