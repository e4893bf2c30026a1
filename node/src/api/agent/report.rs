//! An agent's report of an attempt: refused at once when the applied state already proves it
//! stale or foreign, else proposed as `Complete` and answered once committed.

use baton_proto::limits::OUTPUT_BYTES_MAX;
use baton_proto::v1 as pb;
use tonic::Status;

use crate::api::node_error;
use crate::faults::{self, Broken};
use crate::metrics;
use crate::raft::RaftNode;
use crate::state::outcome::Reported;
use crate::state::scheduling::truncate_utf8;
use crate::state::{AgentId, AttemptId, CompleteCommand};

/// Proposes a report; the reply to send, None when the outcome is unknown (the agent keeps the
/// report and re-sends it on its next session), or the status to end the session with.
pub(super) async fn complete(
    node: &RaftNode,
    agent: AgentId,
    report: pb::Report,
) -> Result<Option<pb::server_message::Msg>, Status> {
    let attempt_id = report.attempt_id;
    // Refused without a log entry when the applied state already proves the report stale or
    // foreign (the state machine re-checks identity and token at apply either way): another
    // agent's attempt cannot even cost the cluster a log entry.
    // (A build broken with unfenced reports proposes every report: its wrapper takes them.)
    let refusal = node
        .replica
        .read(|a| a.state.report_refusal(AttemptId(attempt_id), agent))
        .filter(|_| !faults::active(Broken::UnfencedReports));
    if let Some(reason) = refusal {
        metrics::report_refused();
        tracing::warn!(attempt = attempt_id, agent = %agent, %reason, "report refused before proposing");
        return Ok(Some(pb::server_message::Msg::Rejected(
            pb::ReportRejected { attempt_id, reason },
        )));
    }
    // For the logs: which workflow and step the report is about, if the attempt is still live.
    let (workflow, step) = node.replica.read(|a| {
        let Some(live) = a.state.live_attempt(AttemptId(attempt_id)) else {
            return (0, String::new());
        };
        let step = a
            .state
            .workflow(live.workflow_id)
            .and_then(|w| w.spec.steps.get(live.step.get()))
            .map_or_else(String::new, |s| s.name.clone());
        (live.workflow_id.0, step)
    });
    let report_command = CompleteCommand {
        attempt_id: AttemptId(attempt_id),
        agent_id: agent,
        success: report.success,
        // Kept to the tail the state keeps anyway, so that a large output does not travel
        // through the log only to be cut at apply.
        output: truncate_utf8(report.output, OUTPUT_BYTES_MAX),
        error: truncate_utf8(report.error, OUTPUT_BYTES_MAX),
        exit_code: report.exit_code,
    };
    // Not counted against `PROPOSALS_IN_FLIGHT_MAX`: a report ends work and frees capacity, so
    // refusing it under load would only make the load last longer. Reports in flight are
    // bounded anyway, by sessions times slots.
    match node.propose_for(report_command).await {
        Ok(decided) => match decided.outcome {
            Reported::Accepted => {
                tracing::info!(workflow, step, attempt = attempt_id, agent = %agent, success = report.success, "report accepted");
                Ok(Some(pb::server_message::Msg::ReportAccepted(
                    pb::ReportAccepted { attempt_id },
                )))
            }
            Reported::Refused(reason) => {
                metrics::report_refused();
                tracing::warn!(workflow, step, attempt = attempt_id, agent = %agent, %reason, "stale report refused");
                Ok(Some(pb::server_message::Msg::Rejected(
                    pb::ReportRejected { attempt_id, reason },
                )))
            }
        },
        // Unknown too ends the session (found by baton-chaos seed 1): kept open, the agent would
        // hold the report unacknowledged until its next Register, which never came, and the step
        // stayed RUNNING for good. Re-sent after re-registering, a report that did commit is
        // refused as stale and dropped by the agent, so ending the session is always safe.
        Err(err) => {
            tracing::warn!(attempt = attempt_id, error = %err, "report not committed; closing the session");
            Err(node_error(err))
        }
    }
}
