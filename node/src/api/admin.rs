//! AdminService: cluster status with the state hash, membership changes (one at a time, run on the
//! leader; a follower forwards), leadership transfer, snapshots.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::admin_service_server::AdminService;
use baton_security::TOKEN_METADATA_KEY;
use sha2::Digest;
use tonic::{Request, Response, Status};

use super::observed;
use super::status::{membership_error, node_error, snapshot_error, transfer_error};
use crate::raft::RaftNode;
use crate::scheduler::Sessions;
use crate::security::tokens;
use crate::state::{Command, NodeId};

/// How long AddMember waits for the new node to catch up before it becomes a voter.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// The caller's bearer token, carried along when a follower forwards a call to the leader: the
/// leader authorizes the call again, on the caller's token (the forwarding node's certificate
/// is no client credential).
struct Caller {
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Who called, as this node saw it, for the leader's audit trail.
    actor: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Caller {
        Caller {
            token: request.metadata().get(TOKEN_METADATA_KEY).cloned(),
            actor: None,
        }
    }

    /// [`Caller::of`], naming `actor` to the leader a call is forwarded to.
    fn with_actor<T>(request: &Request<T>, actor: &str) -> Caller {
        Caller {
            actor: actor.parse().ok(),
            ..Caller::of(request)
        }
    }

    fn forward<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(TOKEN_METADATA_KEY, token.clone());
        }
        if let Some(actor) = &self.actor {
            request
                .metadata_mut()
                .insert(crate::security::FORWARDED_ACTOR_KEY, actor.clone());
        }
        request
    }
}

pub struct AdminServiceImpl {
    pub node: Arc<RaftNode>,
    pub sessions: Arc<Sessions>,
}

impl AdminServiceImpl {
    /// A client to the leader's AdminService, or None if this node is the leader.
    async fn leader_admin(
        &self,
    ) -> Result<Option<AdminServiceClient<tonic::transport::Channel>>, Status> {
        let leader =
            self.node.current_leader().await.ok_or_else(|| {
                Status::unavailable("no leader is available: election in progress")
            })?;
        if leader == self.node.id {
            return Ok(None);
        }
        let addr = self
            .node
            .member_addr(leader)
            .ok_or_else(|| Status::unavailable(format!("leader {leader} has no known address")))?;
        let channel = self
            .node
            .peers
            .channel(&addr)
            .map_err(|e| Status::unavailable(format!("leader {leader} at {addr}: {e}")))?;
        Ok(Some(AdminServiceClient::new(channel)))
    }

    fn members(&self) -> Vec<pb::Member> {
        let view = self.node.replica.peer_view();
        self.node
            .members()
            .into_iter()
            .map(|m| pb::Member {
                data_folder: view
                    .incarnation_of(NodeId(m.id))
                    .unwrap_or_default()
                    .to_owned(),
                node_id: m.id,
                address: m.addr,
                voter: m.voter,
                matched_index: m.matched_index.unwrap_or(0),
            })
            .collect()
    }

