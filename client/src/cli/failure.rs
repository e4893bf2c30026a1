//! Turns any failure of a command into one stderr message (plus a hint) and an exit code.
//!
//! Exit codes are an interface for scripts: 0 ok, 1 the operation failed, 2 bad usage or input
//! (nothing was sent, or the cluster refused the input as invalid), 3 the outcome is unknown (the
//! request may or may not have been applied: check, or repeat it, which is safe for every command).

use std::fmt;

use baton_client::{ClientError, Outcome};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNKNOWN: u8 = 3;

/// A failure with its message already worded for the user, its exit code and an optional hint.
#[derive(Debug)]
pub struct Failure {
    pub exit_code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Bad input found before anything was sent.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit_code: EXIT_USAGE,
            message: message.into(),
            hint: None,
        })
    }

    /// The operation failed with a message of our own (e.g. `workflow 42 not found`).
    pub fn failed(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit_code: EXIT_FAILED,
            message: message.into(),
            hint: None,
        })
    }

    /// A write whose outcome we cannot tell from the answer; `hint` says how to find out.
    pub fn unknown(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            exit_code: EXIT_UNKNOWN,
            message: message.into(),
            hint: Some(hint.into()),
        })
    }
}

/// What kind of call failed, which decides what "unknown outcome" means for the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// Reads change nothing: an unknown outcome is just a failure.
    Read,
    /// Writes may have happened: an unknown outcome exits 3, with `hint` saying how to find out.
    Write,
}

/// Words a client error for the user. `object` names what the call was about when the error
/// itself does not (`workflow 42`, `node 4`); `unknown_hint` says how to resolve an unknown
/// outcome of a write.
pub fn client_failure(
    error: ClientError,
    kind: CallKind,
    object: Option<&str>,
    unknown_hint: Option<String>,
) -> anyhow::Error {
    let detail = match object {
        Some(object) => format!("{object}: {error}"),
        None => error.to_string(),
    };
    let unknown = kind == CallKind::Write && error.outcome() == Outcome::Unknown;
    let (exit_code, message, hint) = match error.last() {
        ClientError::Endpoint(_)
        | ClientError::InvalidRequest(_)
        | ClientError::TlsMismatch { .. } => (EXIT_USAGE, detail, None),
        _ if error.code() == Some(tonic::Code::InvalidArgument) => (EXIT_USAGE, detail, None),
        _ if unknown => (
            EXIT_UNKNOWN,
            format!("outcome unknown: {detail}"),
            Some(unknown_hint.unwrap_or_else(|| {
                "the request may or may not have been applied; check, then repeat it if needed"
                    .to_string()
            })),
        ),
        ClientError::Unreachable { .. } => (
            EXIT_FAILED,
            detail,
            Some(
                "check that batond runs at that address, or set --endpoints / BATON_ENDPOINTS"
                    .into(),
            ),
        ),
        _ => (EXIT_FAILED, detail, None),
    };
    anyhow::Error::new(Failure {
        exit_code,
        message,
        hint,
    })
}

/// The exit code and lines to print for an error that ended a command.
pub fn report(error: &anyhow::Error) -> (u8, String) {
    if let Some(failure) = error.downcast_ref::<Failure>() {
        let mut text = format!("error: {}", failure.message);
        if let Some(hint) = &failure.hint {
            text.push_str("\nhint: ");
            text.push_str(hint);
        }
        return (failure.exit_code, text);
    }
    // Anything else (an I/O error writing stdout, say) failed the operation; `{:#}` prints the
    // whole context chain on one line.
    (EXIT_FAILED, format!("error: {error:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(code: tonic::Code, message: &str) -> ClientError {
        ClientError::Status {
            endpoint: "a:1".into(),
            status: tonic::Status::new(code, message),
        }
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        let invalid = status(
            tonic::Code::InvalidArgument,
            "steps[1].depends_on[0]: step \"b\" depends on unknown step \"x\"",
        );
        let (code, text) = report(&client_failure(invalid, CallKind::Write, None, None));
        assert_eq!(code, EXIT_USAGE);
        assert_eq!(
            text,
            "error: invalid argument: steps[1].depends_on[0]: step \"b\" depends on unknown step \"x\""
        );

        let timeout = ClientError::Timeout {
            endpoint: "a:1".into(),
            timeout: Duration::from_secs(10),
        };
        let (code, text) = report(&client_failure(
            timeout,
            CallKind::Write,
            Some("workflow 7"),
            Some("run it again".into()),
        ));
        assert_eq!(code, EXIT_UNKNOWN);
        assert_eq!(
            text,
            "error: outcome unknown: workflow 7: no answer from a:1 within 10000 ms\nhint: run it again"
        );

        let timeout = ClientError::Timeout {
            endpoint: "a:1".into(),
            timeout: Duration::from_secs(10),
        };
        let (code, _) = report(&client_failure(timeout, CallKind::Read, None, None));
        assert_eq!(code, EXIT_FAILED);

        let precondition = status(tonic::Code::FailedPrecondition, "node 4 is not a member");
        let (code, _) = report(&client_failure(precondition, CallKind::Write, None, None));
        assert_eq!(code, EXIT_FAILED);

        let refused = ClientError::Unreachable {
            endpoint: "a:1".into(),
            message: "refused".into(),
        };
        let (code, text) = report(&client_failure(refused, CallKind::Write, None, None));
        assert_eq!(code, EXIT_FAILED);
        assert!(
            text.starts_with("error: cannot connect to a:1: refused\nhint: "),
            "{text}"
        );
    }
}
