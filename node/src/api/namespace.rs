//! The AdminService namespace RPCs: create and delete (cluster-wide admin tokens; the method
//! table in `security::auth` enforces it) and list (every token, each seeing the namespaces it
//! may read). The state machine decides every change (see `state::namespaces`).

use baton_proto::v1 as pb;
use tonic::Status;

use super::node_error;
use crate::raft::RaftNode;
use crate::security::grants::Grants;
use crate::state::namespaces::{NAMESPACE_DESCRIPTION_MAX, WEIGHT_MAX, check_namespace_name};
use crate::state::{
    ClusterState, Command, CreateNamespaceCommand, Quotas, Response as Applied,
    UpdateNamespaceCommand,
};

/// A weight as a request gives it: 0 (unset) or 1 to WEIGHT_MAX.
fn checked_weight(field: &str, weight: u32) -> Result<u32, Status> {
    if weight > WEIGHT_MAX {
        return Err(Status::invalid_argument(format!(
            "{field}: {weight} is more than {WEIGHT_MAX}"
        )));
    }
    Ok(weight)
}

fn quotas_of(q: &pb::NamespaceQuotas) -> Quotas {
    Quotas {
        running_workflows: q.max_running_workflows,
        active_steps: q.max_active_steps,
        submits_per_second: q.submits_per_second,
        submit_burst: q.submit_burst,
    }
}

/// The API view of namespace `name` (its record, if it has one), with what it holds now.
/// `usage`: its workflows, when the caller walked the state for them.
fn view(
    state: &ClusterState,
    name: &str,
    record: Option<&crate::state::namespaces::Namespace>,
    workflows: u64,
) -> pb::Namespace {
    let live = state.live(name);
    let quotas = record.map(|r| r.quotas).unwrap_or_default();
    pb::Namespace {
        name: name.to_string(),
        description: record.map(|r| r.description.clone()).unwrap_or_default(),
        created_ms: record.map_or(0, |r| r.created_ms),
        workflows,
        running: live.running,
        active_steps: live.active_steps,
        quotas: Some(pb::NamespaceQuotas {
            max_running_workflows: quotas.running_workflows,
            max_active_steps: quotas.active_steps,
            submits_per_second: quotas.submits_per_second,
            submit_burst: quotas.submit_burst,
        }),
        weight: state.weight(name),
    }
}

pub async fn create(
    node: &RaftNode,
    req: pb::CreateNamespaceRequest,
    actor: String,
) -> Result<pb::CreateNamespaceResponse, Status> {
    check_namespace_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    if req.description.len() > NAMESPACE_DESCRIPTION_MAX {
        return Err(Status::invalid_argument(format!(
            "description: {} bytes, more than {NAMESPACE_DESCRIPTION_MAX}",
            req.description.len()
        )));
    }
    if let Some(quotas) = &req.quotas
        && quotas.submit_burst != 0
        && quotas.submits_per_second == 0
    {
        return Err(Status::invalid_argument(
            "quotas.submit_burst: set without quotas.submits_per_second (the rate it bursts \
             above)",
        ));
    }
    let command = Command::CreateNamespace(CreateNamespaceCommand {
        weight: checked_weight("weight", req.weight)?,
        quotas: req.quotas.as_ref().map(quotas_of).unwrap_or_default(),
        name: req.name.clone(),
        description: req.description,
    });
    match node
        .propose_client(super::audited(actor, command))
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
                view(&a.state, name, record, used.workflows)
            })
            .collect()
    });
    Ok(pb::ListNamespacesResponse { namespaces })
}

pub async fn delete(
    node: &RaftNode,
    req: pb::DeleteNamespaceRequest,
    actor: String,
) -> Result<pb::DeleteNamespaceResponse, Status> {
    check_namespace_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    let command = Command::DeleteNamespace {
        name: req.name.clone(),
    };
    match node
        .propose_client(super::audited(actor, command))
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

pub async fn update(
    node: &RaftNode,
    req: pb::UpdateNamespaceRequest,
    actor: String,
) -> Result<pb::UpdateNamespaceResponse, Status> {
    check_namespace_name(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
    if let Some(description) = &req.description
        && description.len() > NAMESPACE_DESCRIPTION_MAX
    {
        return Err(Status::invalid_argument(format!(
            "description: {} bytes, more than {NAMESPACE_DESCRIPTION_MAX}",
            description.len()
        )));
    }
    let command = Command::UpdateNamespace(UpdateNamespaceCommand {
        weight: req
            .weight
            .map(|w| checked_weight("weight", w))
            .transpose()?,
        name: req.name.clone(),
        description: req.description,
        running_workflows: req.max_running_workflows,
        active_steps: req.max_active_steps,
        submits_per_second: req.submits_per_second,
        submit_burst: req.submit_burst,
    });
    match node
        .propose_client(super::audited(actor, command))
        .await
        .map_err(node_error)?
        .response
    {
        Applied::Done => {}
        Applied::NoNamespace { name } => {
            return Err(Status::not_found(format!(
                "namespace {name} does not exist"
            )));
        }
        other => return Err(Status::internal(format!("update namespace: {other:?}"))),
    }
    // A follower forwarded the proposal: read once this node has applied it.
    node.linearize().await.map_err(node_error)?;
    let namespace = node.replica.read(|a| {
        let record = a
            .state
            .namespaces()
            .find(|(n, _)| *n == req.name)
            .and_then(|(_, r)| r);
        let workflows = a
            .state
            .namespace_usage()
            .get(req.name.as_str())
            .map_or(0, |u| u.workflows);
        view(&a.state, &req.name, record, workflows)
    });
    Ok(pb::UpdateNamespaceResponse {
        namespace: Some(namespace),
    })
}
