//! Unit and property tests of `apply`: command in, response and state out.

use proptest::prelude::*;
use prost::Message;

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
        actor: String::new(),
        namespace: Default::default(),
        spec: spec.encode_to_vec(),
        idempotency_key: key.into(),
        params: Default::default(),
        template: None,
    })
}

/// Applies commands at consecutive indexes from 1, with the given leader times, keeps every
/// event, and checks each entry's events against the states before and after it
/// ([`check_events`]), so every test here checks the events its commands yield.
struct Log {
    state: ClusterState,
    index: u64,
    events: Vec<pb::WorkflowEvent>,
}

impl Log {
    fn new() -> Self {
        Self::at(ClusterState::default(), 0)
    }

    fn at(state: ClusterState, index: u64) -> Self {
        Self {
            state,
            index,
            events: Vec::new(),
        }
    }

    fn apply_at(&mut self, time_ms: u64, command: Command) -> Response {
        self.index += 1;
        let before = self.state.clone();
        let applied = self.state.apply(
            ApplyCtx { index: self.index },
            LogEntry { time_ms, command },
        );
        check_events(&before, &self.state, self.index, &applied.events);
        self.events.extend(applied.events);
        applied.response
    }

    fn apply(&mut self, command: Command) -> Response {
        self.apply_at(1_000 + self.index, command)
    }

    /// The kinds of workflow `id`'s events so far, in order, each with its step.
    fn kinds(&self, id: u64) -> Vec<(pb::EventKind, String)> {
        self.events
            .iter()
            .filter(|e| e.workflow_id == id)
            .map(|e| (e.kind(), e.step.clone()))
            .collect()
    }
}

/// What the events of the entry at `index` must say, given the states before and after it:
/// each is stamped with the entry's index and state time and names a workflow that exists; a
/// new workflow has its WORKFLOW_SUBMITTED, a workflow that ended its one WORKFLOW_FINISHED with
/// its final state, a step that started an attempt its STEP_ASSIGNED with that attempt, a step
/// that ended its STEP_FINISHED or STEP_SKIPPED with its final state.
fn check_events(
    before: &ClusterState,
    after: &ClusterState,
    index: u64,
    events: &[pb::WorkflowEvent],
) {
    use pb::EventKind as K;
    for e in events {
        assert_eq!(e.index, index, "{e:?}");
        assert_eq!(e.time_ms, after.now_ms, "{e:?}");
        let id = WorkflowId(e.workflow_id);
        if e.kind() == K::WorkflowPurged {
            // The end of a workflow's life: it was there, finished, and is gone.
            assert!(before.workflow(id).is_some_and(|w| w.state.is_terminal()));
            assert!(after.workflow(id).is_none() && after.purge_record(id).is_some());
        } else {
            let workflow = after.workflow(id);
            assert!(workflow.is_some(), "{e:?}");
            // Published with its namespace, unless that is `default`.
            let namespace = workflow.map(|w| &*w.namespace).unwrap_or_default();
            assert_eq!(
                namespaces::or_default(&e.namespace),
                namespace,
                "{e:?} of a workflow in {namespace}"
            );
            // Every event is in its workflow's history, as published.
            assert!(
                after.history(id).unwrap().contains(e),
                "{e:?} missing from the history"
            );
        }
    }
    for (id, _) in before.workflows.iter() {
        if after.workflow(*id).is_none() {
            assert_eq!(
                has_purged(events, *id),
                1,
                "workflow {id} left without its WORKFLOW_PURGED"
            );
        }
    }
    let has = |id: WorkflowId, kind: K, check: &dyn Fn(&pb::WorkflowEvent) -> bool| {
        events
            .iter()
            .filter(|e| e.workflow_id == id.0 && e.kind() == kind && check(e))
            .count()
    };
    for workflow in after.workflows.values().filter(|w| w.revision == index) {
        let id = workflow.id;
        let old = before.workflow(id);
        if old.is_none() {
            assert_eq!(
                has(id, K::WorkflowSubmitted, &|_| true),
                1,
                "workflow {id}: {events:?}"
            );
        }
        // A retry runs a finished workflow again; if every step it reruns is skipped at once, it
        // ends again within the same entry.
        let retried = has(id, K::WorkflowRetried, &|_| true) > 0;
        let ended =
            workflow.state.is_terminal() && (retried || old.is_none_or(|o| !o.state.is_terminal()));
        let finished = has(id, K::WorkflowFinished, &|e| {
            e.workflow_state == workflow.state.to_proto() as i32
        });
        assert_eq!(
            finished,
            usize::from(ended),
            "workflow {id} finished: {events:?}"
        );
        for (i, run) in workflow.steps.iter().enumerate() {
            let name = &workflow.spec.steps[i].name;
            let was = old.map(|o| &o.steps[i]);
            let started = run.state == StepState::Running
                && was.is_none_or(|w| w.attempt_id != run.attempt_id);
            if started {
                let assigned = has(id, K::StepAssigned, &|e| {
                    &e.step == name && e.attempt_id == run.attempt_id.0
                });
                assert_eq!(assigned, 1, "workflow {id} step {name} started: {events:?}");
            }
            let step_ended = run.state.is_terminal() && was.is_none_or(|w| !w.state.is_terminal());
            // Two ends are told by another event alone: the steps a cancel or a timeout closes
            // (its WORKFLOW_FINISHED, cancelled or timed out), and a step failed by its last lost lease (its
            // STEP_LEASE_EXPIRED), so attempt counters derived from events count each once.
            let cancelled = run.state == StepState::Cancelled
                && matches!(
                    workflow.state,
                    WorkflowState::Cancelled | WorkflowState::TimedOut
                )
                && finished == 1;
            let lease_lost = run.state == StepState::Failed
                && has(id, K::StepLeaseExpired, &|e| &e.step == name) == 1;
            if step_ended && !cancelled && !lease_lost {
                let told = has(id, K::StepFinished, &|e| {
                    &e.step == name && e.step_state == run.state.to_proto() as i32
                }) + has(id, K::StepSkipped, &|e| &e.step == name);
                assert_eq!(
                    told, 1,
                    "workflow {id} step {name} ended {:?}: {events:?}",
                    run.state
                );
            }
        }
    }
}

fn has_purged(events: &[pb::WorkflowEvent], id: WorkflowId) -> usize {
    events
        .iter()
        .filter(|e| e.workflow_id == id.0 && e.kind() == pb::EventKind::WorkflowPurged)
        .count()
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
    assert_eq!(wf.steps[3].deps, [StepIndex(1), StepIndex(2)]);
    assert_eq!(wf.steps[0].ready_at_ms, 5_000);
    assert_eq!(
        log.kinds(1),
        [
            (pb::EventKind::WorkflowSubmitted, String::new()),
            (pb::EventKind::StepReady, "a".into()),
        ]
    );
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
        actor: String::new(),
        namespace: Default::default(),
        spec: vec![0xff, 0xff, 0xff],
        idempotency_key: String::new(),
        params: Default::default(),
        template: None,
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
            actor: String::new(),
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
        actor: String::new(),
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
            actor: String::new(),
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
        actor: String::new(),
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
        actor: String::new(),
    }));
    assert_ne!(log.state.state_hash(), before);
}

/// A random command, drawn so that many of them interact (few names, few keys, small ids).
fn arb_command() -> impl Strategy<Value = (u64, Command)> {
    let names = prop::sample::select(vec!["a", "b", "c", "d"]);
    let arb_step = (
        names.clone(),
        prop::collection::vec(names, 0..3),
        prop::sample::select(vec![0u64, 0, 500, 20_000]),
        prop::sample::select(vec![None, None, None, Some(0u64), Some(10_000)]),
        // Concurrency keys of one or two holders, and a rate limit, on some steps.
        prop::sample::select(vec![None, None, None, Some(("k1", 1u32)), Some(("k2", 2))]),
        prop::sample::select(vec![None, None, None, Some(2u32)]),
    )
        .prop_map(|(name, deps, start_timeout_ms, wait, concurrency, rate)| {
            let mut s = match wait {
                // A wait step, with or without a timeout.
                Some(timeout_ms) => wait_step(name, &deps, "go", timeout_ms),
                None => step(name, &deps),
            };
            s.schedule_to_start_timeout_ms = start_timeout_ms;
            s.concurrency = concurrency.map(|(key, limit)| pb::Concurrency {
                key: key.into(),
                limit,
            });
            s.rate_limit = rate.map(|per_second| pb::RateLimit {
                key: "api".into(),
                per_second,
                per_minute: 0,
                burst: 1,
            });
            s
        });
    let arb_submit = (
        prop::collection::vec(arb_step, 0..5),
        prop::sample::select(vec!["", "", "k1", "k2", "k3"]),
        // Some workflows hold a key of their own, one or two at once.
        prop::sample::select(vec![None, None, None, Some(1u32), Some(2)]),
    )
        .prop_map(|(steps, key, limit)| {
            let mut spec = spec("w", steps);
            spec.concurrency = limit.map(|limit| pb::Concurrency {
                key: "nightly".into(),
                limit,
            });
            submit(&spec, key)
        });
    // Some workflows carry a timeout of their own.
    let arb_submit = (arb_submit, prop::sample::select(vec![0u64, 0, 30_000])).prop_map(
        |(command, timeout_ms)| match command {
            Command::Submit(mut submit) if timeout_ms != 0 => {
                let mut spec = pb::WorkflowSpec::decode(submit.spec.as_slice()).unwrap();
                spec.timeout_ms = timeout_ms;
                submit.spec = spec.encode_to_vec();
                Command::Submit(submit)
            }
            other => other,
        },
    );
    let arb_cancel = (0u64..6).prop_map(|id| {
        Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(id),
            reason: String::new(),
            actor: String::new(),
        })
    });
    let arb_init = "[a-c]".prop_map(|cluster_id| Command::InitCluster { cluster_id });
    let arb_register = (prop::sample::select(vec!["x", "y"]), 1u32..3).prop_map(|(name, slots)| {
        Command::RegisterAgent(RegisterAgentCommand {
            namespaces: Default::default(),
            name: name.into(),
            labels: Default::default(),
            slots,
            cpu_millis: 1000,
            memory_mb: 1000,
            task_types: Vec::new(),
        })
    });
    let arb_assign =
        prop::collection::vec((1u64..6, 0u32..4, 1u64..3), 1..4).prop_map(|v| Command::Assign {
            assignments: v
                .into_iter()
                .map(|(w, s, a)| Assignment {
                    workflow_id: WorkflowId(w),
                    step: StepIndex(s),
                    agent_id: AgentId(a),
                })
                .collect(),
        });
    let arb_complete =
        (1u64..12, 1u64..3, prop::bool::ANY).prop_map(|(attempt, agent, success)| {
            Command::Complete(CompleteCommand {
                attempt_id: AttemptId(attempt),
                agent_id: AgentId(agent),
                success,
                output: String::new(),
                error: String::new(),
                exit_code: None,
            })
        });
    let arb_expire = prop::collection::vec(1u64..12, 1..3).prop_map(|v| Command::ExpireLeases {
        attempts: v.into_iter().map(AttemptId).collect(),
    });
    let arb_pause = (0u64..6, prop::bool::ANY).prop_map(|(id, paused)| {
        Command::Pause(PauseCommand {
            workflow_id: WorkflowId(id),
            paused,
            actor: String::new(),
        })
    });
    let arb_retry =
        (0u64..6, prop::sample::select(vec!["", "", "a", "c", "z"])).prop_map(|(id, from)| {
            Command::Retry(RetryCommand {
                workflow_id: WorkflowId(id),
                from_step: from.into(),
                actor: String::new(),
            })
        });
    let arb_signal = (
        0u64..6,
        prop::sample::select(vec!["a", "b", "c"]),
        prop::bool::ANY,
    )
        .prop_map(|(id, step, reject)| {
            Command::Signal(SignalCommand {
                workflow_id: WorkflowId(id),
                step: step.into(),
                data: String::new(),
                reject,
                actor: String::new(),
            })
        });
    let arb_purge = (
        prop::collection::vec(1u64..6, 0..4),
        prop::sample::select(vec![1_000u64, 30_000]),
    )
        .prop_map(|(ids, retention)| {
            Command::Purge(PurgeCommand {
                workflows: ids.into_iter().map(WorkflowId).collect(),
                default_retention_ms: retention,
                idempotency_window_ms: retention,
            })
        });
    // Schedules of every overlap policy (an inline workflow, or a template that may be
    // deleted), paused, triggered and backfilled among the rest.
    let arb_schedule = (
        prop::sample::select(vec!["s1", "s2"]),
        prop::sample::select(vec![
            pb::OverlapPolicy::Skip,
            pb::OverlapPolicy::BufferOne,
            pb::OverlapPolicy::Allow,
            pb::OverlapPolicy::CancelPrevious,
        ]),
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(name, policy, templated, replace)| {
            let mut command = create_schedule(name, 5_000, policy, Some(20_000));
            if let Command::CreateSchedule(create) = &mut command {
                create.replace = replace;
                if templated {
                    let mut spec = pb::ScheduleSpec::decode(create.spec.as_slice()).unwrap();
                    spec.template = "tpl".into();
                    create.spec = spec.encode_to_vec();
                    create.workflow.clear();
                }
            }
            command
        });
    let arb_steer = (prop::sample::select(vec!["s1", "s2"]), 0u8..5).prop_map(|(name, what)| {
        let name = name.to_string();
        match what {
            0 => Command::PauseSchedule(PauseScheduleCommand { name, paused: true }),
            1 => Command::PauseSchedule(PauseScheduleCommand {
                name,
                paused: false,
            }),
            2 => Command::TriggerSchedule { name },
            3 => Command::BackfillSchedule(BackfillScheduleCommand {
                name,
                from_ms: 1,
                to_ms: 30_000,
            }),
            _ => Command::DeleteSchedule { name },
        }
    });
    let arb_template = prop::bool::ANY.prop_map(|delete| {
        if delete {
            Command::DeleteTemplate { name: "tpl".into() }
        } else {
            apply_template(&spec("tpl", vec![step("a", &[])]))
        }
    });
    // A second namespace, created and deleted among the rest: submits, schedules and
    // templates land in it (or are refused while it does not exist), keys repeat across it.
    let arb_namespace = prop::bool::ANY.prop_map(|delete| match delete {
        true => Command::DeleteNamespace {
            name: "team-a".into(),
        },
        false => Command::CreateNamespace(CreateNamespaceCommand {
            weight: Default::default(),
            quotas: Default::default(),
            name: "team-a".into(),
            description: String::new(),
        }),
    });
    let in_team_a = |command: Command| match command {
        Command::Submit(mut submit) => {
            submit.namespace = "team-a".into();
            Command::Submit(submit)
        }
        Command::CreateSchedule(mut create) => {
            create.namespace = "team-a".into();
            Command::CreateSchedule(create)
        }
        Command::ApplyTemplate(mut apply) => {
            apply.namespace = "team-a".into();
            Command::ApplyTemplate(apply)
        }
        Command::DeleteTemplate { name } => Command::DeleteTemplate {
            name: format!("team-a/{name}"),
        },
        Command::DeleteSchedule { name } => Command::DeleteSchedule {
            name: format!("team-a/{name}"),
        },
        Command::TriggerSchedule { name } => Command::TriggerSchedule {
            name: format!("team-a/{name}"),
        },
        other => other,
    };
    let namespaced = prop_oneof![
        arb_submit.clone().prop_map(in_team_a),
        arb_schedule.clone().prop_map(in_team_a),
        arb_steer.clone().prop_map(in_team_a),
        arb_template.clone().prop_map(in_team_a),
    ];
    // Quotas come and go on both namespaces: submits, retries and schedule runs meet them.
    let arb_quota = (
        prop::sample::select(vec!["default", "team-a"]),
        prop::sample::select(vec![None, Some(0u64), Some(1), Some(3)]),
        prop::sample::select(vec![None, Some(0u64), Some(2), Some(6)]),
        prop::sample::select(vec![None, Some(0u32), Some(1), Some(5)]),
    )
        .prop_map(|(name, running, active, rate)| {
            Command::UpdateNamespace(UpdateNamespaceCommand {
                name: name.into(),
                running_workflows: running,
                active_steps: active,
                submits_per_second: rate,
                ..Default::default()
            })
        });
    // Changes with who asked, and membership notes, for the audit trail.
    let arb_audited = (prop::sample::select(vec!["a", "b"]), arb_namespace.clone())
        .prop_map(|(actor, command)| audited(actor, command));
    let arb_note = (0u64..4).prop_map(|node| {
        Command::Note(audit::NoteCommand {
            actor: "admin".into(),
            action: "member.add".into(),
            target: format!("node {node}"),
            detail: String::new(),
        })
    });
    let command = prop_oneof![
        1 => arb_audited, 1 => arb_note,
        4 => arb_submit, 2 => arb_cancel, 1 => arb_init, 2 => arb_register,
        4 => arb_assign, 4 => arb_complete, 1 => arb_expire, 2 => Just(Command::Tick),
        1 => arb_pause, 1 => arb_retry, 1 => arb_purge, 2 => arb_signal,
        1 => arb_schedule, 2 => arb_steer, 1 => arb_template, 1 => arb_namespace,
        2 => namespaced, 1 => arb_quota,
    ];
    (0u64..100_000, command)
}

