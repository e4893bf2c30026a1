//! Every metric the node emits, declared in one place. Names follow Prometheus conventions:
//! `baton_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters. The dashboard and the
//! alert rules in `deploy/` use only these names (a test checks them against a real Prometheus).
//!
//! Who reports what, so that summing over the three nodes never counts anything three times:
//!
//! - **Node-local** metrics describe the node itself (Raft indexes and term, storage, gRPC calls
//!   it served, snapshots). Every node reports its own; aggregate them per node or with `max`.
//! - **Workflow and step counters and histograms** (completions, cycle time, attempts, lease
//!   expirations, scheduling latencies) are derived from the events of applied entries, outside
//!   the state machine ([`AppliedObserver`]). An entry is counted only by the node that proposed
//!   it as leader, and only while that node is still the leader of the entry's term: each entry
//!   is counted at most once cluster-wide, so `sum` over nodes is the cluster's figure. (An entry
//!   whose leader lost leadership before applying it is not counted: a rare undercount is the
//!   price of never double counting, and a restarted node re-applying its log counts nothing.)
//! - **Cluster-wide gauges** (ready queue, live leases, fleet capacity and allocation, per-agent
//!   utilization, replication lag) are reported by the leader only ([`LeaderGauges`]); every
//!   other node reports 0 for every series it ever reported. `sum` (or `max`) over nodes is the
//!   cluster's figure, with at most one scrape of overlap around a leader change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::state::ClusterState;

// --- the four measures: completion, cycle time, errors (utilization is with the fleet) ---
pub const WORKFLOWS_SUBMITTED: &str = "baton_workflows_submitted_total";
pub const WORKFLOWS_FINISHED: &str = "baton_workflows_finished_total";
pub const WORKFLOW_CYCLE_SECONDS: &str = "baton_workflow_cycle_time_seconds";
pub const ATTEMPTS_FINISHED: &str = "baton_step_attempts_finished_total";
// --- lifecycle ---
pub const WORKFLOWS_PURGED: &str = "baton_workflows_purged_total";
pub const WORKFLOWS_RETAINED: &str = "baton_workflows_retained";
pub const ARCHIVED: &str = "baton_archive_workflows_written_total";
pub const WORKFLOW_ACTIONS: &str = "baton_workflow_actions_total";
// --- schedules (leader; the counts are the replicated state's, so they carry over a failover) ---
pub const SCHEDULE_RUNS: &str = "baton_schedule_runs_total";
pub const SCHEDULE_NEXT_FIRE: &str = "baton_schedule_next_fire_timestamp_seconds";
pub const SCHEDULE_LAG_SECONDS: &str = "baton_schedule_lag_seconds";
pub const SIGNALS: &str = "baton_wait_steps_finished_total";
/// The `action` labels of [`WORKFLOW_ACTIONS`].
pub const WORKFLOW_ACTION_NAMES: [&str; 3] = ["pause", "resume", "retry"];
// --- scheduling ---
pub const READY_STEPS: &str = "baton_scheduler_ready_steps";
/// The `priority` label of the default priority (0), reported even while nothing is ready.
const DEFAULT_PRIORITY_LABEL: &str = "0";
pub const READY_TO_ASSIGNED_SECONDS: &str = "baton_scheduler_ready_to_assigned_seconds";
pub const SUBMIT_TO_START_SECONDS: &str = "baton_scheduler_submit_to_start_seconds";
pub const ASSIGNMENTS: &str = "baton_scheduler_assignments_total";
pub const ASSIGN_BATCH_SIZE: &str = "baton_scheduler_assign_batch_size";
pub const RESCHEDULES: &str = "baton_scheduler_reschedules_total";
pub const SCHEDULE_TO_START_TIMEOUTS: &str = "baton_scheduler_schedule_to_start_timeouts_total";
// --- leases ---
pub const LEASES_LIVE: &str = "baton_leases_live";
pub const LEASES_EXPIRED: &str = "baton_lease_expirations_total";
pub const REPORTS_REFUSED: &str = "baton_reports_refused_total";
// --- security ---
pub const AUTH_REFUSED: &str = "baton_auth_refused_total";
// --- fleet (utilization) ---
pub const FLEET_CAPACITY: &str = "baton_fleet_capacity";
pub const FLEET_ALLOCATED: &str = "baton_fleet_allocated";
pub const FLEET_AGENTS_CONNECTED: &str = "baton_fleet_agents_connected";
pub const AGENT_CAPACITY: &str = "baton_fleet_agent_capacity";
pub const AGENT_ALLOCATED: &str = "baton_fleet_agent_allocated";
pub const AGENT_CONNECTED: &str = "baton_fleet_agent_connected";
// --- Raft ---
pub const RAFT_TERM: &str = "baton_raft_term";
pub const RAFT_IS_LEADER: &str = "baton_raft_is_leader";
pub const RAFT_LEADER_CHANGES: &str = "baton_raft_leader_changes_total";
pub const RAFT_LAST_LOG_INDEX: &str = "baton_raft_last_log_index";
pub const RAFT_COMMITTED_INDEX: &str = "baton_raft_committed_index";
pub const RAFT_APPLIED_INDEX: &str = "baton_raft_applied_index";
pub const RAFT_APPLY_LAG: &str = "baton_raft_apply_lag_entries";
pub const RAFT_REPLICATION_LAG: &str = "baton_raft_replication_lag_entries";
pub const RAFT_SNAPSHOT_INDEX: &str = "baton_raft_snapshot_index";
pub const RAFT_COMMANDS_PER_ENTRY: &str = "baton_raft_commands_per_entry";
pub const CLOCK_OFFSET_SECONDS: &str = "baton_clock_offset_seconds";
// --- storage ---
pub const STORAGE_WRITE_SECONDS: &str = "baton_storage_write_seconds";
pub const STORAGE_SYNC_SECONDS: &str = "baton_storage_sync_seconds";
pub const STORAGE_GROUP_COMMIT_APPENDS: &str = "baton_storage_group_commit_appends";
pub const STORAGE_APPENDED_ENTRIES: &str = "baton_storage_appended_entries_total";
pub const SNAPSHOT_BUILD_SECONDS: &str = "baton_snapshot_build_seconds";
pub const SNAPSHOT_SIZE_BYTES: &str = "baton_snapshot_size_bytes";
pub const STORAGE_DISK_FREE_BYTES: &str = "baton_storage_disk_free_bytes";
pub const STORAGE_DISK_RESERVE_BYTES: &str = "baton_storage_disk_reserve_bytes";
pub const STORAGE_DISK_LOW: &str = "baton_storage_disk_low";
// --- gRPC ---
pub const GRPC_REQUESTS: &str = "baton_grpc_requests_total";
pub const GRPC_REQUEST_SECONDS: &str = "baton_grpc_request_duration_seconds";
pub const HTTP_REQUESTS: &str = "baton_http_requests_total";
pub const TRIGGER_DELIVERIES: &str = "baton_trigger_deliveries_total";
pub const NAMESPACE_RUNNING: &str = "baton_namespace_running_workflows";
pub const NAMESPACE_ACTIVE_STEPS: &str = "baton_namespace_active_steps";
pub const NAMESPACE_QUOTA: &str = "baton_namespace_quota";
pub const NAMESPACE_KEY_WAITING: &str = "baton_namespace_key_waiting";
pub const QUOTA_REFUSALS: &str = "baton_namespace_quota_refusals_total";
pub const HTTP_REQUEST_SECONDS: &str = "baton_http_request_duration_seconds";
pub const BUILD_INFO: &str = "baton_build_info";

