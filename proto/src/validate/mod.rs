//! Checks a workflow spec against Baton's rules and [`crate::limits`] before anything is
//! committed, and the graph helpers the server uses on specs that passed.
//!
//! The server calls [`validate_spec`] on every submit (INVALID_ARGUMENT naming
//! [`SpecError::field`]), the CLI calls it before sending. It returns the first problem found, in
//! this order: encoded size, workflow fields, step count, step names, each step's fields, then
//! the dependency graph (duplicate step names; unknown, self and duplicate dependencies; edge
//! count; cycles; depth). Every check is linear in the spec's size and iterative (no recursion),
//! so a hostile spec can neither panic the validator nor overflow its stack; the size check
//! comes first so that the rest is bounded.
//!
//! Error tree: one type, [`SpecError`] `{ field, message }`; `field` is a path inside the spec
//! using the proto field names (`steps[2].depends_on[0]`, `labels["team"]`), empty for the
//! spec as a whole.
//!
//! One file per rule family: `error` (the error type), `workflow` (name, priority, labels,
//! input), `params` (declared parameters and a submit's values), `step` (a step's own fields), `task`, `exec` and `http` (per task kind), `retry`,
//! `graph` (dependencies), `request` (submit fields beyond the spec), `keys` (concurrency keys and rate limits), `secrets` (names a step's
//! templates refer to) and `effective` (the
//! values a valid step runs with once defaults fill its fields).

mod effective;
mod error;
mod exec;
mod graph;
mod http;
mod keys;
mod params;
mod request;
mod retry;
mod secrets;
mod step;
mod task;
mod workflow;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod test_support;

pub use effective::{
    backoff_delay_ms, effective_lease_ttl_ms, effective_max_attempts, effective_priority,
};
pub use error::SpecError;
pub use graph::{StepGraph, topological_order};
pub use keys::{CONCURRENCY_LIMIT_MAX, KEY_BYTES_MAX, RATE_MAX, render_key};
pub use params::resolve_params;
pub use request::validate_idempotency_key;
pub use secrets::{secret_references, valid_secret_name};
/// A name of an object other than a workflow or step (a schedule): 1..=NAME_LEN_MAX characters
/// of `[A-Za-z0-9._-]`; `what` names it in the message.
pub use workflow::check_name;

use prost::Message;

use crate::limits::*;
use crate::text::quoted;
use crate::v1::WorkflowSpec;
use step::check_step;
use workflow::{check_durations, check_input, check_labels, check_priority};

/// Checks every rule a submitted workflow must satisfy; `Ok` means the server may commit it.
pub fn validate_spec(spec: &WorkflowSpec) -> Result<(), SpecError> {
    // First, so that every later check works on a bounded input.
    let encoded_bytes = spec.encoded_len();
    if encoded_bytes > SPEC_BYTES_MAX {
        return Err(SpecError::new(
            "",
            format!("workflow spec is {encoded_bytes} bytes encoded, more than {SPEC_BYTES_MAX}"),
        ));
    }
    check_name("name", "workflow name", &spec.name)?;
    check_priority("priority", "workflow", spec.priority)?;
    check_labels(spec)?;
    check_input(spec)?;
    check_durations(spec)?;
    params::check_params(spec)?;

    if spec.steps.is_empty() {
        return Err(SpecError::new("steps", "workflow has no steps"));
    }
    if spec.steps.len() > STEPS_PER_WORKFLOW_MAX {
        return Err(SpecError::new(
            "steps",
            format!(
                "workflow has {} steps, more than {STEPS_PER_WORKFLOW_MAX}",
                spec.steps.len()
            ),
        ));
    }
    for (i, step) in spec.steps.iter().enumerate() {
        check_name(&format!("steps[{i}].name"), "step name", &step.name)?;
    }
    for (i, step) in spec.steps.iter().enumerate() {
        check_step(i, step)?;
    }
    keys::check_keys(spec)?;

    let graph = StepGraph::new(spec)?;
    let edges = graph.edge_count();
    if edges > EDGES_PER_WORKFLOW_MAX {
        return Err(SpecError::new(
            "steps",
            format!("workflow has {edges} dependencies in all, more than {EDGES_PER_WORKFLOW_MAX}"),
        ));
    }
    let depths = graph.depths();
    for &i in graph.topological_order() {
        let depth = depths.get(i).copied().unwrap_or(0);
        if depth > DAG_DEPTH_MAX {
            return Err(SpecError::new(
                format!("steps[{i}]"),
                format!(
                    "step {} ends a chain of {depth} dependent steps, more than {DAG_DEPTH_MAX}",
                    quoted(&spec.steps[i].name)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{HttpTask, StepSpec, step_spec::Task};
    use crate::validate::test_support::*;

    #[test]
    fn minimal_spec_is_valid() {
        assert_valid(&spec(vec![step("a", &[])]));
        assert_valid(&spec(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a", "b"]),
        ]));
    }

    #[test]
    fn encoded_size_is_bounded() {
        let body = "x".repeat(HTTP_BODY_BYTES_MAX);
        let steps = (0..5)
            .map(|i| StepSpec {
                task: Some(Task::Http(HttpTask {
                    body: body.clone(),
                    ..http("POST", "http://h/")
                })),
                ..step(&format!("s{i}"), &[])
            })
            .collect();
        let big = spec(steps);
        let bytes = big.encoded_len();
        assert!(bytes > SPEC_BYTES_MAX);
        assert_invalid(
            &big,
            "",
            &format!("workflow spec is {bytes} bytes encoded, more than 1048576"),
        );
    }

    #[test]
    fn step_count_rules() {
        assert_invalid(&spec(vec![]), "steps", "workflow has no steps");
        let at_max: Vec<StepSpec> = (0..STEPS_PER_WORKFLOW_MAX)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        assert_valid(&spec(at_max.clone()));
        let mut over = at_max;
        over.push(step("one-more", &[]));
        assert_invalid(
            &spec(over),
            "steps",
            "workflow has 1001 steps, more than 1000",
        );
    }

    #[test]
    fn step_name_rules() {
        assert_invalid(
            &spec(vec![step("a", &[]), step("", &[])]),
            "steps[1].name",
            "step name is empty",
        );
        assert_invalid(
            &spec(vec![step("a/b", &[])]),
            "steps[0].name",
            "step name \"a/b\" has a character outside [A-Za-z0-9._-]",
        );
        assert_invalid(
            &spec(vec![
                step("build", &[]),
                step("test", &[]),
                step("build", &[]),
            ]),
            "steps[2].name",
            "step \"build\" is defined twice, as steps[0] and steps[2]",
        );
    }
}
