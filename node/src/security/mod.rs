//! Transport security and authorization of the node (see docs/SECURITY.md):
//!
//! - mutual TLS on the one gRPC port, from `baton_security` (certificates reload from disk);
//! - [`auth`]: the tower layer that checks, for every RPC, the caller's certificate role and
//!   bearer token against the method table;
//! - [`tokens`]: the AdminService token RPCs and the bootstrap admin token.
//!
//! `--insecure` turns all of it off (plaintext, no tokens); nothing else does.

pub mod auth;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;

use baton_security::{TlsFiles, TlsSettings};

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

    pub fn tls(&self) -> Option<&Arc<TlsSettings>> {
        match self {
            Security::Insecure => None,
            Security::Secure { tls, .. } => Some(tls),
        }
    }
}
