//! Small specs and assertions shared by the validate tests.

use super::validate_spec;
use crate::v1::{ExecTask, HttpTask, NoopTask, StepSpec, WorkflowSpec, step_spec::Task};

pub(super) fn noop() -> Option<Task> {
    Some(Task::Noop(NoopTask {}))
}

pub(super) fn step(name: &str, depends_on: &[&str]) -> StepSpec {
    StepSpec {
        name: name.to_string(),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        task: noop(),
        ..Default::default()
    }
}

pub(super) fn spec(steps: Vec<StepSpec>) -> WorkflowSpec {
    WorkflowSpec {
        name: "wf".to_string(),
        steps,
        ..Default::default()
    }
}

/// A valid one-step spec whose step `edit` changes.
pub(super) fn one_step(edit: impl FnOnce(&mut StepSpec)) -> WorkflowSpec {
    let mut only = step("only", &[]);
    edit(&mut only);
    spec(vec![only])
}

pub(super) fn exec(command: &[&str]) -> Option<Task> {
    Some(Task::Exec(ExecTask {
        command: command.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }))
}

pub(super) fn http(method: &str, url: &str) -> HttpTask {
    HttpTask {
        method: method.to_string(),
        url: url.to_string(),
        ..Default::default()
    }
}

#[track_caller]
pub(super) fn assert_invalid(spec: &WorkflowSpec, field: &str, message: &str) {
    match validate_spec(spec) {
        Ok(()) => panic!("expected {field}: {message}, got ok"),
        Err(error) => {
            assert_eq!(
                (error.field.as_str(), error.message.as_str()),
                (field, message)
            );
        }
    }
}

#[track_caller]
pub(super) fn assert_valid(spec: &WorkflowSpec) {
    if let Err(error) = validate_spec(spec) {
        panic!("expected ok, got {error}");
    }
}
