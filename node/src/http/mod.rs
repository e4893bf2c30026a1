//! The HTTPS listener (`batond --http-listen`): a JSON API under `/api/v1/` for browsers,
//! scripts, `curl` and webhook senders, which have no client certificate.
//!
//! Every route is one gRPC method in another dress: the handler builds the method's request,
//! calls the same service implementation a gRPC call reaches (so validation, forwarding to the
//! leader, idempotency and error messages are the same), and renders the answer with the JSON
//! shapes `baton ... -o json` prints (`baton_proto::json`). Authorization is the gRPC method
//! table's (`security::auth::access`): the route names its method, and the caller's bearer
//! token must hold a role that may call it. Errors map from gRPC codes in one place
//! ([`error`]). The route table ([`api::ROUTES`]) also writes the OpenAPI document
//! ([`openapi`]), so the two cannot drift apart.

pub mod api;
pub mod console;
pub mod error;
pub mod listen;
pub mod openapi;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_security::server::PeerInfo;
use baton_security::{PeerRole, TOKEN_METADATA_KEY};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};

use crate::api::admin::AdminServiceImpl;
use crate::api::schedule::ScheduleServiceImpl;
use crate::api::template::TemplateServiceImpl;
use crate::api::trigger::TriggerServiceImpl;
use crate::api::workflow::WorkflowServiceImpl;
use crate::limits;
use crate::raft::RaftNode;
use crate::scheduler::Sessions;
use crate::security::Security;
use crate::security::auth::{access, decide};
use error::ApiError;

/// The services the routes call, and whether callers must authenticate.
pub struct Services {
    pub workflows: WorkflowServiceImpl,
    pub templates: TemplateServiceImpl,
    pub schedules: ScheduleServiceImpl,
    pub triggers: TriggerServiceImpl,
    pub admin: AdminServiceImpl,
    pub node: Arc<RaftNode>,
    /// false under `--insecure`: every call is let through, as on the gRPC port.
    pub secure: bool,
    /// Webhook deliveries to a name this node does not know wait for a linearizable read (the
    /// trigger may be new) only this many at a time: anyone can post to any name.
    pub unknown_trigger_reads: tokio::sync::Semaphore,
}

/// The routes' shared state.
#[derive(Clone)]
pub struct Api(pub Arc<Services>);

impl std::ops::Deref for Api {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Who makes a call: their bearer token, passed on to the service as gRPC metadata, so the
/// history records them (`actor`), a watch ends when the token is revoked, and a follower
/// forwarding the call hands the leader the same token.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    token: Option<MetadataValue<Ascii>>,
    /// Set when the listener is secure: the services treat the call as one over TLS.
    peer: Option<PeerInfo>,
}

impl Caller {
    /// A caller over the secure listener presenting `token_text` (`baton_ID_SECRET`).
    pub fn with_token(token_text: &str) -> Caller {
        Caller {
            token: MetadataValue::try_from(format!("Bearer {token_text}")).ok(),
            peer: Some(PeerInfo {
                identity: None,
                remote_addr: None,
            }),
        }
    }

    /// The gRPC request a service receives for this caller.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(TOKEN_METADATA_KEY, token.clone());
        }
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        request
    }
}

