//! Workflow events as text: one line each (`baton watch`, `baton submit --wait`), or a table
//! (`baton history`).

use baton_proto::v1::{EventKind, WorkflowEvent};

use super::text::{Table, format_time_ms, one_line, or_dash};
use baton_proto::names::{event_kind_name, step_state_name, workflow_state_name};

/// One line per event for `baton watch` and `baton submit --wait`:
/// `TIME  STEP  KIND  attempt N  AGENT  MESSAGE`, with `-` for what the event lacks. A line on
/// its own; a stream of them aligns through [`EventColumns`].
pub fn render_event_line(event: &WorkflowEvent) -> String {
    EventColumns::default().render(event)
}

/// Column widths for a stream of event lines. Each column is as wide as the widest value it has
/// held (at least its header's width), seeded with the step names known in advance: a long
/// step name widens its column once, before the first line when the spec is known, instead of
/// pushing the rest of every line it appears on out of line.
#[derive(Clone, Debug)]
pub struct EventColumns {
    step: usize,
    kind: usize,
    attempt: usize,
    agent: usize,
}

impl Default for EventColumns {
    fn default() -> Self {
        EventColumns {
            step: "STEP".len(),
            // "step_lease_expired", the longest kind.
            kind: 18,
            // Room for a seven-digit fencing token and a typical agent name from the start.
            attempt: "attempt 1234567".len(),
            agent: 16,
        }
    }
}

impl EventColumns {
    /// Widens the step column for these names (the workflow's steps, from its spec).
    pub fn fit_steps<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.step = self.step.max(name.chars().count());
        }
    }

    /// One event as one line, widening a column first if this event's value is wider.
    pub fn render(&mut self, event: &WorkflowEvent) -> String {
        let attempt = if event.attempt_id == 0 {
            "-".to_string()
        } else {
            format!("attempt {}", event.attempt_id)
        };
        let kind = event_kind_name(event.kind);
        let message = event_detail(event);
        let step = or_dash(&event.step);
        let agent = or_dash(&event.agent);
        self.step = self.step.max(step.chars().count());
        self.kind = self.kind.max(kind.len());
        self.attempt = self.attempt.max(attempt.len());
        self.agent = self.agent.max(agent.chars().count());
        let line = format!(
            "{}  {:<step_w$}  {:<kind_w$}  {:<attempt_w$}  {:<agent_w$}  {}",
            format_time_ms(event.time_ms),
            step,
            kind,
            attempt,
            agent,
            message,
            step_w = self.step,
            kind_w = self.kind,
            attempt_w = self.attempt,
            agent_w = self.agent,
        );
        line.trim_end().to_string()
    }
}

/// What an event says beyond its kind: a workflow's own events say how it stands, step events
/// how the step does.
fn event_detail(event: &WorkflowEvent) -> String {
    let with_state = |state: &str| {
        if event.message.is_empty() {
            state.to_string()
        } else {
            format!("{state}: {}", one_line(&event.message, 200))
        }
    };
    match EventKind::try_from(event.kind) {
        Ok(EventKind::WorkflowFinished) => with_state(workflow_state_name(event.workflow_state)),
        Ok(EventKind::StepFinished) => with_state(step_state_name(event.step_state)),
        _ => one_line(&event.message, 200),
    }
}

/// `baton history`: every event of a workflow, oldest first, with its log index, what an
/// attempt reported (bytes of output and error) and who asked for it.
pub fn render_history(events: &[WorkflowEvent]) -> String {
    let mut table = Table::new([
        "INDEX", "TIME", "STEP", "EVENT", "ATTEMPT", "AGENT", "DETAIL", "BY",
    ]);
    for event in events {
        let reported = matches!(
            EventKind::try_from(event.kind),
            Ok(EventKind::StepFinished | EventKind::StepRetrying)
        ) && event.attempt_id != 0;
        let mut detail = event_detail(event);
        if reported {
            let sizes = format!(
                "[output {} B, error {} B]",
                event.output_bytes, event.error_bytes
            );
            detail = if detail.is_empty() {
                sizes
            } else {
                format!("{detail} {sizes}")
            };
        }
        table.row([
            event.index.to_string(),
            format_time_ms(event.time_ms),
            or_dash(&event.step),
            event_kind_name(event.kind).to_string(),
            if event.attempt_id == 0 {
                "-".to_string()
            } else {
                event.attempt_id.to_string()
            },
            or_dash(&event.agent),
            or_dash(&detail),
            or_dash(&event.actor),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(step: &str, kind: EventKind, attempt_id: u64, agent: &str) -> WorkflowEvent {
        WorkflowEvent {
            step: step.into(),
            kind: kind as i32,
            attempt_id,
            agent: agent.into(),
            message: "m".into(),
            ..Default::default()
        }
    }

    /// Where each line's MESSAGE column starts.
    fn message_column(line: &str) -> usize {
        line.rfind("  m").expect("a message") + 2
    }

    #[test]
    fn a_stream_stays_aligned_with_step_names_longer_than_the_old_fixed_width() {
        let mut columns = EventColumns::default();
        columns.fit_steps(["build", "flaky-integration-tests", "deploy"]);
        let lines: Vec<String> = [
            event("build", EventKind::StepReady, 0, ""),
            event(
                "flaky-integration-tests",
                EventKind::StepAssigned,
                7,
                "dev-agent",
            ),
            event("deploy", EventKind::StepLeaseExpired, 1234567, "agent-eu-1"),
        ]
        .iter()
        .map(|e| columns.render(e))
        .collect();
        let at = message_column(&lines[0]);
        for line in &lines {
            assert_eq!(message_column(line), at, "{lines:#?}");
        }
        assert!(
            lines[1].contains("flaky-integration-tests  step_assigned"),
            "{lines:#?}"
        );
    }

    #[test]
    fn an_unforeseen_wider_value_widens_its_column_from_then_on() {
        let mut columns = EventColumns::default();
        let long_agent = "an-agent-with-a-long-name";
        let first = columns.render(&event("a", EventKind::StepAssigned, 1, long_agent));
        let second = columns.render(&event("a", EventKind::StepReady, 1, "short"));
        assert!(first.contains(&format!("{long_agent}  m")), "{first}");
        assert_eq!(message_column(&first), message_column(&second));
    }
}
