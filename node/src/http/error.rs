//! The one place gRPC codes become HTTP statuses. Every JSON API error is a gRPC status first
//! (from the same handler a gRPC call runs, or built here the way a handler would build it), so
//! the messages are the same as over gRPC, naming the field:
//!
//! ```text
//! INVALID_ARGUMENT, OUT_OF_RANGE   400 Bad Request
//! UNAUTHENTICATED                  401 Unauthorized (WWW-Authenticate: Bearer)
//! PERMISSION_DENIED                403 Forbidden
//! NOT_FOUND                        404 Not Found
//! ALREADY_EXISTS, ABORTED,
//! FAILED_PRECONDITION              409 Conflict     (the state does not allow it now)
//! RESOURCE_EXHAUSTED               429 Too Many Requests (Retry-After: 1)
//! CANCELLED                        499 (the client went away)
//! UNIMPLEMENTED                    501 Not Implemented
//! UNAVAILABLE                      503 Service Unavailable (Retry-After: 1; certainly not applied)
//! DEADLINE_EXCEEDED                504 Gateway Timeout
//! UNKNOWN, INTERNAL, DATA_LOSS     500 Internal Server Error
//! ```
//!
//! The body is `{"error": {"code": "not_found", "message": "..."}}`: `code` is the gRPC code's
//! name in lower case, so a script can tell an UNKNOWN outcome (`"unknown"`: the write may have
//! been applied; send it again with the same idempotency key) from an UNAVAILABLE one (it was
//! not).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::{Code, Status};

/// An error answer: a gRPC status, rendered by [`http_status`].
#[derive(Debug)]
pub struct ApiError(pub Status);

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError(status)
    }
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError(Status::invalid_argument(message))
    }
}

/// The HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `not_found` for NOT_FOUND: the name scripts match on.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The JSON error body.
pub fn error_body(code: Code, message: &str) -> serde_json::Value {
    json!({"error": {"code": code_name(code), "message": message}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let mut response = (
            http_status(code),
            axum::Json(error_body(code, self.0.message())),
        )
            .into_response();
        let headers = response.headers_mut();
        match code {
            Code::Unauthenticated => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"baton\""),
                );
            }
            Code::Unavailable | Code::ResourceExhausted => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code has a status, and the ones the API documents map as documented.
    #[test]
    fn codes_map_as_documented() {
        let documented = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::FailedPrecondition, 409),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unknown, 500),
            (Code::Internal, 500),
        ];
        for (code, status) in documented {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
        for number in 0..=16 {
            let code = Code::from_i32(number);
            assert!(!code_name(code).is_empty());
            // Only OK is a success.
            assert_eq!(http_status(code).is_success(), code == Code::Ok, "{code:?}");
        }
    }

    #[test]
    fn answers_carry_the_code_name_the_message_and_hints() {
        let response = ApiError(Status::unavailable("no leader")).into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError(Status::unauthenticated("token")).into_response();
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(
            error_body(Code::NotFound, "workflow 7 not found"),
            json!({"error": {"code": "not_found", "message": "workflow 7 not found"}})
        );
    }
}
