//! Rules for the small task kinds: a `custom` task's type and payload. (`sleep` is checked with
//! the step; `noop` has no fields.)

use super::SpecError;
use super::workflow::is_name_byte;
use crate::limits::*;
use crate::text::quoted;
use crate::v1::CustomTask;

pub(super) fn check_custom(i: usize, name: &str, custom: &CustomTask) -> Result<(), SpecError> {
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
    use crate::v1::{SleepTask, step_spec::Task};

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
            "step \"only\" sleeps 24h1ms, longer than the maximum 24h",
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