/// The middleware in front of every route that names a gRPC method: decides the call as the
/// gRPC port would for a client certificate bearing this token (from the `Authorization`
/// header, or the console's session cookie), and hands the handler its [`Caller`]. A change
/// made with the cookie must carry the session's CSRF token in `X-Baton-CSRF`.
pub async fn authorize(
    State((api, rpc)): State<(Api, &'static str)>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = if api.secure {
        let credential = session::credential(request.headers());
        let decision = decide(
            rpc,
            access(rpc),
            Some(PeerRole::Client),
            credential.as_ref().map(|c| &c.presented),
            |t| session::lookup(&api, t).map(|(scope, _)| scope),
        );
        if let Err(status) = decision {
            crate::metrics::auth_refused(status.code());
            return ApiError(status).into_response();
        }
        let Some(credential) = credential else {
            return ApiError(Status::internal("authorized without a token")).into_response();
        };
        if credential.by_cookie && !request.method().is_safe() {
            let given = request
                .headers()
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !session::same(&session::csrf_for(&credential.text), given) {
                return ApiError(Status::permission_denied(
                    "X-Baton-CSRF: a change made with the console's session cookie needs the \
                     session's CSRF token (or use an Authorization: Bearer header)",
                ))
                .into_response();
            }
        }
        Caller::with_token(&credential.text)
    } else {
        Caller::default()
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Counts and times every request by route and status.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = request.method().clone();
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let started = Instant::now();
    let mut response = next.run(request).await;
    // A body refused for its size is left unread, so the connection cannot carry another
    // request: say so, or a client reuses it and loses its next request to the close.
    if http1 && response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    crate::metrics::http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A running HTTP listener.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves the JSON API on `listener` until [`HttpServer::shutdown`].
    /// `max_connection_age`: `--max-connection-age-secs`, as for gRPC: a connection older than
    /// this is closed gracefully (its client reconnects), so none is held for ever.
    pub fn start(
        listener: TcpListener,
        security: &Security,
        node: Arc<RaftNode>,
        sessions: Arc<Sessions>,
        max_connection_age: Duration,
    ) -> std::io::Result<HttpServer> {
        let services = Services {
            workflows: WorkflowServiceImpl { node: node.clone() },
            templates: TemplateServiceImpl { node: node.clone() },
            schedules: ScheduleServiceImpl { node: node.clone() },
            triggers: TriggerServiceImpl { node: node.clone() },
            admin: AdminServiceImpl {
                node: node.clone(),
                sessions,
            },
            node,
            secure: security.is_secure(),
            unknown_trigger_reads: tokio::sync::Semaphore::new(4),
        };
        let router = router(Api(Arc::new(services)));
        let listener = listen::Listener::new(listener, security.tls().cloned())?;
        let addr = axum::serve::Listener::local_addr(&listener)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, stopped, max_connection_age));
        Ok(HttpServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting; open requests get a moment to finish, then every connection (event
    /// streams never end by themselves) is dropped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Serves `router` on every connection `listener` accepts until `stop`, with the connection
/// rules of [`crate::limits`]: a deadline for a request's headers (HTTP/1), pings that drop a
/// silent peer and a bound on streams (HTTP/2), and a maximum age, after which a connection
/// is closed gracefully (HTTP/2 GOAWAY; HTTP/1 after its current response) within
/// [`limits::CONNECTION_AGE_GRACE`]. On stop, open requests get a moment to finish.
async fn serve(
    mut listener: listen::Listener,
    router: axum::Router,
    mut stop: oneshot::Receiver<()>,
    max_age: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HTTP_HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(limits::KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(limits::HTTP_STREAMS_PER_CONNECTION_MAX)
        .max_header_list_size(limits::REQUEST_HEADERS_BYTES_MAX);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let grace = limits::CONNECTION_AGE_GRACE.min(max_age);
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, _remote) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = &mut stop => break,
        };
        while connections.try_join_next().is_some() {}
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service.clone())
            .into_owned();
        let mut stopping = stopping.subscribe();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                _ = tokio::time::sleep(max_age) => None,
                _ = stopping.wait_for(|stopping| *stopping) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    // Too old, or the node stops: no new request on it; the open ones get the
                    // grace period (event streams never end by themselves).
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(grace, connection).await {
                        Ok(ended) => ended,
                        Err(_) => return,
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "http connection ended");
            }
        });
    }
    drop(listener);
    // Open requests get a moment; event streams never end by themselves, so after it every
    // connection is dropped.
    stopping.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// The whole router: every route of [`api::ROUTES`] behind [`authorize`] (when it names a
/// method), the body limit, the request metrics; JSON 404 and 405 answers.
pub fn router(api: Api) -> axum::Router {
    let mut router = axum::Router::new();
    for route in api::ROUTES {
        let mut methods = (route.handler)();
        if !route.rpc.is_empty() {
            methods = methods.route_layer(axum::middleware::from_fn_with_state(
                (api.clone(), route.rpc),
                authorize,
            ));
        }
        router = router.route(route.path, methods);
    }
    console::routes(router)
        .fallback(|| async {
            ApiError(Status::not_found(
                "no such route; the routes are listed in /api/v1/openapi.json",
            ))
        })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(error::error_body(
                    tonic::Code::Unimplemented,
                    "this route does not take that method; see /api/v1/openapi.json",
                )),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::limits::HTTP_BODY_BYTES_MAX,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits::HTTP_REQUESTS_IN_FLIGHT_MAX,
        ))
        .layer(axum::middleware::from_fn(observe))
        .with_state(api)
}
