//! The server half of the Raft transport: hands peers' RPCs to openraft, and serves the leader's
//! side of forwarding (Propose) and follower reads (ReadIndex).

use std::sync::Arc;

use baton_proto::raft::v1 as pb;
use baton_proto::raft::v1::raft_service_server::RaftService;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::network::{decode, encode};
use super::node::{NodeError, RaftNode};
use super::types::{Snapshot, SnapshotData, SnapshotMeta, Vote};
use crate::limits;
use crate::state::Command;

pub struct RaftServiceImpl {
    pub node: Arc<RaftNode>,
}

fn bad_payload(e: rmp_serde::decode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

fn raft_unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self
            .node
            .raft
            .append_entries(req)
            .await
            .map_err(raft_unavailable)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self.node.raft.vote(req).await.map_err(raft_unavailable)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) =
            rmp_serde::from_slice(&first.header).map_err(bad_payload)?;
        let mut data = first.data;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > limits::SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "snapshot exceeds {} bytes",
                    limits::SNAPSHOT_BYTES_MAX
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        tracing::info!(
            index = meta.last_log_id.map_or(0, |id| id.index),
            bytes = data.len(),
            "installing snapshot from leader"
        );
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotData::Bytes(data),
        };
        let resp = self
            .node
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_unavailable)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self
            .node
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(raft_unavailable)?;
        Ok(Response::new(encode(&resp)))
    }

    async fn propose(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let command: Command = decode(request.get_ref()).map_err(bad_payload)?;
        // Forwarded proposals count against this leader's bound like its own clients' do.
        let Some(_permit) = self.node.admission.proposals(command.count()) else {
            return Err(Status::resource_exhausted(
                crate::raft::node::overloaded().to_string(),
            ));
        };
        match self.node.propose_local(command).await {
            Ok(proposed) => Ok(Response::new(encode(&proposed))),
            Err(NodeError::NotLeader { .. } | NodeError::NoLeader(_)) => {
                Err(Status::failed_precondition("not the leader"))
            }
            Err(NodeError::Unknown(e)) => Err(Status::aborted(e)),
            Err(NodeError::Fatal(e)) => Err(Status::internal(e)),
            Err(NodeError::Overloaded(e)) => Err(Status::resource_exhausted(e)),
        }
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        match self.node.read_index_local().await {
            Ok(index) => Ok(Response::new(pb::ReadIndexResponse { index })),
            Err(NodeError::NotLeader { .. } | NodeError::NoLeader(_)) => {
                Err(Status::failed_precondition("not the leader"))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn hello(
        &self,
        _request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let cluster_id = self.node.replica.read(|a| a.state.cluster_id().to_owned());
        Ok(Response::new(pb::HelloResponse {
            cluster_id,
            node_id: self.node.id,
        }))
    }
}
