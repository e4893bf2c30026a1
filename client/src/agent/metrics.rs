//! Every metric the agent runtime emits, declared in one place (the node's are in
//! `baton-node`'s `metrics.rs`). Prometheus conventions: `baton_agent_` prefix, base units,
//! `_total` on counters. They describe this agent process only; the leader's view of the whole
//! fleet is the node's `baton_fleet_*` family.
//!
//! Recording goes through the `metrics` facade: without a recorder (an application embedding
//! the agent that does not install one) it costs next to nothing. `baton agent
//! --metrics-listen ADDR` installs a Prometheus exporter with [`install`].

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::agent::StopReason;

pub const BUILD_INFO: &str = "baton_agent_build_info";
pub const CONNECTED: &str = "baton_agent_connected";
pub const SESSIONS: &str = "baton_agent_sessions_total";
pub const SESSION_FAILURES: &str = "baton_agent_session_failures_total";
pub const SLOTS: &str = "baton_agent_slots";
pub const ATTEMPTS_RUNNING: &str = "baton_agent_attempts_running";
pub const ATTEMPTS_STARTED: &str = "baton_agent_attempts_started_total";
pub const ATTEMPTS_FINISHED: &str = "baton_agent_attempts_finished_total";
pub const ATTEMPTS_KILLED: &str = "baton_agent_attempts_killed_total";
pub const ATTEMPT_SECONDS: &str = "baton_agent_attempt_duration_seconds";
pub const REPORTS_PENDING: &str = "baton_agent_reports_pending";
pub const REPORTS_REJECTED: &str = "baton_agent_reports_rejected_total";

/// `outcome` of a reported attempt.
pub const OUTCOMES: [&str; 2] = ["succeeded", "failed"];
/// `reason` an attempt was killed without a report.
pub const KILL_REASONS: [&str; 5] = [
    "lease_lost",
    "lease_expired",
    "not_attached",
    "stopped_by_cluster",
    "shutdown",
];

/// Step run times: from a no-op to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
];

/// Serves `/metrics` on `addr` and declares every metric, with the fixed label sets at 0.
/// Must run inside a tokio runtime (the listener is a task).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(DURATION_BUCKETS)
        .map_err(|e| format!("metric buckets: {e}"))?
        .install()
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    describe();
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("BATON_COMMIT")
    )
    .set(1.0);
    gauge!(CONNECTED).set(0.0);
    gauge!(ATTEMPTS_RUNNING).set(0.0);
    gauge!(REPORTS_PENDING).set(0.0);
    counter!(SESSIONS).absolute(0);
    counter!(SESSION_FAILURES).absolute(0);
    counter!(ATTEMPTS_STARTED).absolute(0);
    counter!(REPORTS_REJECTED).absolute(0);
    for outcome in OUTCOMES {
        counter!(ATTEMPTS_FINISHED, "outcome" => outcome).absolute(0);
        let _ = histogram!(ATTEMPT_SECONDS, "outcome" => outcome);
    }
    for reason in KILL_REASONS {
        counter!(ATTEMPTS_KILLED, "reason" => reason).absolute(0);
    }
    Ok(())
}

fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version and commit labels say which baton agent."
    );
    describe_gauge!(
        CONNECTED,
        "1 while the agent has a registered session with the leader."
    );
    describe_counter!(SESSIONS, "Sessions registered with a leader.");
    describe_counter!(
        SESSION_FAILURES,
        "Sessions lost, or attempts to open one that failed (not redirects)."
    );
    describe_gauge!(SLOTS, "Attempts this agent runs at once (its capacity).");
    describe_gauge!(ATTEMPTS_RUNNING, "Attempts running on this agent.");
    describe_counter!(ATTEMPTS_STARTED, "Attempts started on this agent.");
    describe_counter!(
        ATTEMPTS_FINISHED,
        "Attempts that ended and were reported, by outcome."
    );
    describe_counter!(
        ATTEMPTS_KILLED,
        "Attempts stopped and not reported (the cluster decides their fate), by reason."
    );
    describe_histogram!(
        ATTEMPT_SECONDS,
        Unit::Seconds,
        "Run time of reported attempts, by outcome."
    );
    describe_gauge!(
        REPORTS_PENDING,
        "Reports not yet acknowledged by the cluster."
    );
    describe_counter!(
        REPORTS_REJECTED,
        "Reports the cluster refused (a stale fencing token)."
    );
}

pub(crate) fn slots(slots: u32) {
    gauge!(SLOTS).set(f64::from(slots));
}

pub(crate) fn connected(connected: bool) {
    gauge!(CONNECTED).set(f64::from(u8::from(connected)));
    if connected {
        counter!(SESSIONS).increment(1);
    }
}

pub(crate) fn session_failed() {
    counter!(SESSION_FAILURES).increment(1);
}

pub(crate) fn attempt_started(running: usize) {
    counter!(ATTEMPTS_STARTED).increment(1);
    gauge!(ATTEMPTS_RUNNING).set(running as f64);
}

pub(crate) fn attempt_reported(running: usize, success: bool, ran_for: Duration) {
    let outcome = if success { "succeeded" } else { "failed" };
    counter!(ATTEMPTS_FINISHED, "outcome" => outcome).increment(1);
    histogram!(ATTEMPT_SECONDS, "outcome" => outcome).record(ran_for.as_secs_f64());
    gauge!(ATTEMPTS_RUNNING).set(running as f64);
}

pub(crate) fn attempt_killed(running: usize, reason: &StopReason) {
    let reason = match reason {
        StopReason::LeaseLost => "lease_lost",
        StopReason::LeaseExpired => "lease_expired",
        StopReason::NotAttached => "not_attached",
        StopReason::StoppedByCluster { .. } => "stopped_by_cluster",
        StopReason::Shutdown => "shutdown",
        // Reported as a failure, not killed: counted by `attempt_reported`.
        StopReason::Timeout { .. } => return,
    };
    counter!(ATTEMPTS_KILLED, "reason" => reason).increment(1);
    gauge!(ATTEMPTS_RUNNING).set(running as f64);
}

pub(crate) fn reports_pending(pending: usize) {
    gauge!(REPORTS_PENDING).set(pending as f64);
}

pub(crate) fn report_rejected() {
    counter!(REPORTS_REJECTED).increment(1);
}
