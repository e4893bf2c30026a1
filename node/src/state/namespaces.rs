//! Namespaces: every workflow, template, schedule and trigger belongs to one, and tokens act
//! only in the namespaces they are given (see `security::grants`).
//!
//! `default` always exists and is never recorded, so a state from before namespaces (every
//! object in `default`) encodes, decodes and hashes exactly as it did. Objects of another
//! namespace are told apart inside the state by their keys:
//! - templates, schedules and triggers are keyed by [`scoped_name`] (`team-a/nightly`; names
//!   never hold a `/`), and commands naming one carry that scoped name;
//! - idempotency keys are indexed by [`scoped_key`] (the namespace and the key joined by a
//!   newline, which a key, printable ASCII, never holds), so two teams may use the same key.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use super::command::Response;
use super::ids::WorkflowId;
use super::workflow::{StepState, Workflow};

/// The namespace of everything that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest namespace name (a DNS label, as in Kubernetes).
pub const NAMESPACE_LEN_MAX: usize = 63;

/// Namespaces besides `default` a cluster may hold.
pub const NAMESPACES_MAX: usize = 1_000;

/// Longest description of a namespace, in bytes.
pub const NAMESPACE_DESCRIPTION_MAX: usize = 512;

static DEFAULT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(DEFAULT_NAMESPACE));

/// `default`, shared: workflows of the default namespace hold this one allocation.
pub fn default_namespace() -> Arc<str> {
    DEFAULT.clone()
}

/// The namespace a request names: its own, or `default` when empty.
pub fn or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

pub fn is_default(namespace: &str) -> bool {
    namespace == DEFAULT_NAMESPACE
}

/// Whether `name` may name a namespace: 1-63 of `a-z 0-9 -`, starting with a letter and not
/// ending with `-`. The error names what is wrong.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a namespace name is empty".into());
    }
    if name.len() > NAMESPACE_LEN_MAX {
        return Err(format!(
            "namespace {name:?} is {} bytes long, more than {NAMESPACE_LEN_MAX}",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return Err(format!(
            "namespace {name:?} must start with a letter a-z and not end with -"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("namespace {name:?} has {bad:?}, outside a-z 0-9 -"));
    }
    Ok(())
}

/// The state's key for object `name` of `namespace`: the name itself in `default`,
/// `namespace/name` elsewhere.
pub fn scoped_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() || is_default(namespace) {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// A scoped name's namespace and name.
pub fn split_scoped(scoped: &str) -> (&str, &str) {
    scoped
        .split_once('/')
        .unwrap_or((DEFAULT_NAMESPACE, scoped))
}

/// The idempotency index's key for `key` submitted in `namespace`.
pub fn scoped_key(namespace: &str, key: &str) -> Arc<str> {
    if is_default(namespace) {
        Arc::from(key)
    } else {
        Arc::from(format!("{namespace}\n{key}"))
    }
}

/// A namespace's record: any namespace but `default`, and `default` once its settings were
/// changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Quotas::is_none")]
    pub quotas: Quotas,
    /// Its share of the fleet when namespaces compete for agents (see [`Namespace::weight`]);
    /// 0 (left out) is 1.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub weight: u32,
}

/// The most a namespace's weight may be.
pub const WEIGHT_MAX: u32 = 1_000;

impl Namespace {
    /// Its weight: when several namespaces have ready steps, placement takes from each in
    /// proportion to it.
    pub fn weight(&self) -> u32 {
        self.weight.clamp(1, WEIGHT_MAX)
    }
}

/// A namespace's quotas; 0 is no limit. Checked at apply, with the state's own counts and
/// time, so every replica refuses alike and a new leader neither resets nor doubles a budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Running workflows at once: a submit (or a schedule's run, or a retry) past it is
    /// refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub running_workflows: u64,
    /// Ready plus running steps at once: a submit whose first steps would pass it is refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub active_steps: u64,
    /// Submits per second, on average (a token bucket refilled with the state's time).
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub submits_per_second: u32,
    /// Submits at once after a quiet spell (the bucket's size); 0: `submits_per_second`.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub submit_burst: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

impl Quotas {
    pub fn is_none(&self) -> bool {
        *self == Quotas::default()
    }

    /// The bucket's size in thousandths of a submit.
    fn burst_milli(&self) -> u64 {
        u64::from(self.submit_burst.max(self.submits_per_second)) * 1000
    }
}

/// Which quota refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    RunningWorkflows,
    ActiveSteps,
    SubmitsPerSecond,
}

impl Quota {
    /// Its name in the API and the CLI (`max_running_workflows`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Quota::RunningWorkflows => "max_running_workflows",
            Quota::ActiveSteps => "max_active_steps",
            Quota::SubmitsPerSecond => "submits_per_second",
        }
    }
}

