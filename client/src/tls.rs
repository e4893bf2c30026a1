//! Credentials of a client or agent: mutual TLS (the CA bundle, this party's certificate and key,
//! which reload from disk as they rotate) and a bearer token sent with every call.
//!
//! A credentials folder holds `ca.pem`, `cert.pem`, `key.pem` and `token` (`batond dev` writes
//! one for its client and one for its agent); `--credentials DIR` / `BATON_CREDENTIALS` points
//! at it, and `--ca`, `--cert`, `--key`, `--token-file` override single files. With none of
//! them the client speaks plaintext (to a node started with `--insecure`); a token is never
//! sent in plaintext.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_security::{TOKEN_METADATA_KEY, TlsFiles, TlsSettings};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::ClientError;

/// What every gRPC client of this crate sends through: a channel plus the token interceptor.
pub type Transport = InterceptedService<Channel, TokenInterceptor>;

/// How this process proves who it is.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `None`: plaintext.
    pub tls: Option<Arc<TlsSettings>>,
    /// `baton_ID_SECRET`, sent as `authorization: Bearer ...`.
    pub token: Option<String>,
}

/// Where credentials come from (flags or environment); [`CredentialSources::load`] reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSources {
    pub dir: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl CredentialSources {
    /// Resolves the files (single-file settings beat the folder) and loads them. Errors name the
    /// file or the missing setting.
    pub fn load(&self) -> Result<Credentials, ClientError> {
        // A credentials folder must hold the TLS files: a mistyped folder must not quietly mean
        // plaintext. Its token is optional (a party may authenticate by certificate alone).
        if let Some(dir) = &self.dir
            && !dir.is_dir()
        {
            return Err(ClientError::InvalidRequest(format!(
                "credentials: {} is not a folder",
                dir.display()
            )));
        }
        let in_dir = |name: &str| self.dir.as_ref().map(|dir| dir.join(name));
        let ca = self.ca.clone().or_else(|| in_dir("ca.pem"));
        let cert = self.cert.clone().or_else(|| in_dir("cert.pem"));
        let key = self.key.clone().or_else(|| in_dir("key.pem"));
        let token_file = self
            .token_file
            .clone()
            .or_else(|| in_dir("token").filter(|path| path.exists()));
        let tls = match (ca, cert, key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(
                TlsSettings::load(TlsFiles { ca, cert, key })
                    .map_err(|e| ClientError::InvalidRequest(format!("credentials: {e}")))?,
            ),
            (ca, cert, key) => {
                let missing: Vec<&str> = [("--ca", ca), ("--cert", cert), ("--key", key)]
                    .into_iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(flag, _)| flag)
                    .collect();
                return Err(ClientError::InvalidRequest(format!(
                    "credentials: TLS needs a CA, a certificate and a key; missing {}",
                    missing.join(", ")
                )));
            }
        };
        if tls.is_none() && token_file.is_some() {
            return Err(ClientError::InvalidRequest(
                "credentials: a token is sent only over TLS; give --ca, --cert and --key (or --credentials) too"
                    .into(),
            ));
        }
        let token = token_file.map(|path| read_token(&path)).transpose()?;
        Ok(Credentials { tls, token })
    }
}

fn read_token(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::InvalidRequest(format!("token file {}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if baton_security::token::parse(&token).is_none() {
        return Err(ClientError::InvalidRequest(format!(
            "token file {}: not a Baton token (baton_ID_SECRET)",
            path.display()
        )));
    }
    Ok(token)
}

/// Adds `authorization: Bearer TOKEN` to every call, when there is a token.
#[derive(Clone, Debug, Default)]
pub struct TokenInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl TokenInterceptor {
    pub fn new(token: Option<&str>) -> Result<TokenInterceptor, ClientError> {
        let header = token
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ClientError::InvalidRequest("token: not printable ASCII".into()))
            })
            .transpose()?;
        Ok(TokenInterceptor { header })
    }
}

impl Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert(TOKEN_METADATA_KEY, header.clone());
        }
        Ok(request)
    }
}
