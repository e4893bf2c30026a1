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
