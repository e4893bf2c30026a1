//! Authorization of every RPC, as a tower layer in front of all services: the method table
//! ([`access`]) says what each method needs; the caller's certificate role comes from the TLS
//! connection ([`PeerInfo`]), its token from the `authorization: Bearer ...` metadata, looked up
//! in the replicated state by id and compared in constant time.
//!
//! UNAUTHENTICATED (no, malformed, unknown or revoked token; a certificate without a Baton
//! identity) never says which of these it was, so a caller cannot probe tokens.
//! PERMISSION_DENIED, for a caller that did authenticate, names the method, what it needs (the
//! roles that may call it, or the certificate it takes) and the caller's own token role.
//!
//! Nodes call one another's Raft transport with their node certificate and no token. A call a
//! follower forwards to the leader (AdminService) carries the original caller's token, which the
//! leader checks again. (A node certificate can still propose any command over the Raft
//! transport: a node key is an admin credential; see docs/SECURITY.md.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use baton_security::server::PeerInfo;
use baton_security::token::{self, PresentedToken};
use baton_security::{PeerRole, TOKEN_METADATA_KEY, TokenRole};
use tonic::Status;

use crate::storage::Replica;

/// What one method requires of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any certificate the TLS handshake accepted (health checks, reflection).
    AnyPeer,
    /// A node certificate (the Raft transport).
    Node,
    /// An agent certificate and an `agent` token.
    Agent,
    /// A client certificate and a token whose role includes this one, or a node certificate
    /// forwarding a client's call with that client's token. A namespaced token passes when one
    /// of its namespaces' roles does; the service then checks the namespace the call acts on
    /// (`grants.rs`).
    Client(TokenRole),
    /// As `Client`, for the cluster's own calls (members, snapshots, tokens, namespaces): only
    /// a cluster-wide token will do.
    Cluster(TokenRole),
}

/// What the auth layer knows of a presented token: its role (a namespaced token's strongest),
/// and whether it is cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenScope {
    pub role: TokenRole,
    pub cluster_wide: bool,
}

impl TokenScope {
    pub fn of(record: &crate::state::tokens::TokenRecord) -> TokenScope {
        TokenScope {
            role: record.role,
            cluster_wide: record.namespaces.is_empty(),
        }
    }
}

/// The method table. A method missing here needs an admin token: a new RPC is closed until
/// someone decides who may call it.
pub fn access(path: &str) -> Access {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    match (service, method) {
        ("baton.raft.v1.RaftService", _) => Access::Node,
        ("baton.v1.AgentService", _) => Access::Agent,
        ("grpc.health.v1.Health", _) => Access::AnyPeer,
        (s, _) if s.starts_with("grpc.reflection.") => Access::AnyPeer,
        ("baton.v1.WorkflowService", "Get" | "GetHistory" | "List" | "Watch") => {
            Access::Client(TokenRole::Reader)
        }
        (
            "baton.v1.WorkflowService",
            "Submit" | "SubmitBatch" | "Cancel" | "Pause" | "Resume" | "Retry",
        ) => Access::Client(TokenRole::Submitter),
        // Approvals: an operator's decision, not a submitter's.
        ("baton.v1.WorkflowService", "Signal") => Access::Client(TokenRole::Operator),
        ("baton.v1.TemplateService", "GetTemplate" | "ListTemplates") => {
            Access::Client(TokenRole::Reader)
        }
        // A template is what others start: registering one is like submitting.
        ("baton.v1.TemplateService", "ApplyTemplate" | "DeleteTemplate") => {
            Access::Client(TokenRole::Submitter)
        }
        ("baton.v1.ScheduleService", "GetSchedule" | "ListSchedules") => {
            Access::Client(TokenRole::Reader)
        }
        // A schedule submits on its own, for as long as it exists: an operator's decision.
        ("baton.v1.ScheduleService", _) => Access::Client(TokenRole::Operator),
        ("baton.v1.TriggerService", "GetTrigger" | "ListTriggers") => {
            Access::Client(TokenRole::Reader)
        }
        // A trigger lets whoever holds its secret start runs: an operator's decision too.
        ("baton.v1.TriggerService", _) => Access::Client(TokenRole::Operator),
        ("baton.v1.AdminService", "ClusterStatus" | "ListAgents") => {
            Access::Client(TokenRole::Reader)
        }
        // Namespaces the caller may read (the service filters the list).
        ("baton.v1.AdminService", "ListNamespaces") => Access::Client(TokenRole::Reader),
        // The changes of the namespaces the caller may read (the service filters them).
        ("baton.v1.AdminService", "ListAudit") => Access::Client(TokenRole::Reader),
        // A snapshot holds every namespace's workflows: the cluster's own.
        (
            "baton.v1.AdminService",
            "AddMember" | "RemoveMember" | "TransferLeader" | "TriggerSnapshot" | "SaveSnapshot",
        ) => Access::Cluster(TokenRole::Operator),
        (
            "baton.v1.AdminService",
            "CreateToken" | "ListTokens" | "RevokeToken" | "CreateNamespace" | "UpdateNamespace"
            | "DeleteNamespace",
        ) => Access::Cluster(TokenRole::Admin),
        _ => Access::Cluster(TokenRole::Admin),
    }
}

