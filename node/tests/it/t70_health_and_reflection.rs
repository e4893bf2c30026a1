//! The standard `grpc.health.v1` service and gRPC server reflection on the public port: a node
//! is ready (SERVING) once it knows a leader and has caught up; a node that is not a member yet,
//! or that lost its quorum, is not; liveness stays SERVING throughout. Reflection lists Baton's
//! services, so grpcurl works without .proto files.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use baton_node::server::Drained;
use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let reply = HealthClient::new(channel(addr))
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

async fn wait_health(addr: SocketAddr, service: &str, want: ServingStatus, what: &str) {
    wait_for(Duration::from_secs(20), what, || async {
        (health(addr, service).await == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_raft_and_liveness_does_not() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    cluster.leader(Duration::from_secs(20)).await;
    tracing::info!("--- every member becomes ready");
    for id in cluster.running() {
        let addr = cluster.addr(id);
        wait_health(addr, "", ServingStatus::Serving, "a member to be ready").await;
        for service in [
            "baton.v1.WorkflowService",
            "baton.v1.AgentService",
            "baton.v1.AdminService",
            "liveness",
        ] {
            assert_eq!(
                health(addr, service).await,
                Some(ServingStatus::Serving),
                "{service}"
            );
        }
    }

    tracing::info!("--- a started node that is not a member yet is alive, not ready");
    let joiner = cluster.start_joiner(4, test_timing()).await;
    wait_health(
        joiner,
        "liveness",
        ServingStatus::Serving,
        "the joiner to be alive",
    )
    .await;
    assert_eq!(health(joiner, "").await, Some(ServingStatus::NotServing));
    let mut admin = cluster.admin(1).await;
    admin
        .add_member(baton_proto::v1::AddMemberRequest {
            node_id: 4,
            address: joiner.to_string(),
        })
        .await
        .expect("node 4 added");
    wait_health(
        joiner,
        "",
        ServingStatus::Serving,
        "the added node to be ready",
    )
    .await;

    tracing::info!("--- a node that lost its quorum stops being ready but stays alive");
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let survivor = cluster.follower(leader);
    for id in cluster.running() {
        if id != survivor && id != 4 {
            cluster.stop(id).await;
        }
    }
    // Two of four voters remain: no quorum, so no leader after the election timeout.
    let addr = cluster.addr(survivor);
    wait_health(
        addr,
        "",
        ServingStatus::NotServing,
        "the survivor to be not ready",
    )
    .await;
    assert_eq!(health(addr, "liveness").await, Some(ServingStatus::Serving));

    tracing::info!("--- the survivor is ready again once the quorum is back");
    for id in [1, 2, 3] {
        if id != survivor {
            cluster.restart(id).await;
        }
    }
    wait_health(
        addr,
        "",
        ServingStatus::Serving,
        "the survivor to be ready again",
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    init_logs();
    let cluster = TestCluster::start(1, test_timing()).await;
    let mut client = ServerReflectionClient::new(channel(cluster.addr(1)));
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "baton.v1.WorkflowService".into(),
        )),
    ];
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection answers")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies
        .message()
        .await
        .unwrap()
        .and_then(|r| r.message_response)
    else {
        panic!("no list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "baton.v1.WorkflowService",
        "baton.v1.AgentService",
        "baton.v1.AdminService",
        "baton.v1.ScheduleService",
        "baton.v1.TemplateService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) = replies
        .message()
        .await
        .unwrap()
        .and_then(|r| r.message_response)
    else {
        panic!("no file descriptor for baton.v1.WorkflowService");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // The same through v1alpha, which older tools speak (grpcio-reflection, grpc_cli).
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(cluster.addr(1)));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("v1alpha reflection answers")
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = replies
            .message()
            .await
            .unwrap()
            .and_then(|r| r.message_response)
        else {
            panic!("no list of services over v1alpha");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == "baton.v1.WorkflowService"),
            "{names:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_leader_is_not_ready_and_hands_leadership_over() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let addr = cluster.addr(leader);
    wait_health(addr, "", ServingStatus::Serving, "the leader to be ready").await;

    tracing::info!(
        leader,
        "--- drain the leader (what SIGTERM does before stopping)"
    );
    let drained = cluster.servers[&leader].drain().await;
    assert!(
        matches!(drained, Drained::HandedOver { to } if to != leader),
        "{drained:?}"
    );
    assert_eq!(health(addr, "").await, Some(ServingStatus::NotServing));
    assert_eq!(health(addr, "liveness").await, Some(ServingStatus::Serving));
    // drain returns once this node has seen the new leader commit in its term.
    let status = cluster
        .admin(leader)
        .await
        .cluster_status(baton_proto::v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.leader_id != 0 && status.leader_id != leader,
        "{status:?}"
    );
    let new_leader = cluster.addr(status.leader_id);
    wait_health(
        new_leader,
        "",
        ServingStatus::Serving,
        "the new leader to be ready",
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_voters_are_gone_stops_without_waiting_for_a_handover() {
    init_logs();
    let mut cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let node = cluster.servers[&leader].node.clone();
    wait_for(Duration::from_secs(10), "both followers to answer", || {
        let answering = node.voters_answering();
        async move { (answering.len() == 2).then_some(()) }
    })
    .await;

    tracing::info!(
        leader,
        "--- stop both followers, as `batond dev` does on Ctrl-C"
    );
    for id in [1, 2, 3].into_iter().filter(|&id| id != leader) {
        cluster.stop(id).await;
    }
    wait_for(
        Duration::from_secs(10),
        "the leader to notice that no voter answers",
        || {
            let answering = node.voters_answering();
            let leads = node.is_leader();
            async move { (answering.is_empty() || !leads).then_some(()) }
        },
    )
    .await;
    // Still the leader (openraft does not step down for lack of a quorum) or not, the drain
    // asks nobody to take over, so the stop does not wait out DRAIN_TIMEOUT on dead peers.
    let drained = cluster.servers[&leader].drain().await;
    assert!(
        matches!(drained, Drained::NoVoterAnswering | Drained::NotLeader),
        "{drained:?}"
    );
    assert_eq!(
        health(cluster.addr(leader), "").await,
        Some(ServingStatus::NotServing)
    );
    cluster.shutdown().await;
}