/// Label values of `outcome` on workflow counters and the cycle-time histogram.
pub const WORKFLOW_OUTCOMES: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];
/// Label values of `outcome` on attempt counters.
pub const ATTEMPT_OUTCOMES: [&str; 3] = ["succeeded", "failed", "lease_expired"];
/// Label values of `resource` on fleet gauges (the unit is part of the value).
pub const RESOURCES: [&str; 3] = ["slots", "cpu_cores", "memory_bytes"];

/// Latencies from sub-millisecond (an fsync, a Get) to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Scheduling waits and workflow cycle times: from a few milliseconds to a day.
const WAIT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
];
/// Counts per batch (assignments per entry, appends per WAL sync).
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Serves `/metrics` on `addr`, declares every metric and makes the fixed label sets visible
/// at 0 (a series that appears only at its first event defeats `rate()` and alerting). Must run
/// inside a tokio runtime (the listener is a task).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    let bucket_err = |e| format!("metric buckets: {e}");
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(LATENCY_BUCKETS) // every histogram not named below is a short latency
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(WORKFLOW_CYCLE_SECONDS.into()), WAIT_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(
            Matcher::Full(READY_TO_ASSIGNED_SECONDS.into()),
            WAIT_BUCKETS,
        )
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(SUBMIT_TO_START_SECONDS.into()), WAIT_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(ASSIGN_BATCH_SIZE.into()), COUNT_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(RAFT_COMMANDS_PER_ENTRY.into()), COUNT_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(
            Matcher::Full(STORAGE_GROUP_COMMIT_APPENDS.into()),
            COUNT_BUCKETS,
        )
        .map_err(bucket_err)?
        .install()
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    describe();
    initialize();
    Ok(())
}

