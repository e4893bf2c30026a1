//! Real `batond` processes: SIGKILL of the whole cluster right after acknowledged submissions
//! loses nothing; a foreign data folder is refused at start; a port taken under a starting node
//! makes the launcher start the cluster again on new ports.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::workflow_service_client::WorkflowServiceClient;
use common::procs::{Proc, loopbacks, reserve_ports, spawn_node, start_nodes, start_nodes_picking};
use common::*;

fn spawn(id: u64, ports: &[u16], dir: &Path) -> Proc {
    spawn_node(id as usize, ports, dir, &[])
}

fn endpoints(ports: &[u16]) -> Vec<std::net::SocketAddr> {
    loopbacks(ports)
}

/// Submits through whichever node answers, retrying with the same key.
async fn submit(addrs: &[std::net::SocketAddr], key: &str, name: &str) -> pb::SubmitResponse {
    wait_for(
        Duration::from_secs(30),
        "an acknowledged submit",
        || async {
            for addr in addrs {
                let mut client = WorkflowServiceClient::new(channel(*addr));
                let request = pb::SubmitRequest {
                    namespace: Default::default(),
                    spec: Some(noop_spec(name, 2)),
                    idempotency_key: key.into(),
                    params: Default::default(),
                    template: String::new(),
                    template_version: 0,
                };
                if let Ok(reply) = client.submit(request).await {
                    return Some(reply.into_inner());
                }
            }
            None
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_every_node_loses_nothing_acknowledged() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut nodes) = start_nodes(3, dir.path(), &[]).await;
    let addrs = endpoints(&ports);

    let mut acked = BTreeMap::new();
    for i in 0..200 {
        let key = format!("kill-{i}");
        let reply = submit(&addrs, &key, &format!("wf-{i}")).await;
        assert!(reply.created);
        acked.insert(key, reply.workflow_id);
    }
    tracing::info!(acked = acked.len(), "--- SIGKILL all three nodes");
    for node in &mut nodes {
        node.kill(); // SIGKILL, then reaped
    }
    drop(nodes);

    tracing::info!("--- restart on the same data");
    let _nodes: Vec<Proc> = (1..=3).map(|id| spawn(id, &ports, dir.path())).collect();
    for (key, id) in &acked {
        // Same key, same id, nothing new created.
        let reply = submit(&addrs, key, "resubmitted").await;
        assert_eq!(
            (reply.workflow_id, reply.created),
            (*id, false),
            "key {key}"
        );
    }
    let mut client = WorkflowServiceClient::new(channel(addrs[0]));
    for (key, id) in &acked {
        let workflow = client
            .get(pb::GetRequest {
                workflow_id: *id,
                consistency: 0,
                attempts_of_step: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("workflow {id} ({key}) lost: {e}"))
            .into_inner()
            .workflow
            .unwrap();
        assert_eq!(&workflow.idempotency_key, key);
        assert!(
            workflow.name.starts_with("wf-"),
            "the resubmit overwrote workflow {id}"
        );
    }
}

/// The launcher is made to choose, for node 1, a port this test holds: node 1 exits saying the
/// address is in use, and the launcher starts all three again on new ports, which then form a
/// cluster that takes submits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_under_a_node_is_replaced_and_the_cluster_starts() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let mut picker = baton_launch::PortPicker::trying_first([taken]);
    let (ports, nodes) = start_nodes_picking(&mut picker, 3, dir.path(), &[]).await;
    assert!(
        !ports.contains(&taken),
        "{:?} still has {taken}",
        &ports[..]
    );
    // Node 1 itself holds its new port (not merely someone answering on it).
    assert!(baton_launch::listening_ports(nodes[0].pid()).contains(&ports[0]));
    let reply = submit(&endpoints(&ports), "after-retry", "wf-retry").await;
    assert!(reply.created);
    // The test's own listener was never disturbed.
    drop(held);
}

fn run_to_exit(args: &[&str], data_dir: &PathBuf) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_batond"))
        .arg("--insecure")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run batond");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn foreign_or_mismatched_data_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = reserve_ports(1);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let (code, stderr) = run_to_exit(&["--node-id", "1", "--listen", &listen], &foreign);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a batond data dir"), "{stderr}");

    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("IDENTITY"), r#"{"format":1,"node_id":2}"#).unwrap();
    let (code, stderr) = run_to_exit(&["--node-id", "1", "--listen", &listen], &other);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("belongs to node 2, not node 1"), "{stderr}");

    let (code, stderr) = run_to_exit(&["--node-id", "1", "--listen", "bogus"], &other);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn a_corrupt_snapshot_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    std::fs::create_dir_all(data.join("snapshots")).unwrap();
    std::fs::write(data.join("IDENTITY"), r#"{"format":1,"node_id":1}"#).unwrap();
    std::fs::write(
        data.join("snapshots")
            .join("snapshot-00000000000000000042.bin"),
        b"BATONSNP this is not a valid snapshot at all, only bytes",
    )
    .unwrap();
    let ports = reserve_ports(1);
    let (code, stderr) = run_to_exit(
        &[
            "--node-id",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", ports[0]),
        ],
        &data,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
}
