//! The client's one error type, and the rule that says whether a failed request was applied.
//!
//! ```text
//! ClientError
//! ├── Endpoint(EndpointError)   bad endpoint list                 not applied (nothing sent)
//! ├── InvalidRequest            refused before sending            not applied
//! ├── Unreachable               could not connect                 not applied (nothing sent)
//! ├── TlsMismatch               TLS on one side only              not applied (never served)
//! ├── Timeout                   no answer within the deadline     unknown
//! ├── ConnectionLost            connection broke during the call  unknown
//! ├── Status                    the server answered an error      by code, see `outcome_of_code`
//! ├── InvalidResponse           OK, but the answer is unusable    applied
//! └── Retried { last, .. }      several attempts, then `last`     unknown if any attempt was
//! ```
//!
//! Why three outcomes: a caller that retries after "unknown" must make the retry safe (the
//! client does this for submits with an idempotency key), and a caller that reports to a human
//! must not say "failed" when the request may well have gone through.

use std::time::Duration;

use tonic::Code;

use crate::endpoints::EndpointError;

/// Whether a failed request took effect on the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Certainly not applied: nothing was sent, or the cluster refused it.
    NotApplied,
    /// Certainly applied, although the call reports an error (e.g. an unusable response).
    Applied,
    /// May or may not have been applied: a timeout, or a connection lost after sending.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),

    /// Checked locally before sending, e.g. a malformed idempotency key.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The connection could not be established, so the request never left this process.
    #[error("cannot connect to {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },

    /// No answer in time; the request may have been received and applied.
    #[error("no answer from {endpoint} within {} ms", timeout.as_millis())]
    Timeout { endpoint: String, timeout: Duration },

    /// The connection broke after the request may have been sent (reset, closed, keep-alive
    /// timeout): the server may have received and applied it.
    #[error("connection to {endpoint} lost during the call: {message}")]
    ConnectionLost { endpoint: String, message: String },

    /// The node and this client disagree about TLS: one speaks it, the other does not. Nothing
    /// was applied, and no retry can help until the configuration changes.
    #[error("{endpoint}: {}", tls_mismatch_text(*node_speaks_tls))]
    TlsMismatch {
        endpoint: String,
        node_speaks_tls: bool,
    },

    /// The call ended with a gRPC status, as a rule sent by the server.
    #[error("{}", describe_status(status))]
    Status {
        endpoint: String,
        status: tonic::Status,
    },

    /// The server answered OK, so the request was applied, but the answer lacks what the
    /// protocol promises (e.g. a GetResponse without its workflow).
    #[error("invalid response from {endpoint}: {message}")]
    InvalidResponse { endpoint: String, message: String },

    /// The call was tried more than once; `last` is the final attempt's error. `outcome` is
    /// unknown when any attempt's was, since that attempt may have been applied.
    #[error("{last} (after {attempts} attempts)")]
    Retried {
        attempts: u32,
        outcome: Outcome,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether the failed request took effect.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Endpoint(_)
            | ClientError::InvalidRequest(_)
            | ClientError::Unreachable { .. }
            | ClientError::TlsMismatch { .. } => Outcome::NotApplied,
            ClientError::Timeout { .. } | ClientError::ConnectionLost { .. } => Outcome::Unknown,
            ClientError::Status { status, .. } => outcome_of_code(status.code()),
            ClientError::InvalidResponse { .. } => Outcome::Applied,
            ClientError::Retried { outcome, .. } => *outcome,
        }
    }

    /// The error of the last attempt, looking through [`ClientError::Retried`].
    pub fn last(&self) -> &ClientError {
        match self {
            ClientError::Retried { last, .. } => last.last(),
            other => other,
        }
    }

    /// The gRPC status of the last attempt, when it ended with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self.last() {
            ClientError::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of the last attempt, when it ended with a status.
    pub fn code(&self) -> Option<Code> {
        self.status().map(tonic::Status::code)
    }

    /// Whether another attempt, possibly on another node, may succeed where this one failed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Timeout { .. }
            | ClientError::ConnectionLost { .. } => true,
            // UNAVAILABLE: the node is shutting down, has no leader yet, or the connection broke;
            // DEADLINE_EXCEEDED: the node (or the leader behind it) was too slow. Both are what
            // failover is for. Every other code is the cluster's considered answer.
            ClientError::Status { status, .. } => {
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
            }
            _ => false,
        }
    }

    /// Classifies a failed tonic call made to `endpoint`.
    pub(crate) fn from_status(endpoint: &str, status: tonic::Status, timeout: Duration) -> Self {
        if baton_proto::status::has_source::<tonic::ConnectError>(&status) {
            return ClientError::Unreachable {
                endpoint: endpoint.to_string(),
                message: innermost_message(&status),
            };
        }
        // tonic reports the deadlines it enforces itself (`grpc-timeout`, `Endpoint::timeout`)
        // as CANCELLED from a `TimeoutExpired`. The client sets neither today, but should one
        // be set, the error is a timeout, not a cancellation.
        if baton_proto::status::has_source::<tonic::TimeoutExpired>(&status) {
            return ClientError::Timeout {
                endpoint: endpoint.to_string(),
                timeout,
            };
        }
        // A status decoded from the server's answer has no source; one with a source was made
        // here from a transport error (hyper, h2, io) once the connection was up, so the
        // request may have reached the server.
        if std::error::Error::source(&status).is_some() {
            return ClientError::ConnectionLost {
                endpoint: endpoint.to_string(),
                message: innermost_message(&status),
            };
        }
        ClientError::Status {
            endpoint: endpoint.to_string(),
            status,
        }
    }
}

