//! Token management: the AdminService token RPCs (admin role; the method table in `auth.rs`
//! enforces it) and the bootstrap admin token. Every change goes through the Raft log.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_security::TokenRole;
use baton_security::identity::valid_name;
use baton_security::token::{self, PresentedToken};
use tonic::Status;

use crate::api::node_error;
use crate::raft::{RaftNode, outcome};
use crate::state::namespaces::check_namespace_name;
use crate::state::outcome::{TokenCreated, TokenRevoked};
use crate::state::{Command, CreateTokenCommand};

/// Strength of a role, for a namespaced token's strongest (agents are never namespaced).
fn rank(role: TokenRole) -> u8 {
    TokenRole::ALL
        .iter()
        .rev()
        .filter(|r| role.includes(**r))
        .count() as u8
}

pub async fn create(
    node: &RaftNode,
    req: pb::CreateTokenRequest,
    actor: String,
) -> Result<pb::CreateTokenResponse, Status> {
    if !valid_name(&req.name) {
        return Err(Status::invalid_argument(
            "name: must be 1-128 of A-Z a-z 0-9 . _ -",
        ));
    }
    let mut namespaces = BTreeMap::new();
    for (namespace, role) in &req.namespaces {
        check_namespace_name(namespace)
            .map_err(|e| Status::invalid_argument(format!("namespaces: {e}")))?;
        let role = TokenRole::parse(role)
            .filter(|r| *r != TokenRole::Agent)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "namespaces[{namespace:?}]: {role:?} is not one of admin, operator, \
                     submitter, reader (agents are cluster-wide)"
                ))
            })?;
        namespaces.insert(namespace.clone(), role);
    }
    let role = match (
        req.role.as_str(),
        namespaces.values().max_by_key(|r| rank(**r)),
    ) {
        ("", Some(strongest)) => *strongest,
        ("", None) => {
            return Err(Status::invalid_argument(
                "role: required (admin, operator, submitter, reader or agent), or namespaces",
            ));
        }
        (_, Some(_)) => {
            return Err(Status::invalid_argument(
                "role: a namespaced token takes its roles from namespaces; leave role empty",
            ));
        }
        (role, None) => TokenRole::parse(role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role: {role:?} is not one of admin, operator, submitter, reader, agent"
            ))
        })?,
    };
    for namespace in namespaces.keys() {
        super::super::api::namespace_exists(node, namespace).await?;
    }
    let new = token::generate()
        .map_err(|e| Status::internal(format!("no randomness for a token: {e}")))?;
    let create = CreateTokenCommand {
        id: new.id.clone(),
        name: req.name,
        role,
        namespaces,
        digest: new.digest.to_vec(),
        bootstrap: false,
    };
    let proposed = node
        .propose(crate::api::audited(actor, Command::CreateToken(create)))
        .await
        .map_err(node_error)?;
    match outcome(proposed.response).map_err(node_error)? {
        TokenCreated::Created => Ok(pb::CreateTokenResponse {
            id: new.id,
            token: new.text,
        }),
        TokenCreated::Rejected(reason) => Err(Status::failed_precondition(reason)),
    }
}

pub async fn list(node: &RaftNode) -> Result<pb::ListTokensResponse, Status> {
    node.linearize().await.map_err(node_error)?;
    let tokens = node.replica.read(|a| {
        a.state
            .tokens()
            .map(|t| pb::TokenInfo {
                id: t.id.clone(),
                name: t.name.clone(),
                role: match t.namespaces.is_empty() {
                    true => t.role.to_string(),
                    false => String::new(),
                },
                created_ms: t.created_ms,
                revoked_ms: t.revoked_ms.unwrap_or(0),
                namespaces: t
                    .namespaces
                    .iter()
                    .map(|(ns, role)| (ns.clone(), role.to_string()))
                    .collect(),
            })
            .collect()
    });
    Ok(pb::ListTokensResponse { tokens })
}

pub async fn revoke(
    node: &RaftNode,
    req: pb::RevokeTokenRequest,
    actor: String,
) -> Result<pb::RevokeTokenResponse, Status> {
    if req.id.is_empty() {
        return Err(Status::invalid_argument(
            "id: required (see `baton token list`)",
        ));
    }
    let proposed = node
        .propose(crate::api::audited(
            actor,
            Command::RevokeToken { id: req.id },
        ))
        .await
        .map_err(node_error)?;
    match outcome(proposed.response).map_err(node_error)? {
        TokenRevoked::Revoked { was_live } => Ok(pb::RevokeTokenResponse { was_live }),
        TokenRevoked::Unknown(reason) => Err(Status::not_found(reason)),
    }
}

/// While this node leads a cluster that has no token yet, records `bootstrap` as the first
/// admin token. Every node may be given the same file: whichever leads first records it, and
/// the state machine refuses a bootstrap token once any token exists, so a later leader (or a
/// restart with the file still configured) changes nothing, and a revoked bootstrap token stays
/// revoked.
pub async fn bootstrap_when_leader(node: Arc<RaftNode>, bootstrap: PresentedToken) {
    let mut raft = node.status_watch();
    loop {
        if node.replica.read(|a| a.state.has_tokens()) {
            return;
        }
        if raft.current().is_leader() {
            let command = Command::CreateToken(CreateTokenCommand {
                id: bootstrap.id.clone(),
                name: "bootstrap".into(),
                role: TokenRole::Admin,
                namespaces: BTreeMap::new(),
                digest: bootstrap.digest.to_vec(),
                bootstrap: true,
            });
            let command = crate::api::audited(
                format!("the leader, from --bootstrap-token-file (node {})", node.id),
                command,
            );
            match node.propose_local(command).await {
                Ok(_) => {
                    tracing::info!(id = %bootstrap.id, "bootstrap admin token recorded");
                    return;
                }
                Err(err) => tracing::debug!(error = %err, "bootstrap token not recorded yet"),
            }
        }
        if !raft.changed().await {
            return;
        }
    }
}