/// A refusal by a quota: the namespace, the quota and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverQuota {
    pub namespace: String,
    pub quota: Quota,
    pub limit: u64,
}

impl std::fmt::Display for OverQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.quota {
            Quota::RunningWorkflows => format!("{} running workflows", self.limit),
            Quota::ActiveSteps => format!("{} ready and running steps", self.limit),
            Quota::SubmitsPerSecond => format!("{} submits per second", self.limit),
        };
        write!(
            f,
            "namespace {} is at its quota {} of {what}: nothing was written; wait for work to \
             finish, or raise it (baton namespace set {} --{} N)",
            self.namespace,
            self.quota.name(),
            self.namespace,
            self.quota.name().replace('_', "-"),
        )
    }
}

/// A namespace's submit budget: thousandths of a submit, as of a state time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub level_milli: u64,
    pub at_ms: u64,
}

/// See [`super::Command::CreateNamespace`]. The API has checked the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNamespaceCommand {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Quotas::is_none")]
    pub quotas: Quotas,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub weight: u32,
}

/// See [`super::Command::UpdateNamespace`]: each field given replaces the namespace's; one left
/// out keeps it, so two operators changing different quotas do not undo each other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateNamespaceCommand {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_workflows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submits_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Whether a step is a `wait` step (it never takes an agent, so no quota counts it).
pub fn is_wait(step: &baton_proto::v1::StepSpec) -> bool {
    matches!(step.task, Some(baton_proto::v1::step_spec::Task::Wait(_)))
}

/// Running workflows and ready-plus-running steps of one namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub running: u64,
    pub active_steps: u64,
}

/// [`Live`] counts per namespace, derived: rebuilt by `decode`, kept after every command from
/// the workflows its events name (every change to a workflow yields an event of it), and
/// checked against a recount by the invariants. A quota check reads it in O(log n).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct LiveCounts {
    /// Per workflow that is running or has an active step: (running, active steps).
    of: OrdMap<WorkflowId, (bool, u32)>,
    by_namespace: OrdMap<Arc<str>, Live>,
}

impl LiveCounts {
    /// What `workflow` adds now: a wait step is not active (ready, it waits for a signal, not
    /// an agent, from the end of the command that readied it).
    fn counted(workflow: &Workflow) -> (bool, u32) {
        let active = workflow
            .steps
            .iter()
            .zip(&workflow.spec.steps)
            .filter(|(run, spec)| {
                matches!(run.state, StepState::Ready | StepState::Running) && !is_wait(spec)
            })
            .count() as u32;
        (!workflow.state.is_terminal(), active)
    }

    /// Brings workflow `id` (None: gone) up to date; idempotent.
    pub(super) fn update(&mut self, id: WorkflowId, workflow: Option<&Workflow>) {
        let old = self.of.get(&id).copied().unwrap_or((false, 0));
        let new = workflow.map_or((false, 0), Self::counted);
        if old == new {
            return;
        }
        let Some(workflow) = workflow else {
            // Only finished workflows leave the state, and those count nothing.
            self.of.remove(&id);
            return;
        };
        let live = self
            .by_namespace
            .entry(workflow.namespace.clone())
            .or_default();
        live.running = (live.running + u64::from(new.0)).saturating_sub(u64::from(old.0));
        live.active_steps = (live.active_steps + u64::from(new.1)).saturating_sub(u64::from(old.1));
        if *live == Live::default() {
            self.by_namespace.remove(&workflow.namespace);
        }
        if new == (false, 0) {
            self.of.remove(&id);
        } else {
            self.of.insert(id, new);
        }
    }
}

