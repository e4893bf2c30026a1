//! What goes into the Raft log: a leader-stamped [`LogEntry`] holding one [`Command`], and the
//! [`Response`] that applying it yields on every replica.
//!
//! Encoding: MessagePack with field names (`rmp_serde::to_vec_named`), a version byte in front.
//! Named fields let a later release add a field (with `#[serde(default)]`) and still read old
//! entries, and a node of the previous release can skip what it does not know. The bytes are
//! pinned by golden tests below: change them only with a new version byte and a decoder for the
//! old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{AgentId, AttemptId, NodeId, StepIndex, WorkflowId};
use super::workflow::WorkflowState;

/// The version byte in front of every encoded entry.
pub const ENTRY_FORMAT_V1: u8 = 1;

/// One Raft log entry's application data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The proposing leader's wall clock, in ms since the Unix epoch. The only way time enters
    /// the state machine (design rule 1).
    pub time_ms: u64,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Set once by the node that bootstraps the cluster; later attempts are ignored.
    InitCluster {
        cluster_id: String,
    },
    Submit(SubmitCommand),
    Cancel(CancelCommand),
    /// Records a node id as used, before it joins, so it is never handed out again.
    ReserveNodeId {
        node_id: NodeId,
    },
    /// An agent (re)registers its capacity and labels; the same name keeps its id.
    RegisterAgent(RegisterAgentCommand),
    /// Leases ready steps to agents, in one batch. Each is re-checked at apply.
    Assign {
        assignments: Vec<Assignment>,
    },
    /// An agent's result for an attempt; applied only if the attempt is still current.
    Complete(CompleteCommand),
    /// Leases the leader saw lapse: their steps go back to the queue as new attempts.
    ExpireLeases {
        attempts: Vec<AttemptId>,
    },
    /// Moves time-driven work along: retries whose backoff ended, steps past their
    /// schedule-to-start deadline. Proposed by the leader when something is due.
    Tick,
    /// Records a bearer token (its id, role and the SHA-256 of its secret; never the secret).
    CreateToken(CreateTokenCommand),
    /// Revokes a token on every replica at once: it stops authenticating as this entry applies.
    RevokeToken {
        id: String,
    },
    /// Records the data-folder incarnation of a member the leader heard from (first one wins):
    /// from then on, that node id is that folder, and a node coming back under the id with
    /// another folder (empty, or someone else's) is refused (see `storage::identity`).
    BindIncarnation {
        node_id: NodeId,
        incarnation: String,
    },
    /// The cluster's members (voters and learners) changed, from `previous` to `members`: ids
    /// that joined are used for good, ids that left are retired (a removed node is refused
    /// forever). The state machine turns each Raft membership entry into this command (openraft
    /// writes those entries itself, by joint consensus); no client proposes it.
    Membership {
        previous: Vec<NodeId>,
        members: Vec<NodeId>,
    },
    /// An operator pauses (no new step starts) or resumes a running workflow.
    Pause(PauseCommand),
    /// An operator reruns a finished workflow: its failed, cancelled and timed-out steps, or one
    /// step, each with every step after it.
    Retry(RetryCommand),
    /// Someone answers a `wait` step: it succeeds with the data as its output, or fails.
    Signal(SignalCommand),
    /// Finished workflows whose retention has passed leave the state (each re-checked at apply
    /// against the state's time), and purge records older than the idempotency window are
    /// forgotten. Proposed by the leader, at most `PURGE_BATCH_MAX` workflows per command.
    Purge(PurgeCommand),
    /// Registers a workflow spec as a template, as a new version if it changed.
    ApplyTemplate(super::templates::ApplyTemplateCommand),
    /// Forgets a template (its runs keep its name and version).
    DeleteTemplate {
        name: String,
    },
    /// Creates (or replaces) a schedule: see `state::schedules`.
    CreateSchedule(super::schedules::CreateScheduleCommand),
    /// Pauses or resumes a schedule.
    PauseSchedule(super::schedules::PauseScheduleCommand),
    /// Deletes a schedule; its runs go on.
    DeleteSchedule {
        name: String,
    },
    /// Runs a schedule now (its nominal time: the entry's time), as its overlap policy allows.
    TriggerSchedule {
        name: String,
    },
    /// Starts a run for every time in a range that has none.
    BackfillSchedule(super::schedules::BackfillScheduleCommand),
    /// Creates (or replaces) a webhook trigger: see `state::triggers`.
    CreateTrigger(super::triggers::CreateTriggerCommand),
    /// Deletes a webhook trigger; the runs it started go on.
    DeleteTrigger {
        name: String,
    },
    /// A change someone asked for, with who asked: applied as `command`, then recorded in the
    /// audit trail if it changed anything (see `state::audit`).
    Audited {
        actor: String,
        command: Box<Command>,
    },
    /// A change made outside the state machine (a membership change), for the audit trail.
    Note(super::audit::NoteCommand),
    /// Creates a namespace: see `state::namespaces`.
    CreateNamespace(super::namespaces::CreateNamespaceCommand),
    /// Deletes an empty namespace.
    DeleteNamespace {
        name: String,
    },
    /// Changes a namespace's description and quotas (the fields given).
    UpdateNamespace(super::namespaces::UpdateNamespaceCommand),
    /// Commands the leader grouped into one entry (see `raft::batcher`), or a client's
    /// `SubmitBatch`. They apply in order, exactly as consecutive entries would, with this
    /// entry's index and time; the response is [`Response::Batch`], one response per command. A
    /// batch inside a batch is refused (the batcher splices a proposed batch into its entry).
    Batch(Vec<Command>),
}

