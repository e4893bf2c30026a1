//! Bearer tokens. A token is `baton_ID_SECRET`: ID is 16 hex digits chosen at random by whoever
//! creates the token (it names the token in lists and revocations and is not secret), SECRET is
//! 256 random bits as 64 hex digits. The cluster stores only SHA-256(SECRET), keyed by ID, in
//! its replicated state; a presented token is looked up by ID and its digest compared in
//! constant time ([`digest_matches`]).
//!
//! Roles, from most to least powerful (each includes the ones after it but `agent`):
//! `admin` (tokens, everything), `operator` (membership, leader transfer, snapshots),
//! `submitter` (submit, cancel), `reader` (get, list, watch, status). `agent` opens agent
//! sessions and nothing else.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The gRPC metadata key carrying `Bearer TOKEN`.
pub const TOKEN_METADATA_KEY: &str = "authorization";

const PREFIX: &str = "baton_";
const ID_HEX_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    Admin,
    Operator,
    Submitter,
    Reader,
    Agent,
}

impl TokenRole {
    pub const ALL: [TokenRole; 5] = [
        TokenRole::Admin,
        TokenRole::Operator,
        TokenRole::Submitter,
        TokenRole::Reader,
        TokenRole::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Operator => "operator",
            TokenRole::Submitter => "submitter",
            TokenRole::Reader => "reader",
            TokenRole::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<TokenRole> {
        TokenRole::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether a token of this role may do what `needed` may.
    pub fn includes(self, needed: TokenRole) -> bool {
        fn rank(role: TokenRole) -> Option<u8> {
            match role {
                TokenRole::Admin => Some(4),
                TokenRole::Operator => Some(3),
                TokenRole::Submitter => Some(2),
                TokenRole::Reader => Some(1),
                TokenRole::Agent => None,
            }
        }
        match (rank(self), rank(needed)) {
            (Some(have), Some(need)) => have >= need,
            _ => self == needed,
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as presented: its id and the digest of its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedToken {
    pub id: String,
    pub digest: [u8; 32],
}

/// A newly generated token: give `text` to its holder once; store `id` and `digest`.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub text: String,
    pub id: String,
    pub digest: [u8; 32],
}

/// A fresh token from the operating system's randomness.
pub fn generate() -> Result<NewToken, getrandom::Error> {
    let mut id = [0u8; ID_HEX_LEN / 2];
    let mut secret = [0u8; SECRET_HEX_LEN / 2];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    Ok(NewToken {
        text: format!("{PREFIX}{id}_{secret}"),
        digest: digest(&secret),
        id,
    })
}

/// A fresh shared secret (a webhook trigger's): 32 random bytes as 64 hex digits.
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Parses `baton_ID_SECRET` (surrounding whitespace ignored, as in a file). `None` for anything
/// else: the caller answers UNAUTHENTICATED without saying why.
pub fn parse(text: &str) -> Option<PresentedToken> {
    let rest = text.trim().strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_of(id, ID_HEX_LEN) || !hex_of(secret, SECRET_HEX_LEN) {
        return None;
    }
    Some(PresentedToken {
        id: id.to_ascii_lowercase(),
        digest: digest(&secret.to_ascii_lowercase()),
    })
}

fn digest(secret_hex: &str) -> [u8; 32] {
    Sha256::digest(secret_hex.as_bytes()).into()
}

/// Constant-time equality of two digests.
pub fn digest_matches(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == 32 && bool::from(stored.ct_eq(presented.as_slice()))
}

/// The token in a `Bearer TOKEN` header value.
pub fn from_bearer(value: &str) -> Option<PresentedToken> {
    let rest = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    parse(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_to_its_digest_and_nothing_else_does() {
        let token = generate().unwrap();
        let presented = parse(&token.text).unwrap();
        assert_eq!(presented.id, token.id);
        assert!(digest_matches(&token.digest, &presented.digest));
        let other = generate().unwrap();
        assert!(!digest_matches(&other.digest, &presented.digest));
        assert!(!digest_matches(&token.digest[..31], &presented.digest));
        assert_eq!(
            from_bearer(&format!("Bearer {}", token.text)),
            Some(presented)
        );
        for bad in [
            "",
            "baton_",
            "baton_12_34",
            "bearer",
            &token.text[1..],
            &token.text.replace('_', "-"),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_include_the_weaker_ones_but_agent_stands_apart() {
        use TokenRole::*;
        assert!(
            Admin.includes(Operator) && Operator.includes(Submitter) && Submitter.includes(Reader)
        );
        assert!(!Reader.includes(Submitter) && !Submitter.includes(Operator));
        assert!(!Admin.includes(Agent) && !Agent.includes(Reader) && Agent.includes(Agent));
        for role in TokenRole::ALL {
            assert_eq!(TokenRole::parse(role.as_str()), Some(role));
        }
    }
}
