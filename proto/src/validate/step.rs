//! Rules for one step: [`check_step`] runs them all; the step's own fields are checked here
//! (dependency count, run condition, timeouts, lease TTL, priority, resources, constraints),
//! its task and retry policy in files of their own.

use super::SpecError;
use super::retry::check_retry;
use super::task::check_task;
use super::workflow::{check_label, check_priority};
use crate::limits::*;
use crate::text::{format_duration_ms, quoted};
use crate::v1::{Resources, RunCondition, StepSpec};

/// Checks the fields of `steps[i]` but its name (checked earlier, with all step names) and
/// returns the first problem: dependencies and run condition, task, retry, timeouts and lease
/// TTL, priority, resources, constraints.
pub(super) fn check_step(i: usize, step: &StepSpec) -> Result<(), SpecError> {
    let name = quoted(&step.name);
    check_dependencies(i, &name, step)?;
    check_task(i, &name, step.task.as_ref())?;
    if let Some(retry) = &step.retry {
        check_retry(i, &name, retry)?;
    }
    check_times(i, &name, step)?;
    if let Some(priority) = step.priority {
        check_priority(
            &format!("steps[{i}].priority"),
            &format!("step {name}"),
            priority,
        )?;
    }
    if let Some(resources) = &step.resources {
        check_resources(i, &name, resources)?;
    }
    check_constraints(i, &name, step)
}

/// How many steps `steps[i]` waits on, and a run condition that can hold with them. (Which
/// steps they are is the graph's business.)
fn check_dependencies(i: usize, name: &str, step: &StepSpec) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].{field}");
    if step.depends_on.len() > DEPENDENCIES_PER_STEP_MAX {
        return Err(SpecError::new(
            at("depends_on"),
            format!(
                "step {name} has {} dependencies, more than {DEPENDENCIES_PER_STEP_MAX}",
                step.depends_on.len()
            ),
        ));
    }
    match RunCondition::try_from(step.when) {
        Ok(RunCondition::Failure) if step.depends_on.is_empty() => {
            // "at least one dependency failed" can never hold: the step would always be skipped.
            Err(SpecError::new(
                at("when"),
                format!("step {name} runs on failure but has no dependencies"),
            ))
        }
        Ok(_) => Ok(()),
        Err(_) => Err(SpecError::new(
            at("when"),
            format!("step {name} has unknown run condition {}", step.when),
        )),
    }
}

/// The timeout, the schedule-to-start timeout and the lease TTL of `steps[i]`.
fn check_times(i: usize, name: &str, step: &StepSpec) -> Result<(), SpecError> {
    let at = |field: &str| format!("steps[{i}].{field}");
    check_duration_max(
        &at("timeout_ms"),
        name,
        "timeout",
        step.timeout_ms,
        TIMEOUT_MS_MAX,
    )?;
    check_duration_max(
        &at("schedule_to_start_timeout_ms"),
        name,
        "schedule-to-start timeout",
        step.schedule_to_start_timeout_ms,
        TIMEOUT_MS_MAX,
    )?;
    if step.lease_ttl_ms != 0 {
        let ttl = format_duration_ms(step.lease_ttl_ms);
        if step.lease_ttl_ms < LEASE_TTL_MS_MIN {
            return Err(SpecError::new(
                at("lease_ttl_ms"),
                format!(
                    "step {name} lease ttl {ttl} is shorter than the minimum {}",
                    format_duration_ms(LEASE_TTL_MS_MIN)
                ),
            ));
        }
        check_duration_max(
            &at("lease_ttl_ms"),
            name,
            "lease ttl",
            step.lease_ttl_ms,
            LEASE_TTL_MS_MAX,
        )?;
    }
    Ok(())
}

/// The constraints of `steps[i]`: few, each with the rules of a label.
fn check_constraints(i: usize, name: &str, step: &StepSpec) -> Result<(), SpecError> {
    if step.constraints.len() > CONSTRAINTS_PER_STEP_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].constraints"),
            format!(
                "step {name} has {} constraints, more than {CONSTRAINTS_PER_STEP_MAX}",
                step.constraints.len()
            ),
        ));
    }
    for (key, value) in &step.constraints {
        check_label(
            &format!("steps[{i}].constraints[{}]", quoted(key)),
            "constraint",
            key,
            value,
        )?;
    }
    Ok(())
}

pub(super) fn check_duration_max(
    field: &str,
    name: &str,
    what: &str,
    ms: u64,
    max_ms: u64,
) -> Result<(), SpecError> {
    if ms > max_ms {
        return Err(SpecError::new(
            field,
            format!(
                "step {name} {what} {} is longer than the maximum {}",
                format_duration_ms(ms),
                format_duration_ms(max_ms)
            ),
        ));
    }
    Ok(())
}