/// Decides one call to `method` (the request path). `lookup` finds the live token's role for a
/// presented token, comparing digests in constant time.
///
/// An authenticated caller that is refused is told what was refused and what would be allowed
/// (the role it lacks, or the certificate the method takes) and its own token's role: nothing
/// about any other credential. An unauthenticated one learns only that a valid token is needed.
pub fn decide(
    method: &str,
    access: Access,
    peer: Option<PeerRole>,
    presented: Option<&PresentedToken>,
    lookup: impl FnOnce(&PresentedToken) -> Option<TokenScope>,
) -> Result<(), Status> {
    let unauthenticated = || {
        Status::unauthenticated(
            "a valid bearer token is required (none was sent, or it is malformed, unknown or \
             revoked); give one (baton: the `token` file in --credentials, or --token-file)",
        )
    };
    let Some(peer) = peer else {
        return Err(Status::unauthenticated(
            "the client certificate carries no Baton identity (use one issued by `batond certs`)",
        ));
    };
    let method = method_name(method);
    let denied = |why: String| Status::permission_denied(format!("{method} {why}"));
    let role_of_token = || presented.and_then(lookup).ok_or_else(unauthenticated);
    match (access, peer) {
        (Access::AnyPeer, _) => Ok(()),
        (Access::Node, PeerRole::Node) => Ok(()),
        (Access::Node, _) => Err(denied(
            "is for cluster nodes only (a node certificate)".into(),
        )),
        (Access::Agent, PeerRole::Agent) => {
            let role = role_of_token()?.role;
            (role == TokenRole::Agent).then_some(()).ok_or_else(|| {
                denied(format!(
                    "needs a token with role agent; this token's role is {}",
                    role.as_str()
                ))
            })
        }
        (Access::Client(needed), PeerRole::Client | PeerRole::Node) => {
            let token = role_of_token()?;
            token.role.includes(needed).then_some(()).ok_or_else(|| {
                denied(format!(
                    "needs a token with role {}; this token's {} {}",
                    roles_including(needed),
                    match token.cluster_wide {
                        true => "role is",
                        false => "strongest role in its namespaces is",
                    },
                    token.role.as_str()
                ))
            })
        }
        (Access::Cluster(needed), PeerRole::Client | PeerRole::Node) => {
            let token = role_of_token()?;
            if !token.cluster_wide {
                return Err(denied(format!(
                    "needs a cluster-wide token with role {}; this token acts only in its \
                     namespaces",
                    roles_including(needed)
                )));
            }
            token.role.includes(needed).then_some(()).ok_or_else(|| {
                denied(format!(
                    "needs a token with role {}; this token's role is {}",
                    roles_including(needed),
                    token.role.as_str()
                ))
            })
        }
        (Access::Agent | Access::Client(_) | Access::Cluster(_), _) => {
            // Authenticate first, so a wrong certificate with no token still reads as
            // "unauthenticated", the same as everywhere else.
            role_of_token()?;
            Err(denied(match access {
                Access::Agent => "needs an agent certificate".into(),
                _ => "needs a client certificate".into(),
            }))
        }
    }
}

/// `WorkflowService.Submit` for `/baton.v1.WorkflowService/Submit`.
fn method_name(path: &str) -> String {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}.{method}")
        }
        None => path.to_string(),
    }
}

/// `submitter, operator or admin`: the roles that may do what `needed` may, weakest first.
pub(super) fn roles_including(needed: TokenRole) -> String {
    let mut roles: Vec<&str> = TokenRole::ALL
        .iter()
        .rev()
        .filter(|r| r.includes(needed))
        .map(|r| r.as_str())
        .collect();
    match roles.pop() {
        Some(last) if !roles.is_empty() => format!("{} or {last}", roles.join(", ")),
        Some(last) => last.to_string(),
        None => needed.as_str().to_string(),
    }
}