/// Registers help texts and units.
pub fn describe() {
    describe_counter!(
        WORKFLOWS_SUBMITTED,
        "Workflows created (not deduplicated submits)."
    );
    describe_counter!(
        WORKFLOWS_FINISHED,
        "Workflows that ended, by outcome (succeeded, failed, cancelled)."
    );
    describe_histogram!(
        WORKFLOW_CYCLE_SECONDS,
        Unit::Seconds,
        "Workflow cycle time, submit to end, by outcome."
    );
    describe_counter!(
        WORKFLOWS_PURGED,
        "Finished workflows purged from the state once their retention ended."
    );
    describe_gauge!(
        WORKFLOWS_RETAINED,
        "Workflows held in the replicated state (running, and finished within their retention)."
    );
    describe_counter!(
        SCHEDULE_RUNS,
        "Times of each schedule, by outcome: started, skipped (overlap policy), missed (older \
         than the catch-up window when reached). Leader; from the replicated state."
    );
    describe_gauge!(
        SCHEDULE_NEXT_FIRE,
        "When each unpaused schedule next starts a run (its nominal time plus its jitter, Unix \
         seconds); 0 when paused or never again."
    );
    describe_histogram!(
        SCHEDULE_LAG_SECONDS,
        Unit::Seconds,
        "A schedule run's start minus its nominal time (jitter and catch-up included)."
    );
    describe_counter!(
        WORKFLOW_ACTIONS,
        "Operators' actions on workflows that changed one, by action (pause, resume, retry)."
    );
    describe_counter!(
        SIGNALS,
        "Wait steps that ended, by outcome: succeeded (signalled), failed (rejected or timed out)."
    );
    describe_counter!(
        ARCHIVED,
        "Purged workflows this node wrote to its archive (--archive-dir) before applying the purge."
    );
    describe_counter!(
        ATTEMPTS_FINISHED,
        "Step attempts that ended, by outcome (succeeded, failed, lease_expired)."
    );
    describe_gauge!(
        READY_STEPS,
        "Steps ready and waiting for an agent, by priority (leader only; 0 elsewhere)."
    );
    describe_histogram!(
        READY_TO_ASSIGNED_SECONDS,
        Unit::Seconds,
        "Time a step waited in the ready queue before it was assigned."
    );
    describe_histogram!(
        SUBMIT_TO_START_SECONDS,
        Unit::Seconds,
        "Time from a workflow's submit to the start of its first attempt."
    );
    describe_counter!(ASSIGNMENTS, "Attempts assigned to agents.");
    describe_histogram!(ASSIGN_BATCH_SIZE, "Assignments proposed in one log entry.");
    describe_counter!(
        RESCHEDULES,
        "Steps requeued after their attempt's lease expired."
    );
    describe_counter!(
        SCHEDULE_TO_START_TIMEOUTS,
        "Ready steps failed for not starting within their schedule-to-start timeout."
    );
    describe_gauge!(
        LEASES_LIVE,
        "Attempts holding a lease (leader only; 0 elsewhere)."
    );
    describe_counter!(
        LEASES_EXPIRED,
        "Leases expired because their agent stopped renewing them."
    );
    describe_counter!(
        REPORTS_REFUSED,
        "Reports refused for a stale or foreign fencing token."
    );
    describe_counter!(
        AUTH_REFUSED,
        "Calls refused by authorization, by code (unauthenticated, permission_denied)."
    );
    describe_gauge!(
        FLEET_CAPACITY,
        "Capacity of the connected agents, by resource (leader only; 0 elsewhere)."
    );
    describe_gauge!(
        FLEET_ALLOCATED,
        "Capacity leased out on the connected agents, by resource (leader only; 0 elsewhere)."
    );
    describe_gauge!(
        FLEET_AGENTS_CONNECTED,
        "Agents with a live session (leader only; 0 elsewhere)."
    );
    describe_gauge!(
        AGENT_CAPACITY,
        "Capacity an agent offers, by agent and resource (leader only; 0 elsewhere)."
    );
    describe_gauge!(
        AGENT_ALLOCATED,
        "Capacity leased out on an agent, by agent and resource (leader only; 0 elsewhere)."
    );
    describe_gauge!(
        AGENT_CONNECTED,
        "1 if the agent has a live session with the leader (leader only; 0 elsewhere)."
    );
    describe_gauge!(RAFT_TERM, "Current Raft term of this node.");
    describe_histogram!(
        RAFT_COMMANDS_PER_ENTRY,
        "Commands the leader wrote in one log entry (group commit of submits, reports and the rest)."
    );
    describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader, else 0.");
    describe_counter!(
        RAFT_LEADER_CHANGES,
        "Times this node saw a new Raft leader."
    );
    describe_gauge!(
        RAFT_LAST_LOG_INDEX,
        "Index of the last entry in this node's Raft log."
    );
    describe_gauge!(
        RAFT_COMMITTED_INDEX,
        "Highest log index this node knows is committed."
    );
    describe_gauge!(
        RAFT_APPLIED_INDEX,
        "Highest log index applied to this node's state machine."
    );
    describe_gauge!(
        RAFT_APPLY_LAG,
        "Committed entries this node has not applied yet."
    );
    describe_gauge!(
        RAFT_REPLICATION_LAG,
        "Entries of the leader's log a follower has not acknowledged, by follower (leader only)."
    );
    describe_gauge!(
        RAFT_SNAPSHOT_INDEX,
        "Log index of this node's latest snapshot."
    );
    describe_histogram!(
        STORAGE_WRITE_SECONDS,
        Unit::Seconds,
        "Latency of writing appended entries to the Raft log, before the sync."
    );
    describe_histogram!(
        STORAGE_SYNC_SECONDS,
        Unit::Seconds,
        "Latency of synced writes to the Raft log (WAL fsync)."
    );
    describe_histogram!(
        STORAGE_GROUP_COMMIT_APPENDS,
        "Appends made durable by one WAL sync."
    );
    describe_counter!(
        STORAGE_APPENDED_ENTRIES,
        "Entries appended to the Raft log."
    );
    describe_histogram!(
        SNAPSHOT_BUILD_SECONDS,
        Unit::Seconds,
        "Time to encode and write a snapshot."
    );
    describe_gauge!(
        SNAPSHOT_SIZE_BYTES,
        Unit::Bytes,
        "Size of the latest snapshot."
    );
    describe_gauge!(
        STORAGE_DISK_FREE_BYTES,
        Unit::Bytes,
        "Free space on the data dir's filesystem (what an unprivileged writer may use), read every second."
    );
    describe_gauge!(
        STORAGE_DISK_RESERVE_BYTES,
        Unit::Bytes,
        "The free space this node keeps in reserve (--disk-reserve-mb); 0 when the check is off."
    );
    describe_gauge!(
        STORAGE_DISK_LOW,
        "1 while the data disk is below its reserve (until it is back above it plus a margin): \
         as leader this node refuses new workflows and hands leadership away; else 0."
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests served, by method and status code."
    );
    describe_histogram!(
        GRPC_REQUEST_SECONDS,
        Unit::Seconds,
        "gRPC request latency, by method (streams: time to open)."
    );
    describe_counter!(
        TRIGGER_DELIVERIES,
        "Webhook deliveries (POST /api/v1/triggers/NAME), by trigger and outcome: started, \
         duplicate (a redelivery of a delivery id), bad_signature, unknown_trigger, failed."
    );
    describe_gauge!(
        NAMESPACE_RUNNING,
        "Running workflows, by namespace (leader only)."
    );
    describe_gauge!(
        NAMESPACE_ACTIVE_STEPS,
        "Ready plus running steps, by namespace (leader only)."
    );
    describe_gauge!(
        NAMESPACE_KEY_WAITING,
        "Workflows and steps waiting for a concurrency key, by namespace and kind (workflows, \
         steps) (leader only)."
    );
    describe_gauge!(
        NAMESPACE_QUOTA,
        "A namespace's quota, by namespace and quota (max_running_workflows, max_active_steps, \
         submits_per_second); 0 is no limit (leader only)."
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Submits, schedule triggers, backfills and retries a namespace's quota refused, by \
         namespace and quota (on the node that took the call)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "Requests to the HTTP listener (--http-listen), by route (method and pattern) and HTTP status."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by route (event streams: time to open)."
    );
    describe_gauge!(
        CLOCK_OFFSET_SECONDS,
        Unit::Seconds,
        "Leader only: this node's wall clock minus the time it stamps into entries (the voters' \
         median clock, advanced monotonically); 0 on other nodes."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and commit labels say which batond."
    );
}