proptest! {
    /// Invariants hold after every command (apply checks them in debug builds), replicas that
    /// apply the same log agree byte for byte, and a snapshot taken anywhere restores the state.
    #[test]
    fn replicas_applying_one_log_agree(commands in prop::collection::vec(arb_command(), 0..80)) {
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
        // Every key maps to exactly one workflow, and no two workflows of a namespace share
        // a key.
        let mut keys = std::collections::BTreeSet::new();
        for (_, wf) in &a.state.workflows {
            if !wf.idempotency_key.is_empty() {
                prop_assert!(keys.insert((wf.namespace.clone(), wf.idempotency_key.clone())));
            }
        }
    }
}

proptest! {
    /// A batch entry is the same as its commands applied one by one at its index and time: the
    /// same responses in order, the same events in order, the same state. So the leader's group
    /// commit (`raft::batcher`) changes how many entries there are, never what they do.
    #[test]
    fn a_batch_applies_as_its_commands_in_order(
        entries in prop::collection::vec(prop::collection::vec(arb_command(), 1..6), 0..30),
    ) {
        let mut batched = ClusterState::default();
        let mut single = ClusterState::default();
        for (i, commands) in entries.into_iter().enumerate() {
            let ctx = ApplyCtx { index: i as u64 + 1 };
            // Each group takes its first command's time, as one entry has one time.
            let time_ms = commands[0].0;
            let commands: Vec<Command> = commands.into_iter().map(|(_, c)| c).collect();
            let mut responses = Vec::new();
            let mut events = Vec::new();
            for command in commands.clone() {
                let applied = single.apply(ctx, LogEntry { time_ms, command });
                responses.push(applied.response);
                events.extend(applied.events);
            }
            let applied = batched.apply(ctx, LogEntry { time_ms, command: Command::Batch(commands) });
            prop_assert_eq!(applied.response, Response::Batch(responses));
            prop_assert_eq!(applied.events, events);
            prop_assert_eq!(&batched, &single);
        }
    }
}

#[test]
fn a_batch_inside_a_batch_is_refused_and_changes_nothing() {
    let mut log = Log::new();
    let before = log.state.clone();
    let inner = Command::Batch(vec![submit(&spec("w", vec![step("a", &[])]), "")]);
    let response = log.apply(Command::Batch(vec![inner]));
    assert_eq!(
        response,
        Response::Batch(vec![Response::Rejected {
            reason: "a batch inside a batch".into()
        }])
    );
    // Only the clock moved.
    assert_eq!(log.state.workflows.len(), before.workflows.len());
    assert_eq!(log.state.last_workflow_id, 0);
}

// --- scheduling: agents, leases, fencing, retries, conditions ---

fn register(log: &mut Log, name: &str, slots: u32) -> AgentId {
    match log.apply(Command::RegisterAgent(RegisterAgentCommand {
        namespaces: Default::default(),
        name: name.into(),
        labels: Default::default(),
        slots,
        cpu_millis: 4000,
        memory_mb: 4096,
        task_types: Vec::new(),
    })) {
        Response::AgentRegistered { agent_id } => agent_id,
        other => panic!("{other:?}"),
    }
}

fn assign(log: &mut Log, workflow: u64, step: u32, agent: AgentId) -> Option<AttemptId> {
    match log.apply(Command::Assign {
        assignments: vec![Assignment {
            workflow_id: WorkflowId(workflow),
            step: StepIndex(step),
            agent_id: agent,
        }],
    }) {
        Response::Assigned { attempts } => attempts[0],
        other => panic!("{other:?}"),
    }
}

fn report(log: &mut Log, attempt: AttemptId, agent: AgentId, success: bool) -> Response {
    log.apply(Command::Complete(CompleteCommand {
        attempt_id: attempt,
        agent_id: agent,
        success,
        output: format!("out-{attempt}"),
        error: if success {
            String::new()
        } else {
            "boom".into()
        },
        exit_code: Some(if success { 0 } else { 1 }),
    }))
}

fn states(log: &Log, workflow: u64) -> Vec<StepState> {
    log.state
        .workflow(WorkflowId(workflow))
        .unwrap()
        .steps
        .iter()
        .map(|s| s.state)
        .collect()
}

fn with_when(mut s: pb::StepSpec, when: pb::RunCondition) -> pb::StepSpec {
    s.when = when as i32;
    s
}

#[test]
fn a_step_runs_only_after_its_dependencies_and_the_workflow_ends_once() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    log.apply(submit(
        &spec("w", vec![step("a", &[]), step("b", &["a"])]),
        "",
    ));
    assert_eq!(
        assign(&mut log, 1, 1, agent),
        None,
        "b is not ready before a finished"
    );
    let a = assign(&mut log, 1, 0, agent).unwrap();
    assert_eq!(states(&log, 1), [StepState::Running, StepState::Waiting]);
    assert_eq!(report(&mut log, a, agent, true), Response::Completed);
    assert_eq!(states(&log, 1), [StepState::Succeeded, StepState::Ready]);
    let b = assign(&mut log, 1, 1, agent).unwrap();
    assert!(b > a, "attempt ids only grow");
    report(&mut log, b, agent, true);
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(wf.state, WorkflowState::Succeeded);
    assert_eq!(wf.steps[0].output, format!("out-{a}"));
    assert_eq!(
        log.state.allocation(agent),
        Allocation::default(),
        "capacity given back"
    );
}

#[test]
fn when_conditions_pick_which_steps_run_after_a_failure() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    let steps = vec![
        step("build", &[]),
        step("deploy", &["build"]),
        with_when(step("rollback", &["build"]), pb::RunCondition::Failure),
        with_when(
            step("cleanup", &["deploy", "rollback"]),
            pb::RunCondition::Always,
        ),
        step("announce", &["deploy"]),
    ];
    log.apply(submit(&spec("w", steps), ""));
    let build = assign(&mut log, 1, 0, agent).unwrap();
    report(&mut log, build, agent, false); // no retry policy: one attempt
    assert_eq!(
        states(&log, 1),
        [
            StepState::Failed,
            StepState::Skipped,
            StepState::Ready,
            StepState::Waiting,
            StepState::Skipped
        ]
    );
    let rollback = assign(&mut log, 1, 2, agent).unwrap();
    report(&mut log, rollback, agent, true);
    assert_eq!(
        states(&log, 1)[3],
        StepState::Ready,
        "always runs whatever happened"
    );
    let cleanup = assign(&mut log, 1, 3, agent).unwrap();
    report(&mut log, cleanup, agent, true);
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(wf.state, WorkflowState::Failed);
    assert_eq!(wf.reason, "step(s) failed: build");
}

#[test]
fn a_stale_or_foreign_report_is_refused_and_changes_nothing() {
    let mut log = Log::new();
    let a1 = register(&mut log, "a1", 1);
    let a2 = register(&mut log, "a2", 1);
    log.apply(submit(&spec("w", vec![step("a", &[])]), ""));
    let first = assign(&mut log, 1, 0, a1).unwrap();
    log.apply(Command::ExpireLeases {
        attempts: vec![first],
    });
    assert_eq!(states(&log, 1), [StepState::Ready]);
    let second = assign(&mut log, 1, 0, a2).unwrap();
    let before = log.state.clone();
    let hash = log.state.state_hash();
    let now_ms = log.state.now_ms();
    let refused = |log: &mut Log, attempt, agent| {
        log.index += 1;
        let applied = log.state.apply(
            ApplyCtx { index: log.index },
            LogEntry {
                time_ms: now_ms,
                command: Command::Complete(CompleteCommand {
                    attempt_id: attempt,
                    agent_id: agent,
                    success: true,
                    output: "forged".into(),
                    error: String::new(),
                    exit_code: Some(0),
                }),
            },
        );
        assert!(
            matches!(applied.response, Response::ReportRefused { .. }),
            "{:?}",
            applied.response
        );
        assert!(applied.events.is_empty());
    };
    // The zombie holder of the first attempt reports late: refused.
    assert!(log.state.report_refusal(first, a1).is_some());
    refused(&mut log, first, a1);
    // Agent 1 reports agent 2's live attempt (right fencing token, wrong identity): refused.
    assert!(log.state.report_refusal(second, a1).is_some());
    refused(&mut log, second, a1);
    // Agent 2 reports agent 1's stale attempt (its identity, a stale token): refused.
    refused(&mut log, first, a2);
    // An agent that does not exist, and an attempt id never handed out.
    refused(&mut log, second, AgentId(99));
    assert_eq!(log.state.report_refusal(AttemptId(99), a1), None);
    refused(&mut log, AttemptId(99), a1);
    assert_eq!(log.state, before, "a refused report changed the state");
    assert_eq!(log.state.state_hash(), hash);
    assert_eq!(log.state.report_refusal(second, a2), None);
    assert_eq!(report(&mut log, second, a2, true), Response::Completed);
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!((wf.steps[0].attempts, wf.steps[0].lease_expiries), (2, 1));
    assert_eq!(wf.steps[0].output, format!("out-{second}"));
}

#[test]
fn retries_follow_the_policy_with_backoff_through_ticks() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 1);
    let mut s = step("flaky", &[]);
    s.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        backoff: Some(pb::Backoff {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 1_500,
        }),
    });
    log.apply_at(10_000, submit(&spec("w", vec![s]), ""));
    let first = assign(&mut log, 1, 0, agent).unwrap();
    log.apply_at(
        20_000,
        Command::Complete(CompleteCommand {
            attempt_id: first,
            agent_id: agent,
            success: false,
            output: String::new(),
            error: "exit 1".into(),
            exit_code: Some(1),
        }),
    );
    let run = &log.state.workflow(WorkflowId(1)).unwrap().steps[0];
    assert_eq!((run.state, run.retry_at_ms), (StepState::Backoff, 21_000));
    assert_eq!(
        assign(&mut log, 1, 0, agent),
        None,
        "not ready during backoff"
    );
    log.apply_at(20_999, Command::Tick);
    assert_eq!(
        states(&log, 1),
        [StepState::Backoff],
        "a tick before the time changes nothing"
    );
    log.apply_at(21_000, Command::Tick);
    assert_eq!(states(&log, 1), [StepState::Ready]);
    let second = assign(&mut log, 1, 0, agent).unwrap();
    log.apply_at(
        30_000,
        Command::Complete(CompleteCommand {
            attempt_id: second,
            agent_id: agent,
            success: false,
            output: String::new(),
            error: "exit 1".into(),
            exit_code: Some(1),
        }),
    );
    // The second delay is capped at max_ms (2,000 -> 1,500).
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().steps[0].retry_at_ms,
        31_500
    );
    log.apply_at(31_500, Command::Tick);
    let third = assign(&mut log, 1, 0, agent).unwrap();
    report(&mut log, third, agent, false);
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(
        (wf.steps[0].state, wf.steps[0].failures, wf.state),
        (StepState::Failed, 3, WorkflowState::Failed)
    );
    use pb::EventKind as K;
    let flaky = || "flaky".to_owned();
    assert_eq!(
        log.kinds(1),
        [
            (K::WorkflowSubmitted, String::new()),
            (K::StepReady, flaky()),
            (K::StepAssigned, flaky()),
            (K::StepRetrying, flaky()),
            (K::StepReady, flaky()),
            (K::StepAssigned, flaky()),
            (K::StepRetrying, flaky()),
            (K::StepReady, flaky()),
            (K::StepAssigned, flaky()),
            (K::StepFinished, flaky()),
            (K::WorkflowFinished, String::new()),
        ]
    );
}

#[test]
fn each_attempt_that_was_followed_by_another_is_kept_with_the_tail_of_its_texts() {
    use super::workflow::AttemptOutcome;
    use baton_proto::limits::EARLIER_ATTEMPT_TEXT_BYTES_MAX;
    let mut log = Log::new();
    let a1 = register(&mut log, "a1", 1);
    let a2 = register(&mut log, "a2", 1);
    let mut s = step("flaky", &[]);
    s.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        backoff: Some(pb::Backoff {
            initial_ms: 1_000,
            multiplier: 1.0,
            max_ms: 1_000,
        }),
    });
    log.apply_at(10_000, submit(&spec("w", vec![s]), ""));
    // 1: fails with a long error; 2: its lease expires; 3: succeeds.
    let first = assign(&mut log, 1, 0, a1).unwrap();
    let long_error = format!("{}the end", "x".repeat(2 * EARLIER_ATTEMPT_TEXT_BYTES_MAX));
    log.apply_at(
        11_000,
        Command::Complete(CompleteCommand {
            attempt_id: first,
            agent_id: a1,
            success: false,
            output: "partial".into(),
            error: long_error.clone(),
            exit_code: Some(3),
        }),
    );
    let run = &log.state.workflow(WorkflowId(1)).unwrap().steps[0];
    assert_eq!(run.earlier.len(), 1, "recorded as soon as it ended");
    assert_eq!(
        run.error, long_error,
        "the step's own fields keep it whole meanwhile"
    );
    log.apply_at(12_000, Command::Tick);
    let second = assign(&mut log, 1, 0, a2).unwrap();
    let run = &log.state.workflow(WorkflowId(1)).unwrap().steps[0];
    assert_eq!(
        (run.output.as_str(), run.error.as_str(), run.exit_code),
        ("", "", None),
        "a new attempt starts with no result"
    );
    log.apply_at(
        13_000,
        Command::ExpireLeases {
            attempts: vec![second],
        },
    );
    let third = assign(&mut log, 1, 0, a1).unwrap();
    log.apply_at(14_000, Command::Tick);
    report(&mut log, third, a1, true);

    let run = &log.state.workflow(WorkflowId(1)).unwrap().steps[0];
    assert_eq!(run.state, StepState::Succeeded);
    assert_eq!(run.output, format!("out-{third}"));
    let earlier: Vec<_> = run
        .earlier
        .iter()
        .map(|e| (e.attempt_id, e.agent.as_str(), e.outcome, e.exit_code))
        .collect();
    assert_eq!(
        earlier,
        [
            (first, "a1", AttemptOutcome::Failed, Some(3)),
            (second, "a2", AttemptOutcome::LeaseExpired, None),
        ]
    );
    let failed = &run.earlier[0];
    assert_eq!(failed.output, "partial");
    assert_eq!(failed.error.len(), EARLIER_ATTEMPT_TEXT_BYTES_MAX);
    assert!(failed.error.ends_with("the end"), "the tail is kept");
    assert_eq!(
        (failed.started_at_ms, failed.finished_at_ms),
        (10_000, 11_000)
    );

    // The API view carries them only for the step asked about, and the snapshot keeps them.
    let workflow = log.state.workflow(WorkflowId(1)).unwrap();
    for other in [None, Some("other")] {
        let view = workflow.to_proto(true, other);
        assert!(view.steps[0].earlier_attempts.is_empty());
    }
    let view = workflow.to_proto(true, Some("flaky"));
    let attempts = &view.steps[0].earlier_attempts;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].outcome, pb::AttemptOutcome::LeaseExpired as i32);
    let restored = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(
        restored.workflow(WorkflowId(1)),
        log.state.workflow(WorkflowId(1))
    );
}

#[test]
fn capacity_is_never_over_allocated_and_cancel_releases_it() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 1);
    log.apply(submit(&spec("w", vec![step("a", &[]), step("b", &[])]), ""));
    let a = assign(&mut log, 1, 0, agent).unwrap();
    assert_eq!(
        assign(&mut log, 1, 1, agent),
        None,
        "one slot, already taken"
    );
    log.apply(Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(1),
        reason: String::new(),
        actor: String::new(),
    }));
    assert!(log.state.live_attempt(a).is_none(), "cancel ends the lease");
    // Its agent may not have heard: the slot stays taken until the leader's lease book shows
    // the attempt stopped (its lease lapsed, or its agent stopped listing it), and it says so.
    assert_eq!(log.state.allocation(agent).slots, 1);
    assert!(log.state.is_drained(a));
    log.apply(Command::ExpireLeases { attempts: vec![a] });
    assert_eq!(log.state.allocation(agent), Allocation::default());
    assert!(!log.state.is_drained(a));
    assert!(matches!(
        report(&mut log, a, agent, true),
        Response::ReportRefused { .. }
    ));
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().state,
        WorkflowState::Cancelled
    );
}

