//! One attempt of one step, in full (`baton logs ID STEP [--attempt N]`): which attempt, how it
//! ended, and its captured output and error.

use baton_proto::limits::EARLIER_ATTEMPT_TEXT_BYTES_MAX;
use baton_proto::v1::{Step, StepState};
use serde_json::{Value, json};

use super::text::format_time_ms;
use baton_proto::names::{attempt_outcome_name, step_state_name};

/// One attempt of a step, whichever record holds it: the step's own fields for the latest
/// attempt, an entry of `earlier_attempts` for the others.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptView<'a> {
    /// Its fencing token, as events show it.
    pub attempt_id: u64,
    /// 1-based among the step's attempts, and how many there are.
    pub number: usize,
    pub of: usize,
    /// How it ended (`failed`, `lease_expired`), or the step's state for the latest attempt
    /// (`running`, `succeeded`, `failed`, `cancelled`).
    pub outcome: &'static str,
    pub agent: &'a str,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub exit_code: Option<i32>,
    pub output: &'a str,
    pub error: &'a str,
    /// An earlier attempt keeps only the tail of its texts.
    pub earlier: bool,
}

/// The step's attempts, oldest first.
pub fn step_attempts(step: &Step) -> Vec<AttemptView<'_>> {
    let mut views: Vec<AttemptView<'_>> = step
        .earlier_attempts
        .iter()
        .map(|a| AttemptView {
            attempt_id: a.attempt_id,
            number: 0,
            of: 0,
            outcome: attempt_outcome_name(a.outcome),
            agent: &a.agent,
            started_at_ms: a.started_at_ms,
            finished_at_ms: a.finished_at_ms,
            exit_code: a.exit_code,
            output: &a.output,
            error: &a.error,
            earlier: true,
        })
        .collect();
    // Between a failure and the next assignment the step's fields still describe the attempt
    // that is already the last earlier one.
    let latest_is_earlier = step
        .earlier_attempts
        .last()
        .is_some_and(|a| a.attempt_id == step.attempt_id);
    if step.attempt_id != 0 && !latest_is_earlier {
        views.push(AttemptView {
            attempt_id: step.attempt_id,
            number: 0,
            of: 0,
            outcome: step_state_name(step.state),
            agent: &step.agent,
            started_at_ms: step.started_at_ms,
            finished_at_ms: step.finished_at_ms,
            exit_code: step.exit_code,
            output: &step.output,
            error: &step.error,
            earlier: false,
        });
    }
    // Counted from the latest, which is the step's attempts-th: a workflow that retried under a
    // release that kept no earlier attempts has fewer records than attempts.
    let of = (step.attempts as usize).max(views.len());
    let first = of + 1 - views.len();
    for (i, view) in views.iter_mut().enumerate() {
        view.number = first + i;
        view.of = of;
    }
    views
}

/// The attempt `attempt_id` of `step` (its latest without one), or why there is none.
pub fn choose_attempt<'a>(
    step: &'a Step,
    attempt_id: Option<u64>,
) -> Result<AttemptView<'a>, String> {
    let attempts = step_attempts(step);
    let Some(latest) = attempts.last() else {
        let state = step_state_name(step.state);
        return Err(match StepState::try_from(step.state) {
            Ok(StepState::Skipped | StepState::Cancelled | StepState::Failed) => {
                format!("step {} never ran: it is {state}", step.name)
            }
            _ => format!("step {} has not started yet: it is {state}", step.name),
        });
    };
    let Some(wanted) = attempt_id else {
        return Ok(latest.clone());
    };
    attempts
        .iter()
        .find(|a| a.attempt_id == wanted)
        .cloned()
        .ok_or_else(|| {
            let ids: Vec<String> = attempts.iter().map(|a| a.attempt_id.to_string()).collect();
            format!(
                "step {} has no attempt {wanted}; its attempts are {} (the ids events show as \
                 \"attempt N\")",
                step.name,
                ids.join(", ")
            )
        })
}

