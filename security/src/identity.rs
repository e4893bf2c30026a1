//! Who a certificate belongs to. Every Baton certificate carries exactly one URI subject
//! alternative name `spiffe://baton/ROLE/NAME`, ROLE being `node`, `agent` or `client`; the
//! node decides what a connection may call from that role (an agent certificate cannot reach
//! the Raft service, a client certificate cannot open an agent session).

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI prefix of every Baton identity.
pub const SPIFFE_PREFIX: &str = "spiffe://baton/";

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// A `batond` node: may call the Raft transport.
    Node,
    /// A `baton agent`: may open agent sessions.
    Agent,
    /// A person or program using the public API (`baton`, the client library).
    Client,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Node => "node",
            PeerRole::Agent => "agent",
            PeerRole::Client => "client",
        }
    }

    pub fn parse(text: &str) -> Option<PeerRole> {
        match text {
            "node" => Some(PeerRole::Node),
            "agent" => Some(PeerRole::Agent),
            "client" => Some(PeerRole::Client),
            _ => None,
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verified identity of the other end of a TLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub role: PeerRole,
    pub name: String,
}

impl PeerIdentity {
    pub fn new(role: PeerRole, name: impl Into<String>) -> PeerIdentity {
        PeerIdentity {
            role,
            name: name.into(),
        }
    }

    /// `spiffe://baton/ROLE/NAME`.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_PREFIX}{}/{}", self.role, self.name)
    }

    /// Parses `spiffe://baton/ROLE/NAME`; NAME is 1-128 of `[A-Za-z0-9._-]`.
    pub fn from_uri(uri: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        let role = PeerRole::parse(role)?;
        valid_name(name).then(|| PeerIdentity::new(role, name))
    }

    /// The identity in a DER certificate: its one `spiffe://baton/` URI SAN. A certificate with
    /// none, or with two (ambiguous), has no identity.
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with(SPIFFE_PREFIX)
            {
                if found.is_some() {
                    return None;
                }
                found = Some(PeerIdentity::from_uri(uri)?);
            }
        }
        found
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

/// Names in identities (node ids, agent and client names): 1-128 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        let id = PeerIdentity::new(PeerRole::Agent, "gpu-1");
        assert_eq!(id.uri(), "spiffe://baton/agent/gpu-1");
        assert_eq!(PeerIdentity::from_uri(&id.uri()), Some(id));
        for bad in [
            "spiffe://baton/admin/x",
            "spiffe://baton/node/",
            "spiffe://other/node/1",
            "spiffe://baton/node/a/b",
            "spiffe://baton/node",
        ] {
            assert_eq!(PeerIdentity::from_uri(bad), None, "{bad}");
        }
    }
}