#[test]
fn a_step_that_keeps_losing_its_lease_fails_instead_of_cycling_forever() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 1);
    log.apply(submit(&spec("w", vec![step("a", &[])]), ""));
    for _ in 0..scheduling::LEASE_EXPIRIES_PER_STEP_MAX {
        let attempt = assign(&mut log, 1, 0, agent).unwrap();
        log.apply(Command::ExpireLeases {
            attempts: vec![attempt, attempt],
        });
    }
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(wf.steps[0].state, StepState::Failed);
    assert!(wf.steps[0].error.contains("lease expired"));
    assert_eq!(wf.state, WorkflowState::Failed);
}

#[test]
fn a_ready_step_past_its_schedule_to_start_deadline_fails_visibly() {
    let mut log = Log::new();
    let mut s = step("a", &[]);
    s.schedule_to_start_timeout_ms = 5_000;
    s.constraints.insert("zone".into(), "mars".into());
    log.apply_at(1_000, submit(&spec("w", vec![s]), ""));
    let wf = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(
        log.state.pending_reason(&wf, StepIndex(0)).unwrap(),
        "no agent is registered"
    );
    register(&mut log, "a1", 1);
    let wf = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(
        log.state.pending_reason(&wf, StepIndex(0)).unwrap(),
        "no registered agent has labels zone=mars"
    );
    assert!(!log.state.tick_due(5_999));
    assert!(log.state.tick_due(6_000));
    log.apply_at(6_000, Command::Tick);
    let wf = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(
        (wf.steps[0].state, wf.state),
        (StepState::Failed, WorkflowState::Failed)
    );
    assert!(wf.steps[0].error.contains("schedule-to-start"));
}

#[test]
fn workflows_of_one_spec_read_as_their_own_and_snapshot_alike() {
    // Whether they share one decoded spec (`specs.rs`) must not show: the sharing itself is
    // checked in `tests/t11_shared_specs.rs`, a process of its own (the memo is process-wide,
    // and other tests here churn it).
    let mut log = Log::new();
    let nightly = spec(
        "nightly",
        vec![step("extract", &[]), step("load", &["extract"])],
    );
    let mut other = nightly.clone();
    other.input.insert("day".into(), "monday".into());
    for (i, spec) in [&nightly, &nightly, &other].into_iter().enumerate() {
        assert!(matches!(
            log.apply(submit(spec, &format!("run-{i}"))),
            Response::Submitted { created: true, .. }
        ));
    }
    let spec_of = |state: &ClusterState, id| state.workflow(WorkflowId(id)).unwrap().spec.clone();
    assert_eq!(*spec_of(&log.state, 1), nightly);
    assert_eq!(*spec_of(&log.state, 2), nightly);
    assert_eq!(*spec_of(&log.state, 3), other);
    let restored = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(restored, log.state);
    assert_eq!(restored.state_hash(), log.state.state_hash());
    // Finishing one run changes that run only.
    let agent = register(&mut log, "a1", 4);
    assert!(assign(&mut log, 1, 0, agent).is_some());
    let run = |state: &ClusterState, id| state.workflow(WorkflowId(id)).unwrap().steps[0].state;
    assert_eq!(run(&log.state, 1), StepState::Running);
    assert_eq!(run(&log.state, 2), StepState::Ready);
    assert_eq!(*spec_of(&log.state, 2), nightly);
}

/// A state copied to seed a cluster (`batond restore`, `recover`) skips, at the first entry the
/// new cluster applies, every id the old cluster could have handed out since the copy: at
/// `IDS_PER_MS_MAX` over the time between the copy and that entry, plus the margin. Every replica
/// computes the same skip from the entry's time.
#[test]
fn a_reseeded_state_never_hands_out_an_id_or_token_twice() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 2);
    log.apply(Command::BindIncarnation {
        node_id: NodeId(1),
        incarnation: "aa".into(),
    });
    log.apply(Command::InitCluster {
        cluster_id: "old".into(),
    });
    let first = match log.apply(submit(&spec("w", vec![step("a", &[])]), "")) {
        Response::Submitted { workflow_id, .. } => workflow_id,
        other => panic!("{other:?}"),
    };
    let token = assign(&mut log, first.0, 0, agent).expect("assigned");
    let copied_at = log.state.now_ms();

    for (survivor, cluster) in [(None, ""), (Some(NodeId(1)), "old")] {
        let mut seeded = log.state.clone();
        seeded.reseed(survivor);
        assert_eq!(
            seeded.cluster_id(),
            cluster,
            "restore renames, recover keeps"
        );
        assert_eq!(
            seeded.incarnation_of(NodeId(1)),
            survivor.map(|_| "aa"),
            "old data folders are forgotten, but the survivor's"
        );
        let twin = seeded.clone();
        let mut new = Log::at(seeded, 100);
        let later = copied_at + 10_000;
        let next = match new.apply_at(later, submit(&spec("w", vec![step("a", &[])]), "")) {
            Response::Submitted { workflow_id, .. } => workflow_id,
            other => panic!("{other:?}"),
        };
        let skip = 10_000 * IDS_PER_MS_MAX + RESEED_ID_MARGIN;
        assert_eq!(next.0, first.0 + skip + 1);
        let agent2 = register(&mut new, "a2", 1);
        assert!(agent2.0 > agent.0 + skip);
        let token2 = assign(&mut new, next.0, 0, agent).expect("assigned");
        assert_eq!(token2.0, token.0 + skip + 1);
        // The skip happens once, and the same way on every replica.
        let mut replica = Log::at(twin, 100);
        replica.apply_at(later, submit(&spec("w", vec![step("a", &[])]), ""));
        replica.apply(Command::RegisterAgent(RegisterAgentCommand {
            namespaces: Default::default(),
            name: "a2".into(),
            labels: Default::default(),
            slots: 1,
            cpu_millis: 4000,
            memory_mb: 4096,
            task_types: Vec::new(),
        }));
        assign(&mut replica, next.0, 0, agent);
        assert_eq!(replica.state.state_hash(), new.state.state_hash());
    }
}

/// A member that leaves is retired for good; a restored cluster (a new cluster) may take the id
/// back as a member. Both come from the memberships before and after, which every replica has.
#[test]
fn ids_that_leave_are_retired_until_a_new_membership_takes_them_back() {
    let mut log = Log::new();
    let ids = |ids: &[u64]| ids.iter().map(|id| NodeId(*id)).collect::<Vec<_>>();
    let members = |log: &mut Log, previous: &[u64], members: &[u64]| {
        let applied = log.apply(Command::Membership {
            previous: ids(previous),
            members: ids(members),
        });
        assert_eq!(applied, Response::Done);
    };
    members(&mut log, &[], &[1, 2, 3]);
    members(&mut log, &[1, 2, 3], &[1, 2, 3, 4]);
    members(&mut log, &[1, 2, 3, 4], &[1, 2, 4]);
    assert!(log.state.was_removed(NodeId(3)));
    assert!(!log.state.was_removed(NodeId(4)));
    assert!(log.state.peer_view().was_removed(NodeId(3)));
    // `batond restore` seeds a membership of 1, 3, 5 from this state (then reseeds it).
    members(&mut log, &[1, 2, 4], &[1, 3, 5]);
    log.state.reseed(None);
    assert!(
        !log.state.was_removed(NodeId(3)),
        "a restored member is no longer retired"
    );
    assert!(log.state.was_removed(NodeId(2)) && log.state.was_removed(NodeId(4)));
}

/// Pins the snapshot payload's bytes (their SHA-256 and length): a state holding one of
/// everything a snapshot carries (a running workflow with an attempt, a finished one, an agent
/// with task types, a token, a bound incarnation, a reserved node id, a backoff and the failed
/// attempt before it). A change here breaks every snapshot at rest and every backup: change it
/// only with a decoder for the old one.
#[test]
fn golden_snapshot_bytes() {
    let mut log = Log::new();
    log.apply(Command::InitCluster {
        cluster_id: "c0ffee".into(),
    });
    log.apply(Command::ReserveNodeId { node_id: NodeId(4) });
    log.apply(Command::BindIncarnation {
        node_id: NodeId(1),
        incarnation: "00ff00ff00ff00ff".into(),
    });
    log.apply(Command::CreateToken(CreateTokenCommand {
        namespaces: Default::default(),
        id: "0123456789abcdef".into(),
        name: "ci".into(),
        role: baton_security::TokenRole::Submitter,
        digest: vec![0xab; 32],
        bootstrap: false,
    }));
    let Response::AgentRegistered { agent_id } =
        log.apply(Command::RegisterAgent(RegisterAgentCommand {
            namespaces: Default::default(),
            name: "a1".into(),
            labels: [("zone".to_owned(), "eu".to_owned())].into(),
            slots: 4,
            cpu_millis: 4000,
            memory_mb: 4096,
            task_types: vec!["noop".into(), "billing/charge".into()],
        }))
    else {
        panic!("no agent")
    };
    let mut retried = step("flaky", &[]);
    retried.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        backoff: Some(pb::Backoff {
            initial_ms: 60_000,
            ..Default::default()
        }),
    });
    log.apply(submit(
        &spec("pair", vec![step("a", &[]), step("b", &["a"])]),
        "k1",
    ));
    log.apply(submit(&spec("retried", vec![retried]), ""));
    log.apply(submit(&spec("done", vec![step("only", &[])]), ""));
    let assign = |workflow: u64| Assignment {
        workflow_id: WorkflowId(workflow),
        step: StepIndex(0),
        agent_id,
    };
    let Response::Assigned { attempts } = log.apply(Command::Assign {
        assignments: vec![assign(1), assign(2), assign(3)],
    }) else {
        panic!("not assigned")
    };
    let report = |attempt: Option<AttemptId>, success: bool| {
        Command::Complete(CompleteCommand {
            attempt_id: attempt.expect("assigned"),
            agent_id,
            success,
            output: "out".into(),
            error: String::new(),
            exit_code: Some(if success { 0 } else { 1 }),
        })
    };
    log.apply(report(attempts[1], false));
    log.apply(report(attempts[2], true));
    // Snapshots written before workflows kept their history and earlier attempts, and before
    // purges (2026-12-06), are this state without them.
    let mut before = log.state.clone();
    // A purged workflow leaves a record for the idempotency window.
    log.apply(submit(&spec("gone", vec![step("only", &[])]), "k2"));
    log.apply(Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(4),
        reason: String::new(),
        actor: "token ci (0123456789abcdef)".into(),
    }));
    let later = log.state.now_ms() + 2_000;
    let purged = log.apply_at(
        later,
        Command::Purge(PurgeCommand {
            workflows: vec![WorkflowId(4)],
            default_retention_ms: 1_000,
            idempotency_window_ms: 86_400_000,
        }),
    );
    assert_eq!(
        purged,
        Response::Purged {
            workflows: 1,
            records: 0
        }
    );
    log.state.check_invariants();

    use sha2::Digest;
    let sha = |bytes: &[u8]| -> String {
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let bytes = log.state.encode();
    assert_eq!(
        (bytes.len(), sha(&bytes).as_str()),
        (
            2211,
            "e50c1e7f6d99661804397b9f5e721413bdec7f02c95e2021745ba6de62f3ad3a"
        ),
        "the snapshot encoding changed"
    );
    // The bytes of the earlier state without histories and earlier attempts were pinned then;
    // they still decode, to that state.
    for id in before.workflows.keys().copied().collect::<Vec<_>>() {
        let workflow = Arc::make_mut(before.workflows.get_mut(&id).expect("listed"));
        workflow.history.clear();
        for run in &mut workflow.steps {
            run.earlier.clear();
        }
    }
    before.purge_index = before.derive_purge_index();
    let old_bytes = before.encode();
    assert_eq!(
        (old_bytes.len(), sha(&old_bytes).as_str()),
        (
            1737,
            "613807637e90324e93e1adb42d5b23c7b19c7178b1f38597d2da3403f45e8507"
        ),
        "the encoding of a state without earlier attempts changed"
    );
    assert_eq!(ClusterState::decode(&old_bytes).unwrap(), before);
    let decoded = ClusterState::decode(&bytes).unwrap();
    assert_eq!(decoded, log.state);
    assert_eq!(decoded.encode(), bytes);
}

/// What a debug build checks after every apply catches a state `apply` left wrong: a ready step
/// missing from the queue, found from the event that named its workflow alone.
#[test]
#[should_panic(expected = "ready but not queued")]
fn the_check_after_every_apply_catches_a_step_missing_from_the_queue() {
    let mut log = Log::new();
    log.apply(submit(&spec("w", vec![step("a", &[])]), ""));
    log.index += 1;
    let applied = log.state.apply(
        ApplyCtx { index: log.index },
        LogEntry {
            time_ms: 2_000,
            command: submit(&spec("v", vec![step("b", &[])]), ""),
        },
    );
    assert_ne!(
        log.index % INVARIANTS_FULL_EVERY,
        0,
        "the entry-sized check, not the full one"
    );
    log.state.check_after_apply(log.index, &applied.events);
    log.state.ready.clear();
    log.state.check_after_apply(log.index, &applied.events);
}

