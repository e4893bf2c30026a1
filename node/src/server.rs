//! Starts a node: checks the data dir, starts Raft, serves gRPC (public API and Raft transport on
//! one address), bootstraps the cluster, and stops it all on request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::raft::v1::raft_service_server::RaftServiceServer;
use baton_proto::v1::admin_service_server::AdminServiceServer;
use baton_proto::v1::agent_service_server::AgentServiceServer;
use baton_proto::v1::schedule_service_server::ScheduleServiceServer;
use baton_proto::v1::template_service_server::TemplateServiceServer;
use baton_proto::v1::trigger_service_server::TriggerServiceServer;
use baton_proto::v1::workflow_service_server::WorkflowServiceServer;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::admin::AdminServiceImpl;
use crate::api::agent::AgentServiceImpl;
use crate::api::workflow::WorkflowServiceImpl;
use crate::config::Config;
use crate::limits;
use crate::raft::RaftNode;
use crate::raft::TransferError;
use crate::raft::service::RaftServiceImpl;
use crate::scheduler::{self, Sessions};
use crate::security::Security;
use crate::security::auth::AuthLayer;
use crate::state::Command;

/// A running node. Dropping it does not stop it: call [`Server::shutdown`].
pub struct Server {
    pub node: Arc<RaftNode>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
    cluster_id_task: JoinHandle<()>,
    bootstrap_token_task: Option<JoinHandle<()>>,
    /// Forms the cluster, or finds out this node must not take part (`RaftNode::bootstrap`).
    bootstrap_task: Option<JoinHandle<()>>,
    scheduler_task: JoinHandle<()>,
    /// Hands leadership away while this node's data disk is low.
    disk_handoff_task: JoinHandle<()>,
    health: Arc<crate::health::Health>,
    health_task: JoinHandle<()>,
    /// The plaintext health-only server (`--health-listen`), if any, and its stop signal.
    health_only: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The JSON API (`--http-listen`), if any.
    http: Option<crate::http::HttpServer>,
}

/// Why `batond` did not start: the one start-up error type. Each says what to fix; `batond`
/// prints it and exits with [`StartError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Flags, environment or configuration file: nothing was touched.
    #[error("{0}")]
    Config(String),
    /// The data folder is not this node's (`IDENTITY`), or cannot be made or read.
    #[error("{0}")]
    DataFolder(String),
    /// An address to listen on is taken or not this machine's.
    #[error("{flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The Prometheus exporter did not start (`--metrics-listen`).
    #[error("{0}")]
    Metrics(String),
    /// Certificates, keys or the bootstrap token could not be loaded.
    #[error("{0}")]
    Security(String),
    /// The archive folder (`--archive-dir`) cannot be made.
    #[error("{0}")]
    Archive(String),
    /// The Raft log or the snapshots could not be opened (a damaged log, a full disk...), or
    /// Raft did not start.
    #[error("{0}")]
    Storage(String),
    /// A bug: something that cannot fail did.
    #[error("{0}")]
    Internal(String),
}