/// Every series with a fixed label set, at 0, so it exists before its first event.
fn initialize() {
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("BATON_COMMIT")
    )
    .set(1.0);
    counter!(WORKFLOWS_SUBMITTED).absolute(0);
    counter!(WORKFLOWS_PURGED).absolute(0);
    counter!(ARCHIVED).absolute(0);
    for outcome in ["succeeded", "failed"] {
        counter!(SIGNALS, "outcome" => outcome).absolute(0);
    }
    for action in WORKFLOW_ACTION_NAMES {
        counter!(WORKFLOW_ACTIONS, "action" => action).absolute(0);
    }
    for outcome in WORKFLOW_OUTCOMES {
        counter!(WORKFLOWS_FINISHED, "outcome" => outcome).absolute(0);
        let _ = histogram!(WORKFLOW_CYCLE_SECONDS, "outcome" => outcome);
    }
    for outcome in ATTEMPT_OUTCOMES {
        counter!(ATTEMPTS_FINISHED, "outcome" => outcome).absolute(0);
    }
    let _ = histogram!(READY_TO_ASSIGNED_SECONDS);
    let _ = histogram!(SUBMIT_TO_START_SECONDS);
    let _ = histogram!(ASSIGN_BATCH_SIZE);
    let _ = histogram!(RAFT_COMMANDS_PER_ENTRY);
    counter!(ASSIGNMENTS).absolute(0);
    counter!(RESCHEDULES).absolute(0);
    counter!(SCHEDULE_TO_START_TIMEOUTS).absolute(0);
    counter!(LEASES_EXPIRED).absolute(0);
    counter!(REPORTS_REFUSED).absolute(0);
    counter!(RAFT_LEADER_CHANGES).absolute(0);
    counter!(STORAGE_APPENDED_ENTRIES).absolute(0);
    // An empty ready queue reads 0 at the default priority, never "no data".
    gauge!(READY_STEPS, "priority" => DEFAULT_PRIORITY_LABEL).set(0.0);
    gauge!(LEASES_LIVE).set(0.0);
    gauge!(CLOCK_OFFSET_SECONDS).set(0.0);
    gauge!(FLEET_AGENTS_CONNECTED).set(0.0);
    for resource in RESOURCES {
        gauge!(FLEET_CAPACITY, "resource" => resource).set(0.0);
        gauge!(FLEET_ALLOCATED, "resource" => resource).set(0.0);
    }
    let _ = histogram!(STORAGE_WRITE_SECONDS);
    let _ = histogram!(STORAGE_SYNC_SECONDS);
    let _ = histogram!(STORAGE_GROUP_COMMIT_APPENDS);
    let _ = histogram!(SNAPSHOT_BUILD_SECONDS);
}

