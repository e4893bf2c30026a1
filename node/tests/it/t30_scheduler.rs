//! The scheduler with agents on the real protocol: dependency order, conditions and retries;
//! a dead agent's step moves to another agent with a new token and the stale copy is fenced; a
//! leader failover keeps running steps' leases; cancel stops running steps; capacity holds; a
//! custom step goes only to an agent that announced its task type.

use crate::common;

use std::time::{Duration, Instant};

use baton_client::Endpoints;
use baton_client::agent::{Agent, TaskContext, TaskError};
use baton_proto::v1 as pb;
use common::agent::{Behavior, TestAgent};
use common::*;

fn step(name: &str, deps: &[&str]) -> pb::StepSpec {
    pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
        ..Default::default()
    }
}

async fn submit(cluster: &TestCluster, spec: pb::WorkflowSpec) -> pb::SubmitResponse {
    let leader = cluster.leader(Duration::from_secs(20)).await;
    cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(spec),
            idempotency_key: String::new(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit")
        .into_inner()
}

/// Follows Watch until the workflow ends; returns its events.
async fn watch_to_end(
    cluster: &TestCluster,
    id: u64,
    from_index: u64,
    timeout: Duration,
) -> Vec<pb::WorkflowEvent> {
    let node = cluster.running()[0];
    let mut client = cluster.workflows(node).await;
    let mut stream = client
        .watch(pb::WatchRequest {
            all_namespaces: Default::default(),
            namespace: Default::default(),
            workflow_id: id,
            from_index,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.message(),
        )
        .await
        .unwrap_or_else(|_| panic!("workflow {id} did not finish within {timeout:?}: {events:#?}"));
        match next.expect("watch stream") {
            Some(event) => events.push(event),
            None => return events,
        }
    }
}

async fn get(cluster: &TestCluster, id: u64) -> pb::Workflow {
    let node = cluster.running()[0];
    cluster
        .workflows(node)
        .await
        .get(pb::GetRequest {
            workflow_id: id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .expect("get")
        .into_inner()
        .workflow
        .unwrap()
}

fn endpoints(cluster: &TestCluster) -> Vec<std::net::SocketAddr> {
    cluster
        .running()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_order_conditions_and_retries_hold() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("a1", 2, endpoints(&cluster), |step| match step {
        "flaky" => Behavior::FailFirst(1),
        "broken" => Behavior::FailFirst(99),
        _ => Behavior::Take(Duration::from_millis(50)),
    });
    let mut flaky = step("flaky", &["build"]);
    flaky.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        backoff: Some(pb::Backoff {
            initial_ms: 200,
            multiplier: 2.0,
            max_ms: 1000,
        }),
    });
    let mut on_failure = step("on-failure", &["broken"]);
    on_failure.when = pb::RunCondition::Failure as i32;
    let mut on_success = step("on-success", &["broken"]);
    on_success.when = pb::RunCondition::Success as i32;
    let mut finally = step("finally", &["test", "on-failure", "on-success"]);
    finally.when = pb::RunCondition::Always as i32;
    let spec = pb::WorkflowSpec {
        name: "pipeline".into(),
        steps: vec![
            step("build", &[]),
            flaky,
            step("test", &["flaky"]),
            step("broken", &["build"]),
            on_failure,
            on_success,
            finally,
        ],
        ..Default::default()
    };
    let submitted = submit(&cluster, spec).await;
    let events = watch_to_end(
        &cluster,
        submitted.workflow_id,
        submitted.log_index,
        Duration::from_secs(30),
    )
    .await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, pb::EventKind::WorkflowFinished as i32);
    assert_eq!(
        last.workflow_state,
        pb::WorkflowState::Failed as i32,
        "broken failed, so the workflow failed"
    );

    let workflow = get(&cluster, submitted.workflow_id).await;
    let by_name = |n: &str| workflow.steps.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(by_name("flaky").attempts, 2, "one failure, one retry");
    assert_eq!(by_name("flaky").state, pb::StepState::Succeeded as i32);
    assert_eq!(by_name("on-success").state, pb::StepState::Skipped as i32);
    assert_eq!(by_name("on-failure").state, pb::StepState::Succeeded as i32);
    assert_eq!(by_name("finally").state, pb::StepState::Succeeded as i32);
    assert_eq!(
        by_name("broken").attempts,
        1,
        "no retry policy: one attempt"
    );

    // Order: every execution started after all its dependencies' successful executions ended,
    // and each saw its dependencies' outputs.
    let executions = agent.executions();
    let finished_ok = |name: &str| {
        executions
            .iter()
            .filter(|e| e.step == name)
            .filter_map(|e| e.finished)
            .max()
            .unwrap_or_else(|| panic!("{name} never finished"))
    };
    for e in &executions {
        let deps: &[&str] = match e.step.as_str() {
            "flaky" | "broken" => &["build"],
            "test" => &["flaky"],
            "on-failure" => &["broken"],
            "finally" => &["test", "on-failure"],
            _ => &[],
        };
        for dep in deps {
            assert!(
                e.started >= finished_ok(dep),
                "{} started before {dep} ended",
                e.step
            );
            assert!(
                e.inputs.contains_key(*dep),
                "{} did not get {dep}'s output",
                e.step
            );
        }
    }
    let flaky_attempts: Vec<u64> = executions
        .iter()
        .filter(|e| e.step == "flaky")
        .map(|e| e.attempt_id)
        .collect();
    assert!(
        flaky_attempts[1] > flaky_attempts[0],
        "a retry is a new attempt with a new token"
    );
    let running_max = agent.journal.lock().running_max;
    assert!(
        running_max <= 2,
        "agent ran {running_max} at once with 2 slots"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agents_step_moves_to_another_agent_and_the_stale_copy_is_fenced() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    cluster.leader(Duration::from_secs(20)).await;
    let doomed = TestAgent::start("doomed", 1, endpoints(&cluster), |_| Behavior::Hold);
    let mut s = step("work", &[]);
    s.lease_ttl_ms = 1_000;
    let submitted = submit(
        &cluster,
        pb::WorkflowSpec {
            name: "w".into(),
            steps: vec![s],
            ..Default::default()
        },
    )
    .await;
    let first = wait_for(
        Duration::from_secs(10),
        "the step to reach the doomed agent",
        || async {
            doomed
                .journal
                .lock()
                .executions
                .first()
                .map(|e| e.attempt_id)
        },
    )
    .await;
    tracing::info!(first, "--- killing the agent that runs the step");
    let killed_at = Instant::now();
    doomed.kill();
    let rescuer = TestAgent::start("rescuer", 1, endpoints(&cluster), |_| Behavior::Succeed);
    let second = wait_for(
        Duration::from_secs(10),
        "the step to move to the rescuer",
        || async {
            rescuer
                .journal
                .lock()
                .executions
                .first()
                .map(|e| e.attempt_id)
        },
    )
    .await;
    // A figure, not a bound: how soon a step moves depends on the machine's load.
    tracing::info!(moved_after = ?killed_at.elapsed(), "rescheduled after the kill (TTL 1 s)");
    assert!(second > first, "the new attempt has a new, higher token");
    let events = watch_to_end(&cluster, submitted.workflow_id, 0, Duration::from_secs(10)).await;
    // It moved because the first attempt's lease expired, through the log, and not before the
    // lease could have run out: its expiry is stamped at least a TTL after its assignment, and
    // comes before the second assignment.
    let at = |kind: pb::EventKind, attempt: u64| {
        events
            .iter()
            .position(|e| e.kind == kind as i32 && e.attempt_id == attempt)
            .unwrap_or_else(|| panic!("no {kind:?} of attempt {attempt}: {events:#?}"))
    };
    let assigned = at(pb::EventKind::StepAssigned, first);
    let expired = at(pb::EventKind::StepLeaseExpired, first);
    let reassigned = at(pb::EventKind::StepAssigned, second);
    assert!(assigned < expired && expired < reassigned, "{events:#?}");
    assert!(
        events[expired].time_ms >= events[assigned].time_ms + 1_000,
        "the lease expired {} ms after its assignment, within its TTL",
        events[expired].time_ms - events[assigned].time_ms
    );
    let workflow = get(&cluster, submitted.workflow_id).await;
    assert_eq!(workflow.state, pb::WorkflowState::Succeeded as i32);
    assert_eq!(workflow.steps[0].attempt_id, second);
    assert_eq!(workflow.steps[0].agent, "rescuer");

    tracing::info!("--- the zombie copy reports late: refused, nothing changes");
    let zombie = TestAgent::start("doomed", 1, endpoints(&cluster), |_| Behavior::Succeed);
    // A late report from the first attempt, sent by the agent that once held it.
    {
        use baton_proto::v1::agent_service_client::AgentServiceClient;
        let leader = cluster.leader(Duration::from_secs(5)).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(pb::Register {
                name: "doomed".into(),
                slots: 1,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Report(pb::Report {
                attempt_id: first,
                success: true,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut stream = AgentServiceClient::new(channel(cluster.addr(leader)))
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        let rejected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(pb::ServerMessage {
                        msg: Some(pb::server_message::Msg::Rejected(r)),
                    })) => return r,
                    Ok(Some(_)) => continue,
                    other => panic!("session ended before the report was answered: {other:?}"),
                }
            }
        })
        .await
        .expect("the stale report is answered");
        assert_eq!(rejected.attempt_id, first);
    }
    drop(zombie);
    cluster.converged(Duration::from_secs(10)).await;
    let workflow = get(&cluster, submitted.workflow_id).await;
    assert_eq!(
        workflow.steps[0].attempt_id, second,
        "the stale report changed the step"
    );
    assert_eq!(workflow.steps[0].output, format!("work#{second}"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_steps_keep_their_leases_across_a_leader_failover() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("steady", 2, endpoints(&cluster), |_| {
        Behavior::Take(Duration::from_secs(3))
    });
    let mut s = step("long", &[]);
    s.lease_ttl_ms = 2_000;
    let submitted = submit(
        &cluster,
        pb::WorkflowSpec {
            name: "w".into(),
            steps: vec![s],
            ..Default::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "the step to start", || async {
        (!agent.journal.lock().executions.is_empty()).then_some(())
    })
    .await;
    tracing::info!(leader, "--- stopping the leader while the step runs");
    cluster.stop(leader).await;
    watch_to_end(&cluster, submitted.workflow_id, 0, Duration::from_secs(30)).await;
    let workflow = get(&cluster, submitted.workflow_id).await;
    assert_eq!(workflow.state, pb::WorkflowState::Succeeded as i32);
    assert_eq!(
        workflow.steps[0].attempts, 1,
        "the step ran again after the failover"
    );
    assert_eq!(agent.journal.lock().executions.len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_steps_and_capacity_is_respected() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("small", 2, endpoints(&cluster), |_| Behavior::Hold);
    let steps = (0..5).map(|i| step(&format!("s{i}"), &[])).collect();
    let submitted = submit(
        &cluster,
        pb::WorkflowSpec {
            name: "wide".into(),
            steps,
            ..Default::default()
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "two steps to run", || async {
        (agent.journal.lock().running.len() == 2).then_some(())
    })
    .await;
    let workflow = get(&cluster, submitted.workflow_id).await;
    let ready: Vec<_> = workflow
        .steps
        .iter()
        .filter(|s| s.state == pb::StepState::Ready as i32)
        .collect();
    assert_eq!(ready.len(), 3, "two slots: three steps wait");
    assert_eq!(ready[0].pending_reason, "waiting for a free agent");
    let leader = cluster.leader(Duration::from_secs(5)).await;
    cluster
        .workflows(leader)
        .await
        .cancel(pb::CancelRequest {
            workflow_id: submitted.workflow_id,
            reason: "enough".into(),
        })
        .await
        .expect("cancel");
    wait_for(
        Duration::from_secs(5),
        "the agent to be told to stop both",
        || async { (agent.journal.lock().stopped.len() == 2).then_some(()) },
    )
    .await;
    {
        // The agent's tasks take this lock; never hold it across an await.
        let journal = agent.journal.lock();
        assert!(journal.running.is_empty());
        assert_eq!(journal.running_max, 2, "capacity exceeded");
        assert_eq!(journal.executions.len(), 2, "cancelled steps were started");
    }
    cluster.shutdown().await;
}

/// Agents announce the task types they run, and the scheduler sends a custom step only to one
/// that runs it: with none connected the step waits (saying why), it does not fail on an agent
/// without the handler; once one registers, the step runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_step_goes_only_to_an_agent_that_runs_its_type() {
    init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let endpoints = Endpoints::parse(&cluster.addr(leader).to_string()).unwrap();
    let start = |agent: Agent| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        (stop, running)
    };
    let plain = start(
        Agent::builder(endpoints.clone())
            .name("plain")
            .slots(4)
            .build()
            .unwrap(),
    );
    let charge = pb::StepSpec {
        name: "charge".into(),
        task: Some(pb::step_spec::Task::Custom(pb::CustomTask {
            r#type: "billing/charge".into(),
            payload: "42".into(),
        })),
        ..Default::default()
    };
    let id = submit(
        &cluster,
        pb::WorkflowSpec {
            name: "invoice".into(),
            steps: vec![step("prepare", &[]), charge],
            ..Default::default()
        },
    )
    .await
    .workflow_id;

    let waiting = wait_for(
        Duration::from_secs(10),
        "the noop step done and the custom step waiting for an agent that runs it",
        || async {
            let workflow = get(&cluster, id).await;
            let prepare = &workflow.steps[0];
            let charge = &workflow.steps[1];
            (prepare.state == pb::StepState::Succeeded as i32
                && charge.pending_reason.contains("billing/charge"))
            .then_some(workflow)
        },
    )
    .await;
    let charge = &waiting.steps[1];
    assert_eq!(charge.state, pb::StepState::Ready as i32, "{charge:?}");
    assert_eq!(charge.attempts, 0, "{charge:?}");
    assert_eq!(
        charge.pending_reason,
        "no registered agent runs task type \"billing/charge\""
    );
    assert_eq!(waiting.steps[0].agent, "plain");

    let billing = start(
        Agent::builder(endpoints)
            .name("billing")
            .slots(1)
            .handler("billing/charge", |ctx: TaskContext| async move {
                Ok::<_, TaskError>(format!("charged {}", ctx.payload()))
            })
            .build()
            .unwrap(),
    );
    let workflows = cluster.workflows(leader).await;
    wait_for_success(&workflows, id, Duration::from_secs(10)).await;
    let done = get(&cluster, id).await;
    assert_eq!(done.steps[1].agent, "billing");
    assert_eq!(done.steps[1].output, "charged 42");
    assert_eq!(done.steps[1].attempts, 1);

    let agents = cluster
        .admin(leader)
        .await
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    let billing_info = agents.iter().find(|a| a.name == "billing").unwrap();
    assert_eq!(
        billing_info.task_types,
        ["billing/charge", "exec", "http", "noop", "sleep"]
    );
    for (stop, running) in [plain, billing] {
        let _ = stop.send(());
        running.await.unwrap();
    }
    cluster.shutdown().await;
}
