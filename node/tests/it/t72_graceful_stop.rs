//! Real `batond` processes stopped with SIGTERM: the leader hands leadership to a follower, and
//! the new leader commits in its new term before the old process exits (exit code 0); a rolling restart of all
//! three nodes under a submit load loses nothing, and the longest gap between committed
//! assignments is printed (a figure, not an assertion).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{
    Proc, endpoints_flag, loopbacks, sigterm, spawn_agent, spawn_node, start_nodes,
};
use common::*;

/// The leader every node in `addrs` agrees on.
async fn agreed_leader(addrs: &[SocketAddr]) -> u64 {
    wait_for(
        Duration::from_secs(30),
        "a leader all nodes agree on",
        || async {
            let mut leaders = Vec::new();
            for addr in addrs {
                leaders.push(status(*addr).await?.leader_id);
            }
            (leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0])).then_some(leaders[0])
        },
    )
    .await
}

/// Submits through whichever node answers, retrying with the same key until acknowledged.
async fn submit(addrs: &[SocketAddr], key: &str) -> u64 {
    wait_for(
        Duration::from_secs(30),
        "an acknowledged submit",
        || async {
            for addr in addrs {
                let mut client = WorkflowServiceClient::new(channel(*addr));
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(noop_spec(key, 1)),
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

/// Waits for the process to exit by itself and returns its exit code.
async fn exit_code(node: &mut Proc, timeout: Duration) -> Option<i32> {
    wait_for(timeout, "the process to exit", || {
        let exited = node.try_wait().expect("try_wait");
        async move { exited }
    })
    .await
    .code()
}

/// Waits until every workflow in `ids` has succeeded, reading through any node that answers.
async fn all_succeed(addrs: &[SocketAddr], ids: &[u64]) -> Vec<pb::Workflow> {
    let mut done = Vec::new();
    for &id in ids {
        let workflow = wait_for(
            Duration::from_secs(60),
            "an acknowledged workflow to succeed",
            || async {
                for addr in addrs {
                    let mut client = WorkflowServiceClient::new(channel(*addr));
                    let Ok(reply) = client
                        .get(pb::GetRequest {
                            workflow_id: id,
                            consistency: 0,
                            attempts_of_step: String::new(),
                        })
                        .await
                    else {
                        continue;
                    };
                    let workflow = reply.into_inner().workflow?;
                    return (workflow.state == pb::WorkflowState::Succeeded as i32)
                        .then_some(workflow);
                }
                None
            },
        )
        .await;
        done.push(workflow);
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_elects_a_new_leader_before_it_exits() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = loopbacks(&ports);
    let _agent = spawn_agent("agent-a", &endpoints_flag(&ports), dir.path(), &[], &[]);
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(submit(&addrs, &format!("before-{i}")).await);
    }
    let old = agreed_leader(&addrs).await;
    let old_term = status(addrs[old as usize - 1]).await.unwrap().term;
    let witness = addrs[old as usize % 3];

    tracing::info!(leader = old, "--- SIGTERM the leader");
    let sent = Instant::now();
    sigterm(&nodes[old as usize - 1]);
    // Wait for the exit, watching another node meanwhile (a figure for the log: the old node
    // exits within tens of ms of the handover, so a poll may or may not catch the window).
    let mut seen_live = None;
    let code = loop {
        let witnessed = status(witness).await;
        if let Some(code) = nodes[old as usize - 1].try_wait().unwrap() {
            break code.code();
        }
        if seen_live.is_none()
            && let Some(s) = witnessed
            && s.leader_id != 0
            && s.leader_id != old
        {
            seen_live = Some((s.leader_id, sent.elapsed()));
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "node {old} did not exit"
        );
    };
    assert_eq!(code, Some(0), "a drained node exits 0");
    // The proof of order: the old node logs the handover only once it has seen the new leader
    // commit an entry of its new term, and it logs before it exits.
    let log = std::fs::read_to_string(dir.path().join(format!("node{old}.log"))).unwrap();
    let handover = log
        .lines()
        .find(|l| l.contains("drain: leadership handed over"))
        .unwrap_or_else(|| panic!("node {old} exited without handing leadership over:\n{log}"));
    let after = status(witness).await.expect("the witness answers");
    assert!(after.leader_id != 0 && after.leader_id != old);
    assert!(after.term > old_term);
    let new = after.leader_id;
    assert!(
        handover.contains(&format!("leader=Some({new})")),
        "the old node handed over to the leader the others follow: {handover}"
    );
    tracing::info!(witnessed_before_exit = ?seen_live, "witness poll");
    tracing::info!(
        old,
        new,
        exited_after_ms = sent.elapsed().as_millis() as u64,
        "leadership moved before the old leader exited"
    );

    tracing::info!("--- the cluster takes and runs work without the old leader, then with it");
    let live: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old as usize - 1)
        .map(|(_, a)| *a)
        .collect();
    for i in 0..10 {
        acked.push(submit(&live, &format!("after-{i}")).await);
    }
    nodes[old as usize - 1] = spawn_node(old as usize, &ports, dir.path(), &[]);
    for i in 0..10 {
        acked.push(submit(&addrs, &format!("back-{i}")).await);
    }
    all_succeed(&addrs, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = loopbacks(&ports);
    let endpoints = endpoints_flag(&ports);
    let _agents: Vec<Proc> = ["agent-a", "agent-b"]
        .into_iter()
        .map(|name| spawn_agent(name, &endpoints, dir.path(), &[], &[]))
        .collect();
    agreed_leader(&addrs).await;

    tracing::info!("--- submit load: one workflow every 25 ms");
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let stop = stop.clone();
        let acked_count = acked_count.clone();
        let addrs = addrs.clone();
        async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                acked.push(submit(&addrs, &format!("load-{i}")).await);
                acked_count.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts_began_ms = baton_node::raft::clock::wall_clock_ms();
    for id in 1..=3usize {
        tracing::info!(node = id, "--- SIGTERM, then restart on the same data");
        let acked_before = acked_count.load(Ordering::Relaxed);
        sigterm(&nodes[id - 1]);
        let code = exit_code(&mut nodes[id - 1], Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "node {id} exits 0 after its drain");
        nodes[id - 1] = spawn_node(id, &ports, dir.path(), &[]);
        // Back in the cluster: it follows a leader and has applied what that leader had
        // committed when it came back; and the load went on meanwhile.
        let leader_committed = wait_for(Duration::from_secs(30), "the node to rejoin", || async {
            let s = status(addrs[id - 1]).await?;
            if s.leader_id == 0 {
                return None;
            }
            Some(
                status(addrs[s.leader_id as usize - 1])
                    .await?
                    .committed_index,
            )
        })
        .await;
        wait_for(
            Duration::from_secs(30),
            "the restarted node to catch up",
            || async {
                let s = status(addrs[id - 1]).await?;
                (s.applied_index >= leader_committed).then_some(())
            },
        )
        .await;
        wait_for(
            Duration::from_secs(30),
            "more submits acknowledged",
            || async { (acked_count.load(Ordering::Relaxed) >= acked_before + 10).then_some(()) },
        )
        .await;
    }
    let restarts_ended_ms = baton_node::raft::clock::wall_clock_ms();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    tracing::info!(
        acked = acked.len(),
        "--- every acknowledged workflow succeeds"
    );
    let workflows = all_succeed(&addrs, &acked).await;
    assert_eq!(workflows.len(), acked.len());

    let mut starts: Vec<u64> = workflows
        .iter()
        .flat_map(|w| w.steps.iter().map(|s| s.started_at_ms))
        .filter(|&t| t >= restarts_began_ms && t <= restarts_ended_ms)
        .collect();
    starts.sort_unstable();
    let longest_gap_ms = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    println!(
        "rolling restart of 3 nodes under load: {} workflows acknowledged, all succeeded; \
         {} assignments during the {} ms of restarts; longest gap between committed \
         assignments: {longest_gap_ms} ms",
        acked.len(),
        starts.len(),
        restarts_ended_ms - restarts_began_ms
    );
    assert!(
        !starts.is_empty(),
        "assignments went on during the restarts"
    );
}
