//! Agent sessions follow the leader when leadership moves without a crash (a leader transfer): the
//! old leader ends the session with a redirect as soon as it stops leading, the agent registers
//! with the new leader, and work keeps flowing to it.

use crate::common;

use std::time::Duration;

use baton_client::Endpoints;
use baton_client::agent::{Agent, LEADER_METADATA_KEY};
use baton_proto::v1 as pb;
use common::*;

/// The answers of a raw agent session, and the sender that keeps it open while it lives.
type RawSession = (
    tonic::Streaming<pb::ServerMessage>,
    tokio::sync::mpsc::Sender<pb::AgentMessage>,
);

/// Opens an agent session on node `addr` as `name` (a raw one: no redirects followed), and
/// returns it once it is registered, or the status it was refused with.
async fn raw_session(addr: std::net::SocketAddr, name: &str) -> Result<RawSession, tonic::Status> {
    use baton_proto::v1::agent_service_client::AgentServiceClient;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Register(pb::Register {
            name: name.into(),
            slots: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = AgentServiceClient::new(channel(addr))
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Registered(_)),
        }) => Ok((stream, tx)),
        other => panic!("a session's first answer is Registered, not {other:?}"),
    }
}

/// The redirect a node that does not lead answers an agent with: FAILED_PRECONDITION and the
/// leader's address in `baton-leader`.
fn assert_redirect(status: &tonic::Status, leader: std::net::SocketAddr) {
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(leader.to_string().as_str()),
        "{status:?}"
    );
}

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
    // A second session, held open by hand, to see how the old leader ends it.
    let (mut held, _keep_open) = raw_session(cluster.addr(old_leader), "held")
        .await
        .expect("the leader takes a session");

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
    tracing::info!("--- the old leader ends its sessions with a redirect, and refuses new ones");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match held.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the old leader closed the session without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the old leader ends the held session");
    assert_redirect(&ended, cluster.addr(new_leader));
    let Err(refused) = raw_session(cluster.addr(old_leader), "late").await else {
        panic!("a follower took an agent session");
    };
    assert_redirect(&refused, cluster.addr(new_leader));
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
            namespace: Default::default(),
            spec: Some(noop_spec("after-transfer", 2)),
            idempotency_key: "after-transfer".into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
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
