//! Property tests of validation as a whole: it never panics on any spec, accepts every valid
//! DAG with its dependencies first in the order, and reports a cycle through any back edge.

use proptest::prelude::*;

use super::test_support::{exec, http, noop, spec};
use super::{
    StepGraph, backoff_delay_ms, effective_lease_ttl_ms, effective_max_attempts,
    effective_priority, topological_order, validate_spec,
};
use crate::limits::*;
use crate::v1::{
    Backoff, CustomTask, ExecTask, HttpTask, Resources, RetryPolicy, SleepTask, StepSpec,
    WorkflowSpec, step_spec::Task,
};

/// A spec of anything: random names (often clashing or invalid), dependencies on names that
/// may or may not exist, random tasks and numbers.
fn arbitrary_spec() -> impl Strategy<Value = WorkflowSpec> {
    (
        prop_oneof!["[a-z]{1,8}", ".{0,10}"],
        prop::collection::vec(arbitrary_step(), 0..30),
        any::<i32>(),
        prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
        prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
    )
        .prop_map(|(name, steps, priority, labels, input)| WorkflowSpec {
            name,
            labels,
            steps,
            priority,
            input,
            retention_ms: 0,
            timeout_ms: 0,
            params: Default::default(),
            concurrency: None,
        })
}

/// A step of anything: a name often clashing or invalid, dependencies on names that may or may
/// not exist, and random numbers.
fn arbitrary_step() -> impl Strategy<Value = StepSpec> {
    let name = prop_oneof![4 => "s[0-9]", 1 => ".{0,12}"];
    (
        name,
        prop::collection::vec("s[0-9]|x|.{0,3}", 0..5),
        -1..5i32,
        arbitrary_task(),
        arbitrary_retry(),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (
            prop::option::of(any::<i32>()),
            prop::option::of((any::<u32>(), any::<u32>())),
        ),
        prop::collection::btree_map(".{0,4}", ".{0,4}", 0..3),
    )
        .prop_map(
            |(
                name,
                depends_on,
                when,
                task,
                retry,
                (timeout_ms, lease_ttl_ms, schedule_to_start_timeout_ms),
                (priority, resources),
                constraints,
            )| StepSpec {
                name,
                depends_on,
                when,
                task,
                retry,
                timeout_ms,
                resources: resources.map(|(cpu_millis, memory_mb)| Resources {
                    cpu_millis,
                    memory_mb,
                }),
                constraints,
                priority,
                lease_ttl_ms,
                schedule_to_start_timeout_ms,
                concurrency: None,
                rate_limit: None,
            },
        )
}

