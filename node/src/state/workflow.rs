//! A workflow as the replicated state holds it: the submitted spec (kept protobuf-encoded on the
//! wire and in snapshots) and the runtime state of each step, indexed like the spec's steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{AttemptId, StepIndex, WorkflowId};
use super::scheduling::tail_utf8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl WorkflowState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Running)
    }

    pub fn to_proto(self) -> pb::WorkflowState {
        match self {
            Self::Running => pb::WorkflowState::Running,
            Self::Succeeded => pb::WorkflowState::Succeeded,
            Self::Failed => pb::WorkflowState::Failed,
            Self::Cancelled => pb::WorkflowState::Cancelled,
            Self::TimedOut => pb::WorkflowState::TimedOut,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Waiting,
    Ready,
    Running,
    Backoff,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    /// A `wait` step that is ready: it waits for `baton signal`, on no agent.
    AwaitingSignal,
}

impl StepState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    pub fn to_proto(self) -> pb::StepState {
        match self {
            Self::Waiting => pb::StepState::Waiting,
            Self::Ready => pb::StepState::Ready,
            Self::Running => pb::StepState::Running,
            Self::Backoff => pb::StepState::Backoff,
            Self::Succeeded => pb::StepState::Succeeded,
            Self::Failed => pb::StepState::Failed,
            Self::Skipped => pb::StepState::Skipped,
            Self::Cancelled => pb::StepState::Cancelled,
            Self::AwaitingSignal => pb::StepState::AwaitingSignal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: WorkflowId,
    /// Shared with the state's namespace record. Left out for `default`, so a workflow from
    /// before namespaces reads as one of `default`.
    #[serde(
        default = "super::namespaces::default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    pub namespace: Arc<str>,
    /// Shared with snapshot builders and readers; never mutated after submit.
    #[serde(with = "proto_bytes")]
    pub spec: Arc<pb::WorkflowSpec>,
    /// Shared with the state's index of keys.
    pub idempotency_key: Arc<str>,
    pub state: WorkflowState,
    pub created_at_ms: u64,
    pub finished_at_ms: u64,
    pub reason: String,
    /// Log index of the last command that changed this workflow.
    pub revision: u64,
    /// One per spec step, same order.
    pub steps: Vec<StepRun>,
    /// When an operator paused it (state time); 0 while not paused. No step of a paused workflow
    /// is queued (its ready steps wait outside the queue) or assigned.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub paused_at_ms: u64,
    /// When it times out (the spec's `timeout` from submit or retry); 0: never.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline_ms: u64,
    /// Operator retries so far (`baton retry`), at most `RETRIES_PER_WORKFLOW_MAX`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    /// Its parameters' values (see `SubmitCommand::params`); steps read them with the input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Every event derived for this workflow, length-delimited protobuf, oldest first (see
    /// `lifecycle.rs`). Left out while empty, so a state from before histories reads as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "serde_bytes")]
    pub history: Vec<u8>,
    /// The schedule run it is (see `schedules.rs`); None: submitted by a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduledRun>,
    /// The template version it was started from; None: a spec of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::templates::TemplateRef>,
    /// Its concurrency and rate-limit keys as rendered at submit (see `keys.rs`); None: it
    /// names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Arc<super::keys::Keys>>,
    /// Running, but its concurrency key is full: its ready steps wait outside the queue until it
    /// takes the key (see `keys.rs`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub waiting_for_key: bool,
}

/// Which schedule started a workflow, for which of its times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRun {
    pub name: Arc<str>,
    /// The time the calendar named (before jitter), ms since the Unix epoch.
    pub nominal_ms: u64,
}

/// The runtime state of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub state: StepState,
    /// Indexes (into the spec's steps) of the steps this one depends on.
    pub deps: Vec<StepIndex>,
    /// Indexes of the steps that depend on this one.
    #[serde(default)]
    pub dependents: Vec<StepIndex>,
    /// Attempts started (assigned to an agent).
    pub attempts: u32,
    /// Attempts that ended in failure (what the retry policy counts).
    #[serde(default)]
    pub failures: u32,
    /// Attempts lost to an expired lease (requeued without using a retry).
    #[serde(default)]
    pub lease_expiries: u32,
    /// The current or last attempt (its fencing token); 0 before the first.
    pub attempt_id: AttemptId,
    /// Name of the agent of the current or last attempt.
    pub agent: String,
    pub ready_at_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub retry_at_ms: u64,
    pub output: String,
    pub error: String,
    pub exit_code: Option<i32>,
    /// Attempts that ended before the current or last one, oldest first. Left out while empty,
    /// so a step that never retried encodes (field-named MessagePack) as before it existed, and
    /// a snapshot without it reads as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EndedAttempt>,
}

/// An attempt that ended and was followed by another: a failure the retry policy answered with a
/// new attempt, or a lease that expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndedAttempt {
    pub attempt_id: AttemptId,
    pub agent: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    /// The tail, at most `EARLIER_ATTEMPT_TEXT_BYTES_MAX` bytes.
    pub output: String,
    /// The tail, at most `EARLIER_ATTEMPT_TEXT_BYTES_MAX` bytes.
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Failed,
    LeaseExpired,
    /// Run again by a retry.
    Succeeded,
    /// Cancelled or timed out, then run again by a retry.
    Cancelled,
}

impl EndedAttempt {
    fn to_proto(&self) -> pb::StepAttempt {
        pb::StepAttempt {
            attempt_id: self.attempt_id.0,
            agent: self.agent.clone(),
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            outcome: match self.outcome {
                AttemptOutcome::Failed => pb::AttemptOutcome::Failed,
                AttemptOutcome::LeaseExpired => pb::AttemptOutcome::LeaseExpired,
                AttemptOutcome::Succeeded => pb::AttemptOutcome::Succeeded,
                AttemptOutcome::Cancelled => pb::AttemptOutcome::Cancelled,
            } as i32,
            exit_code: self.exit_code,
            output: self.output.clone(),
            error: self.error.clone(),
        }
    }
}

