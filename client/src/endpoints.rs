//! Where the cluster is: parsing `HOST:PORT` lists (flags, `BATON_ENDPOINTS`) into endpoints.
//!
//! Accepted forms per entry: `host:port`, `http://host:port` (a trailing `/` is tolerated),
//! `[v6addr]:port`. The port is required because Baton nodes have no well-known port, and a
//! guessed one would turn a typo into a confusing "connection refused". `https://` is refused
//! explicitly: the client has no TLS yet, and silently speaking plaintext to a TLS port would
//! fail in a far less readable way.

use std::fmt;
use std::str::FromStr;

/// The environment variable holding a comma-separated endpoint list.
pub const ENDPOINTS_ENV: &str = "BATON_ENDPOINTS";

/// Why an endpoint list could not be parsed. Messages name the offending entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no endpoints given: pass HOST:PORT[,HOST:PORT...]")]
    Empty,
    #[error("endpoint {endpoint:?}: missing port, write it as HOST:PORT")]
    MissingPort { endpoint: String },
    #[error("endpoint {endpoint:?}: port must be a number from 1 to 65535")]
    InvalidPort { endpoint: String },
    #[error("endpoint {endpoint:?}: missing or invalid host")]
    InvalidHost { endpoint: String },
    #[error("endpoint {endpoint:?}: scheme {scheme:?} is not supported, use http:// or none")]
    UnsupportedScheme { endpoint: String, scheme: String },
    #[error("environment variable {ENDPOINTS_ENV} is not valid unicode")]
    NotUnicode,
}

/// One node's public gRPC address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A DNS name, an IPv4 address, or an IPv6 address without brackets.
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses one entry (`host:port`, `http://host:port`, `[::1]:port`).
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let original = text.trim();
        let mut rest = original;
        if let Some((scheme, after)) = rest.split_once("://") {
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(EndpointError::UnsupportedScheme {
                    endpoint: original.to_string(),
                    scheme: scheme.to_string(),
                });
            }
            rest = after;
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let invalid_host = || EndpointError::InvalidHost {
            endpoint: original.to_string(),
        };

        let (host, port_text) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(invalid_host)?;
            let port_text = after
                .strip_prefix(':')
                .ok_or_else(|| EndpointError::MissingPort {
                    endpoint: original.to_string(),
                })?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid_host());
            }
            (host, port_text)
        } else {
            let (host, port_text) =
                rest.rsplit_once(':')
                    .ok_or_else(|| EndpointError::MissingPort {
                        endpoint: original.to_string(),
                    })?;
            // A bare IPv6 address has several colons; without brackets its port is ambiguous.
            if host.contains(':') || !is_host_name(host) {
                return Err(invalid_host());
            }
            (host, port_text)
        };
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| EndpointError::InvalidPort {
                endpoint: original.to_string(),
            })?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// Host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URI tonic connects to: `http://host:port`.
    pub fn uri(&self) -> String {
        format!("http://{self}")
    }
}

/// Letters, digits, `-`, `.` and `_`: DNS names and IPv4 addresses, and nothing that could
/// smuggle a path or credentials into the URI.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl fmt::Display for Endpoint {
    /// `host:port`, bracketing IPv6 addresses, as an operator would type it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(text)
    }
}

/// A non-empty, duplicate-free, ordered list of endpoints; the order is the failover order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints(Vec<Endpoint>);

impl Endpoints {
    /// Parses `A,B,C`. Blank entries (a trailing comma) are skipped; duplicates are dropped,
    /// keeping the first, so a node is not asked twice per round of failover.
    pub fn parse(list: &str) -> Result<Endpoints, EndpointError> {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for entry in list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let endpoint = Endpoint::parse(entry)?;
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        Endpoints::new(endpoints)
    }

    /// From a list of already parsed endpoints; fails only when it is empty.
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Endpoints, EndpointError> {
        if endpoints.is_empty() {
            return Err(EndpointError::Empty);
        }
        let mut unique: Vec<Endpoint> = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            if !unique.contains(&endpoint) {
                unique.push(endpoint);
            }
        }
        Ok(Endpoints(unique))
    }

    /// From [`ENDPOINTS_ENV`]; `Ok(None)` when it is unset or blank.
    pub fn from_env() -> Result<Option<Endpoints>, EndpointError> {
        match std::env::var(ENDPOINTS_ENV) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Endpoints::parse(&value).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(EndpointError::NotUnicode),
        }
    }

    pub fn as_slice(&self) -> &[Endpoint] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Endpoint> {
        self.0.iter()
    }

    /// Never zero.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false; present because clippy expects it next to `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Endpoints {
    type Err = EndpointError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Endpoints::parse(text)
    }
}

impl fmt::Display for Endpoints {
    /// `a:1,b:2`: the form [`Endpoints::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, endpoint) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{endpoint}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> Vec<String> {
        Endpoints::parse(list)
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parses_plain_and_http_forms() {
        assert_eq!(hosts("127.0.0.1:7001"), ["127.0.0.1:7001"]);
        assert_eq!(hosts("http://node-1.baton:7001/"), ["node-1.baton:7001"]);
        assert_eq!(hosts("HTTP://a:1"), ["a:1"]);
        assert_eq!(hosts("a:1, b:2 ,http://c:3"), ["a:1", "b:2", "c:3"]);
        assert_eq!(hosts("[::1]:7001"), ["[::1]:7001"]);
        assert_eq!(Endpoint::parse("[::1]:7001").unwrap().host(), "::1");
        assert_eq!(Endpoint::parse("a:7001").unwrap().uri(), "http://a:7001");
    }

    #[test]
    fn skips_blanks_and_duplicates_keeping_order() {
        assert_eq!(hosts("b:2,a:1,,b:2,"), ["b:2", "a:1"]);
        let endpoints = Endpoints::parse("b:2,a:1").unwrap();
        assert_eq!(endpoints.to_string(), "b:2,a:1");
        assert_eq!(Endpoints::parse(&endpoints.to_string()).unwrap(), endpoints);
    }

    #[test]
    fn rejects_bad_entries_naming_them() {
        assert_eq!(Endpoints::parse(""), Err(EndpointError::Empty));
        assert_eq!(Endpoints::parse(" , "), Err(EndpointError::Empty));
        assert!(
            matches!(Endpoints::parse("a:1,b"), Err(EndpointError::MissingPort { endpoint }) if endpoint == "b")
        );
        assert!(matches!(
            Endpoint::parse("a:0"),
            Err(EndpointError::InvalidPort { .. })
        ));
        assert!(matches!(
            Endpoint::parse("a:65536"),
            Err(EndpointError::InvalidPort { .. })
        ));
        assert!(matches!(
            Endpoint::parse("a:x"),
            Err(EndpointError::InvalidPort { .. })
        ));
        assert!(matches!(
            Endpoint::parse(":7001"),
            Err(EndpointError::InvalidHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("::1:7001"),
            Err(EndpointError::InvalidHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("[nope]:7001"),
            Err(EndpointError::InvalidHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("a/b:7001"),
            Err(EndpointError::InvalidHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("user@a:7001"),
            Err(EndpointError::InvalidHost { .. })
        ));
        assert!(matches!(
            Endpoint::parse("https://a:7001"),
            Err(EndpointError::UnsupportedScheme { scheme, .. }) if scheme == "https"
        ));
        let message = Endpoints::parse("a:1,b").unwrap_err().to_string();
        assert_eq!(
            message,
            "endpoint \"b\": missing port, write it as HOST:PORT"
        );
    }
}
