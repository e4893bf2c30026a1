//! Baton's Rust client: talk to a cluster over gRPC with failover, and know, when a call fails,
//! whether it was applied.
//!
//! ```no_run
//! # async fn example() -> Result<(), baton_client::ClientError> {
//! use baton_client::{Client, Endpoints};
//! let client = Client::new(Endpoints::parse("10.0.0.1:7001,10.0.0.2:7001")?)?;
//! let spec = baton_proto::v1::WorkflowSpec::default();
//! let submitted = client.submit(spec, None).await?;
//! println!("workflow {}", submitted.workflow_id);
//! # Ok(()) }
//! ```
//!
//! Code map: `endpoints` parses where the cluster is; `client` holds the channels and the retry
//! loop; `error` is the one error type and the applied / not applied / unknown rule; `output`
//! turns answers into the CLI's JSON and tables (its files are `cli/output/`, with the rest of
//! the CLI; it is compiled here and public so that scripts and tests built on this crate print
//! the same shapes); `watch` follows a workflow's events across reconnects; `agent` is the agent
//! runtime (`baton agent`, or embedded in an application with its own handlers).

pub mod agent;
mod client;
mod endpoints;
mod error;
// The CLI's rendering, kept beside the CLI but compiled (and public) here.
#[path = "cli/output/mod.rs"]
pub mod output;
pub mod tls;
mod watch;

pub use client::{
    Client, ClientConfig, DECODE_MESSAGE_BYTES_MAX, ENCODE_MESSAGE_BYTES_MAX, new_idempotency_key,
};
pub use endpoints::{ENDPOINTS_ENV, Endpoint, EndpointError, Endpoints};
pub use error::{ClientError, Outcome, code_name, describe_status, outcome_of_code};
pub use tls::{CredentialSources, Credentials};
pub use watch::{WatchUpdate, WorkflowWatch};

/// The generated API types, re-exported so that users need not depend on `baton-proto` directly.
pub use baton_proto::v1 as proto;
