//! Every bound on a submitted workflow, in one place, with compile-time checks between them.
//!
//! The server rejects a spec past any of these with INVALID_ARGUMENT naming the field (see
//! `validate`); the CLI checks the same bounds before sending. Units come last in each name.
//! A `0` in a duration or size field of the spec means "the default", so defaults live here too.

/// One kibibyte, for readable sizes below.
const KIB: usize = 1024;
/// One mebibyte.
const MIB: usize = 1024 * KIB;
/// One second in milliseconds.
const SECOND_MS: u64 = 1000;
/// One minute in milliseconds.
const MINUTE_MS: u64 = 60 * SECOND_MS;
/// One hour in milliseconds.
const HOUR_MS: u64 = 60 * MINUTE_MS;
/// One day in milliseconds.
const DAY_MS: u64 = 24 * HOUR_MS;

// ---- the spec as a whole ----

/// Protobuf-encoded size of one spec: it travels in one Raft entry, replicated and fsync'd on a
/// majority before the submit is acknowledged, so it must stay small next to the log's batches.
pub const SPEC_BYTES_MAX: usize = MIB;
/// YAML or JSON text handed to the parser: text is wordier than protobuf (key names,
/// indentation), so it gets headroom, but the parser never reads an unbounded input.
pub const SPEC_TEXT_BYTES_MAX: usize = 4 * MIB;
/// Workflow and step names, custom task types: short enough for tables, logs and metric labels.
pub const NAME_LEN_MAX: usize = 128;
/// Steps in one workflow: bounds the per-workflow state, scheduling scans and every graph walk.
pub const STEPS_PER_WORKFLOW_MAX: usize = 1000;
/// `depends_on` entries of one step; wider fan-in joins go through an intermediate `noop` step,
/// which keeps the readiness check of one step cheap.
pub const DEPENDENCIES_PER_STEP_MAX: usize = 256;
/// Dependency edges in one workflow (ten per step on average): bounds graph memory and checks.
pub const EDGES_PER_WORKFLOW_MAX: usize = 10_000;
/// Steps on the longest dependency chain: a workflow's end-to-end time grows with its depth
/// (each level waits for scheduling, a lease and a commit), so deeper graphs are a design smell.
pub const DAG_DEPTH_MAX: usize = 256;
/// Workflow priority and step priority, inclusive: a small range that sorts in a queue index.
pub const PRIORITY_MIN: i32 = -1000;
/// See [`PRIORITY_MIN`].
pub const PRIORITY_MAX: i32 = 1000;

// ---- labels, constraints, input ----

/// Labels on one workflow: they are indexed for `list --label`, so keep them few.
pub const LABELS_MAX: usize = 32;
/// Task types one agent announces in `Register` (the built-in ones and its custom handlers).
pub const AGENT_TASK_TYPES_MAX: usize = 64;
/// Label and constraint keys (the Kubernetes bound, so the same keys fit both worlds).
pub const LABEL_KEY_LEN_MAX: usize = 63;
/// Label and constraint values: identifiers, zones, teams; not documents.
pub const LABEL_VALUE_LEN_MAX: usize = 256;
/// Constraints on one step: each is an exact match the scheduler checks against every agent.
pub const CONSTRAINTS_PER_STEP_MAX: usize = 16;
/// Entries of a workflow's `input`: values for `{{ input.KEY }}`, not a data store.
pub const INPUT_ENTRIES_MAX: usize = 128;
/// Keys plus values of a workflow's `input`: it is copied into every step that reads it.
/// Parameters count in both input bounds: their values join the input steps read.
pub const INPUT_BYTES_MAX: usize = 64 * KIB;
/// A parameter's description: a line for people.
pub const PARAM_DESCRIPTION_BYTES_MAX: usize = KIB;

// ---- tasks ----

