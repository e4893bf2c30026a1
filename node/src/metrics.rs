//! Every metric the node emits, declared in one place. Names follow Prometheus conventions:
//! `baton_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

pub const RAFT_TERM: &str = "baton_raft_term";
pub const RAFT_IS_LEADER: &str = "baton_raft_is_leader";
pub const RAFT_LEADER_CHANGES: &str = "baton_raft_leader_changes_total";
pub const RAFT_LAST_LOG_INDEX: &str = "baton_raft_last_log_index";
pub const RAFT_COMMITTED_INDEX: &str = "baton_raft_committed_index";
pub const RAFT_APPLIED_INDEX: &str = "baton_raft_applied_index";
pub const RAFT_SNAPSHOT_INDEX: &str = "baton_raft_snapshot_index";
pub const STORAGE_SYNC_SECONDS: &str = "baton_storage_sync_seconds";
pub const STORAGE_GROUP_COMMIT_APPENDS: &str = "baton_storage_group_commit_appends";
pub const STORAGE_APPENDED_ENTRIES: &str = "baton_storage_appended_entries_total";
pub const SNAPSHOT_BUILD_SECONDS: &str = "baton_snapshot_build_seconds";
pub const SNAPSHOT_SIZE_BYTES: &str = "baton_snapshot_size_bytes";
pub const GRPC_REQUESTS: &str = "baton_grpc_requests_total";
pub const GRPC_REQUEST_SECONDS: &str = "baton_grpc_request_duration_seconds";
pub const WORKFLOWS_SUBMITTED: &str = "baton_workflows_submitted_total";

/// Registers help texts; call once at start-up, after the recorder is installed.
pub fn describe() {
    describe_gauge!(RAFT_TERM, "Current Raft term of this node.");
    describe_gauge!(RAFT_IS_LEADER, "1 if this node is the Raft leader, else 0.");
    describe_counter!(
        RAFT_LEADER_CHANGES,
        "Times this node saw the Raft leader change."
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
        RAFT_SNAPSHOT_INDEX,
        "Log index of this node's latest snapshot."
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
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests served, by method and status code."
    );
    describe_histogram!(
        GRPC_REQUEST_SECONDS,
        Unit::Seconds,
        "gRPC request latency, by method."
    );
    describe_counter!(
        WORKFLOWS_SUBMITTED,
        "Workflows accepted (created, not deduplicated)."
    );
}

pub fn storage_sync(elapsed: Duration) {
    histogram!(STORAGE_SYNC_SECONDS).record(elapsed.as_secs_f64());
}

pub fn storage_group_commit(appends: usize) {
    histogram!(STORAGE_GROUP_COMMIT_APPENDS).record(appends as f64);
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

pub fn workflow_submitted() {
    counter!(WORKFLOWS_SUBMITTED).increment(1);
}

pub fn grpc_request(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!(GRPC_REQUESTS, "method" => method, "code" => format!("{code:?}")).increment(1);
    histogram!(GRPC_REQUEST_SECONDS, "method" => method).record(elapsed.as_secs_f64());
}

/// Raft gauges from openraft's metrics, refreshed on every change.
pub fn raft(m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>, leader_changed: bool) {
    gauge!(RAFT_TERM).set(m.current_term as f64);
    gauge!(RAFT_IS_LEADER).set(if m.state == openraft::ServerState::Leader {
        1.0
    } else {
        0.0
    });
    gauge!(RAFT_LAST_LOG_INDEX).set(m.last_log_index.unwrap_or(0) as f64);
    gauge!(RAFT_COMMITTED_INDEX).set(m.local_committed.map_or(0, |id| id.index) as f64);
    if let Some(snapshot) = m.snapshot {
        gauge!(RAFT_SNAPSHOT_INDEX).set(snapshot.index as f64);
    }
    if leader_changed {
        counter!(RAFT_LEADER_CHANGES).increment(1);
    }
}

pub const LEASES_EXPIRED: &str = "baton_lease_expirations_total";
pub const ASSIGN_BATCH_SIZE: &str = "baton_scheduler_assign_batch_size";
pub const REPORTS_REFUSED: &str = "baton_reports_refused_total";

pub fn leases_expired(n: usize) {
    counter!(LEASES_EXPIRED).increment(n as u64);
}

pub fn assign_batch(n: usize) {
    histogram!(ASSIGN_BATCH_SIZE).record(n as f64);
}

pub fn report_refused() {
    counter!(REPORTS_REFUSED).increment(1);
}
