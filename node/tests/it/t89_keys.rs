//! Concurrency keys and rate limits on a three-node cluster with an agent on the real protocol,
//! across a leader kill: a step key of 2 never has 3 steps running at once (the agent's own clock
//! says so, not only the state), a workflow key of 1 runs its workflows one at a time and says
//! what a waiting one waits for, and a rate limit holds within one token of its budget in every
//! window of state time.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use common::agent::{Behavior, TestAgent};
use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn endpoints(cluster: &TestCluster) -> Vec<std::net::SocketAddr> {
    cluster
        .running()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect()
}

async fn submit(cluster: &TestCluster, spec: &pb::WorkflowSpec, env: &str) -> u64 {
    let leader = cluster.leader(Duration::from_secs(20)).await;
    cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            spec: Some(spec.clone()),
            params: match env {
                "" => BTreeMap::new(),
                env => BTreeMap::from([("env".to_owned(), env.to_owned())]),
            },
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .workflow_id
}

async fn get(cluster: &TestCluster, id: u64) -> pb::Workflow {
    let leader = cluster.leader(Duration::from_secs(20)).await;
    cluster
        .workflows(leader)
        .await
        .get(pb::GetRequest {
            workflow_id: id,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .workflow
        .unwrap()
}

async fn history(cluster: &TestCluster, id: u64) -> Vec<pb::WorkflowEvent> {
    let leader = cluster.leader(Duration::from_secs(20)).await;
    cluster
        .workflows(leader)
        .await
        .get_history(pb::GetHistoryRequest {
            workflow_id: id,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .events
}

/// Polls until every workflow in `ids` has succeeded.
async fn all_succeed(cluster: &TestCluster, ids: &[u64]) {
    for &id in ids {
        wait_for(TIMEOUT, "every workflow to succeed", || async move {
            let workflow = get(cluster, id).await;
            assert!(
                workflow.state == pb::WorkflowState::Running as i32
                    || workflow.state == pb::WorkflowState::Succeeded as i32,
                "workflow {id} ended {}: {}",
                workflow.state,
                workflow.reason
            );
            (workflow.state == pb::WorkflowState::Succeeded as i32).then_some(())
        })
        .await;
    }
}

/// The most of `intervals` that overlap at one instant.
fn most_at_once(intervals: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = intervals
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // Ends before starts at the same instant: a step that finished is no longer running.
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

fn params_spec(name: &str) -> pb::WorkflowSpec {
    pb::WorkflowSpec {
        name: name.into(),
        params: vec![pb::ParamSpec {
            name: "env".into(),
            required: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_key_of_two_never_runs_three_at_once_across_a_leader_kill() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("wide", 16, endpoints(&cluster), |_| {
        Behavior::Take(Duration::from_millis(250))
    });
    let mut spec = params_spec("deploy");
    spec.steps = vec![pb::StepSpec {
        name: "roll-out".into(),
        task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
        concurrency: Some(pb::Concurrency {
            key: "deploy-{{ params.env }}".into(),
            limit: 2,
        }),
        ..Default::default()
    }];
    let mut prod = Vec::new();
    let mut dev = Vec::new();
    for i in 0..16 {
        let env = if i % 4 == 3 { "dev" } else { "prod" };
        let id = submit(&cluster, &spec, env).await;
        match env {
            "prod" => prod.push(id),
            _ => dev.push(id),
        }
    }
    // The last prod run waits, and says for what.
    let last = get(&cluster, *prod.last().unwrap()).await;
    assert_eq!(last.steps[0].state, pb::StepState::Ready as i32);
    assert!(
        last.steps[0]
            .pending_reason
            .starts_with("concurrency key \"deploy-prod\" (2 of 2 held"),
        "{:?}",
        last.steps[0].pending_reason
    );
    wait_for(TIMEOUT, "a few prod steps to finish", || async {
        (agent
            .executions()
            .iter()
            .filter(|e| e.finished.is_some())
            .count()
            >= 4)
            .then_some(())
    })
    .await;
    tracing::info!(
        leader,
        "--- stopping the leader with prod steps waiting for their key"
    );
    cluster.stop(leader).await;
    all_succeed(&cluster, &prod).await;
    all_succeed(&cluster, &dev).await;
    let runs = |ids: &[u64]| -> Vec<(Instant, Instant)> {
        agent
            .executions()
            .iter()
            .filter(|e| ids.contains(&e.workflow_id))
            .map(|e| (e.started, e.finished.expect("every execution finished")))
            .collect()
    };
    let (prod_runs, dev_runs) = (runs(&prod), runs(&dev));
    assert_eq!(prod_runs.len(), prod.len(), "each prod step ran once");
    assert_eq!(
        most_at_once(&prod_runs),
        2,
        "prod ran 2 at a time, never more"
    );
    assert!(most_at_once(&dev_runs) <= 2);
    // The other key never waited for this one: dev's first step started before prod's last.
    let first_dev = dev_runs.iter().map(|r| r.0).min().unwrap();
    let last_prod = prod_runs.iter().map(|r| r.0).max().unwrap();
    assert!(first_dev < last_prod);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_key_runs_its_workflows_one_at_a_time() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("wide", 16, endpoints(&cluster), |_| {
        Behavior::Take(Duration::from_millis(100))
    });
    let mut spec = params_spec("migrate");
    spec.concurrency = Some(pb::Concurrency {
        key: "db-{{ params.env }}".into(),
        limit: 1,
    });
    let step = |name: &str, deps: &[&str]| pb::StepSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
        ..Default::default()
    };
    spec.steps = vec![step("backup", &[]), step("apply", &["backup"])];
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&cluster, &spec, "prod").await);
    }
    let waiting = get(&cluster, ids[3]).await;
    assert!(
        waiting.steps[0]
            .pending_reason
            .starts_with("the workflow waits for concurrency key \"db-prod\" (1 of 1 running"),
        "{:?}",
        waiting.steps[0].pending_reason
    );
    all_succeed(&cluster, &ids).await;
    // Whole workflows one at a time: each one's first step started after the one before it
    // had finished its last.
    let executions = agent.executions();
    let span = |id: u64| {
        let mine: Vec<_> = executions.iter().filter(|e| e.workflow_id == id).collect();
        let start = mine.iter().map(|e| e.started).min().unwrap();
        let end = mine.iter().filter_map(|e| e.finished).max().unwrap();
        (start, end)
    };
    let spans: Vec<(Instant, Instant)> = ids.iter().map(|&id| span(id)).collect();
    assert_eq!(most_at_once(&spans), 1, "{spans:?}");
    // The history says when each waited and when it took the key.
    let kinds: Vec<i32> = history(&cluster, ids[3])
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&(pb::EventKind::KeyWaiting as i32)));
    assert!(kinds.contains(&(pb::EventKind::KeyAcquired as i32)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_within_one_token_across_a_leader_kill() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let agent = TestAgent::start("wide", 16, endpoints(&cluster), |_| Behavior::Succeed);
    const PER_SECOND: u64 = 5;
    const BURST: u64 = 2;
    let spec = pb::WorkflowSpec {
        name: "call-api".into(),
        steps: vec![pb::StepSpec {
            name: "call".into(),
            task: Some(pb::step_spec::Task::Noop(pb::NoopTask {})),
            rate_limit: Some(pb::RateLimit {
                key: "partner-api".into(),
                per_second: PER_SECOND as u32,
                per_minute: 0,
                burst: BURST as u32,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(submit(&cluster, &spec, "").await);
    }
    wait_for(TIMEOUT, "some calls to run", || async {
        (agent.executions().len() >= 6).then_some(())
    })
    .await;
    tracing::info!(leader, "--- stopping the leader halfway through the calls");
    cluster.stop(leader).await;
    all_succeed(&cluster, &ids).await;
    // Every assignment's state time, from the replicated histories.
    let mut starts = Vec::new();
    for &id in &ids {
        for event in history(&cluster, id).await {
            if event.kind == pb::EventKind::StepAssigned as i32 {
                starts.push(event.time_ms);
            }
        }
    }
    starts.sort_unstable();
    assert_eq!(starts.len(), ids.len(), "each call was assigned once");
    // In every window [t_i, t_j]: at most the burst plus what the rate refilled, plus one token
    // for the edges.
    for i in 0..starts.len() {
        for j in i..starts.len() {
            let count = (j - i + 1) as u64;
            let budget = BURST + (starts[j] - starts[i]) * PER_SECOND / 1000 + 1;
            assert!(
                count <= budget,
                "{count} starts in {} ms, more than {budget}: {starts:?}",
                starts[j] - starts[i]
            );
        }
    }
    cluster.shutdown().await;
}
