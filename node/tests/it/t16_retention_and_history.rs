//! Retention, the archive and durable history on a real three-node cluster: finished workflows
//! leave every node's state once their retention has passed (the same state hash everywhere),
//! each node writes them to its archive first, `Get` says when they went, a retried submit keeps
//! its id; a workflow's history is the same on every node and survives every node restarting,
//! and a Watch from index 0 replays it after those restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_proto::v1 as pb;
use tonic::Code;

use crate::common::agent::{Behavior, TestAgent};
use crate::common::{self, TestCluster, noop_spec, test_timing, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

fn archive_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("archive{id}"))
}

async fn submit(cluster: &TestCluster, node: u64, spec: pb::WorkflowSpec, key: &str) -> u64 {
    cluster
        .workflows(node)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(spec),
            idempotency_key: key.into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit")
        .into_inner()
        .workflow_id
}

async fn cancel(cluster: &TestCluster, node: u64, id: u64) {
    cluster
        .workflows(node)
        .await
        .cancel(pb::CancelRequest {
            workflow_id: id,
            reason: "done with it".into(),
        })
        .await
        .expect("cancel");
}

/// Node `node`'s own answer (a stale read: what it has applied) to a Get of `id`.
async fn get_here(
    cluster: &TestCluster,
    node: u64,
    id: u64,
) -> Result<pb::Workflow, tonic::Status> {
    cluster
        .workflows(node)
        .await
        .get(pb::GetRequest {
            workflow_id: id,
            consistency: pb::ReadConsistency::Stale as i32,
            attempts_of_step: String::new(),
        })
        .await
        .map(|r| r.into_inner().workflow.expect("a workflow"))
}

async fn history_here(cluster: &TestCluster, node: u64, id: u64) -> Vec<pb::WorkflowEvent> {
    cluster
        .workflows(node)
        .await
        .get_history(pb::GetHistoryRequest {
            workflow_id: id,
            consistency: pb::ReadConsistency::Stale as i32,
        })
        .await
        .expect("history")
        .into_inner()
        .events
}

/// Every archive line in `dir`, in file-name (log) order.
fn archive_lines(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("an archive line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_workflows_leave_every_node_after_their_retention_archived_first() {
    let root = tempfile::tempdir().unwrap();
    let archives = root.path().to_path_buf();
    let cluster = TestCluster::start_customized(3, test_timing(), |id, config| {
        config.lifecycle.default_retention_ms = 2_000;
        config.lifecycle.archive_dir = Some(archive_dir(&archives, id));
    })
    .await;
    let leader = cluster.leader(TIMEOUT).await;
    let follower = cluster.follower(leader);

    let short = submit(&cluster, follower, noop_spec("short", 2), "order-1").await;
    let mut kept = noop_spec("kept", 1);
    kept.retention_ms = 3_600_000;
    let long = submit(&cluster, follower, kept, "").await;
    let running = submit(&cluster, follower, noop_spec("running", 1), "").await;
    cancel(&cluster, follower, short).await;
    cancel(&cluster, leader, long).await;
    let finished_at = get_here(&cluster, leader, short)
        .await
        .unwrap()
        .finished_at_ms;
    let history = history_here(&cluster, leader, short).await;

    // Gone from every node, each saying when.
    for node in cluster.running() {
        let status = wait_for(TIMEOUT, "the short-lived workflow to be purged", || async {
            get_here(&cluster, node, short).await.err()
        })
        .await;
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status
                .message()
                .starts_with(&format!("workflow {short} was purged at ")),
            "{}",
            status.message()
        );
    }
    let statuses = cluster.converged(TIMEOUT).await;
    assert!(
        statuses
            .windows(2)
            .all(|w| w[0].state_hash == w[1].state_hash),
        "every node holds the same state after the purge"
    );

    // Each node archived it (before applying the purge: the entry applies only after the write),
    // with its final state, its history and when it went, decided with the state's time.
    for node in cluster.running() {
        let lines = archive_lines(&archive_dir(&archives, node));
        assert_eq!(lines.len(), 1, "node {node}: {lines:?}");
        let line = &lines[0];
        assert_eq!(line["workflow"]["id"], short);
        assert_eq!(line["workflow"]["state"], "cancelled");
        assert_eq!(line["workflow"]["idempotency_key"], "order-1");
        assert_eq!(line["workflow"]["spec"]["name"], "short");
        assert_eq!(line["retention_ms"], 2_000);
        let purged_at = line["purged_at_ms"].as_u64().unwrap();
        assert!(purged_at >= finished_at + 2_000, "purged early: {line}");
        let archived: Vec<u64> = line["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        let kept: Vec<u64> = history.iter().map(|e| e.index).collect();
        assert_eq!(archived, kept, "the archive holds the whole history");
    }

    // What is still within its retention, or running, stays.
    for id in [long, running] {
        assert!(
            get_here(&cluster, leader, id).await.is_ok(),
            "workflow {id}"
        );
    }
    // A retried submit within the idempotency window is the same submit.
    let again = cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec("short", 2)),
            idempotency_key: "order-1".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.workflow_id, again.created), (short, false));
    cluster.shutdown().await;
}

