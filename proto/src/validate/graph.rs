//! The dependency graph: [`StepGraph`] resolves `depends_on` to step indices and sorts the
//! steps, reporting duplicate names, unknown, self and duplicate dependencies, and cycles.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::SpecError;
use crate::text::quoted;
use crate::v1::{StepSpec, WorkflowSpec};

/// The steps of a spec resolved to indices: who depends on whom, and an order to visit them in.
/// Built only from a spec with unique names, known dependencies and no cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepGraph {
    /// `dependencies[i][j]` is the index of `steps[i].depends_on[j]`.
    dependencies: Vec<Vec<usize>>,
    /// Steps that depend on step `i`, in increasing index order.
    dependents: Vec<Vec<usize>>,
    /// Every step after all its dependencies; among steps ready at once, spec order.
    order: Vec<usize>,
}

impl StepGraph {
    /// Resolves names and sorts the steps; fails on a duplicate step name, an unknown, self or
    /// duplicate dependency, or a cycle (reported as `a -> b -> a`, `b` depending on `a`).
    /// It checks no limit: [`validate_spec`](super::validate_spec) does that.
    pub fn new(spec: &WorkflowSpec) -> Result<StepGraph, SpecError> {
        let index_of = index_by_name(&spec.steps)?;
        let (dependencies, dependents) = resolve_dependencies(&spec.steps, &index_of)?;
        let (order, waiting_on) = kahn_order(&dependencies, &dependents);
        if order.len() < spec.steps.len() {
            return Err(cycle_error(spec, &dependencies, &waiting_on));
        }
        Ok(StepGraph {
            dependencies,
            dependents,
            order,
        })
    }

    /// Indices of the steps `step` depends on, in `depends_on` order; empty for a bad index.
    pub fn dependencies(&self, step: usize) -> &[usize] {
        self.dependencies.get(step).map_or(&[], Vec::as_slice)
    }

    /// Indices of the steps that depend on `step`, increasing; empty for a bad index.
    pub fn dependents(&self, step: usize) -> &[usize] {
        self.dependents.get(step).map_or(&[], Vec::as_slice)
    }

    /// Every step index, each after all its dependencies; ties in spec order.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    /// Dependency edges in all.
    pub fn edge_count(&self) -> usize {
        self.dependencies.iter().map(Vec::len).sum()
    }

    /// For each step, the number of steps on the longest chain ending at it (itself included).
    pub fn depths(&self) -> Vec<usize> {
        let mut depths = vec![1; self.order.len()];
        for &i in &self.order {
            let deepest = self.dependencies[i]
                .iter()
                .map(|&d| depths[d])
                .max()
                .unwrap_or(0);
            depths[i] = deepest + 1;
        }
        depths
    }
}

/// Each step's index by its name; fails on a name defined twice.
fn index_by_name(steps: &[StepSpec]) -> Result<HashMap<&str, usize>, SpecError> {
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        if let Some(&first) = index_of.get(step.name.as_str()) {
            return Err(SpecError::new(
                format!("steps[{i}].name"),
                format!(
                    "step {} is defined twice, as steps[{first}] and steps[{i}]",
                    quoted(&step.name)
                ),
            ));
        }
        index_of.insert(&step.name, i);
    }
    Ok(index_of)
}

/// For each step, a list of step indices.
type Adjacency = Vec<Vec<usize>>;

/// Each step's dependencies and dependents as indices (see [`StepGraph`]); fails on an
/// unknown, self or duplicate dependency.
fn resolve_dependencies(
    steps: &[StepSpec],
    index_of: &HashMap<&str, usize>,
) -> Result<(Adjacency, Adjacency), SpecError> {
    let mut dependencies = Vec::with_capacity(steps.len());
    let mut dependents = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        let mut resolved = Vec::with_capacity(step.depends_on.len());
        for (j, dependency) in step.depends_on.iter().enumerate() {
            let field = || format!("steps[{i}].depends_on[{j}]");
            let Some(&d) = index_of.get(dependency.as_str()) else {
                return Err(SpecError::new(
                    field(),
                    format!(
                        "step {} depends on unknown step {}",
                        quoted(&step.name),
                        quoted(dependency)
                    ),
                ));
            };
            if d == i {
                return Err(SpecError::new(
                    field(),
                    format!("step {} depends on itself", quoted(&step.name)),
                ));
            }
            // Dependency lists are short (DEPENDENCIES_PER_STEP_MAX), and `dependents[d]`
            // ends with `i` exactly when `i` already listed `d`: a constant-time check.
            if dependents[d].last() == Some(&i) {
                return Err(SpecError::new(
                    field(),
                    format!(
                        "step {} depends on {} twice",
                        quoted(&step.name),
                        quoted(dependency)
                    ),
                ));
            }
            resolved.push(d);
            dependents[d].push(i);
        }
        dependencies.push(resolved);
    }
    Ok((dependencies, dependents))
}