/// What a namespace holds (see [`ClusterState::namespace_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub workflows: u64,
    pub running: u64,
    pub templates: u64,
    pub schedules: u64,
    pub triggers: u64,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

impl ClusterState {
    pub fn namespace_exists(&self, name: &str) -> bool {
        is_default(name) || self.namespaces.contains_key(name)
    }

    /// Namespace `name`'s quotas (none for a namespace without a record).
    pub fn quotas(&self, name: &str) -> Quotas {
        self.namespaces
            .get(name)
            .map(|n| n.quotas)
            .unwrap_or_default()
    }

    /// Namespace `name`'s weight (1 for one without a record).
    pub fn weight(&self, name: &str) -> u32 {
        self.namespaces.get(name).map_or(1, Namespace::weight)
    }

    /// Each namespace that has ready steps: its name, its weight and its ready steps in queue
    /// order (priority, then age).
    pub fn ready_by_namespace(
        &self,
    ) -> impl Iterator<Item = (&str, u32, &imbl::OrdSet<super::ReadyKey>)> {
        self.ready_index
            .namespaces()
            .map(|(name, keys)| (&**name, self.weight(name), keys))
    }

    /// Running workflows and ready-plus-running steps of namespace `name`.
    pub fn live(&self, name: &str) -> Live {
        self.live_counts
            .by_namespace
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// The quota a new running workflow of `namespace` with `roots` ready steps would pass, if
    /// any (`submit`: it is a submit, which the submit rate limits too), once what `freed`
    /// counts has ended (the runs a schedule's cancel_previous replaces).
    pub(super) fn over_quota(
        &self,
        namespace: &str,
        roots: u64,
        submit: bool,
        freed: Live,
    ) -> Option<OverQuota> {
        let quotas = self.quotas(namespace);
        if quotas.is_none() {
            return None;
        }
        let mut live = self.live(namespace);
        live.running = live.running.saturating_sub(freed.running);
        live.active_steps = live.active_steps.saturating_sub(freed.active_steps);
        let over = |quota, limit: u64| OverQuota {
            namespace: namespace.to_string(),
            quota,
            limit,
        };
        if quotas.running_workflows != 0 && live.running >= quotas.running_workflows {
            return Some(over(Quota::RunningWorkflows, quotas.running_workflows));
        }
        if quotas.active_steps != 0 && live.active_steps.saturating_add(roots) > quotas.active_steps
        {
            return Some(over(Quota::ActiveSteps, quotas.active_steps));
        }
        if submit && quotas.submits_per_second != 0 && self.submit_budget_milli(namespace) < 1000 {
            return Some(over(
                Quota::SubmitsPerSecond,
                u64::from(quotas.submits_per_second),
            ));
        }
        None
    }

    /// What `namespace`'s bucket holds now, refilled at its rate since it was last drawn.
    fn submit_budget_milli(&self, namespace: &str) -> u64 {
        let quotas = self.quotas(namespace);
        let full = quotas.burst_milli();
        match self.submit_buckets.get(namespace) {
            None => full,
            Some(bucket) => bucket
                .level_milli
                .saturating_add(
                    self.now_ms
                        .saturating_sub(bucket.at_ms)
                        .saturating_mul(u64::from(quotas.submits_per_second)),
                )
                .min(full),
        }
    }

    /// Takes one submit from `namespace`'s bucket, when it has a rate.
    pub(super) fn draw_submit(&mut self, namespace: &Arc<str>) {
        if self.quotas(namespace).submits_per_second == 0 {
            return;
        }
        let level_milli = self.submit_budget_milli(namespace).saturating_sub(1000);
        self.submit_buckets.insert(
            namespace.clone(),
            Bucket {
                level_milli,
                at_ms: self.now_ms,
            },
        );
    }

    /// The live counts of the workflows named by the events of the entry being applied that
    /// were not counted yet: after every command, and before a quota is checked within one (a
    /// command may start or end several workflows: a Tick's schedules, a backfill, a
    /// cancel_previous schedule's replaced run).
    pub(super) fn count_live_so_far(&mut self, events: &[baton_proto::v1::WorkflowEvent]) {
        let from = self.live_counted.min(events.len());
        self.count_live(&events[from..]);
        self.live_counted = events.len();
    }

    /// What a workflow counts now: running or not, and its ready and running steps.
    pub(super) fn counted(workflow: &Workflow) -> Live {
        let (running, active) = LiveCounts::counted(workflow);
        Live {
            running: u64::from(running),
            active_steps: u64::from(active),
        }
    }

    fn count_live(&mut self, events: &[baton_proto::v1::WorkflowEvent]) {
        let mut last = None;
        for event in events {
            let id = WorkflowId(event.workflow_id);
            // Events of one workflow come together: skip the repeats cheaply.
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            let workflow = self.workflows.get(&id).cloned();
            self.live_counts.update(id, workflow.as_deref());
        }
    }

    /// The live counts, recounted from the workflows.
    pub(super) fn derive_live_counts(&self) -> LiveCounts {
        let mut counts = LiveCounts::default();
        for (id, workflow) in &self.workflows {
            counts.update(*id, Some(workflow));
        }
        counts
    }

    pub(super) fn check_live_counts(&self) {
        assert_eq!(
            self.live_counts,
            self.derive_live_counts(),
            "live counts per namespace"
        );
    }

    /// The shared name of namespace `name`, if it exists (workflows hold it, so a namespace's
    /// name is allocated once).
    pub(super) fn namespace_arc(&self, name: &str) -> Option<Arc<str>> {
        if is_default(name) {
            return Some(default_namespace());
        }
        self.namespaces.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// Every namespace by name, `default` (which has no record) included.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, Option<&Namespace>)> {
        let mut all: Vec<(&str, Option<&Namespace>)> = self
            .namespaces
            .iter()
            .map(|(name, ns)| (&**name, Some(ns)))
            .collect();
        if !self.namespaces.contains_key(DEFAULT_NAMESPACE) {
            all.push((DEFAULT_NAMESPACE, None));
        }
        all.sort_by_key(|(name, _)| *name);
        all.into_iter()
    }

    /// What each namespace holds, by a walk of the whole state: for listings and for a delete,
    /// both rare.
    pub fn namespace_usage(&self) -> BTreeMap<&str, Usage> {
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        for workflow in self.workflows.values() {
            let entry = usage.entry(&workflow.namespace).or_default();
            entry.workflows += 1;
            entry.running += u64::from(!workflow.state.is_terminal());
        }
        for key in self.templates.keys() {
            usage.entry(split_scoped(key).0).or_default().templates += 1;
        }
        for key in self.schedules.keys() {
            usage.entry(split_scoped(key).0).or_default().schedules += 1;
        }
        for key in self.triggers.keys() {
            usage.entry(split_scoped(key).0).or_default().triggers += 1;
        }
        usage
    }

    /// [`super::Command::CreateNamespace`].
    pub(super) fn create_namespace(&mut self, create: CreateNamespaceCommand) -> Response {
        if let Err(reason) = check_namespace_name(&create.name) {
            return Response::Rejected { reason };
        }
        if self.namespace_exists(&create.name) {
            return Response::NamespaceExists { name: create.name };
        }
        if self.namespaces.len() >= NAMESPACES_MAX {
            return Response::Rejected {
                reason: format!("the cluster holds {NAMESPACES_MAX} namespaces, its most"),
            };
        }
        self.namespaces.insert(
            Arc::from(create.name),
            Namespace {
                description: create.description,
                created_ms: self.now_ms,
                quotas: create.quotas,
                weight: create.weight.min(WEIGHT_MAX),
            },
        );
        Response::Done
    }

    /// [`super::Command::UpdateNamespace`]. `default` gets a record the first time.
    pub(super) fn update_namespace(&mut self, update: UpdateNamespaceCommand) -> Response {
        if !self.namespace_exists(&update.name) {
            return Response::NoNamespace { name: update.name };
        }
        let now_ms = self.now_ms;
        let record = self
            .namespaces
            .entry(Arc::from(update.name.as_str()))
            .or_insert_with(|| Namespace {
                description: String::new(),
                created_ms: now_ms,
                quotas: Quotas::default(),
                weight: 0,
            });
        if let Some(description) = update.description {
            record.description = description;
        }
        if let Some(weight) = update.weight {
            record.weight = weight.min(WEIGHT_MAX);
        }
        let quotas = &mut record.quotas;
        let rate_before = (quotas.submits_per_second, quotas.submit_burst);
        for (field, value) in [
            (&mut quotas.running_workflows, update.running_workflows),
            (&mut quotas.active_steps, update.active_steps),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        for (field, value) in [
            (&mut quotas.submits_per_second, update.submits_per_second),
            (&mut quotas.submit_burst, update.submit_burst),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        // A new rate starts from a full bucket of its own.
        if rate_before != (quotas.submits_per_second, quotas.submit_burst) {
            self.submit_buckets.remove(update.name.as_str());
        }
        Response::Done
    }

    /// [`super::Command::DeleteNamespace`]: only an empty one, and never `default`.
    pub(super) fn delete_namespace(&mut self, name: &str) -> Response {
        if is_default(name) {
            return Response::Rejected {
                reason: "the default namespace cannot be deleted".into(),
            };
        }
        if !self.namespaces.contains_key(name) {
            return Response::NoNamespace { name: name.into() };
        }
        let usage = self
            .namespace_usage()
            .get(name)
            .copied()
            .unwrap_or_default();
        // Keys of its purged workflows answer until the idempotency window ends: a namespace
        // created again under the name would find them.
        let prefix = format!("{name}\n");
        let keys = self
            .idempotency_keys
            .range(Arc::<str>::from(prefix.as_str())..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(_, id)| !self.workflows.contains_key(*id))
            .count() as u64;
        // A live token naming it would act in a namespace created again under the name.
        let tokens = self
            .tokens
            .values()
            .filter(|t| t.revoked_ms.is_none() && t.namespaces.contains_key(name))
            .count() as u64;
        if !usage.is_empty() || tokens > 0 || keys > 0 {
            let held: Vec<String> = [
                (usage.workflows, "workflows"),
                (usage.templates, "templates"),
                (usage.schedules, "schedules"),
                (usage.triggers, "triggers"),
                (tokens, "live tokens"),
                (keys, "idempotency keys of purged workflows"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            return Response::Rejected {
                reason: format!(
                    "namespace {name} is not empty: it holds {} (delete them, revoke the \
                     tokens, or wait for finished workflows' retention and the idempotency \
                     window to end)",
                    held.join(", ")
                ),
            };
        }
        self.namespaces.remove(name);
        self.submit_buckets.remove(name);
        Response::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_labels() {
        for good in ["a", "team-a", "prod2", &"x".repeat(63)] {
            assert_eq!(check_namespace_name(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("Team", "start with a letter"),
            ("2team", "start with a letter"),
            ("team-", "not end with -"),
            ("team_a", "outside a-z 0-9 -"),
            ("team/a", "outside a-z 0-9 -"),
            (&"x".repeat(64), "more than 63"),
        ] {
            let err = check_namespace_name(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn scoped_names_and_keys_keep_default_unchanged_and_others_apart() {
        assert_eq!(scoped_name("default", "nightly"), "nightly");
        assert_eq!(scoped_name("", "nightly"), "nightly");
        assert_eq!(scoped_name("team-a", "nightly"), "team-a/nightly");
        assert_eq!(split_scoped("team-a/nightly"), ("team-a", "nightly"));
        assert_eq!(split_scoped("nightly"), ("default", "nightly"));
        assert_eq!(&*scoped_key("default", "k/1"), "k/1");
        // A default key that looks like another namespace's scoped key cannot be one: keys are
        // printable ASCII, the separator is a newline.
        assert_ne!(scoped_key("team-a", "k"), scoped_key("default", "team-a/k"));
        assert_eq!(&*scoped_key("team-a", "k"), "team-a\nk");
    }
}
