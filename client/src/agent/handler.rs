//! What an application plugs into the agent: [`Handler`]s for custom task types, the
//! [`TaskContext`] each call receives, and why an attempt was told to stop ([`StopReason`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Runs one custom task type. Implemented for every `Fn(TaskContext) -> impl Future` closure,
/// so most applications register a closure:
///
/// ```no_run
/// # use baton_client::agent::{TaskContext, TaskError};
/// let handler = |ctx: TaskContext| async move {
///     let size: u32 = ctx.payload().parse().map_err(TaskError::from)?;
///     Ok::<_, TaskError>(format!("resized to {size}"))
/// };
/// ```
///
/// The output (`Ok`) becomes the step's output, passed to its dependents; keep it small
/// (at most 64 KiB is kept). A handler must return soon after [`TaskContext::cancelled`]
/// fires: the agent abandons it a grace period later, and its result is then discarded.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: TaskContext) -> impl Future<Output = Result<String, TaskError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TaskError>> + Send + 'static,
{
    fn call(&self, ctx: TaskContext) -> impl Future<Output = Result<String, TaskError>> + Send {
        (self)(ctx)
    }
}

/// A handler behind a pointer, so that handlers of different types share one registry.
pub(crate) trait DynHandler: Send + Sync {
    fn call_boxed(&self, ctx: TaskContext) -> BoxFuture<'static, Result<String, TaskError>>;
}

pub(crate) struct Erased<H>(pub Arc<H>);

impl<H: Handler> DynHandler for Erased<H> {
    fn call_boxed(&self, ctx: TaskContext) -> BoxFuture<'static, Result<String, TaskError>> {
        let handler = self.0.clone();
        Box::pin(async move { handler.call(ctx).await })
    }
}

/// A failed task: its message becomes the step's error, `output` its (partial) output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    output: String,
}

impl TaskError {
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            output: String::new(),
        }
    }

    /// Output produced before the failure, reported with it.
    pub fn with_output(mut self, output: impl Into<String>) -> TaskError {
        self.output = output.into();
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn output(&self) -> &str {
        &self.output
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error converts, so handlers can use `?`. (TaskError itself is deliberately not an
/// `Error`, which is what lets this impl coexist with `From<TaskError> for TaskError`.)
impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> TaskError {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        TaskError::new(message)
    }
}

/// Why the agent stopped an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The attempt ran past its execution timeout; it is reported as failed.
    Timeout { timeout_ms: u64 },
    /// The cluster sent StopAttempt (the workflow was cancelled, say).
    StoppedByCluster { reason: String },
    /// A heartbeat ack did not renew the lease: the cluster no longer leases it to us.
    LeaseLost,
    /// The lease's deadline passed without a renewal (cut off from the cluster): self-fencing.
    LeaseExpired,
    /// After a reconnect, the cluster did not re-attach the attempt.
    NotAttached,
    /// The agent is shutting down.
    Shutdown,
}

impl StopReason {
    /// Whether the attempt's result is still reported. Only a timeout is: in every other case
    /// the cluster has decided the attempt's fate already, or will when its lease expires.
    pub fn is_reported(&self) -> bool {
        matches!(self, StopReason::Timeout { .. })
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Timeout { timeout_ms } => write!(f, "timed out after {timeout_ms} ms"),
            StopReason::StoppedByCluster { reason } if reason.is_empty() => {
                f.write_str("stopped by the cluster")
            }
            StopReason::StoppedByCluster { reason } => {
                write!(f, "stopped by the cluster: {reason}")
            }
            StopReason::LeaseLost => f.write_str("lease lost: the cluster did not renew it"),
            StopReason::LeaseExpired => {
                f.write_str("lease expired: no renewal from the cluster in time")
            }
            StopReason::NotAttached => {
                f.write_str("not re-attached by the cluster after a reconnect")
            }
            StopReason::Shutdown => f.write_str("the agent is shutting down"),
        }
    }
}

/// The stop switch of one attempt, shared by the agent and the code running it.
#[derive(Clone, Debug, Default)]
pub(crate) struct AttemptControl {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl AttemptControl {
    pub fn new() -> AttemptControl {
        AttemptControl::default()
    }

    /// Stops the attempt; the first reason given is the one that sticks.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().cloned()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}

/// Everything a handler knows about the attempt it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    workflow_id: u64,
    step: String,
    attempt_id: u64,
    attempt_number: u32,
    task_type: String,
    payload: String,
    inputs: BTreeMap<String, String>,
    params: BTreeMap<String, String>,
    env: Vec<(String, String)>,
    deadline: Option<Instant>,
    control: AttemptControl,
}

/// The parts of a [`TaskContext`], for the agent (and for tests of handlers).
#[derive(Clone, Debug, Default)]
pub struct TaskContextParts {
    pub workflow_id: u64,
    pub step: String,
    pub attempt_id: u64,
    pub attempt_number: u32,
    pub task_type: String,
    pub payload: String,
    pub inputs: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    pub deadline: Option<Instant>,
}

impl TaskContext {
    /// A context that is never cancelled, for unit tests of handlers.
    pub fn new(parts: TaskContextParts) -> TaskContext {
        TaskContext::with_control(parts, AttemptControl::new())
    }

    pub(crate) fn with_control(parts: TaskContextParts, control: AttemptControl) -> TaskContext {
        TaskContext {
            inner: Arc::new(ContextInner {
                workflow_id: parts.workflow_id,
                step: parts.step,
                attempt_id: parts.attempt_id,
                attempt_number: parts.attempt_number,
                task_type: parts.task_type,
                payload: parts.payload,
                inputs: parts.inputs,
                params: parts.params,
                env: parts.env,
                deadline: parts.deadline,
                control,
            }),
        }
    }

    pub fn workflow_id(&self) -> u64 {
        self.inner.workflow_id
    }

    pub fn step(&self) -> &str {
        &self.inner.step
    }

    /// The attempt id, which is also its fencing token (`BATON_ATTEMPT`): pass it to outside
    /// systems so that they can refuse the writes of an attempt that has been superseded.
    pub fn attempt_id(&self) -> u64 {
        self.inner.attempt_id
    }

    /// 1 for the first attempt of the step, 2 for its first retry, ...
    pub fn attempt_number(&self) -> u32 {
        self.inner.attempt_number
    }

    /// `CustomTask.type`.
    pub fn task_type(&self) -> &str {
        &self.inner.task_type
    }

    /// `CustomTask.payload`, as written in the spec.
    pub fn payload(&self) -> &str {
        &self.inner.payload
    }

    /// Outputs of the steps this one depends on, by step name.
    pub fn inputs(&self) -> &BTreeMap<String, String> {
        &self.inner.inputs
    }

    pub fn input(&self, step: &str) -> Option<&str> {
        self.inner.inputs.get(step).map(String::as_str)
    }

    /// The workflow's input values.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.inner.params
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.inner.params.get(key).map(String::as_str)
    }

    /// The `BATON_*` variables an exec step would get, for handlers that start processes.
    pub fn env(&self) -> &[(String, String)] {
        &self.inner.env
    }

    /// When the execution timeout fires, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Completes when the attempt must stop: timeout, StopAttempt, lost lease, or shutdown.
    pub async fn cancelled(&self) {
        self.inner.control.stopped().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.control.token().is_cancelled()
    }

    /// A token cancelled with the attempt (a child: cancelling it stops nothing else).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.control.token().child_token()
    }

    /// Why the attempt was stopped, once it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner.control.reason()
    }
}
