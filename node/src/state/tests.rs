//! Unit and property tests of `apply`: command in, response and state out.

use proptest::prelude::*;

use super::*;

fn step(name: &str, deps: &[&str]) -> pb::StepSpec {
    pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
        ..Default::default()
    }
}

fn spec(name: &str, steps: Vec<pb::StepSpec>) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        steps,
        ..Default::default()
    }
}

fn submit(spec: &pb::WorkflowSpec, key: &str) -> Command {
    Command::Submit(SubmitCommand {
        spec: spec.encode_to_vec(),
        idempotency_key: key.into(),
    })
}

/// Applies commands at consecutive indexes from 1, with the given leader times.
struct Log {
    state: ClusterState,
    index: u64,
}

impl Log {
    fn new() -> Self {
        Self {
            state: ClusterState::default(),
            index: 0,
        }
    }

    fn apply_at(&mut self, time_ms: u64, command: Command) -> Response {
        self.index += 1;
        self.state.apply(
            ApplyCtx { index: self.index },
            LogEntry { time_ms, command },
        )
    }

    fn apply(&mut self, command: Command) -> Response {
        self.apply_at(1_000 + self.index, command)
    }
}

#[test]
fn submit_creates_a_running_workflow_with_its_roots_ready() {
    let mut log = Log::new();
    let diamond = spec(
        "diamond",
        vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ],
    );
    let response = log.apply_at(5_000, submit(&diamond, ""));
    assert_eq!(
        response,
        Response::Submitted {
            workflow_id: WorkflowId(1),
            created: true
        }
    );
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(wf.state, WorkflowState::Running);
    assert_eq!(wf.created_at_ms, 5_000);
    assert_eq!(wf.revision, 1);
    let states: Vec<_> = wf.steps.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StepState::Ready,
            StepState::Waiting,
            StepState::Waiting,
            StepState::Waiting
        ]
    );
    assert_eq!(wf.steps[3].deps, [1, 2]);
    assert_eq!(wf.steps[0].ready_at_ms, 5_000);
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_id_and_creates_nothing() {
    let mut log = Log::new();
    let s = spec("w", vec![step("a", &[])]);
    assert_eq!(
        log.apply(submit(&s, "key-1")),
        Response::Submitted {
            workflow_id: WorkflowId(1),
            created: true
        }
    );
    log.apply(submit(&s, ""));
    assert_eq!(
        log.apply(submit(&spec("other", vec![step("x", &[])]), "key-1")),
        Response::Submitted {
            workflow_id: WorkflowId(1),
            created: false
        }
    );
    assert_eq!(log.state.workflow_count(), 2);
    assert_eq!(log.state.workflow(WorkflowId(1)).unwrap().spec.name, "w");
}

#[test]
fn specs_that_cannot_run_are_rejected_without_a_trace() {
    let mut log = Log::new();
    let before = log.state.clone();
    let cases = [
        (spec("empty", vec![]), "workflow has no steps"),
        (
            spec("dup", vec![step("a", &[]), step("a", &[])]),
            "duplicate step name \"a\"",
        ),
        (
            spec("unknown", vec![step("a", &["zz"])]),
            "step \"a\" depends on unknown step \"zz\"",
        ),
        (
            spec("cycle", vec![step("a", &["b"]), step("b", &["a"])]),
            "dependency cycle",
        ),
    ];
    for (s, reason) in cases {
        assert_eq!(
            log.apply(submit(&s, "k")),
            Response::Rejected {
                reason: reason.into()
            }
        );
    }
    let garbage = Command::Submit(SubmitCommand {
        spec: vec![0xff, 0xff, 0xff],
        idempotency_key: String::new(),
    });
    assert!(matches!(log.apply(garbage), Response::Rejected { .. }));
    // Only the clock moved; no id was consumed and the key stays free.
    let mut expected = before;
    expected.now_ms = log.state.now_ms;
    assert_eq!(log.state, expected);
}

#[test]
fn cancel_finishes_every_open_step_once() {
    let mut log = Log::new();
    log.apply(submit(
        &spec("w", vec![step("a", &[]), step("b", &["a"])]),
        "",
    ));
    let response = log.apply_at(
        9_000,
        Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(1),
            reason: "operator said so".into(),
        }),
    );
    assert_eq!(
        response,
        Response::Cancelled {
            state: WorkflowState::Cancelled
        }
    );
    let wf = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(wf.reason, "operator said so");
    assert_eq!(wf.finished_at_ms, 9_000);
    assert!(wf.steps.iter().all(|s| s.state == StepState::Cancelled));

    // A second cancel changes nothing and reports the final state.
    let again = log.apply(Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(1),
        reason: String::new(),
    }));
    assert_eq!(
        again,
        Response::Cancelled {
            state: WorkflowState::Cancelled
        }
    );
    assert_eq!(**log.state.workflow(WorkflowId(1)).unwrap(), *wf);

    assert_eq!(
        log.apply(Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(99),
            reason: String::new(),
        })),
        Response::NotFound {
            workflow_id: WorkflowId(99)
        }
    );
}

