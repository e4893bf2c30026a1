//! One workflow event as one line of text (`baton watch`, `baton submit --wait`).

use baton_proto::v1::{EventKind, WorkflowEvent};

use super::names::{event_kind_name, step_state_name, workflow_state_name};
use super::text::{format_time_ms, one_line, or_dash};

/// One line per event for `baton watch` and `baton submit --wait`:
/// `TIME  STEP  KIND  attempt N  AGENT  MESSAGE`, with `-` for what the event lacks.
pub fn render_event_line(event: &WorkflowEvent) -> String {
    let attempt = if event.attempt_id == 0 {
        "-".to_string()
    } else {
        format!("attempt {}", event.attempt_id)
    };
    let kind = event_kind_name(event.kind);
    // A workflow's own events say how it stands; step events say how the step does.
    let message = match EventKind::try_from(event.kind) {
        Ok(EventKind::WorkflowFinished) => {
            let state = workflow_state_name(event.workflow_state);
            if event.message.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", one_line(&event.message, 200))
            }
        }
        Ok(EventKind::StepFinished) => {
            let state = step_state_name(event.step_state);
            if event.message.is_empty() {
                state.to_string()
            } else {
                format!("{state}: {}", one_line(&event.message, 200))
            }
        }
        _ => one_line(&event.message, 200),
    };
    let line = format!(
        "{}  {:<20}  {:<18}  {:<14}  {:<16}  {}",
        format_time_ms(event.time_ms),
        or_dash(&event.step),
        kind,
        attempt,
        or_dash(&event.agent),
        message
    );
    line.trim_end().to_string()
}
