//! Bearer tokens in the replicated state: created and revoked through the log, so a revocation
//! takes effect on every replica as it applies. Only the SHA-256 of a token's secret is kept.

use std::collections::BTreeMap;

use baton_security::TokenRole;
use serde::{Deserialize, Serialize};

use super::{ClusterState, CreateTokenCommand, Response};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// A cluster-wide token's role; for a namespaced one, its strongest role in any of them.
    pub role: TokenRole,
    /// Namespace -> role: the token acts only in these. Empty: cluster-wide (`role` everywhere).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, TokenRole>,
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
    pub created_ms: u64,
    /// Leader time of the revocation; `None` while the token is live.
    pub revoked_ms: Option<u64>,
}

impl ClusterState {
    pub(super) fn create_token(&mut self, create: CreateTokenCommand) -> Response {
        if create.bootstrap && !self.tokens.is_empty() {
            return Response::Rejected {
                reason: "tokens exist already: the bootstrap token is not needed".into(),
            };
        }
        if let Some(missing) = create
            .namespaces
            .keys()
            .find(|ns| !self.namespace_exists(ns))
        {
            return Response::Rejected {
                reason: format!("namespace {missing} does not exist"),
            };
        }
        if self.tokens.contains_key(&create.id) {
            return Response::Rejected {
                reason: format!("token id {} is already used", create.id),
            };
        }
        self.tokens.insert(
            create.id.clone(),
            TokenRecord {
                id: create.id,
                name: create.name,
                role: create.role,
                namespaces: create.namespaces,
                digest: create.digest,
                created_ms: self.now_ms,
                revoked_ms: None,
            },
        );
        Response::TokenCreated
    }

    pub(super) fn revoke_token(&mut self, id: &str) -> Response {
        let now_ms = self.now_ms;
        match self.tokens.get_mut(id) {
            None => Response::Rejected {
                reason: format!("token {id} does not exist"),
            },
            Some(record) => {
                let was_live = record.revoked_ms.is_none();
                record.revoked_ms.get_or_insert(now_ms);
                Response::TokenRevoked { was_live }
            }
        }
    }

    /// The live token with this id, if any.
    pub fn live_token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id).filter(|t| t.revoked_ms.is_none())
    }

    /// Every token, revoked ones included, by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Whether any token was ever created (the bootstrap token is then not needed).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyCtx, Command, LogEntry};

    fn apply(state: &mut ClusterState, command: Command) -> Response {
        state
            .apply(
                ApplyCtx { index: 1 },
                LogEntry {
                    time_ms: 1_000,
                    command,
                },
            )
            .response
    }

    fn create(id: &str, bootstrap: bool) -> Command {
        Command::CreateToken(CreateTokenCommand {
            id: id.into(),
            name: format!("n-{id}"),
            role: TokenRole::Admin,
            namespaces: BTreeMap::new(),
            digest: vec![7; 32],
            bootstrap,
        })
    }

    #[test]
    fn tokens_are_created_once_revoked_for_good_and_bootstrap_only_on_empty() {
        let mut state = ClusterState::default();
        assert_eq!(apply(&mut state, create("a", true)), Response::TokenCreated);
        assert!(matches!(
            apply(&mut state, create("b", true)),
            Response::Rejected { .. }
        ));
        assert!(matches!(
            apply(&mut state, create("a", false)),
            Response::Rejected { .. }
        ));
        assert_eq!(
            apply(&mut state, create("b", false)),
            Response::TokenCreated
        );
        assert!(state.live_token("a").is_some());
        let revoke = || Command::RevokeToken { id: "a".into() };
        assert_eq!(
            apply(&mut state, revoke()),
            Response::TokenRevoked { was_live: true }
        );
        assert_eq!(
            apply(&mut state, revoke()),
            Response::TokenRevoked { was_live: false }
        );
        assert!(state.live_token("a").is_none());
        assert_eq!(state.tokens().count(), 2);
        // A revoked token stays recorded: its id cannot come back.
        assert!(matches!(
            apply(&mut state, create("a", false)),
            Response::Rejected { .. }
        ));
        assert!(matches!(
            apply(&mut state, Command::RevokeToken { id: "zz".into() }),
            Response::Rejected { .. }
        ));
    }
}
