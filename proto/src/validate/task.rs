//! Rules for a step's task: [`check_task`] sends each kind to its rules; `exec` and `http` have
//! files of their own, the small kinds are here (`sleep`, `custom`, `wait`; `noop` has no
//! fields).

use super::SpecError;
use super::exec::check_exec;
use super::http::check_http;
use super::workflow::is_name_byte;
use crate::limits::*;
use crate::text::{format_duration_ms, quoted};
use crate::v1::{CustomTask, SleepTask, WaitTask, step_spec::Task};

/// The task of `steps[i]`, named `name` in messages: there must be one, valid for its kind.
pub(super) fn check_task(i: usize, name: &str, task: Option<&Task>) -> Result<(), SpecError> {
    match task {
        None => Err(SpecError::new(
            format!("steps[{i}].task"),
            format!("step {name} has no task"),
        )),
        Some(Task::Exec(exec)) => check_exec(i, name, exec),
        Some(Task::Http(http)) => check_http(i, name, http),
        Some(Task::Noop(_)) => Ok(()),
        Some(Task::Sleep(sleep)) => check_sleep(i, name, sleep),
        Some(Task::Custom(custom)) => check_custom(i, name, custom),
        Some(Task::Wait(wait)) => check_wait(i, name, wait),
    }
}

/// A `wait` step: a signal name like a step's, and a timeout within a workflow's.
fn check_wait(i: usize, name: &str, wait: &WaitTask) -> Result<(), SpecError> {
    if wait.signal.is_empty()
        || wait.signal.len() > NAME_LEN_MAX
        || !wait.signal.bytes().all(is_name_byte)
    {
        return Err(SpecError::new(
            format!("steps[{i}].wait.signal"),
            format!(
                "step {name} waits for signal {}: a signal name is 1..={NAME_LEN_MAX} characters \
                 of [A-Za-z0-9._-]",
                quoted(&wait.signal)
            ),
        ));
    }
    if wait.timeout_ms > WORKFLOW_TIMEOUT_MS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].wait.timeout_ms"),
            format!(
                "step {name} waits {}, longer than the maximum {}",
                format_duration_ms(wait.timeout_ms),
                format_duration_ms(WORKFLOW_TIMEOUT_MS_MAX)
            ),
        ));
    }
    Ok(())
}

fn check_sleep(i: usize, name: &str, sleep: &SleepTask) -> Result<(), SpecError> {
    if sleep.duration_ms > SLEEP_MS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].sleep.duration_ms"),
            format!(
                "step {name} sleeps {}, longer than the maximum {}",
                format_duration_ms(sleep.duration_ms),
                format_duration_ms(SLEEP_MS_MAX)
            ),
        ));
    }
    Ok(())
}

fn check_custom(i: usize, name: &str, custom: &CustomTask) -> Result<(), SpecError> {
    let field = format!("steps[{i}].custom.type");
    if custom.r#type.is_empty()
        || custom.r#type.len() > NAME_LEN_MAX
        || !custom.r#type.bytes().all(|b| is_name_byte(b) || b == b'/')
    {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} custom task type {} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9._/-]",
                quoted(&custom.r#type)
            ),
        ));
    }
    if custom.payload.len() > CUSTOM_PAYLOAD_BYTES_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].custom.payload"),
            format!(
                "step {name} custom payload is {} bytes, more than {CUSTOM_PAYLOAD_BYTES_MAX}",
                custom.payload.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_support::*;

    #[test]
    fn task_is_required() {
        assert_invalid(
            &one_step(|s| s.task = None),
            "steps[0].task",
            "step \"only\" has no task",
        );
    }

    #[test]
    fn sleep_rules() {
        let sleeping =
            |duration_ms| one_step(|s| s.task = Some(Task::Sleep(SleepTask { duration_ms })));
        assert_valid(&sleeping(0));
        assert_valid(&sleeping(SLEEP_MS_MAX));
        assert_invalid(
            &sleeping(SLEEP_MS_MAX + 1),
            "steps[0].sleep.duration_ms",
            "step \"only\" sleeps 1d1ms, longer than the maximum 1d",
        );
    }

    #[test]
    fn custom_rules() {
        let custom = |kind: &str, payload: String| {
            one_step(|s| {
                s.task = Some(Task::Custom(CustomTask {
                    r#type: kind.to_string(),
                    payload,
                }))
            })
        };
        assert_valid(&custom(
            "acme.io/create-user",
            "{\"name\": \"ada\"}".to_string(),
        ));
        assert_invalid(
            &custom("", String::new()),
            "steps[0].custom.type",
            "step \"only\" custom task type \"\" must be 1..=128 characters of [A-Za-z0-9._/-]",
        );
        assert_invalid(
            &custom("create user", String::new()),
            "steps[0].custom.type",
            "step \"only\" custom task type \"create user\" must be 1..=128 characters of [A-Za-z0-9._/-]",
        );
        assert_invalid(
            &custom("t", "p".repeat(CUSTOM_PAYLOAD_BYTES_MAX + 1)),
            "steps[0].custom.payload",
            "step \"only\" custom payload is 262145 bytes, more than 262144",
        );
    }
}
