//! Rules for `exec` tasks: the command, environment and working directory must be arguments
//! `execve` takes (C strings within Linux's bounds).

use super::SpecError;
use crate::limits::*;
use crate::text::quoted;
use crate::v1::ExecTask;

/// Bytes an exec argument, environment entry or path may never hold: execve takes C strings.
fn check_c_string(
    field: &str,
    name: &str,
    what: &str,
    text: &str,
    max_bytes: usize,
) -> Result<(), SpecError> {
    if text.len() > max_bytes {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} {what} is {} bytes, more than {max_bytes}",
                text.len()
            ),
        ));
    }
    if text.contains('\0') {
        return Err(SpecError::new(
            field,
            format!("step {name} {what} contains a nul byte"),
        ));
    }
    Ok(())
}

pub(super) fn check_exec(i: usize, name: &str, exec: &ExecTask) -> Result<(), SpecError> {
    let field = format!("steps[{i}].exec.command");
    if exec.command.is_empty() {
        return Err(SpecError::new(
            field,
            format!("step {name} exec command is empty"),
        ));
    }
    if exec.command.len() > ARGV_LEN_MAX {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} exec command has {} arguments, more than {ARGV_LEN_MAX}",
                exec.command.len()
            ),
        ));
    }
    if exec.command[0].is_empty() {
        return Err(SpecError::new(
            format!("{field}[0]"),
            format!("step {name} exec program name is empty"),
        ));
    }
    for (k, arg) in exec.command.iter().enumerate() {
        check_c_string(
            &format!("{field}[{k}]"),
            name,
            &format!("exec argument {k}"),
            arg,
            ARG_BYTES_MAX,
        )?;
        super::secrets::check_secret_references(&format!("{field}[{k}]"), name, arg)?;
    }
    if exec.env.len() > ENV_VARS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].exec.env"),
            format!(
                "step {name} sets {} environment variables, more than {ENV_VARS_MAX}",
                exec.env.len()
            ),
        ));
    }
    for (key, value) in &exec.env {
        let field = format!("steps[{i}].exec.env[{}]", quoted(key));
        if key.is_empty() || key.len() > ENV_KEY_LEN_MAX || key.contains(['=', '\0']) {
            return Err(SpecError::new(
                field,
                format!(
                    "step {name} environment variable name {} must be 1..={ENV_KEY_LEN_MAX} bytes without \"=\" or nul",
                    quoted(key)
                ),
            ));
        }
        check_c_string(
            &field,
            name,
            &format!("environment variable {}", quoted(key)),
            value,
            ARG_BYTES_MAX,
        )?;
        super::secrets::check_secret_references(&field, name, value)?;
    }
    check_c_string(
        &format!("steps[{i}].exec.working_dir"),
        name,
        "working directory",
        &exec.working_dir,
        PATH_BYTES_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::step_spec::Task;
    use crate::validate::test_support::*;

    #[test]
    fn exec_rules() {
        assert_valid(&one_step(|s| s.task = exec(&["sh", "-c", "echo hi"])));
        assert_invalid(
            &one_step(|s| s.task = exec(&[])),
            "steps[0].exec.command",
            "step \"only\" exec command is empty",
        );
        assert_invalid(
            &one_step(|s| s.task = exec(&["", "x"])),
            "steps[0].exec.command[0]",
            "step \"only\" exec program name is empty",
        );
        let many = vec!["a"; ARGV_LEN_MAX + 1];
        assert_invalid(
            &one_step(|s| s.task = exec(&many)),
            "steps[0].exec.command",
            "step \"only\" exec command has 257 arguments, more than 256",
        );
        let long = "a".repeat(ARG_BYTES_MAX + 1);
        assert_invalid(
            &one_step(|s| s.task = exec(&["echo", &long])),
            "steps[0].exec.command[1]",
            "step \"only\" exec argument 1 is 32769 bytes, more than 32768",
        );
        assert_invalid(
            &one_step(|s| s.task = exec(&["echo", "a\0b"])),
            "steps[0].exec.command[1]",
            "step \"only\" exec argument 1 contains a nul byte",
        );
        let with_exec = |edit: &dyn Fn(&mut ExecTask)| {
            let mut task = ExecTask {
                command: vec!["true".to_string()],
                ..Default::default()
            };
            edit(&mut task);
            one_step(|s| s.task = Some(Task::Exec(task)))
        };
        assert_valid(&with_exec(&|e| {
            e.env.insert("PATH".to_string(), "/bin".to_string());
            e.working_dir = "/tmp".to_string();
        }));
        assert_invalid(
            &with_exec(&|e| {
                e.env = (0..=ENV_VARS_MAX)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect()
            }),
            "steps[0].exec.env",
            "step \"only\" sets 129 environment variables, more than 128",
        );
        assert_invalid(
            &with_exec(&|e| {
                e.env.insert("A=B".to_string(), String::new());
            }),
            "steps[0].exec.env[\"A=B\"]",
            "step \"only\" environment variable name \"A=B\" must be 1..=256 bytes without \"=\" or nul",
        );
        assert_invalid(
            &with_exec(&|e| {
                e.env.insert("A".to_string(), "\0".to_string());
            }),
            "steps[0].exec.env[\"A\"]",
            "step \"only\" environment variable \"A\" contains a nul byte",
        );
        assert_invalid(
            &with_exec(&|e| e.working_dir = "d".repeat(PATH_BYTES_MAX + 1)),
            "steps[0].exec.working_dir",
            "step \"only\" working directory is 4097 bytes, more than 4096",
        );
    }
}
