//! The gRPC edge: decode, validate, map errors. Never changes state itself: every change is a
//! command proposed through Raft.
//!
//! Errors map to gRPC codes in one place ([`node_error`]):
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
//! Response::NotFound             -> NOT_FOUND
//! Response::Rejected             -> FAILED_PRECONDITION (nothing written)
//! ```

pub mod admin;
pub mod agent;
pub mod workflow;

use std::time::Instant;

use tonic::codegen::http;
use tonic::{Code, Status};

use crate::metrics;
use crate::raft::NodeError;

/// Makes tonic's refusal of an oversized request say RESOURCE_EXHAUSTED, as the gRPC spec asks,
/// instead of its OUT_OF_RANGE: a unary request past its service's decoding bound is answered
/// with a trailers-only response, so the status is in the headers, where this rewrites it.
/// (Streams meet the bound mid-call, as an error on the inbound stream; the handler maps it.)
pub fn size_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("message%20length%20too%20large"));
    if too_large {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
        );
    }
    response
}

/// `tonic::Code::ResourceExhausted` on the wire.
const RESOURCE_EXHAUSTED: &str = "8";

/// The status for an error on an inbound stream: size refusals become RESOURCE_EXHAUSTED.
pub fn inbound_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

pub fn node_error(err: NodeError) -> Status {
    match err {
        NodeError::NoLeader(_) | NodeError::NotLeader { .. } => {
            Status::unavailable(err.to_string())
        }
        NodeError::Unknown(_) => Status::unknown(format!(
            "{err}; retry with the same idempotency key to learn the result"
        )),
        NodeError::Fatal(_) => Status::internal(err.to_string()),
        NodeError::Overloaded(_) | NodeError::DiskLow(_) => {
            Status::resource_exhausted(err.to_string())
        }
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
