//! Backup, restore and disaster recovery with the real binaries: `baton cluster snapshot save`
//! from a loaded cluster, `batond restore` into a new three-node cluster holding every workflow
//! of the backup; `batond recover` from the one survivor after two nodes' data is destroyed,
//! workflows kept, new members added, new work accepted. Neither hands out a workflow id or a
//! fencing token the old cluster could have handed out after the copy was taken.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::agent::{Behavior, TestAgent};
use common::procs::{
    Proc, baton_binary, batond_binary, endpoints_flag, loopback, loopbacks, reserve_ports,
    run_to_end, spawn_batond, spawn_node, start_nodes,
};
use common::*;

async fn submit(addrs: &[SocketAddr], key: &str, steps: usize) -> u64 {
    wait_for(
        Duration::from_secs(30),
        "an acknowledged submit",
        || async {
            for addr in addrs {
                let mut client = WorkflowServiceClient::new(channel(*addr));
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(noop_spec(key, steps)),
                    idempotency_key: key.into(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                if let Ok(reply) = client.submit(request).await {
                    return Some(reply.into_inner().workflow_id);
                }
            }
            None
        },
    )
    .await
}

async fn get(addr: SocketAddr, id: u64) -> pb::Workflow {
    WorkflowServiceClient::new(channel(addr))
        .get(pb::GetRequest {
            workflow_id: id,
            consistency: 0,
            attempts_of_step: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("workflow {id}: {e}"))
        .into_inner()
        .workflow
        .unwrap()
}

fn cluster_flag(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={}", i + 1, loopback(*p)))
        .collect::<Vec<_>>()
        .join(",")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_that_reuses_no_id_or_token() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let old_dir = dir.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    let (ports, _old) = start_nodes(3, &old_dir, &[]).await;
    let addrs = loopbacks(&ports);

    tracing::info!("--- load: 30 workflows run to success, 10 more wait with no agent");
    let agent = TestAgent::start("agent-1", 4, addrs.clone(), |_| Behavior::Succeed);
    let mut done = Vec::new();
    for i in 0..30 {
        done.push(submit(&addrs, &format!("done-{i}"), 2).await);
    }
    for &id in &done {
        wait_for_success(
            &WorkflowServiceClient::new(channel(addrs[0])),
            id,
            Duration::from_secs(60),
        )
        .await;
    }
    agent.kill();
    wait_for(
        Duration::from_secs(20),
        "the agent to be disconnected",
        || async {
            let agents = AdminServiceClient::new(channel(addrs[0]))
                .list_agents(pb::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents;
            agents.iter().all(|a| !a.connected).then_some(())
        },
    )
    .await;
    let mut waiting = Vec::new();
    for i in 0..10 {
        waiting.push(submit(&addrs, &format!("waiting-{i}"), 2).await);
    }
    // Nothing is written after this but what the test does: the leader binds data folders on
    // its own, as late as its first round after every member answered.
    folders_bound(&addrs, Duration::from_secs(30)).await;
    let before = converged_at(&addrs, Duration::from_secs(60)).await;

    tracing::info!("--- baton cluster snapshot save");
    let backup = dir.path().join("backup.snap");
    let (code, stdout, stderr) = run_to_end(
        &baton_binary(),
        &[
            "--endpoints",
            &endpoints_flag(&ports),
            "-o",
            "json",
            "cluster",
            "snapshot",
            "save",
            path_str(&backup),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let saved: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    assert_eq!(
        saved["index"].as_u64(),
        Some(before[0].applied_index),
        "{saved}"
    );
    assert_eq!(
        saved["state_hash"].as_str(),
        Some(before[0].state_hash.as_str())
    );
    assert_eq!(
        saved["bytes"].as_u64(),
        Some(std::fs::metadata(&backup).unwrap().len())
    );

    tracing::info!("--- batond restore into three empty data dirs, on new ports");
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new_ports = reserve_ports(3);
    let new_addrs = loopbacks(&new_ports);
    for id in 1..=3 {
        let data = new_dir.join(format!("node{id}"));
        let (code, stdout, stderr) = run_to_end(
            &batond_binary(),
            &[
                "restore",
                "--from",
                path_str(&backup),
                "--data-dir",
                path_str(&data),
                "--node-id",
                &id.to_string(),
                "--initial-cluster",
                &cluster_flag(&new_ports),
            ],
        );
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains(&before[0].state_hash), "{stdout}");
    }
    // A data dir in use is never overwritten.
    let (code, _, stderr) = run_to_end(
        &batond_binary(),
        &[
            "restore",
            "--from",
            path_str(&backup),
            "--data-dir",
            path_str(&old_dir.join("node1")),
            "--node-id",
            "1",
            "--initial-cluster",
            &cluster_flag(&new_ports),
        ],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("is not empty"), "{stderr}");

    let _new: Vec<Proc> = (1..=3)
        .map(|id| spawn_node(id, &new_ports, &new_dir, &[]))
        .collect();
    let after = wait_for(
        Duration::from_secs(30),
        "the restored cluster to be named",
        || async {
            let after = converged_at(&new_addrs, Duration::from_secs(60)).await;
            (!after[0].cluster_id.is_empty()).then_some(after)
        },
    )
    .await;
    tracing::info!(
        old_index = before[0].applied_index,
        new_index = after[0].applied_index,
        "--- a new cluster, holding the backup"
    );
    assert_ne!(
        after[0].cluster_id, before[0].cluster_id,
        "a restored cluster is a new cluster"
    );
    assert!(after[0].applied_index >= before[0].applied_index);
    let members: Vec<String> = after[0].members.iter().map(|m| m.address.clone()).collect();
    let want: Vec<String> = new_addrs.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        members, want,
        "the new cluster's members come from --initial-cluster"
    );

    tracing::info!(
        "--- the restored cluster has every workflow, runs the waiting ones and new work"
    );
    for &id in &done {
        assert_eq!(
            get(new_addrs[1], id).await.state,
            pb::WorkflowState::Succeeded as i32
        );
    }
    let _agent = TestAgent::start("agent-2", 4, new_addrs.clone(), |_| Behavior::Succeed);
    let fresh = submit(&new_addrs, "after-restore", 2).await;
    let client = WorkflowServiceClient::new(channel(new_addrs[0]));
    for &id in waiting.iter().chain([&fresh]) {
        wait_for_success(&client, id, Duration::from_secs(60)).await;
    }

    tracing::info!("--- no id or fencing token the old cluster could have handed out is reused");
    let old_max = *done.iter().chain(&waiting).max().unwrap();
    assert!(
        fresh > old_max + baton_node::state::RESEED_ID_MARGIN,
        "workflow {fresh} after a backup that ended at {old_max}"
    );
    let old_token = max_token(new_addrs[0], &done).await;
    let tokens_after = get(new_addrs[0], fresh).await.steps;
    assert!(
        tokens_after
            .iter()
            .all(|step| step.attempt_id > old_token + baton_node::state::RESEED_ID_MARGIN),
        "tokens {tokens_after:?} after a backup whose last was {old_token}"
    );
}

/// The highest fencing token among the workflows' steps.
async fn max_token(addr: SocketAddr, workflows: &[u64]) -> u64 {
    let mut max = 0;
    for &id in workflows {
        for step in get(addr, id).await.steps {
            max = max.max(step.attempt_id);
        }
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_recovers_from_one_survivor() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = loopbacks(&ports);
    let agent = TestAgent::start("agent-1", 4, addrs.clone(), |_| Behavior::Succeed);
    let mut done = Vec::new();
    for i in 0..20 {
        done.push(submit(&addrs, &format!("done-{i}"), 2).await);
    }
    let client = WorkflowServiceClient::new(channel(addrs[0]));
    for &id in &done {
        wait_for_success(&client, id, Duration::from_secs(60)).await;
    }
    agent.kill();
    // Nothing is written after this but what the test does: the leader binds data folders on
    // its own, as late as its first round after every member answered.
    folders_bound(&addrs, Duration::from_secs(30)).await;
    let before = converged_at(&addrs, Duration::from_secs(60)).await;

    tracing::info!("--- every node dies; nodes 2 and 3 lose their data for good");
    for node in &mut nodes {
        node.kill();
    }
    drop(nodes);
    for id in [2, 3] {
        std::fs::remove_dir_all(dir.path().join(format!("node{id}"))).unwrap();
    }

    tracing::info!("--- batond recover on node 1's data");
    let survivor = dir.path().join("node1");
    let address = loopback(ports[0]).to_string();
    let (code, stdout, stderr) = run_to_end(
        &batond_binary(),
        &[
            "recover",
            "--data-dir",
            path_str(&survivor),
            "--node-id",
            "1",
            "--address",
            &address,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&before[0].state_hash), "{stdout}");
    let copies = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("node1.before-recover-")
        })
        .count();
    assert_eq!(copies, 1, "a copy of the data dir as it was is kept");

    let mut nodes = vec![spawn_node(1, &ports[..1], dir.path(), &[])];
    let alone = wait_for(Duration::from_secs(30), "node 1 to lead alone", || async {
        let s = status(addrs[0]).await?;
        (s.leader_id == 1 && s.members.len() == 1).then_some(s)
    })
    .await;
    assert_eq!(
        alone.cluster_id, before[0].cluster_id,
        "a recovered cluster keeps its name"
    );
    for &id in &done {
        assert_eq!(
            get(addrs[0], id).await.state,
            pb::WorkflowState::Succeeded as i32
        );
    }

    tracing::info!("--- new nodes 4 and 5 join; old ids stay retired");
    let new_ports = reserve_ports(2);
    for (id, port) in [(4u64, new_ports[0]), (5, new_ports[1])] {
        let data = dir.path().join(format!("node{id}"));
        nodes.push(spawn_batond(
            &format!("node{id}"),
            dir.path(),
            &[
                "--insecure",
                "--node-id",
                &id.to_string(),
                "--listen",
                &loopback(port).to_string(),
                "--data-dir",
                path_str(&data),
            ],
        ));
        AdminServiceClient::new(channel(addrs[0]))
            .add_member(pb::AddMemberRequest {
                node_id: id,
                address: loopback(port).to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("add node {id}: {e}"));
    }
    let refused = AdminServiceClient::new(channel(addrs[0]))
        .add_member(pb::AddMemberRequest {
            node_id: 2,
            address: loopback(ports[1]).to_string(),
        })
        .await
        .expect_err("node id 2 is never reused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let all = vec![addrs[0], loopback(new_ports[0]), loopback(new_ports[1])];
    let after = converged_at(&all, Duration::from_secs(60)).await;
    assert_eq!(after[0].members.len(), 3);
    let _agent = TestAgent::start("agent-2", 4, all.clone(), |_| Behavior::Succeed);
    let fresh = submit(&all, "after-recovery", 2).await;
    wait_for_success(
        &WorkflowServiceClient::new(channel(all[2])),
        fresh,
        Duration::from_secs(60),
    )
    .await;
    let old_max = *done.iter().max().unwrap();
    assert!(
        fresh > old_max + baton_node::state::RESEED_ID_MARGIN,
        "workflow {fresh} after a survivor whose last was {old_max}: the lost majority may \
         have handed out ids the survivor never saw"
    );
    let old_token = max_token(all[0], &done).await;
    for step in get(all[0], fresh).await.steps {
        assert!(step.attempt_id > old_token + baton_node::state::RESEED_ID_MARGIN);
    }
}
