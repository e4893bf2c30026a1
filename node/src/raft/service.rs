//! The server half of the Raft transport: hands peers' RPCs to openraft, and serves the leader's
//! side of forwarding (Propose) and follower reads (ReadIndex).

use std::sync::Arc;

use baton_proto::raft::v1 as pb;
use baton_proto::raft::v1::raft_service_server::RaftService;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use baton_security::server::PeerInfo;
use openraft::async_runtime::WatchReceiver;

use super::envelope::{Admission, Envelope, MessageKind, Receiver, mark_answer};
use super::error::{NodeError, forwarded_status, overloaded};
use super::network::{decode, encode};
use super::node::RaftNode;
use super::types::{Snapshot, SnapshotData, SnapshotMeta, Vote};
use crate::limits;
use crate::state::{Command, NodeId};

pub struct RaftServiceImpl {
    pub node: Arc<RaftNode>,
    /// Mutual TLS: a message's sender must be the node its certificate names.
    pub secure: bool,
}

fn bad_payload(e: rmp_serde::decode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

fn raft_unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

impl RaftServiceImpl {
    /// Lets a Raft message in, or refuses it (see `envelope`). A message meant for this node id
    /// under another data folder halts this node.
    fn admit<T>(&self, request: &Request<T>, kind: MessageKind) -> Result<(), Status> {
        let envelope = Envelope::read(request.metadata())?;
        let view = self.node.replica.peer_view();
        // The effective membership (the latest in the log, applied or not), as openraft votes
        // by it: a follower that has the entry adding a voter but has not applied it yet must
        // not refuse that voter's votes.
        let members: Vec<u64> = {
            let metrics = self.node.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        let admission = Receiver {
            node_id: self.node.id,
            incarnation: &self.node.incarnation,
            view: &view,
            members: &members,
            secure: self.secure,
        }
        .admit(
            envelope.as_ref(),
            request.extensions().get::<PeerInfo>(),
            kind,
        );
        match admission {
            Admission::Admit => Ok(()),
            Admission::Refuse(status) => {
                tracing::warn!(error = %status.message(), "raft message refused");
                Err(status)
            }
            Admission::NotThisNode(reason) => {
                self.node.halt(reason.clone());
                Err(Status::failed_precondition(reason))
            }
        }
    }

    /// An answer marked with this node's incarnation.
    fn answer<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        mark_answer(response.metadata_mut(), &self.node.incarnation);
        response
    }
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.admit(&request, MessageKind::FromLeader)?;
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self
            .node
            .raft
            .append_entries(req)
            .await
            .map_err(raft_unavailable)?;
        Ok(self.answer(encode(&resp)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.admit(&request, MessageKind::Vote)?;
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self.node.raft.vote(req).await.map_err(raft_unavailable)?;
        Ok(self.answer(encode(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.admit(&request, MessageKind::FromLeader)?;
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
        Ok(self.answer(encode(&resp)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.admit(&request, MessageKind::FromLeader)?;
        let req = decode(request.get_ref()).map_err(bad_payload)?;
        let resp = self
            .node
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(raft_unavailable)?;
        Ok(self.answer(encode(&resp)))
    }

    async fn propose(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let command: Command = decode(request.get_ref()).map_err(bad_payload)?;
        // Forwarded proposals count against this leader's bound like its own clients' do.
        let Some(_permit) = self.node.admission.proposals(command.count()) else {
            return Err(Status::resource_exhausted(overloaded().to_string()));
        };
        match self.node.propose_local(command).await {
            Ok(proposed) => Ok(Response::new(encode(&proposed))),
            Err(err) => Err(forwarded_status(err)),
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
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let caller = NodeId(request.get_ref().node_id);
        let response = self.node.replica.read(|applied| pb::HelloResponse {
            cluster_id: applied.state.cluster_id().to_owned(),
            node_id: self.node.id,
            incarnation: self.node.incarnation.clone(),
            members: applied
                .membership
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect(),
            caller_incarnation: applied
                .state
                .incarnation_of(caller)
                .unwrap_or_default()
                .to_owned(),
            wall_time_ms: super::clock::wall_clock_ms(),
            disk_low: self.node.disk.is_low(),
        });
        Ok(Response::new(response))
    }
}