/// The text form: a header naming the attempt and how it ended, then its output and error.
pub fn render_attempt(workflow_id: u64, step: &str, view: &AttemptView<'_>) -> String {
    let mut out = format!(
        "workflow {workflow_id}, step {step}, attempt {} ({} of {}): {}",
        view.attempt_id,
        view.number,
        view.of,
        view.outcome.replace('_', " ")
    );
    if let Some(code) = view.exit_code {
        out.push_str(&format!(", exit {code}"));
    }
    if !view.agent.is_empty() {
        out.push_str(&format!(", on {}", view.agent));
    }
    out.push('\n');
    out.push_str(&format!(
        "started {}, finished {}\n",
        format_time_ms(view.started_at_ms),
        format_time_ms(view.finished_at_ms)
    ));
    for (title, text) in [("output", view.output), ("error", view.error)] {
        // Within a character of the cap: the tail was cut there (on a character boundary).
        let kept = view.earlier && text.len() + 4 > EARLIER_ATTEMPT_TEXT_BYTES_MAX;
        let note = if view.outcome == "running" {
            " (the agent sends it when the attempt ends)".to_owned()
        } else if text.is_empty() {
            " (empty)".to_owned()
        } else if kept {
            format!(
                " (an earlier attempt keeps its last {} KiB at most)",
                EARLIER_ATTEMPT_TEXT_BYTES_MAX / 1024
            )
        } else {
            String::new()
        };
        out.push_str(&format!("--- {title}{note} ---\n"));
        out.push_str(text);
        if !text.is_empty() && !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub fn attempt_json(workflow_id: u64, step: &str, view: &AttemptView<'_>) -> Value {
    let time = |ms: u64| if ms == 0 { Value::Null } else { json!(ms) };
    json!({
        "workflow_id": workflow_id,
        "step": step,
        "attempt_id": view.attempt_id,
        "number": view.number,
        "attempts": view.of,
        "outcome": view.outcome,
        "agent": if view.agent.is_empty() { Value::Null } else { json!(view.agent) },
        "started_at_ms": time(view.started_at_ms),
        "finished_at_ms": time(view.finished_at_ms),
        "exit_code": view.exit_code,
        "output": view.output,
        "error": view.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::{AttemptOutcome, StepAttempt};

    fn failed(attempt_id: u64, error: &str) -> StepAttempt {
        StepAttempt {
            attempt_id,
            agent: "a1".into(),
            started_at_ms: 1_000,
            finished_at_ms: 2_000,
            outcome: AttemptOutcome::Failed as i32,
            exit_code: Some(3),
            output: "checking\n".into(),
            error: error.into(),
        }
    }

    fn step(state: StepState, attempt_id: u64, earlier: Vec<StepAttempt>) -> Step {
        Step {
            name: "check-disk".into(),
            state: state as i32,
            attempt_id,
            agent: "a2".into(),
            output: "latest output\n".into(),
            error: "latest error".into(),
            exit_code: Some(0),
            attempts: earlier.len() as u32 + u32::from(attempt_id != 0),
            earlier_attempts: earlier,
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_attempt_is_the_default_and_earlier_ones_are_chosen_by_id() {
        let step = step(StepState::Succeeded, 12, vec![failed(9, "oops")]);
        let latest = choose_attempt(&step, None).unwrap();
        assert_eq!((latest.attempt_id, latest.number, latest.of), (12, 2, 2));
        assert_eq!(latest.outcome, "succeeded");
        assert_eq!(latest.output, "latest output\n");
        let first = choose_attempt(&step, Some(9)).unwrap();
        assert_eq!(
            (first.number, first.outcome, first.error),
            (1, "failed", "oops")
        );
        let text = render_attempt(3, "check-disk", &first);
        assert_eq!(
            text,
            "workflow 3, step check-disk, attempt 9 (1 of 2): failed, exit 3, on a1\n\
             started 1970-01-01 00:00:01, finished 1970-01-01 00:00:02\n\
             --- output ---\nchecking\n--- error ---\noops\n"
        );
    }

    #[test]
    fn an_unknown_attempt_lists_the_ones_there_are() {
        let step = step(StepState::Failed, 12, vec![failed(9, "oops")]);
        let error = choose_attempt(&step, Some(10)).unwrap_err();
        assert!(error.contains("no attempt 10"), "{error}");
        assert!(error.contains("its attempts are 9, 12"), "{error}");
    }

    #[test]
    fn in_backoff_the_latest_attempt_is_not_counted_twice() {
        // The failed attempt 9 is both the last earlier one and the step's own attempt id.
        let mut step = step(StepState::Backoff, 9, vec![failed(9, "oops")]);
        step.attempts = 1;
        step.output = "checking\n".into();
        let attempts = step_attempts(&step);
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (attempts[0].outcome, attempts[0].number, attempts[0].of),
            ("failed", 1, 1)
        );
    }

    #[test]
    fn attempts_not_kept_by_an_earlier_release_still_count() {
        // Three attempts, retried before earlier attempts were kept: only the latest is known.
        let mut step = step(StepState::Succeeded, 12, vec![]);
        step.attempts = 3;
        let latest = choose_attempt(&step, None).unwrap();
        assert_eq!((latest.number, latest.of), (3, 3));
    }

    #[test]
    fn a_step_that_never_ran_says_so() {
        let skipped = step(StepState::Skipped, 0, vec![]);
        assert_eq!(
            choose_attempt(&skipped, None).unwrap_err(),
            "step check-disk never ran: it is skipped"
        );
        let waiting = step(StepState::Waiting, 0, vec![]);
        assert_eq!(
            choose_attempt(&waiting, None).unwrap_err(),
            "step check-disk has not started yet: it is waiting"
        );
    }

    #[test]
    fn a_kept_tail_and_an_empty_text_are_marked() {
        let long = "x".repeat(EARLIER_ATTEMPT_TEXT_BYTES_MAX);
        let step = step(StepState::Succeeded, 12, vec![failed(9, &long)]);
        let first = choose_attempt(&step, Some(9)).unwrap();
        let text = render_attempt(3, "check-disk", &first);
        assert!(text.contains("--- error (an earlier attempt keeps its last 4 KiB at most) ---"));
        let mut quiet = step.clone();
        quiet.output.clear();
        let text = render_attempt(3, "check-disk", &choose_attempt(&quiet, None).unwrap());
        assert!(
            text.contains("--- output (empty) ---\n--- error ---"),
            "{text}"
        );
    }
}