/// The leader's wall clock minus the time it stamps, in ms (0 off the leader).
pub fn clock_offset(offset_ms: f64) {
    gauge!(CLOCK_OFFSET_SECONDS).set(offset_ms / 1000.0);
}

pub fn storage_write(elapsed: Duration) {
    histogram!(STORAGE_WRITE_SECONDS).record(elapsed.as_secs_f64());
}

pub fn storage_sync(elapsed: Duration) {
    histogram!(STORAGE_SYNC_SECONDS).record(elapsed.as_secs_f64());
}

pub fn storage_group_commit(appends: usize) {
    histogram!(STORAGE_GROUP_COMMIT_APPENDS).record(appends as f64);
}

/// The data disk's state at the last reading (`storage::disk`).
pub fn disk(free_bytes: u64, reserve_bytes: u64, low: bool) {
    gauge!(STORAGE_DISK_FREE_BYTES).set(free_bytes as f64);
    gauge!(STORAGE_DISK_RESERVE_BYTES).set(reserve_bytes as f64);
    gauge!(STORAGE_DISK_LOW).set(if low { 1.0 } else { 0.0 });
}

pub fn storage_append(entries: u64) {
    counter!(STORAGE_APPENDED_ENTRIES).increment(entries);
}

pub fn applied_index(index: u64) {
    gauge!(RAFT_APPLIED_INDEX).set(index as f64);
}

pub fn snapshot_built(index: u64, bytes: usize, elapsed: Duration) {
    gauge!(RAFT_SNAPSHOT_INDEX).set(index as f64);
    gauge!(SNAPSHOT_SIZE_BYTES).set(bytes as f64);
    histogram!(SNAPSHOT_BUILD_SECONDS).record(elapsed.as_secs_f64());
}

pub fn grpc_request(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!(GRPC_REQUESTS, "method" => method, "code" => format!("{code:?}")).increment(1);
    histogram!(GRPC_REQUEST_SECONDS, "method" => method).record(elapsed.as_secs_f64());
}

/// One request to the HTTP listener, by route (its pattern, `/api/v1/workflows/{id}`) and status.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let route = format!("{method} {route}");
    counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status.to_string()).increment(1);
    histogram!(HTTP_REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}

/// One webhook delivery, by trigger (empty for an unknown name) and outcome: started,
/// duplicate (a redelivery), bad_signature, unknown_trigger, failed.
pub fn trigger_delivery(trigger: &str, outcome: &'static str) {
    counter!(TRIGGER_DELIVERIES, "trigger" => trigger.to_string(), "outcome" => outcome)
        .increment(1);
}

pub fn quota_refused(over: &crate::state::OverQuota) {
    counter!(
        QUOTA_REFUSALS,
        "namespace" => over.namespace.clone(),
        "quota" => over.quota.name()
    )
    .increment(1);
}

pub fn commands_per_entry(n: usize) {
    histogram!(RAFT_COMMANDS_PER_ENTRY).record(n as f64);
}

pub fn assign_batch(n: usize) {
    histogram!(ASSIGN_BATCH_SIZE).record(n as f64);
}

pub fn auth_refused(code: tonic::Code) {
    let code = match code {
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "permission_denied",
    };
    counter!(AUTH_REFUSED, "code" => code).increment(1);
}

pub fn report_refused() {
    counter!(REPORTS_REFUSED).increment(1);
}

/// Raft gauges from this node's Raft status, refreshed on every change. `new_leader` is true
/// when this node learned of a leader other than the last one it knew.
pub fn raft(status: &crate::raft::RaftStatus, new_leader: bool) {
    gauge!(RAFT_TERM).set(status.term as f64);
    gauge!(RAFT_IS_LEADER).set(if status.is_leader() { 1.0 } else { 0.0 });
    gauge!(RAFT_LAST_LOG_INDEX).set(status.last_log_index.unwrap_or(0) as f64);
    gauge!(RAFT_COMMITTED_INDEX).set(status.committed_index as f64);
    gauge!(RAFT_APPLY_LAG).set(status.committed_index.saturating_sub(status.applied_index) as f64);
    if let Some(snapshot) = status.snapshot_index {
        gauge!(RAFT_SNAPSHOT_INDEX).set(snapshot as f64);
    }
    if new_leader {
        counter!(RAFT_LEADER_CHANGES).increment(1);
    }
}

