//! A leader cut off from its quorum may not know it is deposed, yet it must not keep renewing
//! leases: a new leader could be counting them down already. Here both followers stop while an
//! agent connected to the leader runs a step. The leader still believes it leads, but no quorum
//! acknowledges it, so it stops acknowledging the agent's heartbeats; the agent's own lease
//! deadline passes and it cancels the step. Once the followers are back, the step runs again,
//! after the first execution ended: as a new attempt if the lease expired through the log first,
//! or under the same token if the agent re-registered while the cluster still leased it there
//! (the leader then re-sends the assignment, and nothing else can hold that token).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::Endpoints;
use baton_client::agent::{Agent, TaskContext, TaskError};
use baton_proto::v1 as pb;
use common::*;
use parking_lot::Mutex;

#[derive(Debug, Default)]
struct Runs {
    /// (attempt id, started, ended), one per execution.
    executions: Vec<(u64, Instant, Option<Instant>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_leader_without_quorum_stops_its_step() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let endpoints: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.addr(*id).to_string())
        .collect();

    // The first execution holds until cancelled; later ones succeed at once.
    let runs: Arc<Mutex<Runs>> = Arc::default();
    let handler = {
        let runs = runs.clone();
        move |ctx: TaskContext| {
            let runs = runs.clone();
            async move {
                let index = {
                    let mut runs = runs.lock();
                    runs.executions
                        .push((ctx.attempt_id(), Instant::now(), None));
                    runs.executions.len() - 1
                };
                if index == 0 {
                    ctx.cancelled().await;
                }
                runs.lock().executions[index].2 = Some(Instant::now());
                if index == 0 {
                    Err(TaskError::new("cancelled"))
                } else {
                    Ok("done".to_owned())
                }
            }
        }
    };
    let agent = Agent::builder(Endpoints::parse(&endpoints.join(",")).unwrap())
        .name("worker")
        .slots(1)
        .handler("hold", handler)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    let spec = pb::WorkflowSpec {
        name: "isolated".into(),
        steps: vec![pb::StepSpec {
            name: "hold".into(),
            task: Some(pb::step_spec::Task::Custom(pb::CustomTask {
                r#type: "hold".into(),
                payload: String::new(),
            })),
            lease_ttl_ms: 3_000,
            ..Default::default()
        }],
        ..Default::default()
    };
    let workflow_id = cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(spec),
            idempotency_key: "isolated".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .expect("submit")
        .into_inner()
        .workflow_id;
    wait_for(
        Duration::from_secs(10),
        "the first attempt to start",
        || async { (!runs.lock().executions.is_empty()).then_some(()) },
    )
    .await;

    tracing::info!(
        leader,
        "--- both followers stop: the leader loses its quorum"
    );
    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    for &id in &followers {
        cluster.stop(id).await;
    }
    let node = cluster.servers[&leader].node.clone();
    wait_for(
        Duration::from_secs(5),
        "the leader to notice no quorum acknowledges it",
        || async { (!node.leadership_confirmed()).then_some(()) },
    )
    .await;
    // The agent cannot know whether a new leader exists elsewhere: it must give the step up
    // when its lease runs out, whatever the old leader believes.
    wait_for(
        Duration::from_secs(10),
        "the agent to cancel the step whose lease it cannot renew",
        || async { runs.lock().executions[0].2.map(|_| ()) },
    )
    .await;

    tracing::info!("--- the followers return");
    for &id in &followers {
        cluster.restart(id).await;
    }
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let workflows = cluster.workflows(leader).await;
    let workflow = wait_for_success(&workflows, workflow_id, Duration::from_secs(20)).await;
    {
        let runs = runs.lock();
        assert_eq!(runs.executions.len(), 2, "{:?}", runs.executions);
        let (first, _, first_end) = runs.executions[0];
        let (second, second_start, _) = runs.executions[1];
        let attempts = if second == first { 1 } else { 2 };
        assert!(second >= first, "a re-run never carries an older token");
        assert_eq!(workflow.steps[0].attempts, attempts);
        assert!(
            first_end.expect("first attempt ended") <= second_start,
            "the two attempts overlapped"
        );
    }
    let _ = stop.send(());
    running.await.unwrap();
    cluster.shutdown().await;
}
