//! The gRPC edge: decode, validate, map errors. Never changes state itself: every change is a
//! command proposed through Raft.
//!
//! Errors map to gRPC codes in one place, `status.rs`:
//! ```text
//! NodeError::NoLeader / NotLeader -> UNAVAILABLE        (certainly not applied; retry)
//! NodeError::Unknown             -> UNKNOWN             (may have been applied; retry with the same key)
//! NodeError::Fatal               -> INTERNAL
//! NodeError::Overloaded          -> RESOURCE_EXHAUSTED  (certainly not applied; back off)
//! NodeError::DiskLow             -> RESOURCE_EXHAUSTED  (certainly not applied; the leader's data
//!                                   disk is below its reserve: names it; retry once freed)
//! a counted limit full           -> RESOURCE_EXHAUSTED  (sessions, watches; see limits.rs)
//! a message past its size bound  -> RESOURCE_EXHAUSTED  (see `size_status`)
//! SpecError                      -> INVALID_ARGUMENT    (names the field)
//! Cancelled::NotFound            -> NOT_FOUND
//! Submitted::Rejected            -> FAILED_PRECONDITION (nothing written)
//! MembershipError                -> UNAVAILABLE (leadership moved) / FAILED_PRECONDITION / INTERNAL
//! TransferError, SnapshotError   -> INTERNAL (refused) / DEADLINE_EXCEEDED (did not happen in time)
//! ```
//! Handlers build the statuses of their own checks (INVALID_ARGUMENT naming the field,
//! NOT_FOUND, FAILED_PRECONDITION with the reason); every error of another layer is mapped there.

pub mod admin;
pub mod agent;
pub mod namespace;
pub mod schedule;
pub mod status;
pub mod template;
pub mod trigger;
pub mod workflow;

pub use status::{inbound_error, node_error, size_status};

use std::time::Instant;

use tonic::{Code, Status};

use crate::metrics;

/// Times a handler and counts its result by gRPC code.
pub async fn observed<T>(
    method: &'static str,
    handler: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = handler.await;
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    metrics::grpc_request(method, code, started.elapsed());
    result
}

/// The namespace a request names (`field`; empty: `default`), checked: INVALID_ARGUMENT naming
/// the field for a name no namespace can have.
pub fn namespace_arg(field: &str, namespace: &str) -> Result<String, Status> {
    let namespace = crate::state::namespaces::or_default(namespace);
    crate::state::namespaces::check_namespace_name(namespace)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))?;
    Ok(namespace.to_string())
}

/// NOT_FOUND unless `namespace` exists (after a linearizable read when this node has not seen
/// it yet: one created a moment ago counts).
pub async fn namespace_exists(node: &crate::raft::RaftNode, namespace: &str) -> Result<(), Status> {
    let exists = || node.replica.read(|a| a.state.namespace_exists(namespace));
    if exists() {
        return Ok(());
    }
    node.linearize().await.map_err(node_error)?;
    if exists() {
        return Ok(());
    }
    Err(Status::not_found(format!(
        "namespace {namespace} does not exist (an admin creates it: baton namespace create \
         {namespace})"
    )))
}

/// A namespace as commands carry it: empty for `default`, so those encode as before.
pub fn stored_namespace(namespace: String) -> String {
    if crate::state::namespaces::is_default(&namespace) {
        String::new()
    } else {
        namespace
    }
}

/// `command` with who asked, for the audit trail (`state::audit`); the node's log says it too.
pub fn audited(actor: String, command: crate::state::Command) -> crate::state::Command {
    tracing::info!(
        target: "baton::audit",
        actor = %actor,
        command = command.kind(),
        "change asked"
    );
    crate::state::Command::Audited {
        actor,
        command: Box::new(command),
    }
}