/// Replication lag per follower (`current`: on the leader, entries behind by follower; empty
/// elsewhere). Followers `reported` before and missing now are set to 0.
pub fn replication_lag(current: &BTreeMap<u64, u64>, reported: &mut BTreeSet<u64>) {
    for id in reported.iter().filter(|id| !current.contains_key(id)) {
        gauge!(RAFT_REPLICATION_LAG, "follower" => id.to_string()).set(0.0);
    }
    for (id, lag) in current {
        gauge!(RAFT_REPLICATION_LAG, "follower" => id.to_string()).set(*lag as f64);
    }
    reported.extend(current.keys());
}

/// Derives the workflow and step counters from the events of one applied entry, and logs each
/// workflow's end. Called by the state machine store after [`ClusterState::apply`] (never inside
/// it), on the node that counts the entry (see the module doc), with the state as of after the
/// entry.
pub fn applied_events(state: &ClusterState, events: &[pb::WorkflowEvent]) {
    use pb::EventKind;
    let seconds = |from_ms: u64, to_ms: u64| to_ms.saturating_sub(from_ms) as f64 / 1000.0;
    for (i, event) in events.iter().enumerate() {
        let Ok(kind) = EventKind::try_from(event.kind) else {
            continue;
        };
        let workflow = state.workflow(crate::state::WorkflowId(event.workflow_id));
        match kind {
            EventKind::WorkflowSubmitted => {
                counter!(WORKFLOWS_SUBMITTED).increment(1);
                if let Some(run) = workflow.and_then(|w| w.schedule.as_ref()) {
                    histogram!(SCHEDULE_LAG_SECONDS).record(seconds(run.nominal_ms, event.time_ms));
                }
            }
            EventKind::WorkflowPurged => counter!(WORKFLOWS_PURGED).increment(1),
            EventKind::WorkflowPaused => {
                counter!(WORKFLOW_ACTIONS, "action" => "pause").increment(1);
            }
            EventKind::WorkflowResumed => {
                counter!(WORKFLOW_ACTIONS, "action" => "resume").increment(1);
            }
            EventKind::WorkflowRetried => {
                counter!(WORKFLOW_ACTIONS, "action" => "retry").increment(1);
            }
            EventKind::WorkflowFinished => {
                let outcome = match pb::WorkflowState::try_from(event.workflow_state) {
                    Ok(pb::WorkflowState::Succeeded) => "succeeded",
                    Ok(pb::WorkflowState::Failed) => "failed",
                    Ok(pb::WorkflowState::Cancelled) => "cancelled",
                    Ok(pb::WorkflowState::TimedOut) => "timed_out",
                    _ => continue,
                };
                counter!(WORKFLOWS_FINISHED, "outcome" => outcome).increment(1);
                if let Some(workflow) = workflow {
                    let cycle_ms = event.time_ms.saturating_sub(workflow.created_at_ms);
                    histogram!(WORKFLOW_CYCLE_SECONDS, "outcome" => outcome)
                        .record(cycle_ms as f64 / 1000.0);
                    // Logged here, once in the cluster (by the counting leader), with its figures.
                    tracing::info!(
                        workflow = %workflow.id, name = %workflow.spec.name, outcome, cycle_ms,
                        "workflow finished"
                    );
                }
            }
            EventKind::StepAssigned => {
                counter!(ASSIGNMENTS).increment(1);
                let Some(workflow) = workflow else { continue };
                let Some(index) = workflow
                    .spec
                    .steps
                    .iter()
                    .position(|s| s.name == event.step)
                else {
                    continue;
                };
                histogram!(READY_TO_ASSIGNED_SECONDS)
                    .record(seconds(workflow.steps[index].ready_at_ms, event.time_ms));
                // The workflow's first start: every attempt it has was assigned by this entry,
                // and this is the entry's first assignment of it.
                let assigned_here = events
                    .iter()
                    .filter(|e| {
                        e.kind == EventKind::StepAssigned as i32
                            && e.workflow_id == event.workflow_id
                    })
                    .count();
                let first_here = !events[..i].iter().any(|e| {
                    e.kind == EventKind::StepAssigned as i32 && e.workflow_id == event.workflow_id
                });
                let attempts: u32 = workflow.steps.iter().map(|s| s.attempts).sum();
                if first_here && attempts as usize == assigned_here {
                    histogram!(SUBMIT_TO_START_SECONDS)
                        .record(seconds(workflow.created_at_ms, event.time_ms));
                }
            }
            EventKind::StepFinished if event.attempt_id == 0 => {
                // A step end without an attempt: a wait step's signal (or its timeout), or else
                // the schedule-to-start timeout.
                let waits = workflow
                    .and_then(|w| w.spec.steps.iter().find(|s| s.name == event.step))
                    .is_some_and(|s| matches!(s.task, Some(pb::step_spec::Task::Wait(_))));
                if waits {
                    let outcome = if event.step_state == pb::StepState::Succeeded as i32 {
                        "succeeded"
                    } else {
                        "failed"
                    };
                    counter!(SIGNALS, "outcome" => outcome).increment(1);
                } else {
                    counter!(SCHEDULE_TO_START_TIMEOUTS).increment(1);
                }
            }
            EventKind::StepFinished => {
                let outcome = if event.step_state == pb::StepState::Succeeded as i32 {
                    "succeeded"
                } else {
                    "failed"
                };
                counter!(ATTEMPTS_FINISHED, "outcome" => outcome).increment(1);
            }
            EventKind::StepRetrying => {
                counter!(ATTEMPTS_FINISHED, "outcome" => "failed").increment(1);
            }
            EventKind::StepLeaseExpired => {
                counter!(LEASES_EXPIRED).increment(1);
                counter!(ATTEMPTS_FINISHED, "outcome" => "lease_expired").increment(1);
                let requeued = events.get(i + 1).is_some_and(|next| {
                    next.kind == EventKind::StepReady as i32
                        && next.workflow_id == event.workflow_id
                        && next.step == event.step
                });
                if requeued {
                    counter!(RESCHEDULES).increment(1);
                }
            }
            _ => {}
        }
    }
}

