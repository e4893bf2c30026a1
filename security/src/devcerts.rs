//! A small certificate authority (rcgen) for `batond dev`, `batond certs` and tests: one CA, then
//! a certificate per party with its `spiffe://baton/ROLE/NAME` URI, the loopback names
//! (`localhost`, `127.0.0.1`, `::1`) and any host names given. Node certificates may serve and
//! dial; agent and client certificates may only dial (no serverAuth usage), so they cannot pose
//! as a node.
//!
//! The CA key sits next to the certificates: move it offline (or use your own PKI) for
//! production.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::identity::{PeerIdentity, PeerRole, valid_name};
use crate::tls::TlsFiles;

pub const CA_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0:?} is not a valid identity name (1-128 of A-Z a-z 0-9 . _ -)")]
    BadName(String),
    #[error(
        "{0}: the CA's certificate and key must both be there or both be gone (a new CA would not match the certificates it issued); restore the file or start afresh"
    )]
    HalfACa(std::path::PathBuf),
}

/// The file stem of a party's certificate: `node-1`, `agent-NAME`, `client-NAME`.
pub fn stem(identity: &PeerIdentity) -> String {
    format!("{}-{}", identity.role, identity.name)
}

/// A CA in `dir` (`ca.pem`, `ca-key.pem`): loads the one there, or creates it.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    pub fn open_or_create(dir: &Path) -> Result<DevCa, DevCertError> {
        std::fs::create_dir_all(dir)?;
        let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
        match (cert_path.exists(), key_path.exists()) {
            (true, false) => return Err(DevCertError::HalfACa(key_path)),
            (false, true) => return Err(DevCertError::HalfACa(cert_path)),
            (false, false) => {}
            (true, true) => {
                let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
                let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(&cert_path)?, key)?;
                return Ok(DevCa { issuer });
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Baton development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem())?;
        Ok(DevCa {
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a certificate for `identity` into `dir` (`STEM.pem`, `STEM-key.pem`, replacing
    /// any there: this is also how a test rotates one) and returns the files to use.
    pub fn issue(&self, dir: &Path, identity: &PeerIdentity) -> Result<TlsFiles, DevCertError> {
        self.issue_for_hosts(dir, identity, &[])
    }

    /// [`DevCa::issue`], also valid for `hosts` (DNS names or IP addresses: the names other
    /// parties dial a node by).
    pub fn issue_for_hosts(
        &self,
        dir: &Path,
        identity: &PeerIdentity,
        hosts: &[String],
    ) -> Result<TlsFiles, DevCertError> {
        if !valid_name(&identity.name) {
            return Err(DevCertError::BadName(identity.name.clone()));
        }
        let key = KeyPair::generate()?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(
            hosts
                .iter()
                .filter(|h| !names.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::URI(identity.uri().try_into()?));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity.role {
            PeerRole::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            PeerRole::Agent | PeerRole::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        // A fresh serial per issue, so a re-issued certificate differs from the one it replaces.
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| std::io::Error::other(e.to_string()))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = TlsFiles::in_dir(dir, &stem(identity));
        // Key first, then certificate: a reader that sees the new certificate finds its key.
        write_private(&files.key, &key.serialize_pem())?;
        write_atomic(&files.cert, cert.pem().as_bytes())?;
        Ok(files)
    }
}

/// Creates `dir` with a CA (kept if already there) and a certificate for each identity that has
/// none yet. Returns nothing: files are at [`TlsFiles::in_dir`]`(dir, stem(identity))`.
pub fn ensure(dir: &Path, identities: &[PeerIdentity]) -> Result<(), DevCertError> {
    let ca = DevCa::open_or_create(dir)?;
    for identity in identities {
        let files = TlsFiles::in_dir(dir, &stem(identity));
        if !(files.cert.exists() && files.key.exists()) {
            ca.issue(dir, identity)?;
        }
    }
    Ok(())
}

/// Copies a party's CA bundle, certificate and key from `pki_dir` into `dest` as `ca.pem`,
/// `cert.pem` and `key.pem`: the credentials-folder layout `baton --credentials` reads. The key
/// stays readable by its owner only.
pub fn credentials_folder(
    pki_dir: &Path,
    identity: &PeerIdentity,
    dest: &Path,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let files = TlsFiles::in_dir(pki_dir, &stem(identity));
    std::fs::copy(&files.ca, dest.join("ca.pem"))?;
    std::fs::copy(&files.cert, dest.join("cert.pem"))?;
    write_private(&dest.join("key.pem"), &std::fs::read_to_string(&files.key)?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Private keys are readable by their owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsSettings;

    #[test]
    fn issued_certificates_load_with_their_identity_and_reissue_changes_them() {
        let dir = tempfile::tempdir().unwrap();
        let node = PeerIdentity::new(PeerRole::Node, "1");
        let agent = PeerIdentity::new(PeerRole::Agent, "a");
        ensure(dir.path(), &[node.clone(), agent.clone()]).unwrap();
        let files = TlsFiles::in_dir(dir.path(), "node-1");
        let settings = TlsSettings::load(files.clone()).unwrap();
        assert_eq!(settings.identity(), node);
        let before = std::fs::read(&files.cert).unwrap();
        // ensure() keeps what exists; issue() replaces it with the same CA.
        ensure(dir.path(), std::slice::from_ref(&node)).unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), before);
        DevCa::open_or_create(dir.path())
            .unwrap()
            .issue(dir.path(), &node)
            .unwrap();
        assert_ne!(std::fs::read(&files.cert).unwrap(), before);
        TlsSettings::load(files).unwrap();
        let agent_files = TlsFiles::in_dir(dir.path(), "agent-a");
        assert_eq!(TlsSettings::load(agent_files).unwrap().identity(), agent);
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = DevCa::open_or_create(dir.path()).err().unwrap().to_string();
        assert!(err.contains(CA_KEY_FILE), "{err}");
        assert!(!dir.path().join(CA_KEY_FILE).exists());
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &[PeerIdentity::new(PeerRole::Client, "c")]).unwrap();
        let files = TlsFiles::in_dir(dir.path(), "client-c");
        std::fs::write(&files.key, "garbage").unwrap();
        let err = TlsSettings::load(files).unwrap_err().to_string();
        assert!(err.contains("client-c-key.pem"), "{err}");
    }
}
