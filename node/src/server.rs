//! Starts a node: checks the data dir, starts Raft, serves gRPC (public API and Raft transport on
//! one address), bootstraps the cluster, and stops it all on request.

use std::net::SocketAddr;
use std::sync::Arc;

use baton_proto::raft::v1::raft_service_server::RaftServiceServer;
use baton_proto::v1::admin_service_server::AdminServiceServer;
use baton_proto::v1::agent_service_server::AgentServiceServer;
use baton_proto::v1::workflow_service_server::WorkflowServiceServer;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::admin::AdminServiceImpl;
use crate::api::agent::AgentServiceImpl;
use crate::api::workflow::WorkflowServiceImpl;
use crate::config::{Config, check_data_dir};
use crate::limits;
use crate::raft::RaftNode;
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
    scheduler_task: JoinHandle<()>,
}

impl Server {
    /// Starts the node on `listener` (already bound: tests bind port 0 first to learn the
    /// address), or binds `config.listen`.
    pub async fn start(config: &Config, listener: Option<TcpListener>) -> Result<Self, String> {
        check_data_dir(&config.data_dir, config.node_id)?;
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(config.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", config.listen))?,
        };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let security = Security::load(&config.security)?;
        let node = Arc::new(
            RaftNode::start(
                config.node_id,
                &config.data_dir,
                &config.timing,
                config.peer_dial.clone(),
                security.tls().cloned(),
            )
            .await?,
        );
        let sessions = Arc::new(Sessions::default());

        let router = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(limits::REQUESTS_PER_CONNECTION_MAX)
            .tcp_nodelay(true)
            .layer(AuthLayer::new(
                node.replica.clone(),
                matches!(security, Security::Secure { .. }),
            ))
            .add_service(
                RaftServiceServer::new(RaftServiceImpl { node: node.clone() })
                    .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX),
            )
            .add_service(
                WorkflowServiceServer::new(WorkflowServiceImpl { node: node.clone() })
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
                .max_decoding_message_size(limits::PUBLIC_REQUEST_BYTES_MAX)
                .max_encoding_message_size(limits::PUBLIC_RESPONSE_BYTES_MAX),
            );
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
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
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

        if !config.initial_cluster.is_empty() {
            node.bootstrap(&config.initial_cluster).await?;
        }
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
        let scheduler_task = tokio::spawn(scheduler::run(node.clone(), sessions));
        Ok(Self {
            node,
            addr,
            stop: Some(stop_tx),
            serving: Some(serving),
            cluster_id_task,
            bootstrap_token_task,
            scheduler_task,
        })
    }

    /// Stops serving and shuts Raft down; the data stays on disk.
    pub async fn shutdown(mut self) {
        self.cluster_id_task.abort();
        if let Some(task) = &self.bootstrap_token_task {
            task.abort();
        }
        self.scheduler_task.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
        if let Some(mut serving) = self.serving.take() {
            // Streams that never end by themselves (agent sessions, watches) must not hold the
            // node up: after a grace period, drop every connection.
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut serving)
                .await
                .is_err()
            {
                serving.abort();
                let _ = serving.await;
            }
        }
    }
}

/// The first leader of a new cluster names it, once; the id shows in `cluster status`.
async fn set_cluster_id_when_leader(node: Arc<RaftNode>) {
    let mut metrics = node.raft.metrics();
    loop {
        let is_leader = metrics.borrow_watched().state == ServerState::Leader;
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
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