/// See [`Command::Pause`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PauseCommand {
    pub workflow_id: WorkflowId,
    /// true: pause; false: resume.
    pub paused: bool,
    /// Who asked (see `WorkflowEvent.actor`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

/// See [`Command::Retry`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryCommand {
    pub workflow_id: WorkflowId,
    /// Empty: the steps that failed, were cancelled or timed out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_step: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

/// See [`Command::Signal`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalCommand {
    pub workflow_id: WorkflowId,
    pub step: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reject: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

/// See [`Command::Purge`]. The cluster-wide durations travel in the command, so every replica
/// decides with the leader's settings and the state's own time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurgeCommand {
    pub workflows: Vec<WorkflowId>,
    /// The retention of workflows whose spec leaves it at 0 (`batond --retention`).
    pub default_retention_ms: u64,
    /// How long a purged workflow's record (its id, purge time and idempotency key) is kept
    /// (`batond --idempotency-window`).
    pub idempotency_window_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateTokenCommand {
    /// 16 hex digits, chosen at random by the creator; refused if already used.
    pub id: String,
    pub name: String,
    /// Cluster-wide: the role; namespaced: the strongest of `namespaces`' roles.
    pub role: baton_security::TokenRole,
    /// Namespace -> role for a token that acts only in those; empty: cluster-wide.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, baton_security::TokenRole>,
    /// SHA-256 of the token's secret.
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    /// The first admin token from `--bootstrap-token-file`: refused once any token exists.
    #[serde(default)]
    pub bootstrap: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterAgentCommand {
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub slots: u32,
    pub cpu_millis: u32,
    pub memory_mb: u32,
    /// The task types the agent runs (`exec`, `http`, `noop`, `sleep` and its custom handlers'
    /// types). Empty: the agent did not say (an entry written before agents' types were
    /// recorded), and it is offered every step, as then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_types: Vec<String>,
    /// The namespaces whose steps it takes; empty: every namespace's (left out, so an entry
    /// from before namespaces reads as that).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub workflow_id: WorkflowId,
    pub step: StepIndex,
    pub agent_id: AgentId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompleteCommand {
    pub attempt_id: AttemptId,
    pub agent_id: AgentId,
    pub success: bool,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl Command {
    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InitCluster { .. } => "init_cluster",
            Self::Submit(_) => "submit",
            Self::Cancel(_) => "cancel",
            Self::ReserveNodeId { .. } => "reserve_node_id",
            Self::RegisterAgent(_) => "register_agent",
            Self::Assign { .. } => "assign",
            Self::Complete(_) => "complete",
            Self::ExpireLeases { .. } => "expire_leases",
            Self::Tick => "tick",
            Self::CreateToken(_) => "create_token",
            Self::RevokeToken { .. } => "revoke_token",
            Self::BindIncarnation { .. } => "bind_incarnation",
            Self::Membership { .. } => "membership",
            Self::Purge(_) => "purge",
            Self::Pause(_) => "pause",
            Self::Retry(_) => "retry",
            Self::Signal(_) => "signal",
            Self::ApplyTemplate(_) => "apply_template",
            Self::DeleteTemplate { .. } => "delete_template",
            Self::CreateSchedule(_) => "create_schedule",
            Self::PauseSchedule(_) => "pause_schedule",
            Self::DeleteSchedule { .. } => "delete_schedule",
            Self::TriggerSchedule { .. } => "trigger_schedule",
            Self::BackfillSchedule(_) => "backfill_schedule",
            Self::CreateTrigger(_) => "create_trigger",
            Self::DeleteTrigger { .. } => "delete_trigger",
            Self::CreateNamespace(_) => "create_namespace",
            Self::DeleteNamespace { .. } => "delete_namespace",
            Self::UpdateNamespace(_) => "update_namespace",
            Self::Audited { .. } => "audited",
            Self::Note(_) => "note",
            Self::Batch(_) => "batch",
        }
    }

    /// Whether this is a purge, or a batch holding one.
    pub fn purges(&self) -> bool {
        match self {
            Self::Purge(_) => true,
            Self::Batch(commands) => commands.iter().any(Self::purges),
            _ => false,
        }
    }

    /// How many commands this is: a batch's length, else 1.
    pub fn count(&self) -> usize {
        match self {
            Self::Batch(commands) => commands.len(),
            _ => 1,
        }
    }

    /// Whether this brings new work into the cluster (a submit, or a batch holding one), as
    /// opposed to moving admitted work along (assignments, reports, cancels, expiries) or
    /// running the cluster (agents, members, tokens). A leader whose data disk is low refuses
    /// the first kind and keeps taking the rest: they are small, and finishing work is what
    /// frees the cluster.
    pub fn adds_workflows(&self) -> bool {
        match self {
            // A schedule's runs started by the leader's Tick are admitted work moving along;
            // creating one, triggering or backfilling it are new work.
            Self::Submit(_)
            | Self::CreateSchedule(_)
            | Self::TriggerSchedule { .. }
            | Self::BackfillSchedule(_) => true,
            Self::Batch(commands) => commands.iter().any(Self::adds_workflows),
            Self::Audited { command, .. } => command.adds_workflows(),
            Self::Note(_) => false,
            Self::InitCluster { .. }
            | Self::Cancel(_)
            | Self::ReserveNodeId { .. }
            | Self::RegisterAgent(_)
            | Self::Assign { .. }
            | Self::Complete(_)
            | Self::ExpireLeases { .. }
            | Self::Tick
            | Self::CreateToken(_)
            | Self::RevokeToken { .. }
            | Self::BindIncarnation { .. }
            | Self::Membership { .. }
            | Self::Pause(_)
            | Self::Retry(_)
            | Self::Signal(_)
            | Self::PauseSchedule(_)
            | Self::DeleteSchedule { .. }
            | Self::ApplyTemplate(_)
            | Self::DeleteTemplate { .. }
            | Self::CreateTrigger(_)
            | Self::DeleteTrigger { .. }
            | Self::CreateNamespace(_)
            | Self::DeleteNamespace { .. }
            | Self::UpdateNamespace(_)
            | Self::Purge(_) => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitCommand {
    /// A protobuf-encoded `baton.v1.WorkflowSpec`, validated by the API before proposing.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    /// Empty = no deduplication.
    #[serde(default)]
    pub idempotency_key: String,
    /// The values of the spec's declared parameters, resolved by the API (given or defaulted).
    /// Left out when empty, so a submit without parameters encodes as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The template version `spec` is (the API resolved it); recorded on the workflow. Left out
    /// when None, so a submit of a spec of its own encodes as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::templates::TemplateRef>,
    /// The namespace it runs in; empty: `default` (left out, so a default submit encodes as
    /// before).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Who asked (`security::actor`), for the workflow's history; empty: nobody said (an
    /// insecure cluster, a schedule). Left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelCommand {
    pub workflow_id: WorkflowId,
    #[serde(default)]
    pub reason: String,
    /// Who asked (see `WorkflowEvent.actor`); left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

/// The outcome of applying one command. Refusals are values, computed alike on every replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Membership entries and commands without a result.
    Done,
    Submitted {
        workflow_id: WorkflowId,
        /// false when the idempotency key matched an earlier workflow.
        created: bool,
    },
    Cancelled {
        state: WorkflowState,
    },
    NotFound {
        workflow_id: WorkflowId,
    },
    AgentRegistered {
        agent_id: AgentId,
    },
    TokenCreated,
    /// `was_live` false: the token was already revoked.
    TokenRevoked {
        was_live: bool,
    },
    /// One entry per requested assignment: the attempt id, or None if it no longer applied
    /// (step not ready any more, agent without room).
    Assigned {
        attempts: Vec<Option<AttemptId>>,
    },
    Completed,
    /// A report that is not for the step's current attempt held by that agent. Counted; it
    /// changes nothing else.
    ReportRefused {
        reason: String,
    },
    /// The command could not apply to the state (it passed validation on a node of another
    /// version, or raced with another command); nothing changed.
    Rejected {
        reason: String,
    },
    /// A pause or resume: whether it changed anything (false: the workflow already was so).
    Paused {
        changed: bool,
    },
    /// A retry: the steps that run again, and the workflow's state after it (running, unless
    /// every rerun step was skipped at once).
    Retried {
        steps: Vec<String>,
        state: WorkflowState,
    },
    /// A signal completed its step.
    Signalled,
    /// What a [`Command::Purge`] removed: workflows, and purge records past the window.
    Purged {
        workflows: u32,
        records: u32,
    },
    /// A template applied: its version, and whether it is new (false: the spec equals the
    /// latest version).
    TemplateApplied {
        version: u32,
        created: bool,
    },
    /// No template of that name.
    NoTemplate {
        name: String,
    },
    /// No schedule of that name.
    NoSchedule {
        name: String,
    },
    /// A schedule was created (or replaced: `created` false); when it fires next (0: never).
    ScheduleCreated {
        created: bool,
        next_ms: u64,
    },
    /// A pause, resume or delete of a schedule: whether it changed anything.
    ScheduleChanged {
        changed: bool,
    },
    /// A trigger: the run started (None when the overlap policy held it back), its nominal
    /// time, and what happened (`started`, `skipped`, `buffered`, `already run`).
    ScheduleFired {
        workflow_id: Option<WorkflowId>,
        nominal_ms: u64,
        outcome: String,
    },
    /// A backfill: the runs it started (nominal time, workflow), and how many times had one.
    Backfilled {
        started: Vec<(u64, WorkflowId)>,
        already_run: u32,
        /// The namespace's quota that stopped it before the range's end (the runs started
        /// stand).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stopped: Option<super::namespaces::OverQuota>,
    },
    /// A trigger was created (or replaced: `created` false).
    TriggerCreated {
        created: bool,
    },
    /// A trigger of that name exists, and the create did not ask to replace it.
    TriggerExists {
        name: String,
    },
    /// No trigger of that name.
    NoTrigger {
        name: String,
    },
    /// A namespace of that name exists already.
    NamespaceExists {
        name: String,
    },
    /// No namespace of that name.
    NoNamespace {
        name: String,
    },
    /// A namespace's quota refused the command; nothing changed.
    OverQuota(super::namespaces::OverQuota),
    /// The responses to a [`Command::Batch`], in its order.
    Batch(Vec<Response>),
}

/// An entry that is not a Baton entry of a version this node knows. Never expected in a healthy
/// log; the caller treats it as corruption.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty log entry")]
    Empty,
    #[error("log entry format version {0} is not supported by this batond")]
    Version(u8),
    #[error("log entry does not decode: {0}")]
    Body(#[from] rmp_serde::decode::Error),
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(ENTRY_FORMAT_V1);
        // Serializing a plain data struct into a Vec cannot fail.
        rmp_serde::encode::write_named(&mut out, self).expect("log entry encodes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Empty),
            Some((&ENTRY_FORMAT_V1, body)) => Ok(rmp_serde::from_slice(body)?),
            Some((&version, _)) => Err(DecodeError::Version(version)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn only_submits_and_batches_holding_one_add_workflows() {
        let submit = Command::Submit(SubmitCommand {
            actor: String::new(),
            namespace: Default::default(),
            spec: vec![],
            idempotency_key: String::new(),
            params: Default::default(),
            template: None,
        });
        assert!(submit.adds_workflows());
        assert!(Command::Batch(vec![Command::Tick, submit.clone()]).adds_workflows());
        assert!(!Command::Batch(vec![Command::Tick]).adds_workflows());
        for command in [
            Command::Tick,
            Command::Assign {
                assignments: vec![],
            },
            Command::ExpireLeases { attempts: vec![] },
            Command::RevokeToken { id: "t".into() },
            Command::ReserveNodeId { node_id: NodeId(4) },
            Command::Cancel(CancelCommand {
                workflow_id: WorkflowId(1),
                reason: String::new(),
                actor: String::new(),
            }),
        ] {
            assert!(!command.adds_workflows(), "{command:?}");
        }
    }

    /// Pins the on-disk bytes: a change here breaks every existing log.
    #[test]
    fn golden_submit_entry_bytes() {
        let entry = LogEntry {
            time_ms: 1_700_000_000_000,
            command: Command::Submit(SubmitCommand {
                actor: String::new(),
                namespace: Default::default(),
                spec: vec![0x0a, 0x01, b'w'],
                idempotency_key: "k1".into(),
                params: Default::default(),
                template: None,
            }),
        };
        let bytes = entry.encode();
        assert_eq!(
            hex(&bytes),
            "0182a774696d655f6d73cf0000018bcfe56800a7636f6d6d616e6481a67375626d697482a473706563c4030a0177af6964656d706f74656e63795f6b6579a26b31"
        );
        assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
    }

    #[test]
    fn golden_cancel_entry_bytes() {
        let entry = LogEntry {
            time_ms: 5,
            command: Command::Cancel(CancelCommand {
                workflow_id: WorkflowId(7),
                reason: String::new(),
                actor: String::new(),
            }),
        };
        let bytes = entry.encode();
        assert_eq!(
            hex(&bytes),
            "0182a774696d655f6d7305a7636f6d6d616e6481a663616e63656c82ab776f726b666c6f775f696407a6726561736f6ea0"
        );
        assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
    }

    #[test]
    fn golden_batch_entry_bytes() {
        let entry = LogEntry {
            time_ms: 5,
            command: Command::Batch(vec![
                Command::Cancel(CancelCommand {
                    workflow_id: WorkflowId(7),
                    reason: String::new(),
                    actor: String::new(),
                }),
                Command::Tick,
            ]),
        };
        let bytes = entry.encode();
        assert_eq!(
            hex(&bytes),
            "0182a774696d655f6d7305a7636f6d6d616e6481a562617463689281a663616e63656c82ab776f726b666c6f775f696407a6726561736f6ea0a47469636b"
        );
        assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
    }

    #[test]
    fn golden_bind_incarnation_entry_bytes() {
        let entry = LogEntry {
            time_ms: 5,
            command: Command::BindIncarnation {
                node_id: NodeId(2),
                incarnation: "00ff00ff00ff00ff".into(),
            },
        };
        let bytes = entry.encode();
        assert_eq!(
            hex(&bytes),
            "0182a774696d655f6d7305a7636f6d6d616e6481b062696e645f696e6361726e6174696f6e82a76e6f64655f696402ab696e6361726e6174696f6eb030306666303066663030666630306666"
        );
        assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
    }

    /// One entry of every command kind, with the bytes each encodes to: a change here breaks
    /// every existing log (and a node of the previous release reading this one's entries).
    fn golden_entries() -> Vec<(Command, &'static str)> {
        vec![
            (
                Command::InitCluster {
                    cluster_id: "c0ffee".into(),
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481ac696e69745f636c757374657281aa636c75737465725f6964a6633066666565",
            ),
            (
                Command::Membership {
                    previous: vec![NodeId(1), NodeId(2), NodeId(3)],
                    members: vec![NodeId(1), NodeId(3), NodeId(4)],
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481aa6d656d6265727368697082a870726576696f757393010203a76d656d6265727393010304",
            ),
            (
                Command::ReserveNodeId { node_id: NodeId(4) },
                "0182a774696d655f6d7305a7636f6d6d616e6481af726573657276655f6e6f64655f696481a76e6f64655f696404",
            ),
            (
                Command::RegisterAgent(RegisterAgentCommand {
                    namespaces: Default::default(),
                    name: "a1".into(),
                    labels: [("zone".to_owned(), "eu".to_owned())].into(),
                    slots: 2,
                    cpu_millis: 1000,
                    memory_mb: 512,
                    task_types: vec![],
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ae72656769737465725f6167656e7485a46e616d65a26131a66c6162656c7381a47a6f6e65a26575a5736c6f747302aa6370755f6d696c6c6973cd03e8a96d656d6f72795f6d62cd0200",
            ),
            (
                Command::RegisterAgent(RegisterAgentCommand {
                    namespaces: Default::default(),
                    name: "a1".into(),
                    labels: Default::default(),
                    slots: 1,
                    cpu_millis: 0,
                    memory_mb: 0,
                    task_types: vec!["noop".into(), "billing/charge".into()],
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ae72656769737465725f6167656e7486a46e616d65a26131a66c6162656c7380a5736c6f747301aa6370755f6d696c6c697300a96d656d6f72795f6d6200aa7461736b5f747970657392a46e6f6f70ae62696c6c696e672f636861726765",
            ),
            (
                Command::Assign {
                    assignments: vec![Assignment {
                        workflow_id: WorkflowId(7),
                        step: StepIndex(1),
                        agent_id: AgentId(3),
                    }],
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481a661737369676e81ab61737369676e6d656e74739183ab776f726b666c6f775f696407a47374657001a86167656e745f696403",
            ),
            (
                Command::Complete(CompleteCommand {
                    attempt_id: AttemptId(9),
                    agent_id: AgentId(3),
                    success: false,
                    output: "o".into(),
                    error: "e".into(),
                    exit_code: Some(3),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a8636f6d706c65746586aa617474656d70745f696409a86167656e745f696403a773756363657373c2a66f7574707574a16fa56572726f72a165a9657869745f636f646503",
            ),
            (
                Command::ExpireLeases {
                    attempts: vec![AttemptId(9)],
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481ad6578706972655f6c656173657381a8617474656d7074739109",
            ),
            (
                Command::Tick,
                "0182a774696d655f6d7305a7636f6d6d616e64a47469636b",
            ),
            (
                Command::CreateToken(CreateTokenCommand {
                    namespaces: Default::default(),
                    id: "00ff00ff00ff00ff".into(),
                    name: "ci".into(),
                    role: baton_security::TokenRole::Submitter,
                    digest: vec![0xab; 4],
                    bootstrap: false,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ac6372656174655f746f6b656e85a26964b030306666303066663030666630306666a46e616d65a26369a4726f6c65a97375626d6974746572a6646967657374c404ababababa9626f6f747374726170c2",
            ),
            (
                Command::RevokeToken {
                    id: "00ff00ff00ff00ff".into(),
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481ac7265766f6b655f746f6b656e81a26964b030306666303066663030666630306666",
            ),
            (
                Command::Purge(PurgeCommand {
                    workflows: vec![WorkflowId(7), WorkflowId(9)],
                    default_retention_ms: 1_000,
                    idempotency_window_ms: 2_000,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a5707572676583a9776f726b666c6f7773920709b464656661756c745f726574656e74696f6e5f6d73cd03e8b56964656d706f74656e63795f77696e646f775f6d73cd07d0",
            ),
            (
                Command::Pause(PauseCommand {
                    workflow_id: WorkflowId(7),
                    paused: true,
                    actor: "token ci (00ff)".into(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a5706175736583ab776f726b666c6f775f696407a6706175736564c3a56163746f72af746f6b656e20636920283030666629",
            ),
            (
                Command::Retry(RetryCommand {
                    workflow_id: WorkflowId(7),
                    from_step: "b".into(),
                    actor: String::new(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a5726574727982ab776f726b666c6f775f696407a966726f6d5f73746570a162",
            ),
            (
                Command::Signal(SignalCommand {
                    workflow_id: WorkflowId(7),
                    step: "approve".into(),
                    data: "{}".into(),
                    reject: false,
                    actor: String::new(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a67369676e616c83ab776f726b666c6f775f696407a473746570a7617070726f7665a464617461a27b7d",
            ),
            (
                Command::CreateSchedule(super::super::schedules::CreateScheduleCommand {
                    namespace: Default::default(),
                    spec: vec![10, 1, 110],
                    workflow: vec![10, 1, 119],
                    params: BTreeMap::from([("k".into(), "v".into())]),
                    replace: true,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481af6372656174655f7363686564756c6584a473706563c4030a016ea8776f726b666c6f77c4030a0177a6706172616d7381a16ba176a77265706c616365c3",
            ),
            (
                Command::PauseSchedule(super::super::schedules::PauseScheduleCommand {
                    name: "n".into(),
                    paused: true,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ae70617573655f7363686564756c6582a46e616d65a16ea6706175736564c3",
            ),
            (
                Command::ApplyTemplate(super::super::templates::ApplyTemplateCommand {
                    namespace: Default::default(),
                    spec: vec![10, 1, 110],
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ae6170706c795f74656d706c61746581a473706563c4030a016e",
            ),
            (
                Command::DeleteTemplate { name: "n".into() },
                "0182a774696d655f6d7305a7636f6d6d616e6481af64656c6574655f74656d706c61746581a46e616d65a16e",
            ),
            (
                Command::DeleteSchedule { name: "n".into() },
                "0182a774696d655f6d7305a7636f6d6d616e6481af64656c6574655f7363686564756c6581a46e616d65a16e",
            ),
            (
                Command::TriggerSchedule { name: "n".into() },
                "0182a774696d655f6d7305a7636f6d6d616e6481b0747269676765725f7363686564756c6581a46e616d65a16e",
            ),
            (
                Command::BackfillSchedule(super::super::schedules::BackfillScheduleCommand {
                    name: "n".into(),
                    from_ms: 1,
                    to_ms: 2,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481b16261636b66696c6c5f7363686564756c6583a46e616d65a16ea766726f6d5f6d7301a5746f5f6d7302",
            ),
            (
                Command::CreateTrigger(super::super::triggers::CreateTriggerCommand {
                    namespace: Default::default(),
                    spec: vec![10, 1, 110],
                    secret: "s".into(),
                    replace: true,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ae6372656174655f7472696767657283a473706563c4030a016ea6736563726574a173a77265706c616365c3",
            ),
            (
                Command::DeleteTrigger { name: "n".into() },
                "0182a774696d655f6d7305a7636f6d6d616e6481ae64656c6574655f7472696767657281a46e616d65a16e",
            ),
            (
                Command::CreateNamespace(super::super::namespaces::CreateNamespaceCommand {
                    weight: Default::default(),
                    quotas: Default::default(),
                    name: "team-a".into(),
                    description: "d".into(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481b06372656174655f6e616d65737061636582a46e616d65a67465616d2d61ab6465736372697074696f6ea164",
            ),
            (
                Command::UpdateNamespace(super::super::namespaces::UpdateNamespaceCommand {
                    name: "team-a".into(),
                    running_workflows: Some(10),
                    submits_per_second: Some(5),
                    ..Default::default()
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481b07570646174655f6e616d65737061636583a46e616d65a67465616d2d61b172756e6e696e675f776f726b666c6f77730ab27375626d6974735f7065725f7365636f6e6405",
            ),
            (
                Command::DeleteNamespace {
                    name: "team-a".into(),
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481b064656c6574655f6e616d65737061636581a46e616d65a67465616d2d61",
            ),
            (
                Command::Submit(SubmitCommand {
                    actor: String::new(),
                    spec: vec![1],
                    idempotency_key: "k".into(),
                    params: BTreeMap::new(),
                    template: None,
                    namespace: "team-a".into(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a67375626d697483a473706563c40101af6964656d706f74656e63795f6b6579a16ba96e616d657370616365a67465616d2d61",
            ),
            (
                Command::CreateToken(CreateTokenCommand {
                    id: "t".into(),
                    name: "n".into(),
                    role: baton_security::TokenRole::Submitter,
                    namespaces: BTreeMap::from([(
                        "team-a".to_string(),
                        baton_security::TokenRole::Submitter,
                    )]),
                    digest: vec![7],
                    bootstrap: false,
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481ac6372656174655f746f6b656e86a26964a174a46e616d65a16ea4726f6c65a97375626d6974746572aa6e616d6573706163657381a67465616d2d61a97375626d6974746572a6646967657374c40107a9626f6f747374726170c2",
            ),
            (
                Command::Audited {
                    actor: "token n (t)".into(),
                    command: Box::new(Command::DeleteTemplate { name: "n".into() }),
                },
                "0182a774696d655f6d7305a7636f6d6d616e6481a76175646974656482a56163746f72ab746f6b656e206e20287429a7636f6d6d616e6481af64656c6574655f74656d706c61746581a46e616d65a16e",
            ),
            (
                Command::Note(super::super::audit::NoteCommand {
                    actor: "token n (t)".into(),
                    action: "member.add".into(),
                    target: "node 4".into(),
                    detail: String::new(),
                }),
                "0182a774696d655f6d7305a7636f6d6d616e6481a46e6f746583a56163746f72ab746f6b656e206e20287429a6616374696f6eaa6d656d6265722e616464a6746172676574a66e6f64652034",
            ),
        ]
    }

    /// Every command kind has its golden entry (with those pinned one by one above): a new
    /// command fails here until its bytes are pinned too.
    #[test]
    fn golden_bytes_of_every_command() {
        let mut kinds: std::collections::BTreeSet<&str> =
            ["submit", "cancel", "batch", "bind_incarnation"].into();
        let mut wrong = Vec::new();
        for (command, golden) in golden_entries() {
            kinds.insert(command.kind());
            let entry = LogEntry {
                time_ms: 5,
                command,
            };
            let bytes = entry.encode();
            if hex(&bytes) != golden {
                wrong.push(format!("{}: {}", entry.command.kind(), hex(&bytes)));
            }
            assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
        }
        assert!(wrong.is_empty(), "bytes changed:\n{}", wrong.join("\n"));
        // Exhaustive, so a new variant does not compile until it is counted here.
        let every = |c: &Command| match c {
            Command::InitCluster { .. }
            | Command::Submit(_)
            | Command::Cancel(_)
            | Command::ReserveNodeId { .. }
            | Command::RegisterAgent(_)
            | Command::Assign { .. }
            | Command::Complete(_)
            | Command::ExpireLeases { .. }
            | Command::Tick
            | Command::CreateToken(_)
            | Command::RevokeToken { .. }
            | Command::BindIncarnation { .. }
            | Command::Membership { .. }
            | Command::Purge(_)
            | Command::Pause(_)
            | Command::Retry(_)
            | Command::Signal(_)
            | Command::ApplyTemplate(_)
            | Command::DeleteTemplate { .. }
            | Command::CreateSchedule(_)
            | Command::PauseSchedule(_)
            | Command::DeleteSchedule { .. }
            | Command::TriggerSchedule { .. }
            | Command::BackfillSchedule(_)
            | Command::CreateTrigger(_)
            | Command::DeleteTrigger { .. }
            | Command::CreateNamespace(_)
            | Command::DeleteNamespace { .. }
            | Command::UpdateNamespace(_)
            | Command::Audited { .. }
            | Command::Note(_)
            | Command::Batch(_) => 32,
        };
        assert_eq!(kinds.len(), every(&Command::Tick), "{kinds:?}");
    }

    #[test]
    fn an_entry_without_optional_fields_still_decodes() {
        // A writer that predates `idempotency_key` (or omits defaults) must stay readable.
        #[derive(Serialize)]
        struct OldSubmit {
            #[serde(with = "serde_bytes")]
            spec: Vec<u8>,
        }
        #[derive(Serialize)]
        enum OldCommand {
            #[serde(rename = "submit")]
            Submit(OldSubmit),
        }
        #[derive(Serialize)]
        struct OldEntry {
            time_ms: u64,
            command: OldCommand,
        }
        let mut bytes = vec![ENTRY_FORMAT_V1];
        bytes.extend(
            rmp_serde::to_vec_named(&OldEntry {
                time_ms: 1,
                command: OldCommand::Submit(OldSubmit { spec: vec![1] }),
            })
            .unwrap(),
        );
        let entry = LogEntry::decode(&bytes).unwrap();
        assert_eq!(
            entry.command,
            Command::Submit(SubmitCommand {
                actor: String::new(),
                namespace: Default::default(),
                spec: vec![1],
                idempotency_key: String::new(),
                params: Default::default(),
                template: None,
            })
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        assert!(matches!(LogEntry::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            LogEntry::decode(&[9, 1, 2]),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(
            LogEntry::decode(&[1, 0xc1]),
            Err(DecodeError::Body(_))
        ));
    }
}