/// A purge command as the leader makes it, with a 1 h default retention and a 1 day window.
fn purge(ids: &[u64]) -> Command {
    Command::Purge(PurgeCommand {
        workflows: ids.iter().copied().map(WorkflowId).collect(),
        default_retention_ms: HOUR_MS,
        idempotency_window_ms: DAY_MS,
    })
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

fn cancel(id: u64) -> Command {
    Command::Cancel(CancelCommand {
        workflow_id: WorkflowId(id),
        reason: String::new(),
        actor: "token alice (00aa)".into(),
    })
}

#[test]
fn a_finished_workflow_is_purged_once_its_retention_has_passed_and_not_before() {
    let mut log = Log::new();
    let mut kept_long = spec("long", vec![step("a", &[])]);
    kept_long.retention_ms = 3 * HOUR_MS;
    log.apply_at(1_000, submit(&spec("default", vec![step("a", &[])]), "k1"));
    log.apply_at(1_000, submit(&kept_long, ""));
    log.apply_at(1_000, submit(&spec("running", vec![step("a", &[])]), ""));
    log.apply_at(10_000, cancel(1));
    log.apply_at(10_000, cancel(2));

    // What the leader finds due, by the leader's time and its settings.
    let due = |state: &ClusterState, now_ms| state.purge_due(now_ms, HOUR_MS, DAY_MS, 256);
    assert!(due(&log.state, 10_000 + HOUR_MS - 1).is_empty());
    assert_eq!(due(&log.state, 10_000 + HOUR_MS).workflows, [WorkflowId(1)]);
    assert_eq!(
        due(&log.state, 10_000 + 3 * HOUR_MS).workflows,
        [WorkflowId(1), WorkflowId(2)]
    );

    // A command naming everything purges only what is due by the state's own time: a leader
    // whose clock runs ahead (or a stale proposal) purges nothing early.
    let early = log.apply_at(10_000 + HOUR_MS - 1, purge(&[1, 2, 3, 99]));
    assert_eq!(
        early,
        Response::Purged {
            workflows: 0,
            records: 0
        }
    );
    let on_time = log.apply_at(10_000 + HOUR_MS, purge(&[1, 2, 3, 99]));
    assert_eq!(
        on_time,
        Response::Purged {
            workflows: 1,
            records: 0
        }
    );
    assert!(log.state.workflow(WorkflowId(1)).is_none());
    assert_eq!(
        log.state.purge_record(WorkflowId(1)).unwrap().purged_at_ms,
        10_000 + HOUR_MS
    );
    assert!(
        log.state.workflow(WorkflowId(2)).is_some(),
        "its own retention is longer"
    );
    assert!(
        log.state.workflow(WorkflowId(3)).is_some(),
        "running: never purged"
    );
    log.apply_at(10_000 + 3 * HOUR_MS, purge(&[2]));
    assert!(log.state.workflow(WorkflowId(2)).is_none());
    assert_eq!(has_purged(&log.events, WorkflowId(1)), 1);
    assert_eq!(has_purged(&log.events, WorkflowId(2)), 1);
    // Nothing left to find, and the state agrees with itself through a snapshot.
    assert!(due(&log.state, 10_000 + 3 * HOUR_MS).workflows.is_empty());
    let decoded = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(decoded, log.state);
}

#[test]
fn a_purged_workflows_key_answers_for_the_window_then_is_forgotten() {
    let mut log = Log::new();
    let hello = spec("hello", vec![step("a", &[])]);
    log.apply_at(1_000, submit(&hello, "order-7"));
    log.apply_at(2_000, cancel(1));
    let purged_at = 2_000 + HOUR_MS;
    log.apply_at(purged_at, purge(&[1]));
    // Within the window, a retried submit is the same submit: the purged id, not a new workflow.
    assert_eq!(
        log.apply_at(purged_at + DAY_MS - 1, submit(&hello, "order-7")),
        Response::Submitted {
            workflow_id: WorkflowId(1),
            created: false
        }
    );
    assert!(
        !log.state
            .purge_due(purged_at + DAY_MS - 1, HOUR_MS, DAY_MS, 256)
            .records
    );
    assert!(
        log.state
            .purge_due(purged_at + DAY_MS, HOUR_MS, DAY_MS, 256)
            .records
    );
    assert_eq!(
        log.apply_at(purged_at + DAY_MS, purge(&[])),
        Response::Purged {
            workflows: 0,
            records: 1
        }
    );
    assert!(log.state.purge_record(WorkflowId(1)).is_none());
    assert!(log.state.was_handed_out(WorkflowId(1)));
    assert!(!log.state.was_handed_out(WorkflowId(2)));
    // After it, the key is free again.
    assert_eq!(
        log.apply_at(purged_at + DAY_MS + 1, submit(&hello, "order-7")),
        Response::Submitted {
            workflow_id: WorkflowId(2),
            created: true
        }
    );
}

#[test]
fn a_backlog_is_purged_in_bounded_commands_oldest_first() {
    let mut log = Log::new();
    for i in 1..=600u64 {
        log.apply_at(i, submit(&spec("w", vec![step("a", &[])]), ""));
        log.apply_at(i, cancel(i));
    }
    let now = 600 + HOUR_MS;
    let due = log.state.purge_due(now, HOUR_MS, DAY_MS, PURGE_BATCH_MAX);
    assert_eq!(due.workflows.len(), PURGE_BATCH_MAX);
    assert_eq!(due.workflows.first(), Some(&WorkflowId(1)));
    let mut rounds = 0;
    loop {
        let due = log.state.purge_due(now, HOUR_MS, DAY_MS, PURGE_BATCH_MAX);
        if due.workflows.is_empty() {
            break;
        }
        let ids: Vec<u64> = due.workflows.iter().map(|id| id.0).collect();
        log.apply_at(now, purge(&ids));
        rounds += 1;
    }
    assert_eq!(rounds, 3, "600 workflows in commands of at most 256");
    assert_eq!(log.state.workflow_count(), 0);
}

#[test]
fn the_history_holds_every_event_of_a_workflow_in_order_with_who_asked() {
    let mut log = Log::new();
    let agent = match log.apply(Command::RegisterAgent(RegisterAgentCommand {
        namespaces: Default::default(),
        name: "a1".into(),
        labels: Default::default(),
        slots: 2,
        cpu_millis: 1000,
        memory_mb: 1000,
        task_types: vec![],
    })) {
        Response::AgentRegistered { agent_id } => agent_id,
        other => panic!("{other:?}"),
    };
    log.apply(submit(
        &spec("pair", vec![step("a", &[]), step("b", &["a"])]),
        "",
    ));
    let Response::Assigned { attempts } = log.apply(Command::Assign {
        assignments: vec![Assignment {
            workflow_id: WorkflowId(1),
            step: StepIndex(0),
            agent_id: agent,
        }],
    }) else {
        panic!("not assigned")
    };
    log.apply(Command::Complete(CompleteCommand {
        attempt_id: attempts[0].unwrap(),
        agent_id: agent,
        success: true,
        output: "x".repeat(100_000),
        error: "warn".into(),
        exit_code: Some(0),
    }));
    log.apply(cancel(1));
    let history = log.state.history(WorkflowId(1)).unwrap();
    let published: Vec<_> = log
        .events
        .iter()
        .filter(|e| e.workflow_id == 1)
        .cloned()
        .collect();
    assert_eq!(history, published);
    let finished = history
        .iter()
        .find(|e| e.kind() == pb::EventKind::StepFinished)
        .unwrap();
    // The size reported, not the tail kept.
    assert_eq!((finished.output_bytes, finished.error_bytes), (100_000, 4));
    let last = history.last().unwrap();
    assert_eq!(last.kind(), pb::EventKind::WorkflowFinished);
    assert_eq!(last.actor, "token alice (00aa)");
    // Kept through a snapshot.
    let decoded = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(decoded.history(WorkflowId(1)).unwrap(), history);
}

#[test]
fn the_archive_gets_exactly_what_the_entry_purges() {
    let mut log = Log::new();
    for i in 1..=3u64 {
        log.apply_at(1_000, submit(&spec("w", vec![step("a", &[])]), ""));
        if i != 3 {
            log.apply_at(1_000, cancel(i));
        }
    }
    log.apply_at(1_000, submit(&spec("w", vec![step("a", &[])]), ""));
    log.apply_at(1_000, cancel(4));
    let entry = LogEntry {
        time_ms: 1_000 + HOUR_MS,
        // Twice in one batch, a running workflow, and one retried earlier in the same batch
        // (running again when the purge applies): each workflow the entry purges, once.
        command: Command::Batch(vec![retry(4, ""), purge(&[1, 3, 4]), purge(&[1, 2])]),
    };
    let (at, doomed) = log.state.workflows_to_purge(log.index + 1, &entry);
    assert_eq!(at, 1_000 + HOUR_MS);
    let ids: Vec<_> = doomed.iter().map(|(w, _)| w.id).collect();
    assert_eq!(ids, [WorkflowId(1), WorkflowId(2)]);
    assert!(doomed.iter().all(|(_, retention)| *retention == HOUR_MS));
    let Response::Batch(responses) = log.apply_at(entry.time_ms, entry.command) else {
        panic!("a batch answers with a batch")
    };
    let purged: u32 = responses
        .iter()
        .map(|r| match r {
            Response::Purged { workflows, .. } => *workflows,
            _ => 0,
        })
        .sum();
    assert_eq!(purged as usize, doomed.len());
}

fn assign_at(log: &mut Log, time_ms: u64, id: u64, step: u32, agent: AgentId) -> Option<AttemptId> {
    let Response::Assigned { attempts } = log.apply_at(
        time_ms,
        Command::Assign {
            assignments: vec![Assignment {
                workflow_id: WorkflowId(id),
                step: StepIndex(step),
                agent_id: agent,
            }],
        },
    ) else {
        panic!("an assign answers with attempts")
    };
    attempts[0]
}

fn report_at(log: &mut Log, time_ms: u64, attempt: AttemptId, agent: AgentId, success: bool) {
    let response = log.apply_at(
        time_ms,
        Command::Complete(CompleteCommand {
            attempt_id: attempt,
            agent_id: agent,
            success,
            output: format!("out of {attempt}"),
            error: if success {
                String::new()
            } else {
                "boom".into()
            },
            exit_code: Some(if success { 0 } else { 1 }),
        }),
    );
    assert_eq!(response, Response::Completed);
}

fn pause(id: u64, paused: bool) -> Command {
    Command::Pause(PauseCommand {
        workflow_id: WorkflowId(id),
        paused,
        actor: "token ops (00bb)".into(),
    })
}

#[test]
fn a_paused_workflow_starts_no_step_and_its_waiting_time_is_not_counted() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    let mut deadline = step("b", &["a"]);
    deadline.schedule_to_start_timeout_ms = 10_000;
    log.apply_at(
        1_000,
        submit(&spec("w", vec![step("a", &[]), deadline]), ""),
    );
    let a = assign_at(&mut log, 1_000, 1, 0, agent).unwrap();
    assert_eq!(
        log.apply_at(2_000, pause(1, true)),
        Response::Paused { changed: true }
    );
    assert_eq!(
        log.apply_at(2_000, pause(1, true)),
        Response::Paused { changed: false },
        "pausing twice changes nothing"
    );
    // The running step finishes; the step it frees waits outside the queue.
    report_at(&mut log, 3_000, a, agent, true);
    let workflow = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(workflow.steps[1].state, StepState::Ready);
    assert!(log.state.ready_queue().next().is_none());
    assert_eq!(
        log.state.pending_reason(&workflow, StepIndex(1)).as_deref(),
        Some("the workflow is paused (baton resume)")
    );
    assert_eq!(
        assign_at(&mut log, 3_000, 1, 1, agent),
        None,
        "an assignment proposed before the pause is refused at apply"
    );
    // Paused far longer than the step's schedule-to-start timeout: it does not fail.
    assert!(!log.state.tick_due(50_000));
    log.apply_at(50_000, Command::Tick);
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().steps[1].state,
        StepState::Ready
    );
    assert_eq!(
        log.apply_at(50_000, pause(1, false)),
        Response::Paused { changed: true }
    );
    // Queued again; it became ready while paused, so none of its 10 s is used yet.
    let key = log.state.ready_queue().next().copied().unwrap();
    assert_eq!(key.ready_at_ms, 50_000);
    assert!(!log.state.tick_due(50_000 + 9_999));
    assert!(log.state.tick_due(50_000 + 10_000));
    let b = assign_at(&mut log, 51_000, 1, 1, agent).unwrap();
    report_at(&mut log, 52_000, b, agent, true);
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().state,
        WorkflowState::Succeeded
    );
    let kinds: Vec<_> = log.kinds(1).into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&pb::EventKind::WorkflowPaused));
    assert!(kinds.contains(&pb::EventKind::WorkflowResumed));
    // A finished workflow cannot be paused.
    assert!(matches!(
        log.apply_at(53_000, pause(1, true)),
        Response::Rejected { .. }
    ));
}

fn retry(id: u64, from: &str) -> Command {
    Command::Retry(RetryCommand {
        workflow_id: WorkflowId(id),
        from_step: from.into(),
        actor: "token ops (00bb)".into(),
    })
}

#[test]
fn a_retry_reruns_the_failed_step_and_what_follows_with_new_fencing_tokens() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    // a -> b -> c, and d beside them: b fails, so c is skipped; a and d succeed.
    log.apply_at(
        1_000,
        submit(
            &spec(
                "w",
                vec![
                    step("a", &[]),
                    step("b", &["a"]),
                    step("c", &["b"]),
                    step("d", &[]),
                ],
            ),
            "",
        ),
    );
    let a = assign_at(&mut log, 1_000, 1, 0, agent).unwrap();
    let d = assign_at(&mut log, 1_000, 1, 3, agent).unwrap();
    report_at(&mut log, 2_000, a, agent, true);
    report_at(&mut log, 2_000, d, agent, true);
    let b = assign_at(&mut log, 2_000, 1, 1, agent).unwrap();
    report_at(&mut log, 3_000, b, agent, false);
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().state,
        WorkflowState::Failed
    );
    assert!(matches!(
        log.apply_at(3_000, retry(1, "nope")),
        Response::Rejected { reason } if reason.contains("its steps are a, b, c, d")
    ));

    assert_eq!(
        log.apply_at(4_000, retry(1, "")),
        Response::Retried {
            steps: vec!["b".into(), "c".into()],
            state: WorkflowState::Running,
        }
    );
    let workflow = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(workflow.state, WorkflowState::Running);
    assert_eq!(workflow.finished_at_ms, 0);
    // a and d keep their results; b is ready at once (a is done), c waits for it.
    assert_eq!(workflow.steps[0].output, format!("out of {a}"));
    assert_eq!(workflow.steps[3].state, StepState::Succeeded);
    assert_eq!(workflow.steps[1].state, StepState::Ready);
    assert_eq!(workflow.steps[2].state, StepState::Waiting);
    assert_eq!(workflow.steps[1].earlier.last().unwrap().attempt_id, b);
    // A running workflow cannot be retried again.
    assert!(matches!(
        log.apply_at(4_000, retry(1, "")),
        Response::Rejected { .. }
    ));
    let b2 = assign_at(&mut log, 5_000, 1, 1, agent).unwrap();
    assert!(b2 > b, "a new attempt, a new fencing token");
    // The stale attempt's report is refused.
    assert!(matches!(
        log.apply_at(
            5_000,
            Command::Complete(CompleteCommand {
                attempt_id: b,
                agent_id: agent,
                success: true,
                output: String::new(),
                error: String::new(),
                exit_code: None,
            })
        ),
        Response::ReportRefused { .. }
    ));
    report_at(&mut log, 6_000, b2, agent, true);
    let c = assign_at(&mut log, 6_000, 1, 2, agent).unwrap();
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().steps[1].output,
        format!("out of {b2}"),
        "what c reads is the rerun b's output"
    );
    report_at(&mut log, 7_000, c, agent, true);
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().state,
        WorkflowState::Succeeded
    );

    // From a step that succeeded: it and everything after it run again.
    assert_eq!(
        log.apply_at(8_000, retry(1, "a")),
        Response::Retried {
            steps: vec!["a".into(), "b".into(), "c".into()],
            state: WorkflowState::Running,
        }
    );
    let workflow = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(workflow.steps[3].state, StepState::Succeeded);
    assert_eq!(
        workflow.steps[0].earlier.last().unwrap().outcome,
        super::workflow::AttemptOutcome::Succeeded
    );
    assert!(
        log.state
            .purge_due(u64::MAX, HOUR_MS, DAY_MS, 256)
            .workflows
            .is_empty(),
        "a running workflow is never due for purge"
    );
}

#[test]
fn a_workflow_past_its_timeout_ends_timed_out_and_its_attempts_lose_their_leases() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    let mut bounded = spec("w", vec![step("a", &[]), step("b", &["a"])]);
    bounded.timeout_ms = 60_000;
    log.apply_at(1_000, submit(&bounded, ""));
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().deadline_ms,
        61_000
    );
    let a = assign_at(&mut log, 2_000, 1, 0, agent).unwrap();
    assert!(!log.state.tick_due(60_999));
    assert!(log.state.tick_due(61_000));
    log.apply_at(61_000, Command::Tick);
    let workflow = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(workflow.state, WorkflowState::TimedOut);
    assert!(
        workflow.reason.starts_with("timed out"),
        "{}",
        workflow.reason
    );
    assert!(
        workflow
            .steps
            .iter()
            .all(|s| s.state == StepState::Cancelled)
    );
    assert!(log.state.live_attempt(a).is_none(), "its lease is gone");
    // Its stopped attempt keeps its share of the agent until the leader ends it.
    assert!(!log.state.tick_due(u64::MAX));
    assert_eq!(log.state.allocation(agent).slots, 1);
    log.apply_at(67_000, Command::ExpireLeases { attempts: vec![a] });
    assert_eq!(log.state.allocation(agent).slots, 0);
    // A retry runs it again with a new deadline, from the retry.
    log.apply_at(70_000, retry(1, ""));
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().deadline_ms,
        130_000
    );
    assert!(log.state.tick_due(130_000));
}

#[test]
fn a_step_ready_before_a_pause_keeps_what_it_had_waited() {
    let mut log = Log::new();
    let mut deadline = step("a", &[]);
    deadline.schedule_to_start_timeout_ms = 10_000;
    log.apply_at(1_000, submit(&spec("w", vec![deadline]), ""));
    log.apply_at(4_000, pause(1, true));
    log.apply_at(100_000, pause(1, false));
    // 3 s waited before the pause; 7 s left after the resume.
    let key = log.state.ready_queue().next().copied().unwrap();
    assert_eq!(key.ready_at_ms, 1_000 + 96_000);
    assert!(!log.state.tick_due(106_999));
    assert!(log.state.tick_due(107_000));
}

fn wait_step(name: &str, deps: &[&str], signal: &str, timeout_ms: u64) -> pb::StepSpec {
    pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Wait(pb::WaitTask {
            signal: signal.into(),
            timeout_ms,
        })),
        ..Default::default()
    }
}

fn signal(id: u64, step: &str, data: &str, reject: bool) -> Command {
    Command::Signal(SignalCommand {
        workflow_id: WorkflowId(id),
        step: step.into(),
        data: data.into(),
        reject,
        actor: "token lead (00cc)".into(),
    })
}

fn approval_spec() -> pb::WorkflowSpec {
    spec(
        "release",
        vec![
            step("build", &[]),
            wait_step("approve", &["build"], "go-ahead", HOUR_MS),
            step("deploy", &["approve"]),
        ],
    )
}