#[test]
fn state_time_never_goes_backwards() {
    let mut log = Log::new();
    log.apply_at(
        10_000,
        Command::InitCluster {
            cluster_id: "c".into(),
        },
    );
    // A new leader with a slower clock.
    log.apply_at(4_000, submit(&spec("w", vec![step("a", &[])]), ""));
    assert_eq!(log.state.now_ms(), 10_000);
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().created_at_ms,
        10_000
    );
}

#[test]
fn the_cluster_id_is_set_once() {
    let mut log = Log::new();
    log.apply(Command::InitCluster {
        cluster_id: "first".into(),
    });
    log.apply(Command::InitCluster {
        cluster_id: "second".into(),
    });
    assert_eq!(log.state.cluster_id(), "first");
}

#[test]
fn list_pages_newest_first_with_filters() {
    let mut log = Log::new();
    for i in 0..25 {
        let mut s = spec(
            if i % 2 == 0 { "even" } else { "odd" },
            vec![step("a", &[])],
        );
        s.labels
            .insert("team".into(), if i < 10 { "it" } else { "ops" }.into());
        log.apply(submit(&s, ""));
    }
    log.apply(Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(25),
        reason: String::new(),
    }));

    let mut query = ListQuery {
        limit: 10,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let (page, next) = log.state.list(&query);
        seen.extend(page.iter().map(|w| w.id.0));
        match next {
            Some(before) => query.before = Some(before),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());

    let (page, next) = log.state.list(&ListQuery {
        name_prefix: "ev".into(),
        labels: [("team".to_owned(), "it".to_owned())].into(),
        limit: 100,
        ..Default::default()
    });
    assert_eq!(
        page.iter().map(|w| w.id.0).collect::<Vec<_>>(),
        [9, 7, 5, 3, 1]
    );
    assert_eq!(next, None);

    let (page, _) = log.state.list(&ListQuery {
        states: vec![WorkflowState::Cancelled],
        limit: 100,
        ..Default::default()
    });
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, WorkflowId(25));

    // A page that ends exactly at the last match says there is no more.
    let (page, next) = log.state.list(&ListQuery {
        limit: 25,
        ..Default::default()
    });
    assert_eq!((page.len(), next), (25, None));
}

#[test]
fn encoding_round_trips_and_the_hash_follows_the_state() {
    let mut log = Log::new();
    log.apply(Command::InitCluster {
        cluster_id: "c".into(),
    });
    log.apply(submit(
        &spec("w", vec![step("a", &[]), step("b", &["a"])]),
        "k",
    ));
    let decoded = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(decoded, log.state);
    assert_eq!(decoded.state_hash(), log.state.state_hash());

    let before = log.state.state_hash();
    log.apply(Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(1),
        reason: String::new(),
    }));
    assert_ne!(log.state.state_hash(), before);
}

/// A random command, drawn so that many of them interact (few names, few keys, small ids).
fn arb_command() -> impl Strategy<Value = (u64, Command)> {
    let names = prop::sample::select(vec!["a", "b", "c", "d"]);
    let arb_step = (names.clone(), prop::collection::vec(names, 0..3))
        .prop_map(|(name, deps)| step(name, &deps));
    let arb_submit = (
        prop::collection::vec(arb_step, 0..5),
        prop::sample::select(vec!["", "", "k1", "k2", "k3"]),
    )
        .prop_map(|(steps, key)| submit(&spec("w", steps), key));
    let arb_cancel = (0u64..6).prop_map(|id| {
        Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(id),
            reason: String::new(),
        })
    });
    let arb_init = "[a-c]".prop_map(|cluster_id| Command::InitCluster { cluster_id });
    let command = prop_oneof![4 => arb_submit, 2 => arb_cancel, 1 => arb_init];
    (0u64..100_000, command)
}

proptest! {
    /// Invariants hold after every command (apply checks them in debug builds), replicas that
    /// apply the same log agree byte for byte, and a snapshot taken anywhere restores the state.
    #[test]
    fn replicas_applying_one_log_agree(commands in prop::collection::vec(arb_command(), 0..40)) {
        let mut a = Log::new();
        let mut b = Log::new();
        for (i, (time_ms, command)) in commands.iter().enumerate() {
            let ra = a.apply_at(*time_ms, command.clone());
            let rb = b.apply_at(*time_ms, command.clone());
            prop_assert_eq!(ra, rb);
            if i == commands.len() / 2 {
                // b restarts from a snapshot of itself.
                b.state = ClusterState::decode(&b.state.encode()).unwrap();
            }
        }
        a.state.check_invariants();
        prop_assert_eq!(a.state.state_hash(), b.state.state_hash());
        prop_assert_eq!(&a.state, &b.state);
        // Every key maps to exactly one workflow, and no two workflows share a key.
        let mut keys = std::collections::BTreeSet::new();
        for (_, wf) in &a.state.workflows {
            if !wf.idempotency_key.is_empty() {
                prop_assert!(keys.insert(wf.idempotency_key.clone()));
            }
        }
    }
}