/// The layer; install with `Server::builder().layer(AuthLayer::new(replica))`.
/// Installed on every server; with `enabled` false (`--insecure`) it lets every call through.
#[derive(Clone)]
pub struct AuthLayer {
    replica: Arc<Replica>,
    enabled: bool,
}

impl AuthLayer {
    pub fn new(replica: Arc<Replica>, enabled: bool) -> AuthLayer {
        AuthLayer { replica, enabled }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            replica: self.replica.clone(),
            enabled: self.enabled,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    replica: Arc<Replica>,
    enabled: bool,
}

impl<S: Clone> Auth<S> {
    /// The service that was polled ready is the one that must take the call; a clone stays.
    fn take_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return Box::pin(self.take_inner().call(request));
        }
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|info| info.identity.as_ref())
            .map(|identity| identity.role);
        let presented = request
            .headers()
            .get(TOKEN_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(token::from_bearer);
        let path = request.uri().path();
        let decision = decide(path, access(path), peer, presented.as_ref(), |t| {
            self.replica.read(|applied| {
                applied
                    .state
                    .live_token(&t.id)
                    .filter(|record| token::digest_matches(&record.digest, &t.digest))
                    .map(TokenScope::of)
            })
        });
        match decision {
            Ok(()) => Box::pin(self.take_inner().call(request)),
            Err(status) => {
                crate::metrics::auth_refused(status.code());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// A call to WorkflowService.Submit by `peer` presenting a token whose role is `token`.
    fn decide_submit(
        access: Access,
        peer: Option<PeerRole>,
        token: Option<TokenRole>,
    ) -> Result<(), Status> {
        let presented = PresentedToken {
            id: "x".into(),
            digest: [0; 32],
        };
        decide(
            "/baton.v1.WorkflowService/Submit",
            access,
            peer,
            token.map(|_| &presented),
            |_| {
                token.map(|role| TokenScope {
                    role,
                    cluster_wide: true,
                })
            },
        )
    }

    fn code(access: Access, peer: Option<PeerRole>, token: Option<TokenRole>) -> Code {
        decide_submit(access, peer, token).map_or_else(|s| s.code(), |()| Code::Ok)
    }

    fn message(access: Access, peer: Option<PeerRole>, token: Option<TokenRole>) -> String {
        decide_submit(access, peer, token)
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn a_refusal_names_the_method_and_what_would_be_allowed() {
        use TokenRole as T;
        let submit = Access::Client(T::Submitter);
        assert_eq!(
            message(submit, Some(PeerRole::Client), Some(T::Reader)),
            "WorkflowService.Submit needs a token with role submitter, operator or admin; \
             this token's role is reader"
        );
        assert_eq!(
            message(
                Access::Cluster(T::Admin),
                Some(PeerRole::Client),
                Some(T::Operator)
            ),
            "WorkflowService.Submit needs a token with role admin; this token's role is operator"
        );
        assert_eq!(
            message(Access::Agent, Some(PeerRole::Agent), Some(T::Admin)),
            "WorkflowService.Submit needs a token with role agent; this token's role is admin"
        );
        assert_eq!(
            message(submit, Some(PeerRole::Agent), Some(T::Admin)),
            "WorkflowService.Submit needs a client certificate"
        );
        assert_eq!(
            message(Access::Node, Some(PeerRole::Client), Some(T::Admin)),
            "WorkflowService.Submit is for cluster nodes only (a node certificate)"
        );
        // Unauthenticated callers learn nothing about why their token failed.
        let unknown = message(submit, Some(PeerRole::Client), None);
        assert!(
            unknown.contains("a valid bearer token is required"),
            "{unknown}"
        );
        assert_eq!(method_name("garbage"), "garbage");
    }

    #[test]
    fn the_table_gives_each_method_its_role() {
        assert_eq!(
            access("/baton.raft.v1.RaftService/AppendEntries"),
            Access::Node
        );
        assert_eq!(access("/baton.v1.AgentService/Session"), Access::Agent);
        assert_eq!(
            access("/baton.v1.WorkflowService/Submit"),
            Access::Client(TokenRole::Submitter)
        );
        assert_eq!(
            access("/baton.v1.WorkflowService/SubmitBatch"),
            Access::Client(TokenRole::Submitter)
        );
        assert_eq!(
            access("/baton.v1.WorkflowService/Watch"),
            Access::Client(TokenRole::Reader)
        );
        assert_eq!(
            access("/baton.v1.AdminService/AddMember"),
            Access::Cluster(TokenRole::Operator)
        );
        assert_eq!(
            access("/baton.v1.AdminService/RevokeToken"),
            Access::Cluster(TokenRole::Admin)
        );
        assert_eq!(
            access("/baton.v1.AdminService/SomethingNew"),
            Access::Cluster(TokenRole::Admin)
        );
        assert_eq!(
            access("/baton.v1.AdminService/SaveSnapshot"),
            Access::Cluster(TokenRole::Operator)
        );
        assert_eq!(
            access("/baton.v1.AdminService/CreateNamespace"),
            Access::Cluster(TokenRole::Admin)
        );
        assert_eq!(
            access("/baton.v1.AdminService/ListNamespaces"),
            Access::Client(TokenRole::Reader)
        );
        assert_eq!(access("garbage"), Access::Cluster(TokenRole::Admin));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::AnyPeer);
        assert_eq!(
            access("/baton.v1.TriggerService/ListTriggers"),
            Access::Client(TokenRole::Reader)
        );
        assert_eq!(
            access("/baton.v1.TriggerService/CreateTrigger"),
            Access::Client(TokenRole::Operator)
        );
    }

    #[test]
    fn a_namespaced_token_passes_namespaced_methods_but_never_the_clusters_own() {
        let presented = PresentedToken {
            id: "x".into(),
            digest: [0; 32],
        };
        let namespaced = |role| {
            move |_: &PresentedToken| {
                Some(TokenScope {
                    role,
                    cluster_wide: false,
                })
            }
        };
        let call = |method: &str, role| {
            decide(
                method,
                access(method),
                Some(PeerRole::Client),
                Some(&presented),
                namespaced(role),
            )
        };
        assert!(call("/baton.v1.WorkflowService/Submit", TokenRole::Submitter).is_ok());
        assert!(call("/baton.v1.AdminService/ListNamespaces", TokenRole::Reader).is_ok());
        let refused = call("/baton.v1.AdminService/CreateToken", TokenRole::Admin).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "AdminService.CreateToken needs a cluster-wide token with role admin; this token \
             acts only in its namespaces"
        );
        let refused = call("/baton.v1.WorkflowService/Signal", TokenRole::Submitter).unwrap_err();
        assert_eq!(
            refused.message(),
            "WorkflowService.Signal needs a token with role operator or admin; this token's \
             strongest role in its namespaces is submitter"
        );
    }

    #[test]
    fn decisions_separate_unauthenticated_from_denied() {
        use PeerRole::*;
        use TokenRole as T;
        let submit = Access::Client(T::Submitter);
        assert_eq!(code(submit, Some(Client), Some(T::Submitter)), Code::Ok);
        assert_eq!(code(submit, Some(Client), Some(T::Admin)), Code::Ok);
        assert_eq!(
            code(submit, Some(Client), Some(T::Reader)),
            Code::PermissionDenied
        );
        assert_eq!(code(submit, Some(Client), None), Code::Unauthenticated);
        assert_eq!(code(submit, None, Some(T::Admin)), Code::Unauthenticated);
        assert_eq!(
            code(submit, Some(Agent), Some(T::Admin)),
            Code::PermissionDenied
        );
        assert_eq!(code(submit, Some(Agent), None), Code::Unauthenticated);
        // A node forwarding a call needs the caller's token like anyone else.
        assert_eq!(code(submit, Some(Node), None), Code::Unauthenticated);
        assert_eq!(code(submit, Some(Node), Some(T::Submitter)), Code::Ok);
        assert_eq!(
            code(submit, Some(Node), Some(T::Reader)),
            Code::PermissionDenied
        );
        assert_eq!(
            code(Access::Node, Some(Agent), Some(T::Agent)),
            Code::PermissionDenied
        );
        assert_eq!(
            code(Access::Node, Some(Client), Some(T::Admin)),
            Code::PermissionDenied
        );
        assert_eq!(code(Access::Node, Some(Node), None), Code::Ok);
        assert_eq!(code(Access::Agent, Some(Agent), Some(T::Agent)), Code::Ok);
        assert_eq!(
            code(Access::Agent, Some(Agent), Some(T::Admin)),
            Code::PermissionDenied
        );
        assert_eq!(
            code(Access::Agent, Some(Client), Some(T::Agent)),
            Code::PermissionDenied
        );
        assert_eq!(
            code(Access::Agent, Some(Agent), None),
            Code::Unauthenticated
        );
        assert_eq!(code(Access::AnyPeer, Some(Agent), None), Code::Ok);
    }
}
