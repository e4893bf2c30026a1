//! The lowercase names of the proto's enums (`running`, `step_assigned`, ...) in the CLI and in
//! JSON, and back for `baton list --state`.

use crate::v1::{AttemptOutcome, EventKind, RunCondition, StepState, WorkflowState};

/// `running`, `succeeded`, ...; `unspecified` for 0 and `unknown` for a value newer than us.
pub fn workflow_state_name(state: i32) -> &'static str {
    match WorkflowState::try_from(state) {
        Ok(WorkflowState::Unspecified) => "unspecified",
        Ok(WorkflowState::Running) => "running",
        Ok(WorkflowState::Succeeded) => "succeeded",
        Ok(WorkflowState::Failed) => "failed",
        Ok(WorkflowState::Cancelled) => "cancelled",
        Ok(WorkflowState::TimedOut) => "timed_out",
        Err(_) => "unknown",
    }
}

/// Parses a name printed by [`workflow_state_name`] (for `baton list --state`).
pub fn parse_workflow_state(name: &str) -> Option<WorkflowState> {
    match name.trim().to_ascii_lowercase().as_str() {
        "running" => Some(WorkflowState::Running),
        "succeeded" => Some(WorkflowState::Succeeded),
        "failed" => Some(WorkflowState::Failed),
        "cancelled" | "canceled" => Some(WorkflowState::Cancelled),
        "timed_out" | "timed-out" => Some(WorkflowState::TimedOut),
        _ => None,
    }
}

pub fn step_state_name(state: i32) -> &'static str {
    match StepState::try_from(state) {
        Ok(StepState::Unspecified) => "unspecified",
        Ok(StepState::Waiting) => "waiting",
        Ok(StepState::Ready) => "ready",
        Ok(StepState::Running) => "running",
        Ok(StepState::Backoff) => "backoff",
        Ok(StepState::Succeeded) => "succeeded",
        Ok(StepState::Failed) => "failed",
        Ok(StepState::Skipped) => "skipped",
        Ok(StepState::Cancelled) => "cancelled",
        Ok(StepState::AwaitingSignal) => "awaiting_signal",
        Err(_) => "unknown",
    }
}

pub fn event_kind_name(kind: i32) -> &'static str {
    match EventKind::try_from(kind) {
        Ok(EventKind::Unspecified) => "unspecified",
        Ok(EventKind::WorkflowSubmitted) => "workflow_submitted",
        Ok(EventKind::WorkflowFinished) => "workflow_finished",
        Ok(EventKind::StepReady) => "step_ready",
        Ok(EventKind::StepAssigned) => "step_assigned",
        Ok(EventKind::StepFinished) => "step_finished",
        Ok(EventKind::StepRetrying) => "step_retrying",
        Ok(EventKind::StepLeaseExpired) => "step_lease_expired",
        Ok(EventKind::StepSkipped) => "step_skipped",
        Ok(EventKind::CancelRequested) => "cancel_requested",
        Ok(EventKind::WorkflowPurged) => "workflow_purged",
        Ok(EventKind::WorkflowPaused) => "workflow_paused",
        Ok(EventKind::WorkflowResumed) => "workflow_resumed",
        Ok(EventKind::WorkflowRetried) => "workflow_retried",
        Ok(EventKind::StepAwaitingSignal) => "step_awaiting_signal",
        Ok(EventKind::KeyWaiting) => "key_waiting",
        Ok(EventKind::KeyAcquired) => "key_acquired",
        Err(_) => "unknown",
    }
}

/// How an earlier attempt ended: `failed`, `lease_expired`.
pub fn attempt_outcome_name(outcome: i32) -> &'static str {
    match AttemptOutcome::try_from(outcome) {
        Ok(AttemptOutcome::Failed) => "failed",
        Ok(AttemptOutcome::LeaseExpired) => "lease_expired",
        Ok(AttemptOutcome::Succeeded) => "succeeded",
        Ok(AttemptOutcome::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// `success` for 0 too, since that is what the server runs it as.
pub fn run_condition_name(condition: i32) -> &'static str {
    match RunCondition::try_from(condition) {
        Ok(RunCondition::Unspecified | RunCondition::Success) => "success",
        Ok(RunCondition::Failure) => "failure",
        Ok(RunCondition::Always) => "always",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_lowercase_and_tolerate_new_values() {
        assert_eq!(
            workflow_state_name(WorkflowState::Succeeded as i32),
            "succeeded"
        );
        assert_eq!(workflow_state_name(99), "unknown");
        assert_eq!(step_state_name(StepState::Backoff as i32), "backoff");
        assert_eq!(
            event_kind_name(EventKind::StepLeaseExpired as i32),
            "step_lease_expired"
        );
        assert_eq!(
            parse_workflow_state("Cancelled"),
            Some(WorkflowState::Cancelled)
        );
        assert_eq!(
            parse_workflow_state("timed_out"),
            Some(WorkflowState::TimedOut)
        );
        assert_eq!(parse_workflow_state("done"), None);
    }
}