/// Histories are part of the replicated state: equal everywhere, kept through snapshots and
/// restarts of every node, and what a Watch from index 0 replays afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_is_the_same_on_every_node_and_survives_every_node_restarting() {
    let mut timing = test_timing();
    // Snapshots along the way, so the restarts load histories from snapshot files too.
    timing.snapshot_every_entries = 20;
    let mut cluster = TestCluster::start(3, timing).await;
    let leader = cluster.leader(TIMEOUT).await;
    let endpoints: Vec<_> = cluster
        .running()
        .iter()
        .map(|&id| cluster.addr(id))
        .collect();
    let agent = TestAgent::start("a1", 4, endpoints, |step| match step {
        "s1" => Behavior::FailFirst(1),
        _ => Behavior::Succeed,
    });
    let mut spec = noop_spec("chain", 3);
    spec.steps[1].retry = Some(pb::RetryPolicy {
        max_attempts: 2,
        backoff: Some(pb::Backoff {
            initial_ms: 10,
            ..Default::default()
        }),
    });
    let id = submit(&cluster, leader, spec, "").await;
    common::wait_for_success(&cluster.workflows(leader).await, id, TIMEOUT).await;
    agent.kill();
    cluster.converged(TIMEOUT).await;

    let history = history_here(&cluster, leader, id).await;
    let kinds: Vec<pb::EventKind> = history.iter().map(|e| e.kind()).collect();
    use pb::EventKind as K;
    assert_eq!(kinds.first(), Some(&K::WorkflowSubmitted));
    assert_eq!(kinds.last(), Some(&K::WorkflowFinished));
    assert_eq!(kinds.iter().filter(|k| **k == K::StepRetrying).count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == K::StepAssigned).count(), 4);
    assert!(history.windows(2).all(|w| w[0].index <= w[1].index));
    let attempts: Vec<u64> = history
        .iter()
        .filter(|e| e.kind() == K::StepAssigned)
        .map(|e| e.attempt_id)
        .collect();
    assert!(attempts.windows(2).all(|w| w[0] < w[1]), "{attempts:?}");
    for node in cluster.running() {
        assert_eq!(
            history_here(&cluster, node, id).await,
            history,
            "node {node}"
        );
    }

    // Every node down, then up again: nothing of it was only in memory.
    for node in cluster.running() {
        cluster.stop(node).await;
    }
    for node in [1, 2, 3] {
        cluster.restart(node).await;
    }
    cluster.leader(TIMEOUT).await;
    for node in cluster.running() {
        let after = wait_for(TIMEOUT, "the node to serve the history again", || async {
            let mut client = cluster.workflows(node).await;
            client
                .get_history(pb::GetHistoryRequest {
                    workflow_id: id,
                    consistency: pb::ReadConsistency::Stale as i32,
                })
                .await
                .ok()
                .map(|r| r.into_inner().events)
        })
        .await;
        assert_eq!(after, history, "node {node} after the restarts");
    }

    // A Watch from index 0 replays the whole history, then ends with the workflow's end.
    let mut stream = cluster
        .workflows(2)
        .await
        .watch(pb::WatchRequest {
            all_namespaces: Default::default(),
            namespace: Default::default(),
            workflow_id: id,
            from_index: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut watched = Vec::new();
    while let Some(event) = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("the watch ends")
        .unwrap()
    {
        watched.push(event);
    }
    assert_eq!(watched, history);
    cluster.shutdown().await;
}

async fn get(cluster: &TestCluster, id: u64) -> pb::Workflow {
    cluster
        .workflows(1)
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
        .expect("a workflow")
}

async fn wait_state(cluster: &TestCluster, id: u64, state: pb::WorkflowState) -> pb::Workflow {
    wait_for(TIMEOUT, "the workflow's state", || async {
        let workflow = get(cluster, id).await;
        (workflow.state == state as i32).then_some(workflow)
    })
    .await
}

/// Pause, resume, retry and a workflow timeout through the API, with a real agent session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_pause_resume_and_retry_and_a_timeout_stops_the_run() {
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    let mut client = cluster.workflows(cluster.follower(leader)).await;

    // Paused before any agent is there: once one is, the other workflow runs and it does not.
    let paused = submit(&cluster, leader, noop_spec("paused", 2), "").await;
    let changed = client
        .pause(pb::PauseRequest {
            workflow_id: paused,
        })
        .await
        .unwrap()
        .into_inner()
        .changed;
    assert!(changed);
    let endpoints: Vec<_> = cluster
        .running()
        .iter()
        .map(|&id| cluster.addr(id))
        .collect();
    let agent = TestAgent::start("a1", 4, endpoints, |step| match step {
        "flaky" => Behavior::FailFirst(1),
        "forever" => Behavior::Hold,
        _ => Behavior::Succeed,
    });
    let other = submit(&cluster, leader, noop_spec("other", 2), "").await;
    common::wait_for_success(&client, other, TIMEOUT).await;
    let still = get(&cluster, paused).await;
    assert!(still.paused);
    assert_eq!(
        still.steps[0].attempts, 0,
        "a paused workflow starts nothing"
    );
    assert_eq!(
        still.steps[0].pending_reason,
        "the workflow is paused (baton resume)"
    );
    client
        .resume(pb::PauseRequest {
            workflow_id: paused,
        })
        .await
        .unwrap();
    common::wait_for_success(&client, paused, TIMEOUT).await;

    // A step that fails once, with no retry policy: the workflow fails; a retry reruns it.
    let mut spec = noop_spec("retried", 2);
    spec.steps[1].name = "flaky".into();
    let retried = submit(&cluster, leader, spec, "").await;
    let failed = wait_state(&cluster, retried, pb::WorkflowState::Failed).await;
    let first_attempt = failed.steps[1].attempt_id;
    let refused = client
        .retry(pb::RetryRequest {
            workflow_id: retried,
            from_step: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("has no step \"nope\""),
        "{}",
        refused.message()
    );
    let steps = client
        .retry(pb::RetryRequest {
            workflow_id: retried,
            from_step: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .steps;
    assert_eq!(steps, ["flaky"]);
    let done = common::wait_for_success(&client, retried, TIMEOUT).await;
    assert!(done.steps[1].attempt_id > first_attempt);
    assert_eq!(
        done.steps[0].attempts, 1,
        "the step that succeeded ran once"
    );
    let kinds: Vec<pb::EventKind> = history_here(&cluster, leader, retried)
        .await
        .iter()
        .map(|e| e.kind())
        .collect();
    assert!(kinds.contains(&pb::EventKind::WorkflowRetried));
    // A Watch from the start goes past the first run's end to the retried run's.
    let mut stream = client
        .watch(pb::WatchRequest {
            all_namespaces: Default::default(),
            namespace: Default::default(),
            workflow_id: retried,
            from_index: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut watched = Vec::new();
    while let Some(event) = tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("the watch ends")
        .unwrap()
    {
        watched.push(event);
    }
    let ends: Vec<i32> = watched
        .iter()
        .filter(|e| e.kind() == pb::EventKind::WorkflowFinished)
        .map(|e| e.workflow_state)
        .collect();
    assert_eq!(
        ends,
        [
            pb::WorkflowState::Failed as i32,
            pb::WorkflowState::Succeeded as i32
        ]
    );

    // A whole-run timeout ends the workflow and stops the attempt still running.
    let mut spec = noop_spec("bounded", 1);
    spec.steps[0].name = "forever".into();
    spec.timeout_ms = 1_000;
    let bounded = submit(&cluster, leader, spec, "").await;
    let timed_out = wait_state(&cluster, bounded, pb::WorkflowState::TimedOut).await;
    assert!(
        timed_out.reason.starts_with("timed out"),
        "{}",
        timed_out.reason
    );
    let attempt = timed_out.steps[0].attempt_id;
    assert_ne!(attempt, 0, "it had started");
    wait_for(TIMEOUT, "the agent to be told to stop", || async {
        agent
            .journal
            .lock()
            .stopped
            .contains(&attempt)
            .then_some(())
    })
    .await;
    agent.kill();
    cluster.shutdown().await;
}

/// Parameters: checked at submit with errors naming them, kept on the workflow, and read by a
/// real agent's exec step as `{{ params.NAME }}` and as BATON_PARAM_NAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parameters_are_checked_at_submit_and_reach_the_steps() {
    use baton_client::Endpoints;
    use baton_client::agent::Agent;
    let cluster = TestCluster::start(1, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    let mut client = cluster.workflows(leader).await;
    let spec = pb::WorkflowSpec {
        name: "deploy".into(),
        params: vec![
            pb::ParamSpec {
                name: "env".into(),
                default: Some("staging".into()),
                ..Default::default()
            },
            pb::ParamSpec {
                name: "version".into(),
                required: true,
                description: "the release to deploy".into(),
                ..Default::default()
            },
        ],
        steps: vec![pb::StepSpec {
            name: "ship".into(),
            task: Some(pb::step_spec::Task::Exec(pb::ExecTask {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo {{ params.env }}-{{ params.version }}-$BATON_PARAM_VERSION".into(),
                ],
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let submit_with = |params: &[(&str, &str)]| pb::SubmitRequest {
        namespace: Default::default(),
        spec: Some(spec.clone()),
        idempotency_key: String::new(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        template: String::new(),
        template_version: 0,
    };
    let missing = client.submit(submit_with(&[])).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(
        missing.message(),
        "params[\"version\"]: required parameter (the release to deploy) has no value: give one \
         with -p version=VALUE"
    );
    let unknown = client
        .submit(submit_with(&[("version", "1.2"), ("colour", "red")]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().starts_with("params[\"colour\"]: "),
        "{}",
        unknown.message()
    );

    let id = client
        .submit(submit_with(&[("version", "1.2")]))
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let workflow = get(&cluster, id).await;
    assert_eq!(workflow.params["env"], "staging");
    assert_eq!(workflow.params["version"], "1.2");
    let endpoints = Endpoints::parse(&cluster.addr(leader).to_string()).unwrap();
    let agent = Agent::builder(endpoints).name("runner").build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let done = common::wait_for_success(&client, id, TIMEOUT).await;
    assert_eq!(done.steps[0].output.trim_end(), "staging-1.2-1.2");
    let _ = stop.send(());
    running.await.unwrap();
    cluster.shutdown().await;
}

/// An approval: a `wait` step that no agent runs, answered through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_step_waits_for_its_signal_then_the_run_goes_on() {
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    let mut client = cluster.workflows(cluster.follower(leader)).await;
    let endpoints: Vec<_> = cluster
        .running()
        .iter()
        .map(|&id| cluster.addr(id))
        .collect();
    let agent = TestAgent::start("a1", 4, endpoints, |_| Behavior::Succeed);
    let mut spec = noop_spec("release", 3);
    spec.steps[1].task = Some(pb::step_spec::Task::Wait(pb::WaitTask {
        signal: "go-ahead".into(),
        timeout_ms: 3_600_000,
    }));
    let id = submit(&cluster, leader, spec, "").await;
    let waiting = wait_for(TIMEOUT, "the approval to wait", || async {
        let workflow = get(&cluster, id).await;
        (workflow.steps[1].state == pb::StepState::AwaitingSignal as i32).then_some(workflow)
    })
    .await;
    assert_eq!(waiting.steps[1].attempts, 0, "no agent runs a wait step");
    assert_eq!(
        waiting.steps[1].pending_reason,
        format!("signal \"go-ahead\" (baton signal {id} s1)")
    );
    let wrong = client
        .signal(pb::SignalRequest {
            workflow_id: id,
            step: "s2".into(),
            data: String::new(),
            reject: false,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    client
        .signal(pb::SignalRequest {
            workflow_id: id,
            step: "s1".into(),
            data: "{\"approved_by\":\"lead\"}".into(),
            reject: false,
        })
        .await
        .unwrap();
    let done = common::wait_for_success(&client, id, TIMEOUT).await;
    assert_eq!(done.steps[1].output, "{\"approved_by\":\"lead\"}");
    assert_eq!(done.steps[2].state, pb::StepState::Succeeded as i32);
    let executed: Vec<String> = agent.executions().iter().map(|e| e.step.clone()).collect();
    assert_eq!(executed, ["s0", "s2"], "the agent ran the others only");
    agent.kill();
    cluster.shutdown().await;
}
