//! `baton cluster ...`: status (of one node, or `--all` of every endpoint to compare state
//! hashes), membership, leadership transfer, and snapshots (built on the node, or saved here).

use std::io::Write;
use std::path::Path;

use baton_client::Client;
use baton_client::output::{self, NodeStatus};
use serde_json::Value;

use super::printer::Printer;
use crate::cli::args::{ClusterCommand, SnapshotAction};
use crate::cli::failure::{CallKind, Failure, client_failure};

pub(super) async fn cluster(
    client: &Client,
    out: &Printer,
    command: ClusterCommand,
) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { all: false } => {
            let status = client
                .cluster_status()
                .await
                .map_err(|error| client_failure(error, CallKind::Read, None, None))?;
            out.print(
                || output::cluster_status_json(&status),
                || output::render_cluster_status(&status),
            )
        }
        ClusterCommand::Status { all: true } => cluster_status_all(client, out).await,
        ClusterCommand::Add { node_id, address } => add_member(client, out, node_id, address).await,
        ClusterCommand::Remove { node_id } => remove_member(client, out, node_id).await,
        ClusterCommand::TransferLeader { node_id } => {
            let response = client.transfer_leader(node_id).await.map_err(|error| {
                let hint = "see who leads now with `baton cluster status`";
                client_failure(
                    error,
                    CallKind::Write,
                    Some("cannot transfer leadership"),
                    Some(hint.into()),
                )
            })?;
            out.print(
                || serde_json::json!({ "leader_id": response.leader_id }),
                || format!("leader is now node {}", response.leader_id),
            )
        }
        ClusterCommand::Snapshot {
            action: Some(SnapshotAction::Save { file }),
        } => save_snapshot(client, out, &file).await,
        ClusterCommand::Snapshot { action: None } => trigger_snapshot(client, out).await,
    }
}

async fn add_member(
    client: &Client,
    out: &Printer,
    node_id: u64,
    address: String,
) -> anyhow::Result<()> {
    let object = format!("node {node_id}");
    let response = client.add_member(node_id, address).await.map_err(|error| {
        let hint = "check with `baton cluster status`, then repeat if the node is not a member";
        client_failure(
            error,
            CallKind::Write,
            Some(&format!("cannot add {object}")),
            Some(hint.into()),
        )
    })?;
    out.print(
        || output::members_json(&response.members),
        || output::render_members(&response.members),
    )
}

async fn remove_member(client: &Client, out: &Printer, node_id: u64) -> anyhow::Result<()> {
    let object = format!("node {node_id}");
    let response = client.remove_member(node_id).await.map_err(|error| {
        let hint = "check with `baton cluster status`, then repeat if the node is still a member";
        client_failure(
            error,
            CallKind::Write,
            Some(&format!("cannot remove {object}")),
            Some(hint.into()),
        )
    })?;
    out.print(
        || output::members_json(&response.members),
        || output::render_members(&response.members),
    )
}

/// Asks the cluster to build a snapshot now.
async fn trigger_snapshot(client: &Client, out: &Printer) -> anyhow::Result<()> {
    let response = client.trigger_snapshot().await.map_err(|error| {
        let hint = "see the snapshot index with `baton cluster status`";
        client_failure(
            error,
            CallKind::Write,
            Some("cannot build a snapshot"),
            Some(hint.into()),
        )
    })?;
    out.print(
        || serde_json::json!({ "snapshot_index": response.snapshot_index }),
        || format!("snapshot built at log index {}", response.snapshot_index),
    )
}

/// Fetches a backup, checks its SHA-256 trailer, and writes it crash-safely to `file`.
async fn save_snapshot(client: &Client, out: &Printer, file: &Path) -> anyhow::Result<()> {
    use sha2::Digest;
    let (info, bytes) = client.save_snapshot().await.map_err(|error| {
        client_failure(error, CallKind::Read, Some("cannot save a snapshot"), None)
    })?;
    let intact = bytes.len() > 32 && {
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        sha2::Sha256::digest(body).as_slice() == trailer
    };
    if !intact {
        return Err(Failure::failed(
            "the snapshot received does not match its SHA-256 trailer; nothing written",
        ));
    }
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
    out.print(
        || {
            serde_json::json!({
                "file": file.display().to_string(),
                "index": info.index,
                "term": info.term,
                "state_hash": info.state_hash,
                "cluster_id": info.cluster_id,
                "bytes": info.file_bytes,
                "node_id": info.node_id,
            })
        },
        || {
            format!(
                "saved {} bytes to {}: log index {} (term {}), state hash {}, cluster {}, from node {}",
                info.file_bytes,
                file.display(),
                info.index,
                info.term,
                info.state_hash,
                info.cluster_id,
                info.node_id
            )
        },
    )
}

/// Asks every endpoint at once; prints every answer, then fails if any node did not answer.
async fn cluster_status_all(client: &Client, out: &Printer) -> anyhow::Result<()> {
    let endpoints = client.endpoints().as_slice();
    let answers = futures::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| client.cluster_status_of(endpoint)),
    )
    .await;
    let nodes: Vec<NodeStatus<'_>> = endpoints
        .iter()
        .zip(&answers)
        .map(|(endpoint, answer)| {
            (
                endpoint.to_string(),
                answer.as_ref().map_err(|error| error.to_string()),
            )
        })
        .collect();
    out.print(
        || {
            Value::Array(
                nodes
                    .iter()
                    .map(|(endpoint, answer)| match answer {
                        Ok(status) => serde_json::json!({
                            "endpoint": endpoint,
                            "status": output::cluster_status_json(status),
                            "error": null,
                        }),
                        Err(error) => serde_json::json!({
                            "endpoint": endpoint,
                            "status": null,
                            "error": error,
                        }),
                    })
                    .collect(),
            )
        },
        || output::render_cluster_statuses(&nodes),
    )?;
    let silent = answers.iter().filter(|answer| answer.is_err()).count();
    if silent > 0 {
        return Err(Failure::failed(format!(
            "{silent} of {} nodes did not answer",
            answers.len()
        )));
    }
    Ok(())
}
