//! The gRPC edge: decode, validate, map errors. Never changes state itself: every change is a
//! command proposed through Raft.
//!
//! Errors map to gRPC codes in one place ([`node_error`]):
//! ```text
//! NodeError::NoLeader / NotLeader -> UNAVAILABLE        (certainly not applied; retry)
//! NodeError::Unknown             -> UNKNOWN             (may have been applied; retry with the same key)
//! NodeError::Fatal               -> INTERNAL
//! SpecError                      -> INVALID_ARGUMENT    (names the field)
//! Response::NotFound             -> NOT_FOUND
//! Response::Rejected             -> FAILED_PRECONDITION (nothing written)
//! ```

pub mod admin;
pub mod agent;
pub mod workflow;

use std::time::Instant;

use tonic::{Code, Status};

use crate::metrics;
use crate::raft::NodeError;

pub fn node_error(err: NodeError) -> Status {
    match err {
        NodeError::NoLeader(_) | NodeError::NotLeader { .. } => {
            Status::unavailable(err.to_string())
        }
        NodeError::Unknown(_) => Status::unknown(format!(
            "{err}; retry with the same idempotency key to learn the result"
        )),
        NodeError::Fatal(_) => Status::internal(err.to_string()),
    }
}

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