    async fn status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        let raft = self.node.status();
        let replica = self.node.replica.clone();
        let (applied_index, hash) = tokio::task::spawn_blocking(move || replica.state_hash())
            .await
            .map_err(|e| Status::internal(format!("state hash: {e}")))?;
        let cluster_id = self.node.replica.read(|a| a.state.cluster_id().to_owned());
        Ok(pb::ClusterStatusResponse {
            node_id: self.node.id,
            leader_id: raft.leader.unwrap_or(0),
            term: raft.term,
            members: self.members(),
            role: raft.role.name().into(),
            last_log_index: raft.last_log_index.unwrap_or(0),
            committed_index: raft.committed_index,
            applied_index,
            snapshot_index: raft.snapshot_index.unwrap_or(0),
            purged_index: raft.purged_index,
            state_hash: hex::encode(hash),
            cluster_id,
        })
    }

    async fn add_member(
        &self,
        caller: Caller,
        req: pb::AddMemberRequest,
        actor: String,
    ) -> Result<pb::AddMemberResponse, Status> {
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be at least 1"));
        }
        validate_address(&req.address)?;
        if let Some(mut leader) = self.leader_admin().await? {
            return Ok(leader.add_member(caller.forward(req)).await?.into_inner());
        }
        let id = req.node_id;
        let existing = self.members().into_iter().find(|m| m.node_id == id);
        match existing {
            Some(m) if m.voter && m.address == req.address => {
                return Ok(pb::AddMemberResponse {
                    members: self.members(),
                });
            }
            Some(m) => {
                return Err(Status::already_exists(format!(
                    "node {id} is already a member at {}",
                    m.address
                )));
            }
            None => {}
        }
        if self
            .node
            .replica
            .read(|a| a.state.is_node_id_used(NodeId(id)))
        {
            return Err(Status::failed_precondition(format!(
                "node id {id} was used before and is never reused (an old id on an empty disk can \
                 elect two leaders); start the new node with an id never used in this cluster"
            )));
        }
        self.node
            .propose_client(Command::ReserveNodeId {
                node_id: NodeId(id),
            })
            .await
            .map_err(node_error)?;
        tracing::info!(node = id, address = %req.address, "adding learner");
        let added = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.node.add_learner(id, &req.address),
        )
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "node {id} at {} did not catch up within {CATCH_UP_TIMEOUT:?}; it stays a learner \
                 until it does: check that it runs and is reachable, then add it again",
                req.address
            ))
        })?;
        added.map_err(membership_error)?;
        tracing::info!(node = id, "promoting learner to voter");
        self.node
            .promote_voter(id)
            .await
            .map_err(membership_error)?;
        self.note(
            actor,
            "member.add",
            format!("node {id}"),
            req.address.clone(),
        )
        .await;
        Ok(pb::AddMemberResponse {
            members: self.members(),
        })
    }

    async fn remove_member(
        &self,
        caller: Caller,
        req: pb::RemoveMemberRequest,
        actor: String,
    ) -> Result<pb::RemoveMemberResponse, Status> {
        if let Some(mut leader) = self.leader_admin().await? {
            return Ok(leader
                .remove_member(caller.forward(req))
                .await?
                .into_inner());
        }
        let id = req.node_id;
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == id) else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        };
        let voters = members.iter().filter(|m| m.voter).count();
        if member.voter && voters == 1 {
            return Err(Status::failed_precondition(format!(
                "node {id} is the last voter; a cluster cannot remove its last voter"
            )));
        }
        tracing::info!(node = id, "removing member");
        self.node
            .remove_member(id, member.voter)
            .await
            .map_err(membership_error)?;
        self.note(actor, "member.remove", format!("node {id}"), String::new())
            .await;
        Ok(pb::RemoveMemberResponse {
            members: self.members(),
        })
    }

    async fn transfer_leader(
        &self,
        caller: Caller,
        req: pb::TransferLeaderRequest,
        actor: String,
    ) -> Result<pb::TransferLeaderResponse, Status> {
        if let Some(mut leader) = self.leader_admin().await? {
            return Ok(leader
                .transfer_leader(caller.forward(req))
                .await?
                .into_inner());
        }
        let members = self.members();
        let to = if req.to_node_id == 0 {
            // The voter with the most log replicated.
            members
                .iter()
                .filter(|m| m.voter && m.node_id != self.node.id)
                .max_by_key(|m| m.matched_index)
                .map(|m| m.node_id)
                .ok_or_else(|| Status::failed_precondition("no other voter to transfer to"))?
        } else {
            if !members
                .iter()
                .any(|m| m.voter && m.node_id == req.to_node_id)
            {
                return Err(Status::invalid_argument(format!(
                    "to_node_id: node {} is not a voter",
                    req.to_node_id
                )));
            }
            req.to_node_id
        };
        if to == self.node.id {
            return Ok(pb::TransferLeaderResponse { leader_id: to });
        }
        const MOVE_PATIENCE: Duration = Duration::from_secs(10);
        self.node
            .transfer_leadership(to, MOVE_PATIENCE)
            .await
            .map_err(transfer_error)?;
        let moved = self
            .node
            .status_watch()
            .wait(MOVE_PATIENCE, |s| {
                s.leader.is_some_and(|l| l != self.node.id)
            })
            .await
            .ok_or_else(|| {
                Status::deadline_exceeded(format!(
                    "leadership did not move: no other leader known within {MOVE_PATIENCE:?}"
                ))
            })?;
        let leader_id = moved.leader.unwrap_or(0);
        self.note(
            actor,
            "leader.transfer",
            format!("node {leader_id}"),
            format!("from node {}", self.node.id),
        )
        .await;
        Ok(pb::TransferLeaderResponse { leader_id })
    }

    /// Builds a snapshot covering at least everything applied when the call arrived.
    async fn trigger_snapshot(&self) -> Result<pb::TriggerSnapshotResponse, Status> {
        const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(120);
        let applied = self.node.replica.last_applied_index();
        let snapshot_index = self
            .node
            .build_snapshot(applied, SNAPSHOT_WAIT_MAX)
            .await
            .map_err(snapshot_error)?;
        Ok(pb::TriggerSnapshotResponse { snapshot_index })
    }
}