/// Arguments of an exec task, the program included.
pub const ARGV_LEN_MAX: usize = 256;
/// One argument, one environment value: Linux refuses a single argument above 128 KiB anyway.
pub const ARG_BYTES_MAX: usize = 32 * KIB;
/// Environment variables an exec task sets on top of the agent's.
pub const ENV_VARS_MAX: usize = 128;
/// One environment variable name.
pub const ENV_KEY_LEN_MAX: usize = 256;
/// The working directory of an exec task (Linux `PATH_MAX`).
pub const PATH_BYTES_MAX: usize = 4096;
/// An http task's URL: beyond 8 KiB common servers and proxies refuse it anyway.
pub const URL_LEN_MAX: usize = 8 * KIB;
/// Headers of an http task.
pub const HTTP_HEADERS_MAX: usize = 64;
/// One header name.
pub const HTTP_HEADER_NAME_LEN_MAX: usize = 256;
/// One header value: 8 KiB is the common per-header limit of servers.
pub const HTTP_HEADER_VALUE_BYTES_MAX: usize = 8 * KIB;
/// An http task's body: the spec is replicated state, so large payloads belong elsewhere
/// (an object store URL in the body, for example).
pub const HTTP_BODY_BYTES_MAX: usize = 256 * KIB;
/// Statuses listed as success for an http task.
pub const HTTP_SUCCESS_STATUSES_MAX: usize = 64;
/// A custom task's payload, for the same reason as [`HTTP_BODY_BYTES_MAX`].
pub const CUSTOM_PAYLOAD_BYTES_MAX: usize = 256 * KIB;
/// A sleep task: a day; longer waits are better modelled as a scheduled workflow.
pub const SLEEP_MS_MAX: u64 = DAY_MS;

// ---- results and requests ----

/// Output of one step kept in replicated state (and passed to dependents); larger results
/// belong in external storage, with a reference in the output.
pub const OUTPUT_BYTES_MAX: usize = 64 * KIB;
/// Output (and error) of each earlier attempt of a step kept in replicated state, the tail: enough
/// to read why it failed, while a step's history stays bounded (at most `MAX_ATTEMPTS_MAX` failed
/// attempts plus a few lost leases, 8 KiB each).
pub const EARLIER_ATTEMPT_TEXT_BYTES_MAX: usize = 4 * KIB;
/// A submit's idempotency key: printable ASCII, kept per workflow in state for deduplication.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// Workflows in one `List` page: bounds one response's size and the read's work.
pub const LIST_PAGE_SIZE_MAX: usize = 1000;
/// Page size when a `List` request leaves it at 0.
pub const LIST_PAGE_SIZE_DEFAULT: usize = 100;
/// Workflows in one `SubmitBatch`. A batch takes one proposal slot per item on the node
/// (1,024 slots), so a batch of this size still finds room while others are in flight.
pub const SUBMIT_BATCH_ITEMS_MAX: usize = 256;
/// Encoded specs plus keys and parameters in one `SubmitBatch`: the batch is written as one log
/// entry. What each item counts: [`submit_batch_item_bytes`].
pub const SUBMIT_BATCH_BYTES_MAX: usize = MIB;

