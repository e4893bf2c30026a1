//! The workflow a bench submits: its shape (single step, chain, fan-out) turned into a spec.

use baton_client::proto::{NoopTask, StepSpec, WorkflowSpec, step_spec};
use baton_proto::limits::{DAG_DEPTH_MAX, STEPS_PER_WORKFLOW_MAX};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// One noop step.
    Single,
    /// K noop steps, each depending on the one before.
    Chain,
    /// One root noop step, then K noop steps that depend on it and can run at once.
    Fanout,
}

/// The steps one workflow of this shape has, checked against the spec limits, so that a bad
/// `--steps` is refused before anything starts (naming the flag), not by the cluster mid-run.
pub fn steps_per_workflow(shape: Shape, steps: Option<u32>) -> Result<u32, String> {
    let k = match (shape, steps) {
        (Shape::Single, None | Some(1)) => return Ok(1),
        (Shape::Single, Some(k)) => {
            return Err(format!(
                "--steps {k} needs --shape chain or fanout (a single workflow has 1 step)"
            ));
        }
        (_, None) => 4,
        (_, Some(0)) => return Err("--steps must be at least 1".to_string()),
        (_, Some(k)) => k as usize,
    };
    let (total, limit, what) = match shape {
        Shape::Chain => (k, STEPS_PER_WORKFLOW_MAX.min(DAG_DEPTH_MAX), "a chain"),
        _ => (
            k + 1,
            STEPS_PER_WORKFLOW_MAX,
            "a fan-out (K + 1 steps with the root)",
        ),
    };
    if total > limit {
        return Err(format!(
            "--steps {k} is too many: {what} allows at most {limit} steps"
        ));
    }
    Ok(total as u32)
}

/// The spec of one bench workflow. `steps` comes from [`steps_per_workflow`].
pub fn build_spec(shape: Shape, steps: u32, name: &str) -> WorkflowSpec {
    let step = |name: String, depends_on: Vec<String>| StepSpec {
        name,
        depends_on,
        task: Some(step_spec::Task::Noop(NoopTask {})),
        ..StepSpec::default()
    };
    let steps = match shape {
        Shape::Single => vec![step("s0".to_string(), Vec::new())],
        Shape::Chain => (0..steps)
            .map(|i| {
                let after = if i == 0 {
                    Vec::new()
                } else {
                    vec![format!("s{}", i - 1)]
                };
                step(format!("s{i}"), after)
            })
            .collect(),
        Shape::Fanout => std::iter::once(step("root".to_string(), Vec::new()))
            .chain((1..steps).map(|i| step(format!("s{i}"), vec!["root".to_string()])))
            .collect(),
    };
    WorkflowSpec {
        name: name.to_string(),
        steps,
        ..WorkflowSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::validate::validate_spec;

    #[test]
    fn step_counts_follow_the_shape() {
        assert_eq!(steps_per_workflow(Shape::Single, None), Ok(1));
        assert_eq!(steps_per_workflow(Shape::Single, Some(1)), Ok(1));
        assert_eq!(steps_per_workflow(Shape::Chain, None), Ok(4));
        assert_eq!(steps_per_workflow(Shape::Chain, Some(7)), Ok(7));
        assert_eq!(steps_per_workflow(Shape::Fanout, Some(7)), Ok(8));
    }

    #[test]
    fn bad_step_counts_name_the_flag() {
        for (shape, steps) in [
            (Shape::Single, Some(3)),
            (Shape::Chain, Some(0)),
            (Shape::Chain, Some(DAG_DEPTH_MAX as u32 + 1)),
            (Shape::Fanout, Some(STEPS_PER_WORKFLOW_MAX as u32)),
        ] {
            let error = steps_per_workflow(shape, steps).unwrap_err();
            assert!(error.contains("--steps"), "{error}");
        }
    }

    #[test]
    fn specs_are_valid_and_shaped() {
        for (shape, k) in [
            (Shape::Single, None),
            (Shape::Chain, Some(5)),
            (Shape::Chain, Some(DAG_DEPTH_MAX as u32)),
            (Shape::Fanout, Some(5)),
        ] {
            let steps = steps_per_workflow(shape, k).unwrap();
            let spec = build_spec(shape, steps, "bench");
            assert_eq!(spec.steps.len(), steps as usize, "{shape:?}");
            validate_spec(&spec).unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        }
        let chain = build_spec(Shape::Chain, 3, "c");
        let deps: Vec<_> = chain.steps.iter().map(|s| s.depends_on.clone()).collect();
        assert_eq!(
            deps,
            [vec![], vec!["s0".to_string()], vec!["s1".to_string()]]
        );
        let fan = build_spec(Shape::Fanout, 4, "f");
        assert!(fan.steps[0].depends_on.is_empty());
        assert!(fan.steps[1..].iter().all(|s| s.depends_on == ["root"]));
    }
}