/// Kahn's algorithm: the steps in run order, and for each step how many of its dependencies
/// were never sorted. The order misses some steps exactly when there is a cycle (those steps
/// still wait on some); the heap keeps spec order among ready steps, so the order is stable.
fn kahn_order(dependencies: &[Vec<usize>], dependents: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    let mut waiting_on: Vec<usize> = dependencies.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..dependencies.len())
        .filter(|&i| waiting_on[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(dependencies.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &dependent in &dependents[i] {
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                ready.push(Reverse(dependent));
            }
        }
    }
    (order, waiting_on)
}

/// The steps of `spec` in an order where each comes after all its dependencies (ties in spec
/// order), or the first graph error [`StepGraph::new`] finds.
pub fn topological_order(spec: &WorkflowSpec) -> Result<Vec<usize>, SpecError> {
    StepGraph::new(spec).map(|graph| graph.order)
}

/// Finds one cycle among the steps Kahn's algorithm could not sort and reports it in run order,
/// starting at its step listed first in the spec.
fn cycle_error(
    spec: &WorkflowSpec,
    dependencies: &[Vec<usize>],
    waiting_on: &[usize],
) -> SpecError {
    let unsorted = |i: usize| waiting_on.get(i).is_some_and(|&w| w > 0);
    // Every unsorted step has an unsorted dependency, so walking dependencies from any of them
    // must come back to a step already on the walk: that closes a cycle. Each step is entered
    // at most once, so the walk is linear.
    let mut position_on_walk: Vec<Option<usize>> = vec![None; dependencies.len()];
    let mut walk: Vec<usize> = Vec::new();
    let mut current = (0..dependencies.len()).find(|&i| unsorted(i));
    while let Some(step) = current {
        if let Some(start) = position_on_walk[step] {
            // `walk[start..]` follows dependencies; reversed it is the order the steps would run.
            let mut cycle: Vec<usize> = walk[start..].iter().rev().copied().collect();
            let first_at = cycle
                .iter()
                .enumerate()
                .min_by_key(|&(_, &s)| s)
                .map_or(0, |(at, _)| at);
            cycle.rotate_left(first_at);
            let (Some(&first), Some(&last)) = (cycle.first(), cycle.last()) else {
                break;
            };
            let mut names: Vec<&str> = cycle.iter().map(|&s| spec.steps[s].name.as_str()).collect();
            names.push(&spec.steps[first].name);
            let closing = dependencies[first]
                .iter()
                .position(|&d| d == last)
                .unwrap_or(0);
            return SpecError::new(
                format!("steps[{first}].depends_on[{closing}]"),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
        position_on_walk[step] = Some(walk.len());
        walk.push(step);
        current = dependencies[step].iter().copied().find(|&d| unsorted(d));
    }
    // Unreachable when Kahn's algorithm left steps unsorted; kept as an error, not a panic.
    SpecError::new("steps", "dependency cycle")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::*;
    use crate::validate::test_support::*;
    use crate::validate::validate_spec;

    #[test]
    fn dependency_rules() {
        assert_invalid(
            &spec(vec![
                step("a", &[]),
                step("b", &[]),
                step("deploy", &["build"]),
            ]),
            "steps[2].depends_on[0]",
            "step \"deploy\" depends on unknown step \"build\"",
        );
        assert_invalid(
            &spec(vec![step("a", &[]), step("b", &["a", "b"])]),
            "steps[1].depends_on[1]",
            "step \"b\" depends on itself",
        );
        assert_invalid(
            &spec(vec![
                step("a", &[]),
                step("c", &[]),
                step("b", &["a", "c", "a"]),
            ]),
            "steps[2].depends_on[2]",
            "step \"b\" depends on \"a\" twice",
        );
        let mut steps: Vec<StepSpec> = (0..=DEPENDENCIES_PER_STEP_MAX)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        let mut join = step("join", &[]);
        join.depends_on = names.clone();
        steps.push(join);
        assert_invalid(
            &spec(steps.clone()),
            "steps[257].depends_on",
            "step \"join\" has 257 dependencies, more than 256",
        );
        steps.last_mut().expect("join").depends_on.pop();
        assert_valid(&spec(steps));
    }

    #[test]
    fn edge_count_is_bounded() {
        // Each step waits on the 11 before it: 10,934 edges in all, each step within its bound.
        let steps: Vec<StepSpec> = (0..STEPS_PER_WORKFLOW_MAX)
            .map(|i| StepSpec {
                depends_on: (i.saturating_sub(11)..i).map(|d| format!("s{d}")).collect(),
                ..step(&format!("s{i}"), &[])
            })
            .collect();
        assert_invalid(
            &spec(steps),
            "steps",
            "workflow has 10934 dependencies in all, more than 10000",
        );
    }

    #[test]
    fn cycle_is_reported_in_run_order() {
        // build waits on deploy, test on build, deploy on test.
        let s = spec(vec![
            step("checkout", &[]),
            step("build", &["checkout", "deploy"]),
            step("test", &["build"]),
            step("deploy", &["test"]),
        ]);
        assert_invalid(
            &s,
            "steps[1].depends_on[1]",
            "dependency cycle: build -> test -> deploy -> build",
        );
        // A step downstream of the cycle, listed first, does not confuse the report.
        let s = spec(vec![
            step("report", &["b"]),
            step("a", &["b"]),
            step("b", &["a"]),
        ]);
        assert_invalid(
            &s,
            "steps[1].depends_on[0]",
            "dependency cycle: a -> b -> a",
        );
    }

    #[test]
    fn depth_is_bounded() {
        let chain = |n: usize| {
            spec(
                (0..n)
                    .map(|i| {
                        let previous = format!("s{}", i.wrapping_sub(1));
                        let depends_on: &[&str] = if i == 0 { &[] } else { &[&previous] };
                        step(&format!("s{i}"), depends_on)
                    })
                    .collect(),
            )
        };
        assert_valid(&chain(DAG_DEPTH_MAX));
        assert_invalid(
            &chain(DAG_DEPTH_MAX + 1),
            "steps[256]",
            "step \"s256\" ends a chain of 257 dependent steps, more than 256",
        );
        // Long chains and long cycles are handled without recursion.
        assert_invalid(
            &chain(STEPS_PER_WORKFLOW_MAX),
            "steps[256]",
            "step \"s256\" ends a chain of 257 dependent steps, more than 256",
        );
        let mut cycle = chain(STEPS_PER_WORKFLOW_MAX);
        cycle.steps[0]
            .depends_on
            .push(format!("s{}", STEPS_PER_WORKFLOW_MAX - 1));
        let error = validate_spec(&cycle).expect_err("a cycle");
        assert_eq!(error.field, "steps[0].depends_on[0]");
        assert!(
            error
                .message
                .starts_with("dependency cycle: s0 -> s1 -> s2 -> "),
            "{error}"
        );
        assert!(error.message.ends_with(" -> s998 -> s999 -> s0"), "{error}");
    }

    #[test]
    fn graph_helpers() {
        let s = spec(vec![
            step("deploy", &["test", "build"]),
            step("test", &["build"]),
            step("build", &[]),
            step("docs", &[]),
        ]);
        let graph = StepGraph::new(&s).expect("acyclic");
        assert_eq!(graph.topological_order(), [2, 1, 0, 3]);
        assert_eq!(topological_order(&s), Ok(vec![2, 1, 0, 3]));
        assert_eq!(graph.dependencies(0), [1, 2]);
        assert_eq!(graph.dependents(2), [0, 1]);
        assert_eq!(graph.dependents(99), [] as [usize; 0]);
        assert_eq!(graph.edge_count(), 3);
        assert_eq!(graph.depths(), [3, 2, 1, 1]);
    }
}
