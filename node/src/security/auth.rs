//! Authorization of every RPC, as a tower layer in front of all services: the method table
//! ([`access`]) says what each method needs; the caller's certificate role comes from the TLS
//! connection ([`PeerInfo`]), its token from the `authorization: Bearer ...` metadata, looked up
//! in the replicated state by id and compared in constant time.
//!
//! Refusals say only UNAUTHENTICATED ("unauthenticated": no, malformed, unknown or revoked
//! token; a certificate without a Baton identity) or PERMISSION_DENIED ("permission denied":
//! the wrong certificate role or token role), never which, so a caller cannot probe tokens.
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
    /// forwarding a client's call with that client's token.
    Client(TokenRole),
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
        ("baton.v1.WorkflowService", "Get" | "List" | "Watch") => Access::Client(TokenRole::Reader),
        ("baton.v1.WorkflowService", "Submit" | "SubmitBatch" | "Cancel") => {
            Access::Client(TokenRole::Submitter)
        }
        ("baton.v1.AdminService", "ClusterStatus" | "ListAgents") => {
            Access::Client(TokenRole::Reader)
        }
        (
            "baton.v1.AdminService",
            "AddMember" | "RemoveMember" | "TransferLeader" | "TriggerSnapshot" | "SaveSnapshot",
        ) => Access::Client(TokenRole::Operator),
        ("baton.v1.AdminService", "CreateToken" | "ListTokens" | "RevokeToken") => {
            Access::Client(TokenRole::Admin)
        }
        _ => Access::Client(TokenRole::Admin),
    }
}

/// Decides one call. `lookup` finds the live token's role for a presented token, comparing
/// digests in constant time.
pub fn decide(
    access: Access,
    peer: Option<PeerRole>,
    presented: Option<&PresentedToken>,
    lookup: impl FnOnce(&PresentedToken) -> Option<TokenRole>,
) -> Result<(), Status> {
    let unauthenticated = || Status::unauthenticated("unauthenticated");
    let denied = || Status::permission_denied("permission denied");
    let Some(peer) = peer else {
        return Err(unauthenticated());
    };
    let role_of_token = || presented.and_then(lookup).ok_or_else(unauthenticated);
    match (access, peer) {
        (Access::AnyPeer, _) => Ok(()),
        (Access::Node, PeerRole::Node) => Ok(()),
        (Access::Node, _) => Err(denied()),
        (Access::Agent, PeerRole::Agent) => (role_of_token()? == TokenRole::Agent)
            .then_some(())
            .ok_or_else(denied),
        (Access::Client(needed), PeerRole::Client | PeerRole::Node) => role_of_token()?
            .includes(needed)
            .then_some(())
            .ok_or_else(denied),
        (Access::Agent | Access::Client(_), _) => {
            // Authenticate first, so a wrong certificate with no token still reads as
            // "unauthenticated", the same as everywhere else.
            role_of_token()?;
            Err(denied())
        }
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
        let decision = decide(
            access(request.uri().path()),
            peer,
            presented.as_ref(),
            |t| {
                self.replica.read(|applied| {
                    applied
                        .state
                        .live_token(&t.id)
                        .filter(|record| token::digest_matches(&record.digest, &t.digest))
                        .map(|record| record.role)
                })
            },
        );
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

    fn code(access: Access, peer: Option<PeerRole>, token: Option<TokenRole>) -> Code {
        let presented = PresentedToken {
            id: "x".into(),
            digest: [0; 32],
        };
        decide(access, peer, token.map(|_| &presented), |_| token)
            .map_or_else(|s| s.code(), |()| Code::Ok)
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
            Access::Client(TokenRole::Operator)
        );
        assert_eq!(
            access("/baton.v1.AdminService/RevokeToken"),
            Access::Client(TokenRole::Admin)
        );
        assert_eq!(
            access("/baton.v1.AdminService/SomethingNew"),
            Access::Client(TokenRole::Admin)
        );
        assert_eq!(
            access("/baton.v1.AdminService/SaveSnapshot"),
            Access::Client(TokenRole::Operator)
        );
        assert_eq!(access("garbage"), Access::Client(TokenRole::Admin));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::AnyPeer);
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