/// What to do about a TLS mismatch, in the words of the side that is wrong for this node.
fn tls_mismatch_text(node_speaks_tls: bool) -> &'static str {
    if node_speaks_tls {
        "this node requires mutual TLS and this client speaks plaintext: give it credentials \
         (baton: --credentials DIR or BATON_CREDENTIALS; `batond dev` prints its folder)"
    } else {
        "this node speaks plaintext (it runs with --insecure) and this client uses TLS: drop the \
         credentials (--credentials, BATON_CREDENTIALS, --ca/--cert/--key) or secure the node"
    }
}

/// Whether a failed TLS handshake is what rustls says when the other side answered in
/// plaintext (an HTTP/2 server's first frame is not a TLS record).
pub(crate) fn is_plaintext_answer(error: &ClientError) -> bool {
    matches!(error, ClientError::Unreachable { message, .. } if message.contains("InvalidContentType"))
}

/// What a gRPC code says about whether the request was applied.
///
/// Refusals (bad argument, unknown object, wrong state, overload) are decided before anything
/// is committed, so they are certainly not applied. UNAVAILABLE and DEADLINE_EXCEEDED may come
/// after a leader received the request, and INTERNAL, UNKNOWN, DATA_LOSS and CANCELLED say
/// nothing about how far it got, so they are unknown.
pub fn outcome_of_code(code: Code) -> Outcome {
    match code {
        Code::Ok => Outcome::Applied,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::ResourceExhausted
        | Code::Unauthenticated => Outcome::NotApplied,
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => Outcome::Unknown,
    }
}

/// The lowercase name of a gRPC code, as printed in messages (`invalid argument`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// `invalid argument: steps[1].depends_on[0]: ...`: the code's name, then the server's words
/// (once: a message that already starts with the code's name is not prefixed again).
pub fn describe_status(status: &tonic::Status) -> String {
    let message = status.message().trim();
    let name = code_name(status.code());
    if message.is_empty() {
        name.to_string()
    } else if message
        .get(..name.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(name))
    {
        message.to_string()
    } else {
        format!("{name}: {message}")
    }
}

