//! Transport security and authorization of the node (see docs/SECURITY.md):
//!
//! - mutual TLS on the one gRPC port, from `baton_security` (certificates reload from disk);
//! - [`auth`]: the tower layer that checks, for every RPC, the caller's certificate role and
//!   bearer token against the method table;
//! - [`grants`]: the role a call's token holds in the namespace the call acts on;
//! - [`tokens`]: the AdminService token RPCs and the bootstrap admin token.
//!
//! `--insecure` turns all of it off (plaintext, no tokens); nothing else does.

pub mod auth;
pub mod grants;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;

use baton_security::server::PeerInfo;
use baton_security::{TOKEN_METADATA_KEY, TlsFiles, TlsSettings};

use crate::storage::Replica;

/// The id of the bearer token a call was authorized with: set when the call came over TLS
/// (where [`auth`] checked the token) and carried one. Long-lived streams (agent sessions,
/// watches) keep it and end themselves once the token is revoked, rather than outlive it.
pub fn authorized_token_id<T>(request: &tonic::Request<T>) -> Option<String> {
    request.extensions().get::<PeerInfo>()?;
    let value = request.metadata().get(TOKEN_METADATA_KEY)?.to_str().ok()?;
    baton_security::token::from_bearer(value).map(|token| token.id)
}

/// The metadata a follower forwarding a call to the leader names the original caller in
/// (see [`actor`]).
pub const FORWARDED_ACTOR_KEY: &str = "baton-forwarded-actor";

/// Who makes a call, for the history (`WorkflowEvent.actor`): the bearer token's name and id,
/// and the client certificate's identity, as far as the call carried them (`--insecure`: none,
/// so empty).
pub fn actor<T>(request: &tonic::Request<T>, replica: &Replica) -> String {
    let Some(peer) = request.extensions().get::<PeerInfo>() else {
        return String::new();
    };
    if let Some(forwarded) = forwarded_actor(request, peer) {
        return forwarded;
    }
    match authorized_token_id(request) {
        Some(id) => {
            let name = replica.read(|applied| {
                applied
                    .state
                    .live_token(&id)
                    .map(|record| record.name.clone())
            });
            describe_actor(&id, name, peer)
        }
        None => peer
            .identity
            .as_ref()
            .map(|identity| identity.to_string())
            .unwrap_or_default(),
    }
}

/// A call a follower forwarded to the leader: the follower says who called it. Only a node's
/// certificate is believed.
fn forwarded_actor<T>(request: &tonic::Request<T>, peer: &PeerInfo) -> Option<String> {
    let node = peer
        .identity
        .as_ref()
        .is_some_and(|identity| identity.role == baton_security::PeerRole::Node);
    if !node {
        return None;
    }
    request
        .metadata()
        .get(FORWARDED_ACTOR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `token NAME (ID) via CERTIFICATE`, as far as the call carried them.
fn describe_actor(id: &str, name: Option<String>, peer: &PeerInfo) -> String {
    let token = match name {
        Some(name) => format!("token {name} ({id})"),
        None => format!("token {id}"),
    };
    match &peer.identity {
        Some(identity) => format!("{token} via {identity}"),
        None => token,
    }
}

/// Whether the token with this id is live in this node's applied state (not revoked).
pub fn token_live(replica: &Replica, id: &str) -> bool {
    replica.read(|applied| applied.state.live_token(id).is_some())
}

/// How the node protects its port, resolved from the flags.
#[derive(Clone, Debug)]
pub enum SecurityConfig {
    /// `--insecure`: plaintext, no authentication. For tests and trusted networks only.
    Insecure,
    Secure {
        tls: TlsFiles,
        /// A file holding the first admin token (`baton_ID_SECRET`), recorded by the first
        /// leader when the cluster has no token yet.
        bootstrap_token_file: Option<PathBuf>,
    },
}

/// The loaded form of [`SecurityConfig`].
#[derive(Clone, Debug)]
pub enum Security {
    Insecure,
    Secure {
        tls: Arc<TlsSettings>,
        bootstrap_token: Option<baton_security::token::PresentedToken>,
    },
}

impl Security {
    /// Loads the TLS files and the bootstrap token; errors name the file.
    pub fn load(config: &SecurityConfig) -> Result<Security, String> {
        match config {
            SecurityConfig::Insecure => Ok(Security::Insecure),
            SecurityConfig::Secure {
                tls,
                bootstrap_token_file,
            } => {
                let tls = TlsSettings::load(tls.clone()).map_err(|e| e.to_string())?;
                let bootstrap_token = bootstrap_token_file
                    .as_ref()
                    .map(|path| {
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            format!("--bootstrap-token-file {}: {e}", path.display())
                        })?;
                        warn_if_others_can_read(path);
                        baton_security::token::parse(&text).ok_or_else(|| {
                            format!(
                                "--bootstrap-token-file {}: not a Baton token (baton_ID_SECRET)",
                                path.display()
                            )
                        })
                    })
                    .transpose()?;
                Ok(Security::Secure {
                    tls,
                    bootstrap_token,
                })
            }
        }
    }

    pub fn is_secure(&self) -> bool {
        matches!(self, Security::Secure { .. })
    }

    pub fn tls(&self) -> Option<&Arc<TlsSettings>> {
        match self {
            Security::Insecure => None,
            Security::Secure { tls, .. } => Some(tls),
        }
    }
}

/// The bootstrap token is an admin credential: say so when its file is readable by every user
/// of the machine. Group access is left alone (a Kubernetes Secret reaches a non-root process
/// only through `fsGroup`). A warning, not a refusal: the token should be revoked soon anyway.
fn warn_if_others_can_read(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "--bootstrap-token-file is readable by every user; it holds an admin token (chmod 600, and revoke the bootstrap token once real admin tokens exist)"
        );
    }
}