impl AdminServiceImpl {
    /// Records a membership change, made by Raft itself, in the audit trail. The change has
    /// happened whatever becomes of the record: a failure is logged, not answered.
    async fn note(&self, actor: String, action: &str, target: String, detail: String) {
        tracing::info!(target: "baton::audit", actor = %actor, action, %target, "change made");
        let note = Command::Note(crate::state::audit::NoteCommand {
            actor,
            action: action.to_owned(),
            target,
            detail,
        });
        if let Err(error) = self.node.propose_client(note).await {
            tracing::warn!(%error, action, "the change was made but not recorded in the audit trail");
        }
    }
}

/// The most records one `ListAudit` answers.
const AUDIT_LIMIT_MAX: u32 = 10_000;

/// [`AdminService::list_audit`]: the changes the caller may read. A namespaced token sees its
/// namespaces' changes; the cluster's own (tokens, namespaces, members) need a cluster-wide
/// reader.
async fn list_audit(
    node: &Arc<RaftNode>,
    grants: crate::security::grants::Grants,
    req: pb::ListAuditRequest,
) -> Result<pb::ListAuditResponse, Status> {
    let limit = match req.limit {
        0 => 100,
        limit if limit > AUDIT_LIMIT_MAX => {
            return Err(Status::invalid_argument(format!(
                "limit: {limit}, more than {AUDIT_LIMIT_MAX}"
            )));
        }
        limit => limit,
    };
    let readable = grants.readable();
    let namespaces = if req.namespace.is_empty() {
        readable.clone()
    } else {
        let namespace = super::namespace_arg("namespace", &req.namespace)?;
        grants.require(
            "AdminService.ListAudit",
            &namespace,
            baton_security::TokenRole::Reader,
        )?;
        Some([crate::state::namespaces::or_default(&namespace).to_owned()].into())
    };
    match pb::ReadConsistency::try_from(req.consistency) {
        Ok(pb::ReadConsistency::Stale) => {}
        Ok(_) => node.linearize().await.map_err(node_error)?,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "consistency: unknown value {}",
                req.consistency
            )));
        }
    }
    let query = crate::state::audit::AuditQuery {
        since_ms: req.since_ms,
        namespaces,
        cluster: req.namespace.is_empty() && readable.is_none(),
        limit: limit as usize,
    };
    // O(workflows): on a copy, off the async threads.
    let view = node.replica.view();
    let records = tokio::task::spawn_blocking(move || view.state.audit_records(&query))
        .await
        .map_err(|e| Status::internal(format!("audit: {e}")))?;
    Ok(pb::ListAuditResponse { records })
}