impl StartError {
    /// 2 for a configuration mistake (as for a bad flag), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl Server {
    /// Starts the node on `listener` (already bound: tests bind port 0 first to learn the
    /// address), or binds `config.listen`.
    pub async fn start(config: &Config, listener: Option<TcpListener>) -> Result<Self, StartError> {
        let identity = crate::storage::identity::open(&config.data_dir, config.node_id)
            .map_err(StartError::DataFolder)?;
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    flag: "--listen",
                    addr: config.listen,
                    source,
                })?,
        };
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Internal(format!("listening address: {e}")))?;
        // Bound before Raft starts, so a taken port fails the start with nothing to undo.
        let health_listener = match config.health_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            flag: "--health-listen",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let http_listener = match config.http_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            flag: "--http-listen",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let security = Security::load(&config.security).map_err(StartError::Security)?;
        let archive = match &config.lifecycle.archive_dir {
            Some(dir) => {
                let folder =
                    crate::storage::archive::LocalFolder::open(dir).map_err(StartError::Archive)?;
                Some(crate::storage::archive::Archive::new(Arc::new(folder)))
            }
            None => None,
        };
        let node = Arc::new(
            RaftNode::start(
                config.node_id,
                identity.incarnation,
                &config.data_dir,
                crate::raft::StorageSettings {
                    disk_reserve_bytes: config.disk_reserve_bytes,
                    archive,
                },
                &config.timing,
                config.peer_dial.clone(),
                security.tls().cloned(),
            )
            .await
            .map_err(StartError::Storage)?,
        );
        let sessions = Arc::new(Sessions::default());
        let (health, health_service, health_task) =
            crate::health::Health::start(node.clone()).await;
        // Probes that cannot do mutual TLS (Kubernetes gRPC probes) ask here: the health
        // service alone, plaintext, no authentication. It reveals only SERVING/NOT_SERVING.
        let health_only = health_listener.map(|listener| {
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(limits::TCP_KEEPALIVE));
            let router = connections(config)
                .concurrency_limit_per_connection(limits::REQUESTS_PER_CONNECTION_MAX)
                .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
                .http2_max_header_list_size(limits::REQUEST_HEADERS_BYTES_MAX)
                .add_service(health_service.clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let stopped = async {
                    let _ = stopped.await;
                };
                if let Err(err) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                    tracing::error!(error = %err, "health listener failed");
                }
            });
            (stop, task)
        });
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder()
            .build_v1()
            .map_err(|e| StartError::Internal(format!("grpc reflection: {e}")))?;
        // v1alpha too: grpcio-reflection, grpc_cli and older grpcurl speak only that one.
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(|e| StartError::Internal(format!("grpc reflection v1alpha: {e}")))?;

        let router = connections(config)
            .concurrency_limit_per_connection(limits::REQUESTS_PER_CONNECTION_MAX)
            .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
            .http2_max_header_list_size(limits::REQUEST_HEADERS_BYTES_MAX)
            .tcp_nodelay(true)
            .layer(tower::util::MapResponseLayer::new(
                crate::api::size_status::<tonic::body::Body>,
            ))
            .layer(AuthLayer::new(node.replica.clone(), security.is_secure()))
            .add_service(
                RaftServiceServer::new(RaftServiceImpl {
                    node: node.clone(),
                    secure: security.is_secure(),
                })
                .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX),
            )
            .add_service(
                WorkflowServiceServer::new(WorkflowServiceImpl { node: node.clone() })
                    .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                    .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(
                TemplateServiceServer::new(crate::api::template::TemplateServiceImpl {
                    node: node.clone(),
                })
                .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(
                ScheduleServiceServer::new(crate::api::schedule::ScheduleServiceImpl {
                    node: node.clone(),
                })
                .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(
                TriggerServiceServer::new(crate::api::trigger::TriggerServiceImpl {
                    node: node.clone(),
                })
                .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(
                AdminServiceServer::new(AdminServiceImpl {
                    node: node.clone(),
                    sessions: sessions.clone(),
                })
                .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(
                AgentServiceServer::new(AgentServiceImpl {
                    node: node.clone(),
                    sessions: sessions.clone(),
                })
                .max_decoding_message_size(limits::AGENT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            )
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha);
        let http = match http_listener {
            Some(listener) => {
                let http = crate::http::HttpServer::start(
                    listener,
                    &security,
                    node.clone(),
                    sessions.clone(),
                    config.max_connection_age,
                )
                .map_err(|e| StartError::Internal(format!("--http-listen: {e}")))?;
                match &security {
                    Security::Insecure => tracing::warn!(
                        addr = %http.addr,
                        "serving the JSON API over plaintext HTTP with no authentication (--insecure)"
                    ),
                    Security::Secure { .. } => {
                        tracing::info!(url = %format!("https://{}/", http.addr), "serving the JSON API over HTTPS")
                    }
                }
                Some(http)
            }
            None => None,
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let tls = security.tls().cloned();
        let serving = tokio::spawn(async move {
            let stopped = async {
                let _ = stop_rx.await;
            };
            let served = match tls {
                Some(tls) => {
                    let incoming = baton_security::server::incoming(listener, tls);
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
                None => {
                    // The builder's `tcp_nodelay` applies only to listeners tonic binds itself;
                    // without it every small response waits out Nagle against the peer's delayed
                    // ACK (~40 ms). The TLS accept loop sets it on each connection itself.
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(limits::TCP_KEEPALIVE));
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
            };
            if let Err(err) = served {
                tracing::error!(error = %err, "grpc server failed");
            }
        });
        match &security {
            Security::Insecure => tracing::warn!(
                node = config.node_id,
                %addr,
                "serving plaintext gRPC with no authentication (--insecure)"
            ),
            Security::Secure { tls, .. } => {
                tracing::info!(node = config.node_id, %addr, identity = %tls.identity(), "serving gRPC over mutual TLS")
            }
        }

        let bootstrap_task = (!config.initial_cluster.is_empty()).then(|| {
            let (node, members) = (node.clone(), config.initial_cluster.clone());
            tokio::spawn(async move {
                if let Err(reason) = node.bootstrap(&members).await {
                    node.halt(reason);
                }
            })
        });
        let cluster_id_task = tokio::spawn(set_cluster_id_when_leader(node.clone()));
        let bootstrap_token_task = match security {
            Security::Secure {
                bootstrap_token: Some(token),
                ..
            } => Some(tokio::spawn(
                crate::security::tokens::bootstrap_when_leader(node.clone(), token),
            )),
            _ => None,
        };
        let scheduler_task = tokio::spawn(scheduler::run(
            node.clone(),
            sessions,
            config.lifecycle.clone(),
        ));
        let disk_handoff_task = tokio::spawn({
            let node = node.clone();
            async move { node.hand_off_while_disk_low().await }
        });
        Ok(Self {
            node,
            addr,
            stop: Some(stop_tx),
            serving: Some(serving),
            cluster_id_task,
            bootstrap_token_task,
            bootstrap_task,
            scheduler_task,
            disk_handoff_task,
            health,
            health_task,
            health_only,
            http,
        })
    }

    /// Resolves with the reason once the node cannot go on (see [`RaftNode::halted`]): `batond`
    /// then exits non-zero.
    pub async fn halted(&self) -> String {
        self.node.halted().await
    }

    /// The first half of a graceful stop (SIGTERM): report not ready, and if this node leads,
    /// hand leadership to the most up-to-date voter that answered within the last election
    /// timeout, and wait until that node leads (it has committed an entry of its own term, seen
    /// from here). Agent sessions end as leadership leaves (FAILED_PRECONDITION with the
    /// `baton-leader` hint), so agents move at once. With no voter answering (the others are
    /// already stopped, or cut off) there is nobody to hand over to, and the stop goes on at
    /// once. Gives up after [`DRAIN_TIMEOUT`]; then the stop is an ordinary one and the others
    /// elect a leader after their election timeout.
    pub async fn drain(&self) -> Drained {
        self.health.start_draining().await;
        if !self.node.is_leader() {
            return Drained::NotLeader;
        }
        let members = self.node.members();
        let others: Vec<u64> = members
            .iter()
            .filter(|m| m.voter && m.id != self.node.id)
            .map(|m| m.id)
            .collect();
        if others.is_empty() {
            tracing::info!("drain: the only voter; nobody to hand leadership to");
            return Drained::OnlyVoter;
        }
        let matched = |id: &u64| {
            members
                .iter()
                .find(|m| m.id == *id)
                .and_then(|m| m.matched_index)
        };
        // A voter that has not acknowledged a heartbeat for an election timeout would not take
        // leadership either: asking it only waits out DRAIN_TIMEOUT.
        let answering = self.node.voters_answering();
        let Some(to) = answering.iter().max_by_key(|id| matched(id)).copied() else {
            tracing::info!(
                voters = ?others,
                "drain: no other voter answered within an election timeout; stopping without a handover"
            );
            return Drained::NoVoterAnswering;
        };
        tracing::info!(to, "drain: transferring leadership");
        let started = std::time::Instant::now();
        // If the voter asked does not campaign, it is not taking over (it is stopping too, as
        // every node of `batond dev` does on Ctrl-C): waiting longer would only hold this stop up.
        match self
            .node
            .transfer_leadership(to, self.node.takeover_timeout().min(DRAIN_TIMEOUT))
            .await
        {
            Ok(()) => {}
            Err(err @ TransferError::Refused(_)) => {
                tracing::warn!(error = %err, "drain: leader transfer failed");
                return Drained::TransferFailed;
            }
            Err(err @ TransferError::NotTakenOver { .. }) => {
                tracing::warn!(error = %err, "drain: stopping without a handover");
                return Drained::NotTakenOver;
            }
        }
        let patience = DRAIN_TIMEOUT.saturating_sub(started.elapsed());
        let moved = self
            .node
            .status_watch()
            .wait(patience, |s| {
                s.leader.is_some_and(|l| l != self.node.id) && s.committed_term == s.term
            })
            .await;
        match moved {
            Some(s) => {
                tracing::info!(leader = ?s.leader, term = s.term, "drain: leadership handed over");
                Drained::HandedOver {
                    to: s.leader.unwrap_or(to),
                }
            }
            None => {
                tracing::warn!(?patience, "drain: leadership did not move in time");
                Drained::TimedOut
            }
        }
    }

    /// The JSON API's address (`--http-listen`), if it is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|http| http.addr)
    }

    /// Stops serving and shuts Raft down; the data stays on disk.
    pub async fn shutdown(mut self) {
        self.health_task.abort();
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        if let Some((stop, mut task)) = self.health_only.take() {
            let _ = stop.send(());
            // A probe's Watch stream never ends by itself: give the rest a moment, then drop it.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.cluster_id_task.abort();
        for task in [&self.bootstrap_token_task, &self.bootstrap_task]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        self.scheduler_task.abort();
        self.disk_handoff_task.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
        if let Some(mut serving) = self.serving.take() {
            // Streams that never end by themselves (agent sessions, watches) must not hold the
            // node up: after a grace period, drop every connection.
            if tokio::time::timeout(Duration::from_secs(2), &mut serving)
                .await
                .is_err()
            {
                serving.abort();
                let _ = serving.await;
            }
        }
    }
}

/// A server builder with the connection rules every listener shares: HTTP/2 pings that drop a
/// silent peer, and a maximum connection age (`--max-connection-age-secs`) after which a
/// connection is closed gracefully and its client reconnects.
fn connections(config: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .max_connection_age(config.max_connection_age)
        .max_connection_age_grace(limits::CONNECTION_AGE_GRACE.min(config.max_connection_age))
}

/// What [`Server::drain`] did about leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// A follower (or candidate, learner): nothing to hand over.
    NotLeader,
    /// The leader of a one-voter cluster.
    OnlyVoter,
    /// The leader, but no other voter acknowledged a heartbeat within an election timeout.
    NoVoterAnswering,
    /// Leadership moved; a leader of a newer term committed an entry, seen from here.
    HandedOver { to: u64 },
    /// openraft refused the transfer (its core stopped, say).
    TransferFailed,
    /// The voter asked did not campaign within three election timeouts (it is stopping too).
    NotTakenOver,
    /// The transfer was asked for, but no new leader committed within [`DRAIN_TIMEOUT`].
    TimedOut,
}

/// How long a draining leader waits for leadership to move before it stops anyway.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The first leader of a new cluster names it, once; the id shows in `cluster status`.
async fn set_cluster_id_when_leader(node: Arc<RaftNode>) {
    let mut raft = node.status_watch();
    loop {
        let is_leader = raft.current().is_leader();
        let unnamed = node.replica.read(|a| a.state.cluster_id().is_empty());
        if !unnamed {
            return;
        }
        if is_leader {
            let seed = format!(
                "{}-{}-{:?}",
                node.id,
                std::process::id(),
                std::time::SystemTime::now()
            );
            let cluster_id = hex::encode(&Sha256::digest(seed.as_bytes())[..8]);
            match node
                .propose_local(Command::InitCluster { cluster_id })
                .await
            {
                Ok(_) => return,
                Err(err) => tracing::debug!(error = %err, "cluster id not set yet"),
            }
        }
        if !raft.changed().await {
            return;
        }
    }
}
