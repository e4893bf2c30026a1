//! A late joiner whose log the cluster has purged catches up by snapshot and reports the same
//! state hash; membership changes one at a time; node ids are never reused.

use crate::common;

use std::time::Duration;

use baton_proto::v1 as pb;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_by_snapshot() {
    init_logs();
    // Snapshot often and keep no log behind it, so a new node cannot be fed from the log.
    let timing = baton_node::raft::RaftTiming {
        snapshot_every_entries: 50,
        log_kept_behind_snapshot: 0,
        ..test_timing()
    };
    let mut cluster = TestCluster::start(3, timing.clone()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let mut client = cluster.workflows(leader).await;
    for i in 0..300 {
        client
            .submit(pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec(&format!("wf-{i}"), 3)),
                idempotency_key: format!("k{i}"),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            })
            .await
            .expect("submit");
    }
    let mut admin = cluster.admin(leader).await;
    let snapshot = admin
        .trigger_snapshot(pb::TriggerSnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    // Openraft purges behind a snapshot on its own schedule (in batches); wait until the
    // leader's log no longer holds the early entries a new node would need.
    wait_for(
        Duration::from_secs(20),
        "the leader to purge its log",
        || async {
            let mut admin = cluster.admin(leader).await;
            let s = admin
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.purged_index >= 200).then_some(())
        },
    )
    .await;
    tracing::info!(
        snapshot = snapshot.snapshot_index,
        "--- log purged; adding node 4"
    );

    let addr = cluster.start_joiner(4, timing.clone()).await;
    // Ask a follower: membership changes are forwarded to the leader.
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader && id != 4)
        .unwrap();
    let added = cluster
        .admin(follower)
        .await
        .add_member(pb::AddMemberRequest {
            node_id: 4,
            address: addr.to_string(),
        })
        .await
        .expect("add member")
        .into_inner();
    assert!(added.members.iter().any(|m| m.node_id == 4 && m.voter));

    let statuses = cluster.converged(Duration::from_secs(30)).await;
    assert_eq!(statuses.len(), 4);
    let joiner = statuses.iter().find(|s| s.node_id == 4).unwrap();
    assert!(
        joiner.snapshot_index > 0,
        "node 4 caught up without a snapshot"
    );
    assert!(
        statuses
            .iter()
            .all(|s| s.state_hash == statuses[0].state_hash),
        "state hashes differ: {statuses:#?}"
    );
    // The joiner serves reads of data it only ever received inside a snapshot.
    let got = cluster
        .workflows(4)
        .await
        .get(pb::GetRequest {
            workflow_id: 1,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .expect("get from the joiner")
        .into_inner();
    assert_eq!(got.workflow.unwrap().name, "wf-0");
    // It never published the events the snapshot holds: a watch of every workflow from before
    // it is refused, naming where the node can start, rather than starting there silently; the
    // leader, which published them all, replays them.
    let watch_all = |from_index| pb::WatchRequest {
        workflow_id: 0,
        from_index,
        namespace: String::new(),
        all_namespaces: false,
    };
    let refused = cluster
        .workflows(4)
        .await
        .watch(watch_all(1))
        .await
        .expect_err("events the joiner never held");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let whole_from: u64 = refused
        .metadata()
        .get(baton_proto::status::EVENTS_FROM_METADATA)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("where the joiner's events start");
    assert_eq!(whole_from, joiner.snapshot_index + 1);
    assert!(refused.message().contains("from_index"), "{refused:?}");
    cluster
        .workflows(4)
        .await
        .watch(watch_all(whole_from))
        .await
        .expect("a watch from what the joiner holds");
    let mut replay = cluster
        .workflows(leader)
        .await
        .watch(watch_all(1))
        .await
        .expect("the leader holds every event")
        .into_inner();
    let first = replay
        .message()
        .await
        .expect("an event")
        .expect("not ended");
    assert_eq!(first.workflow_id, 1);

    tracing::info!("--- remove node 4; its id can never come back");
    let removed = admin
        .remove_member(pb::RemoveMemberRequest { node_id: 4 })
        .await
        .expect("remove")
        .into_inner();
    assert!(removed.members.iter().all(|m| m.node_id != 4));
    let status = admin
        .add_member(pb::AddMemberRequest {
            node_id: 4,
            address: addr.to_string(),
        })
        .await
        .expect_err("a used id is refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("never reused"),
        "{}",
        status.message()
    );
    let status = admin
        .add_member(pb::AddMemberRequest {
            node_id: 9,
            address: "nowhere".into(),
        })
        .await
        .expect_err("bad address");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("address"));
    let status = admin
        .remove_member(pb::RemoveMemberRequest { node_id: 77 })
        .await
        .expect_err("not a member");
    assert_eq!(status.code(), Code::NotFound);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfers_on_request() {
    init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let target = cluster.follower(leader);
    let moved = cluster
        .admin(leader)
        .await
        .transfer_leader(pb::TransferLeaderRequest { to_node_id: target })
        .await
        .expect("transfer")
        .into_inner();
    assert_eq!(moved.leader_id, target);
    assert_eq!(cluster.leader(Duration::from_secs(10)).await, target);
    cluster.shutdown().await;
}