fn validate_address(address: &str) -> Result<(), Status> {
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "address: {address:?} is not HOST:PORT"
        )))
    }
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        observed("ClusterStatus", self.status())
            .await
            .map(Response::new)
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let caller = Caller::with_actor(&request, &actor);
        observed(
            "AddMember",
            self.add_member(caller, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let caller = Caller::with_actor(&request, &actor);
        observed(
            "RemoveMember",
            self.remove_member(caller, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        let caller = Caller::with_actor(&request, &actor);
        observed(
            "TransferLeader",
            self.transfer_leader(caller, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        observed("TriggerSnapshot", self.trigger_snapshot())
            .await
            .map(Response::new)
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        _request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        observed("SaveSnapshot", self.save_snapshot())
            .await
            .map(Response::new)
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let grants = crate::security::grants::Grants::of(&request, &self.node.replica);
        observed(
            "ListAgents",
            self.list_agents_inner(Caller::of(&request), grants),
        )
        .await
        .map(Response::new)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "CreateToken",
            tokens::create(&self.node, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        observed("ListTokens", tokens::list(&self.node))
            .await
            .map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "RevokeToken",
            tokens::revoke(&self.node, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "CreateNamespace",
            super::namespace::create(&self.node, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn update_namespace(
        &self,
        request: Request<pb::UpdateNamespaceRequest>,
    ) -> Result<Response<pb::UpdateNamespaceResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "UpdateNamespace",
            super::namespace::update(&self.node, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let grants = crate::security::grants::Grants::of(&request, &self.node.replica);
        observed(
            "ListNamespaces",
            super::namespace::list(&self.node, &grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let grants = crate::security::grants::Grants::of(&request, &self.node.replica);
        observed(
            "ListAudit",
            list_audit(&self.node, grants, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        let actor = crate::security::actor(&request, &self.node.replica);
        observed(
            "DeleteNamespace",
            super::namespace::delete(&self.node, request.into_inner(), actor),
        )
        .await
        .map(Response::new)
    }
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

impl AdminServiceImpl {
    /// A backup, served by the answering node: a ReadIndex first, so the snapshot holds every
    /// write acknowledged before the call; then an O(1) clone of the applied state, encoded as a
    /// snapshot file off the async threads and streamed in chunks.
    async fn save_snapshot(&self) -> Result<SnapshotStream, Status> {
        self.node.linearize().await.map_err(node_error)?;
        let view = self.node.replica.view();
        let meta = crate::raft::types::SnapshotMeta {
            last_log_id: view.last_applied,
            last_membership: view.membership.clone(),
        };
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let term = meta.last_log_id.map_or(0, |id| id.leader_id.term);
        let cluster_id = view.state.cluster_id().to_owned();
        let (hash, bytes) = tokio::task::spawn_blocking(move || {
            let data = view.state.encode();
            // The state hash is taken over exactly these bytes (`ClusterState::state_hash`).
            let hash: [u8; 32] = sha2::Sha256::digest(&data).into();
            crate::storage::snapshot::encode(&meta, &data).map(|bytes| (hash, bytes))
        })
        .await
        .map_err(|e| Status::internal(format!("snapshot: {e}")))?
        .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        let mut info = Some(pb::SnapshotInfo {
            index,
            term,
            state_hash: hex::encode(hash),
            file_bytes: bytes.len() as u64,
            cluster_id,
            node_id: self.node.id,
        });
        tracing::info!(index, bytes = bytes.len(), "streaming a backup snapshot");
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = bytes
            .chunks(crate::limits::SNAPSHOT_CHUNK_BYTES)
            .map(|chunk| {
                Ok(pb::SnapshotChunk {
                    info: info.take(),
                    data: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    /// The fleet is shared by every namespace; a namespaced token sees only the running steps
    /// of the namespaces it may read.
    async fn list_agents_inner(
        &self,
        caller: Caller,
        grants: crate::security::grants::Grants,
    ) -> Result<pb::ListAgentsResponse, Status> {
        // Connection state is leader memory: ask the leader.
        if let Some(mut leader) = self.leader_admin().await? {
            return Ok(leader
                .list_agents(caller.forward(pb::ListAgentsRequest {}))
                .await?
                .into_inner());
        }
        let connected = self.sessions.connected();
        let agents = self.node.replica.read(|a| {
            a.state
                .agents()
                .map(|agent| {
                    let used = a.state.allocation(agent.id);
                    let running = a
                        .state
                        .live_attempts()
                        .filter(|(_, live)| live.agent_id == agent.id)
                        .filter_map(|(id, live)| {
                            let workflow = a.state.workflow(live.workflow_id)?;
                            grants
                                .allows(&workflow.namespace, baton_security::TokenRole::Reader)
                                .then(|| pb::RunningAttempt {
                                    workflow_id: live.workflow_id.0,
                                    step: workflow.spec.steps[live.step.get()].name.clone(),
                                    attempt_id: id.0,
                                })
                        })
                        .collect();
                    pb::AgentInfo {
                        agent_id: agent.id.0,
                        name: agent.name.clone(),
                        labels: agent.labels.clone(),
                        connected: connected.contains(&agent.id),
                        slots: agent.slots,
                        cpu_millis: agent.cpu_millis,
                        memory_mb: agent.memory_mb,
                        slots_used: used.slots,
                        cpu_millis_used: used.cpu_millis,
                        memory_mb_used: used.memory_mb,
                        running,
                        task_types: agent.task_types.iter().cloned().collect(),
                        namespaces: agent.namespaces.iter().cloned().collect(),
                    }
                })
                .collect()
        });
        Ok(pb::ListAgentsResponse { agents })
    }
}