#[test]
fn an_approval_waits_on_no_agent_then_succeeds_with_the_signal_data() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 4);
    log.apply_at(1_000, submit(&approval_spec(), ""));
    let build = assign_at(&mut log, 1_000, 1, 0, agent).unwrap();
    // Too early: the wait step is not waiting yet.
    assert!(matches!(
        log.apply_at(1_500, signal(1, "approve", "{}", false)),
        Response::Rejected { reason } if reason.contains("it is waiting")
    ));
    report_at(&mut log, 2_000, build, agent, true);
    let workflow = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(workflow.steps[1].state, StepState::AwaitingSignal);
    assert!(log.state.ready_queue().next().is_none(), "not for an agent");
    assert_eq!(
        assign_at(&mut log, 2_000, 1, 1, agent),
        None,
        "never assigned"
    );
    assert!(
        log.state
            .pending_reason(&workflow, StepIndex(1))
            .unwrap()
            .starts_with("signal \"go-ahead\" (baton signal 1 approve)")
    );
    assert!(matches!(
        log.apply_at(2_500, signal(1, "deploy", "", false)),
        Response::Rejected { .. }
    ));
    assert_eq!(
        log.apply_at(3_000, signal(1, "approve", "{\"by\":\"lead\"}", false)),
        Response::Signalled
    );
    let workflow = log.state.workflow(WorkflowId(1)).unwrap().clone();
    assert_eq!(workflow.steps[1].state, StepState::Succeeded);
    assert_eq!(workflow.steps[1].output, "{\"by\":\"lead\"}");
    assert_eq!(workflow.steps[2].state, StepState::Ready);
    assert!(!log.state.tick_due(u64::MAX), "its timeout is forgotten");
    // Answered once: a second signal is refused.
    assert!(matches!(
        log.apply_at(3_000, signal(1, "approve", "", false)),
        Response::Rejected { .. }
    ));
    let history = log.state.history(WorkflowId(1)).unwrap();
    let finished = history
        .iter()
        .find(|e| e.kind() == pb::EventKind::StepFinished && e.step == "approve")
        .unwrap();
    assert_eq!(finished.actor, "token lead (00cc)");
    assert!(
        history
            .iter()
            .any(|e| e.kind() == pb::EventKind::StepAwaitingSignal)
    );
}

#[test]
fn a_rejection_or_a_timeout_fails_the_wait_and_a_retry_waits_again() {
    let mut log = Log::new();
    let root_wait = || {
        spec(
            "gate",
            vec![
                wait_step("approve", &[], "go-ahead", HOUR_MS),
                step("deploy", &["approve"]),
            ],
        )
    };
    log.apply_at(1_000, submit(&root_wait(), ""));
    log.apply_at(1_000, submit(&root_wait(), ""));
    assert_eq!(
        log.apply_at(2_000, signal(1, "approve", "not today", true)),
        Response::Signalled
    );
    let rejected = log.state.workflow(WorkflowId(1)).unwrap();
    assert_eq!(rejected.state, WorkflowState::Failed);
    assert_eq!(
        rejected.steps[0].error,
        "signal \"go-ahead\" rejected by token lead (00cc): not today"
    );
    assert_eq!(rejected.steps[1].state, StepState::Skipped);
    // Workflow 2 waits past its hour.
    assert!(!log.state.tick_due(1_000 + HOUR_MS - 1));
    assert!(log.state.tick_due(1_000 + HOUR_MS));
    log.apply_at(1_000 + HOUR_MS, Command::Tick);
    let timed_out = log.state.workflow(WorkflowId(2)).unwrap();
    assert_eq!(timed_out.steps[0].state, StepState::Failed);
    assert_eq!(timed_out.steps[0].error, "no signal \"go-ahead\" within 1h");
    // A retry puts the gate back: it waits for a new signal.
    log.apply_at(2 * HOUR_MS, retry(1, ""));
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().steps[0].state,
        StepState::AwaitingSignal
    );
    // Cancelling a waiting workflow forgets its deadline.
    log.apply_at(2 * HOUR_MS, cancel(1));
    assert!(!log.state.tick_due(u64::MAX));
}

#[test]
fn retries_of_one_workflow_are_bounded() {
    let mut log = Log::new();
    log.apply_at(1_000, submit(&spec("w", vec![step("a", &[])]), ""));
    log.apply_at(1_000, cancel(1));
    for n in 0..baton_proto::limits::RETRIES_PER_WORKFLOW_MAX {
        assert!(
            matches!(log.apply_at(2_000, retry(1, "")), Response::Retried { .. }),
            "retry {n}"
        );
        log.apply_at(2_000, cancel(1));
    }
    assert!(matches!(
        log.apply_at(3_000, retry(1, "")),
        Response::Rejected { reason } if reason.contains("submit it anew")
    ));
    // Each retry kept the previous attempt of what it reran: never the same one twice.
    let run = &log.state.workflow(WorkflowId(1)).unwrap().steps[0];
    assert!(run.earlier.len() <= run.attempts as usize);
}

// ---- schedules ----

fn create_schedule(
    name: &str,
    every_ms: u64,
    policy: pb::OverlapPolicy,
    catchup_window_ms: Option<u64>,
) -> Command {
    let schedule = pb::ScheduleSpec {
        name: name.into(),
        every_ms,
        overlap: policy as i32,
        catchup_window_ms,
        ..Default::default()
    };
    Command::CreateSchedule(CreateScheduleCommand {
        namespace: Default::default(),
        spec: schedule.encode_to_vec(),
        workflow: spec("job", vec![step("a", &[])]).encode_to_vec(),
        params: Default::default(),
        replace: false,
    })
}

/// The runs of schedule `name` so far: (nominal time, id), oldest first.
fn runs(log: &Log, name: &str) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = log
        .state
        .workflows
        .values()
        .filter_map(|w| {
            let run = w.schedule.as_ref()?;
            (&*run.name == name).then_some((run.nominal_ms, w.id.0))
        })
        .collect();
    runs.sort_unstable();
    runs
}

fn schedule_of<'a>(log: &'a Log, name: &str) -> &'a Schedule {
    log.state.schedule(name).expect("schedule exists")
}

#[test]
fn a_schedule_starts_one_run_per_time_however_many_ticks_see_it() {
    let mut log = Log::new();
    let created = log.apply_at(
        1_000,
        create_schedule("every10", 10_000, pb::OverlapPolicy::Allow, None),
    );
    assert_eq!(
        created,
        Response::ScheduleCreated {
            created: true,
            next_ms: 10_000
        }
    );
    assert!(!log.state.schedule_due_at(9_999));
    assert!(log.state.schedule_due_at(10_000));
    log.apply_at(9_999, Command::Tick);
    assert!(runs(&log, "every10").is_empty(), "not before its time");
    // Two leaders (or a retried proposal) tick at the same time: one run.
    log.apply_at(10_000, Command::Tick);
    log.apply_at(10_000, Command::Tick);
    log.apply_at(10_500, Command::Tick);
    assert_eq!(runs(&log, "every10"), [(10_000, 1)]);
    let run = &log.state.workflows[&WorkflowId(1)];
    assert_eq!(&*run.idempotency_key, "schedule:every10:10000");
    assert_eq!(run.to_proto(false, None).schedule, "every10");
    assert_eq!(schedule_of(&log, "every10").next_ms, Some(20_000));
    log.apply_at(20_000, Command::Tick);
    assert_eq!(runs(&log, "every10"), [(10_000, 1), (20_000, 2)]);
    let s = schedule_of(&log, "every10");
    assert_eq!((s.started, s.skipped, s.missed), (2, 0, 0));
    // A second create of the name is refused; a replace keeps the counters.
    assert!(matches!(
        log.apply_at(
            20_001,
            create_schedule("every10", 5_000, pb::OverlapPolicy::Allow, None)
        ),
        Response::Rejected { .. }
    ));
    let mut replace = create_schedule("every10", 5_000, pb::OverlapPolicy::Allow, None);
    if let Command::CreateSchedule(c) = &mut replace {
        c.replace = true;
    }
    assert_eq!(
        log.apply_at(21_000, replace),
        Response::ScheduleCreated {
            created: false,
            next_ms: 25_000
        }
    );
    assert_eq!(schedule_of(&log, "every10").started, 2);
}

#[test]
fn each_overlap_policy_does_what_it_says() {
    use pb::OverlapPolicy::*;
    let outcome = |policy: pb::OverlapPolicy| {
        let mut log = Log::new();
        log.apply_at(0, create_schedule("s", 10_000, policy, None));
        log.apply_at(10_000, Command::Tick);
        log.apply_at(20_000, Command::Tick);
        log.apply_at(30_000, Command::Tick);
        log
    };
    // skip: run 1 still runs at 20 s and 30 s.
    let log = outcome(Skip);
    assert_eq!(runs(&log, "s"), [(10_000, 1)]);
    assert_eq!(schedule_of(&log, "s").skipped, 2);
    // allow: three runs at once.
    let log = outcome(Allow);
    assert_eq!(runs(&log, "s").len(), 3);
    assert_eq!(schedule_of(&log, "s").running.len(), 3);
    // cancel_previous: each new run cancels the one before.
    let log = outcome(CancelPrevious);
    assert_eq!(runs(&log, "s"), [(10_000, 1), (20_000, 2), (30_000, 3)]);
    let states: Vec<WorkflowState> = (1..=3)
        .map(|i| log.state.workflows[&WorkflowId(i)].state)
        .collect();
    assert_eq!(
        states,
        [
            WorkflowState::Cancelled,
            WorkflowState::Cancelled,
            WorkflowState::Running
        ]
    );
    assert_eq!(schedule_of(&log, "s").running, [(30_000, WorkflowId(3))]);
    // skip, with the running run ending in the very entry that reaches the next time (its
    // workflow timeout): the time runs.
    let mut log = Log::new();
    log.apply_at(0, create_schedule("t", 10_000, Skip, None));
    if let Some(s) = log.state.schedules.get_mut("t") {
        // Runs of this schedule time out after 5 s.
        let s = Arc::make_mut(s);
        let mut workflow = pb::WorkflowSpec::decode(s.workflow.as_slice()).unwrap();
        workflow.timeout_ms = 5_000;
        s.workflow = workflow.encode_to_vec();
    }
    log.apply_at(10_000, Command::Tick);
    log.apply_at(20_000, Command::Tick);
    assert_eq!(runs(&log, "t"), [(10_000, 1), (20_000, 2)]);
    assert_eq!(
        log.state.workflows[&WorkflowId(1)].state,
        WorkflowState::TimedOut
    );
    assert_eq!(schedule_of(&log, "t").skipped, 0);
    // buffer_one: 20 s waits, 30 s is skipped; 20 s starts when run 1 ends.
    let mut log = outcome(BufferOne);
    assert_eq!(runs(&log, "s"), [(10_000, 1)]);
    let s = schedule_of(&log, "s");
    assert_eq!((s.buffered, s.skipped), (Some(20_000), 1));
    log.apply_at(
        31_000,
        Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(1),
            reason: String::new(),
            actor: String::new(),
        }),
    );
    assert_eq!(runs(&log, "s"), [(10_000, 1), (20_000, 2)]);
    let s = schedule_of(&log, "s");
    assert_eq!(s.buffered, None);
    assert_eq!(s.running, [(20_000, WorkflowId(2))]);
}

#[test]
fn after_an_outage_times_inside_the_catch_up_window_run_and_older_ones_are_missed() {
    let mut log = Log::new();
    log.apply_at(
        0,
        create_schedule("minutely", 60_000, pb::OverlapPolicy::Allow, Some(150_000)),
    );
    // The cluster was down from 30 s to 600 s: times 60 s .. 600 s came and went.
    log.apply_at(600_000, Command::Tick);
    assert_eq!(
        runs(&log, "minutely")
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        [480_000, 540_000, 600_000],
        "the times at most 150 s old run, oldest first"
    );
    let s = schedule_of(&log, "minutely");
    assert_eq!((s.started, s.missed), (3, 7));
    assert_eq!(s.next_ms, Some(660_000));
    // A window of 0: only a time reached on time (within the scheduling grace) runs.
    let mut log = Log::new();
    log.apply_at(
        0,
        create_schedule("strict", 60_000, pb::OverlapPolicy::Allow, Some(0)),
    );
    log.apply_at(60_000, Command::Tick);
    log.apply_at(180_001, Command::Tick);
    assert_eq!(
        runs(&log, "strict"),
        [(60_000, 1), (180_000, 2)],
        "120 s is a minute late and missed; 180 s, 1 ms late, runs"
    );
    assert_eq!(schedule_of(&log, "strict").missed, 1);
}

#[test]
fn pause_resume_trigger_backfill_and_delete() {
    let mut log = Log::new();
    log.apply_at(
        0,
        create_schedule("s", 10_000, pb::OverlapPolicy::Allow, None),
    );
    let pause = |paused| {
        Command::PauseSchedule(PauseScheduleCommand {
            name: "s".into(),
            paused,
        })
    };
    assert_eq!(
        log.apply_at(1_000, pause(true)),
        Response::ScheduleChanged { changed: true }
    );
    assert_eq!(
        log.apply_at(1_000, pause(true)),
        Response::ScheduleChanged { changed: false }
    );
    assert!(
        !log.state.schedule_due_at(u64::MAX),
        "a paused schedule is never due"
    );
    log.apply_at(35_000, Command::Tick);
    assert!(runs(&log, "s").is_empty());
    // Resumed at 35 s: it fires from 40 s; 10 s .. 30 s are neither run nor missed.
    log.apply_at(35_000, pause(false));
    assert_eq!(schedule_of(&log, "s").next_ms, Some(40_000));
    assert_eq!(schedule_of(&log, "s").missed, 0);
    // A trigger runs now, at the state's time.
    let fired = log.apply_at(36_000, Command::TriggerSchedule { name: "s".into() });
    assert_eq!(
        fired,
        Response::ScheduleFired {
            workflow_id: Some(WorkflowId(1)),
            nominal_ms: 36_000,
            outcome: "started".into()
        }
    );
    // A backfill runs the range's times that have none; again, it starts nothing.
    let backfill = || {
        Command::BackfillSchedule(BackfillScheduleCommand {
            name: "s".into(),
            from_ms: 10_000,
            to_ms: 30_000,
        })
    };
    assert_eq!(
        log.apply_at(37_000, backfill()),
        Response::Backfilled {
            stopped: Default::default(),
            started: vec![
                (10_000, WorkflowId(2)),
                (20_000, WorkflowId(3)),
                (30_000, WorkflowId(4))
            ],
            already_run: 0
        }
    );
    assert_eq!(
        log.apply_at(38_000, backfill()),
        Response::Backfilled {
            stopped: Default::default(),
            started: vec![],
            already_run: 3
        }
    );
    // Times still to come are the schedule's own: a backfill past now starts up to now only.
    let ahead = Command::BackfillSchedule(BackfillScheduleCommand {
        name: "s".into(),
        from_ms: 30_000,
        to_ms: 90_000,
    });
    assert_eq!(
        log.apply_at(38_000, ahead),
        Response::Backfilled {
            stopped: Default::default(),
            started: vec![],
            already_run: 1
        }
    );
    let too_wide = Command::BackfillSchedule(BackfillScheduleCommand {
        name: "s".into(),
        from_ms: 1,
        to_ms: 10_000 * 2_000,
    });
    assert!(matches!(
        log.apply_at(10_000 * 2_000, too_wide),
        Response::Rejected { .. }
    ));
    // Deleted: nothing fires any more; its runs go on with its name.
    assert_eq!(
        log.apply_at(39_000, Command::DeleteSchedule { name: "s".into() }),
        Response::ScheduleChanged { changed: true }
    );
    assert!(!log.state.schedule_due_at(u64::MAX));
    log.apply_at(50_000, Command::Tick);
    assert_eq!(runs(&log, "s").len(), 4);
    assert_eq!(
        log.apply_at(39_000, Command::TriggerSchedule { name: "s".into() }),
        Response::NoSchedule { name: "s".into() }
    );
}

#[test]
fn a_schedule_survives_a_snapshot_and_jitter_delays_alike_everywhere() {
    let mut log = Log::new();
    // A catch-up window of 0: a run that starts in its jitter is not late.
    let mut create = create_schedule("j", 60_000, pb::OverlapPolicy::Skip, Some(0));
    if let Command::CreateSchedule(c) = &mut create {
        let mut spec = pb::ScheduleSpec::decode(c.spec.as_slice()).unwrap();
        spec.jitter_ms = 30_000;
        c.spec = spec.encode_to_vec();
    }
    log.apply_at(0, create);
    let delay = schedules::jitter_ms("j", 60_000, 30_000);
    assert!(delay <= 30_000);
    assert_eq!(delay, schedules::jitter_ms("j", 60_000, 30_000));
    assert!(!log.state.schedule_due_at(60_000 + delay - 1) || delay == 0);
    assert!(log.state.schedule_due_at(60_000 + delay));
    let copy = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(copy, log.state);
    assert_eq!(copy.state_hash(), log.state.state_hash());
    assert!(
        copy.schedule_due_at(60_000 + delay),
        "the due index is rebuilt"
    );
    log.apply_at(60_000 + delay, Command::Tick);
    assert_eq!(
        runs(&log, "j"),
        [(60_000, 1)],
        "the run keeps its nominal time"
    );
    assert_eq!(schedule_of(&log, "j").missed, 0);
}

