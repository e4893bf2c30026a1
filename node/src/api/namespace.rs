//! The AdminService namespace RPCs: create and delete (cluster-wide admin tokens; the method
//! table in `security::auth` enforces it) and list (every token, each seeing the namespaces it
//! may read). The state machine decides every change (see `state::namespaces`).

use baton_proto::v1 as pb;
use tonic::Status;

use super::node_error;
use crate::raft::RaftNode;
use crate::security::grants::Grants;
use crate::state::namespaces::{NAMESPACE_DESCRIPTION_MAX, check_namespace_name};
use crate::state::{Command, CreateNamespaceCommand, Response as Applied};

pub async fn create(
    node: &RaftNode,
    req: pb::CreateNamespaceRequest,
) -> Result<pb::CreateNamespaceResponse, Status> {
    check_namespace_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    if req.description.len() > NAMESPACE_DESCRIPTION_MAX {
        return Err(Status::invalid_argument(format!(
            "description: {} bytes, more than {NAMESPACE_DESCRIPTION_MAX}",
            req.description.len()
        )));
    }
    let command = Command::CreateNamespace(CreateNamespaceCommand {
        name: req.name.clone(),
        description: req.description,
    });
    match node
        .propose_client(command)
        .await
        .map_err(node_error)?
        .response
    {
        Applied::Done => Ok(pb::CreateNamespaceResponse {}),
        Applied::NamespaceExists { name } => Err(Status::already_exists(format!(
            "namespace {name} already exists"
        ))),
        Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
        other => Err(Status::internal(format!("create namespace: {other:?}"))),
    }
}

pub async fn list(
    node: &RaftNode,
    grants: &Grants,
    req: pb::ListNamespacesRequest,
) -> Result<pb::ListNamespacesResponse, Status> {
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
    let readable = grants.readable();
    let namespaces = node.replica.read(|a| {
        let usage = a.state.namespace_usage();
        a.state
            .namespaces()
            .filter(|(name, _)| readable.as_ref().is_none_or(|set| set.contains(*name)))
            .map(|(name, record)| {
                let used = usage.get(name).copied().unwrap_or_default();
                pb::Namespace {
                    name: name.to_string(),
                    description: record.map(|r| r.description.clone()).unwrap_or_default(),
                    created_ms: record.map_or(0, |r| r.created_ms),
                    workflows: used.workflows,
                    running: used.running,
                }
            })
            .collect()
    });
    Ok(pb::ListNamespacesResponse { namespaces })
}

pub async fn delete(
    node: &RaftNode,
    req: pb::DeleteNamespaceRequest,
) -> Result<pb::DeleteNamespaceResponse, Status> {
    check_namespace_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    let command = Command::DeleteNamespace {
        name: req.name.clone(),
    };
    match node
        .propose_client(command)
        .await
        .map_err(node_error)?
        .response
    {
        Applied::Done => Ok(pb::DeleteNamespaceResponse {}),
        Applied::NoNamespace { name } => Err(Status::not_found(format!(
            "namespace {name} does not exist"
        ))),
        Applied::Rejected { reason } => Err(Status::failed_precondition(reason)),
        other => Err(Status::internal(format!("delete namespace: {other:?}"))),
    }
}
