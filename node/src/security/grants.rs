//! What a caller may do in which namespace: the one decision every namespaced call makes after
//! the method table (`auth.rs`) let it in. The HTTP API's handlers call the same services, so
//! gRPC and HTTP decide alike.
//!
//! The method table lets a namespaced token in when its strongest role would do; here each call
//! checks the role the token holds in the namespace it acts on. A call about one workflow that
//! the token may not read answers as for a workflow that does not exist, so a token learns
//! nothing of other namespaces' work.

use std::collections::{BTreeMap, BTreeSet};

use baton_security::TokenRole;
use baton_security::server::PeerInfo;
use tonic::Status;

use super::authorized_token_id;
use crate::state::namespaces::or_default;
use crate::storage::Replica;

/// A caller's roles by namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grants {
    /// `--insecure`: no tokens, every call allowed.
    All,
    /// A cluster-wide token: its role in every namespace.
    Cluster(TokenRole),
    /// A namespaced token: its role in each of its namespaces, none elsewhere.
    Namespaces(BTreeMap<String, TokenRole>),
}

impl Grants {
    /// The grants of the token a call carries. A call over TLS was authenticated by the auth
    /// layer; one whose token is revoked since holds nothing. A call without TLS was let in by
    /// `--insecure`.
    pub fn of<T>(request: &tonic::Request<T>, replica: &Replica) -> Grants {
        if request.extensions().get::<PeerInfo>().is_none() {
            return Grants::All;
        }
        let Some(id) = authorized_token_id(request) else {
            return Grants::Namespaces(BTreeMap::new());
        };
        replica.read(|applied| match applied.state.live_token(&id) {
            Some(record) if record.namespaces.is_empty() => Grants::Cluster(record.role),
            Some(record) => Grants::Namespaces(record.namespaces.clone()),
            None => Grants::Namespaces(BTreeMap::new()),
        })
    }

    /// [`Grants::of`] and [`super::actor`] in one read of the state: what a submit needs, on
    /// the hot path.
    pub fn with_actor<T>(request: &tonic::Request<T>, replica: &Replica) -> (Grants, String) {
        let Some(peer) = request.extensions().get::<PeerInfo>() else {
            return (Grants::All, String::new());
        };
        let Some(id) = authorized_token_id(request) else {
            return (
                Grants::Namespaces(BTreeMap::new()),
                super::actor(request, replica),
            );
        };
        let (grants, name) = replica.read(|applied| match applied.state.live_token(&id) {
            Some(record) if record.namespaces.is_empty() => {
                (Grants::Cluster(record.role), Some(record.name.clone()))
            }
            Some(record) => (
                Grants::Namespaces(record.namespaces.clone()),
                Some(record.name.clone()),
            ),
            None => (Grants::Namespaces(BTreeMap::new()), None),
        });
        let forwarded = super::forwarded_actor(request, peer);
        let actor = forwarded.unwrap_or_else(|| super::describe_actor(&id, name, peer));
        (grants, actor)
    }

    /// The role held in `namespace` (empty: `default`), if any.
    pub fn role_in(&self, namespace: &str) -> Option<TokenRole> {
        match self {
            Grants::All => Some(TokenRole::Admin),
            Grants::Cluster(role) => Some(*role),
            Grants::Namespaces(roles) => roles.get(or_default(namespace)).copied(),
        }
    }

    /// Whether the caller may do what `needed` may in `namespace`.
    pub fn allows(&self, namespace: &str, needed: TokenRole) -> bool {
        self.role_in(namespace)
            .is_some_and(|role| role.includes(needed))
    }