// ---- templates ----

fn apply_template(spec: &pb::WorkflowSpec) -> Command {
    Command::ApplyTemplate(ApplyTemplateCommand {
        namespace: Default::default(),
        spec: spec.encode_to_vec(),
    })
}

#[test]
fn a_changed_spec_makes_a_new_template_version_and_runs_record_theirs() {
    let mut log = Log::new();
    let v1 = spec("report", vec![step("a", &[])]);
    assert_eq!(
        log.apply(apply_template(&v1)),
        Response::TemplateApplied {
            version: 1,
            created: true
        }
    );
    assert_eq!(
        log.apply(apply_template(&v1)),
        Response::TemplateApplied {
            version: 1,
            created: false
        },
        "an equal spec keeps its version"
    );
    let v2 = spec("report", vec![step("a", &[]), step("b", &["a"])]);
    assert_eq!(
        log.apply(apply_template(&v2)),
        Response::TemplateApplied {
            version: 2,
            created: true
        }
    );
    let template = log.state.template("report").unwrap();
    assert_eq!(
        template
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(template.version(0).unwrap().version, 2, "0 is the latest");
    // A submit the API resolved to version 1 records it; runs of one version share one spec.
    let submit_v1 = |key: &str| {
        Command::Submit(SubmitCommand {
            actor: String::new(),
            namespace: Default::default(),
            spec: template.version(1).unwrap().spec.clone(),
            idempotency_key: key.into(),
            params: Default::default(),
            template: Some(TemplateRef {
                name: "report".into(),
                version: 1,
            }),
        })
    };
    let (first, second) = (submit_v1("k1"), submit_v1("k2"));
    log.apply(first);
    log.apply(second);
    let (a, b) = (
        &log.state.workflows[&WorkflowId(1)],
        &log.state.workflows[&WorkflowId(2)],
    );
    assert!(
        Arc::ptr_eq(&a.spec, &b.spec),
        "runs of one version share their spec"
    );
    let view = a.to_proto(false, None);
    assert_eq!(
        (view.template.as_str(), view.template_version),
        ("report", 1)
    );
    assert_eq!(
        log.apply(Command::DeleteTemplate {
            name: "report".into()
        }),
        Response::Done
    );
    assert_eq!(
        log.apply(Command::DeleteTemplate {
            name: "report".into()
        }),
        Response::NoTemplate {
            name: "report".into()
        }
    );
    assert_eq!(
        log.state.workflows[&WorkflowId(1)].template,
        Some(TemplateRef {
            name: "report".into(),
            version: 1
        }),
        "runs keep their template"
    );
}

#[test]
fn a_schedule_of_a_template_runs_its_latest_version_and_counts_a_missing_one_as_skipped() {
    let mut log = Log::new();
    log.apply_at(0, apply_template(&spec("job", vec![step("a", &[])])));
    let schedule = pb::ScheduleSpec {
        name: "t".into(),
        template: "job".into(),
        every_ms: 10_000,
        overlap: pb::OverlapPolicy::Allow as i32,
        ..Default::default()
    };
    let created = log.apply_at(
        0,
        Command::CreateSchedule(CreateScheduleCommand {
            namespace: Default::default(),
            spec: schedule.encode_to_vec(),
            workflow: Vec::new(),
            params: Default::default(),
            replace: false,
        }),
    );
    assert!(
        matches!(created, Response::ScheduleCreated { .. }),
        "{created:?}"
    );
    log.apply_at(10_000, Command::Tick);
    log.apply_at(
        15_000,
        apply_template(&spec("job", vec![step("a", &[]), step("b", &["a"])])),
    );
    log.apply_at(20_000, Command::Tick);
    let versions: Vec<u32> = runs(&log, "t")
        .iter()
        .map(|(_, id)| {
            log.state.workflows[&WorkflowId(*id)]
                .template
                .as_ref()
                .unwrap()
                .version
        })
        .collect();
    assert_eq!(
        versions,
        [1, 2],
        "each run takes the latest version when it starts"
    );
    log.apply_at(21_000, Command::DeleteTemplate { name: "job".into() });
    log.apply_at(30_000, Command::Tick);
    let s = schedule_of(&log, "t");
    assert_eq!((s.started, s.skipped), (2, 1));
    assert!(
        s.last_error.contains("template \"job\" does not exist"),
        "{}",
        s.last_error
    );
    assert_eq!(s.next_ms, Some(40_000), "it goes on to its next time");
    // A schedule naming a template that does not exist is refused.
    let missing = pb::ScheduleSpec {
        name: "u".into(),
        template: "nope".into(),
        every_ms: 10_000,
        ..Default::default()
    };
    assert!(matches!(
        log.apply_at(
            31_000,
            Command::CreateSchedule(CreateScheduleCommand {
                namespace: Default::default(),
                spec: missing.encode_to_vec(),
                workflow: Vec::new(),
                params: Default::default(),
                replace: false,
            })
        ),
        Response::Rejected { .. }
    ));
}

// ---- namespaces ----

fn create_namespace(name: &str) -> Command {
    Command::CreateNamespace(CreateNamespaceCommand {
        weight: Default::default(),
        quotas: Default::default(),
        name: name.into(),
        description: String::new(),
    })
}

fn submit_in(namespace: &str, spec: &pb::WorkflowSpec, key: &str) -> Command {
    match submit(spec, key) {
        Command::Submit(mut submit) => {
            submit.namespace = namespace.into();
            Command::Submit(submit)
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_namespace_keeps_its_keys_and_a_submit_to_a_missing_one_writes_nothing() {
    let mut log = Log::new();
    let job = spec("job", vec![step("a", &[])]);
    let before = log.state.clone();
    assert_eq!(
        log.apply(submit_in("team-a", &job, "k")),
        Response::Rejected {
            reason: "namespace team-a does not exist".into()
        }
    );
    assert_eq!(log.state.workflows, before.workflows, "nothing written");
    assert_eq!(log.apply(create_namespace("team-a")), Response::Done);
    assert_eq!(
        log.apply(create_namespace("team-a")),
        Response::NamespaceExists {
            name: "team-a".into()
        }
    );
    assert!(matches!(
        log.apply(create_namespace("default")),
        Response::NamespaceExists { .. }
    ));
    assert!(matches!(
        log.apply(create_namespace("Team_A")),
        Response::Rejected { .. }
    ));
    // One key, two namespaces: two workflows; again in one: the first.
    let Response::Submitted {
        workflow_id: in_default,
        created: true,
    } = log.apply(submit(&job, "k"))
    else {
        panic!("not created")
    };
    let Response::Submitted {
        workflow_id: in_team,
        created: true,
    } = log.apply(submit_in("team-a", &job, "k"))
    else {
        panic!("not created")
    };
    assert_ne!(in_default, in_team);
    assert_eq!(
        log.apply(submit_in("team-a", &job, "k")),
        Response::Submitted {
            workflow_id: in_team,
            created: false
        }
    );
    assert_eq!(
        log.apply(submit_in("default", &job, "k")),
        Response::Submitted {
            workflow_id: in_default,
            created: false
        },
        "`default` named or not is one namespace"
    );
    assert_eq!(&*log.state.workflow(in_team).unwrap().namespace, "team-a");
    assert_eq!(
        log.state
            .workflow(in_team)
            .unwrap()
            .to_proto(false, None)
            .namespace,
        "team-a"
    );
    // Its events say their namespace; `default`'s leave it empty.
    assert!(
        log.events
            .iter()
            .filter(|e| e.workflow_id == in_team.0)
            .all(|e| e.namespace == "team-a")
    );
    assert!(
        log.events
            .iter()
            .filter(|e| e.workflow_id == in_default.0)
            .all(|e| e.namespace.is_empty())
    );
    // A listing of one namespace sees only its own.
    let query = |namespaces: &[&str]| ListQuery {
        limit: 10,
        namespaces: Some(namespaces.iter().map(|n| n.to_string()).collect()),
        ..Default::default()
    };
    let ids = |q: ListQuery| {
        log.state
            .list(&q)
            .0
            .iter()
            .map(|w| w.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(query(&["team-a"])), [in_team]);
    assert_eq!(ids(query(&["default"])), [in_default]);
    assert_eq!(ids(query(&["default", "team-a"])), [in_team, in_default]);
    // A snapshot keeps it all.
    let copy = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(copy, log.state);
    assert_eq!(copy.state_hash(), log.state.state_hash());
}

#[test]
fn a_namespace_is_deleted_only_when_empty() {
    let mut log = Log::new();
    log.apply(create_namespace("team-a"));
    let job = spec("job", vec![step("a", &[])]);
    let Response::Submitted { workflow_id, .. } = log.apply(submit_in("team-a", &job, "")) else {
        panic!("not submitted")
    };
    log.apply(Command::ApplyTemplate(ApplyTemplateCommand {
        namespace: "team-a".into(),
        spec: job.encode_to_vec(),
    }));
    let Response::Rejected { reason } = log.apply(Command::DeleteNamespace {
        name: "team-a".into(),
    }) else {
        panic!("a namespace holding work was deleted")
    };
    assert_eq!(
        reason,
        "namespace team-a is not empty: it holds 1 workflows, 1 templates (delete them, revoke \
         the tokens, or wait for finished workflows' retention and the idempotency window to \
         end)"
    );
    assert!(matches!(
        log.apply(Command::DeleteNamespace {
            name: "default".into()
        }),
        Response::Rejected { .. }
    ));
    assert_eq!(
        log.apply(Command::DeleteNamespace {
            name: "team-b".into()
        }),
        Response::NoNamespace {
            name: "team-b".into()
        }
    );
    log.apply(cancel(workflow_id.0));
    log.apply_at(
        1_000_000_000,
        Command::Purge(PurgeCommand {
            workflows: vec![workflow_id],
            default_retention_ms: 1,
            idempotency_window_ms: 1,
        }),
    );
    assert_eq!(
        log.apply_at(
            1_000_000_001,
            Command::DeleteTemplate {
                name: "team-a/job".into()
            }
        ),
        Response::Done
    );
    // A live token naming it holds it too: deleted and created again, the namespace would be
    // the token's again.
    log.apply_at(
        1_000_000_002,
        Command::CreateToken(CreateTokenCommand {
            id: "t1".into(),
            name: "team-a-ci".into(),
            role: baton_security::TokenRole::Submitter,
            namespaces: [("team-a".into(), baton_security::TokenRole::Submitter)].into(),
            digest: vec![1; 32],
            bootstrap: false,
        }),
    );
    let Response::Rejected { reason } = log.apply_at(
        1_000_000_003,
        Command::DeleteNamespace {
            name: "team-a".into(),
        },
    ) else {
        panic!("a namespace a live token names was deleted")
    };
    assert!(reason.contains("it holds 1 live tokens"), "{reason}");
    log.apply_at(1_000_000_004, Command::RevokeToken { id: "t1".into() });
    assert_eq!(
        log.apply_at(
            1_000_000_005,
            Command::DeleteNamespace {
                name: "team-a".into()
            }
        ),
        Response::Done
    );
    assert!(!log.state.namespace_exists("team-a"));
    // A token for a namespace that does not exist is refused.
    assert!(matches!(
        log.apply_at(
            1_000_000_006,
            Command::CreateToken(CreateTokenCommand {
                id: "t2".into(),
                name: "late".into(),
                role: baton_security::TokenRole::Reader,
                namespaces: [("team-a".into(), baton_security::TokenRole::Reader)].into(),
                digest: vec![2; 32],
                bootstrap: false,
            })
        ),
        Response::Rejected { .. }
    ));
}

#[test]
fn templates_and_schedules_of_a_namespace_are_its_own_and_its_runs_run_there() {
    let mut log = Log::new();
    log.apply_at(1_000, create_namespace("team-a"));
    // One template name in two namespaces: two templates.
    let mine = spec("report", vec![step("a", &[])]);
    let theirs = spec("report", vec![step("a", &[]), step("b", &["a"])]);
    log.apply_at(1_000, apply_template(&mine));
    log.apply_at(
        1_000,
        Command::ApplyTemplate(ApplyTemplateCommand {
            namespace: "team-a".into(),
            spec: theirs.encode_to_vec(),
        }),
    );
    assert_eq!(
        log.state.template("team-a/report").unwrap().versions.len(),
        1
    );
    assert_eq!(log.state.template("report").unwrap().versions.len(), 1);
    // A schedule of team-a runs team-a's template, in team-a.
    let schedule = pb::ScheduleSpec {
        name: "nightly".into(),
        every_ms: 10_000,
        template: "report".into(),
        ..Default::default()
    };
    let created = log.apply_at(
        1_000,
        Command::CreateSchedule(CreateScheduleCommand {
            namespace: "team-a".into(),
            spec: schedule.encode_to_vec(),
            workflow: Vec::new(),
            params: Default::default(),
            replace: false,
        }),
    );
    assert!(
        matches!(created, Response::ScheduleCreated { .. }),
        "{created:?}"
    );
    assert!(log.state.schedule("nightly").is_none());
    log.apply_at(10_000, Command::Tick);
    let run = runs(&log, "team-a/nightly");
    assert_eq!(run.len(), 1);
    let workflow = log.state.workflow(WorkflowId(run[0].1)).unwrap();
    assert_eq!(&*workflow.namespace, "team-a");
    assert_eq!(
        workflow.spec.steps.len(),
        2,
        "team-a's version of the template"
    );
    let view = workflow.to_proto(false, None);
    assert_eq!(
        (view.schedule.as_str(), view.template.as_str()),
        ("nightly", "report")
    );
    // A schedule in a namespace that does not exist is refused.
    assert!(matches!(
        log.apply_at(
            10_000,
            Command::CreateSchedule(CreateScheduleCommand {
                namespace: "team-b".into(),
                spec: schedule.encode_to_vec(),
                workflow: Vec::new(),
                params: Default::default(),
                replace: false,
            })
        ),
        Response::Rejected { .. }
    ));
}

// ---- quotas ----

fn set_quotas(
    namespace: &str,
    running: Option<u64>,
    active: Option<u64>,
    rate: Option<(u32, u32)>,
) -> Command {
    Command::UpdateNamespace(UpdateNamespaceCommand {
        name: namespace.into(),
        running_workflows: running,
        active_steps: active,
        submits_per_second: rate.map(|r| r.0),
        submit_burst: rate.map(|r| r.1),
        ..Default::default()
    })
}

fn over(namespace: &str, quota: Quota, limit: u64) -> Response {
    Response::OverQuota(OverQuota {
        namespace: namespace.into(),
        quota,
        limit,
    })
}

#[test]
fn a_running_workflows_quota_refuses_the_next_and_changes_nothing() {
    let mut log = Log::new();
    log.apply(create_namespace("team-a"));
    log.apply(set_quotas("team-a", Some(2), None, None));
    let job = spec("job", vec![step("a", &[])]);
    for key in ["k1", "k2"] {
        assert!(matches!(
            log.apply(submit_in("team-a", &job, key)),
            Response::Submitted { created: true, .. }
        ));
    }
    assert_eq!(log.state.live("team-a").running, 2);
    let before = log.state.clone();
    assert_eq!(
        log.apply(submit_in("team-a", &job, "k3")),
        over("team-a", Quota::RunningWorkflows, 2)
    );
    assert_eq!(log.state.workflows, before.workflows, "nothing written");
    assert_eq!(log.state.idempotency_keys, before.idempotency_keys);
    // A repeat of a key already taken still answers with its workflow.
    assert!(matches!(
        log.apply(submit_in("team-a", &job, "k1")),
        Response::Submitted { created: false, .. }
    ));
    // Other namespaces are not held back.
    assert!(matches!(
        log.apply(submit(&job, "k3")),
        Response::Submitted { created: true, .. }
    ));
    // One ends: room for one more.
    let Response::Submitted { workflow_id, .. } = log.apply(submit_in("team-a", &job, "k1")) else {
        panic!()
    };
    log.apply(cancel(workflow_id.0));
    assert_eq!(log.state.live("team-a").running, 1);
    assert!(matches!(
        log.apply(submit_in("team-a", &job, "k3")),
        Response::Submitted { created: true, .. }
    ));
    // A retry runs a workflow again, so it counts too.
    assert_eq!(
        log.apply(Command::Retry(RetryCommand {
            workflow_id,
            from_step: String::new(),
            actor: String::new(),
        })),
        over("team-a", Quota::RunningWorkflows, 2)
    );
    // 0 lifts it.
    log.apply(set_quotas("team-a", Some(0), None, None));
    assert!(matches!(
        log.apply(submit_in("team-a", &job, "k4")),
        Response::Submitted { created: true, .. }
    ));
}

#[test]
fn an_active_steps_quota_counts_ready_and_running_steps() {
    let mut log = Log::new();
    log.apply(set_quotas("default", None, Some(3), None));
    let agent = register(&mut log, "x", 4);
    // Two roots and a step after them: 2 active.
    let fan = spec(
        "fan",
        vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])],
    );
    let Response::Submitted { workflow_id, .. } = log.apply(submit(&fan, "")) else {
        panic!()
    };
    assert_eq!(log.state.live("default").active_steps, 2);
    // Two more roots would make 4.
    assert_eq!(
        log.apply(submit(&fan, "")),
        over("default", Quota::ActiveSteps, 3)
    );
    // Running counts as much as ready.
    let attempt = assign(&mut log, workflow_id.0, 0, agent).unwrap();
    assert_eq!(log.state.live("default").active_steps, 2);
    let single = spec("one", vec![step("a", &[])]);
    assert!(matches!(
        log.apply(submit(&single, "")),
        Response::Submitted { created: true, .. }
    ));
    assert_eq!(log.state.live("default").active_steps, 3);
    assert_eq!(
        log.apply(submit(&single, "")),
        over("default", Quota::ActiveSteps, 3)
    );
    // A step that finished frees its place (its dependent waits for the other).
    report(&mut log, attempt, agent, true);
    assert_eq!(log.state.live("default").active_steps, 2);
    assert!(matches!(
        log.apply(submit(&single, "")),
        Response::Submitted { created: true, .. }
    ));
    let copy = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(copy.live("default"), log.state.live("default"));
}

#[test]
fn a_submit_rate_refills_with_the_states_time_across_any_leader() {
    let mut log = Log::new();
    // 2 a second, bursts of 3.
    log.apply_at(10_000, set_quotas("default", None, None, Some((2, 3))));
    let job = spec("job", vec![step("a", &[])]);
    for _ in 0..3 {
        assert!(matches!(
            log.apply_at(10_000, submit(&job, "")),
            Response::Submitted { created: true, .. }
        ));
    }
    assert_eq!(
        log.apply_at(10_000, submit(&job, "")),
        over("default", Quota::SubmitsPerSecond, 2)
    );
    // A leader whose clock is behind stamps an earlier time: the state's time does not go
    // back, so nothing refills.
    assert_eq!(
        log.apply_at(9_000, submit(&job, "")),
        over("default", Quota::SubmitsPerSecond, 2)
    );
    // Half a second later: one more.
    assert!(matches!(
        log.apply_at(10_500, submit(&job, "")),
        Response::Submitted { created: true, .. }
    ));
    assert_eq!(
        log.apply_at(10_500, submit(&job, "")),
        over("default", Quota::SubmitsPerSecond, 2)
    );
    // A snapshot carries the budget: a node restored from it refuses alike.
    let mut copy = ClusterState::decode(&log.state.encode()).unwrap();
    let refused = copy.apply(
        ApplyCtx { index: 999 },
        LogEntry {
            time_ms: 10_500,
            command: submit(&job, ""),
        },
    );
    assert_eq!(
        refused.response,
        over("default", Quota::SubmitsPerSecond, 2)
    );
    // A long quiet spell refills up to the burst, no more.
    for _ in 0..3 {
        assert!(matches!(
            log.apply_at(60_000, submit(&job, "")),
            Response::Submitted { created: true, .. }
        ));
    }
    assert_eq!(
        log.apply_at(60_000, submit(&job, "")),
        over("default", Quota::SubmitsPerSecond, 2)
    );
    // An update that leaves the rate alone keeps the bucket; one that changes it starts full.
    log.apply_at(60_000, set_quotas("default", Some(100), None, None));
    assert_eq!(
        log.apply_at(60_000, submit(&job, "")),
        over("default", Quota::SubmitsPerSecond, 2)
    );
    log.apply_at(60_000, set_quotas("default", None, None, Some((1, 1))));
    assert!(matches!(
        log.apply_at(60_000, submit(&job, "")),
        Response::Submitted { created: true, .. }
    ));
}

#[test]
fn a_schedule_run_a_quota_holds_back_is_skipped_and_says_why() {
    let mut log = Log::new();
    log.apply_at(1_000, set_quotas("default", Some(1), None, None));
    log.apply_at(1_000, submit(&spec("busy", vec![step("a", &[])]), ""));
    log.apply_at(
        1_000,
        create_schedule("every10", 10_000, pb::OverlapPolicy::Allow, None),
    );
    log.apply_at(10_000, Command::Tick);
    assert!(runs(&log, "every10").is_empty());
    let schedule = schedule_of(&log, "every10");
    assert_eq!(schedule.skipped, 1);
    assert!(
        schedule
            .last_error
            .contains("quota max_running_workflows of 1"),
        "{}",
        schedule.last_error
    );
    // A trigger now is refused by the quota, naming it.
    assert_eq!(
        log.apply_at(
            11_000,
            Command::TriggerSchedule {
                name: "every10".into()
            }
        ),
        over("default", Quota::RunningWorkflows, 1)
    );
    // A backfill starts what fits and says why it stopped.
    log.apply_at(11_000, set_quotas("default", Some(3), None, None));
    let Response::Backfilled {
        started, stopped, ..
    } = log.apply_at(
        50_000,
        Command::BackfillSchedule(BackfillScheduleCommand {
            name: "every10".into(),
            from_ms: 1,
            to_ms: 49_000,
        }),
    )
    else {
        panic!("not backfilled")
    };
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(stopped.map(|o| o.quota), Some(Quota::RunningWorkflows));
}

#[test]
fn a_namespace_with_keys_of_purged_workflows_waits_for_the_window() {
    let mut log = Log::new();
    log.apply(create_namespace("team-a"));
    let Response::Submitted { workflow_id, .. } =
        log.apply(submit_in("team-a", &spec("job", vec![step("a", &[])]), "k"))
    else {
        panic!()
    };
    log.apply(cancel(workflow_id.0));
    log.apply_at(
        1_000_000,
        Command::Purge(PurgeCommand {
            workflows: vec![workflow_id],
            default_retention_ms: 1,
            idempotency_window_ms: 100_000,
        }),
    );
    let Response::Rejected { reason } = log.apply_at(
        1_000_001,
        Command::DeleteNamespace {
            name: "team-a".into(),
        },
    ) else {
        panic!("deleted with a key still answering")
    };
    assert!(
        reason.contains("1 idempotency keys of purged workflows"),
        "{reason}"
    );
    log.apply_at(
        2_000_000,
        Command::Purge(PurgeCommand {
            workflows: vec![],
            default_retention_ms: 1,
            idempotency_window_ms: 100_000,
        }),
    );
    assert_eq!(
        log.apply_at(
            2_000_001,
            Command::DeleteNamespace {
                name: "team-a".into()
            }
        ),
        Response::Done
    );
}

#[test]
fn a_run_that_ends_frees_its_place_within_the_same_command() {
    // A buffered run starts as its predecessor ends, in the same command: the predecessor's
    // end is counted before the quota is asked.
    let mut log = Log::new();
    log.apply_at(1_000, set_quotas("default", Some(1), None, None));
    let agent = register(&mut log, "x", 2);
    log.apply_at(
        1_000,
        create_schedule("every10", 10_000, pb::OverlapPolicy::BufferOne, None),
    );
    log.apply_at(10_000, Command::Tick);
    log.apply_at(20_000, Command::Tick);
    let first = runs(&log, "every10");
    assert_eq!(first.len(), 1, "one runs, one is buffered");
    let attempt = assign(&mut log, first[0].1, 0, agent).unwrap();
    report(&mut log, attempt, agent, true);
    assert_eq!(runs(&log, "every10").len(), 2, "the buffered run started");
    assert_eq!(schedule_of(&log, "every10").skipped, 0);
}

#[test]
fn cancel_previous_cancels_nothing_for_a_run_its_quota_refuses() {
    let mut log = Log::new();
    log.apply_at(1_000, set_quotas("default", None, None, Some((1, 1))));
    log.apply_at(
        1_000,
        create_schedule("every10", 10_000, pb::OverlapPolicy::CancelPrevious, None),
    );
    log.apply_at(10_000, Command::Tick);
    let first = runs(&log, "every10");
    assert_eq!(first.len(), 1);
    // The bucket is empty until a second has passed: the trigger is refused, and the running
    // run is left alone.
    assert_eq!(
        log.apply_at(
            10_000,
            Command::TriggerSchedule {
                name: "every10".into()
            }
        ),
        over("default", Quota::SubmitsPerSecond, 1)
    );
    let run = log.state.workflow(WorkflowId(first[0].1)).unwrap();
    assert_eq!(run.state, WorkflowState::Running);
    // With the budget back, the trigger replaces it.
    assert!(matches!(
        log.apply_at(
            12_000,
            Command::TriggerSchedule {
                name: "every10".into()
            }
        ),
        Response::ScheduleFired {
            workflow_id: Some(_),
            ..
        }
    ));
    let run = log.state.workflow(WorkflowId(first[0].1)).unwrap();
    assert_eq!(run.state, WorkflowState::Cancelled);
}

#[test]
fn a_retry_counts_the_steps_it_readies_against_the_active_steps_quota() {
    let mut log = Log::new();
    let three = spec(
        "three",
        vec![step("a", &[]), step("b", &[]), step("c", &["a"])],
    );
    let Response::Submitted { workflow_id, .. } = log.apply(submit(&three, "")) else {
        panic!()
    };
    log.apply(cancel(workflow_id.0));
    log.apply(set_quotas("default", None, Some(1), None));
    let retry = || {
        Command::Retry(RetryCommand {
            workflow_id,
            from_step: String::new(),
            actor: String::new(),
        })
    };
    // a and b are ready at once (c waits for a): 2, more than 1.
    assert_eq!(log.apply(retry()), over("default", Quota::ActiveSteps, 1));
    assert_eq!(
        log.state.workflow(workflow_id).unwrap().state,
        WorkflowState::Cancelled
    );
    log.apply(set_quotas("default", None, Some(2), None));
    assert!(matches!(log.apply(retry()), Response::Retried { .. }));
    assert_eq!(log.state.live("default").active_steps, 2);
}

#[test]
fn an_agent_that_serves_some_namespaces_takes_no_step_of_another() {
    let mut log = Log::new();
    log.apply(create_namespace("team-a"));
    let Response::AgentRegistered { agent_id: pinned } =
        log.apply(Command::RegisterAgent(RegisterAgentCommand {
            name: "team-a-only".into(),
            labels: Default::default(),
            slots: 4,
            cpu_millis: 4000,
            memory_mb: 4096,
            task_types: Vec::new(),
            namespaces: vec!["team-a".into()],
        }))
    else {
        panic!("not registered")
    };
    let job = spec("job", vec![step("a", &[])]);
    let Response::Submitted {
        workflow_id: in_default,
        ..
    } = log.apply(submit(&job, ""))
    else {
        panic!()
    };
    let Response::Submitted {
        workflow_id: in_team,
        ..
    } = log.apply(submit_in("team-a", &job, ""))
    else {
        panic!()
    };
    // The Assign entry refuses it whatever a leader proposed.
    assert_eq!(assign(&mut log, in_default.0, 0, pinned), None);
    let workflow = log.state.workflow(in_default).unwrap().clone();
    assert_eq!(
        log.state.pending_reason(&workflow, StepIndex(0)).as_deref(),
        Some("no registered agent serves namespace default (baton agent --namespaces)")
    );
    assert!(assign(&mut log, in_team.0, 0, pinned).is_some());
}

fn keyed(name: &str, key: &str, limit: u32) -> pb::StepSpec {
    let mut s = step(name, &[]);
    s.concurrency = Some(pb::Concurrency {
        key: key.into(),
        limit,
    });
    s
}

/// The ids of the workflows whose steps are queued for an agent, in id order.
fn queued(log: &Log) -> Vec<u64> {
    let mut ids: Vec<u64> = log.state.ready_queue().map(|k| k.workflow_id.0).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_step_key_admits_its_limit_and_queues_the_rest_in_order() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    for _ in 0..3 {
        log.apply(submit(&spec("deploy", vec![keyed("d", "prod", 1)]), ""));
    }
    // Another key, and the same key in another namespace, do not wait for this one.
    log.apply(submit(&spec("other", vec![keyed("d", "staging", 1)]), ""));
    assert_eq!(queued(&log), vec![1, 4]);
    let waiting = log.state.workflow(WorkflowId(2)).unwrap().clone();
    assert_eq!(waiting.steps[0].state, StepState::Ready);
    assert_eq!(
        log.state.pending_reason(&waiting, StepIndex(0)).as_deref(),
        Some("concurrency key \"prod\" (1 of 1 held, 2 waiting)")
    );
    assert_eq!(
        assign(&mut log, 2, 0, agent),
        None,
        "a step waiting for its key is refused at apply"
    );
    // The holder runs; a lease that expires keeps the key for the next attempt.
    let first = assign(&mut log, 1, 0, agent).unwrap();
    log.apply(Command::ExpireLeases {
        attempts: vec![first],
    });
    assert_eq!(queued(&log), vec![1, 4]);
    let first = assign(&mut log, 1, 0, agent).unwrap();
    // It ends: the first waiter is queued in the same entry, the last still waits.
    report(&mut log, first, agent, true);
    assert_eq!(queued(&log), vec![2, 4]);
    // A waiter cancelled leaves the queue; pausing the holder gives the key back.
    log.apply(cancel(3));
    log.apply(pause(2, true));
    assert!(queued(&log).iter().all(|&id| id != 2));
    log.apply(submit(&spec("deploy", vec![keyed("d", "prod", 1)]), ""));
    assert_eq!(queued(&log), vec![4, 5]);
    // Resumed, it waits behind the one that took the key meanwhile.
    log.apply(pause(2, false));
    assert_eq!(queued(&log), vec![4, 5]);
    let five = assign(&mut log, 5, 0, agent).unwrap();
    report(&mut log, five, agent, false);
    assert_eq!(queued(&log), vec![2, 4]);
}

#[test]
fn a_key_of_two_never_has_three_holders_in_a_fan_out() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    let steps = (0..5).map(|i| keyed(&format!("s{i}"), "db", 2)).collect();
    log.apply(submit(&spec("fan", steps), ""));
    let mut running = Vec::new();
    for _ in 0..5 {
        let queue: Vec<ReadyKey> = log.state.ready_queue().copied().collect();
        assert!(queue.len() + running.len() <= 2, "{queue:?} {running:?}");
        for key in queue {
            running.push(assign(&mut log, 1, key.step.0, agent).unwrap());
        }
        let done = running.remove(0);
        report(&mut log, done, agent, true);
    }
    while let Some(done) = running.pop() {
        report(&mut log, done, agent, true);
    }
    assert_eq!(
        log.state.workflow(WorkflowId(1)).unwrap().state,
        WorkflowState::Succeeded
    );
}

#[test]
fn a_workflow_key_holds_later_runs_until_a_holder_ends() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    let mut nightly = spec("nightly", vec![step("a", &[])]);
    nightly.params.push(pb::ParamSpec {
        name: "env".into(),
        ..Default::default()
    });
    nightly.concurrency = Some(pb::Concurrency {
        key: "deploy-{{ params.env }}".into(),
        limit: 1,
    });
    let run = |env: &str| {
        Command::Submit(SubmitCommand {
            actor: String::new(),
            namespace: Default::default(),
            spec: nightly.encode_to_vec(),
            idempotency_key: String::new(),
            params: [("env".to_owned(), env.to_owned())].into(),
            template: None,
        })
    };
    log.apply(run("prod"));
    log.apply(run("prod"));
    log.apply(run("dev"));
    assert_eq!(queued(&log), vec![1, 3], "the second prod run waits");
    let second = log.state.workflow(WorkflowId(2)).unwrap().clone();
    assert!(second.waiting_for_key);
    assert_eq!(second.state, WorkflowState::Running);
    assert!(
        log.state
            .pending_reason(&second, StepIndex(0))
            .unwrap()
            .contains("waits for concurrency key \"deploy-prod\" (1 of 1 running, 1 waiting)")
    );
    assert!(
        log.kinds(2)
            .contains(&(pb::EventKind::KeyWaiting, String::new()))
    );
    // The holder ends: the waiter takes the key and its step is queued.
    let a = assign(&mut log, 1, 0, agent).unwrap();
    report(&mut log, a, agent, true);
    assert!(!log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    assert_eq!(queued(&log), vec![2, 3]);
    assert!(
        log.kinds(2)
            .contains(&(pb::EventKind::KeyAcquired, String::new()))
    );
    // A retry of the finished run waits behind the one holding the key now.
    let spec_fail = log.apply(cancel(2));
    assert!(matches!(spec_fail, Response::Cancelled { .. }));
    log.apply(run("prod"));
    assert_eq!(queued(&log), vec![3, 4]);
    assert!(matches!(log.apply(retry(2, "")), Response::Retried { .. }));
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    // Snapshots rebuild the key indexes as they were.
    let restored = ClusterState::decode(&log.state.encode()).unwrap();
    restored.check_invariants();
    assert_eq!(restored, log.state);
}

#[test]
fn a_key_that_renders_badly_is_refused_at_submit() {
    let mut log = Log::new();
    let mut bad = spec("w", vec![step("a", &[])]);
    bad.concurrency = Some(pb::Concurrency {
        key: "{{ params.missing }}".into(),
        limit: 1,
    });
    match log.apply(submit(&bad, "")) {
        Response::Rejected { reason } => {
            assert!(reason.contains("concurrency.key"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.state.workflow_count(), 0);
}

#[test]
fn a_rate_limit_spends_a_token_per_assignment_refilled_by_state_time() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 16);
    let mut limited = step("call", &[]);
    limited.rate_limit = Some(pb::RateLimit {
        key: "api".into(),
        per_second: 2,
        per_minute: 0,
        burst: 2,
    });
    for _ in 0..6 {
        log.apply_at(1_000, submit(&spec("w", vec![limited.clone()]), ""));
    }
    // A full bucket of 2 at 1.000 s; then one token every 500 ms.
    assert!(assign_at(&mut log, 1_000, 1, 0, agent).is_some());
    assert!(assign_at(&mut log, 1_000, 2, 0, agent).is_some());
    assert_eq!(assign_at(&mut log, 1_000, 3, 0, agent), None);
    let waiting = log.state.workflow(WorkflowId(3)).unwrap().clone();
    assert_eq!(
        log.state.pending_reason(&waiting, StepIndex(0)).as_deref(),
        Some("rate limit \"api\": its next token in 500ms")
    );
    assert_eq!(assign_at(&mut log, 1_499, 3, 0, agent), None);
    assert!(assign_at(&mut log, 1_500, 3, 0, agent).is_some());
    // Time that goes back (a leader whose clock is behind) refills nothing.
    assert_eq!(assign_at(&mut log, 1_200, 4, 0, agent), None);
    assert!(assign_at(&mut log, 2_000, 4, 0, agent).is_some());
    // Long idle, it is full again (and forgotten): a burst of 2, no more.
    assert!(assign_at(&mut log, 60_000, 5, 0, agent).is_some());
    assert!(assign_at(&mut log, 60_000, 6, 0, agent).is_some());
    log.apply_at(60_000, submit(&spec("w", vec![limited.clone()]), ""));
    assert_eq!(assign_at(&mut log, 60_000, 7, 0, agent), None);
    // The bucket survives a snapshot.
    let restored = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(restored, log.state);
}

fn audited(actor: &str, command: Command) -> Command {
    Command::Audited {
        actor: actor.into(),
        command: Box::new(command),
    }
}

fn audit_query(since_ms: u64, namespaces: Option<&[&str]>, cluster: bool) -> audit::AuditQuery {
    audit::AuditQuery {
        since_ms,
        namespaces: namespaces.map(|list| list.iter().map(|n| n.to_string()).collect()),
        cluster,
        limit: 100,
    }
}

#[test]
fn the_audit_trail_records_who_changed_what_and_only_what_changed() {
    let mut log = Log::new();
    let admin = "token root (aaaa)";
    log.apply_at(
        1_000,
        audited(
            admin,
            Command::CreateNamespace(CreateNamespaceCommand {
                name: "team-a".into(),
                description: String::new(),
                quotas: Default::default(),
                weight: 2,
            }),
        ),
    );
    // Refused: a second create changes nothing, and is not recorded.
    log.apply_at(
        1_100,
        audited(
            admin,
            Command::CreateNamespace(CreateNamespaceCommand {
                name: "team-a".into(),
                description: String::new(),
                quotas: Default::default(),
                weight: 1,
            }),
        ),
    );
    log.apply_at(
        2_000,
        audited(
            admin,
            Command::CreateToken(CreateTokenCommand {
                id: "t1".into(),
                name: "team-a-ci".into(),
                role: baton_security::TokenRole::Submitter,
                namespaces: [("team-a".into(), baton_security::TokenRole::Submitter)].into(),
                digest: vec![1; 32],
                bootstrap: false,
            }),
        ),
    );
    let team = "token team-a-ci (t1)";
    let mut submit_a = submit(&spec("build", vec![step("a", &[])]), "");
    if let Command::Submit(s) = &mut submit_a {
        s.namespace = "team-a".into();
        s.actor = team.into();
    }
    log.apply_at(3_000, submit_a);
    log.apply_at(
        3_500,
        Command::Cancel(CancelCommand {
            workflow_id: WorkflowId(1),
            reason: "wrong branch".into(),
            actor: team.into(),
        }),
    );
    log.apply_at(
        4_000,
        audited(admin, Command::RevokeToken { id: "t1".into() }),
    );
    // Revoking twice changes nothing the second time.
    log.apply_at(
        4_100,
        audited(admin, Command::RevokeToken { id: "t1".into() }),
    );
    log.apply_at(
        5_000,
        Command::Note(audit::NoteCommand {
            actor: admin.into(),
            action: "member.add".into(),
            target: "node 4".into(),
            detail: "127.0.0.1:7004".into(),
        }),
    );
    let everything = log.state.audit_records(&audit_query(0, None, true));
    let seen: Vec<(&str, &str, &str, &str)> = everything
        .iter()
        .map(|r| {
            (
                r.action.as_str(),
                r.actor.as_str(),
                r.namespace.as_str(),
                r.target.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("member.add", admin, "", "node 4"),
            ("token.revoke", admin, "", "team-a-ci (t1)"),
            ("workflow.cancel", team, "team-a", "workflow 1 (build)"),
            ("workflow.submit", team, "team-a", "workflow 1 (build)"),
            ("token.create", admin, "", "team-a-ci (t1)"),
            ("namespace.create", admin, "", "team-a"),
        ]
    );
    assert_eq!(everything[2].detail, "wrong branch");
    assert_eq!(everything[4].detail, "roles team-a=submitter");
    // A team's reader sees its namespace's changes only; `since` and `limit` cut.
    let team_view = log
        .state
        .audit_records(&audit_query(0, Some(&["team-a"]), false));
    assert_eq!(team_view.len(), 2);
    assert!(team_view.iter().all(|r| r.namespace == "team-a"));
    let recent = log.state.audit_records(&audit_query(3_600, None, true));
    assert_eq!(recent.len(), 2);
    let mut one = audit_query(0, None, true);
    one.limit = 1;
    assert_eq!(log.state.audit_records(&one)[0].action, "member.add");
    // The trail survives a snapshot.
    let restored = ClusterState::decode(&log.state.encode()).unwrap();
    assert_eq!(
        restored.audit_records(&audit_query(0, None, true)),
        everything
    );
}

#[test]
fn the_audit_trail_keeps_its_newest_entries_only() {
    let mut log = Log::new();
    let note = |i: usize| {
        Command::Note(audit::NoteCommand {
            actor: String::new(),
            action: "member.add".into(),
            target: format!("node {i}"),
            detail: String::new(),
        })
    };
    let total = audit::AUDIT_ENTRIES_MAX + 5;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        log.apply(Command::Batch(chunk.iter().map(|&i| note(i)).collect()));
    }
    let kept: Vec<&audit::AuditEntry> = log.state.audit_entries().collect();
    assert_eq!(kept.len(), audit::AUDIT_ENTRIES_MAX);
    assert_eq!(kept[0].target, "node 5");
    assert_eq!(kept.last().unwrap().target, format!("node {}", total - 1));
}

#[test]
fn an_audited_batch_or_nesting_is_refused() {
    let mut log = Log::new();
    let nested = audited("x", audited("y", Command::Tick));
    assert!(matches!(log.apply(nested), Response::Rejected { .. }));
    assert_eq!(log.state.audit_entries().count(), 0);
}

fn workflow_keyed(name: &str, key: &str, limit: u32, steps: Vec<pb::StepSpec>) -> pb::WorkflowSpec {
    let mut spec = spec(name, steps);
    spec.concurrency = Some(pb::Concurrency {
        key: key.into(),
        limit,
    });
    spec
}

#[test]
fn a_cancelled_holder_keeps_its_keys_until_its_lease_has_surely_run_out() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    let mut deploy = keyed("d", "prod", 1);
    deploy.lease_ttl_ms = 5_000;
    let spec = workflow_keyed("deploy", "env", 1, vec![deploy]);
    log.apply_at(1_000, submit(&spec, ""));
    log.apply_at(1_000, submit(&spec, ""));
    let running = assign_at(&mut log, 1_000, 1, 0, agent).unwrap();
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    // Cancelled while its attempt runs: its agent may not hear of it before its lease ends.
    log.apply_at(2_000, cancel(1));
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    // Nor may it run again meanwhile.
    match log.apply_at(3_000, retry(1, "")) {
        Response::Rejected { reason } => assert!(reason.contains("retry in a moment"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        log.state
            .workflow(WorkflowId(1))
            .unwrap()
            .state
            .is_terminal()
    );
    // Given back when the leader's book says the attempt stopped (here: its lease lapsed).
    log.apply_at(7_999, Command::Tick);
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    log.apply_at(
        8_000,
        Command::ExpireLeases {
            attempts: vec![running],
        },
    );
    let second = log.state.workflow(WorkflowId(2)).unwrap();
    assert!(!second.waiting_for_key);
    assert_eq!(queued(&log), vec![2]);
    // Its steps are ready from when it took the key.
    assert_eq!(second.steps[0].ready_at_ms, 8_000);
    // The stale report of the cancelled attempt is refused.
    assert!(matches!(
        report(&mut log, running, agent, true),
        Response::ReportRefused { .. }
    ));
}

#[test]
fn a_paused_waiter_lets_the_next_one_take_the_key() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    let spec = workflow_keyed("nightly", "db", 1, vec![step("a", &[])]);
    for _ in 0..3 {
        log.apply(submit(&spec, ""));
    }
    log.apply(pause(2, true));
    let a = assign(&mut log, 1, 0, agent).unwrap();
    report(&mut log, a, agent, true);
    // 2 is paused: 3 takes the key; 2 waits on, and takes it once resumed and free.
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    assert!(!log.state.workflow(WorkflowId(3)).unwrap().waiting_for_key);
    log.apply(pause(2, false));
    assert!(log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    let c = assign(&mut log, 3, 0, agent).unwrap();
    report(&mut log, c, agent, true);
    assert!(!log.state.workflow(WorkflowId(2)).unwrap().waiting_for_key);
    assert_eq!(queued(&log), vec![2]);
}

#[test]
fn a_step_that_finds_room_still_queues_behind_older_waiters() {
    let mut log = Log::new();
    let agent = register(&mut log, "a1", 8);
    // Workflow 1 holds `db` with `s`; 2's `t` waits for it; 3 waits for the workflow key `p`
    // held by 1, and its first step wants `db` too.
    let one = workflow_keyed("one", "p", 1, vec![keyed("s", "db", 1)]);
    log.apply_at(1_000, submit(&one, ""));
    log.apply_at(2_000, submit(&spec("two", vec![keyed("t", "db", 1)]), ""));
    log.apply_at(3_000, submit(&one, ""));
    let s = assign_at(&mut log, 3_000, 1, 0, agent).unwrap();
    // 1 ends: `db` and `p` are free in one entry; 2's `t`, older, takes `db`.
    report_at(&mut log, 4_000, s, agent, true);
    assert_eq!(queued(&log), vec![2]);
    assert!(!log.state.workflow(WorkflowId(3)).unwrap().waiting_for_key);
    let waiting = log.state.workflow(WorkflowId(3)).unwrap().clone();
    assert!(
        log.state
            .pending_reason(&waiting, StepIndex(0))
            .unwrap()
            .starts_with("concurrency key \"db\" (1 of 1 held, 1 waiting)")
    );
}

#[test]
fn a_schedule_run_whose_key_renders_empty_fails_visibly() {
    let mut log = Log::new();
    let mut workflow = spec("w", vec![step("a", &[])]);
    workflow.params.push(pb::ParamSpec {
        name: "env".into(),
        default: Some(String::new()),
        ..Default::default()
    });
    workflow.concurrency = Some(pb::Concurrency {
        key: "{{ params.env }}".into(),
        limit: 1,
    });
    let schedule = pb::ScheduleSpec {
        name: "s".into(),
        every_ms: 60_000,
        ..Default::default()
    };
    log.apply_at(
        1_000,
        Command::CreateSchedule(CreateScheduleCommand {
            spec: schedule.encode_to_vec(),
            workflow: workflow.encode_to_vec(),
            params: [("env".to_owned(), String::new())].into(),
            replace: false,
            namespace: String::new(),
        }),
    );
    let fired = log.apply_at(2_000, Command::TriggerSchedule { name: "s".into() });
    match fired {
        Response::Rejected { reason } => assert!(reason.contains("is empty"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(log.state.workflow_count(), 0);
}

#[test]
fn every_kind_of_change_has_its_audit_action() {
    let mut log = Log::new();
    let by = |command| audited("token ops (t0)", command);
    let template = spec("greet", vec![step("a", &[])]);
    log.apply(by(apply_template(&template)));
    log.apply(by(create_schedule(
        "s",
        10_000,
        pb::OverlapPolicy::Allow,
        None,
    )));
    log.apply(by(Command::PauseSchedule(PauseScheduleCommand {
        name: "s".into(),
        paused: true,
    })));
    log.apply(by(Command::PauseSchedule(PauseScheduleCommand {
        name: "s".into(),
        paused: false,
    })));
    log.apply(by(Command::TriggerSchedule { name: "s".into() }));
    log.apply(by(Command::BackfillSchedule(BackfillScheduleCommand {
        name: "s".into(),
        from_ms: 1,
        to_ms: 2,
    })));
    log.apply(by(Command::DeleteSchedule { name: "s".into() }));
    log.apply(by(Command::CreateTrigger(CreateTriggerCommand {
        spec: pb::TriggerSpec {
            name: "push".into(),
            template: "greet".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        secret: "s3cret-s3cret-s3cret".into(),
        replace: false,
        namespace: String::new(),
    })));
    log.apply(by(Command::DeleteTrigger {
        name: "push".into(),
    }));
    log.apply(by(Command::DeleteTemplate {
        name: "greet".into(),
    }));
    log.apply(by(Command::UpdateNamespace(UpdateNamespaceCommand {
        name: "default".into(),
        weight: Some(3),
        ..Default::default()
    })));
    // Workflow changes, from the history.
    log.apply(submit(
        &spec("w", vec![wait_step("gate", &[], "go", 0)]),
        "",
    ));
    let id = log.state.workflow_count() as u64 + 1;
    log.apply(submit(
        &spec("w", vec![wait_step("gate", &[], "go", 0)]),
        "",
    ));
    log.apply(pause(id, true));
    log.apply(pause(id, false));
    log.apply(signal(id, "gate", "{}", false));
    log.apply(retry(id, "gate"));
    let actions: std::collections::BTreeSet<String> = log
        .state
        .audit_records(&audit_query(0, None, true))
        .into_iter()
        .map(|r| r.action)
        .collect();
    for action in [
        "template.apply",
        "template.delete",
        "schedule.create",
        "schedule.pause",
        "schedule.resume",
        "schedule.trigger",
        "schedule.backfill",
        "schedule.delete",
        "trigger.create",
        "trigger.delete",
        "namespace.update",
        "workflow.submit",
        "workflow.pause",
        "workflow.resume",
        "workflow.signal",
        "workflow.retry",
    ] {
        assert!(
            actions.contains(action),
            "{action} missing from {actions:?}"
        );
    }
}
