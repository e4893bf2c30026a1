//! Mutual-TLS configuration from PEM files (CA bundle, certificate chain, private key) that
//! reloads from disk without a restart.
//!
//! Every new connection asks [`TlsSettings`] for the current rustls configuration. At most once
//! per [`RELOAD_CHECK_INTERVAL`] that re-reads the three files (a few KiB) and, when any byte
//! changed, builds a new configuration; connections already open keep the one they started with.
//! A file that fails to parse mid-rotation (half written), a certificate that does not chain to
//! the (new) CA bundle or is outside its validity period, or one naming a different identity
//! keeps the previous configuration and logs a warning, so a rotation can never take a node off
//! the air or turn it into someone else; at start-up the same errors are fatal and name the file. Reading the bytes rather than watching mtimes means two
//! rotations within one second, or a file replaced by `mv`, are never missed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::identity::{PeerIdentity, PeerRole};

/// How often, at most, the files are read again to look for a rotation.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why the TLS files could not be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// Where a party's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CA certificates peers must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain of this party, leaf first; its leaf carries the identity URI.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files in `dir` named `ca.pem`, `STEM.pem` and `STEM-key.pem` (the layout
    /// [`crate::devcerts`] writes).
    pub fn in_dir(dir: &Path, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }

    /// These files as `batond`'s flags: `--tls-ca CA --tls-cert CERT --tls-key KEY`.
    pub fn batond_args(&self) -> [std::ffi::OsString; 6] {
        [
            "--tls-ca".into(),
            self.ca.clone().into(),
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
        ]
    }
}

/// The current TLS configurations built from [`TlsFiles`], reloaded when the files change.
pub struct TlsSettings {
    files: TlsFiles,
    /// [`RELOAD_CHECK_INTERVAL`]; tests check on every use.
    reload_every: Duration,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

struct Current {
    bytes: [Vec<u8>; 3],
    checked: Instant,
    built: Built,
}

#[derive(Clone)]
struct Built {
    identity: PeerIdentity,
    server: Arc<ServerConfig>,
    /// The HTTPS listener's: the same certificate, no client certificate asked for.
    web: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads the files once; any problem is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsSettings>, TlsError> {
        Self::load_checking_every(files, RELOAD_CHECK_INTERVAL)
    }

    fn load_checking_every(
        files: TlsFiles,
        reload_every: Duration,
    ) -> Result<Arc<TlsSettings>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let bytes = read_all(&files)?;
        let built = build(&files, &bytes, &provider)?;
        Ok(Arc::new(TlsSettings {
            files,
            reload_every,
            provider,
            current: Mutex::new(Current {
                bytes,
                checked: Instant::now(),
                built,
            }),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The identity in this party's own (current) certificate.
    pub fn identity(&self) -> PeerIdentity {
        self.current().identity
    }

    /// The configuration for accepting a connection: a client certificate chaining to the CA is
    /// required; ALPN `h2`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server
    }

    /// The configuration of the HTTPS listener (`batond --http-listen`): this node's certificate,
    /// no client certificate asked for (browsers and webhook senders have none; callers present
    /// a bearer token instead); ALPN `h2` and `http/1.1`.
    pub fn web_server_config(&self) -> Arc<ServerConfig> {
        self.current().web
    }

    /// The configuration for dialling a node: its certificate must chain to the CA, match the
    /// dialled host, and carry a node identity; this party presents its own certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client
    }

    fn current(&self) -> Built {
        let mut current = self.current.lock();
        if current.checked.elapsed() >= self.reload_every {
            current.checked = Instant::now();
            match read_all(&self.files) {
                Ok(bytes) if bytes != current.bytes => {
                    match build(&self.files, &bytes, &self.provider) {
                        Ok(built) if built.identity != current.built.identity => {
                            tracing::warn!(
                                old = %current.built.identity,
                                new = %built.identity,
                                cert = %self.files.cert.display(),
                                "tls files changed to another identity: keeping the previous ones (restart to change who this party is)"
                            )
                        }
                        Ok(built) => {
                            tracing::info!(identity = %built.identity, cert = %self.files.cert.display(), "tls files changed: reloaded");
                            current.built = built;
                            current.bytes = bytes;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "tls files changed but do not load: keeping the previous ones")
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "tls files unreadable: keeping the previous ones")
                }
            }
        }
        current.built.clone()
    }
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })
    };
    Ok([read(&files.ca)?, read(&files.cert)?, read(&files.key)?])
}