/// Purged workflows written to this node's archive.
pub fn archived(workflows: usize) {
    counter!(ARCHIVED).increment(workflows as u64);
}

/// How often the leader recomputes its cluster-wide gauges: O(ready steps + agents) each time,
/// far more often than any scrape, far less often than scheduling rounds.
pub const LEADER_GAUGES_INTERVAL: Duration = Duration::from_secs(1);

/// The cluster-wide gauges, reported by the leader only. Remembers every label set it reported,
/// so that a node that stops leading sets them all to 0 instead of leaving stale values behind.
#[derive(Default)]
pub struct LeaderGauges {
    last_update: Option<Instant>,
    priorities: BTreeSet<i32>,
    agents: BTreeSet<String>,
    schedules: BTreeSet<String>,
    namespaces: BTreeSet<String>,
}

impl LeaderGauges {
    /// Recomputes the gauges from the state and the connected agents if they are older than
    /// [`LEADER_GAUGES_INTERVAL`].
    pub fn update(
        &mut self,
        state: &ClusterState,
        connected: &BTreeSet<crate::state::AgentId>,
        now: Instant,
    ) {
        if self
            .last_update
            .is_some_and(|at| now.duration_since(at) < LEADER_GAUGES_INTERVAL)
        {
            return;
        }
        self.last_update = Some(now);
        // Every priority ever reported, and the default one, read 0 when nothing waits there.
        let mut ready: BTreeMap<i32, u64> = self.priorities.iter().map(|p| (*p, 0)).collect();
        ready.entry(0).or_default();
        for key in state.ready_queue() {
            *ready.entry(-key.neg_priority).or_default() += 1;
        }
        for (priority, count) in &ready {
            gauge!(READY_STEPS, "priority" => priority.to_string()).set(*count as f64);
        }
        self.priorities.extend(ready.keys());
        gauge!(LEASES_LIVE).set(state.live_attempts().count() as f64);
        gauge!(WORKFLOWS_RETAINED).set(state.workflow_count() as f64);
        let mut schedules = BTreeSet::new();
        for (name, schedule) in state.schedules() {
            let name = name.to_string();
            for (outcome, count) in [
                ("started", schedule.started),
                ("skipped", schedule.skipped),
                ("missed", schedule.missed),
            ] {
                counter!(SCHEDULE_RUNS, "schedule" => name.clone(), "outcome" => outcome)
                    .absolute(count);
            }
            let next = schedule.due_at(&name);
            gauge!(SCHEDULE_NEXT_FIRE, "schedule" => name.clone())
                .set(next.map_or(0.0, |ms| ms as f64 / 1000.0));
            schedules.insert(name);
        }
        // A deleted schedule's series read 0 (never), not its last value.
        for gone in self.schedules.difference(&schedules) {
            gauge!(SCHEDULE_NEXT_FIRE, "schedule" => gone.clone()).set(0.0);
        }
        self.schedules = schedules;
        let mut namespaces = BTreeSet::new();
        let waiting = state.key_waiting_by_namespace();
        for (name, _) in state.namespaces() {
            let (workflows, steps) = waiting.get(name).copied().unwrap_or_default();
            for (kind, count) in [("workflows", workflows), ("steps", steps)] {
                gauge!(NAMESPACE_KEY_WAITING, "namespace" => name.to_string(), "kind" => kind)
                    .set(count as f64);
            }
            let live = state.live(name);
            let quotas = state.quotas(name);
            let name = name.to_string();
            gauge!(NAMESPACE_RUNNING, "namespace" => name.clone()).set(live.running as f64);
            gauge!(NAMESPACE_ACTIVE_STEPS, "namespace" => name.clone())
                .set(live.active_steps as f64);
            for (quota, value) in [
                ("max_running_workflows", quotas.running_workflows),
                ("max_active_steps", quotas.active_steps),
                ("submits_per_second", u64::from(quotas.submits_per_second)),
            ] {
                gauge!(NAMESPACE_QUOTA, "namespace" => name.clone(), "quota" => quota)
                    .set(value as f64);
            }
            namespaces.insert(name);
        }
        for gone in self.namespaces.difference(&namespaces) {
            clear_namespace(gone);
        }
        self.namespaces = namespaces;

        let mut fleet_capacity = [0.0; 3];
        let mut fleet_allocated = [0.0; 3];
        let mut seen = BTreeSet::new();
        for agent in state.agents() {
            let used = state.allocation(agent.id);
            let is_connected = connected.contains(&agent.id);
            let capacity = resources(agent.slots, agent.cpu_millis, agent.memory_mb);
            let allocated = resources(used.slots, used.cpu_millis, used.memory_mb);
            let name = agent.name.clone();
            gauge!(AGENT_CONNECTED, "agent" => name.clone()).set(f64::from(u8::from(is_connected)));
            for (i, resource) in RESOURCES.iter().enumerate() {
                gauge!(AGENT_CAPACITY, "agent" => name.clone(), "resource" => *resource)
                    .set(capacity[i]);
                gauge!(AGENT_ALLOCATED, "agent" => name.clone(), "resource" => *resource)
                    .set(allocated[i]);
                if is_connected {
                    fleet_capacity[i] += capacity[i];
                    fleet_allocated[i] += allocated[i];
                }
            }
            seen.insert(name);
        }
        gauge!(FLEET_AGENTS_CONNECTED).set(connected.len() as f64);
        for (i, resource) in RESOURCES.iter().enumerate() {
            gauge!(FLEET_CAPACITY, "resource" => *resource).set(fleet_capacity[i]);
            gauge!(FLEET_ALLOCATED, "resource" => *resource).set(fleet_allocated[i]);
        }
        self.agents.extend(seen);
    }