fn check_resources(i: usize, name: &str, resources: &Resources) -> Result<(), SpecError> {
    if resources.cpu_millis > CPU_MILLIS_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].resources.cpu_millis"),
            format!(
                "step {name} asks for {} cpu millis, more than {CPU_MILLIS_MAX}",
                resources.cpu_millis
            ),
        ));
    }
    if resources.memory_mb > MEMORY_MB_MAX {
        return Err(SpecError::new(
            format!("steps[{i}].resources.memory_mb"),
            format!(
                "step {name} asks for {} mb of memory, more than {MEMORY_MB_MAX}",
                resources.memory_mb
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
    fn run_condition_rules() {
        let mut s = spec(vec![step("a", &[]), step("b", &["a"])]);
        s.steps[1].when = RunCondition::Failure as i32;
        assert_valid(&s);
        s.steps[0].when = RunCondition::Always as i32;
        assert_valid(&s);
        s.steps[0].when = RunCondition::Failure as i32;
        assert_invalid(
            &s,
            "steps[0].when",
            "step \"a\" runs on failure but has no dependencies",
        );
        s.steps[0].when = 9;
        assert_invalid(
            &s,
            "steps[0].when",
            "step \"a\" has unknown run condition 9",
        );
    }

    #[test]
    fn time_rules() {
        assert_valid(&one_step(|s| {
            s.timeout_ms = TIMEOUT_MS_MAX;
            s.schedule_to_start_timeout_ms = TIMEOUT_MS_MAX;
            s.lease_ttl_ms = LEASE_TTL_MS_MIN;
        }));
        assert_invalid(
            &one_step(|s| s.timeout_ms = TIMEOUT_MS_MAX + 1),
            "steps[0].timeout_ms",
            "step \"only\" timeout 7d1ms is longer than the maximum 7d",
        );
        assert_invalid(
            &one_step(|s| s.schedule_to_start_timeout_ms = u64::MAX),
            "steps[0].schedule_to_start_timeout_ms",
            "step \"only\" schedule-to-start timeout 213503982334d14h25m51s615ms is longer than the maximum 7d",
        );
        assert_invalid(
            &one_step(|s| s.lease_ttl_ms = 500),
            "steps[0].lease_ttl_ms",
            "step \"only\" lease ttl 500ms is shorter than the minimum 1s",
        );
        assert_invalid(
            &one_step(|s| s.lease_ttl_ms = LEASE_TTL_MS_MAX + 1000),
            "steps[0].lease_ttl_ms",
            "step \"only\" lease ttl 10m1s is longer than the maximum 10m",
        );
    }

    #[test]
    fn step_priority_range() {
        assert_valid(&one_step(|s| s.priority = Some(-1000)));
        assert_invalid(
            &one_step(|s| s.priority = Some(-1001)),
            "steps[0].priority",
            "step \"only\" priority -1001 is outside -1000..=1000",
        );
    }

    #[test]
    fn resource_rules() {
        let asking = |cpu_millis, memory_mb| {
            one_step(|s| {
                s.resources = Some(Resources {
                    cpu_millis,
                    memory_mb,
                })
            })
        };
        assert_valid(&asking(CPU_MILLIS_MAX, MEMORY_MB_MAX));
        assert_invalid(
            &asking(CPU_MILLIS_MAX + 1, 0),
            "steps[0].resources.cpu_millis",
            "step \"only\" asks for 1024001 cpu millis, more than 1024000",
        );
        assert_invalid(
            &asking(0, MEMORY_MB_MAX + 1),
            "steps[0].resources.memory_mb",
            "step \"only\" asks for 16777217 mb of memory, more than 16777216",
        );
    }

    #[test]
    fn constraint_rules() {
        assert_valid(&one_step(|s| {
            s.constraints.insert("zone".to_string(), "eu".to_string());
        }));
        assert_invalid(
            &one_step(|s| {
                s.constraints = (0..=CONSTRAINTS_PER_STEP_MAX)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect()
            }),
            "steps[0].constraints",
            "step \"only\" has 17 constraints, more than 16",
        );
        assert_invalid(
            &one_step(|s| {
                s.constraints.insert("zone!".to_string(), "eu".to_string());
            }),
            "steps[0].constraints[\"zone!\"]",
            "constraint key \"zone!\" has a character outside [A-Za-z0-9._/-]",
        );
    }
}