fn build(
    files: &TlsFiles,
    [ca, cert, key]: &[Vec<u8>; 3],
    provider: &Arc<CryptoProvider>,
) -> Result<Built, TlsError> {
    let invalid = |path: &Path, what: String| TlsError::Invalid {
        path: path.to_owned(),
        what,
    };
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca) {
        let der =
            der.map_err(|e| invalid(&files.ca, format!("not a PEM certificate bundle: {e}")))?;
        roots
            .add(der)
            .map_err(|e| invalid(&files.ca, format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(&files.ca, "no CA certificate in the file".into()));
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid(&files.cert, "no certificate in the file".into()))?;
    let identity = PeerIdentity::from_der(leaf).ok_or_else(|| {
        invalid(
            &files.cert,
            "the certificate has no (or more than one) spiffe://baton/ROLE/NAME URI SAN".into(),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(&files.key, format!("not a PEM private key: {e}")))?;

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| invalid(&files.ca, e.to_string()))?;
    // Every party presents its certificate as a TLS client (nodes to their peers too), so it
    // must pass the check the other side will make: chain to the CA bundle, be within its
    // validity period, allow client authentication. Failing here names the file; failing at
    // the peer would only show as refused handshakes.
    client_verifier
        .verify_client_cert(leaf, &chain[1..], UnixTime::now())
        .map_err(|e| {
            invalid(
                &files.cert,
                format!("not accepted by the CA bundle {}: {e}", files.ca.display()),
            )
        })?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut web = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    web.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| invalid(&files.ca, e.to_string()))?;
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier {
            inner: server_verifier,
        }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(&files.key, format!("does not match the certificate: {e}")))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        identity,
        server: Arc::new(server),
        web: Arc::new(web),
        client: Arc::new(client),
    })
}

/// The standard WebPKI check (chain to the CA, validity, host name), plus: the server must be a
/// node. Without it, an agent's or client's certificate issued for the same host could pose as
/// a node to other parties.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match PeerIdentity::from_der(end_entity) {
            Some(identity) if identity.role == PeerRole::Node => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::General(
                "the server's certificate is not a Baton node certificate".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcerts::{self, DevCa};

    fn node(name: &str) -> PeerIdentity {
        PeerIdentity::new(PeerRole::Node, name)
    }

    #[test]
    fn a_rotated_certificate_is_used_for_new_connections() {
        let dir = tempfile::tempdir().unwrap();
        let files = DevCa::open_or_create(dir.path())
            .unwrap()
            .issue(dir.path(), &node("1"))
            .unwrap();
        let settings = TlsSettings::load_checking_every(files.clone(), Duration::ZERO).unwrap();
        let before = settings.server_config();
        DevCa::open_or_create(dir.path())
            .unwrap()
            .issue(dir.path(), &node("1"))
            .unwrap();
        let after = settings.server_config();
        assert!(
            !Arc::ptr_eq(&before, &after),
            "the new files were not picked up"
        );
        assert_eq!(settings.identity(), node("1"));
        // Unchanged files: the same configuration, not a rebuild per connection.
        assert!(Arc::ptr_eq(&after, &settings.server_config()));
    }

    #[test]
    fn a_rotation_to_a_broken_foreign_or_other_identity_certificate_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::open_or_create(dir.path()).unwrap();
        let files = ca.issue(dir.path(), &node("1")).unwrap();
        let settings = TlsSettings::load_checking_every(files.clone(), Duration::ZERO).unwrap();
        let kept = settings.server_config();
        let good = (
            std::fs::read(&files.cert).unwrap(),
            std::fs::read(&files.key).unwrap(),
        );
        let install = |from: &TlsFiles| {
            std::fs::copy(&from.key, &files.key).unwrap();
            std::fs::copy(&from.cert, &files.cert).unwrap();
        };

        // Half written.
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nMII").unwrap();
        assert!(Arc::ptr_eq(&kept, &settings.server_config()));
        std::fs::write(&files.cert, &good.0).unwrap();

        // Issued by a CA the bundle does not hold.
        let other_dir = tempfile::tempdir().unwrap();
        let foreign = DevCa::open_or_create(other_dir.path())
            .unwrap()
            .issue(other_dir.path(), &node("1"))
            .unwrap();
        install(&foreign);
        assert!(Arc::ptr_eq(&kept, &settings.server_config()));

        // Another identity from the right CA: a node must not become another node (or an
        // agent) behind its operator's back.
        let other = ca.issue(dir.path(), &node("2")).unwrap();
        install(&other);
        assert!(Arc::ptr_eq(&kept, &settings.server_config()));
        assert_eq!(settings.identity(), node("1"));

        // Back to a good certificate of its own: picked up.
        std::fs::write(&files.key, &good.1).unwrap();
        std::fs::write(&files.cert, &good.0).unwrap();
        assert_eq!(settings.identity(), node("1"));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused_at_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        devcerts::ensure(dir.path(), &[node("1")]).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        devcerts::ensure(other_dir.path(), &[]).unwrap();
        let files = TlsFiles {
            ca: other_dir.path().join(devcerts::CA_FILE),
            ..TlsFiles::in_dir(dir.path(), "node-1")
        };
        let err = TlsSettings::load(files).unwrap_err().to_string();
        assert!(
            err.contains("node-1.pem") && err.contains("CA bundle"),
            "{err}"
        );
    }
}