    /// PERMISSION_DENIED unless the caller holds `needed` in `namespace`, naming the method
    /// (`WorkflowService.Submit`), the namespace, the roles that would do and the caller's own.
    pub fn require(&self, method: &str, namespace: &str, needed: TokenRole) -> Result<(), Status> {
        if self.allows(namespace, needed) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{method} in namespace {} needs a token with role {} there; {}",
            or_default(namespace),
            super::auth::roles_including(needed),
            self.describe()
        )))
    }

    /// The namespaces the caller may read; None: every one.
    pub fn readable(&self) -> Option<BTreeSet<String>> {
        match self {
            Grants::All => None,
            Grants::Cluster(role) if role.includes(TokenRole::Reader) => None,
            Grants::Cluster(_) => Some(BTreeSet::new()),
            Grants::Namespaces(roles) => Some(
                roles
                    .iter()
                    .filter(|(_, role)| role.includes(TokenRole::Reader))
                    .map(|(ns, _)| ns.clone())
                    .collect(),
            ),
        }
    }

    /// `this token's role is reader`, or `this token acts only in team-a (submitter)`.
    pub fn describe(&self) -> String {
        match self {
            Grants::All => "every call is allowed (--insecure)".into(),
            Grants::Cluster(role) => format!("this token's role is {role}"),
            Grants::Namespaces(roles) if roles.is_empty() => {
                "this token holds no role (revoked?)".into()
            }
            Grants::Namespaces(roles) => format!(
                "this token acts only in {}",
                roles
                    .iter()
                    .map(|(ns, role)| format!("{ns} ({role})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The namespaces a listing or a watch covers: `namespace` (empty: `default`) or, with `all`,
/// every one the caller may read (None: every one there is). PERMISSION_DENIED when the caller
/// may not read the one named; INVALID_ARGUMENT for both at once.
pub fn scope(
    grants: &Grants,
    method: &str,
    namespace: &str,
    all: bool,
) -> Result<Option<BTreeSet<String>>, Status> {
    if all {
        if !namespace.is_empty() {
            return Err(Status::invalid_argument(
                "all_namespaces: set together with namespace; give one or the other",
            ));
        }
        return Ok(grants.readable());
    }
    grants.require(method, namespace, TokenRole::Reader)?;
    Ok(Some(BTreeSet::from([or_default(namespace).to_string()])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn team_a_submitter() -> Grants {
        Grants::Namespaces(BTreeMap::from([("team-a".into(), TokenRole::Submitter)]))
    }

    #[test]
    fn a_namespaced_token_acts_in_its_namespaces_only() {
        let grants = team_a_submitter();
        assert!(grants.allows("team-a", TokenRole::Submitter));
        assert!(grants.allows("team-a", TokenRole::Reader));
        assert!(!grants.allows("team-a", TokenRole::Operator));
        assert!(!grants.allows("team-b", TokenRole::Reader));
        assert!(!grants.allows("", TokenRole::Reader), "empty is default");
        let refused = grants
            .require("WorkflowService.Submit", "team-b", TokenRole::Submitter)
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "WorkflowService.Submit in namespace team-b needs a token with role submitter, \
             operator or admin there; this token acts only in team-a (submitter)"
        );
        assert_eq!(
            grants.readable(),
            Some(BTreeSet::from(["team-a".to_string()]))
        );
    }

    #[test]
    fn cluster_tokens_and_insecure_calls_act_everywhere() {
        assert!(Grants::All.allows("anything", TokenRole::Admin));
        let reader = Grants::Cluster(TokenRole::Reader);
        assert!(reader.allows("team-b", TokenRole::Reader));
        assert!(!reader.allows("team-b", TokenRole::Submitter));
        assert_eq!(reader.readable(), None);
        assert_eq!(
            Grants::Cluster(TokenRole::Agent).readable(),
            Some(BTreeSet::new())
        );
        // A revoked token holds nothing anywhere.
        let revoked = Grants::Namespaces(BTreeMap::new());
        assert!(!revoked.allows("default", TokenRole::Reader));
    }

    #[test]
    fn scopes_of_listings() {
        let grants = team_a_submitter();
        assert_eq!(
            scope(&grants, "WorkflowService.List", "team-a", false).unwrap(),
            Some(BTreeSet::from(["team-a".to_string()]))
        );
        assert_eq!(
            scope(&grants, "WorkflowService.List", "", true).unwrap(),
            Some(BTreeSet::from(["team-a".to_string()]))
        );
        assert_eq!(
            scope(&grants, "WorkflowService.List", "", false)
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            scope(&grants, "WorkflowService.List", "team-a", true)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            scope(&Grants::All, "WorkflowService.List", "", true).unwrap(),
            None
        );
    }
}
