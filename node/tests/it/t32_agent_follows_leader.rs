//! Agent sessions follow the leader when leadership moves without a crash (a leader transfer): the
//! old leader ends the session with a redirect as soon as it stops leading, the agent registers
//! with the new leader, and work keeps flowing to it.

use crate::common;

use std::time::Duration;

use baton_client::Endpoints;
use baton_client::agent::Agent;
use baton_proto::v1 as pb;
use common::*;

/// Whether the cluster's leader (asked through `id`) sees `agent` connected.
async fn connected(cluster: &TestCluster, id: u64, agent: &str) -> Option<()> {
    let agents = cluster
        .admin(id)
        .await
        .list_agents(pb::ListAgentsRequest {})
        .await
        .ok()?
        .into_inner()
        .agents;
    agents
        .iter()
        .any(|a| a.name == agent && a.connected)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_to_the_new_leader_after_a_leader_transfer() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let old_leader = cluster.leader(Duration::from_secs(10)).await;
    let endpoints: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.addr(*id).to_string())
        .collect();
    let agent = Agent::builder(Endpoints::parse(&endpoints.join(",")).unwrap())
        .name("follower")
        .slots(2)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    wait_for(Duration::from_secs(10), "the agent connected", || {
        connected(&cluster, old_leader, "follower")
    })
    .await;

    tracing::info!("--- leadership moves away from node {old_leader}");
    let target = cluster
        .running()
        .into_iter()
        .find(|id| *id != old_leader)
        .unwrap();
    cluster
        .admin(old_leader)
        .await
        .transfer_leader(pb::TransferLeaderRequest { to_node_id: target })
        .await
        .expect("leader transfer");
    let new_leader = wait_for(Duration::from_secs(10), "a new leader", || async {
        let leader = cluster.leader(Duration::from_secs(10)).await;
        (leader != old_leader).then_some(leader)
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the agent connected to the new leader",
        || connected(&cluster, new_leader, "follower"),
    )
    .await;

    tracing::info!("--- work reaches the agent through the new leader");
    let mut workflows = cluster.workflows(new_leader).await;
    let id = workflows
        .submit(pb::SubmitRequest {
            spec: Some(noop_spec("after-transfer", 2)),
            idempotency_key: "after-transfer".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    wait_for_success(&workflows, id, Duration::from_secs(10)).await;
    let _ = stop.send(());
    running.await.unwrap();
    cluster.shutdown().await;
}