impl StepRun {
    pub fn new(deps: Vec<StepIndex>) -> Self {
        Self {
            state: StepState::Waiting,
            deps,
            dependents: Vec::new(),
            attempts: 0,
            failures: 0,
            lease_expiries: 0,
            attempt_id: AttemptId(0),
            agent: String::new(),
            ready_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            retry_at_ms: 0,
            output: String::new(),
            error: String::new(),
            exit_code: None,
            earlier: Vec::new(),
        }
    }

    /// Records the current attempt, which just ended as `outcome`, among the earlier ones: a
    /// new attempt will follow it.
    pub fn end_attempt(&mut self, outcome: AttemptOutcome) {
        use baton_proto::limits::EARLIER_ATTEMPT_TEXT_BYTES_MAX;
        let tail = |text: &str| tail_utf8(text, EARLIER_ATTEMPT_TEXT_BYTES_MAX).to_owned();
        self.earlier.push(EndedAttempt {
            attempt_id: self.attempt_id,
            agent: self.agent.clone(),
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            outcome,
            exit_code: self.exit_code,
            output: tail(&self.output),
            error: tail(&self.error),
        });
    }
}

impl Workflow {
    /// The API view. `with_steps = false` leaves out the spec and steps (for lists);
    /// `attempts_of` names the one step whose earlier attempts it fills.
    pub fn to_proto(&self, with_steps: bool, attempts_of: Option<&str>) -> pb::Workflow {
        let (spec, steps) = if with_steps {
            let steps = self
                .spec
                .steps
                .iter()
                .zip(&self.steps)
                .map(|(spec, run)| pb::Step {
                    name: spec.name.clone(),
                    state: run.state.to_proto() as i32,
                    attempts: run.attempts,
                    attempt_id: run.attempt_id.0,
                    agent: run.agent.clone(),
                    ready_at_ms: run.ready_at_ms,
                    started_at_ms: run.started_at_ms,
                    finished_at_ms: run.finished_at_ms,
                    output: run.output.clone(),
                    error: run.error.clone(),
                    exit_code: run.exit_code,
                    retry_at_ms: run.retry_at_ms,
                    pending_reason: String::new(),
                    earlier_attempts: if attempts_of == Some(spec.name.as_str()) {
                        run.earlier.iter().map(EndedAttempt::to_proto).collect()
                    } else {
                        Vec::new()
                    },
                })
                .collect();
            (Some((*self.spec).clone()), steps)
        } else {
            (None, Vec::new())
        };
        pb::Workflow {
            id: self.id.0,
            name: self.spec.name.clone(),
            labels: self.spec.labels.clone(),
            state: self.state.to_proto() as i32,
            idempotency_key: self.idempotency_key.to_string(),
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
            spec,
            steps,
            reason: self.reason.clone(),
            revision: self.revision,
            paused: self.paused_at_ms != 0 && !self.state.is_terminal(),
            deadline_ms: self.deadline_ms,
            params: self.params.clone(),
            // Schedules and templates are of the workflow's namespace: their names without it.
            schedule: self.schedule.as_ref().map_or_else(String::new, |s| {
                super::namespaces::split_scoped(&s.name).1.to_string()
            }),
            nominal_time_ms: self.schedule.as_ref().map_or(0, |s| s.nominal_ms),
            template: self.template.as_ref().map_or_else(String::new, |t| {
                super::namespaces::split_scoped(&t.name).1.to_string()
            }),
            template_version: self.template.as_ref().map_or(0, |t| t.version),
            namespace: self.namespace.to_string(),
        }
    }
}

impl Workflow {
    /// The API view with every step's earlier attempts: what the archive keeps.
    pub fn to_proto_archived(&self) -> pb::Workflow {
        let mut view = self.to_proto(true, None);
        for (step, run) in view.steps.iter_mut().zip(&self.steps) {
            step.earlier_attempts = run.earlier.iter().map(EndedAttempt::to_proto).collect();
        }
        view
    }
}

impl Workflow {
    /// Its idempotency key as the state's key index holds it (scoped by its namespace); empty
    /// when it has none.
    pub fn index_key(&self) -> Arc<str> {
        if self.idempotency_key.is_empty() || super::namespaces::is_default(&self.namespace) {
            self.idempotency_key.clone()
        } else {
            super::namespaces::scoped_key(&self.namespace, &self.idempotency_key)
        }
    }
}

fn is_default_namespace(namespace: &Arc<str>) -> bool {
    super::namespaces::is_default(namespace)
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

/// Serializes a protobuf message as its encoded bytes, which are deterministic for our messages
/// (maps are BTreeMaps) and tolerate fields added in later releases. Decoding shares equal specs
/// (see `specs`) and reads the bytes in place, without a copy.
mod proto_bytes {
    use std::fmt;

    use serde::de::{self, Visitor};

    use super::*;
    use crate::state::specs;

    pub fn serialize<S: Serializer>(
        spec: &Arc<pb::WorkflowSpec>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&spec.encode_to_vec()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<pb::WorkflowSpec>, D::Error> {
        struct SpecBytes;

        impl Visitor<'_> for SpecBytes {
            type Value = Arc<pb::WorkflowSpec>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an encoded workflow spec")
            }

            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
                specs::decode_in_snapshot(bytes).map_err(E::custom)
            }
        }

        deserializer.deserialize_bytes(SpecBytes)
    }
}