    /// This node is not (or no longer) the leader: every series it reported goes to 0.
    pub fn clear(&mut self) {
        if self.last_update.take().is_none() {
            return;
        }
        for priority in &self.priorities {
            gauge!(READY_STEPS, "priority" => priority.to_string()).set(0.0);
        }
        gauge!(LEASES_LIVE).set(0.0);
        gauge!(WORKFLOWS_RETAINED).set(0.0);
        // Only the leader says when schedules fire next (a follower's 0 means "not me").
        for name in std::mem::take(&mut self.schedules) {
            gauge!(SCHEDULE_NEXT_FIRE, "schedule" => name).set(0.0);
        }
        for name in std::mem::take(&mut self.namespaces) {
            clear_namespace(&name);
        }
        gauge!(CLOCK_OFFSET_SECONDS).set(0.0);
        gauge!(FLEET_AGENTS_CONNECTED).set(0.0);
        for resource in RESOURCES {
            gauge!(FLEET_CAPACITY, "resource" => resource).set(0.0);
            gauge!(FLEET_ALLOCATED, "resource" => resource).set(0.0);
        }
        for name in &self.agents {
            gauge!(AGENT_CONNECTED, "agent" => name.clone()).set(0.0);
            for resource in RESOURCES {
                gauge!(AGENT_CAPACITY, "agent" => name.clone(), "resource" => resource).set(0.0);
                gauge!(AGENT_ALLOCATED, "agent" => name.clone(), "resource" => resource).set(0.0);
            }
        }
    }
}

/// A namespace's series read 0 once it is gone, or once this node no longer leads.
fn clear_namespace(name: &str) {
    gauge!(NAMESPACE_RUNNING, "namespace" => name.to_string()).set(0.0);
    gauge!(NAMESPACE_ACTIVE_STEPS, "namespace" => name.to_string()).set(0.0);
    for kind in ["workflows", "steps"] {
        gauge!(NAMESPACE_KEY_WAITING, "namespace" => name.to_string(), "kind" => kind).set(0.0);
    }
    for quota in [
        "max_running_workflows",
        "max_active_steps",
        "submits_per_second",
    ] {
        gauge!(NAMESPACE_QUOTA, "namespace" => name.to_string(), "quota" => quota).set(0.0);
    }
}

/// Slots, cores and bytes, in the order of [`RESOURCES`].
fn resources(slots: u32, cpu_millis: u32, memory_mb: u32) -> [f64; 3] {
    [
        f64::from(slots),
        f64::from(cpu_millis) / 1000.0,
        f64::from(memory_mb) * 1024.0 * 1024.0,
    ]
}