/// The innermost cause of a transport failure (`Connection refused (os error 111)`) is the
/// useful part; the layers above it only repeat "transport error".
fn innermost_message(status: &tonic::Status) -> String {
    let mut innermost: &dyn std::error::Error = status;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    let message = innermost.to_string();
    if message.is_empty() {
        status.message().to_string()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_error(code: Code, message: &str) -> ClientError {
        ClientError::Status {
            endpoint: "a:1".into(),
            status: tonic::Status::new(code, message),
        }
    }

    #[test]
    fn a_status_reads_as_its_code_then_the_servers_words_once() {
        let said = |code, message| describe_status(&tonic::Status::new(code, message));
        assert_eq!(
            said(Code::InvalidArgument, "steps[0].name: empty"),
            "invalid argument: steps[0].name: empty"
        );
        assert_eq!(said(Code::PermissionDenied, " "), "permission denied");
        assert_eq!(
            said(Code::PermissionDenied, "permission denied"),
            "permission denied"
        );
        assert_eq!(
            said(Code::Unauthenticated, "Unauthenticated: no token"),
            "Unauthenticated: no token"
        );
    }

    #[test]
    fn refusals_are_not_applied_and_not_retried() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::PermissionDenied,
        ] {
            let error = status_error(code, "no");
            assert_eq!(error.outcome(), Outcome::NotApplied, "{code:?}");
            assert!(!error.is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn unavailable_and_deadline_are_unknown_and_retried() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            let error = status_error(code, "later");
            assert_eq!(error.outcome(), Outcome::Unknown, "{code:?}");
            assert!(error.is_retryable(), "{code:?}");
        }
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
            Code::DataLoss,
        ] {
            let error = status_error(code, "?");
            assert_eq!(error.outcome(), Outcome::Unknown, "{code:?}");
            assert!(!error.is_retryable(), "{code:?}");
        }
    }

    #[test]
    fn local_failures_are_classified_by_when_they_happened() {
        let refused = ClientError::Unreachable {
            endpoint: "a:1".into(),
            message: "refused".into(),
        };
        assert_eq!(refused.outcome(), Outcome::NotApplied);
        assert!(refused.is_retryable());
        let timeout = ClientError::Timeout {
            endpoint: "a:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.outcome(), Outcome::Unknown);
        assert!(timeout.is_retryable());
        assert_eq!(timeout.to_string(), "no answer from a:1 within 1000 ms");
        let bad = ClientError::InvalidResponse {
            endpoint: "a:1".into(),
            message: "x".into(),
        };
        assert_eq!(bad.outcome(), Outcome::Applied);
    }

    #[test]
    fn transport_statuses_are_recognised_by_their_source() {
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
        ))));
        let error = ClientError::from_status("a:1", connect, Duration::from_secs(1));
        assert!(
            matches!(&error, ClientError::Unreachable { message, .. } if message == "connection refused")
        );
        assert_eq!(error.outcome(), Outcome::NotApplied);

        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let error = ClientError::from_status("a:1", expired, Duration::from_secs(2));
        assert!(matches!(error, ClientError::Timeout { .. }));

        let reset = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        let error = ClientError::from_status("a:1", reset, Duration::from_secs(2));
        assert!(
            matches!(&error, ClientError::ConnectionLost { message, .. } if message == "connection reset by peer"),
            "{error:?}"
        );
        assert_eq!(error.outcome(), Outcome::Unknown);
        assert!(error.is_retryable());

        let server = tonic::Status::unavailable("no leader");
        let error = ClientError::from_status("a:1", server, Duration::from_secs(2));
        assert!(matches!(error, ClientError::Status { .. }));
        assert_eq!(error.outcome(), Outcome::Unknown);
    }

    #[test]
    fn retried_errors_keep_the_worst_outcome_and_the_last_status() {
        let error = ClientError::Retried {
            attempts: 3,
            outcome: Outcome::Unknown,
            last: Box::new(status_error(Code::NotFound, "workflow 42 not found")),
        };
        assert_eq!(error.outcome(), Outcome::Unknown);
        assert_eq!(error.code(), Some(Code::NotFound));
        assert_eq!(
            error.to_string(),
            "not found: workflow 42 not found (after 3 attempts)"
        );
    }

    #[test]
    fn statuses_print_their_code_name_and_message() {
        let error = status_error(
            Code::InvalidArgument,
            "steps[1].depends_on[0]: step \"b\" depends on unknown step \"x\"",
        );
        assert_eq!(
            error.to_string(),
            "invalid argument: steps[1].depends_on[0]: step \"b\" depends on unknown step \"x\""
        );
        assert_eq!(
            status_error(Code::Unavailable, "").to_string(),
            "unavailable"
        );
    }
}
