//! A node that comes back under a member's id on an empty or foreign data folder (a disk that
//! was replaced, the wrong volume mounted) must not vote, take entries or form a second cluster:
//! it halts and names the recovery steps. And connections do not live forever: every server
//! closes a connection at its maximum age, and clients carry on over a new one.

use crate::common;

use std::time::Duration;

use baton_node::state::NodeId;
use baton_proto::v1 as pb;
use common::{TestCluster, noop_spec, test_timing, wait_for};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Starts three nodes, runs a few workflows through them, and waits until the leader has bound
/// every member's data folder.
async fn bound_cluster() -> TestCluster {
    common::init_logs();
    let cluster = TestCluster::start(3, test_timing()).await;
    let leader = cluster.leader(TIMEOUT).await;
    let mut client = cluster.workflows(leader).await;
    for i in 0..3 {
        client
            .submit(pb::SubmitRequest {
                namespace: Default::default(),
                spec: Some(noop_spec(&format!("before-{i}"), 1)),
                idempotency_key: format!("before-{i}"),
                params: Default::default(),
                template: String::new(),
                template_version: 0,
            })
            .await
            .expect("submit");
    }
    wait_for(
        TIMEOUT,
        "every member's data folder to be bound",
        || async {
            cluster
                .servers
                .values()
                .all(|server| {
                    server
                        .node
                        .replica
                        .read(|a| (1..=3).all(|id| a.state.incarnation_of(NodeId(id)).is_some()))
                })
                .then_some(())
        },
    )
    .await;
    cluster
}

/// Replaces node `id`'s data folder with an empty one and starts it again; `initial_cluster`
/// false starts it as a node waiting to be added.
async fn restart_on_an_empty_folder(cluster: &mut TestCluster, id: u64, initial_cluster: bool) {
    cluster.stop(id).await;
    let data = cluster.configs[&id].data_dir.clone();
    std::fs::remove_dir_all(&data).unwrap();
    if !initial_cluster {
        cluster
            .configs
            .get_mut(&id)
            .unwrap()
            .initial_cluster
            .clear();
    }
    cluster.restart(id).await;
}

/// Waits for node `id` to halt, checks that it took nothing from the cluster meanwhile and that
/// its reason names the data folder the cluster knows and the recovery steps.
async fn halted_untouched(cluster: &TestCluster, id: u64) -> String {
    let server = &cluster.servers[&id];
    let reason = tokio::time::timeout(TIMEOUT, server.halted())
        .await
        .unwrap_or_else(|_| panic!("node {id} on an empty folder never halted"));
    let raft = server.node.status();
    assert_eq!(
        raft.last_log_index, None,
        "node {id} took entries before halting"
    );
    assert_eq!(raft.term, 0, "node {id} voted");
    assert_eq!(server.node.replica.last_applied_index(), 0);
    let known = cluster.servers.values().find_map(|s| {
        s.node
            .replica
            .read(|a| a.state.incarnation_of(NodeId(id)).map(str::to_owned))
    });
    let known = known.expect("a member still knows the lost folder");
    assert!(reason.contains(&known), "{reason} does not name {known}");
    assert!(
        reason.contains(&format!("baton cluster remove {id}")),
        "{reason}"
    );
    reason
}

async fn still_serves(cluster: &TestCluster, leader: u64, name: &str) {
    cluster
        .workflows(leader)
        .await
        .submit(pb::SubmitRequest {
            namespace: Default::default(),
            spec: Some(noop_spec(name, 1)),
            idempotency_key: name.into(),
            params: Default::default(),
            template: String::new(),
            template_version: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("the cluster stopped serving: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_on_an_empty_folder_halts_before_it_votes_or_takes_entries() {
    let mut cluster = bound_cluster().await;
    let leader = cluster.leader(TIMEOUT).await;
    let follower = cluster.follower(leader);

    tracing::info!("--- node {follower} comes back with --initial-cluster on an empty folder");
    restart_on_an_empty_folder(&mut cluster, follower, true).await;
    // It learns it from the members' answers before it starts, or from the leader's first
    // message, whichever comes first: both name the folder the cluster knows and what to do.
    halted_untouched(&cluster, follower).await;
    still_serves(&cluster, leader, "after-follower").await;

    tracing::info!("--- node {follower} comes back as a joiner on an empty folder");
    restart_on_an_empty_folder(&mut cluster, follower, false).await;
    let reason = halted_untouched(&cluster, follower).await;
    assert!(
        reason.contains(&format!(
            "the cluster knows node {follower} by its data folder"
        )),
        "without --initial-cluster it waits for the leader, who names the folder: {reason}"
    );
    still_serves(&cluster, leader, "after-joiner").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lowest_id_on_an_empty_folder_never_forms_a_second_cluster() {
    let mut cluster = bound_cluster().await;
    tracing::info!("--- node 1, the one that formed the cluster, comes back on an empty folder");
    restart_on_an_empty_folder(&mut cluster, 1, true).await;
    halted_untouched(&cluster, 1).await;
    // Initializing writes the first membership entry (index 0): none means none formed.
    assert_eq!(
        cluster.servers[&1].node.status().last_log_index,
        None,
        "node 1 initialized a new cluster"
    );
    let leader = wait_for(TIMEOUT, "a leader among nodes 2 and 3", || async {
        cluster.servers[&2].node.status().leader.filter(|l| *l != 1)
    })
    .await;
    still_serves(&cluster, leader, "after-node-1").await;
    cluster.shutdown().await;
}

/// Every server closes a connection at `--max-connection-age-secs` (after a grace for open
/// streams), so a watch that never ends by itself is cut and the client reconnects: nothing
/// (a revoked certificate, an old CA) lives on one connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_are_closed_at_their_maximum_age() {
    common::init_logs();
    let mut cluster = TestCluster::start(1, test_timing()).await;
    cluster.leader(TIMEOUT).await;
    cluster.stop(1).await;
    cluster.configs.get_mut(&1).unwrap().max_connection_age = Duration::from_secs(2);
    cluster.restart(1).await;
    cluster.leader(TIMEOUT).await;
    let mut client = cluster.workflows(1).await;
    let mut watch = client
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch opens")
        .into_inner();
    let opened = std::time::Instant::now();
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "ended",
                Err(_) => return "cut",
            }
        }
    })
    .await
    .expect("the watch's connection was never closed");
    tracing::info!(
        after_ms = opened.elapsed().as_millis() as u64,
        how = ended,
        "--- the aged connection is gone"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "closed before its age"
    );
    still_serves(&cluster, 1, "over-a-new-connection").await;
    cluster.shutdown().await;
}
