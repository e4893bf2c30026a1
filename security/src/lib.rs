//! Baton's transport security and credentials, shared by `batond`, the `baton` CLI and agent, and
//! the test harnesses:
//!
//! - [`identity`]: who a certificate says its holder is (`spiffe://baton/{node,agent,client}/NAME`).
//! - [`tls`]: mutual-TLS configuration built from PEM files that reload from disk without a restart.
//! - [`server`]: the TLS accept loop a tonic server serves from; every connection carries the
//!   peer's identity into the request extensions.
//! - [`connector`]: the client side, a tonic connector that dials TLS with the current files.
//! - [`token`]: bearer tokens (format, roles, hashing, constant-time comparison).
//! - [`devcerts`]: a local CA and certificates (rcgen), for `batond dev` and tests.
//! - [`contexts`]: named client contexts (endpoints and a credentials folder) in the user's
//!   config folder, written by `batond dev` and `baton context`, read by `baton`.

pub mod connector;
pub mod contexts;
pub mod devcerts;
pub mod identity;
pub mod server;
pub mod tls;
pub mod token;

pub use identity::{PeerIdentity, PeerRole};
pub use tls::{TlsError, TlsFiles, TlsSettings};
pub use token::{TOKEN_METADATA_KEY, TokenRole};
