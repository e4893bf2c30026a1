//! Every error of another layer (Raft, membership, snapshots, tonic's own refusals) becomes a
//! gRPC status here, and only here: the table is in `api/mod.rs`.

use tonic::codegen::http;
use tonic::{Code, Status};

use crate::raft::{MembershipError, NodeError, SnapshotError, TransferError};

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
        NodeError::Unknown(_) if crate::faults::active(crate::faults::Broken::AmbiguousRefused) => {
            Status::aborted(format!("{err}; not applied"))
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

pub fn membership_error(err: MembershipError) -> Status {
    match err {
        MembershipError::LeaderMoved => Status::unavailable(err.to_string()),
        MembershipError::Refused(_) => Status::failed_precondition(err.to_string()),
        MembershipError::Failed(_) => Status::internal(err.to_string()),
    }
}

pub fn transfer_error(err: TransferError) -> Status {
    match err {
        TransferError::Refused(why) => Status::internal(why),
        TransferError::NotTakenOver { .. } => {
            Status::deadline_exceeded(format!("leadership did not move: {err}"))
        }
    }
}

pub fn snapshot_error(err: SnapshotError) -> Status {
    match err {
        SnapshotError::Refused(_) => Status::internal(err.to_string()),
        SnapshotError::NotBuilt(_) => Status::deadline_exceeded(err.to_string()),
    }
}