/// Any task or none, each kind with random fields.
fn arbitrary_task() -> impl Strategy<Value = Option<Task>> {
    prop_oneof![
        Just(None),
        Just(noop()),
        (
            prop::collection::vec(".{0,4}", 0..4),
            prop::collection::btree_map(".{0,3}", ".{0,3}", 0..3),
            ".{0,3}"
        )
            .prop_map(|(command, env, working_dir)| Some(Task::Exec(ExecTask {
                command,
                env,
                working_dir
            }))),
        (
            ".{0,8}",
            ".{0,24}",
            prop::collection::btree_map(".{0,5}", ".{0,5}", 0..3),
            prop::collection::vec(any::<u32>(), 0..3)
        )
            .prop_map(|(method, url, headers, success_statuses)| Some(Task::Http(
                HttpTask {
                    method,
                    url,
                    headers,
                    body: String::new(),
                    success_statuses
                }
            ))),
        any::<u64>().prop_map(|duration_ms| Some(Task::Sleep(SleepTask { duration_ms }))),
        (".{0,8}", ".{0,8}")
            .prop_map(|(r#type, payload)| Some(Task::Custom(CustomTask { r#type, payload }))),
    ]
}

/// Any retry policy or none, with arbitrary numbers.
fn arbitrary_retry() -> impl Strategy<Value = Option<RetryPolicy>> {
    prop::option::of((
        any::<u32>(),
        prop::option::of((any::<u64>(), any::<f64>(), any::<u64>())),
    ))
    .prop_map(|retry| {
        retry.map(|(max_attempts, backoff)| RetryPolicy {
            max_attempts,
            backoff: backoff.map(|(initial_ms, multiplier, max_ms)| Backoff {
                initial_ms,
                multiplier,
                max_ms,
            }),
        })
    })
}

/// A valid acyclic spec: `dependencies[k]` are positions (in creation order) of earlier
/// steps; `chain` makes every step also wait on the one created before it; `placement`
/// shuffles where each step is listed, so dependencies also point forward in the list.
#[derive(Clone, Debug)]
struct Dag {
    spec: WorkflowSpec,
    /// `position[k]` = index in `spec.steps` of the k-th created step.
    position: Vec<usize>,
}

fn valid_dag(chain: bool) -> impl Strategy<Value = Dag> {
    (2..40usize)
        .prop_flat_map(move |n| {
            (
                prop::collection::vec(
                    (
                        prop::collection::vec(any::<usize>(), 0..4),
                        0..5u8,
                        -1000..=1000i32,
                        0..=TIMEOUT_MS_MAX,
                    ),
                    n,
                ),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
        .prop_map(move |(raw, placement)| {
            let n = raw.len();
            let name = |k: usize| format!("step-{k}");
            let mut steps = vec![StepSpec::default(); n];
            for (k, (picks, task_kind, priority, timeout_ms)) in raw.into_iter().enumerate() {
                let mut depends_on: Vec<String> = Vec::new();
                if k > 0 {
                    if chain {
                        depends_on.push(name(k - 1));
                    }
                    for pick in picks {
                        let dependency = name(pick % k);
                        if !depends_on.contains(&dependency) {
                            depends_on.push(dependency);
                        }
                    }
                }
                let task = match task_kind {
                    0 => exec(&["sh", "-c", "echo hi"]),
                    1 => Some(Task::Http(http("POST", "http://127.0.0.1:8080/hook"))),
                    2 => Some(Task::Sleep(SleepTask {
                        duration_ms: timeout_ms % SLEEP_MS_MAX,
                    })),
                    3 => Some(Task::Custom(CustomTask {
                        r#type: "acme/thing".to_string(),
                        payload: String::new(),
                    })),
                    _ => noop(),
                };
                steps[placement[k]] = StepSpec {
                    name: name(k),
                    when: if depends_on.is_empty() {
                        0
                    } else {
                        (k % 4) as i32
                    },
                    depends_on,
                    task,
                    timeout_ms,
                    priority: (k % 2 == 0).then_some(priority),
                    retry: Some(RetryPolicy {
                        max_attempts: (k % 5) as u32,
                        backoff: Some(Backoff {
                            initial_ms: 1000,
                            multiplier: 1.5,
                            max_ms: 60_000,
                        }),
                    }),
                    lease_ttl_ms: if k % 3 == 0 {
                        0
                    } else {
                        LEASE_TTL_MS_MIN + k as u64
                    },
                    ..Default::default()
                };
            }
            Dag {
                spec: spec(steps),
                position: placement,
            }
        })
}

proptest! {
    #[test]
    fn validator_never_panics(s in arbitrary_spec()) {
        let _ = validate_spec(&s);
        let _ = topological_order(&s);
        if let Ok(graph) = StepGraph::new(&s) {
            let _ = graph.depths();
        }
        for step in &s.steps {
            let _ = effective_priority(step, &s);
            let _ = effective_lease_ttl_ms(step);
            let _ = effective_max_attempts(step);
            let _ = backoff_delay_ms(step, 3);
        }
    }

    #[test]
    fn valid_dags_pass(dag in valid_dag(false)) {
        prop_assert_eq!(validate_spec(&dag.spec), Ok(()));
        let order = topological_order(&dag.spec).expect("acyclic");
        let mut rank = vec![usize::MAX; order.len()];
        for (at, &i) in order.iter().enumerate() {
            rank[i] = at;
        }
        let graph = StepGraph::new(&dag.spec).expect("acyclic");
        for i in 0..dag.spec.steps.len() {
            for &d in graph.dependencies(i) {
                prop_assert!(rank[d] < rank[i], "step {} runs before its dependency {}", i, d);
            }
        }
    }

    #[test]
    fn a_back_edge_is_reported_as_a_cycle(dag in valid_dag(true), ends in (any::<usize>(), any::<usize>())) {
        prop_assert_eq!(validate_spec(&dag.spec), Ok(()));
        // With the chain, every earlier step is an ancestor of every later one, so making an
        // earlier step wait on a later one always closes a cycle through that edge.
        let n = dag.position.len();
        let later = 1 + ends.0 % (n - 1);
        let earlier = ends.1 % later;
        let (from, to) = (format!("step-{later}"), format!("step-{earlier}"));
        let mut cyclic = dag.spec.clone();
        cyclic.steps[dag.position[earlier]].depends_on.push(from.clone());
        let error = validate_spec(&cyclic).expect_err("a cycle");
        let cycle = error.message.strip_prefix("dependency cycle: ").expect("a cycle message");
        let names: Vec<&str> = cycle.split(" -> ").collect();
        prop_assert!(names.len() >= 3);
        prop_assert_eq!(names.first(), names.last());
        // Each arrow is a real dependency: the right-hand step waits on the left-hand one.
        for pair in names.windows(2) {
            let waiter = cyclic.steps.iter().find(|s| s.name == pair[1]).expect("a known step");
            prop_assert!(waiter.depends_on.iter().any(|d| d == pair[0]), "{} -> {} is not an edge", pair[0], pair[1]);
        }
        prop_assert!(
            names.windows(2).any(|pair| pair[0] == from && pair[1] == to),
            "cycle {} misses the added edge {} -> {}", cycle, from, to
        );
    }
}