/// What one item of a `SubmitBatch` counts against [`SUBMIT_BATCH_BYTES_MAX`]: its encoded spec
/// (`spec_bytes`), its key, and its parameters' names and values.
pub fn submit_batch_item_bytes(
    spec_bytes: usize,
    key: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> usize {
    spec_bytes + key.len() + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

// ---- time ----

/// One attempt's execution timeout and a step's schedule-to-start deadline: a week; nothing that
/// runs longer should hold a lease.
pub const TIMEOUT_MS_MAX: u64 = 7 * DAY_MS;
/// A workflow's retention once finished (`retention`): at least a second, so it can be read
/// once it ends; at most ten years.
pub const RETENTION_MS_MIN: u64 = SECOND_MS;
pub const RETENTION_MS_MAX: u64 = 3650 * DAY_MS;
/// Retries of one workflow (`baton retry`): each keeps the previous attempt of every step it
/// reruns, so the state a workflow holds stays bounded; past it, submit the workflow anew.
pub const RETRIES_PER_WORKFLOW_MAX: u32 = 20;
/// A whole workflow's `timeout`: at least a second, at most a year.
pub const WORKFLOW_TIMEOUT_MS_MIN: u64 = SECOND_MS;
pub const WORKFLOW_TIMEOUT_MS_MAX: u64 = 365 * DAY_MS;
/// Lease TTL of an attempt: agents renew at a fraction of the TTL, so a shorter one floods the
/// leader with renewals and turns a short pause (GC, a slow disk) into a needless reassignment.
pub const LEASE_TTL_MS_MIN: u64 = SECOND_MS;
/// A longer TTL leaves a step of a dead agent stranded for that long before it is reassigned.
pub const LEASE_TTL_MS_MAX: u64 = 10 * MINUTE_MS;
/// Lease TTL when a step leaves it at 0: failover within seconds at a modest renewal rate.
pub const LEASE_TTL_MS_DEFAULT: u64 = 5 * SECOND_MS;
/// Attempts of one step, the first included: retries are for transient faults, not loops.
pub const MAX_ATTEMPTS_MAX: u32 = 100;
/// Retry backoff, initial and max: a day; a step waiting longer is better failed and resubmitted.
pub const BACKOFF_MS_MAX: u64 = DAY_MS;
/// First backoff when a retry policy leaves `initial` at 0.
pub const BACKOFF_INITIAL_MS_DEFAULT: u64 = SECOND_MS;
/// Backoff cap when a retry policy leaves `max` at 0 (raised to `initial` if that is larger).
pub const BACKOFF_MAX_MS_DEFAULT: u64 = MINUTE_MS;
/// Backoff growth per attempt when a retry policy leaves `multiplier` at 0.
pub const BACKOFF_MULTIPLIER_DEFAULT: f64 = 2.0;
/// Largest backoff multiplier: beyond it the second retry already waits for the cap.
pub const BACKOFF_MULTIPLIER_MAX: f64 = 100.0;

// ---- agents and leases: the timings the node and the agent runtime agree on ----

/// How often agents heartbeat (the node says so in `Registered`); every heartbeat renews the
/// leases it lists.
pub const HEARTBEAT_INTERVAL_MS: u64 = 300;
/// The leader expires a lease this long after its TTL ran out since the last renewal, so an
/// agent that renewed at the last moment (or whose clock runs a little slow) is never fenced
/// while its lease is still valid in its own eyes.
pub const LEASE_EXPIRY_MARGIN_MS: u64 = SECOND_MS;
/// The least part of a lease's TTL an agent leaves unused: it stops an attempt this long (or a
/// fifth of the TTL, if longer) before the TTL runs out, counted from the send time of the
/// heartbeat that last renewed it.
pub const AGENT_LEASE_SAFETY_MARGIN_MS_MIN: u64 = 500;
/// An agent silent this long is offered no new steps (its leases then run out by themselves).
pub const SESSION_SILENCE_MS_MAX: u64 = 3 * SECOND_MS;
/// An agent gives a session up when its heartbeats go unacknowledged this long (or five
/// heartbeat intervals, if longer): a paused node or a leader without quorum keeps the connection
/// open, and the agent looks for the leader elsewhere.
pub const AGENT_UNACKED_MS_MIN: u64 = 2 * SECOND_MS;

// ---- resources ----

/// CPU a step asks for, in thousandths of a core: 1024 cores is more than any one agent has.
pub const CPU_MILLIS_MAX: u32 = 1024 * 1000;
/// Memory a step asks for, in MiB: 16 TiB is more than any one agent has.
pub const MEMORY_MB_MAX: u32 = 16 * 1024 * 1024;

// ---- relations between the bounds ----

// A chain of every step must be expressible edge-wise, and the edge bound must be reachable.
const _: () = assert!(EDGES_PER_WORKFLOW_MAX >= STEPS_PER_WORKFLOW_MAX - 1);
const _: () = assert!(EDGES_PER_WORKFLOW_MAX <= STEPS_PER_WORKFLOW_MAX * DEPENDENCIES_PER_STEP_MAX);
const _: () = assert!(DEPENDENCIES_PER_STEP_MAX < STEPS_PER_WORKFLOW_MAX);
const _: () = assert!(DAG_DEPTH_MAX >= 1 && DAG_DEPTH_MAX <= STEPS_PER_WORKFLOW_MAX);
// Every field that lives inside the spec must fit inside the spec.
const _: () = assert!(SPEC_TEXT_BYTES_MAX >= SPEC_BYTES_MAX);
const _: () = assert!(HTTP_BODY_BYTES_MAX < SPEC_BYTES_MAX);
const _: () = assert!(CUSTOM_PAYLOAD_BYTES_MAX < SPEC_BYTES_MAX);
const _: () = assert!(INPUT_BYTES_MAX < SPEC_BYTES_MAX);
const _: () = assert!(ARG_BYTES_MAX < SPEC_BYTES_MAX);
// Linux's MAX_ARG_STRLEN: an argument we accept must be one execve accepts.
const _: () = assert!(ARG_BYTES_MAX <= 128 * KIB);
// A SubmitRequest (spec + key + framing) fits tonic's default 4 MiB decode limit.
const _: () = assert!(SPEC_BYTES_MAX + IDEMPOTENCY_KEY_LEN_MAX + KIB <= 4 * MIB);
// A SubmitBatchRequest (specs, keys, and under 16 bytes of framing an item) fits it too.
const _: () = assert!(SUBMIT_BATCH_BYTES_MAX + 16 * SUBMIT_BATCH_ITEMS_MAX <= 4 * MIB);
// Output is passed on to dependents like input, so it must not be larger than input may be.
const _: () = assert!(OUTPUT_BYTES_MAX <= INPUT_BYTES_MAX);
const _: () = assert!(PRIORITY_MIN < 0 && 0 < PRIORITY_MAX);
const _: () = assert!(LIST_PAGE_SIZE_DEFAULT >= 1 && LIST_PAGE_SIZE_DEFAULT <= LIST_PAGE_SIZE_MAX);
const _: () = assert!(LEASE_TTL_MS_MIN <= LEASE_TTL_MS_DEFAULT);
const _: () = assert!(LEASE_TTL_MS_DEFAULT <= LEASE_TTL_MS_MAX);
const _: () = assert!(LEASE_TTL_MS_MAX <= TIMEOUT_MS_MAX);
const _: () = assert!(SLEEP_MS_MAX <= TIMEOUT_MS_MAX);
const _: () = assert!(BACKOFF_MS_MAX <= TIMEOUT_MS_MAX);
const _: () = assert!(BACKOFF_INITIAL_MS_DEFAULT <= BACKOFF_MAX_MS_DEFAULT);
const _: () = assert!(BACKOFF_MAX_MS_DEFAULT <= BACKOFF_MS_MAX);
const _: () = assert!(BACKOFF_MULTIPLIER_DEFAULT >= 1.0);
const _: () = assert!(BACKOFF_MULTIPLIER_DEFAULT <= BACKOFF_MULTIPLIER_MAX);
const _: () = assert!(MAX_ATTEMPTS_MAX >= 1);
// Agents and leases. Several heartbeats fit in the shortest lease, and one still renews it
// before the agent's own deadline (TTL minus its safety margin) passes.
const _: () = assert!(3 * HEARTBEAT_INTERVAL_MS <= LEASE_TTL_MS_MIN);
const _: () = assert!(HEARTBEAT_INTERVAL_MS < LEASE_TTL_MS_MIN - AGENT_LEASE_SAFETY_MARGIN_MS_MIN);
// Between the agent stopping an attempt and the leader giving its step to another agent there
// is at least a second: room for clock-rate drift and for killing a process group.
const _: () = assert!(AGENT_LEASE_SAFETY_MARGIN_MS_MIN + LEASE_EXPIRY_MARGIN_MS >= SECOND_MS);
// A connected agent heartbeats several times within the silence window, so one late heartbeat
// does not make it look gone.
const _: () = assert!(SESSION_SILENCE_MS_MAX >= 5 * HEARTBEAT_INTERVAL_MS);
// Giving an unresponsive session up takes longer than the shortest lease lasts: safety does
// not hang on it (the agent's own deadline stops the attempt), only whether a short-lease step
// runs again after a leader change. It must at least outlast a few heartbeats.
const _: () = assert!(AGENT_UNACKED_MS_MIN >= 5 * HEARTBEAT_INTERVAL_MS);
// Names and label keys are printed in one table cell; both fit the name bound.
const _: () = assert!(LABEL_KEY_LEN_MAX <= NAME_LEN_MAX);
